"""The demo's settings: its two presets, the training settings of configs/d2o.yaml, and DemoSettings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from negalign.commandline import option
from negalign.methods import METHODS
from negalign.models import ModelOptions

PRESETS = {
    # a few minutes on 2 CPU cores: the whole path, too small to move anything
    "quick": dict(harmful_prompts=12, benign_prompts=8, k=2, sample_max_new_tokens=32, max_steps=4,
                  batch_size=2, eval_prompts=6, eval_max_new_tokens=32, benign_refusals=True),
    # configs/d2o.yaml: 18.5 minutes on 2 AVX-512 cores for D2O (measured), about 45 on AVX2 (docs/quality.md);
    # harmful_prompts 400 = all 299 of the two sets. --no-benign-refusals --steps 48: configs/d2o-48steps.yaml
    "full": dict(harmful_prompts=400, benign_prompts=192, k=2, sample_max_new_tokens=64, max_steps=144,
                 batch_size=4, eval_prompts=50, eval_max_new_tokens=64, benign_refusals=True),
}
# the shared training settings of configs/d2o.yaml (the methods' own beta/alpha are in METHODS[...].demo)
TRAIN = dict(logp_reduction="sum", max_length=384, max_prompt_length=256)
# --lora: a rank-16 adapter on every linear layer instead of all weights, at ten times the learning rate
# (configs/d2o-lora.yaml, the study's d2o-selfneg-k2-overrefusal-lora-r16-lr2e-4-144steps)
LORA = dict(use_lora=True, lora_r=16, lora_alpha=32)
LEARNING_RATE = {False: 2e-5, True: 2e-4}  # full fine-tuning, LoRA


def _names(text: str) -> list[str]:
    """--methods d2o,kto -> ["d2o", "kto"]."""
    return [name.strip() for name in text.split(",") if name.strip()]


@dataclass
class DemoSettings:
    """`negalign demo`'s settings: each field is a flag (`--harmful-prompts`) and a key of a `--config` file;
    None takes the preset's value (so 0 can mean 0, e.g. k 0, the no-sample ablation)."""

    # a training recipe given as --config: the settings it shares with the demo (recipe key -> field)
    RECIPE: ClassVar[dict] = {"model": "model", "seed": "seed", "learning_rate": "learning_rate",
                              "max_steps": "max_steps", "k": "k", "sampling_context": "sampling_context",
                              "sampling_instruction": "sampling_instruction", "use_lora": "lora",
                              "attn_implementation": "attn_implementation", "trust_remote_code": "trust_remote_code"}

    output: str | None = option(None, "output folder (default results/demo, or results/demo-quick with --quick)")
    methods: list[str] = option(help="comma-separated objectives trained at the same budget, from: "
                                + ", ".join(METHODS), factory=lambda: ["d2o"], type=_names)
    quick: bool = option(False, "the small preset (about 4 minutes on 2 cores from a fresh clone)")
    preset: str = option("full", "quick or full (--quick is --preset quick)", choices=list(PRESETS))
    model: str = option("smollm2-135m-instruct", "the starting model (path, Hub or short name)")
    harmful: list[str] = option(help="data sets of harmful instructions the model answers",
                                factory=lambda: ["harmful-train", "harmful-val"])
    benign: str = option("benign-instructions", "data set of benign instructions")
    data_dir: str | None = option(None, "data folder (default $NEGALIGN_DATA or ../shared/data)")
    seed: int = option(0, "seed of sampling, training and evaluation")
    learning_rate: float | None = option(None, "same for every method (default 2e-5, or 2e-4 with --lora)")
    lora: bool = option(False, "train a rank-16 LoRA adapter on every linear layer instead of all weights")
    sampling_context: str | None = option(
        "auto", "messages placed before each prompt only while sampling the anchors: a preset (refusal, "
        "refusal-selective), a JSON/YAML file (docs/sampling_context.md), or none (auto: refusal, unless "
        "--sampling-instruction replaces it)")
    sampling_instruction: str | None = option(None, "a system prompt used only while sampling the anchors, "
                                              "instead of the context")
    benign_refusals: bool | None = option(
        None, "also answer the benign prompts under the sampling context and train on the answers judged "
        "refusals as negatives (with the prompts' plain anchors); the baselines get the same rows (default: the "
        "preset's, on, unless nothing can answer them; --no-benign-refusals --steps 48 is configs/d2o-48steps.yaml)")
    benign_refusal_share: float = option(1.0, "with --benign-refusals: the share of the benign refusals kept as "
                                         "negatives, a seeded draw (1: all)")
    harmful_prompts: int | None = option(None, "harmful instructions the model answers (default: the preset's; "
                                         "all 299 of harmful-train and harmful-val, less evaluation prompts)")
    benign_prompts: int | None = option(None, "benign instructions with anchors (default: the preset's)")
    k: int | None = option(None, "D2O self-samples per prompt (default: the preset's)")
    sample_max_new_tokens: int | None = option(None, "tokens per sampled answer (default: the preset's)")
    max_steps: int | None = option(None, "training steps per method (default: the preset's)", flags=("--steps",))
    batch_size: int | None = option(None, "training batch size (default: the preset's)")
    eval_prompts: int | None = option(None, "prompts per eval suite (default: the preset's)")
    eval_max_new_tokens: int | None = option(None, "tokens per evaluation answer (default: the preset's)")
    model_options: ModelOptions = option(help="", factory=ModelOptions)

    def __post_init__(self):
        if self.quick:
            self.preset = "quick"
        if self.output is None:
            self.output = "results/demo-quick" if self.preset == "quick" else "results/demo"
        if self.sampling_context == "auto":  # unset: refusal, unless an instruction replaces it
            self.sampling_context = None if self.sampling_instruction else "refusal"
        elif self.sampling_context == "none":
            self.sampling_context = None
        if self.learning_rate is None:
            self.learning_rate = LEARNING_RATE[self.lora]
        preset_refusals = self.benign_refusals is None
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        possible = bool(self.benign_prompts and self.k and (self.sampling_context or self.sampling_instruction))
        if preset_refusals and not possible:  # an ablation without anchors or context: the rest of the recipe
            self.benign_refusals = False
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        if self.benign_refusals and not possible:
            raise ValueError("--benign-refusals answers the benign prompts under the sampling context: it needs "
                             "benign prompts, k > 0 and a sampling context or instruction")
        if not 0.0 < self.benign_refusal_share <= 1.0:
            raise ValueError(f"--benign-refusal-share must be in (0, 1], got {self.benign_refusal_share}")
        if self.benign_refusal_share < 1.0 and not self.benign_refusals:
            raise ValueError("--benign-refusal-share picks among the benign refusals: it needs --benign-refusals")
        if not self.k and any(not METHODS[m].reads_samples_file for m in self.methods):
            raise ValueError("--k 0 leaves no anchors, and the baselines' rows take their chosen side from "
                             "them: with k 0 train only d2o")
