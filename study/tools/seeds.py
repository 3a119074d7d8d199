"""Runs of one recipe at several seeds, side by side: each run's D2O row of its demo report, the spread across
seeds (mean, standard deviation, range) and the pooled rate over every seed's answers (Wilson 95 %: evaluation
noise only, not the training's randomness, which the spread shows). The demo's seed also draws each suite's
50 evaluation prompts, so every run is read against the starting model on the same prompts (its own base).
Short compliance: answers judged complying with fewer than 10 words, the fragments degenerate runs write.
Writes OUT/seeds.json (default study/seeds, or --out), prints a markdown table and plots each run's
harmful compliance as a share of its base's against its rise in benign refusal, one point per run.
A group is LABEL=PATTERN[,PATTERN...][@RUN]: the demo folders, and which of their runs/ to read (default d2o).

    .venv/bin/python study/tools/seeds.py "default=results/demo,study/seeds/runs/demo-benign-refusals-seed*" \
        "lora 144 steps=study/seeds/runs/demo-benign-refusals-lora-seed*" "full FT 48 steps=study/seeds/runs/demo-default-seed*"
    .venv/bin/python study/tools/seeds.py --out study/context-distillation/d2o-vs-distillation \
        "D2O=study/context-distillation/runs/demo-context-distillation*" \
        "SFT on anchors=study/context-distillation/runs/demo-context-distillation*@context_distillation"
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


def short_compliance(eval_dir: Path) -> dict | None:
    """Evaluations made before eval.json counted short compliance: counted here from the judged answers on
    disk, with the same function `negalign eval` uses (None when they are not there)."""
    from negalign.evaluation.metrics import short_compliance_rate

    evaluation = json.loads((eval_dir / "eval.json").read_text())
    names = [name for name, suite in evaluation.get("suites", {}).items() if suite.get("kind") == "harmful"]
    files = [eval_dir / "answers" / f"{name}.judged.jsonl" for name in names]
    if not names or not all(f.exists() for f in files):
        return None
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    return short_compliance_rate([r["complies"] for r in rows], [r["completion"] for r in rows])


def run_row(folder: Path, run: str = "d2o") -> dict:
    """One seed's row of `run` and its base row, read from the runs' evaluations."""
    from negalign.evaluation.report import find_run, summarise

    d2o, base = (summarise(find_run(folder / "runs" / name)) for name in (run, "base"))
    if d2o.get("short_compliance") is None:
        d2o["short_compliance"] = short_compliance(folder / "runs" / run / "eval")
    config = json.loads((folder / "demo_config.json").read_text())
    return {"folder": str(folder), "seed": config["seed"],
            **{key: {"count": d2o[key]["count"], "n": d2o[key]["n"], "rate": d2o[key]["rate"]} if d2o.get(key) else None
               for key in RATES},  # None: an older evaluation without that count
            "base_harmful_compliance": base["harmful_compliance"]["rate"],
            "base_benign_refusal": base["benign_refusal"]["rate"],
            "chosen_nll": d2o.get("chosen_nll_per_token"),
            "kl": d2o.get("kl")}


def spread(rows: list[dict], key: str) -> dict | None:
    rows = [r for r in rows if r[key] is not None]
    if not rows:
        return None
    rates = [r[key]["rate"] for r in rows]
    count, n = sum(r[key]["count"] for r in rows), sum(r[key]["n"] for r in rows)
    low, high = wilson_interval(count, n)
    return {"mean": statistics.mean(rates), "sd": statistics.stdev(rates) if len(rates) > 1 else 0.0,
            "min": min(rates), "max": max(rates), "pooled": {"count": count, "n": n, "low": low, "high": high}}


def main(groups: list[str], out: Path = Path("study/seeds")) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for group in groups:
        label, pattern = group.split("=", 1)
        pattern, _, run = pattern.partition("@")
        run = run or "d2o"
        folders = sorted({f for part in pattern.split(",") for f in glob.glob(part)})  # "a*,b": several patterns
        rows = sorted((run_row(Path(f), run) for f in folders
                       if (Path(f) / "runs" / run / "eval" / "eval.json").exists()), key=lambda row: row["seed"])
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
                                                          if r[k] else "-" for k in RATES) + f" | {nll} | {kl} |")
        cells = []
        for key in RATES:
            s = entry[key]
            if s is None:
                cells.append("-")
                continue
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
    axes.set_title("recipes across seeds (X: mean)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--out"]:
        main(arguments[2:], Path(arguments[1]))
    else:
        main(arguments)
