"""Negatives from the model's own answers: `negalign flag` keeps the answers a judge says comply (or refuse).

A user who has harmful prompts but no bad answers can still give D2O (or NPO, gradient ascent, ...) the
negatives it needs: the model answers the prompts (`negalign sample --k 1 --temperature 0`, greedy, its most
likely answer), the offline judge scores each answer, and every answer judged to comply becomes a
{prompt, rejected} negative. These negatives are *on-policy*: what the model itself says, which is what the
D2O paper trains on (its negatives were written by the model it aligns). Only prompts that are harmful should
go in: the judge measures compliance, not harm, so a benign prompt's helpful answer would be flagged too.

The other side of the same judge: on *benign* prompts a refusal is the bad answer (over-refusal), and
`--keep refusing` turns the answers judged to refuse into negatives. Drawn under a refusal sampling context
(`negalign sample --sampling-context refusal`), they are the refusals a model trained on refusal anchors
would learn to give to harmless requests; D2O with them beside the harmful negatives is told both what to
stop saying to harmful prompts and what not to start saying to benign ones (docs/quality.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

from negalign.data.readers import check_data_file, read_json_file
from negalign.evaluation.metrics import THRESHOLD, wilson_interval
from negalign.files import atomic_write_text, portable
from negalign.outputs import check_apart, check_before_lock, claim

REPORT_SUFFIX = ".flags.json"


def read_answers(path: str | os.PathLike) -> list[dict]:
    """The rows of a samples file (`negalign sample` output): {prompt (messages), completion, ...}, each checked
    field by field (a bad one stops it, naming the file, line and field)."""
    from negalign.data import DataError
    from negalign.data.loading import answer_row
    from negalign.data.readers import iter_jsonl

    rows = []
    for record in iter_jsonl(path):
        row = answer_row(record, "fix or drop that line (expected a `negalign sample` file)")
        row["source"] = f"{Path(path).name}:{record.source.rpartition(':')[2]}"  # the line each negative came from
        rows.append(row)
    if not rows:
        raise DataError(str(path), "no answers in the file")
    return rows


def question(prompt) -> str:
    """The last user turn: what the judge sees beside the answer."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


KEEP = ("complying", "refusing")


def file_sha256(path: str | os.PathLike) -> str:
    check_data_file(Path(path), str(path))  # a device such as /dev/zero would be hashed forever
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flag_settings(answers, threshold: float, judge_name: str, keep: str) -> dict:
    """What a flag output depends on, recorded in its report: the same answers and settings remake it unchanged."""
    return {"answers_sha256": file_sha256(answers), "judge": judge_name, "threshold": threshold, "kept": keep}


def earlier_flags(output: Path, wanted: dict) -> str | None:
    """Why an existing `output` must not be written over (see negalign.outputs.claim): it is not a flag output,
    or one made from other answers or settings; None when the same command made it."""
    try:
        old = read_json_file(f"{output}{REPORT_SUFFIX}", "")
    except (OSError, ValueError):
        return f"exists and was not written by `negalign flag` (no readable {output.name}{REPORT_SUFFIX} beside it)"
    changed = ["answers: the answers file is not the one it was flagged from" if key == "answers_sha256" else
               f"{key}: {old.get(key)!r} -> {value!r}" for key, value in wanted.items() if old.get(key) != value]
    return f"holds negatives flagged with other settings ({'; '.join(changed)})" if changed else None


def flag_complying(answers: str | os.PathLike, output: str | os.PathLike,
                   complies: Callable[[list[str], list[str]], Sequence[float]],
                   threshold: float = THRESHOLD, judge_name: str = "offline", keep: str = "complying",
                   locked: bool = False) -> dict:
    """Write the answers judged to comply (probability > threshold) to `output` as negatives, or with
    keep="refusing" those judged to refuse (probability <= threshold); returns the report (also written to
    OUTPUT.flags.json): counts, the flagged share with its Wilson interval. locked: the caller holds the
    output's lock (temporary copies a killed flag left are then removed)."""
    if keep not in KEEP:
        raise ValueError(f"keep: {keep!r} is not one of {KEEP}")
    check_apart(output, [("--answers", answers)])
    rows = read_answers(answers)
    flagged, bad = _judged(rows, complies, threshold, keep)
    low, high = wilson_interval(len(flagged), len(rows))
    report = {"answers": portable(str(answers)), "output": portable(str(output)), "n_answers": len(rows), "n_flagged": len(flagged),
              "flagged_share": round(len(flagged) / len(rows), 4), "wilson95": [round(low, 4), round(high, 4)],
              "n_empty_left_out": n_empty(rows), **flag_settings(answers, threshold, judge_name, keep),
              "not_flagged_examples": [{"prompt": question(r["prompt"]), "answer": r["completion"][:200]}
                                       for r, b in zip(rows, bad) if not b and r["completion"].strip()][:5]}
    # the report first: a kill between the two renames leaves the report with no (or the same settings') output,
    # which the same command remakes (earlier_flags), never an output whose report is missing, which it refuses
    atomic_write_text(f"{output}{REPORT_SUFFIX}", json.dumps(report, indent=2) + "\n", locked=locked)
    atomic_write_text(output, "".join(json.dumps(f) + "\n" for f in flagged), locked=locked)
    return report


