"""`negalign loop`: the rounds in order, under one lock on the output folder.

    out/loop_config.json     the settings (a folder of other settings is not continued)
    out/reach/*.jsonl        the reach check's suites (negalign.loop.reach)
    out/pools.json           the pools, their watch slices and what decontamination left out
    out/round-0/             the starting model's evaluation
    out/round-r/             answers, negatives, anchors, training files, model/, watch.json, eval/, reach/, done.json
    out/report.md, front.png, watch.png
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from negalign.files import atomic_write_text
from negalign.locks import output_lock
from negalign.outputs import check_place, claim

CONFIG = "loop_config.json"


def folder_verdict(settings):
    """claim's verdict: a loop of the same settings (rounds aside: a loop may be extended) is continued; a loop
    of other settings, or a folder that is not a loop, is not written into."""
    def verdict(folder: Path) -> str | None:
        record = folder / CONFIG
        if not record.exists():
            return "holds files that are not a negalign loop (no loop_config.json)"
        stored = json.loads(record.read_text()).get("data_key", {})
        wanted = json.loads(json.dumps(settings.data_key()))
        changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        return f"holds a loop of other settings ({', '.join(changed)} differ)" if changed else None
    return verdict


def run_loop(settings) -> dict:
    """Every round not done yet, then the report across rounds; returns the report's rows."""
    from negalign.data.paths import data_dir as find_data_dir

    out = Path(settings.output)
    check_place(out, folder=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one writer: two loops on one folder would append every answer and anchor twice
    with output_lock(out, "the loop"):
        claim(out, folder=True, overwrite=settings.overwrite, verdict=folder_verdict(settings), option="--output")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG, json.dumps({"settings": asdict(settings),
                                                    "data_key": settings.data_key()}, indent=2) + "\n")
        return _run(settings, out, find_data_dir(settings.data_dir))


def _run(settings, out: Path, data_dir) -> dict:
    from negalign.loop.pools import load_or_build
    from negalign.loop.reach import reach_requests, write_reach_files
    from negalign.loop.report import write_report
    from negalign.loop.rounds import run_round, starting_round

    if data_dir is None:
        raise FileNotFoundError("negalign loop needs the data folder (the evaluation suites, and the prompts to "
                                "keep out of the pools): set --data-dir or $NEGALIGN_DATA")
    reach_files = write_reach_files(data_dir, out / "reach", settings.reach_prompts, settings.seed) \
        if settings.reach else []
    pools = load_or_build(out / "pools.json", settings, data_dir, reach_requests(reach_files))
    start = settings.model
    rounds = [starting_round(settings, start, out / "round-0", reach_files)]
    for number in range(1, settings.rounds + 1):
        earlier = [out / f"round-{r}" for r in range(1, number)]
        rounds.append(run_round(number, settings, pools, rounds[-1]["model"], start, out / f"round-{number}",
                                earlier, reach_files))
    return write_report(out, rounds)
