"""`negalign judge`: fit the offline harm judge (or the harmful-content head) and score answers with it. The
command sits above both heads (negalign.evaluation.judge and .content_judge), which import nothing of it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from negalign.data.paths import data_dir as resolve_data_dir
from negalign.evaluation.content_judge import CONTENT_ASSET, fit_content_judge
from negalign.evaluation.judge import ASSET, DEFAULT_L2, FEATURE_SETS, TEXT_MODES, HarmJudge, fit_judge
from negalign.files import atomic_write_text, portable

# ------------------------------------------------------------------------------------------------- CLI

def cmd_judge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="negalign judge", description="The offline harm judge.")
    sub = parser.add_subparsers(dest="action", required=True)
    fit = sub.add_parser("fit", help="re-make the judge head from XSTest's human labels and measure it")
    fit.add_argument("--data-dir", help="folder holding xstest/ (default: $NEGALIGN_DATA or ../shared/data)")
    fit.add_argument("--text", choices=TEXT_MODES, default="answer", help="what to embed (default: answer)")
    fit.add_argument("--features", choices=FEATURE_SETS, default="embedding+keyword")
    fit.add_argument("--l2", type=float, default=DEFAULT_L2, help=f"L2 penalty (default {DEFAULT_L2})")
    fit.add_argument("--asset", default=str(ASSET), help="where to write the head (default: the shipped asset)")
    fit.add_argument("--results", default="results/judge.json", help="results JSON (default results/judge.json)")
    fit.add_argument("--measure-text-modes", action="store_true",
                     help="also measure embedding prompt+answer vs the answer alone (one more encoding pass)")
    content = sub.add_parser("fit-content", help="re-make the harmful-content head from the JailbreakBench "
                             "artifacts' jailbroken labels and measure both heads against XSTest's human labels")
    content.add_argument("--data-dir", help="folder holding jailbreakbench-artifacts/ and xstest/")
    content.add_argument("--text", choices=TEXT_MODES, default="prompt+answer")
    content.add_argument("--features", choices=FEATURE_SETS, default="embedding+keyword")
    content.add_argument("--l2", type=float, default=DEFAULT_L2)
    content.add_argument("--asset", default=None, help="where to write the head (default: the shipped asset)")
    content.add_argument("--results", default="results/judge_content.json")
    score = sub.add_parser("score", help="score answers in a jsonl file ({prompt, answer or completion} per "
                           "line; an eval's answers/*.jsonl works)")
    score.add_argument("file")
    score.add_argument("--head", default=None, help="judge head (default: the shipped asset)")
    args = parser.parse_args(argv)

    if args.action == "score":
        from negalign.data.loading import answer_row
        from negalign.data.readers import iter_jsonl
        from negalign.flag import question

        records, checked = [], []  # each record printed as it was read, scored from its checked fields
        for item in iter_jsonl(args.file):
            checked.append(answer_row(item, "fix or drop that line ({prompt, answer or completion} per line)",
                                      answer_fields=("answer", "completion")))
            records.append(item.value)
        judge = HarmJudge.load(args.head)
        prompts = [question(row["prompt"]) for row in checked]
        answers = [row["completion"] for row in checked]
        for record, p in zip(records, judge.complies(prompts, answers) if records else []):
            print(json.dumps({**record, "complies": round(p, 4)}, ensure_ascii=False))
        return 0

    folder = resolve_data_dir(args.data_dir, required=True)
    if args.action == "fit-content":
        return _fit_content(args, folder, argv)
    results = fit_judge(folder, text=args.text, feature_set=args.features, l2=args.l2, asset=args.asset or None,
                        measure_text_modes=args.measure_text_modes)
    results["command"] = "negalign judge " + " ".join(argv)
    results["data_dir"] = str(folder)
    print(f"leave-one-model-out accuracy: {results['leave_one_model_out_accuracy']:.4f} "
          f"({args.features} of {args.text}); refusal-phrase keyword baseline: {results['keyword_accuracy']:.4f}")
    for model, numbers in results["per_model"].items():
        print(f"  held out {model:<16} judge {numbers['judge']:.4f}  keyword {numbers['keyword']:.4f}")
    for name, numbers in results["feature_sets"].items():
        print(f"  features {name:<18} leave-one-model-out {numbers['leave_one_model_out_accuracy']:.4f}")
    for mode, numbers in results["text_modes"].items():
        print(f"  text {mode:<22} leave-one-model-out {numbers['leave_one_model_out_accuracy']:.4f}")
    if args.asset:
        print(f"head written to {args.asset}")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.results, json.dumps(portable(results), indent=2) + "\n")
        print(f"results written to {args.results}")
    return 0


def _fit_content(args, folder: Path, argv: list[str]) -> int:
    results = fit_content_judge(folder, text=args.text, feature_set=args.features, l2=args.l2,
                                asset=args.asset or CONTENT_ASSET)
    results["command"] = "negalign judge " + " ".join(argv)
    print(f"harmful-content head, each target model held out in turn: {results['leave_one_model_out_accuracy']:.4f} "
          f"({args.features} of {args.text}); on XSTest's human labels (unsafe prompts): "
          f"{results['xstest_unsafe_human_labels']['content_head']['accuracy']:.4f}")
    for mode, by_set in results["text_modes"].items():
        for name, numbers in by_set.items():
            print(f"  text {mode:<14} features {name:<18} {numbers['leave_one_model_out_accuracy']:.4f}")
    print(f"  refusal head on the JBB labels: {results['refusal_head_on_jbb']['accuracy']:.4f}; "
          f"keyword: {results['keyword_accuracy_on_jbb']:.4f}")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results, json.dumps(portable(results), indent=2) + "\n")
    print(f"head written to {results['asset']}; results written to {args.results}")
    return 0
