"""Reference log-probs, computed once per (reference model, token sequences) and cached on disk.

The cache key hashes the reference model's weights (every parameter, so two different models or a model
changed in place never share a file) together with every token of every sequence (so tokenizer, chat
template and truncation settings are covered by what they produced). Files hold per-sequence summed
log-probs and completion lengths as safetensors (no pickle) and are written to a temporary name and
renamed, so an interrupted run never leaves a corrupt cache. A second run with the same key performs no
reference forward pass.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from negalign.files import atomic_output
from negalign.locks import output_lock
from negalign.logprobs import Scoring, Sequence, _unwrapped, pack_sequences, sequence_logps, slot_logps
from negalign.models import model_fingerprint

logger = logging.getLogger("negalign")


def sequences_fingerprint(sequences: list[Sequence]) -> str:
    digest = hashlib.sha256()
    for prompt_ids, completion_ids in sequences:
        digest.update(json.dumps([list(prompt_ids), list(completion_ids)]).encode())
    return digest.hexdigest()[:24]


def batches_by_tokens(sequences: list[Sequence], max_tokens: int) -> list[list[int]]:
    """Indices, in order, grouped into packed batches of at most max_tokens. In order, so that the slots of
    one example (which share a prompt) land in the same batch and the prompt is encoded once."""
    batches, current, used = [], [], 0
    for index in range(len(sequences)):
        size = len(sequences[index][0]) + len(sequences[index][1])
        if current and used + size > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(index)
        used += size
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def compute_logps(model, sequences: list[Sequence], max_tokens: int | None = None, scoring: Scoring = Scoring(),
                  description: str = "reference log-probs") -> torch.Tensor:
    """Summed completion log-probs for every sequence, shape [len(sequences)], float32. Batches of at most
    `max_tokens` laid-out tokens (default: 4,096 on a CPU, where larger rows gain nothing, and 32,768 on a GPU,
    which a small batch leaves mostly idle); the results stay on the device until the pass ends (one copy to
    the host, not one per batch)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    max_tokens = max_tokens or (4096 if device.type == "cpu" else 32768)
    pieces, order = [], []
    from negalign.progress import bar

    for indices in bar(batches_by_tokens(sequences, max_tokens), desc=description, unit="batch"):
        batch = pack_sequences([sequences[i] for i in indices], scoring.share_prompts).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=scoring.autocast_bf16):
            pieces.append(sequence_logps(model, batch, "sum", attention=scoring.attention).float())
        order += indices
    out = torch.empty(len(sequences), dtype=torch.float32)
    if pieces:
        out[torch.tensor(order, dtype=torch.long)] = torch.cat(pieces).cpu()
    model.train(was_training)
    return out


def _read_cache(path: Path, n_sequences: int) -> torch.Tensor | None:
    """The cached log-probs, or None (with a warning) for a file that is unreadable or of the wrong shape:
    writes are atomic, so that takes a damaged disk or a copy cut short, and the values are recomputed."""
    try:
        logps = load_file(path)["logps"]
        if logps.shape == (n_sequences,):
            return logps
        problem = f"holds {tuple(logps.shape)} values for {n_sequences} sequences"
    except Exception as error:  # safetensors raises its own error types for a damaged file
        problem = f"cannot be read ({type(error).__name__}: {error})"
    logger.warning("negalign: reference cache %s %s; computing it again", path, problem)
    return None


def cached_reference_logps(model, sequences: list[Sequence], cache_dir: str | os.PathLike, max_tokens: int | None = None,
                           scoring: Scoring = Scoring(), fingerprint: str | None = None) -> tuple[torch.Tensor, bool]:
    """(summed log-probs [S], whether they came from the cache). `fingerprint`: the model's
    `model_fingerprint`, where the caller has it already (hashing every weight takes seconds)."""
    key = f"{fingerprint or model_fingerprint(model)}-{sequences_fingerprint(sequences)}-{'bf16' if scoring.autocast_bf16 else 'fp32'}"
    path = Path(cache_dir) / f"reflogps-{key}.safetensors"
    # one reference pass per cache folder at a time (one lock file for the folder, not one per cache file): a
    # second process wanting the same cache waits for the first and then reads it instead of computing it twice
    with output_lock(Path(cache_dir) / ".reference", "the reference log-prob cache", wait=True):
        return _cached_reference_logps(model, sequences, path, max_tokens, scoring)


def _cached_reference_logps(model, sequences, path: Path, max_tokens, scoring: Scoring):
    if path.exists():
        cached = _read_cache(path, len(sequences))
        if cached is not None:
            return cached, True
    logps = compute_logps(model, sequences, max_tokens, scoring)
    with atomic_output(path) as tmp:
        save_file({"logps": logps}, str(tmp))
    return logps, False


