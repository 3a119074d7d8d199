"""Negatives flagged on the model's own answers: the starting model answers known-harmful instructions
(greedy), the offline judge flags the answers that comply, and those become {prompt, rejected} negatives.

This is the setting of the D2O paper (its PKU-SafeRLHF negatives were written by the model it trains) rather
than HH's, whose rejected answers come from another model. Prompts: the refusal-direction harmful *train*
and *validation* splits (the harmful evaluation suite draws from the test split); `negalign sample`
leaves out every prompt that duplicates an evaluation prompt and records it.

Usage: python scripts/study/self_negatives.py OUT_DIR   (writes prompts.json, answers.jsonl, negatives.jsonl,
flags.json under OUT_DIR; rerunning resumes the answers file)
"""
import json
import subprocess
import sys
from pathlib import Path

from negalign.evaluation.judge import HarmJudge
from negalign.data.paths import data_dir
from negalign.evaluation.metrics import wilson_interval



def main(out: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = data_dir(required=True) / "refusal-direction-splits"
    prompts = [r for name in ("harmful_train.json", "harmful_val.json")
               for r in json.loads((splits / name).read_text())]
    (out / "prompts.json").write_text(json.dumps(prompts, indent=0))
    answers = out / "answers.jsonl"
    subprocess.run([sys.executable, "-m", "negalign", "sample", "--data", str(out / "prompts.json"),
                    "--output", str(answers), "--k", "1", "--temperature", "0", "--max-new-tokens", "64",
                    "--batch-size", "64", "--no-anchor-report"], check=True)
    rows = [json.loads(line) for line in answers.open()]
    questions = [r["prompt"][-1]["content"] for r in rows]
    complies = HarmJudge.load().complies(questions, [r["completion"] for r in rows])
    negatives = [{"prompt": q, "rejected": r["completion"], "judge_complies": round(p, 4)}
                 for q, r, p in zip(questions, rows, complies) if p > 0.5]
    with open(out / "negatives.jsonl", "w") as sink:
        sink.writelines(json.dumps(n) + "\n" for n in negatives)
    low, high = wilson_interval(len(negatives), len(rows))
    flags = {"prompts": len(prompts), "answered_after_decontamination": len(rows),
             "flagged_complying": len(negatives), "share": round(len(negatives) / len(rows), 4),
             "wilson95": [round(low, 4), round(high, 4)], "judge": "offline refusal judge, complies > 0.5",
             "answers": "starting model, greedy, 64 new tokens"}
    (out / "flags.json").write_text(json.dumps(flags, indent=2) + "\n")
    print(json.dumps(flags, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
