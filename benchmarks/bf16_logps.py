"""How far bf16 autocast moves negalign's log-probs from fp32, on real data: HH harmless-base pairs scored by
SmolLM2-135M-Instruct with the training path (packed, shared prompts, completion-only LM head).

    .venv/bin/python benchmarks/bf16_logps.py --pairs 16

Writes benchmarks/results/bf16_logps.json (per-token, per-sequence and DPO-margin differences).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from negalign.data import complete_pairs, encode, load_rows
from negalign.logprobs import pack_sequences, reduce_token_logps, token_logps
from negalign.models import load_model, load_tokenizer

HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless-base-test/test.jsonl.gz"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    rows, _ = load_rows(str(HH), on_bad_row="skip")
    sequences = []
    for pair in complete_pairs(rows)[: args.pairs]:
        for completion in (pair["chosen"], pair["rejected"]):
            e = encode(pair["prompt"], completion, tokenizer, max_length=args.max_length,
                       max_prompt_length=args.max_length // 2)
            sequences.append((e.prompt_ids, e.completion_ids))
    model = load_model(args.model).eval()
    batch = pack_sequences(sequences)
    with torch.no_grad():
        fp32 = token_logps(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = token_logps(model, batch)
    seq32, seq16 = reduce_token_logps(fp32, batch), reduce_token_logps(bf16, batch)
    margin = (seq32[0::2] - seq32[1::2]) - (seq16[0::2] - seq16[1::2])
    stats = lambda d: {"mean_abs": round(d.abs().mean().item(), 4), "max_abs": round(d.abs().max().item(), 4)}  # noqa: E731
    result = {"model": args.model, "sequences": len(sequences), "completion_tokens": int(fp32.numel()),
              "per_token_logp": stats(fp32 - bf16), "sequence_logp": stats(seq32 - seq16),
              "mean_abs_sequence_logp_fp32": round(seq32.abs().mean().item(), 2), "dpo_margin": stats(margin),
              "command": f"python benchmarks/bf16_logps.py --pairs {args.pairs} --max-length {args.max_length}"}
    out = Path(__file__).parent / "results" / "bf16_logps.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
