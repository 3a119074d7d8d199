"""How often SmolLM2 refuses under each sampling context: harmful vs benign prompts, one sample each.

What D2O's anchors can carry depends on the context they are sampled under (docs/sampling_context.md). This
samples one answer per prompt (temperature 0.7, top-p 0.95, as the anchors are drawn) under each context and
judges it with the offline judge (and the refusal-phrase list), on tuning prompts that no evaluation suite
draws from (refusal-direction harmful_val and a seeded sample of harmless_val) and on two evaluation suites
(AdvBench, XSTest-safe) for reference. Rates carry their n and Wilson 95 % intervals.

    .venv/bin/python study/refusal-context-anchors/context_refusal.py --n 40 --output study/refusal-context-anchors/context_refusal.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from negalign.anchors import judge_refuses, keyword_refuses
from negalign.data.paths import data_dir
from negalign.evaluation.metrics import rate_with_interval
from negalign.evaluation.suites import builtin_suite
from negalign.files import atomic_write_text
from negalign.models import load_model, load_tokenizer
from negalign.sampling import SamplingSettings, read_existing, sample
from negalign.sampling_context import context_hash, resolve_context


def tuning_sets(folder: Path, n: int, seed: int) -> dict[str, tuple[str, list[str]]]:
    split = folder / "refusal-direction-splits"
    harmful = [x["instruction"] for x in json.loads((split / "harmful_val.json").read_text())]
    benign = [x["instruction"] for x in json.loads((split / "harmless_val.json").read_text())]
    random.Random(seed).shuffle(benign)
    sets = {"harmful_val (tuning)": ("harmful", harmful[:n]), "harmless_val (tuning)": ("benign", benign[:n])}
    for name in ("advbench", "xstest-safe"):
        suite = builtin_suite(name, folder, seed).subsample(n, seed)
        sets[f"{name} (eval suite)"] = (suite.kind, suite.prompts)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="none,refusal,refusal-selective")
    parser.add_argument("--n", type=int, default=40, help="prompts per set")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--output", default="study/refusal-context-anchors/context_refusal.json")
    args = parser.parse_args()
    tokenizer, model = load_tokenizer(args.model), load_model(args.model)
    sets = tuning_sets(data_dir(required=True), args.n, args.seed)
    results = {}
    for name in args.contexts.split(","):
        context = None if name == "none" else resolve_context(name)
        row = {"context": name, "sha256": context_hash(context), "sets": {}}
        for set_name, (kind, prompts) in sets.items():
            messages = [[{"role": "user", "content": p}] for p in prompts]
            settings = SamplingSettings(k=1, max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=8,
                                        context=context)
            with tempfile.TemporaryDirectory() as tmp:
                clock = time.time()
                sample(model, tokenizer, messages, Path(tmp) / "s.jsonl", settings, model_id=args.model,
                       progress=False)
                done = read_existing(Path(tmp) / "s.jsonl")
            from negalign.data import prompt_key

            answers = [done[(prompt_key(m), 0)]["completion"] for m in messages]
            refusal = rate_with_interval(judge_refuses(answers))
            row["sets"][set_name] = {"kind": kind, "refusal": refusal,
                                     "refusal_keyword": rate_with_interval(keyword_refuses(answers)),
                                     "seconds": round(time.time() - clock, 1)}
            r = refusal
            print(f"{name:<18} {set_name:<24} refusal {r['count']:>3}/{r['n']} = {r['rate']:.2f} "
                  f"[{r['low']:.2f}, {r['high']:.2f}]", flush=True)
        results[name] = row
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    atomic_write_text(args.output, json.dumps({"settings": settings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
