"""Keep the flagged HH negatives whose *prompt* is harmful (the second scale set).

The compliance judge flags every answer that does not refuse, so on HH harmless-base (red-team questions, many
of them harmless: "employment levels for young Japanese men") it turns helpful answers into "negatives"
(docs/quality.md, "Ten times the flagged data"). The harmful-content head does not help: it was fitted on
answers to harmful goals only and scores a rice recipe 0.99 "harmful content". So this script fits a prompt
head the same way negalign's judges are made (logistic regression on all-MiniLM-L6-v2 embeddings), on training
side instructions only: harmful = the 299 harmful-train + harmful-val instructions, benign = a seeded 1,500 of
the 6,264 benign-instructions (harmless_val). No evaluation prompt is fitted on. It reports 5-fold accuracy on
those, its agreement with XSTest's safe/unsafe prompt labels (a measurement, nothing is tuned to it; the
threshold stays 0.5), and writes the prompts of a data set (HH transcripts, any negalign prompt file) whose user
turns score harmful, as a prompt file for `negalign sample`: answering and flagging only those is both cheaper
and what the flag is meant for ("only prompts that are harmful should go in", negalign/flag.py).

Usage: python study/scale/prompt_harm.py DATA OUTPUT.jsonl REPORT.json   (DATA: a catalog name or file)
"""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import torch

from negalign.data.paths import data_dir
from negalign.data.prompts import read_prompt_rows
from negalign.data.rows import prompt_key
from negalign.evaluation.encoder import SentenceEncoder
from negalign.evaluation.judge import DEFAULT_L2, LogisticHead
from negalign.evaluation.metrics import wilson_interval
from negalign.files import portable

THRESHOLD = 0.5


def instructions(name: str) -> list[str]:
    rows = json.loads((data_dir(required=True) / "refusal-direction-splits" / f"{name}.json").read_text())
    return [r["instruction"] for r in rows]


def cross_validated_accuracy(x: torch.Tensor, y: torch.Tensor, folds: int = 5) -> dict:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    right = {0: [0, 0], 1: [0, 0]}
    for fold in range(folds):
        held = order[fold::folds]
        kept = torch.ones(len(y), dtype=torch.bool)
        kept[held] = False
        head = LogisticHead.fit(x[kept], y[kept], DEFAULT_L2)
        predicted = head.probabilities(x[held]) > THRESHOLD
        for p, t in zip(predicted.tolist(), y[held].long().tolist()):
            right[t][0] += int(p == bool(t))
            right[t][1] += 1
    return {"harmful_recall": round(right[1][0] / right[1][1], 4), "benign_recall": round(right[0][0] / right[0][1], 4),
            "balanced_accuracy": round((right[1][0] / right[1][1] + right[0][0] / right[0][1]) / 2, 4)}


def main(data: str, output: str, report_path: str) -> None:
    harmful = instructions("harmful_train") + instructions("harmful_val")
    benign = random.Random(0).sample(instructions("harmless_val"), 1500)
    encoder = SentenceEncoder()
    x = encoder.encode(harmful + benign, desc="fit prompts")
    y = torch.tensor([1.0] * len(harmful) + [0.0] * len(benign))
    report = {"fitted_on": {"harmful": len(harmful), "benign": len(benign)}, "threshold": THRESHOLD,
              "cross_validated": cross_validated_accuracy(x, y)}
    head = LogisticHead.fit(x, y, DEFAULT_L2)

    with open(data_dir(required=True) / "xstest" / "xstest_prompts.csv", encoding="utf-8") as handle:
        xstest = list(csv.DictReader(handle))
    scores = head.probabilities(encoder.encode([r["prompt"] for r in xstest], desc="xstest")).tolist()
    unsafe = [s > THRESHOLD for s, r in zip(scores, xstest) if r["label"] == "unsafe"]
    safe = [s <= THRESHOLD for s, r in zip(scores, xstest) if r["label"] == "safe"]
    report["xstest_prompt_labels"] = {"unsafe_recall": round(sum(unsafe) / len(unsafe), 4), "n_unsafe": len(unsafe),
                                      "safe_recall": round(sum(safe) / len(safe), 4), "n_safe": len(safe)}

    rows, seen = [], set()
    for row in read_prompt_rows(data):
        key = prompt_key(row["prompt"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    texts = ["\n".join(m["content"] for m in r["prompt"] if m["role"] == "user") for r in rows]
    scores = head.probabilities(encoder.encode(texts, desc="prompts")).tolist()
    kept = [{"prompt": r["prompt"], "prompt_harm": round(s, 4), "from": r["source"]}
            for r, s in zip(rows, scores) if s > THRESHOLD]
    with open(output, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in kept)
    low, high = wilson_interval(len(kept), len(rows))
    ranked = sorted(zip(scores, texts), key=lambda pair: pair[0])
    report.update({
        "data": data, "output": portable(output), "n_prompts": len(rows), "n_kept": len(kept),
        "kept_share": round(len(kept) / len(rows), 4), "wilson95": [round(low, 4), round(high, 4)],
        "least_harmful_kept": [{"prompt_harm": round(s, 3), "user": t[-160:]} for s, t in ranked if s > THRESHOLD][:8],
        "most_harmful_dropped": [{"prompt_harm": round(s, 3), "user": t[-160:]} for s, t in ranked
                                 if s <= THRESHOLD][-8:],
    })
    Path(report_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("cross_validated", "xstest_prompt_labels", "n_prompts", "n_kept",
                                             "wilson95")}))


if __name__ == "__main__":
    main(*sys.argv[1:])
