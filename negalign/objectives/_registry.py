"""The table of training methods, filled as the objective modules are imported: each module declares its
methods next to their loss functions with `register(Method(...))`.

A `Method` says which pure loss function it uses, which completion *slots* one example holds (by name: they
are also the example's keys, see data/examples.py), which feedback rows it trains on, which slots are scored
without gradients, whether it needs a reference model and which slots the second reference (D2O's pi_r+)
scores, which hyperparameters it reads, and how the loss function's arguments come out of the named slots.
The dataset, the trainer, the reference pass, the config checks and the demo read `METHODS` (through
negalign.methods, which imports every objective module first).

A batch of B examples gives [B, columns] matrices of policy and reference log-probs, one column per slot,
the slot "samples" standing for K columns (D2O's self-generated anchors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from torch import Tensor

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
class Hyperparameter:
    """A setting of one method alone, declared by its Method: a recipe gives it under `loss:` (`loss:
    {gamma_beta_ratio: 0.5}`; on the command line `loss.gamma_beta_ratio=0.5`), so no config field is added
    for it. The settings several methods share (beta, alpha, gamma, c, ...) stay top-level config fields."""

    name: str
    default: float
    help: str
    minimum: float | None = 0.0  # the smallest value allowed (None: any finite number)
    strict: bool = False  # the minimum itself is refused (> instead of >=)

    def problem(self, value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"loss.{self.name}: must be a finite number, got {value!r}"
        if self.minimum is not None and (value < self.minimum or (self.strict and value == self.minimum)):
            return f"loss.{self.name}: must be {'>' if self.strict else '>='} {self.minimum:g}, got {value!r}"
        return None


@dataclass(frozen=True)
class Method:
    name: str
    loss: Callable[..., tuple[Tensor, dict]]
    slots: tuple[str, ...]
    trains_on: DataShape  # which rows become examples
    # (columns, batch, settings) -> keyword arguments of `loss`; settings: the config's fields and the method's own
    # hyperparameters by name (`settings.beta`, `settings.gamma_beta_ratio`)
    arguments: Callable[[Columns, dict, Any], dict]
    reference: bool = True  # needs reference log-probs
    detached: tuple[str, ...] = ()  # scored in a separate no-grad forward (their value enters the loss detached)
    plus_reference: tuple[str, ...] = ()  # scored by pi_r+ (`ref_plus_model`) instead of pi_r-
    token_level: bool = False  # the loss reads per-token log-probs, not per-sequence sums
    hyperparameters: tuple[str, ...] = ("beta",)  # shared config fields the loss reads that must be > 0
    own: tuple[Hyperparameter, ...] = ()  # its own hyperparameters, given under `loss:`
    # (a log line's metric means, the run's anchors record or None) -> the metrics the line shows: a method whose
    # metrics mean something only under some conditions drops the others here (D2O's kl_on_samples)
    log_metrics: Callable[[dict, dict | None], dict] | None = None
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

    def own_values(self, given: dict | None) -> dict:
        """Its own hyperparameters: the declared defaults, updated by what `loss:` gives."""
        return {**{h.name: h.default for h in self.own}, **(given or {})}

    def check(self, config) -> list[str]:
        """The problems of `config` for this method (one line each)."""
        problems = [f"{name}: must be > 0, got {getattr(config, name)}" for name in self.hyperparameters
                    if getattr(config, name) <= 0]
        given, declared = getattr(config, "loss", None) or {}, {h.name: h for h in self.own}
        if not isinstance(given, dict):
            problems.append(f"loss: must be a mapping of {self.name}'s own hyperparameters, got {given!r}")
            given = {}
        unknown = sorted(str(key) for key in given if key not in declared)
        if unknown:
            problems.append(f"loss: {self.name} has no hyperparameter {', '.join(unknown)} (its own: "
                            f"{', '.join(declared) or 'none'}; shared ones such as beta are top-level options)")
        problems += [p for key, value in given.items() if key in declared
                     if (p := declared[key].problem(value))]
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


class Settings:
    """What `Method.arguments` reads: the method's own hyperparameters by name, else the config's fields."""

    def __init__(self, config, own: dict):
        self._config, self._own = config, own

    def __getattr__(self, name: str):
        own = self.__dict__.get("_own", {})
        return own[name] if name in own else getattr(self.__dict__["_config"], name)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the table (its objective module does, at import); another loss under a name already taken
    is refused (the same loss again, as a module reloaded, replaces its entry)."""
    old = METHODS.get(method.name)
    if old is not None and _where(old.loss) != _where(method.loss):
        raise ValueError(f"a method named {method.name!r} is already registered ({_where(old.loss)})")
    METHODS[method.name] = method
    return method


def _where(function) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', function)}"


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
