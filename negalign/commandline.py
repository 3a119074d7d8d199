"""One way in for every command: a command's settings dataclass is its command line and its `--config` file.

Each field of the dataclass is one flag (`--max-new-tokens`, also answering to `--max_new_tokens`, the
spelling of the recipe keys and of `negalign train`) and one YAML key (`max_new_tokens`); its help, extra
spellings and choices live in the field's metadata (`option(...)`), so a setting is written down once. A
field whose type is itself a dataclass (ModelOptions) contributes its fields as flags of their own.

`--config FILE` takes a YAML mapping. A training recipe (keys of NegalignConfig) is checked whole, the way
`negalign train` checks it, and gives the command the settings it shares with training, under the names the
settings class lists in its `RECIPE` table (recipe key -> field: `eval` evaluates the recipe's `output_dir`
against its `model`). A file whose keys are all fields of the command is the command's own. Flags given on
the command line win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from dataclasses import MISSING, field


def option(default=MISSING, help: str = "", *, factory=MISSING, flags: tuple[str, ...] = (), **argparse_options):
    """A settings field with its command-line help; `flags` adds spellings (`--steps` for max_steps), and any
    other keyword (choices, metavar, action="append" ...) goes to argparse as it is."""
    metadata = {"help": help, "flags": flags, "argparse": argparse_options}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@functools.cache
def _hints(cls) -> dict[str, tuple[type, ...]]:
    """Each field's types, None left out ("int | None" -> (int,), "list[str]" -> (list,))."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        parts = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        out[name] = tuple(typing.get_origin(p) or p for p in parts if p is not type(None))
    return out


def _nested(cls) -> dict[str, type]:
    """Fields whose type is a dataclass: their fields are flags of their own."""
    return {f.name: _hints(cls)[f.name][0] for f in dataclasses.fields(cls)
            if len(_hints(cls)[f.name]) == 1 and dataclasses.is_dataclass(_hints(cls)[f.name][0])}


def _add_field(parser, owner, f: dataclasses.Field, defaults) -> None:
    kind = _hints(owner)[f.name][0]
    meta = f.metadata or {}
    extra = dict(meta.get("argparse", {}))
    names = [f"--{f.name.replace('_', '-')}", *meta.get("flags", ())]
    default = getattr(defaults, f.name)
    if kind is bool and "action" not in extra:
        extra["action"] = argparse.BooleanOptionalAction
    elif kind is list and "action" not in extra and "type" not in extra:
        extra["nargs"] = "+"
    elif kind in (int, float, str) and "action" not in extra:
        extra.setdefault("type", kind)
    parser.add_argument(*names, dest=f.name, default=default, help=meta.get("help") or None, **extra)


def build_parser(cls, prog: str, description: str = "", epilog: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser of a settings dataclass: one flag per field, `--config`, underscore spellings."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML file: a training recipe (the settings it shares with this "
                        "command are taken) or this command's own keys; flags win")
    defaults = _defaults(cls)
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        if f.name in nested:
            group = parser.add_argument_group(f.name.replace("_", " "))
            inner = getattr(defaults, f.name)
            for g in dataclasses.fields(nested[f.name]):
                _add_field(group, nested[f.name], g, inner)
        elif f.metadata.get("cli", True) is not False:
            _add_field(parser, cls, f, defaults)
    accept_underscore_spellings(parser)
    return parser


