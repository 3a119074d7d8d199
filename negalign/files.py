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
