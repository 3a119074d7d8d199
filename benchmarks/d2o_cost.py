"""How a D2O step's cost grows with K (self-samples per prompt) and with completion length.

negalign lays each prompt out once and its K + 1 completions (the human negative and K anchors) after it
(shared prompts); without sharing, a step costs K + 1 independent sequences. This script times negalign's
D2O step (LoRA r16, fp32, `--batch` examples) at K = 0, 2, 4, 8, 11 (the paper's K) with completions of
`--length` tokens, and at completion lengths 128, 256, 512 with K = 4, plus K = 8 with prompt sharing off.
Every completion is cut to exactly the length asked (text from HH harmless-base answers), every prompt to
at most 128 tokens, so the token counts are the same for every K. Each setting runs in its own process
(`--steps` steps, the first not timed): median seconds per step, peak RSS, tokens laid out per step.

    .venv/bin/python benchmarks/d2o_cost.py

Writes benchmarks/results/d2o_cost.json and docs/d2o_cost.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

from bench_common import StepClock, token_counts

HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless-base-test/test.jsonl.gz"
PROMPT_TOKENS = 128


def make_rows(tmp: Path, model: str, examples: int, k: int, length: int) -> tuple[Path, Path]:
    """Feedback rows (prompt + a negative) and a samples file with k anchors per prompt, each completion
    exactly `length` tokens of real answer text."""
    from negalign.data import complete_pairs, load_rows
    from negalign.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    pairs = complete_pairs(load_rows(str(HH), on_bad_row="skip")[0])
    stream = tokenizer.encode(" ".join(p["chosen"] + " " + p["rejected"] for p in pairs[:400]), add_special_tokens=False)
    chunks = iter(tokenizer.decode(stream[i:i + length]) for i in range(0, len(stream) - length, length))
    data, samples = tmp / f"rows-{k}-{length}.jsonl", tmp / f"samples-{k}-{length}.jsonl"
    with open(data, "w") as rows, open(samples, "w") as anchors:
        for p in pairs[:examples]:
            rows.write(json.dumps({"prompt": p["prompt"], "completion": next(chunks), "label": False}) + "\n")
            for s in range(k):
                anchors.write(json.dumps({"prompt": p["prompt"], "completion": next(chunks), "origin": "self",
                                          "sample_index": s}) + "\n")
    return data, samples


def worker(args) -> dict:
    from negalign.pipeline import train

    tmp = Path(args.tmp)
    data, samples = make_rows(tmp, args.model, args.batch * args.steps, args.k, args.length)
    clock = StepClock()
    clock.attach_to_negalign()
    train({"model": args.model, "data": str(data), "objective": "d2o", "samples": str(samples), "k": args.k,
           "use_lora": True, "lora_r": 16, "lora_alpha": 32, "max_prompt_length": PROMPT_TOKENS,
           "max_length": PROMPT_TOKENS + args.length + 1, "per_device_train_batch_size": args.batch,
           "max_steps": args.steps, "learning_rate": 1e-5, "bf16": False, "use_cpu": True, "report_to": "none",
           "save_strategy": "no", "decontaminate": False, "share_prompts": not args.unshared, "seed": 0,
           "output_dir": str(tmp / f"run-{args.k}-{args.length}-{args.unshared}"),
           "cache_dir": str(tmp / f"cache-{args.k}-{args.length}-{args.unshared}")})
    intervals = clock.step_seconds()
    timed = sorted(intervals[1:])  # the first step is the warm-up
    return {"seconds_per_step": round(timed[len(timed) // 2], 2), "step_seconds": [round(s, 2) for s in intervals],
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}


def laid_out_tokens(args, k: int, length: int, unshared: bool) -> float:
    """Tokens negalign lays out per step for these rows (prompt once per example when shared)."""
    from negalign.models import load_tokenizer

    data, samples = Path(args.tmp) / f"rows-{k}-{length}.jsonl", Path(args.tmp) / f"samples-{k}-{length}.jsonl"
    rows = [json.loads(line) for line in open(data)]
    anchors = {}
    for line in open(samples):
        s = json.loads(line)
        anchors.setdefault(json.dumps(s["prompt"]), []).append(s["completion"])
    examples = [(row["prompt"], [row["completion"], *anchors.get(json.dumps(row["prompt"]), [])]) for row in rows]
    counts = token_counts(examples, load_tokenizer(args.model), max_length=PROMPT_TOKENS + length + 1,
                          max_prompt_length=PROMPT_TOKENS, share_prompts=not unshared)
    return counts["laid_out"] / (len(rows) / args.batch)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_k, by_length) = plt.subplots(1, 2, figsize=(10, 4))
    ks = [r for r in result["by_k"] if not r["unshared"]]
    base = next(r for r in ks if r["k"] == 2)["seconds_per_step"]
    by_k.plot([r["k"] for r in ks], [r["seconds_per_step"] for r in ks], "o-", label="negalign (shared prompt)")
    by_k.plot([r["k"] for r in ks], [base * (r["k"] + 1) / 3 for r in ks], "--", color="grey",
              label="K + 1 independent sequences (from K = 2)")
    for r in result["by_k"]:
        if r["unshared"]:
            by_k.plot([r["k"]], [r["seconds_per_step"]], "s", color="tab:red", label=f"K = {r['k']}, prompts not shared")
    by_k.set(xlabel="K (self-samples per prompt)", ylabel="seconds per step",
             title=f"D2O step vs K ({result['length']}-token completions)")
    by_k.legend(fontsize=8)
    lengths = result["by_length"]
    by_length.plot([r["length"] for r in lengths], [r["seconds_per_step"] for r in lengths], "o-")
    by_length.set(xlabel="completion length (tokens)", ylabel="seconds per step", title=f"D2O step vs length (K = {result['length_sweep_k']})")
    for axis, rows in ((by_k, result["by_k"]), (by_length, lengths)):
        for r in rows:
            axis.annotate(f"{r['peak_rss_gb']:.1f} GB", (r["k"] if axis is by_k else r["length"], r["seconds_per_step"]),
                          fontsize=7, textcoords="offset points", xytext=(4, -10))
    fig.suptitle(f"negalign D2O, SmolLM2-135M, LoRA r16, fp32, batch {result['batch']}, {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--ks", default="0,2,4,8,11")
    parser.add_argument("--lengths", default="128,256,512")
    parser.add_argument("--length", type=int, default=256, help="completion length for the K sweep")
    parser.add_argument("--k", type=int, default=4, help="K for the length sweep")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--unshared", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="/tmp/negalign-d2o-cost")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    Path(args.tmp).mkdir(parents=True, exist_ok=True)

    def run(k: int, length: int, unshared: bool = False) -> dict:
        command = [sys.executable, __file__, "--worker", "--model", args.model, "--k", str(k), "--length", str(length),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--tmp", args.tmp]
        done = subprocess.run(command + (["--unshared"] if unshared else []), capture_output=True, text=True,
                              env={**os.environ, "TQDM_DISABLE": "1"})
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"K={k} length={length} failed:\n{done.stderr[-3000:]}")
        row = {"k": k, "length": length, "unshared": unshared, **json.loads(line[0][7:]),
               "laid_out_tokens_per_step": round(laid_out_tokens(args, k, length, unshared), 1)}
        print(row, flush=True)
        return row

    by_k = [run(k, args.length) for k in map(int, args.ks.split(","))] + [run(8, args.length, unshared=True)]
    by_length = [next((r for r in by_k if r["k"] == args.k and r["length"] == length and not r["unshared"]), None)
                 or run(args.k, length) for length in map(int, args.lengths.split(","))]
    step = {(r["k"], r["unshared"]): r["seconds_per_step"] for r in by_k}
    result = {"benchmark": "D2O step cost vs K and completion length", "model": args.model, "batch": args.batch,
              "length": args.length, "length_sweep_k": args.k, "prompt_tokens_at_most": PROMPT_TOKENS, "timed_steps": args.steps - 1,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "by_k": by_k, "by_length": by_length,
              "k8_over_k2_step_time": round(step[(8, False)] / step[(2, False)], 2),
              "k8_unshared_over_shared_step_time": round(step[(8, True)] / step[(8, False)], 2),
              "command": "python benchmarks/d2o_cost.py" + (f" --batch {args.batch}" if args.batch != 2 else "")
              + (f" --steps {args.steps}" if args.steps != 4 else "")}
    out = Path(__file__).parent / "results" / "d2o_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, Path(__file__).resolve().parents[1] / "docs" / "d2o_cost.png")
    print(json.dumps({k: v for k, v in result.items() if k not in ("by_k", "by_length")}, indent=2))


if __name__ == "__main__":
    main()
