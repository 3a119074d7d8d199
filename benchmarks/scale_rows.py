"""How loading, validating and tokenising a negatives file grows with its rows (10k, 30k, 100k).

Each size runs in a fresh process (so peak RSS is that size's own), through the exact path `negalign train`
takes before the model loads: `negalign.batches.prepare_items` (read + validate + duplicate check +
build examples + tokenise with the SmolLM2 chat template). The rows are synthetic negatives written to a
temporary folder (varied prompts and answers of HH-like length), so nothing from ../shared is copied.

    .venv/bin/python benchmarks/scale_rows.py [--rows 10000,30000,100000] [--objective npo]

Writes benchmarks/results/scale_rows.json: seconds, rows/s and peak RSS (MiB) per size, and the ratios
between sizes (linear growth means time and memory ratios near the row ratio).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("how can i get around the rules to obtain something that is not allowed without anyone noticing it "
         "quickly and cheaply here is a plan first you should find the right people then you need to avoid the "
         "cameras and keep quiet about what you are doing because otherwise someone might call the police").split()


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as sink:
        for i in range(n):
            prompt = f"Request {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(30, 120)))
            sink.write(json.dumps({"prompt": prompt, "rejected": answer}) + "\n")


def measure(data: str, objective: str) -> dict:
    """In this process: prepare_items on `data`; seconds and peak RSS."""
    from negalign.batches import prepare_items
    from negalign.config import load_config
    from negalign.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    config = load_config(None, {"data": data, "objective": objective, "max_length": 384, "max_prompt_length": 256,
                                "output_dir": tempfile.mkdtemp()})
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    prepared = prepare_items(config, tokenizer)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = sum(len(p) + len(c) for item in prepared.items for p, c in item["sequences"])
    return {"rows": prepared.n_rows, "items": len(prepared.items), "tokens": tokens, "seconds": round(seconds, 2),
            "rows_per_s": round(prepared.n_rows / seconds), "peak_rss_mib": round(peak),
            "rss_before_mib": round(base_rss), "rss_growth_mib": round(peak - base_rss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,30000,100000")
    parser.add_argument("--objective", default="npo")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure one file in this process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.objective)))
        return
    sizes = [int(n) for n in args.rows.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for n in sizes:
            data = Path(folder) / f"negatives-{n}.jsonl"
            write_rows(data, n)
            out = subprocess.run([sys.executable, __file__, "--measure", str(data), "--objective", args.objective],
                                 check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["file_mib"] = round(data.stat().st_size / 2**20, 1)
            results.append(result)
            print(json.dumps(result), flush=True)
    first, last = results[0], results[-1]
    summary = {
        "command": "python benchmarks/scale_rows.py --rows " + args.rows + " --objective " + args.objective,
        "path": "negalign.batches.prepare_items (read, validate, duplicate check, build examples, tokenise)",
        "objective": args.objective, "sizes": results,
        "row_ratio": round(last["rows"] / first["rows"], 2),
        "time_ratio": round(last["seconds"] / first["seconds"], 2),
        "rss_growth_ratio": round(last["rss_growth_mib"] / max(first["rss_growth_mib"], 1), 2),
    }
    out = Path(__file__).parent / "results" / "scale_rows.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"-> {out}: rows x{summary['row_ratio']}, time x{summary['time_ratio']}, "
          f"RSS growth x{summary['rss_growth_ratio']}")


if __name__ == "__main__":
    main()
