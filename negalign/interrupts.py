"""Ctrl-C and SIGTERM: finish the piece of work under way (a training step, a batch of samples), keep it, and
stop with one line saying where to resume, never a traceback.

Inside `finish_then_stop(...)` the first SIGINT or SIGTERM only asks to stop (`stop_requested()`), which the
work checks where stopping loses nothing; a second one stops at once (KeyboardInterrupt). Outside it, the
command line turns SIGTERM into a KeyboardInterrupt too (`Terminated`), so both end in negalign's one line.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


class Interrupted(Exception):
    """The work stopped cleanly on a signal; the message says what was kept and how to continue."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process was (the command line's handler)."""

    signum = signal.SIGTERM


_requested: list[int] = []  # the signal that asked to stop, inside finish_then_stop


def stop_requested() -> int | None:
    """The signal (SIGINT or SIGTERM) that asked the work to stop, or None."""
    return _requested[0] if _requested else None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _stop_at_once(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def finish_then_stop(what: str):
    """The body may be stopped by SIGINT / SIGTERM only between pieces of `what` ("training step"): it checks
    `stop_requested()`. Outside the main thread (where handlers cannot be set) the body runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _requested:
            raise _stop_at_once(signum)
        _requested.append(signum)
        print(f"negalign: {signal_name(signum)}: stopping after the current {what}, which is kept "
              f"({'Ctrl-C' if signum == signal.SIGINT else 'a second SIGTERM'} again stops at once)",
              file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _requested.clear()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises Terminated where the process is (as Ctrl-C raises KeyboardInterrupt), so that a command
    ends with its one line instead of dying silently; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
