"""What a command may write over: one policy for every command that writes a folder or a file (train, sample,
flag, eval, export), and one-line messages for outputs that cannot be written.

1. An output is never one of the command's inputs, never holds one and never lies inside one (`check_apart`):
   refused even with --overwrite, since replacing it would lose what the command reads.
2. An output that exists and holds something is refused unless it is the command's own earlier output that the
   command may continue or remake unchanged (each command says which: `claim`'s `verdict`). A finished result
   is never replaced without --overwrite.
3. --overwrite moves what it replaces aside to `<name>.replaced-<time>` beside it (a rename: cheap and
   undoable), and says so in one line; nothing is deleted.
4. A place that cannot hold the output (a file where a folder is needed, or the reverse) is named before any
   work; an operating-system error is one line naming the path and what to do (`describe`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable

logger = logging.getLogger("negalign")


class OutputRefused(ValueError):
    """The output would replace something the user did not ask to lose; the message says what to do."""


class DiskFull(OSError):
    """No space left while writing an output; the message names it and says how to continue."""


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _inside(inner: str, outer: str) -> bool:
    return inner != outer and inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_apart(output: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]],
                option: str = "--output", may_lie_inside: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse an output that is, holds, or lies inside one of `inputs` ((name, path) pairs; names that are not
    local paths, such as Hub names, are passed over). `may_lie_inside`: inputs the output may be a part of
    (an evaluation's default folder inside the model it evaluates)."""
    out = _real(output)
    allowed = {_real(path) for path in may_lie_inside if path}
    for name, value in inputs:
        if not value or not os.path.exists(os.path.expanduser(str(value))):
            continue
        source = _real(value)
        if source == out:
            problem = f"is also {name}, an input of this command"
        elif _inside(source, out):
            problem = f"holds {name} ({value}), an input of this command"
        elif _inside(out, source) and source not in allowed:
            problem = f"lies inside {name} ({value}), an input of this command"
        else:
            continue
        raise OutputRefused(f"{output} {problem}: writing it would lose what it reads (even with --overwrite); "
                            f"choose another {option}")


def check_place(output: str | os.PathLike, folder: bool) -> None:
    """Refuse at once an output whose place cannot hold it: a path under a file."""
    path = Path(os.path.expanduser(str(output)))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputRefused(f"cannot create {output}: {parent} is a file, not a folder; choose another output")
            return


def check_before_lock(output: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]], *,
                      folder: bool, option: str = "--output",
                      may_lie_inside: Iterable[str | os.PathLike | None] = ()) -> None:
    """What is refused whatever is there, checked before the output's lock file is made beside it (a refused
    command leaves nothing behind, in a model folder least of all): the output apart from the inputs, and a
    place that can hold it."""
    check_apart(output, inputs, option, may_lie_inside)
    check_place(output, folder)


def is_empty(path: Path) -> bool:
    if not path.exists():
        return True
    return not any(path.iterdir()) if path.is_dir() else path.stat().st_size == 0


