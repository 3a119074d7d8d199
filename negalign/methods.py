"""The table of training methods: every objective is declared here once.

A `Method` says which pure loss function it uses (negalign.objectives), which completion *slots* one example
holds (by name: they are also the example's keys, see data/examples.py), which feedback rows it trains on,
which slots are scored without gradients, whether it needs a reference model and which slots the second
reference (D2O's pi_r+) scores, and how the loss function's arguments come out of the named slots. The
dataset, the trainer, the reference pass, the config checks and the demo read `METHODS`; adding a method is
one entry here plus its loss function in objectives/ (docs/methods.md, "Adding a method").

A batch of B examples gives [B, columns] matrices of policy and reference log-probs, one column per slot,
the slot "samples" standing for K columns (D2O's self-generated anchors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from torch import Tensor

from negalign import objectives

SAMPLES = "samples"  # the one slot that stands for K columns


class DataShape(str, Enum):
    """Which feedback rows become a method's examples (data/examples.py)."""

    NEGATIVES_WITH_SAMPLES = "negatives+samples"  # human negatives with their prompt's self-samples (`samples` file)
    SAMPLES = "samples"  # the self-samples alone, read from `data` (an anchors file)
    PAIRS = "pairs"  # chosen and rejected of one prompt
    NEGATIVES = "negatives"  # rows with label false
    POSITIVES = "positives"  # rows with label true
    LABELS = "labels"  # every labelled row
    LABELS_OR_SCORES = "labels or scores"  # every row with a label or a score


@dataclass(frozen=True)
class Method:
    name: str
    loss: Callable[..., tuple[Tensor, dict]]
    slots: tuple[str, ...]
    trains_on: DataShape  # which rows become examples
    arguments: Callable[[Columns, dict, Any], dict]  # (columns, batch, config) -> keyword arguments of `loss`
    reference: bool = True  # needs reference log-probs
    detached: tuple[str, ...] = ()  # scored in a separate no-grad forward (their value enters the loss detached)
    plus_reference: tuple[str, ...] = ()  # scored by pi_r+ (`ref_plus_model`) instead of pi_r-
    token_level: bool = False  # the loss reads per-token log-probs, not per-sequence sums
    hyperparameters: tuple[str, ...] = ("beta",)  # config fields the loss reads that must be > 0
    demo: dict = field(default_factory=dict)  # the settings `negalign demo` trains it with (the rest is shared)

    @property
    def reads_samples_file(self) -> bool:
        """Its anchors come from a separate `samples` file beside the negatives in `data` (D2O): so it can
        refresh them while training, add benign prompts with anchors only, and run the k = 0 ablation."""
        return self.trains_on is DataShape.NEGATIVES_WITH_SAMPLES

    @property
    def anchors_in_data(self) -> bool:
        """Its rows are the anchors themselves, read from `data` (context distillation)."""
        return self.trains_on is DataShape.SAMPLES

    @property
    def needs_mismatched(self) -> bool:
        """Each example carries another prompt's answer (KTO's z0), fixed once at preparation."""
        return "mismatched" in self.slots

    def check(self, config) -> list[str]:
        """The problems of `config` for this method (one line each)."""
        problems = [f"{name}: must be > 0, got {getattr(config, name)}" for name in self.hyperparameters
                    if getattr(config, name) <= 0]
        if config.sampling == "refresh" and (not self.reads_samples_file or not config.k):
            problems.append("sampling: 'refresh' needs objective d2o and k >= 1")
        if config.benign_samples and (not self.reads_samples_file or config.sampling == "refresh"):
            problems.append("benign_samples: needs objective d2o with sampling: static")
        return problems

    @property
    def anchored(self) -> bool:
        """Trains with self-generated anchors (the `samples` file, K, sampling contexts, refresh)."""
        return SAMPLES in self.slots

    def layout(self, n_columns: int) -> Layout:
        return Layout(self, n_columns)


