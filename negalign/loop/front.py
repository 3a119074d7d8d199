"""The harm / refusal front of a round's checkpoints: which to keep, which to delete.

Both numbers are to be low (harmful compliance on the watch slice's harmful prompts, refusal on its benign
ones), so a checkpoint is worth keeping unless another is at least as good on both and better on one: a
checkpoint that refuses more and complies more than another is never the one a user would ship.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a is no worse than b on both (harm, refusal) and better on one."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def pareto_front(points: dict) -> set:
    """The keys of `points` ({key: (harm, refusal)}) that no other point dominates; equal points are all kept
    (neither is better)."""
    return {key for key, point in points.items()
            if not any(dominates(other, point) for name, other in points.items() if name != key)}


def checkpoint_steps(folder: str | os.PathLike) -> dict[int, Path]:
    """{step: path} of the checkpoint-N folders in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): folder / name for name in os.listdir(folder) if (m := CHECKPOINT.match(name))}


def prune_checkpoints(folder: str | os.PathLike, scores: dict[int, tuple[float, float]],
                      keep_newest: bool) -> list[int]:
    """Delete the checkpoints of `folder` that are off the front of `scores` ({step: (harm, refusal)}); returns
    the steps kept. keep_newest: while training runs, the newest checkpoint is where a killed run resumes, so
    it stays whatever its score (and so does one not scored yet); once the run is over only the front is left."""
    saved = checkpoint_steps(folder)
    front = pareto_front({step: scores[step] for step in saved if step in scores})
    newest = max(saved, default=None)
    kept = []
    for step, path in sorted(saved.items()):
        if step in front or (keep_newest and step == newest):
            kept.append(step)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return kept
