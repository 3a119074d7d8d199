"""Generation: negalign's batched sampler vs transformers' `generate`, for evaluation answers and self-samples.

Two workloads, each measured in one run, one implementation after the other, same model (SmolLM2-135M-
Instruct, fp32), same prompts, same max_new_tokens:

    eval     greedy answers, K = 1, to evaluation prompts (the five built-in suites, taken in turn)
    sample   K self-samples per HH harmless-base prompt, temperature 0.7, top-p 0.95

Competitors:
    plain    `model.generate` once per prompt (num_return_sequences=K): what a user writes first
    batched  `model.generate` on left-padded, length-sorted batches of the same size as negalign's, with
             num_return_sequences=K and `cache_implementation="static"`: the strongest transformers-only setup
negalign runs at each of `--batch-sizes` (prompts per batch); the best is compared. Throughput counts the
generated tokens up to and including each answer's EOS. For greedy answers the share of answers identical to
the plain loop's is recorded too (batching with padding can flip a near-tie in fp32, rarely).

    .venv/bin/python benchmarks/generation.py --workload eval --prompts 48 --max-new-tokens 64
    .venv/bin/python benchmarks/generation.py --workload sample --prompts 16 --k 4 --max-new-tokens 64
    .venv/bin/python benchmarks/generation.py --workload sample --k 2 --sampling-context refusal

`--sampling-context` puts a context (a preset or file, as `negalign sample` takes it) before every prompt, for
every implementation: how D2O's anchors are drawn in the recipes. Its result goes to
generation-<workload>-context.json.

On a GPU: `--device cuda --dtype bfloat16`, and `--shape smollm2-1.7b` for a random-initialised model of that
shape (benchmarks/shapes.py); `--name` names the results file (benchmarks/gpu/check.sh uses
generation-<workload>-cuda-<shape>). Random weights rarely emit EOS, so on a shape every answer runs to
max_new_tokens for every implementation alike.

Writes benchmarks/results/generation-<workload>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from negalign.data.paths import data_dir as find_data_dir
from negalign.evaluation.generate import generate_answers
from negalign.evaluation.suites import load_suites
from negalign.models import ModelOptions, load_model, load_tokenizer
from negalign.sampling import SamplingSettings, encode_prompt_with_context, sample, unique_prompts

HH = "hh-rlhf-harmless-base-test/test.jsonl.gz"


def cut(row: list[int], eos: int) -> list[int]:
    return row[:row.index(eos) + 1] if eos in row else row


def hf_generate(model, tokenizer, batch: list[list[int]], args, **extra) -> list[list[int]]:
    """transformers' generate on one left-padded batch; rows cut after their first EOS."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(map(len, batch))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
    sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0) if args.k > 1 or \
        args.workload == "sample" else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                             num_return_sequences=args.k, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                             **sampling, **extra)
    return [cut(row, tokenizer.eos_token_id) for row in out[:, width:].tolist()]


def plain_loop(model, tokenizer, encoded, args):
    start, rows = time.time(), []
    for ids in encoded:
        rows.extend(hf_generate(model, tokenizer, [ids], args))
    return rows, time.time() - start


def batched_generate(model, tokenizer, encoded, args, batch_size: int):
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    start, rows = time.time(), [None] * len(encoded)
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        out = hf_generate(model, tokenizer, [encoded[i] for i in batch], args, cache_implementation="static")
        for position, i in enumerate(batch):
            rows[i] = out[position * args.k:(position + 1) * args.k]
    return [r for group in rows for r in group], time.time() - start


