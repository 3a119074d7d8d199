"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as sink:
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def read_yaml(path: str | os.PathLike, text: str | None = None):
    """A YAML file's value, read safely (no Python object tags), with a key given twice in one mapping refused.
    Every problem is a ValueError naming the file, line and column, or FileNotFoundError naming the file."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
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
