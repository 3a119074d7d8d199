"""Training: negalign vs TRL on the same work, end to end and per step, measured side by side in one run.

Same model (SmolLM2-135M-Instruct), same data file (HH harmless-base), same batch, max length, dtype (`--dtype`:
fp32, or bf16 autocast), LoRA setting (r16 on all linear layers) and number of steps. TRL runs twice, with
its defaults (a reference forward every step) and with the fastest settings its documentation offers for the
case (`--trl-settings fast`: `precompute_ref_log_probs=True` with a larger `precompute_ref_batch_size`, and
for DPO `padding_free=True`, which TRL 1.16 accepts but falls back from with a warning: it is recorded, not
effective). Ratios are taken against the faster TRL setting (by end-to-end wall-clock); the ratios against
each setting are kept too. Each trainer runs in its own fresh process (fresh caches) so that its peak RSS and
its wall-clock are its own. Comparisons:

    dpo   negalign DPO            vs trl.DPOTrainer (pairs per step = --batch)
    kto   negalign KTO            vs trl.KTOTrainer (the same pairs as 2 x --batch unpaired rows per step)
    d2o   negalign D2O, K = 4     vs trl.KTOTrainer on the same rows unpaired (the human negative as
                                   undesirable, the 4 self-samples as desirable: what a user would do instead)

End-to-end wall-clock: from launching the trainer's process to its exit after saving the weights: Python
start-up, imports, model load, reading the data file, tokenisation, the reference pass, all steps, save.
Steady state: completion tokens/s over the steps after the first `--warmup`, counted from the rows each
trainer processed (tokenised once with the same chat template and max length). `--rows` distinct examples
(default 16 batches) are cycled through for `--steps` steps (HF Trainer's max_steps), so the one-off work
(tokenising, the reference pass) is over those rows. The matmul peak is measured here (best of 5 timings,
before and after the trainers) with a 2048^3 matmul in bf16 and fp32 (on a CPU without AMX fp32 is faster).
Executed FLOPs per step = (2 forward + 2 backward-through-activations) x non-embedding parameters x the tokens
negalign lays out (shared prompts once), plus the LM head on completion tokens (attention not counted, so
the fraction is a lower bound).

    .venv/bin/pip install -e ".[bench]"   # trl
    .venv/bin/python benchmarks/train_vs_trl.py --comparison dpo --steps 64 --batch 2 --max-length 256

On a GPU (`--device cuda`), peak GPU memory (torch.cuda.max_memory_allocated) is recorded for each trainer
and the matmul peak is measured on the GPU; `--shape smollm2-1.7b` trains a random-initialised model of that
shape (benchmarks/shapes.py: weights do not travel to a lent machine, and speed depends on shapes only), and
`--trl-settings fast` alone skips TRL's slower default run where GPU time is short. benchmarks/gpu/check.sh runs
the GPU comparisons in one go.

Writes benchmarks/results/<name or comparison>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_common import RssTimeline, StepClock, preload_prefix, token_counts

from negalign.heap import allocator

HH = "hh-rlhf-harmless-base-test/test.jsonl.gz"  # under the data folder ($NEGALIGN_DATA or ../shared/data)
COMPETITOR = {"dpo": "trl.DPOTrainer", "kto": "trl.KTOTrainer", "d2o": "trl.KTOTrainer"}
# the fastest settings TRL's documentation offers for each trainer on one CPU process (TRL 1.16)
TRL_FAST = {"trl-dpo": {"precompute_ref_log_probs": True, "precompute_ref_batch_size": 16, "padding_free": True},
            "trl-kto": {"precompute_ref_log_probs": True, "precompute_ref_batch_size": 16}}


def matmul_peak(dtype: str, size: int = 2048, repeats: int = 4, trials: int = 5, device: str = "cpu") -> float:
    """Best of `trials` timings of `repeats` size^3 matmuls: this VM's speed drifts by up to 1.5x over minutes,
    and a peak is the best the hardware does, so the step is held to the fastest measurement. On a GPU the
    matrices are 8192^2 (2048^3 leaves an H100 mostly idle) and every timing waits for the kernels."""
    import torch

    size = size if device == "cpu" else 8192
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    a, b = (torch.randn(size, size, dtype=getattr(torch, dtype), device=device) for _ in range(2))
    a @ b
    sync()
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - start))
    return best


def pairs(n: int, max_length: int, model: str = "smollm2-135m-instruct") -> list[dict]:
    """The first n HH pairs whose prompt fits in half of max_length: TRL drops a row whose prompt fills
    max_length and keeps the start of a long one, negalign keeps the end of a prompt past max_prompt_length;
    on rows whose prompt fits, both train on exactly the same tokens."""
    from negalign.data import complete_pairs, load_rows
    from negalign.data.encode import encode_prompt
    from negalign.data.paths import data_dir
    from negalign.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    rows, _ = load_rows(str(data_dir(required=True) / HH), on_bad_row="skip")
    fits = [p for p in complete_pairs(rows) if len(encode_prompt(p["prompt"], tokenizer)) < max_length // 2]
    return fits[:n]


def write_data(args) -> None:
    """The data files every trainer starts from (not timed: they are the user's input): negalign's pairs, and
    the same rows in TRL's conversational format (DPO pairs, or KTO's unpaired rows)."""
    tmp = Path(args.tmp)
    work = pairs(args.rows, args.max_length, args.model)
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in work))
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    if args.comparison == "dpo":
        rows = [{"prompt": p["prompt"], "chosen": answer(p["chosen"]), "rejected": answer(p["rejected"])} for p in work]
    elif args.comparison == "kto":
        rows = [r for p in work for r in ({"prompt": p["prompt"], "completion": answer(p["chosen"]), "label": True},
                                          {"prompt": p["prompt"], "completion": answer(p["rejected"]), "label": False})]
    else:  # the D2O rows unpaired: negative undesirable, 4 self-samples desirable
        samples = [json.loads(line) for line in open(tmp / "samples.jsonl")]
        rows = [{"prompt": p["prompt"], "completion": answer(p["rejected"]), "label": False} for p in work]
        rows += [{"prompt": s["prompt"], "completion": answer(s["completion"]), "label": True} for s in samples]
    (tmp / "trl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def worker(args) -> dict:
    import torch

    started = time.time()
    torch.manual_seed(0)
    tmp = Path(args.tmp)
    run_dir = tmp / args.worker
    common = dict(per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=1e-5,
                  bf16=args.dtype == "bf16", use_cpu=args.device == "cpu", report_to="none", logging_steps=1, save_strategy="no",
                  output_dir=str(run_dir), seed=0)
    clock, memory = StepClock(), RssTimeline()
    memory.mark("imports")
    if args.worker.startswith("negalign"):
        from negalign import assemble, pipeline, reference, trainer
        from negalign.config import parse_overrides
        from negalign.pipeline import train

        memory.wrap(assemble, "prepare_items", "tokenise")
        memory.wrap(pipeline, "load_model", "load model")
        memory.wrap(reference.Reference, "prepare", "reference pass")
        memory.wrap(trainer.NegalignTrainer, "train", "steps")
        memory.wrap(trainer.NegalignTrainer, "save_model", "save")

        objective = args.worker.split("-")[1]
        config = {"model": args.model, "data": str(tmp / "pairs.jsonl"), "objective": objective, "use_lora": True,
                  "lora_r": 16, "lora_alpha": 32, "max_length": args.max_length,
                  "max_prompt_length": args.max_length // 2, "cache_dir": str(run_dir / "cache"),
                  "decontaminate": False, **common}  # TRL has no decontamination step: the same rows for both
        if objective == "d2o":
            config.update(samples=str(tmp / "samples.jsonl"), k=4)
        config.update(parse_overrides(args.negalign_set))
        if objective == "kto":  # pairs -> 2 rows each: the same rows per step as TRL at batch 2x
            config["per_device_train_batch_size"] = args.batch * 2
        clock.attach_to_negalign()
        train(config)  # saves the weights to output_dir
    else:
        from datasets import load_dataset
        from peft import LoraConfig

        from negalign.models import load_model, load_tokenizer

        memory.mark("load model")
        tokenizer, model = load_tokenizer(args.model), load_model(args.model)
        memory.mark("tokenise and reference pass")  # TRL does both while the trainer is built
        dataset = load_dataset("json", data_files=str(tmp / "trl.jsonl"), split="train")
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        kind, setting = args.worker.rsplit("-", 1)
        extra = trl_fast(args)["trl-dpo" if kind == "trl-dpo" else "trl-kto"] if setting == "fast" else {}
        if kind == "trl-dpo":
            from trl import DPOConfig, DPOTrainer

            trainer = DPOTrainer(model=model, args=DPOConfig(max_length=args.max_length, beta=0.1, **common, **extra),
                                 train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                                 callbacks=[clock.callback])
        else:
            from trl import KTOConfig, KTOTrainer

            batch = args.batch * (2 if args.comparison == "kto" else 5)
            config = KTOConfig(max_length=args.max_length, beta=0.1, **{**common, "per_device_train_batch_size": batch},
                               **extra)
            trainer = KTOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                 peft_config=lora, callbacks=[clock.callback])
        clock.times[0] = time.time()
        memory.mark("steps")
        trainer.train()
        memory.mark("save")
        trainer.save_model(str(run_dir))
    steps = clock.step_seconds()[args.warmup:]
    return {"seconds_per_step": sorted(steps)[len(steps) // 2], "mean_seconds_per_step": sum(steps) / len(steps),
            "steps": len(steps) + args.warmup, "step_seconds": [round(s, 2) for s in steps],
            # the trainer's process from its first line to the saved weights (imports not included; the parent's
            # end_to_end_seconds includes them)
            "total_seconds": round(time.time() - started, 1),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "by_stage": memory.stop(), "allocator": allocator(),
            "gpu_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if args.device != "cpu" else None}


def work_per_step(args, comparison: str) -> dict:
    """Mean tokens per step over all the rows the run trains on, tokenised once the way both tools see them:
    completion tokens (the rate's numerator), all tokens with every prompt repeated per completion (what
    TRL runs), and the tokens negalign lays out (each example's prompt once)."""
    from negalign.config import parse_overrides
    from negalign.models import load_tokenizer

    share = str(parse_overrides(args.negalign_set).get("share_prompts", True)).lower() not in ("false", "0", "no")
    work = pairs(args.rows, args.max_length, args.model)
    batches = len(work) / args.batch  # steps cycle through whole epochs of these rows: per-step means hold
    if comparison == "d2o":
        samples = [json.loads(line) for line in open(Path(args.tmp) / "samples.jsonl")]
        by_prompt = {}
        for s in samples:
            by_prompt.setdefault(json.dumps(s["prompt"]), []).append(s["completion"])
        groups = [[p["rejected"], *by_prompt[json.dumps(p["prompt"])][:4]] for p in work]
    else:
        groups = [[p["chosen"], p["rejected"]] for p in work]
    counts = token_counts([(p["prompt"], g) for p, g in zip(work, groups)], load_tokenizer(args.model),
                          max_length=args.max_length, max_prompt_length=args.max_length // 2, share_prompts=share)
    return {name: total / batches for name, total in counts.items()}


def run_worker(args, name: str) -> dict:
    """One trainer in a fresh process; its wall-clock from launch to exit (weights saved) is end_to_end_seconds."""
    command = [sys.executable, __file__, "--worker", name] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("worker", "negalign_set", "name", "negalign_only", "trl_settings", "shape")]
    command += ["--negalign-set", *args.negalign_set]
    fresh = Path(args.tmp) / "hf-datasets-cache" / name  # no dataset cache carried from an earlier run
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(Path(args.tmp) / name, ignore_errors=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_DATASETS_CACHE": str(fresh)}
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.time() - start
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    result = {**json.loads(line[0][7:]), "end_to_end_seconds": round(seconds, 1)}
    warnings = sorted({x.strip() for x in done.stderr.splitlines() if "padding_free" in x})
    if warnings:
        result["warnings"] = warnings
    print(name, {k: v for k, v in result.items() if k != "step_seconds"}, flush=True)
    return result


def ratios(ours: dict, theirs: dict, rate) -> dict:
    out = {"tokens_per_s_ratio": round(rate(ours) / rate(theirs), 2),
           "end_to_end_ratio": round(theirs["end_to_end_seconds"] / ours["end_to_end_seconds"], 2),
           "peak_rss_ratio": round(ours["peak_rss_gb"] / theirs["peak_rss_gb"], 2)}
    if ours.get("gpu_peak_gb") and theirs.get("gpu_peak_gb"):
        out["gpu_peak_ratio"] = round(ours["gpu_peak_gb"] / theirs["gpu_peak_gb"], 2)
    return out


def trl_fast(args) -> dict:
    """TRL's faster settings; on a GPU with liger-kernel installed, its fused kernels too (use_liger_kernel)."""
    settings = {name: dict(values) for name, values in TRL_FAST.items()}
    try:  # what TRL's use_liger_kernel imports (liger needs Triton and a GPU)
        import liger_kernel.chunked_loss  # noqa: F401
        liger = args.device != "cpu"
    except Exception:  # noqa: BLE001 - absent, or present but unusable with this Triton
        liger = False
    if liger:
        for values in settings.values():
            values["use_liger_kernel"] = True
    return settings


def parameter_counts(model_path: str) -> tuple[int, int]:
    """(non-embedding parameters, LM head parameters) from the config alone (a 1.7B model is not loaded for it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from negalign.models import resolve_model_path

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(model_path)))
    return (sum(p.numel() for n, p in model.named_parameters() if "embed" not in n),
            model.get_output_embeddings().weight.numel())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comparison", choices=list(COMPETITOR), default="dpo")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=64, help="optimizer steps per trainer (all of them timed "
                        "end to end; the steady state leaves out the first --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2, help="pairs (or D2O examples) per step")
    parser.add_argument("--rows", type=int, default=None, help="distinct examples, cycled (default: 16 batches)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="both tools: fp32, or bf16 autocast (bf16=True)")
    parser.add_argument("--trl-settings", default="defaults,fast", help="TRL runs: defaults and/or fast")
    parser.add_argument("--negalign-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="negalign config overrides, for ablations (e.g. share_prompts=false)")
    parser.add_argument("--negalign-only", action="store_true",
                        help="run only negalign (ablations of --negalign-set): seconds/step and RSS, no ratio")
    parser.add_argument("--name", default=None, help="results file name (default: the comparison)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (both tools train on the GPU)")
    parser.add_argument("--shape", default=None, help="a random-initialised model of this shape (benchmarks/shapes.py) "
                        "instead of --model")
    parser.add_argument("--tmp", default="/tmp/negalign-bench")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rows = args.rows or args.batch * 16
    if args.shape and not args.worker:
        from shapes import materialise

        args.model = str(materialise(args.shape, device=args.device))
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    # bf16 is emulated on CPUs without AVX512-BF16/AMX (tens of times slower): its peak is measured only where
    # the hardware has it or the comparison runs in bf16
    import torch

    dtypes = ["float32"] + (["bfloat16"] if args.dtype == "bf16" or "AVX512" in torch.backends.cpu.get_cpu_capability()
                            or "AMX" in torch.backends.cpu.get_cpu_capability() or args.device != "cpu" else [])
    peaks_before = {} if args.negalign_only else {dtype: matmul_peak(dtype, device=args.device) for dtype in dtypes}
    if args.comparison == "d2o":
        from negalign.models import ModelOptions, load_model, load_tokenizer
        from negalign.sampling import SamplingSettings, sample

        samples = Path(args.tmp) / "samples.jsonl"
        for stale in Path(args.tmp).glob("samples.jsonl*"):
            stale.unlink()
        prompts = [p["prompt"] for p in pairs(args.rows, args.max_length, args.model)]
        sample(load_model(args.model, ModelOptions(device=args.device)), load_tokenizer(args.model), prompts, samples,
               SamplingSettings(k=4, max_new_tokens=64), model_id=args.model)
    write_data(args)
    kind = {"dpo": "trl-dpo", "kto": "trl-kto-pairs", "d2o": "trl-kto-d2o-rows"}[args.comparison]
    ours_name = f"negalign-{args.comparison}"
    theirs_names = [] if args.negalign_only else [f"{kind}-{s}" for s in args.trl_settings.split(",")]
    results = {name: run_worker(args, name) for name in [ours_name, *theirs_names]}
    command = (preload_prefix() + f"python benchmarks/train_vs_trl.py --comparison {args.comparison} --steps {args.steps} "
               f"--batch {args.batch} --max-length {args.max_length} --dtype {args.dtype}"
               + (f" --rows {args.rows}" if args.rows != args.batch * 16 else "")
               + (" --negalign-only" if args.negalign_only else "")
               + (f" --trl-settings {args.trl_settings}" if args.trl_settings != "defaults,fast" else "")
               + (f" --name {args.name}" if args.name else "")
               + (f" --device {args.device}" if args.device != "cpu" else "")
               + (f" --shape {args.shape}" if args.shape else "")
               + (f" --negalign-set {' '.join(args.negalign_set)}" if args.negalign_set else ""))
    work = work_per_step(args, args.comparison)
    if args.negalign_only:  # an ablation of negalign's own settings: no competitor, no ratio
        result = {"ablation": args.comparison, "negalign_overrides": args.negalign_set, "dtype": args.dtype,
                  "allocator": results[ours_name]["allocator"],
                  "batch": args.batch, "max_length": args.max_length, "steps": args.steps,
                  "work_per_step": work, "negalign": results[ours_name], "command": command}
        out = Path(__file__).parent / "results" / f"{args.name or 'ablation-' + args.comparison}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    ours = results[ours_name]
    theirs_all = {name.rsplit("-", 1)[1]: results[name] for name in theirs_names}
    faster = min(theirs_all, key=lambda s: theirs_all[s]["end_to_end_seconds"])
    theirs = theirs_all[faster]
    peaks = {dtype: max(peaks_before[dtype], matmul_peak(dtype, device=args.device)) for dtype in peaks_before}
    non_embedding, head = parameter_counts(args.model)
    step_flops = 4 * non_embedding * work["laid_out"] + 4 * head * work["completion"]
    achieved = step_flops / ours["mean_seconds_per_step"]
    rate = lambda result: work["completion"] / result["mean_seconds_per_step"]  # noqa: E731
    settings = {s: ("TRL defaults" if s == "defaults" else ", ".join(f"{k}={v}" for k, v in trl_fast(args)[kind[:7]].items()))
                for s in theirs_all}
    result = {
        "comparison": args.comparison, "competitor": f"{COMPETITOR[args.comparison]} ({faster}: {settings[faster]})",
        "competitor_settings": settings, "faster_competitor_setting": faster,
        "model": f"random-initialised, shape {args.shape}" if args.shape else args.model,
        "batch": args.batch, "rows": args.rows, "steps": args.steps, "max_length": args.max_length,
        "dtype": args.dtype, "lora": "r16 all-linear", "allocator": ours["allocator"], "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "completion_tokens_per_step": round(work["completion"], 1), "tokens_per_step": round(work["all"], 1),
        "negalign_laid_out_tokens_per_step": round(work["laid_out"], 1),
        "negalign": ours, "competitor_results": theirs_all,
        "negalign_tokens_per_s": round(rate(ours), 1), "competitor_tokens_per_s": round(rate(theirs), 1),
        **ratios(ours, theirs, rate),
        "ratios_by_setting": {s: ratios(ours, r, rate) for s, r in theirs_all.items()},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device != "cpu" else None, "shape": args.shape,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "trl": _version("trl")},
        "matmul_peak_gflops_bf16": round(peaks["bfloat16"] / 1e9, 1) if "bfloat16" in peaks else None,
        "matmul_peak_gflops_fp32": round(peaks["float32"] / 1e9, 1),
        "negalign_gflops": round(achieved / 1e9, 1),
        "matmul_peak_fraction": round(achieved / max(peaks.values()), 3),
        # against the peak of the dtype the run computes in (fp32 unless --dtype bf16): the fraction that says how
        # close the step is to what its own arithmetic can reach
        "matmul_peak_fraction_own_dtype": round(achieved / peaks["bfloat16" if args.dtype == "bf16" else "float32"], 3),
        "matmul_peak_fraction_bf16": round(achieved / peaks["bfloat16"], 3) if "bfloat16" in peaks else None,
        "command": command, "negalign_overrides": args.negalign_set,
    }
    out = Path(__file__).parent / "results" / f"{args.name or args.comparison}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
