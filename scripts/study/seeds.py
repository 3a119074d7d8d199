"""Runs of one recipe at several seeds, side by side: each run's D2O row of its demo report, the spread across
seeds (mean, standard deviation, range) and the pooled rate over every seed's answers (Wilson 95 %: evaluation
noise only, not the training's randomness, which the spread shows). The demo's seed also draws each suite's
50 evaluation prompts, so every run is read against the starting model on the same prompts (its own base).
Short compliance: answers judged complying with fewer than 10 words, the fragments degenerate runs write.
Writes results/study/seeds/seeds.json, prints a markdown table and plots each run's harmful compliance as a
share of its base's against its rise in benign refusal, one point per run.

    .venv/bin/python scripts/study/seeds.py "default=results/demo,results/demo-benign-refusals-seed*" \
        "lora 144 steps=results/demo-benign-refusals-lora-seed*" "full FT 48 steps=results/demo-default-seed*"
"""

from __future__ import annotations

import glob
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from negalign.evaluation.metrics import wilson_interval  # noqa: E402

RATES = ("harmful_compliance", "short_compliance", "harmful_content", "benign_refusal")


def run_row(folder: Path) -> dict:
    """One seed's D2O and base rows, read from the runs' evaluations (so that short compliance, which older
    reports lack, is counted from the judged answers on disk)."""
    from negalign.evaluation.report import find_run, summarise

    d2o, base = (summarise(find_run(folder / "runs" / name)) for name in ("d2o", "base"))
    config = json.loads((folder / "demo_config.json").read_text())
    return {"folder": str(folder), "seed": config["seed"],
            **{key: {"count": d2o[key]["count"], "n": d2o[key]["n"], "rate": d2o[key]["rate"]} for key in RATES},
            "base_harmful_compliance": base["harmful_compliance"]["rate"],
            "base_benign_refusal": base["benign_refusal"]["rate"],
            "chosen_nll": d2o.get("chosen_nll_per_token"),
            "kl": d2o.get("kl")}


def spread(rows: list[dict], key: str) -> dict:
    rates = [r[key]["rate"] for r in rows]
    count, n = sum(r[key]["count"] for r in rows), sum(r[key]["n"] for r in rows)
    low, high = wilson_interval(count, n)
    return {"mean": statistics.mean(rates), "sd": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "min": min(rates), "max": max(rates), "pooled": {"count": count, "n": n, "low": low, "high": high}}


def main(groups: list[str]) -> None:
    out = Path("results/study/seeds")
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for group in groups:
        label, pattern = group.split("=", 1)
        folders = sorted({f for part in pattern.split(",") for f in glob.glob(part)})  # "a*,b": several patterns
        rows = sorted((run_row(Path(f)) for f in folders if (Path(f) / "runs" / "d2o" / "eval").exists()),
                      key=lambda row: row["seed"])
        summary[label] = {"pattern": pattern, "runs": rows, **{key: spread(rows, key) for key in RATES}}
    (out / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| recipe | seed | harmful compliance | of which under 10 words | harmful content | benign refusal | "
          "chosen NLL/tok | KL |")
    print("|---|---|---|---|---|---|---|---|")
    for label, entry in summary.items():
        for r in entry["runs"]:
            nll = f"{r['chosen_nll']:.3f}" if r["chosen_nll"] is not None else "-"
            kl = f"{r['kl']:.2f}" if isinstance(r["kl"], (int, float)) else "-"
            print(f"| {label} | {r['seed']} | " + " | ".join(f"{r[k]['rate']:.3f} ({r[k]['count']}/{r[k]['n']})"
                                                          for k in RATES) + f" | {nll} | {kl} |")
        cells = []
        for key in RATES:
            s = entry[key]
            cells.append(f"**{s['mean']:.3f}** sd {s['sd']:.3f}, {s['min']:.3f}-{s['max']:.3f}; pooled "
                         f"[{s['pooled']['low']:.3f}, {s['pooled']['high']:.3f}] (n={s['pooled']['n']})")
        print(f"| {label} | all {len(entry['runs'])} | " + " | ".join(cells) + " | | |")
    plot(summary, out / "harm_vs_refusal_seeds.png")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    for label, entry in summary.items():
        xs = [r["benign_refusal"]["rate"] - r["base_benign_refusal"] for r in entry["runs"]]
        ys = [r["harmful_compliance"]["rate"] / r["base_harmful_compliance"] for r in entry["runs"]]
        points = axes.scatter(xs, ys, label=f"{label} (one point per seed)", alpha=0.8)
        axes.scatter([statistics.mean(xs)], [statistics.mean(ys)], marker="X", s=120,
                     color=points.get_facecolor()[0], edgecolor="black")
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="harm halved")
    axes.axvline(0.10, color="grey", linestyle=":", linewidth=1, label="benign refusal +0.10")
    axes.set_xlabel("benign refusal minus the starting model's, same prompts (n = 100 per run)")
    axes.set_ylabel("harmful compliance / the starting model's (n = 150 per run)")
    axes.set_title("D2O recipes across seeds (X: mean)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
