"""The demo's settings: DemoSettings, which takes its training settings from a recipe (configs/d2o.yaml unless
--config names another), and the sizes of its quick and full runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from negalign.commandline import option
from negalign.methods import METHODS
from negalign.models import ModelOptions
from negalign.serving import SERVER_FIELDS, ServerOptions

# --quick: a few minutes on 2 CPU cores, the whole path, too small to move anything (wins over the recipe's sizes)
QUICK = dict(harmful_prompts=12, benign_prompts=8, k=2, sample_max_new_tokens=32, max_steps=4, batch_size=2,
             eval_prompts=6, eval_max_new_tokens=32, benign_refusals=True)
# the demo's own sizes, which no training recipe holds: harmful_prompts 400 = all 299 of the two sets; the full
# demo takes 18.5 minutes on 2 AVX-512 cores for D2O (measured), about 45 on AVX2 (docs/quality.md)
SIZES = dict(harmful_prompts=400, benign_prompts=192, eval_prompts=50, eval_max_new_tokens=64, benign_refusals=True)
# recipe keys the demo sets itself for every method (its own files, names and budget), not passed on from the recipe
OWN_KEYS = {"data", "samples", "benign_samples", "output_dir", "objective", "model", "k", "sampling_context",
            "sampling_instruction", "max_steps", "per_device_train_batch_size", "learning_rate", "seed",
            "use_lora", "sample_max_new_tokens", "sample_batch_size", "overwrite", *SERVER_FIELDS}


def _names(text: str) -> list[str]:
    """--methods d2o,kto -> ["d2o", "kto"]."""
    return [name.strip() for name in text.split(",") if name.strip()]


@dataclass
class DemoSettings:
    """`negalign demo`'s settings: each field is a flag (`--harmful-prompts`) and a key of a `--config` file.

    The training recipe is a recipe like any other: configs/d2o.yaml (packaged as `d2o`; `d2o-lora` with
    --lora) unless --config names another. Its settings shared with the demo (the RECIPE table) fill every field
    left unset, and every method trains with the recipe's other settings (max_length, logp_reduction, ...; the
    recipe's beta and alpha for its own objective, METHODS[m].demo's for the other methods). A field left None
    takes, in order: --quick's size, the recipe's value, the demo's own SIZES (so 0 can mean 0: k 0 is the
    no-sample ablation)."""

    # a training recipe's settings shared with the demo (recipe key -> field)
    RECIPE: ClassVar[dict] = {"model": "model", "seed": "seed", "learning_rate": "learning_rate",
                              "max_steps": "max_steps", "k": "k", "sampling_context": "sampling_context",
                              "sampling_instruction": "sampling_instruction", "use_lora": "lora",
                              "per_device_train_batch_size": "batch_size",
                              "sample_max_new_tokens": "sample_max_new_tokens",
                              "attn_implementation": "attn_implementation", "trust_remote_code": "trust_remote_code",
                              **{name: name for name in SERVER_FIELDS}}  # the recipe's server answers for the demo

    output: str | None = option(None, "output folder (default runs/demo, or runs/demo-quick with --quick: places the "
                                "repository tracks nothing in; results/demo holds the committed reference run)")
    overwrite: bool = option(False, "move aside an output folder that holds other files, or a demo made with other "
                             "data settings, and start over in it (nothing is deleted)")
    methods: list[str] = option(help="comma-separated objectives trained at the same budget, from: "
                                + ", ".join(METHODS), factory=lambda: ["d2o"], type=_names)
    quick: bool = option(False, "the small preset (about 4 minutes on 2 cores from a fresh clone)")
    preset: str = option("full", "quick or full (--quick is --preset quick)", choices=["quick", "full"])
    model: str | None = option(None, "the starting model (path, Hub or short name; default: the recipe's)")
    harmful: list[str] = option(help="data sets of harmful instructions the model answers",
                                factory=lambda: ["harmful-train", "harmful-val"])
    benign: str = option("benign-instructions", "data set of benign instructions")
    data_dir: str | None = option(None, "data folder (default $NEGALIGN_DATA or ../shared/data)")
    seed: int | None = option(None, "seed of sampling, training and evaluation (default: the recipe's, else 0)")
    learning_rate: float | None = option(None, "same for every method (default: the recipe's, 2e-5 in d2o and "
                                         "2e-4 in d2o-lora)")
    lora: bool | None = option(None, "train a LoRA adapter instead of all weights (without --config: the "
                               "d2o-lora recipe, rank 16 on every linear layer)")
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
    harmful_negatives: bool = option(
        True, "with --benign-refusals: D2O pushes the flagged harmful answers down too; --no-harmful-negatives "
        "keeps the flagged prompts as anchor-only rows (pulled towards their refusal-context anchors, no negative) "
        "and the benign refusals as the only negatives: more harm cut for a little more benign refusal "
        "(docs/quality.md, 'Which negatives matter'); the baselines' rows do not change")
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
    # the starting model's answers, anchors and evaluation through an OpenAI-compatible server serving --model
    # (docs/serving.md); the trained models are evaluated locally
    server: ServerOptions = option(help="", factory=ServerOptions)
    # set from --config (None: the packaged d2o, or d2o-lora with --lora), and what every method trains with
    config: str | None = field(default=None, metadata={"cli": False})
    training: dict = field(default_factory=dict, metadata={"cli": False})

    def __post_init__(self):
        from negalign.config import load_config, recipe_path
        from negalign.files import read_yaml

        if self.quick:
            self.preset = "quick"
        if self.output is None:
            self.output = "runs/demo-quick" if self.preset == "quick" else "runs/demo"
        if self.config is None:
            self.config = "d2o-lora" if self.lora else "d2o"
        path = recipe_path(self.config)
        given = read_yaml(path) or {}
        recipe = load_config(path, {"output_dir": "unused"})  # checked whole, as `negalign train` checks it
        preset_refusals = self.benign_refusals is None  # before --quick's sizes, which set it, are taken
        self._fill(given, recipe)
        # what every method trains with besides the demo's own settings: the recipe's other keys as it typed them
        self.training = {key: getattr(recipe, key) for key in given if key not in OWN_KEYS}
        self.training.update(objective=recipe.objective, max_prompt_length=recipe.max_prompt_length)
        possible = bool(self.benign_prompts and self.k and (self.sampling_context or self.sampling_instruction))
        if preset_refusals and not possible:  # an ablation without anchors or context: the rest of the recipe
            self.benign_refusals = False
        self._check(refusals_possible=possible)

    def _fill(self, given: dict, recipe) -> None:
        """Every field left None, from --quick's size, else the recipe's value (`given`: the keys it sets;
        `recipe`: the whole config it makes), else the demo's own SIZES; and the sampling context resolved."""
        for key, value in (QUICK if self.preset == "quick" else {}).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        for key, name in self.RECIPE.items():
            owner = next(o for o in (self, self.server, self.model_options) if hasattr(o, name))
            if name == "sampling_context":  # its unset value is "auto" (None means none), taken below
                continue
            if getattr(owner, name) is None and (key in given or key not in ("seed", "use_lora")):
                setattr(owner, name, getattr(recipe, key))
        if self.sampling_context == "auto" and given.get("sampling_context") and not self.sampling_instruction:
            self.sampling_context = recipe.sampling_context
        for key, value in {**SIZES, "seed": 0, "lora": False}.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.sampling_context == "auto":  # unset: refusal, unless an instruction replaces it
            self.sampling_context = None if self.sampling_instruction else "refusal"
        elif self.sampling_context == "none":
            self.sampling_context = None

    def _check(self, refusals_possible: bool) -> None:
        """Settings that cannot run together, refused in one line before any work."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        if self.benign_refusals and not refusals_possible:
            raise ValueError("--benign-refusals answers the benign prompts under the sampling context: it needs "
                             "benign prompts, k > 0 and a sampling context or instruction")
        if not 0.0 < self.benign_refusal_share <= 1.0:
            raise ValueError(f"--benign-refusal-share must be in (0, 1], got {self.benign_refusal_share}")
        if self.benign_refusal_share < 1.0 and not self.benign_refusals:
            raise ValueError("--benign-refusal-share picks among the benign refusals: it needs --benign-refusals")
        if not self.harmful_negatives and not self.benign_refusals:
            raise ValueError("--no-harmful-negatives leaves the benign refusals as D2O's only negatives: it needs "
                             "--benign-refusals")
        if not self.k and any(not METHODS[m].reads_samples_file for m in self.methods):
            raise ValueError("--k 0 leaves no anchors, and the baselines' rows take their chosen side from "
                             "them: with k 0 train only d2o")

    def method_training(self, method: str) -> dict:
        """The recipe's settings for `method` (without the demo's own: data, budget, seed): the recipe's
        hyperparameters for its own objective; for another method, that method's demo values instead."""
        settings = dict(self.training)
        objective = settings.pop("objective")
        if method != objective:
            for name in (*METHODS[objective].hyperparameters, "loss"):  # "loss": its own hyperparameters
                settings.pop(name, None)
            settings.update(METHODS[method].demo)
        return settings
