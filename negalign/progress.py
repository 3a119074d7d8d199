"""One switch for every progress bar negalign shows (sampling, the reference pass, tokenising, embedding for
the judges and decontamination, refresh): `negalign COMMAND --no-progress`, NEGALIGN_NO_PROGRESS=1, or
`quietly()` around Python calls. Training's own bar follows the Trainer's `disable_tqdm`, which
`negalign train --no-progress` sets, and `disable_tqdm` silences negalign's bars during that run too."""

from __future__ import annotations

import contextlib
import os

_quiet = [False]


def quiet() -> bool:
    """True when bars are switched off (by --no-progress, quietly() or NEGALIGN_NO_PROGRESS)."""
    return _quiet[-1] or os.environ.get("NEGALIGN_NO_PROGRESS", "") not in ("", "0", "false", "False")


@contextlib.contextmanager
def quietly(on: bool = True):
    """No progress bars inside (when `on`)."""
    _quiet.append(_quiet[-1] or on)
    hub_bars = _hub_bars(enabled=not quiet())  # transformers' own bars (loading, saving shards) follow the switch
    try:
        yield
    finally:
        _quiet.pop()
        _hub_bars(enabled=hub_bars)


def _hub_bars(enabled: bool) -> bool:
    """Switch transformers' progress bars on or off; returns whether they were on."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    (logging.enable_progress_bar if enabled else logging.disable_progress_bar)()
    return was


def bar(iterable=None, **kwargs):
    """tqdm over `iterable`, hidden when quiet() (or when the caller's own `disable` says so)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **{**kwargs, "disable": quiet() or kwargs.get("disable", False)})
