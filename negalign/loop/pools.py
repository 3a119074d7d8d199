"""The loop's prompt pools: harmful and benign prompts from the catalog (or files), none an evaluation prompt
nor a reach-check prompt, split once into a watch slice (the refusal watch's validation prompts) and the
prompts the rounds draw from. Written to pools.json at the start, so that every round and every rerun reads
the same split."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from negalign.files import atomic_write_text

KINDS = ("harmful", "benign")


@dataclass
class Pools:
    train: dict[str, list[list[dict]]]   # kind -> prompts (chat messages) the rounds draw from
    watch: dict[str, list[list[dict]]]   # kind -> the refusal watch's slice
    removed: dict[str, list[dict]]       # kind -> prompts left out, with the prompt each matched

    def round_prompts(self, kind: str, per_round: int | None, round_number: int, fresh: bool) -> list[list[dict]]:
        """Round r's prompts: the first `per_round` of the pool every round, or with `fresh` the r-th slice of
        that size (wrapping round to the start once the pool is used up: a round is never short of prompts)."""
        pool = self.train[kind]
        if per_round is None or per_round >= len(pool):
            return list(pool)
        start = (round_number - 1) * per_round % len(pool) if fresh else 0
        return [pool[(start + i) % len(pool)] for i in range(per_round)]


def _messages(prompts) -> list[list[dict]]:
    return [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]


def source_prompts(sources: list[str], data_dir) -> list[list[dict]]:
    """The distinct prompts of catalog names or files, in order."""
    from negalign.data.catalog import resolve_data
    from negalign.sampling import unique_prompts

    return unique_prompts([p for name in sources for p in unique_prompts(resolve_data(name, data_dir))])


def clean(prompts: list[list[dict]], needed: int | None, data_dir, also_avoid: list[str]) -> tuple[list, list]:
    """(the first `needed` prompts that are neither evaluation prompts nor, exactly or by embedding cosine,
    one of `also_avoid` (the reach check's prompts), the removals)."""
    from negalign.decontamination import clean_first_prompts, decontaminate

    rows = [{"prompt": p} for p in prompts]
    # a few more than needed: some may yet go as reach prompts (the benign source has 6,264, encoded only as far
    # as needed)
    wanted = None if needed is None else needed + needed // 10 + 8
    kept, removed = clean_first_prompts(rows, wanted, data_dir) if data_dir else (rows[:wanted], [])
    if also_avoid and kept:
        kept, more = decontaminate(kept, also_avoid)
        removed += [{**r, "reason": f"{r['reason']} of a reach prompt"} for r in more]
    kept = [r["prompt"] for r in kept]
    return (kept if needed is None else kept[:needed]), removed


def split(prompts: list[list[dict]], n_watch: int, seed: int, kind: str) -> tuple[list, list]:
    """(watch slice, the rest) from a seeded shuffle: the slice is drawn from the whole pool, not its head,
    which in a concatenation of sources would be one source."""
    order = list(range(len(prompts)))
    random.Random(f"{seed}-{kind}-pool").shuffle(order)
    shuffled = [prompts[i] for i in order]
    return shuffled[:n_watch], shuffled[n_watch:]


def build_pools(settings, data_dir, reach_prompts: list[str]) -> Pools:
    """Both pools, cleaned and split as `settings` (LoopSettings) asks."""
    train, watch, removed = {}, {}, {}
    for kind in KINDS:
        per_round = settings.harmful_prompts if kind == "harmful" else settings.benign_prompts
        needed = None if per_round is None else per_round * (settings.rounds if settings.fresh_prompts else 1)
        sources = settings.harmful if kind == "harmful" else settings.benign
        prompts, removed[kind] = clean(source_prompts(sources, data_dir), None if needed is None else
                                       needed + settings.watch_prompts, data_dir, reach_prompts)
        n_watch = settings.watch_prompts if settings.watch_every else 0
        if len(prompts) <= n_watch:
            raise ValueError(f"{kind} pool: {len(prompts)} clean prompts, not enough for a watch slice of "
                             f"{n_watch} and prompts to train on; add sources or lower watch_prompts")
        watch[kind], train[kind] = split(prompts, n_watch, settings.seed, kind)
    return Pools(train, watch, removed)


def pools_key(settings) -> dict:
    """The settings the pools depend on: a rerun with other values must not reuse pools.json. Not `rounds`: a
    loop extended by more rounds keeps its pools (fresh prompts wrap round once the pool is used up)."""
    return {k: getattr(settings, k) for k in ("harmful", "benign", "harmful_prompts", "benign_prompts",
                                              "fresh_prompts", "watch_prompts", "watch_every", "seed",
                                              "reach", "reach_prompts")}


def load_or_build(path: Path, settings, data_dir, reach_prompts: list[str]) -> Pools:
    """pools.json if it was made with these settings, else the pools built and written."""
    key = json.loads(json.dumps(pools_key(settings)))
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") == key:
            return Pools(stored["train"], stored["watch"], stored["removed"])
    pools = build_pools(settings, data_dir, reach_prompts)
    atomic_write_text(path, json.dumps({"settings": key, "train": pools.train, "watch": pools.watch,
                                        "removed": pools.removed}, indent=1) + "\n")
    return pools