@dataclass(frozen=True)
class Layout:
    """The columns of one run's [B, columns] matrices: `method.slots` with "samples" spread over K columns."""

    method: Method
    n_columns: int

    @property
    def k(self) -> int:
        return self.n_columns - len(self.method.slots) + 1 if SAMPLES in self.method.slots else 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for slot in self.method.slots for n in ([slot] * self.k if slot == SAMPLES else [slot]))

    def columns(self, slot: str) -> list[int]:
        found = [i for i, name in enumerate(self.names) if name == slot]
        if not found and slot not in self.method.slots:
            raise KeyError(f"{self.method.name} has no slot {slot!r} (slots: {', '.join(self.method.slots)})")
        return found

    def columns_of(self, slots: tuple[str, ...]) -> list[int]:
        return sorted(i for slot in slots for i in self.columns(slot))

    @property
    def detached(self) -> list[int]:
        return self.columns_of(self.method.detached)

    @property
    def kept(self) -> list[int]:
        return [i for i in range(self.n_columns) if i not in self.detached]

    @property
    def plus(self) -> list[int]:
        return self.columns_of(self.method.plus_reference)


class Columns:
    """One batch's [B, columns] log-prob matrices, read by slot name: `policy("chosen")` is [B],
    `policy("samples")` [B, K]. `summed` and `lengths` are the summed log-probs and completion lengths
    whatever `logp_reduction` is; `tokens` holds (token log-probs [N, T], completion mask) for token-level
    losses."""

    def __init__(self, layout: Layout, policy: Tensor, ref: Tensor | None, summed: Tensor, lengths: Tensor,
                 tokens: tuple[Tensor, Tensor] | None = None):
        self.layout, self._policy, self._ref, self._summed, self._lengths = layout, policy, ref, summed, lengths
        self.tokens = tokens

    def _pick(self, matrix: Tensor | None, slot: str) -> Tensor:
        if matrix is None:
            raise ValueError(f"{self.layout.method.name}: no reference log-probs for slot {slot!r}")
        index = self.layout.columns(slot)
        return matrix[:, index] if slot == SAMPLES else matrix[:, index[0]]

    def policy(self, slot: str) -> Tensor:
        return self._pick(self._policy, slot)

    def ref(self, slot: str) -> Tensor:
        return self._pick(self._ref, slot)

    def summed(self, slot: str) -> Tensor:
        return self._pick(self._summed, slot)

    def lengths(self, slot: str) -> Tensor:
        return self._pick(self._lengths, slot)


