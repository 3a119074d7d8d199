"""Harmful compliance, benign refusal (Wilson 95 % bars) and held-out chosen NLL against training steps, for
runs trained with kept checkpoints (study/self-negatives/checkpoint_curve.sh): step 0 is the starting model
(study/starting-model/runs/base), step N a checkpoint (study/self-negatives/runs/RUN/curve/step-N), the last step
the final model.

    .venv/bin/python study/self-negatives/curve_plot.py study/self-negatives/selfneg_steps.png RUN [RUN ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUDY = HERE / "runs"
BASE = HERE.parent / "starting-model" / "runs" / "base"


def points(run: str) -> list[tuple[int, dict]]:
    found = [(0, BASE / "eval" / "eval.json")]
    for folder in (STUDY / run / "curve").glob("step-*"):
        if (folder / "eval.json").exists():
            found.append((int(folder.name.split("-")[1]), folder / "eval.json"))
    config = (STUDY / run / "negalign_config.yaml").read_text()
    last = int(next(line.split(":")[1] for line in config.splitlines() if line.startswith("max_steps:")))
    found.append((last, STUDY / run / "eval" / "eval.json"))
    return sorted((step, json.loads(path.read_text())) for step, path in found)


def main(output: str, runs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, nll) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        series = points(run)
        steps = [s for s, _ in series]
        for key, metric, style in (("harmful", "harmful_compliance", "-o"), ("benign", "benign_refusal", "--s")):
            values = [e[key][metric] for _, e in series]
            rate = [v["rate"] for v in values]
            errors = [[r - v["low"] for r, v in zip(rate, values)], [v["high"] - r for r, v in zip(rate, values)]]
            rates.errorbar(steps, rate, yerr=errors, fmt=style, capsize=3, label=f"{run}: {metric.replace('_', ' ')}")
        nll.plot(steps, [e["preference"]["chosen_nll_per_token"] for _, e in series], "-o", label=run)
    rates.set(xlabel="training step", ylabel="rate (Wilson 95 %)", ylim=(0, 1),
              title="harmful compliance (n=150) and benign refusal (n=100)")
    nll.set(xlabel="training step", ylabel="held-out chosen NLL per token", title="held-out HH chosen NLL")
    rates.legend(fontsize=7)
    nll.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    print(f"wrote {output}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
