"""The demo's settings: its two presets, the training settings of configs/d2o.yaml, and DemoSettings."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class DemoSettings:
    output: str = "results/demo"
    methods: list[str] = field(default_factory=lambda: ["d2o"])
    preset: str = "full"
    model: str = "smollm2-135m-instruct"
    harmful: list[str] = field(default_factory=lambda: ["harmful-train", "harmful-val"])
    benign: str = "benign-instructions"
    data_dir: str | None = None
    seed: int = 0
    learning_rate: float | None = None  # None: LEARNING_RATE[lora]
    lora: bool = False
    sampling_context: str | None = "refusal"
    sampling_instruction: str | None = None
    # the benign prompts answered under the sampling context: the answers judged refusals become negatives
    # (over-refusal), beside the harmful ones, with the prompts' plain anchors (docs/quality.md). None: the
    # preset's (on), unless there is nothing to answer them with (no benign prompts, k 0 or no context)
    benign_refusals: bool | None = None
    # the share of those benign refusals kept as negatives (a seeded draw): between configs/d2o-48steps.yaml
    # (none) and configs/d2o.yaml (all); half of them at 48 steps cut harm less (docs/quality.md "Part of ...")
    benign_refusal_share: float = 1.0
    # None: the preset's value (so 0 can mean 0, e.g. k=0, the no-sample ablation)
    harmful_prompts: int | None = None
    benign_prompts: int | None = None
    k: int | None = None
    sample_max_new_tokens: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    eval_prompts: int | None = None
    eval_max_new_tokens: int | None = None
    model_options: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self):
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
