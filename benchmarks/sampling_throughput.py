"""Self-sampling throughput: negalign's sampler vs a plain per-prompt `model.generate` loop.

Same model (SmolLM2-135M-Instruct), same HH harmless-base prompts, same K, max_new_tokens, temperature and
top-p, same dtype, measured one after the other in this run. The plain loop calls
`model.generate(prompt, num_return_sequences=K)` once per prompt (what a user writes first); negalign batches
prompts by length, prefills each prompt once for its K answers and decodes all rows together.

    .venv/bin/python benchmarks/sampling_throughput.py --prompts 16 --k 4 --max-new-tokens 64

Writes benchmarks/results/sampling.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from negalign.models import load_model, load_tokenizer
from negalign.sampling import SamplingSettings, _template, sample, unique_prompts

HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless-base-test/test.jsonl.gz"


def count_generated(rows, eos):
    return sum((r.index(eos) + 1) if eos in r else len(r) for r in rows)


def plain_loop(model, tokenizer, encoded, args):
    tokens, start = 0, time.time()
    for ids in encoded:
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0,
                                 max_new_tokens=args.max_new_tokens, num_return_sequences=args.k,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        tokens += count_generated(out[:, len(ids):].tolist(), tokenizer.eos_token_id)
    return tokens, time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(HH))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--output", default="benchmarks/results/sampling.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(args.model), load_model(args.model).eval()
    prompts = unique_prompts(args.data, on_bad_row="skip")[: args.prompts]
    encoded = [_template(tokenizer, p, None, 256) for p in prompts]
    settings = SamplingSettings(k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        report = sample(model, tokenizer, prompts, Path(tmp) / "s.jsonl", settings, progress=False)
    plain_tokens, plain_seconds = plain_loop(model, tokenizer, encoded, args)
    ours = report.generated_tokens / report.seconds
    plain = plain_tokens / plain_seconds
    result = {
        "benchmark": "self-sampling throughput", "competitor": "plain per-prompt transformers generate loop",
        "model": args.model, "prompts": len(prompts), "k": args.k, "max_new_tokens": args.max_new_tokens,
        "batch_size_prompts": args.batch_size, "dtype": "float32", "torch_threads": torch.get_num_threads(),
        "negalign_tokens_per_s": round(ours, 1), "negalign_seconds": round(report.seconds, 1),
        "negalign_generated_tokens": report.generated_tokens,
        "competitor_tokens_per_s": round(plain, 1), "competitor_seconds": round(plain_seconds, 1),
        "competitor_generated_tokens": plain_tokens, "tokens_per_s_ratio": round(ours / plain, 2),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "command": "python benchmarks/sampling_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("output", "data", "model"))
        + ("" if args.output == "benchmarks/results/sampling.json" else f" --output {args.output}"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