def _judged(rows: list[dict], complies, threshold: float, keep: str) -> tuple[list[dict], list[bool]]:
    """(the negatives: rows judged `keep` as {prompt, rejected, judge_complies, flagged_from}, which rows they are).
    An empty (whitespace-only) answer is never a negative, whatever the judge would say of it (it scores ""
    as complying): it is not judged, and training could not use it (a negative needs a completion)."""
    judged = [r for r in rows if r["completion"].strip()]
    scores = iter([float(s) for s in complies([question(r["prompt"]) for r in judged],
                                              [r["completion"] for r in judged])] if judged else [])
    flagged, bad = [], []
    for r in rows:
        s = next(scores) if r["completion"].strip() else None
        bad.append(s is not None and (s > threshold) == (keep == "complying"))
        if bad[-1]:
            flagged.append({"prompt": r["prompt"], "rejected": r["completion"], "judge_complies": round(s, 4),
                            "flagged_from": r["source"]})
    return flagged, bad


def n_empty(rows: list[dict]) -> int:
    return sum(not r["completion"].strip() for r in rows)


def flag_answers(answers, *, keep: str = "complying", threshold: float = THRESHOLD, judge=None) -> list[dict]:
    """`negalign flag` from Python, writing nothing: the answers judged `keep` (complying, or refusing) as
    negatives {prompt, rejected, judge_complies, flagged_from}, ready for `negalign.train(train_dataset=...)`.

    `answers`: a `negalign sample` file, or rows you hold: a list of {prompt, completion} dicts (prompt as text
    or chat messages) or a datasets.Dataset of them. `judge`: a head made by `negalign judge fit`, or a callable
    complies(questions, answers) -> probabilities (default: the built-in offline judge)."""
    if keep not in KEEP:
        raise ValueError(f"keep: {keep!r} is not one of {KEEP}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if isinstance(answers, (str, os.PathLike)):
        rows = read_answers(answers)
    else:
        from negalign.data import DataError
        from negalign.data.loading import answer_row
        from negalign.data.readers import RawRecord

        rows = []
        for number, row in enumerate(answers):
            where = f"answers row {number}"
            value = dict(row) if isinstance(row, dict) or hasattr(row, "keys") else DataError(
                where, f"must be a {{prompt, completion}} dict, got {type(row).__name__}")
            rows.append({**answer_row(RawRecord(where, where, value), "each row is a {prompt, completion} dict"),
                         "source": where})
        if not rows:
            raise ValueError("answers: no rows")
    if not callable(judge):
        from negalign.evaluation.judge import HarmJudge

        judge = HarmJudge.load(judge).complies
    return _judged(rows, judge, threshold, keep)[0]


def cmd_flag(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="negalign flag", description="Turn the model's own answers to harmful prompts into negatives: every "
        "answer the judge scores as complying becomes a {prompt, rejected} row (with --keep refusing: every "
        "answer it scores as a refusal, for benign prompts).",
        epilog="example:\n  negalign sample --data harmful_prompts.jsonl --k 1 --temperature 0 --max-new-tokens 64 "
        "--output runs/answers.jsonl --no-anchor-report\n  negalign flag --answers runs/answers.jsonl --output "
        "runs/negatives.jsonl\n  negalign train objective=d2o data=runs/negatives.jsonl ...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", required=True, help="the model's answers: a `negalign sample` output file")
    parser.add_argument("--output", required=True, help="negatives jsonl ({prompt, rejected, judge_complies}); "
                        f"a report is written beside it as OUTPUT{REPORT_SUFFIX}")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help="an answer whose judge probability of complying is above this is flagged")
    parser.add_argument("--keep", choices=KEEP, default="complying",
                        help="which answers become negatives: those judged complying (harmful prompts, the "
                        "default) or refusing (benign prompts: over-refusals)")
    parser.add_argument("--judge", default=None, help="a judge head made by `negalign judge fit` (default: the "
                        "built-in offline judge)")
    parser.add_argument("--overwrite", action="store_true", help="replace an --output made otherwise (it is moved "
                        "aside to OUTPUT.replaced-<time>); the same answers and settings remake it without")
    args = parser.parse_args(argv)
    if not 0 <= args.threshold < 1:
        parser.error(f"--threshold must be in [0, 1), got {args.threshold}")
    check_before_lock(args.output, [("--answers", args.answers), ("--judge", args.judge)], folder=False)
    wanted = flag_settings(args.answers, args.threshold, args.judge or "offline", args.keep)
    from negalign.evaluation.judge import HarmJudge
    from negalign.locks import output_lock

    with output_lock(args.output, "flagging"):  # one writer: two flags into one output would mix their files
        claim(args.output, folder=False, overwrite=args.overwrite, verdict=lambda path: earlier_flags(path, wanted),
              companions=[REPORT_SUFFIX])
        judge = HarmJudge.load(args.judge)
        report = flag_complying(args.answers, args.output, judge.complies, args.threshold,
                                judge_name=args.judge or "offline", keep=args.keep, locked=True)
    print(f"negalign flag: {report['n_flagged']} of {report['n_answers']} answers judged {args.keep} "
          f"({report['flagged_share']:.3f} [{report['wilson95'][0]:.3f}, {report['wilson95'][1]:.3f}]) -> "
          f"{args.output}" + (f"; {report['n_empty_left_out']} empty answers left out (never negatives)"
                              if report["n_empty_left_out"] else ""))
    return 0
