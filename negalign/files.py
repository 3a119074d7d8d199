"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it to read it, the portable
    way, would for a moment give files another thread creates the wrong permissions)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _partial_pattern(name: str) -> re.Pattern:
    """The names atomic_output's temporary copies of `name` get (mkdtemp's / mkstemp's 8 random characters)."""
    return re.compile(re.escape(name) + r"(\.tmp-[a-z0-9_]{8}|\.[a-z0-9_]{8}\.tmp)")


def remove_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary copies of `path` that a killed writer left beside it (they are never a finished
    result). Only for a caller that holds `path`'s lock: without it, a copy may be another writer's, still live."""
    path = Path(path)
    pattern = _partial_pattern(path.name)
    removed = []
    for entry in path.parent.iterdir() if path.parent.is_dir() else ():
        if pattern.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, folder: bool = False, replace: bool = True, set_aside=None,
                  locked: bool = False):
    """Write `path` (a file, or a folder with folder=True) through a temporary one beside it: the body writes
    to the yielded temporary path; on a clean exit its data is flushed to disk (fsync) and it is renamed onto
    `path`, on any error (or a kill) it is removed. replace=False keeps a `path` that appeared meanwhile
    (another process finished first) and drops the new copy; an existing folder is replaced whole, or handed
    to `set_aside(path)` first when given (negalign.outputs.move_aside keeps it beside under another name).
    locked=True: the caller holds `path`'s lock, so temporary copies a killed writer left are removed first.
    The result gets the permissions of any file the user makes (the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if locked:
        remove_partials(path)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(handle)
        tmp = Path(name)
    try:
        yield tmp
        # colleagues load what negalign writes as they would any file of this user's: mkstemp / mkdtemp (and
        # libraries that write through them, safetensors' shards) make it private (0600 / 0700)
        mask = _umask()
        for file in [tmp, *(tmp.rglob("*") if folder else [])]:
            if file.is_dir() and not file.is_symlink():
                os.chmod(file, 0o777 & ~mask)
            elif file.is_file() and not file.is_symlink():
                os.chmod(file, 0o666 & ~mask)
                with open(file, "rb") as written:
                    os.fsync(written.fileno())
        if path.exists() and not replace:
            return
        if folder and path.exists():
            set_aside(path) if set_aside is not None and any(path.iterdir()) else shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if folder else tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, locked: bool = False) -> None:
    with atomic_output(path, locked=locked) as tmp:
        tmp.write_text(text, encoding="utf-8")


def portable(value, cwd: str | os.PathLike | None = None):
    """A JSON-like value with every absolute path made machine-neutral, for results that get committed or
    shared: a path under the home folder becomes "~/...", any other absolute path becomes relative to the
    working directory ("../shared/data"). Other values pass through; dicts and lists are walked."""
    if isinstance(value, dict):
        return {key: portable(item, cwd) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item, cwd) for item in value]
    if not isinstance(value, str) or not os.path.isabs(value) or "\n" in value:
        return value
    home = str(Path.home())
    if value == home or value.startswith(home + os.sep):
        return "~" + value[len(home):]
    return os.path.relpath(value, cwd or os.getcwd())


@functools.cache
def _plain_bool_loader():
    """A safe YAML loader whose booleans are only true / false (YAML 1.2), not YAML 1.1's yes / no / on / off:
    `save_strategy: no` is Hugging Face's string "no", and `use_lora: yes` is an error naming the key, never a
    silent False or True."""
    import re

    import yaml

    class PlainBoolLoader(yaml.SafeLoader):
        pass

    bool_tag = "tag:yaml.org,2002:bool"
    PlainBoolLoader.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    PlainBoolLoader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return PlainBoolLoader


def yaml_scalar(text: str):
    """One command-line value read as YAML (numbers, true / false, null, lists), with read_yaml's booleans."""
    import yaml

    return yaml.load(text, Loader=_plain_bool_loader())  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | os.PathLike, text: str | None = None):
    """A YAML file's value, read safely (no Python object tags), with a key given twice in one mapping refused
    and only true / false as booleans. Every problem is a ValueError naming the file, line and column, or
    FileNotFoundError naming the file."""
    import yaml

    class StrictLoader(_plain_bool_loader()):
        pass

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise ValueError(f"{path}:{mark.line + 1}:{mark.column + 1}: key {key!r} is given twice "
                                 f"(first on line {seen[key] + 1})")
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    if text is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file" + (" (it is a folder)" if os.path.isdir(path) else ""))
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(part) for part in (error.context, error.problem) if part)
        if "could not determine a constructor" in problem:
            problem += " (negalign reads YAML safely: Python object tags are refused)"
        raise ValueError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML: {error}") from None
