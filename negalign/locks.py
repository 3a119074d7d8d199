"""One writer per output: an exclusive lock that a second process is refused at once (or waits for).

The lock is `fcntl.flock` on a small file beside the output, so the operating system drops it when its holder
exits for any reason, kill -9 included: a stale lock file never blocks a rerun. The file keeps the holder's pid
and command for the message the second process prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path


class OutputLocked(RuntimeError):
    """Another process holds the lock of this output."""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output file or folder: `<output>.lock` beside it (not inside, so that a folder the
    holder deletes or replaces keeps its lock)."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


def _holder(handle) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, what: str, wait: bool = False, poll_s: float = 0.5):
    """Hold the lock of `output` for the body. `what` names the work in the refusal ("sampling into ...")."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # "a+": opening never truncates what the holder wrote
    try:
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(handle)
                if not wait:
                    raise OutputLocked(f"{output} is being written by {holder} ({what}); wait for it to finish, "
                                       "rerun with --wait (wait_for_lock=true for train), or choose another "
                                       "output") from None
                if not told:
                    print(f"negalign: waiting for {holder} to finish writing {output}", file=sys.stderr)
                    told = True
                time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {' '.join(sys.argv[:3])[:200]}\n")
        handle.flush()
        yield path
    finally:
        handle.close()  # closing releases the flock
