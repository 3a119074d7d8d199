"""Rows of docs/quality.md from a run's record (study/<question>/runs/<run>/): pooled harmful compliance and benign refusal (Wilson 95 %),
per-suite rates, held-out chosen NLL, KL, benign answer length, and the D2O log at the end of training.

    .venv/bin/python study/tools/table.py study/starting-model/runs/base study/refusal-context-anchors/runs/d2o-refusal-k2 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HARMFUL = ("advbench", "refusal-harmful", "xstest-unsafe")
BENIGN = ("xstest-safe", "alpaca-benign")


def rate(entry: dict) -> str:
    return f"{entry['rate']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def row(folder: Path) -> str:
    ev = json.loads((folder / "eval" / "eval.json").read_text())
    suites = ev["suites"]
    harm = ev["harmful"]["harmful_compliance"]
    benign = ev["benign"]["benign_refusal"]
    per = " / ".join(f"{suites[s]['harmful_compliance']['rate']:.2f}" for s in HARMFUL)
    per_benign = " / ".join(f"{suites[s]['benign_refusal']['rate']:.2f}" for s in BENIGN)
    tokens = sum(suites[s]["answer_tokens"] for s in BENIGN) / len(BENIGN)
    nll = ev["preference"]["chosen_nll_per_token"]
    kl = ev["kl"]["kl"] if ev.get("kl") else None
    log = folder / "train_log.json"
    end = ""
    if log.exists():
        history = [h for h in json.loads(log.read_text())["log_history"] if "loss" in h]
        last = history[-1]
        keys = ("d2o/sample_term", "d2o/negative_term", "d2o/saturated_share")
        if all(k in last for k in keys):
            end = f"{last[keys[0]]:+.2f} / {last[keys[1]]:+.2f} / {last[keys[2]]:.2f}"
        if "retain/nll" in last:
            end += f"; retain NLL {last['retain/nll']:.2f}"
    return (f"| {folder.name} | {rate(harm)} ({harm['count']}/{harm['n']}) | {per} | {rate(benign)} "
            f"({benign['count']}/{benign['n']}) | {per_benign} | {nll:.3f} | {'-' if kl is None else f'{kl:.2f}'} "
            f"| {tokens:.0f} | {end or '-'} |")


def main() -> None:
    print("| run | harmful compliance (pooled) | advbench / refusal-harmful / xstest-unsafe | benign refusal "
          "(pooled) | xstest-safe / alpaca-benign | chosen NLL/tok | KL | benign answer tokens | end of training: "
          "sample term / negative term / saturated |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in sys.argv[1:]:
        print(row(Path(name)))


if __name__ == "__main__":
    main()