def negalign_run(model, tokenizer, prompts, args, batch_size: int, model_id: str):
    with tempfile.TemporaryDirectory() as tmp:
        if args.workload == "eval":
            rows, report = generate_answers(model, tokenizer, prompts, Path(tmp) / "a.jsonl", model_id=model_id,
                                            max_new_tokens=args.max_new_tokens, batch_size=batch_size, progress=False)
            return report.generated_tokens, report.seconds, [r["completion"] for r in rows]
        settings = SamplingSettings(k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_p=args.top_p, batch_size=batch_size, context=args.context)
        report = sample(model, tokenizer, prompts, Path(tmp) / "s.jsonl", settings, progress=False, model_id=model_id)
        return report.generated_tokens, report.seconds, None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["eval", "sample"], default="eval")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--k", type=int, default=None, help="samples per prompt (eval: 1, sample: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="16,32", help="negalign's prompts per batch, each measured")
    parser.add_argument("--competitor-batch-size", type=int, default=None,
                        help="batched generate's prompts per batch (default: negalign's best)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every implementation on it)")
    parser.add_argument("--dtype", default="float32", help="weights' dtype: float32, or bfloat16 on a GPU")
    parser.add_argument("--shape", default=None, help="a random-initialised model of this shape (benchmarks/shapes.py)")
    parser.add_argument("--name", default=None, help="results file name (default: generation-<workload>)")
    parser.add_argument("--no-plain-loop", action="store_true", help="skip the per-prompt loop (minutes on a large "
                        "model; batched generate is the stronger competitor)")
    parser.add_argument("--sampling-context", default=None,
                        help="sample workload: a context preset or file placed before every prompt")
    args = parser.parse_args()
    from negalign.sampling_context import resolve_context

    if args.sampling_context and args.workload != "sample":
        parser.error("--sampling-context applies to the sample workload")
    args.context = resolve_context(args.sampling_context)
    args.k = args.k or (1 if args.workload == "eval" else 4)
    torch.manual_seed(0)
    if args.shape:
        from shapes import materialise

        args.model = str(materialise(args.shape, device=args.device))
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, ModelOptions(device=args.device, dtype=args.dtype)).eval()
    data = find_data_dir(args.data_dir)
    if args.workload == "eval":
        suites = load_suites(None, data, max_prompts=args.prompts)
        prompts = [s.prompts[i] for i in range(args.prompts) for s in suites if i < len(s.prompts)][:args.prompts]
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    else:
        prompts = unique_prompts(str(Path(data) / HH), on_bad_row="skip")[:args.prompts]
    encoded = [encode_prompt_with_context(p, args.context, tokenizer, 256) for p in prompts]
    count = lambda rows: sum(len(r) for r in rows)  # noqa: E731  (rows are already cut after EOS)
    ours, texts = {}, {}
    for batch_size in map(int, args.batch_sizes.split(",")):
        tokens, seconds, texts[batch_size] = negalign_run(model, tokenizer, prompts, args, batch_size, args.model)
        ours[batch_size] = {"tokens": tokens, "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 1)}
        print("negalign batch", batch_size, ours[batch_size], flush=True)
    best = max(ours, key=lambda b: ours[b]["tokens_per_s"])
    competitor_batch = args.competitor_batch_size or best
    batched_rows, batched_seconds = batched_generate(model, tokenizer, encoded, args, competitor_batch)
    print("batched generate", count(batched_rows), round(batched_seconds, 1), flush=True)
    plain_rows, plain_seconds = ([], None) if args.no_plain_loop else plain_loop(model, tokenizer, encoded, args)
    print("plain loop", count(plain_rows), plain_seconds and round(plain_seconds, 1), flush=True)
    rate = {"negalign": ours[best]["tokens_per_s"], "batched": count(batched_rows) / batched_seconds,
            "plain": count(plain_rows) / plain_seconds if plain_seconds else None}
    result = {
        "benchmark": f"generation: {'evaluation answers (greedy)' if args.workload == 'eval' else 'self-sampling'}",
        "workload": args.workload,
        "competitor": "transformers generate: plain per-prompt loop, and batched with num_return_sequences and a "
                      f"static cache ({competitor_batch} prompts per batch)",
        "model": f"random-initialised, shape {args.shape}" if args.shape else args.model, "dtype": args.dtype,
        "device": args.device, "gpu": torch.cuda.get_device_name() if args.device != "cpu" else None,
        "prompts": len(prompts), "k": args.k,
        "max_new_tokens": args.max_new_tokens, "sampling_context": args.sampling_context,
        "mean_prompt_tokens": round(sum(map(len, encoded)) / len(encoded), 1), "temperature": 0.0 if args.workload == "eval" else args.temperature,
        "negalign_by_batch_size": ours, "negalign_batch_size": best,
        "negalign_tokens_per_s": rate["negalign"],
        "batched_generate": {"tokens": count(batched_rows), "seconds": round(batched_seconds, 1),
                             "tokens_per_s": round(rate["batched"], 1), "batch_size": competitor_batch},
        "plain_loop": {"tokens": count(plain_rows), "seconds": round(plain_seconds, 1),
                       "tokens_per_s": round(rate["plain"], 1)} if plain_seconds else "not run (--no-plain-loop)",
        "ratio_vs_plain_loop": round(rate["negalign"] / rate["plain"], 2) if plain_seconds else None,
        "ratio_vs_batched_generate": round(rate["negalign"] / rate["batched"], 2),
        "tokens_per_s_ratio": round(rate["negalign"] / max(rate["plain"] or 0, rate["batched"]), 2),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "command": f"python benchmarks/generation.py --workload {args.workload} --prompts {args.prompts} --k {args.k} "
                   f"--max-new-tokens {args.max_new_tokens} --batch-sizes {args.batch_sizes}"
                   + (f" --sampling-context {args.sampling_context}" if args.sampling_context else "")
                   + (f" --device {args.device} --dtype {args.dtype}" if args.device != "cpu" else "")
                   + (f" --shape {args.shape}" if args.shape else "") + (f" --name {args.name}" if args.name else "")
                   + (" --no-plain-loop" if args.no_plain_loop else ""),
    }
    if args.workload == "eval" and plain_seconds:  # greedy: the same answers are expected; say how often they are
        plain_texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in plain_rows]
        same = sum(a == b for a, b in zip(plain_texts, texts[best]))
        result["answers_identical_to_plain_loop"] = f"{same}/{len(prompts)}"
    suffix = "-context" if args.sampling_context else ""
    out = Path(__file__).parent / "results" / f"{args.name or 'generation-' + args.workload + suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
