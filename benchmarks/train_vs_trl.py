"""Training throughput and memory: negalign vs TRL on the same work, measured side by side in one run.

Same model (SmolLM2-135M-Instruct), same data (HH harmless-base), same batch, max length, dtype (`--dtype`:
fp32, or bf16 autocast) and LoRA setting (r16 on all linear layers), each tool with its defaults otherwise
(negalign: shared prompts, cached reference; TRL: its reference forward every step). Each trainer runs in its own subprocess so that
peak RSS is its own. Comparisons:

    dpo   negalign DPO            vs trl.DPOTrainer (4 pairs per step)
    kto   negalign KTO            vs trl.KTOTrainer (the same pairs as 8 unpaired rows per step)
    d2o   negalign D2O, K = 4     vs trl.KTOTrainer on the same rows unpaired (the human negative as
                                   undesirable, the 4 self-samples as desirable: what a user would do instead)

Completion tokens/s counts the completion tokens of the rows each trainer processed in the timed steps
(the first `--warmup` steps are not timed), tokenised once with the same chat template and max length.
The matmul peak is measured here (best of 5 timings, before and after the trainers run) with a 2048^3
matmul in bf16 and in fp32 (on a CPU without AMX fp32 is the
faster one). Executed FLOPs per step = (2 forward + 2 backward-through-activations) x non-embedding
parameters x the tokens negalign actually lays out (shared prompts once), plus the LM head on completion
tokens (LoRA: no weight gradients for the frozen base; attention FLOPs not counted, so the fraction is a
lower bound). matmul_peak_fraction divides the step's FLOP/s by the larger of the two peaks;
matmul_peak_fraction_bf16 by the bf16 peak, as the issue words it.

    .venv/bin/python benchmarks/train_vs_trl.py --comparison dpo --steps 6 --dtype fp32

Writes benchmarks/results/<comparison>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless-base-test/test.jsonl.gz"
COMPETITOR = {"dpo": "trl.DPOTrainer", "kto": "trl.KTOTrainer", "d2o": "trl.KTOTrainer"}


def matmul_peak(dtype: str, size: int = 2048, repeats: int = 4, trials: int = 5) -> float:
    """Best of `trials` timings of `repeats` size^3 matmuls: this VM's speed drifts by up to 1.5x over minutes,
    and a peak is the best the hardware does, so the step is held to the fastest measurement."""
    import torch

    a, b = (torch.randn(size, size, dtype=getattr(torch, dtype)) for _ in range(2))
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - start))
    return best


def pairs(n: int) -> list[dict]:
    from negalign.data import complete_pairs, load_rows

    rows, _ = load_rows(str(HH), on_bad_row="skip")
    return complete_pairs(rows)[:n]


class StepClock:
    """A TrainerCallback recording when each optimizer step ends."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.times.append(time.time())

        self.times, self.callback = [time.time()], Callback()


