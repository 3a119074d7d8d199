"""Where a training step's memory goes: the tensors autograd keeps for the backward, against the process's RSS.

One D2O-shaped packed row (a prompt of `--prompt` tokens shared by K + 1 completions of `--completion` tokens,
random token ids), SmolLM2-135M-Instruct with LoRA r16 on every linear layer, fp32, in training mode. For the
plain forward and for one under gradient checkpointing (non-reentrant), each in its own process:

- `saved_gb`: bytes of the distinct storages autograd saves during the forward (counted with
  torch.autograd.graph.saved_tensors_hooks), the base model's weights left out (LoRA's own, which the backward
  also keeps, are counted: about 0.02 GB), with the largest shapes;
- `live_after_forward_gb`: RSS after the forward once glibc has handed its free pages back (malloc_trim),
  over the same reading before it: what the forward really keeps (glibc only: malloc_trim is glibc's);
- `peak_rss_over_loaded_gb`: the peak RSS over `--steps` more forward + backward passes (sampled every 2 ms,
  no trimming) over the RSS once the model was loaded: what the steps cost the machine under the process's
  allocator, as the training benchmarks' "steps" stage less their "load model" one.

The gap between the last two is memory the allocator holds, not tensors (docs/benchmarks.md).

    .venv/bin/python benchmarks/memory_breakdown.py

Writes benchmarks/results/<--name>.json (memory_breakdown.json).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_common import RssTimeline, preload_prefix

from negalign.heap import allocator


def measure(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from negalign.logprobs import pack_sequences, token_logps
    from negalign.models import load_model

    torch.manual_seed(0)
    model = load_model(args.model)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0)  # every weight page resident before the first reading
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    if args.mode == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = torch.randint(0, vocab, (args.prompt,)).tolist()
    batch = pack_sequences([(prompt, torch.randint(0, vocab, (args.completion,)).tolist()) for _ in range(args.k + 1)])
    libc = ctypes.CDLL("libc.so.6")
    timeline = RssTimeline(interval=0.002)
    loaded = timeline.rss_gb()  # weights resident, nothing run yet
    token_logps(model, batch).sum().backward()  # warm-up: one-off allocations (thread pools, kernels) out of the reading
    model.zero_grad(set_to_none=True)

    seen, by_shape = {}, collections.Counter()

    def keep(tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and key not in weights:
            seen[key] = storage.nbytes()
            by_shape[f"{tuple(tensor.shape)}"] += storage.nbytes()
        return tensor

    libc.malloc_trim(0)
    time.sleep(0.05)
    before = timeline.rss_gb()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        logps = token_logps(model, batch)
    libc.malloc_trim(0)
    time.sleep(0.05)
    glibc = allocator() == "glibc malloc"  # malloc_trim is glibc's: under another allocator the reading says nothing
    live = timeline.rss_gb() - before if glibc else None
    logps.sum().backward()
    del logps
    model.zero_grad(set_to_none=True)
    timeline.mark("steps")
    for _ in range(args.steps):  # as training runs: the allocator keeps or returns memory as it does
        token_logps(model, batch).sum().backward()
        model.zero_grad(set_to_none=True)
    stages = timeline.stop()
    return {"mode": args.mode, "laid_out_tokens": int(batch.input_ids.shape[1]),
            "completion_tokens": int(batch.target_ids.numel()), "allocator": allocator(),
            "saved_gb": round(sum(seen.values()) / 1e9, 3),
            "saved_by_shape_gb": {shape: round(size / 1e9, 3) for shape, size in by_shape.most_common(12)},
            "live_after_forward_gb": None if live is None else round(live, 3),
            "peak_rss_over_loaded_gb": round(stages["steps"]["peak_rss_gb"] - loaded, 3), "steps": args.steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--k", type=int, default=4, help="self-samples per prompt (K + 1 completions)")
    parser.add_argument("--prompt", type=int, default=46, help="prompt tokens")
    parser.add_argument("--completion", type=int, default=55, help="tokens per completion")
    parser.add_argument("--steps", type=int, default=4, help="forward + backward passes for the RSS reading")
    parser.add_argument("--name", default="memory_breakdown", help="results file name")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return
    results = []
    for mode in ("plain", "checkpointing"):  # each in a fresh process: one's heap must not shape the other's
        done = subprocess.run([sys.executable, __file__, "--mode", mode, "--model", args.model, "--k", str(args.k),
                               "--prompt", str(args.prompt), "--completion", str(args.completion), "--steps", str(args.steps)],
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(lines[-1][7:]))
        print(json.dumps(results[-1]), flush=True)
    command = (preload_prefix() + f"python benchmarks/memory_breakdown.py --k {args.k} --prompt {args.prompt} "
               f"--completion {args.completion} --steps {args.steps}"
               + (f" --name {args.name}" if args.name != "memory_breakdown" else ""))
    out = Path(__file__).parent / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"benchmark": "memory breakdown of a D2O forward", "model": args.model,
                               "lora": "r16 all-linear", "dtype": "fp32", "k": args.k, "results": results,
                               "command": command}, indent=2) + "\n")


if __name__ == "__main__":
    main()
