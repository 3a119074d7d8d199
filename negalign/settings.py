"""Settings that several layers read: the sampling settings a training recipe shares with `negalign sample`
and evaluation. A plain dataclass with its checks, below everything that samples, so that the config can take
its defaults without importing the sampler."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from negalign.sampling_context import context_hash


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
        problems = [f"{name} must be >= {low}, got {getattr(self, name)}" for name, low in
                    (("k", 1), ("max_new_tokens", 1), ("batch_size", 1), ("max_prompt_length", 1), ("temperature", 0))
                    if getattr(self, name) < low]
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
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