def worker(args) -> dict:
    import torch

    from negalign.models import load_model, load_tokenizer

    started = time.time()
    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model)
    work = pairs(args.batch * (args.steps + args.warmup))
    samples_file = Path(args.tmp) / "samples.jsonl"
    common = dict(per_device_train_batch_size=args.batch, max_steps=args.steps + args.warmup, learning_rate=1e-5,
                  bf16=args.dtype == "bf16", use_cpu=True, report_to="none", logging_steps=1, save_strategy="no",
                  output_dir=str(Path(args.tmp) / args.worker), seed=0)
    clock = StepClock()
    if args.worker.startswith("negalign"):
        from negalign.config import parse_overrides
        from negalign.pipeline import train

        data = Path(args.tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps(p) + "\n" for p in work))
        objective = args.worker.split("-")[1]
        config = {"model": args.model, "data": str(data), "objective": objective, "use_lora": True,
                  "lora_r": 16, "lora_alpha": 32, "max_length": args.max_length,
                  "max_prompt_length": args.max_length // 2, "cache_dir": str(Path(args.tmp) / "cache"), **common}
        if objective == "d2o":
            config.update(samples=str(samples_file), k=4)
        config.update(parse_overrides(args.negalign_set))
        if objective == "kto":  # pairs -> 2 rows each: the same rows per step as TRL at batch 2x
            config["per_device_train_batch_size"] = args.batch * 2
        del model
        from negalign import trainer as trainer_module

        real_init = trainer_module.NegalignTrainer.__init__

        def init_with_clock(self, *a, **k):
            real_init(self, *a, **k)
            self.add_callback(clock.callback)
            clock.times[0] = time.time()

        trainer_module.NegalignTrainer.__init__ = init_with_clock
        train(config)
    else:
        from datasets import Dataset
        from peft import LoraConfig

        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        if args.worker == "trl-dpo":
            from trl import DPOConfig, DPOTrainer

            rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
                     "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in work]
            trainer = DPOTrainer(model=model, args=DPOConfig(max_length=args.max_length, beta=0.1, **common),
                                 train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                 peft_config=lora, callbacks=[clock.callback])
        else:
            from trl import KTOConfig, KTOTrainer

            if args.worker == "trl-kto-pairs":
                rows = [r for p in work for r in (
                    {"prompt": p["prompt"], "completion": [{"role": "assistant", "content": p["chosen"]}], "label": True},
                    {"prompt": p["prompt"], "completion": [{"role": "assistant", "content": p["rejected"]}], "label": False})]
                batch = args.batch * 2
            else:  # the D2O rows unpaired: negative undesirable, 4 self-samples desirable
                samples = [json.loads(line) for line in open(samples_file)]
                rows = [{"prompt": p["prompt"], "completion": [{"role": "assistant", "content": p["rejected"]}], "label": False}
                        for p in work]
                rows += [{"prompt": s["prompt"], "completion": [{"role": "assistant", "content": s["completion"]}],
                          "label": True} for s in samples]
                batch = args.batch * 5
            config = KTOConfig(max_length=args.max_length, beta=0.1, **{**common, "per_device_train_batch_size": batch})
            trainer = KTOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer, peft_config=lora, callbacks=[clock.callback])
        clock.times[0] = time.time()
        trainer.train()
    steps = [b - a for a, b in zip(clock.times, clock.times[1:])][args.warmup:]
    return {"seconds_per_step": sorted(steps)[len(steps) // 2], "mean_seconds_per_step": sum(steps) / len(steps),
            "step_seconds": [round(s, 2) for s in steps],
            # everything, setup included (negalign's one-off reference log-prob pass, TRL's tokenisation)
            "total_seconds": round(time.time() - started, 1),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def work_per_step(args, comparison: str) -> dict:
    """Mean tokens per step over all the rows the run trains on, tokenised once the way both tools see them:
    completion tokens (the rate's numerator), all tokens with every prompt repeated per completion (what
    TRL runs), and the tokens negalign lays out (each example's prompt once)."""
    from negalign.config import parse_overrides
    from negalign.data import encode
    from negalign.logprobs import pack_sequences
    from negalign.models import load_tokenizer

    share = str(parse_overrides(args.negalign_set).get("share_prompts", True)).lower() not in ("false", "0", "no")
    tokenizer = load_tokenizer(args.model)
    steps = args.steps + args.warmup
    work = pairs(args.batch * steps)
    if comparison == "d2o":
        samples = [json.loads(line) for line in open(Path(args.tmp) / "samples.jsonl")]
        by_prompt = {}
        for s in samples:
            by_prompt.setdefault(json.dumps(s["prompt"]), []).append(s["completion"])
        groups = [[p["rejected"], *by_prompt[json.dumps(p["prompt"])][:4]] for p in work]
    else:
        groups = [[p["chosen"], p["rejected"]] for p in work]
    completion = total = laid_out = 0
    for p, completions in zip(work, groups):
        encoded = [encode(p["prompt"], c, tokenizer, max_length=args.max_length,
                          max_prompt_length=args.max_length // 2) for c in completions]
        sequences = [(e.prompt_ids, e.completion_ids) for e in encoded]
        completion += sum(len(c) for _, c in sequences)
        total += sum(len(p) + len(c) for p, c in sequences)
        laid_out += pack_sequences(sequences, share).input_ids.numel()
    return {"completion": completion / steps, "all": total / steps, "laid_out": laid_out / steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comparison", choices=list(COMPETITOR), default="dpo")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="pairs (or D2O examples) per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="both tools: fp32, or bf16 autocast (bf16=True)")
    parser.add_argument("--negalign-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="negalign config overrides, for ablations (e.g. share_prompts=false)")
    parser.add_argument("--negalign-only", action="store_true",
                        help="run only negalign (ablations of --negalign-set): seconds/step and RSS, no ratio")
    parser.add_argument("--name", default=None, help="results file name (default: the comparison)")
    parser.add_argument("--tmp", default="/tmp/negalign-bench")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    peaks_before = {} if args.negalign_only else {dtype: matmul_peak(dtype) for dtype in ("bfloat16", "float32")}
    if args.comparison == "d2o":
        from negalign.models import load_model, load_tokenizer
        from negalign.sampling import SamplingSettings, sample

        prompts = [p["prompt"] for p in pairs(args.batch * (args.steps + args.warmup))]
        sample(load_model(args.model), load_tokenizer(args.model), prompts, Path(args.tmp) / "samples.jsonl",
               SamplingSettings(k=4, max_new_tokens=64), model_id=args.model)
    workers = {"dpo": ("negalign-dpo", "trl-dpo"), "kto": ("negalign-kto", "trl-kto-pairs"),
               "d2o": ("negalign-d2o", "trl-kto-d2o-rows")}[args.comparison]
    results = {}
    if args.negalign_only:  # an ablation of negalign's own settings: no competitor, no ratio
        workers = workers[:1]
    for name in workers:
        command = [sys.executable, __file__, "--worker", name] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "negalign_set", "name", "negalign_only")]
        command += ["--negalign-set", *args.negalign_set]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(line[0][7:])
        print(name, results[name], flush=True)
    if args.negalign_only:
        result = {"ablation": args.comparison, "negalign_overrides": args.negalign_set, "dtype": args.dtype,
                  "batch": args.batch, "max_length": args.max_length, "timed_steps": args.steps,
                  "work_per_step": work_per_step(args, args.comparison), "negalign": results[workers[0]],
                  "command": f"python benchmarks/train_vs_trl.py --comparison {args.comparison} --steps {args.steps} "
                             f"--dtype {args.dtype} --negalign-only --negalign-set {' '.join(args.negalign_set)}"}
        out = Path(__file__).parent / "results" / f"{args.name or 'ablation-' + args.comparison}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    ours, theirs = (results[w] for w in workers)
    work = work_per_step(args, args.comparison)
    peaks = {dtype: max(peaks_before[dtype], matmul_peak(dtype)) for dtype in peaks_before}  # before and after
    from negalign.models import load_model

    model = load_model(args.model)
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    head = model.get_output_embeddings().weight.numel()
    step_flops = 4 * non_embedding * work["laid_out"] + 4 * head * work["completion"]
    achieved = step_flops / ours["mean_seconds_per_step"]
    rate = lambda result: work["completion"] / result["mean_seconds_per_step"]  # noqa: E731
    result = {
        "comparison": args.comparison, "competitor": COMPETITOR[args.comparison], "model": args.model,
        "batch": args.batch, "max_length": args.max_length, "dtype": args.dtype, "lora": "r16 all-linear",
        "timed_steps": args.steps, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "completion_tokens_per_step": round(work["completion"], 1), "tokens_per_step": round(work["all"], 1),
        "negalign_laid_out_tokens_per_step": round(work["laid_out"], 1),
        "negalign": ours, "competitor_result": theirs,
        "negalign_tokens_per_s": round(rate(ours), 1), "competitor_tokens_per_s": round(rate(theirs), 1),
        "tokens_per_s_ratio": round(rate(ours) / rate(theirs), 2),
        "seconds_per_step_ratio": round(ours["mean_seconds_per_step"] / theirs["mean_seconds_per_step"], 3),
        "peak_rss_ratio": round(ours["peak_rss_gb"] / theirs["peak_rss_gb"], 2),
        "matmul_peak_gflops_bf16": round(peaks["bfloat16"] / 1e9, 1),
        "matmul_peak_gflops_fp32": round(peaks["float32"] / 1e9, 1),
        "negalign_gflops": round(achieved / 1e9, 1),
        "matmul_peak_fraction": round(achieved / max(peaks.values()), 3),
        "matmul_peak_fraction_bf16": round(achieved / peaks["bfloat16"], 3),
        "command": f"python benchmarks/train_vs_trl.py --comparison {args.comparison} --steps {args.steps} "
                   f"--batch {args.batch} --max-length {args.max_length} --dtype {args.dtype}"
                   + (f" --negalign-set {' '.join(args.negalign_set)}" if args.negalign_set else ""),
        "negalign_overrides": args.negalign_set,
    }
    out = Path(__file__).parent / "results" / f"{args.name or args.comparison}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
