"""Negatives flagged on the model's own answers, with negalign's own commands: the starting model answers
known-harmful instructions (greedy, `negalign sample --k 1 --temperature 0`), and `negalign flag` keeps the
answers the offline judge scores as complying as {prompt, rejected} negatives.

This is the setting of the D2O paper (its PKU-SafeRLHF negatives were written by the model it trains) rather
than HH's, whose rejected answers come from another model. Prompts: the refusal-direction harmful *train*
and *validation* splits (the harmful evaluation suite draws from the test split); `negalign sample`
leaves out every prompt that duplicates an evaluation prompt.

Usage: python study/self-negatives/self_negatives.py OUT_DIR   (writes answers.jsonl, negatives.jsonl and
negatives.jsonl.flags.json under OUT_DIR; rerunning reuses the answers)
"""
import subprocess
import sys
from pathlib import Path


def main(out: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    negalign = [sys.executable, "-m", "negalign"]
    # the catalog's two splits, read in order: the same 299 prompts configs/d2o.yaml's commands use
    subprocess.run([*negalign, "sample", "--data", "harmful-train", "harmful-val", "--output", str(out / "answers.jsonl"),
                    "--k", "1", "--temperature", "0", "--max-new-tokens", "64", "--batch-size", "64",
                    "--no-anchor-report"], check=True)
    subprocess.run([*negalign, "flag", "--answers", str(out / "answers.jsonl"),
                    "--output", str(out / "negatives.jsonl")], check=True)


if __name__ == "__main__":
    main(sys.argv[1])
