"""Random-initialised models of a real model's *shape*, for timing where weights cannot travel (a lent GPU
machine receives at most 64 MiB; SmolLM2-1.7B's weights are 3.4 GB). Speed depends on the shapes (layers,
widths, heads, vocabulary) and the sequence lengths, not on the weights' values; the tokenizer is the real
one, so the same data gives the same token counts.

    # here, once: the shapes' config.json and SmolLM2's tokenizer files (from the bundled GGUF), 3.5 MB each
    .venv/bin/python benchmarks/shapes.py --write benchmarks/gpu/carry/shapes
    # there (benchmarks take --shape NAME and build it): a random model of that shape, saved as an HF folder
    python benchmarks/shapes.py --materialise smollm2-1.7b --from benchmarks/gpu/carry/shapes --device cuda

SmolLM2's three sizes share one tokenizer and architecture (Llama, tied embeddings); the dimensions are those
of their published config.json files. `tiny` is for dry runs of the GPU scripts on a CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHAPES = {
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, rope_theta=130000.0, max_position_embeddings=8192),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, rope_theta=100000.0, max_position_embeddings=8192),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, rope_theta=100000.0, max_position_embeddings=8192),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=100000.0, max_position_embeddings=2048),
}
DEFAULT_ROOT = Path(__file__).parent / "gpu" / "carry" / "shapes"


def write_shapes(root: Path, names=tuple(SHAPES)) -> list[Path]:
    """config.json and the tokenizer files for each shape: what a machine without gguf needs to build one."""
    from transformers import AutoConfig

    from negalign.models import load_tokenizer, resolve_model_path

    bundled = resolve_model_path("smollm2-135m-instruct")  # the converted HF folder (config from the GGUF)
    tokenizer, base = load_tokenizer(bundled), AutoConfig.from_pretrained(bundled)
    written = []
    for name in names:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        shape = dict(SHAPES[name])
        rope_theta = shape.pop("rope_theta")
        config = base.to_dict() | shape | {"tie_word_embeddings": True}
        config["rope_parameters"] = {**config.get("rope_parameters", {}), "rope_theta": rope_theta}
        config.pop("_name_or_path", None)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tokenizer.save_pretrained(folder)
        written.append(folder)
    return written


def materialise(name: str, root: Path = DEFAULT_ROOT, out: Path | None = None, device: str = "cpu",
                dtype: str = "bfloat16") -> Path:
    """A random model of shape `name` saved with its tokenizer as an HF folder (reused if already there)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = root / name
    if not (source / "config.json").exists():
        raise SystemExit(f"{source}/config.json missing: run `python benchmarks/shapes.py --write {root}` first")
    out = out or Path("/tmp/negalign-shapes") / name
    if (out / "model.safetensors").exists() or (out / "model.safetensors.index.json").exists():
        return out
    start = time.time()
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(source)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"shape {name}: {n / 1e9:.2f} B parameters, random-initialised on {device} in {dtype}, saved to {out} "
          f"({time.time() - start:.0f} s)", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="write every shape's config and tokenizer under this folder")
    parser.add_argument("--materialise", choices=list(SHAPES), help="build this shape's random model")
    parser.add_argument("--from", dest="root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    if args.write:
        for folder in write_shapes(args.write):
            print("wrote", folder)
    if args.materialise:
        print(materialise(args.materialise, args.root, args.out, args.device, args.dtype))


if __name__ == "__main__":
    main()