class Reference:
    """What a method's loss compares the policy with, in the mode `config.reference` names:

    - cached: summed log-probs computed once before training and stored on disk (key: weights and tokens),
      then shipped in every batch as `ref_logps`;
    - live: frozen reference models run on every batch;
    - adapter_disabled: the policy itself with its LoRA adapter switched off.

    D2O has two references: pi_r+ (`ref_plus_model`) scores the layout's plus columns (the human negative),
    pi_r- (`ref_model`) every other column; both default to the starting model. Every model it runs sits on
    the training device. Used by the training setup, the Trainer (per batch) and `sampling: refresh`."""

    def __init__(self, config, layout):
        self.config, self.layout = config, layout
        self.scoring = Scoring.of(config)
        self.minus_name = config.ref_model or config.model
        self.plus_name = config.ref_plus_model or self.minus_name
        self.mode = config.reference if layout.method.reference else None
        self.models: dict[str, torch.nn.Module] = {}  # live: "minus" / "plus" -> frozen model
        self._minus_for_refresh = None

    def assignments(self) -> dict[str, list[int]]:
        """Reference model name -> the columns it scores."""
        plus = self.layout.plus if self.plus_name != self.minus_name else []
        out = {self.minus_name: [c for c in range(self.layout.n_columns) if c not in plus]}
        if plus:
            out[self.plus_name] = plus
        return out

    def _load(self, name: str, policy, device):
        """The starting model under `name` (a copy of the untouched policy) or another model, frozen."""
        from negalign.models import load_model

        model = copy.deepcopy(policy) if name == self.config.model else load_model(name, self.config.model_options())
        return model.to(device).eval().requires_grad_(False)

    def prepare(self, items: list[dict], policy, device) -> dict | None:
        """Before training, with the policy still at its starting weights. cached: fill item["ref_logps"]
        ([columns] summed log-probs) from the on-disk cache, computing what is missing (returns what was
        hit or computed per model); live: load the frozen models onto `device`."""
        if self.mode == "live":
            self.models["minus"] = self._load(self.minus_name, policy, device)
            self.models["plus"] = (self.models["minus"] if self.plus_name == self.minus_name
                                   else self._load(self.plus_name, policy, device))
            return None
        if self.mode != "cached":
            return None
        from negalign.models import cache_dir, load_model

        policy.to(device)  # the pass runs where training will
        folder = self.config.cache_dir or str(cache_dir() / "reference")
        table = torch.zeros(len(items), self.layout.n_columns)
        report = {}
        for name, columns in self.assignments().items():
            model = policy if name == self.config.model else load_model(name, self.config.model_options()).to(device)
            sequences = [item["sequences"][c] for item in items for c in columns]
            known = getattr(self.config, "_inputs", {}).get("model") if model is policy else None  # pipeline's
            logps, hit = cached_reference_logps(model, sequences, folder, scoring=self.scoring, fingerprint=known)
            table[:, columns] = logps.view(len(items), len(columns))
            report[name] = "cache hit" if hit else "computed and cached"
            del model
        for item, row in zip(items, table.tolist()):
            item["ref_logps"] = row
        return report

    def keep_starting_model(self, policy, device) -> None:
        """The retain KL's reference, kept before training changes the policy: the starting model, frozen on
        `device`. Under LoRA the policy with its adapter off is the starting model, so nothing is copied; a live
        pi_r- that is the starting model is shared rather than copied a second time."""
        if self.config.use_lora:
            return
        live = self.models.get("minus")
        self.models["start"] = (live if live is not None and self.minus_name == self.config.model
                                else self._load(self.config.model, policy, device))

    @torch.no_grad()
    def starting_token_log_softmax(self, policy, batch) -> torch.Tensor:
        """Token log-softmax of the starting model over a packed batch (the retain KL's reference side)."""
        from negalign.logprobs import token_log_softmax

        if "start" in self.models:
            return token_log_softmax(self.models["start"], batch, attention=self.scoring.attention)
        if not hasattr(_unwrapped(policy), "disable_adapter"):
            raise ValueError("retain_loss kl without LoRA needs the starting model: call "
                             "Reference.keep_starting_model(policy, device) before training changes the policy")
        with _unwrapped(policy).disable_adapter():  # LoRA: the policy with its adapter off
            return token_log_softmax(policy, batch, attention=self.scoring.attention)

    @torch.no_grad()
    def batch_logps(self, policy, inputs: dict, autocast=contextlib.nullcontext) -> torch.Tensor | None:
        """Summed reference log-probs [B, columns] for one collated batch, scored as the policy is
        (logprobs.slot_logps, under the training step's `autocast`)."""
        score = lambda model, batch: slot_logps(model, batch, self.layout, self.scoring, autocast=autocast)[0]  # noqa: E731
        if self.mode is None:
            return None
        if "ref_logps" in inputs:
            return inputs["ref_logps"].view(-1, self.layout.n_columns)
        if self.mode == "adapter_disabled":
            with _unwrapped(policy).disable_adapter():
                return score(policy, inputs)
        if self.mode != "live":
            raise ValueError("reference: cached log-probs missing from the batch (Reference.prepare not run)")
        out = score(self.models["minus"], inputs)
        if self.models["plus"] is not self.models["minus"] and self.layout.plus:
            out[:, self.layout.plus] = score(self.models["plus"], inputs)[:, self.layout.plus]
        return out

    def score_minus(self, sequences: list[Sequence], policy) -> torch.Tensor:
        """pi_r-'s summed log-probs of new sequences (refreshed D2O anchors), cached like the rest. Under LoRA
        with pi_r- the starting model, that is the policy with its adapter off; otherwise pi_r- is loaded once
        (full fine-tuning has changed the policy's own weights)."""
        from negalign.models import cache_dir, load_model

        folder = self.config.cache_dir or str(cache_dir() / "reference")
        device = next(policy.parameters()).device
        if self.config.use_lora and self.minus_name == self.config.model:
            model, scope = policy, _unwrapped(policy).disable_adapter
        else:
            if self._minus_for_refresh is None:
                self._minus_for_refresh = load_model(self.minus_name, self.config.model_options()).to(device).eval()
            model, scope = self._minus_for_refresh, contextlib.nullcontext
        with scope():
            logps, _ = cached_reference_logps(model, sequences, folder, scoring=self.scoring)
        return logps
