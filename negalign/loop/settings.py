"""`negalign loop`'s settings: one dataclass whose fields are the command's flags and the keys of
configs/loop.yaml. D2O's settings left unset come from a training recipe (configs/d2o.yaml, the demo's), so
that one round of the loop is the demo's D2O run on the round's own negatives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from negalign.commandline import option
from negalign.models import ModelOptions


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


@dataclass
class LoopSettings:
    """Each field is a flag (`--benign-prompts`) and a key of a `--config` file (`benign_prompts`)."""

    # recipe key -> field: what a field left unset takes from the training recipe
    RECIPE: ClassVar[dict] = {"model": "model", "max_steps": "steps", "per_device_train_batch_size": "batch_size",
                              "learning_rate": "learning_rate", "beta": "beta", "alpha": "alpha", "k": "k",
                              "sampling_context": "sampling_context", "sample_max_new_tokens": "sample_max_new_tokens"}
    # recipe keys the loop sets itself in every round (its files, output and budget)
    OWN_KEYS: ClassVar[set] = {"data", "samples", "benign_samples", "output_dir", "overwrite", "seed", "save_strategy",
                               "save_steps", "save_total_limit", *RECIPE}

    output: str = option("runs/loop", "output folder: round-0 (the starting model's evaluation), round-1 ...")
    overwrite: bool = option(False, "move aside an output folder holding other files or a loop of other settings")
    recipe: str = option("d2o", "training recipe whose settings D2O trains with (a packaged name or a YAML file)")
    model: str | None = option(None, "starting model (default: the recipe's)")
    harmful: list[str] = option(help="harmful prompt pool: catalog names or files", type=_names,
                                factory=lambda: ["harmful-train", "harmful-val"])
    benign: list[str] = option(help="benign prompt pool: catalog names or files", type=_names,
                               factory=lambda: ["benign-instructions"])
    data_dir: str | None = option(None, "data folder (default $NEGALIGN_DATA or ../shared/data)")
    rounds: int = option(3, "rounds of answer, flag, anchor, train, evaluate")
    harmful_prompts: int | None = option(None, "harmful prompts answered per round (default: the whole pool)")
    benign_prompts: int | None = option(192, "benign prompts per round (the demo's 192)")
    fresh_prompts: bool = option(False, "each round takes the next slice of the pools instead of the same prompts")
    steps: int | None = option(None, "training steps per round (default: the recipe's max_steps, 144)")
    batch_size: int | None = option(None, "training batch size (default: the recipe's, 4)")
    learning_rate: float | None = option(None, "default: the recipe's, 2e-5")
    beta: float | None = option(None, "D2O beta (default: the recipe's, 0.1)")
    alpha: float | None = option(None, "D2O alpha (default: the recipe's, 0.1)")
    k: int | None = option(None, "anchors per prompt (default: the recipe's, 2)")
    sampling_context: str | None = option(None, "context the anchors are drawn under (default: the recipe's, "
                                          "refusal; none for no context)")
    sample_max_new_tokens: int | None = option(None, "tokens per anchor (default: the recipe's, 64)")
    answer_max_new_tokens: int = option(64, "tokens per greedy answer the negatives are mined from (the demo's 64)")
    keep_negatives: bool = option(False, "train each round on the earlier rounds' negatives too")
    harmful_negatives: bool = option(True, "flagged harmful answers are negatives (--no-harmful-negatives: their "
                                     "prompts become anchor-only rows and benign refusals the only negatives)")
    benign_refusals: bool = option(True, "benign answers judged refusals are negatives")
    benign_under_context: bool = option(True, "the benign prompts are answered under the sampling context, as the "
                                        "demo mines its benign refusals (--no-benign-under-context: plainly)")
    watch_every: int = option(24, "score the watch slice every N training steps (0: no watch)")
    watch_prompts: int = option(16, "watch slice: prompts of each pool held apart from training")
    watch_max_new_tokens: int = option(32, "tokens per watch answer")
    refusal_budget: float | None = option(None, "stop a round once benign refusal on the watch slice exceeds this")
    eval_prompts: int = option(50, "prompts per evaluation suite (the demo's 50)")
    eval_max_new_tokens: int = option(64, "tokens per evaluation answer (the demo's 64)")
    eval_suites: list[str] | None = option(None, "built-in evaluation suites (default: all)", type=_names)
    ifeval: str = option("subset", "IFEval in every round's evaluation: off, subset or full",
                         choices=["off", "subset", "full"])
    reach: bool = option(True, "evaluate every round on the reach check (negalign.loop.reach)")
    reach_prompts: int = option(50, "prompts per reach suite")
    seed: int = option(0, "seed of sampling, training and evaluation")
    model_options: ModelOptions = option(help="", factory=ModelOptions)
    # the recipe's other settings (max_length, logp_reduction ...), passed to every round's training
    training: dict = field(default_factory=dict, metadata={"cli": False})

    def __post_init__(self):
        from negalign.config import load_config, recipe_path
        from negalign.files import read_yaml
        from negalign.methods import method

        path = recipe_path(self.recipe)
        given = read_yaml(path) or {}
        recipe = load_config(path, {"output_dir": "unused"})
        trained = method(recipe.objective)
        if not trained.anchored or trained.anchors_in_data:  # the loop draws the anchors into a samples file
            raise ValueError(f"recipe {self.recipe}: the loop trains D2O (negatives with self-drawn anchors), the "
                             f"recipe's objective is {recipe.objective}")
        for key, name in self.RECIPE.items():
            if getattr(self, name) is None:
                setattr(self, name, getattr(recipe, key))
        if self.sampling_context == "none":
            self.sampling_context = None
        self.training = {key: getattr(recipe, key) for key in given if key not in self.OWN_KEYS}
        problems = [f"{name} must be >= {low}, got {getattr(self, name)}" for name, low in
                    (("rounds", 1), ("steps", 1), ("batch_size", 1), ("k", 1), ("watch_every", 0), ("watch_prompts", 1),
                     ("eval_prompts", 1), ("reach_prompts", 1), ("harmful_prompts", 1), ("benign_prompts", 0))
                    if getattr(self, name) is not None and getattr(self, name) < low]
        if self.refusal_budget is not None and not 0 <= self.refusal_budget < 1:
            problems.append(f"refusal_budget must be in [0, 1), got {self.refusal_budget}")
        if self.refusal_budget is not None and not self.watch_every:
            problems.append("refusal_budget is checked by the watch: it needs watch_every > 0")
        if not self.harmful_negatives and not self.benign_refusals:
            problems.append("--no-harmful-negatives leaves the benign refusals as the only negatives: it needs "
                            "--benign-refusals")
        if problems:
            raise ValueError("negalign loop: " + "; ".join(problems))

    def data_key(self) -> dict:
        """Every setting a round's files depend on: an output folder made with other values is not continued."""
        from dataclasses import asdict

        return {k: v for k, v in asdict(self).items() if k not in ("output", "overwrite", "rounds")}