def _feedback(batch: dict) -> dict:
    """Point-wise feedback of a batch: continuous scores where the rows have them, binary labels otherwise."""
    return {"scores": batch["scores"]} if "scores" in batch else {"labels": batch["labels_binary"]}


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("d2o", objectives.d2o, ("negative", SAMPLES), DataShape.NEGATIVES_WITH_SAMPLES,
           demo={"beta": 0.1, "alpha": 0.1}, hyperparameters=("beta", "alpha"),
           plus_reference=("negative",),
           arguments=lambda c, batch, cfg: dict(
               policy_negative_logps=c.policy("negative"), ref_negative_logps=c.ref("negative"),
               policy_sample_logps=c.policy(SAMPLES), ref_sample_logps=c.ref(SAMPLES), beta=cfg.beta,
               alpha=cfg.alpha, instance_level=cfg.instance_level, has_negative=batch.get("has_negative"))),
    Method("dpo", objectives.dpo, ("chosen", "rejected"), DataShape.PAIRS, demo={"beta": 0.1},
           arguments=lambda c, batch, cfg: dict(
               policy_chosen_logps=c.policy("chosen"), policy_rejected_logps=c.policy("rejected"),
               ref_chosen_logps=c.ref("chosen"), ref_rejected_logps=c.ref("rejected"), beta=cfg.beta)),
    Method("ipo", objectives.ipo, ("chosen", "rejected"), DataShape.PAIRS, demo={"beta": 0.1, "logp_reduction": "mean"},
           arguments=lambda c, batch, cfg: dict(
               policy_chosen_logps=c.policy("chosen"), policy_rejected_logps=c.policy("rejected"),
               ref_chosen_logps=c.ref("chosen"), ref_rejected_logps=c.ref("rejected"), beta=cfg.beta)),
    Method("npo", objectives.npo, ("completion",), DataShape.NEGATIVES, demo={"beta": 0.1},
           arguments=lambda c, batch, cfg: dict(policy_negative_logps=c.policy("completion"),
                                                ref_negative_logps=c.ref("completion"), beta=cfg.beta)),
    # SimNPO normalises by length itself, so it always takes the summed log-prob
    Method("simnpo", objectives.simnpo, ("completion",), DataShape.NEGATIVES, reference=False, demo={"beta": 2.5},
           arguments=lambda c, batch, cfg: dict(policy_negative_logps=c.summed("completion"),
                                                negative_lengths=c.lengths("completion"), beta=cfg.beta,
                                                gamma=cfg.gamma)),
    Method("kto", objectives.kto, ("completion", "mismatched"), DataShape.LABELS, detached=("mismatched",),
           demo={"beta": 0.1},
           arguments=lambda c, batch, cfg: dict(
               policy_logps=c.policy("completion"), ref_logps=c.ref("completion"), labels=batch["labels_binary"],
               policy_mismatched_logps=c.policy("mismatched"), ref_mismatched_logps=c.ref("mismatched"),
               beta=cfg.beta, desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)),
    Method("pointwise_dpo", objectives.pointwise_dpo, ("completion",), DataShape.LABELS_OR_SCORES,
           demo={"beta": 0.1, "logp_reduction": "mean"},
           arguments=lambda c, batch, cfg: dict(policy_logps=c.policy("completion"), ref_logps=c.ref("completion"),
                                                beta=cfg.beta, c=cfg.c, **_feedback(batch))),
    Method("ulma", objectives.ulma, ("completion",), DataShape.LABELS_OR_SCORES, demo={"beta": 0.1, "logp_reduction": "mean"},
           arguments=lambda c, batch, cfg: dict(policy_logps=c.policy("completion"), ref_logps=c.ref("completion"),
                                                beta=cfg.beta, c=cfg.c, **_feedback(batch))),
    Method("gradient_ascent", objectives.gradient_ascent, ("completion",), DataShape.NEGATIVES, reference=False,
           hyperparameters=(), arguments=lambda c, batch, cfg: dict(policy_negative_logps=c.policy("completion"))),
    Method("unlikelihood", objectives.unlikelihood, ("completion",), DataShape.NEGATIVES, reference=False,
           hyperparameters=(), token_level=True, arguments=lambda c, batch, cfg: dict(zip(("policy_token_logps", "completion_mask"),
                                                                      c.tokens))),
    Method("sft", objectives.sft, ("completion",), DataShape.POSITIVES, reference=False, hyperparameters=(),
           arguments=lambda c, batch, cfg: dict(policy_logps=c.policy("completion"))),
    # SFT on D2O's anchors and nothing else: one example per prompt of an anchors file (`data`), its K samples
    Method("context_distillation", objectives.context_distillation, (SAMPLES,), DataShape.SAMPLES, reference=False,
           hyperparameters=(),
           arguments=lambda c, batch, cfg: dict(policy_sample_logps=c.policy(SAMPLES))),
]}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def method_loss(columns: Columns, batch: dict, config) -> tuple[Tensor, dict]:
    """The loss of the method the columns belong to, from its named slots."""
    m = columns.layout.method
    return m.loss(**m.arguments(columns, batch, config))


def example_slots(method: Method, example: dict) -> list[str]:
    """The completion texts of one example in column order ("samples" spread out)."""
    return [text for slot in method.slots
            for text in (example[slot] if slot == SAMPLES else [example[slot]])]


__all__ = ["METHODS", "SAMPLES", "Columns", "DataShape", "Layout", "Method", "example_slots", "method", "method_loss"]
