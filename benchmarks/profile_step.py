"""Where a training step's time goes: torch.profiler on negalign's forward + backward of one packed row.

A D2O-shaped row (a prompt of `--prompt` tokens shared by K + 1 completions of `--completion` tokens, random
token ids), SmolLM2-135M-Instruct with LoRA r16 on every linear layer, fp32. Prints and records the share of
the step's CPU time per operator and, for every matrix product shape, its time and achieved GFLOP/s against
the 2048^3 fp32 matmul peak measured in the same run, so the question "how far from the hardware is the step"
has an answer per product: the large ones (hidden x 576 x 1536 and the like) against LoRA's rank-16 ones.

    .venv/bin/python benchmarks/profile_step.py

Writes benchmarks/results/profile_step.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import preload_prefix

from negalign.heap import allocator


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=46)
    parser.add_argument("--completion", type=int, default=55)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after two warm-up steps)")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from train_vs_trl import matmul_peak

    from negalign.logprobs import pack_sequences, token_logps
    from negalign.models import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(args.model), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                              task_type="CAUSAL_LM"))
    model.train()
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = torch.randint(0, vocab, (args.prompt,)).tolist()
    batch = pack_sequences([(prompt, torch.randint(0, vocab, (args.completion,)).tolist()) for _ in range(args.k + 1)])

    def step():
        token_logps(model, batch).sum().backward()
        model.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiled:
        step()
    peak = matmul_peak("float32")
    events = profiled.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_op = sorted(((e.key, e.self_cpu_time_total) for e in events), key=lambda kv: -kv[1])[:12]
    products = []
    for e in profiled.key_averages(group_by_input_shape=True):
        if e.key != "aten::mm" or len(e.input_shapes) < 2:
            continue
        (m, k), (_, n) = e.input_shapes[0], e.input_shapes[1]
        flops = 2 * m * k * n * e.count
        products.append({"shape": f"[{m}, {k}] x [{k}, {n}]", "calls": e.count, "low_rank": min(m, k, n) <= 16,
                         "ms": round(e.self_cpu_time_total / 1e3, 1),
                         "gflops": round(flops / e.self_cpu_time_total / 1e3, 1),
                         "of_peak": round(flops / (e.self_cpu_time_total / 1e6) / peak, 2)})
    products.sort(key=lambda p: -p["ms"])
    mm_ms = sum(p["ms"] for p in products)
    low_rank_ms = sum(p["ms"] for p in products if p["low_rank"])  # LoRA's A and B products, forward and backward
    result = {"benchmark": "profile of a D2O step (forward + backward)", "model": args.model, "lora": "r16 all-linear",
              "dtype": "fp32", "k": args.k, "laid_out_tokens": int(batch.input_ids.shape[1]),
              "completion_tokens": int(batch.target_ids.numel()), "allocator": allocator(),
              "seconds_per_step": round(sorted(seconds)[len(seconds) // 2], 3),
              "matmul_peak_gflops_fp32": round(peak / 1e9, 1),
              "share_of_step": {key: round(value / total, 3) for key, value in by_op},
              "matmul_share": round(mm_ms * 1e3 / total, 3), "lora_rank_products_share": round(low_rank_ms * 1e3 / total, 3),
              "products": products[:20],
              "command": preload_prefix() + f"python benchmarks/profile_step.py --k {args.k} --prompt {args.prompt} "
                         f"--completion {args.completion}"}
    out = Path(__file__).parent / "results" / "profile_step.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "products"}, indent=2))
    for p in products[:20]:
        print(f"{p['ms']:8.1f} ms {p['calls']:5d}  {p['shape']:28s} {p['gflops']:6.1f} GFLOP/s ({p['of_peak']:.0%} of peak)")


if __name__ == "__main__":
    main()
