"""Settings that several layers read: the sampling settings a training recipe shares with `negalign sample`
and evaluation. A plain dataclass with its checks, below everything that samples, so that the config can take
its defaults without importing the sampler.

Also the one check of numbers (`number_problems`) that the training config, `negalign sample` and `negalign eval`
use before any data is read or model loaded: a plain `value <= 0` test lets NaN through (every comparison with
NaN is False), and Python slicing reads a negative count as "all but the last", so both are refused here."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from negalign.sampling_context import context_hash

# Upper bounds on sizes that become allocations: `--k 1000000` asked for 8.6 GB before anything said no. Far above
# any real run (the recipes use k 2, batch 32), low enough that a typo stops in one line instead of a traceback.
MAX_K = 1024
MAX_BATCH_SIZE = 4096
MAX_ROWS_DECODED = 8192  # batch_size x k: the rows one decoding batch holds in its KV cache
MAX_NEW_TOKENS = 32768


@dataclass(frozen=True)
class Bound:
    """Where a number may lie: `low` and `high` inclusive (None: unbounded), `low` exclusive with `above`."""

    low: float | None = None
    high: float | None = None
    above: bool = False

    def violated_by(self, value) -> str | None:
        """What the value must be, when it is not (">= 1", "in (0, 1]", "<= 1024")."""
        too_low = self.low is not None and (value <= self.low if self.above else value < self.low)
        too_high = self.high is not None and value > self.high
        if not (too_low or too_high):
            return None
        if self.above and self.high is not None:
            return f"in ({self.low:g}, {self.high:g}]"
        if too_low:
            return f"{'>' if self.above else '>='} {self.low:g}"
        return f"<= {self.high:g}"


AT_LEAST_1 = Bound(1)  # counts: None means "all", 0 and negatives are refused (a slice [:-1] is "all but one")
POSITIVE = Bound(0, above=True)
NON_NEGATIVE = Bound(0)
FINITE = Bound()


def number_problem(name: str, value, bound: Bound = FINITE) -> str | None:
    """One line naming the option when `value` is not a finite number within `bound` (None is absent: fine)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{name}: must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{name}: must be a finite number, got {value}"
    wanted = bound.violated_by(value)
    return f"{name}: must be {wanted}, got {value}" if wanted else None


def number_problems(values, bounds: dict[str, Bound], prefix: str = "") -> list[str]:
    """number_problem for each `bounds` entry, read from `values` (an object's attributes, or a dict);
    `prefix` names the options as the user spells them (`sample_` for the training config's copies)."""
    get = values.get if isinstance(values, dict) else lambda name: getattr(values, name)
    return [problem for name, bound in bounds.items() if (problem := number_problem(prefix + name, get(name), bound))]


# the sampling settings' ranges, also checked on the training config's sample_* copies
SAMPLING_BOUNDS = {"k": Bound(1, MAX_K), "max_new_tokens": Bound(1, MAX_NEW_TOKENS),
                   "batch_size": Bound(1, MAX_BATCH_SIZE), "max_prompt_length": AT_LEAST_1,
                   "temperature": NON_NEGATIVE, "top_p": Bound(0, 1, above=True), "seed": FINITE}


def rows_problem(batch_size, k, names: str = "batch_size x k") -> str | None:
    """The rows decoded together must fit a sane KV cache (checked once both numbers are valid)."""
    if isinstance(batch_size, int) and isinstance(k, int) and batch_size * k > MAX_ROWS_DECODED:
        return (f"{names}: {batch_size} x {k} = {batch_size * k} rows decoded together, at most "
                f"{MAX_ROWS_DECODED}; lower the batch size")
    return None


def context_length(model) -> int | None:
    """The positions a model (or its config) can attend over, None where its config does not say."""
    config = getattr(model, "config", model)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(value := getattr(config, name, None), int) and value > 0:
            return value
    return None


def check_prompts_fit(model, prompt_lengths: list[int], max_new_tokens: int, describe) -> None:
    """The longest prompt (already cut to max_prompt_length) and its answer must fit the model's positions: a
    GPT-2 of 64 positions given a 256-token prompt failed with an IndexError after the load. `describe(i)`
    names prompt i for the message."""
    limit = context_length(model)
    if not limit or not prompt_lengths:
        return
    longest = max(range(len(prompt_lengths)), key=prompt_lengths.__getitem__)
    if (need := prompt_lengths[longest] + max_new_tokens) > limit:
        raise ValueError(f"{describe(longest)}: {prompt_lengths[longest]} prompt tokens (prompts keep their last "
                         f"max_prompt_length tokens) + max_new_tokens {max_new_tokens} = {need}, more than the "
                         f"model's {limit} positions; lower max_prompt_length or max_new_tokens")


# a conversation every chat template must render (no system turn: some templates refuse one by design)
@dataclass
class SamplingSettings:
    k: int = 4
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: int = 256
    # chat messages placed before each prompt only while sampling (negalign.sampling_context); never trained on
    context: list[dict] | None = None

    def __post_init__(self):
        """Checked before any data is read or model loaded: one line naming the option (issue 33, finding 6:
        a negative temperature sampled the inverted distribution, max_new_tokens -5 crashed after the load)."""
        problems = number_problems(self, SAMPLING_BOUNDS)
        if not problems and (rows := rows_problem(self.batch_size, self.k)):
            problems.append(rows)
        if problems:
            raise ValueError("sampling settings: " + "; ".join(problems))

    def generation_key(self) -> dict:
        """Settings that change what is generated (batch_size does too when sampling: it changes the random
        draws; greedy answers do not depend on it, so a greedy file resumes under any batch size); the context
        by its hash (the meta records its messages apart)."""
        key = {**asdict(self), "context": context_hash(self.context)}
        if self.temperature == 0:
            del key["batch_size"]
        return key
