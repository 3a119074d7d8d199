"""One writer per output: an exclusive lock that a second process is refused at once (or waits for).

The lock is a `filelock.FileLock` on a small file beside the output: `flock` on POSIX, `LockFileEx` on Windows,
so the operating system drops it when its holder exits for any reason, kill -9 included, and a stale lock file
never blocks a rerun. The file keeps the holder's pid and command name (`negalign train`) for the message the
second process prints, and nothing else: never the command's arguments, which can carry a token
(`hub_token=hf_...`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from filelock import FileLock, Timeout


class OutputLocked(RuntimeError):
    """Another process holds the lock of this output."""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output file or folder: `<output>.lock` beside it (not inside, so that a folder the
    holder deletes or replaces keeps its lock)."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


# the command this process runs, set by negalign's command line (cli.main) before any lock is taken; a library
# user's process is named by its program file. Never an argument: options and values may carry a token.
COMMAND: str | None = None


def command_name() -> str:
    """What this process is, for another process's message: `negalign <command>`, or the program's file name."""
    if COMMAND is not None:
        return f"negalign {COMMAND}"
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return program if program and not program.startswith("-") else "python"


def _record_holder(fd: int) -> None:
    """filelock's on_acquired hook: write who holds the lock into the lock file (fd is locked and open)."""
    record = f"pid {os.getpid()}: {command_name()}\n".encode("utf-8")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, record)


def _holder(path: Path) -> str:
    # the holder writes its line right after it takes the lock; an empty or unreadable file (Windows keeps the
    # locked byte from other readers) reads as "another process"
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0][:200] if text else "another process"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, what: str, wait: bool = False, poll_s: float = 0.5):
    """Hold the lock of `output` for the body. `what` names the work in the refusal ("sampling into ...").
    A second holder is refused at once with OutputLocked, or with `wait` waits (saying so once)."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a new FileLock per call (not a singleton): a second output_lock in this same process is refused too
    lock = FileLock(path, timeout=0, on_acquired=_record_holder)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(path)
        if not wait:
            raise OutputLocked(f"{output} is being written by {holder} ({what}); wait for it to finish, "
                               "rerun with --wait (wait_for_lock=true for train), or choose another "
                               "output") from None
        print(f"negalign: waiting for {holder} to finish writing {output}", file=sys.stderr)
        lock.acquire(timeout=-1, poll_interval=poll_s)
    try:
        yield path
    finally:
        lock.release()
