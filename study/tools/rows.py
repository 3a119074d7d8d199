"""One row for each study run, in the columns docs/quality.md's comparisons use: harmful compliance and benign
refusal (pooled, Wilson 95 %, with n), harmful content, fragments (the share of harmful answers judged complying
in under ten words), XSTest-safe / Alpaca refusal, chosen NLL per token (and its change against the base's), KL,
repeated 3-grams of the benign answers, wall-clock (training, evaluation), and the harm cut relative to the
starting model's on the same seed's prompts with the rise in benign refusal (the bar a change must clear: harm
halved at +0.10 benign refusal at most), averaged over the runs. A `LABEL=RUN,RUN,...` group pools runs (seeds).

    .venv/bin/python study/tools/rows.py study/starting-model/runs/base study/which-negatives/runs/default-rows-d2o-k2 ...
    .venv/bin/python study/tools/rows.py "both=study/which-negatives/runs/default-rows-d2o-k2,study/which-negatives/runs/default-rows-d2o-k2-seed1"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from negalign.evaluation.metrics import wilson_interval  # noqa: E402

# the starting model judged on each seed's evaluation prompts (the seed draws the 50 prompts of each suite)
BASES = {0: "study/starting-model/runs/base/eval", 1: "study/context-distillation/runs/demo-context-distillation-seed1/runs/base",
         2: "study/context-distillation/runs/demo-context-distillation-seed2/runs/base"}
BENIGN = ("xstest-safe", "alpaca-benign")


def load(folder: Path) -> dict:
    ev = json.loads((folder / "eval" / "eval.json").read_text())
    log = folder / "train_log.json"
    train_s = None
    if log.exists():
        ends = [h for h in json.loads(log.read_text())["log_history"] if "train_runtime" in h]
        train_s = ends[-1]["train_runtime"] if ends else None
    base = json.loads((Path(BASES[ev["settings"].get("seed", 0)]) / "eval.json").read_text())
    return {"ev": ev, "train_s": train_s, "base": base}


def against_base(runs: list[dict]) -> str:
    """The bar, the mean over the runs of each one's harm cut relative to its seed's base and its rise in
    benign refusal over that base."""
    cuts, rises = [], []
    for run in runs:
        base = run["base"]
        cuts.append(1 - run["ev"]["harmful"]["harmful_compliance"]["rate"] / base["harmful"]["harmful_compliance"]["rate"])
        rises.append(run["ev"]["benign"]["benign_refusal"]["rate"] - base["benign"]["benign_refusal"]["rate"])
    return f"{mean(cuts) * 100:.0f} % / {mean(rises):+.3f}"


def pooled(runs: list[dict], side: str, key: str) -> str:
    count = sum(r["ev"][side][key]["count"] for r in runs)
    n = sum(r["ev"][side][key]["n"] for r in runs)
    low, high = wilson_interval(count, n)
    return f"{count / n:.3f} [{low:.3f}, {high:.3f}] ({count}/{n})"


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def row(label: str, runs: list[dict]) -> str:
    """Rates pooled over the runs' answers; everything else the mean of the runs ('-' where a run's
    evaluation predates the measure: the base's has no KL and no content head)."""
    suites = [r["ev"]["suites"] for r in runs]
    safe = mean([s["xstest-safe"]["benign_refusal"]["rate"] for s in suites])
    alpaca = mean([s["alpaca-benign"]["benign_refusal"]["rate"] for s in suites])
    content = mean([r["ev"]["harmful"]["harmful_content"]["rate"] for r in runs if "harmful_content" in r["ev"]["harmful"]])
    short = mean([r["ev"]["harmful"]["short_compliance"]["rate"] for r in runs if "short_compliance" in r["ev"]["harmful"]])
    nll = mean([r["ev"]["preference"]["chosen_nll_per_token"] for r in runs])
    base_nll = mean([r["base"]["preference"]["chosen_nll_per_token"] for r in runs])
    kl = mean([r["ev"]["kl"]["kl"] for r in runs if r["ev"].get("kl")])
    rep = mean([s[b]["repeated_3gram_fraction"] for s in suites for b in BENIGN if "repeated_3gram_fraction" in s[b]])
    train = mean([r["train_s"] / 60 for r in runs if r["train_s"]])
    evals = mean([r["ev"]["seconds"]["total"] / 60 for r in runs if "seconds" in r["ev"]])
    return (f"| {label} | {len(runs)} | {pooled(runs, 'harmful', 'harmful_compliance')} | {fmt(content)} | "
            f"{fmt(short)} | {pooled(runs, 'benign', 'benign_refusal')} | {safe:.2f} / {alpaca:.2f} | "
            f"{nll:.3f} ({(nll / base_nll - 1) * 100:+.1f} %) | {fmt(kl, '.2f')} | {fmt(rep, '.2f')} | "
            f"{fmt(train, '.1f')} / {fmt(evals, '.1f')} | {against_base(runs)} |")


def main() -> None:
    print("| run | seeds | harmful compliance (pooled) | harmful content | fragments | benign refusal (pooled) | "
          "xstest-safe / alpaca | chosen NLL/tok | KL | rep. 3-grams (benign) | train / eval min | "
          "harm cut / benign rise against each seed's base |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arg in sys.argv[1:]:
        label, _, folders = arg.rpartition("=")
        paths = [Path(f) for f in folders.split(",")]
        print(row(label or paths[0].name, [load(p) for p in paths]))


if __name__ == "__main__":
    main()
