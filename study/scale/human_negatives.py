"""The human-negatives arm of the scale study (do people's bad answers teach more than the model's own?): the
flagged HH prompts with the human `rejected` answer of their HH pair as the negative (instead of the model's own
flagged answer), plus the files the flagged arm has beside its HH negatives (the benign refusals; the harmful-set
negatives, which have no human answer), so the two arms differ only in who wrote the HH side. Also writes the
scale data's counts (the stage files beside HH_FLAGGED).

Usage: python study/scale/human_negatives.py HH_FLAGGED OUT_JSONL COUNTS_JSON [ALSO_JSONL...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from negalign.data.loading import load_rows
from negalign.data.rows import prompt_key


def _read(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _meta_rows(path: Path) -> int | None:
    """How many answers a samples file holds (one per prompt at k 1)."""
    return len(_read(str(path))) if path.exists() else None


def main(hh_flagged: str, output: str, counts: str, *also: str) -> None:
    rows, _ = load_rows("hh-harmless-base", on_bad_row="skip")
    human = {}
    for row in rows:  # the rejected side of each HH pair, by its prompt (the first pair of a repeated prompt)
        if row.get("label") is False and row.get("pair_id") is not None:
            human.setdefault(prompt_key(row["prompt"]), row["completion"])
    flagged = _read(hh_flagged)
    negatives = [{"prompt": f["prompt"], "rejected": human[prompt_key(f["prompt"])]}
                 for f in flagged if prompt_key(f["prompt"]) in human]
    rest = [row for path in also for row in _read(path)]
    Path(output).write_text("".join(json.dumps(n) + "\n" for n in negatives + rest))
    folder = Path(hh_flagged).parent
    answered = {name: _meta_rows(folder / f"{name}.jsonl") for name in ("hh-answers", "harmful-answers",
                                                                         "benign-under-refusal")}
    report = {"hh_prompts_answered": answered["hh-answers"], "hh_flagged": len(flagged),
              "harmful_prompts_answered": answered["harmful-answers"],
              "harmful_flagged": len(_read(str(folder / "harmful-flagged.jsonl"))),
              "benign_prompts_answered_under_refusal": answered["benign-under-refusal"],
              "benign_refusals": len(_read(str(folder / "benign-refusals.jsonl"))), "hh_flagged_with_a_human_rejected_answer": len(negatives)}
    Path(counts).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