def move_aside(path: Path, companions: Iterable[Path] = ()) -> Path:
    """Rename `path` (and the files that belong to it) to `<name>.replaced-<time>` beside it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, number = path.with_name(f"{path.name}.replaced-{stamp}"), 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.replaced-{stamp}-{number}")
    os.rename(path, target)
    suffix = target.name[len(path.name):]
    for companion in companions:
        if companion.exists():
            os.rename(companion, companion.with_name(companion.name + suffix))
    logger.warning("negalign: --overwrite: moved %s aside to %s", path, target)
    return target


def claim(output: str | os.PathLike, *, folder: bool, overwrite: bool, verdict: Callable[[Path], str | None],
          companions: Iterable[str] = (), flag: str = "--overwrite", option: str = "--output") -> Path | None:
    """Make `output` ready to be written. Nothing there (or an empty file or folder): go ahead. Otherwise
    `verdict(path)` says why it must not be written over ("holds ..."), or None when the command may continue or
    remake it. With `overwrite` whatever is there is moved aside (and the path it went to returned); without,
    a refusal is an OutputRefused. `companions`: suffixes of files beside a file output that go with it
    (".meta.json")."""
    path = Path(os.path.expanduser(str(output)))
    check_place(path, folder)
    if is_empty(path):
        return None
    if folder and not path.is_dir():
        reason = "is a file, not a folder"
    elif not folder and path.is_dir():
        reason = "is a folder, not a file"
    else:
        reason = verdict(path)
    if overwrite:
        return move_aside(path, [path.with_name(path.name + suffix) for suffix in companions])
    if reason is None:
        return None
    them = "them" if reason.startswith("holds files") else "it"
    raise OutputRefused(f"{output} {reason}; pass {flag} to move {them} aside to {path.name}.replaced-<time>, or "
                        f"choose another {option}")


def folder_free(output: str | os.PathLike, overwrite: bool) -> None:
    """For a folder written whole (export, compare): refuse one that holds anything unless `overwrite` (which
    moves it aside once the new one is written, `new_folder`). Call it before the work, and new_folder checks
    again under the lock."""
    claim(output, folder=True, overwrite=False, verdict=lambda _: None if overwrite else "exists and is not empty")


@contextlib.contextmanager
def new_folder(output: str | os.PathLike, what: str, overwrite: bool):
    """Write a folder output whole, under its lock: yields a temporary folder that replaces `output` on a clean
    exit (what was there moved aside, never deleted); partial copies a killed writer left are removed first."""
    from negalign.files import atomic_output
    from negalign.locks import output_lock

    with output_lock(output, what):
        folder_free(output, overwrite)
        with atomic_output(output, folder=True, set_aside=move_aside, locked=True) as tmp:
            yield tmp


# ----- operating-system errors, in one line --------------------------------------------------------------

NO_SPACE = ("No space left on device", "StorageFull", "os error 28", "Disk quota exceeded")


def is_disk_full(error: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """A full disk, however the library that wrote reported it: OSError ENOSPC / EDQUOT, a safetensors error
    quoting the OS error, or torch.save's "file write failed" while the disk has (almost) no space left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    if any(mark in text for mark in NO_SPACE):
        return True
    if "write failed" in text and folder is not None:
        try:
            return os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize < 64 * 2 ** 20
        except OSError:
            return False
    return False


def _file_part(path: str) -> str:
    """The first part of `path` that exists and is a file, for ENOTDIR."""
    for parent in reversed(Path(path).parents):
        if parent.exists() and not parent.is_dir():
            return str(parent)
    return "a part of it"


def describe(error: BaseException) -> str:
    """One line for an error: an operating-system error as the path and what to do, without "[Errno N]";
    anything else as its own message."""
    if not isinstance(error, OSError) or error.errno is None or isinstance(error, DiskFull):
        return str(error)
    path, code = error.filename, error.errno
    where = f" {path}" if path else ""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on device{' writing' + where if path else ''}; free some space and rerun the same "
                "command (what was written completely is kept)")
    if code in (errno.EACCES, errno.EPERM):
        return (f"cannot write{where}: permission denied; choose a place you can write to, or change its "
                "permissions (for an input: make it readable)")
    if code == errno.EROFS:
        return f"cannot write{where}: the file system is read-only; choose an output on a writable disk"
    if code == errno.ENOTDIR and path:
        return f"cannot create {path}: {_file_part(path)} is a file, not a folder; choose another output"
    if code == errno.EEXIST and path:
        return f"{path} exists and is a file, not a folder; choose another output"
    if code == errno.EISDIR and path:
        return f"{path} is a folder, not a file; name a file"
    if code == errno.ENOENT and path:
        return f"{path}: no such file or folder"
    if code == errno.ENAMETOOLONG and path:
        return f"{path}: the name is too long for the file system"
    return f"{path}: {error.strerror}" if path else (error.strerror or str(error))
