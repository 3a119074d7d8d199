"""Reference log-probs, computed once per (reference model, token sequences) and cached on disk.

The cache key hashes the reference model's weights (every parameter, so two different models or a model
changed in place never share a file) together with every token of every sequence (so tokenizer, chat
template and truncation settings are covered by what they produced). Files hold per-sequence summed
log-probs and completion lengths as safetensors (no pickle) and are written to a temporary name and
renamed, so an interrupted run never leaves a corrupt cache. A second run with the same key performs no
reference forward pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from negalign.locks import output_lock
from negalign.logprobs import Sequence, pack_sequences, sequence_logps

logger = logging.getLogger("negalign")


def model_fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


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
def compute_logps(model, sequences: list[Sequence], max_tokens: int = 4096, autocast_bf16: bool = False,
                  description: str = "reference log-probs", share_prompts: bool = True) -> torch.Tensor:
    """Summed completion log-probs for every sequence, shape [len(sequences)], float32."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(sequences), dtype=torch.float32)
    device = next(model.parameters()).device
    for indices in tqdm(batches_by_tokens(sequences, max_tokens), desc=description, unit="batch"):
        batch = pack_sequences([sequences[i] for i in indices], share_prompts).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            out[indices] = sequence_logps(model, batch, "sum").float().cpu()
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


def cached_reference_logps(model, sequences: list[Sequence], cache_dir: str | os.PathLike, max_tokens: int = 4096,
                           autocast_bf16: bool = False, share_prompts: bool = True) -> tuple[torch.Tensor, bool]:
    """(summed log-probs [S], whether they came from the cache)."""
    key = f"{model_fingerprint(model)}-{sequences_fingerprint(sequences)}-{'bf16' if autocast_bf16 else 'fp32'}"
    path = Path(cache_dir) / f"reflogps-{key}.safetensors"
    # one reference pass per cache folder at a time (one lock file for the folder, not one per cache file): a
    # second process wanting the same cache waits for the first and then reads it instead of computing it twice
    with output_lock(Path(cache_dir) / ".reference", "the reference log-prob cache", wait=True):
        return _cached_reference_logps(model, sequences, path, max_tokens, autocast_bf16, share_prompts)


def _cached_reference_logps(model, sequences, path: Path, max_tokens, autocast_bf16, share_prompts):
    if path.exists():
        cached = _read_cache(path, len(sequences))
        if cached is not None:
            return cached, True
    logps = compute_logps(model, sequences, max_tokens, autocast_bf16, share_prompts=share_prompts)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({"logps": logps}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return logps, False