def _defaults(cls):
    """An instance holding every field's default, required fields left as None (for the parser only)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not MISSING:
            values[f.name] = f.default
        elif f.default_factory is not MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = None
    return types.SimpleNamespace(**values)


def accept_underscore_spellings(parser) -> None:
    """Every `--dashed-option` also answers to `--dashed_option`, the spelling of the recipe keys and of
    `negalign train`: one spelling works for every command."""
    for action in list(parser._actions):
        for flag in list(action.option_strings):
            if flag.startswith("--") and "-" in flag[2:]:
                alias = "--" + flag[2:].replace("-", "_")
                if alias not in parser._option_string_actions:
                    action.option_strings.append(alias)
                    parser._option_string_actions[alias] = action


def split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """(`--config FILE` / `--config=FILE`, the other arguments)."""
    recipe, rest = None, []
    for at, item in enumerate(argv):
        if item.startswith("--config="):
            recipe = item.split("=", 1)[1]
        elif item == "--config":
            if at + 1 >= len(argv):
                raise ValueError("--config needs a YAML file")
            recipe = argv[at + 1]
        elif not (at > 0 and argv[at - 1] == "--config"):
            rest.append(item)
    return recipe, rest


def _flat_names(cls) -> set[str]:
    nested = _nested(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name not in nested}
    return names | {g.name for inner in nested.values() for g in dataclasses.fields(inner)}


def file_defaults(cls, path: str) -> dict:
    """The settings a `--config` file gives the command `cls` runs: its own keys as they are, or, for a
    training recipe, the keys in `cls.RECIPE` renamed to the command's fields, after the recipe is checked
    whole (unknown keys, types) as `negalign train` checks it."""
    from negalign.config import read_recipe, recipe_path

    path = recipe_path(path)
    given = read_recipe(path)  # bounded in size, a mapping
    if given and set(given) <= _flat_names(cls):
        return dict(given)  # the command's own keys (checked by the flags' types when they are applied)
    from negalign.config import load_config

    config = load_config(path, {"output_dir": given.get("output_dir") or "unused"})
    out = {}
    for key, name in getattr(cls, "RECIPE", {}).items():
        value = getattr(config, key)
        if key in given or key in getattr(cls, "RECIPE_DEFAULTS_TOO", ()):
            out[name] = value
    return {name: value for name, value in out.items() if value is not None}


def _coerce(parser: argparse.ArgumentParser, values: dict, path: str) -> dict:
    """A config file's own keys through the flags' types: "1e-5" read by YAML as a string becomes a float,
    and a wrong type stops with one line naming the file and key."""
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            continue
        convert = action.type
        if convert is not None and value is not None and not isinstance(value, (list, bool)):
            try:
                value = convert(value)
            except (TypeError, ValueError):
                what = "a number" if convert in (int, float) else "valid"  # the words `negalign train` uses
                raise ValueError(f"{path}: {key} must be {what}, got {value!r}") from None
            if convert is int and isinstance(values[key], float) and not values[key].is_integer():
                raise ValueError(f"{path}: {key} must be a whole number, got {values[key]!r}")
        if action.choices is not None and value not in action.choices and not isinstance(value, list):
            raise ValueError(f"{path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        out[key] = value
    return out


def parse_command(cls, argv: list[str], prog: str, description: str = "", epilog: str | None = None):
    """argv -> an instance of the settings dataclass `cls`: the file of `--config` first, flags over it."""
    parser = build_parser(cls, prog, description, epilog)
    path, _ = split_config_flag(argv)
    if path:
        parser.set_defaults(**_coerce(parser, file_defaults(cls, path), path))
    args = vars(parser.parse_args(argv))
    values = {}
    if "config" in {f.name for f in dataclasses.fields(cls)}:  # a command that reads the recipe itself (demo)
        values["config"] = args.get("config")
    args.pop("config", None)
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        if f.name in nested:
            values[f.name] = nested[f.name](**{g.name: args.pop(g.name) for g in dataclasses.fields(nested[f.name])})
        elif f.name in args:
            values[f.name] = args.pop(f.name)
    required = [f.name for f in dataclasses.fields(cls) if f.default is MISSING and f.default_factory is MISSING
                and values.get(f.name) is None]
    if required:
        parser.error(", ".join(f"--{n.replace('_', '-')}" for n in required) + " is required (or a --config file "
                     "that sets it)")
    return cls(**values)
