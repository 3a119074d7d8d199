"""Per-sequence completion log-probs, padding-free, with shared prompts encoded once and the LM head applied
only where it is needed.

A batch of (prompt_ids, completion_ids) sequences is laid out in one row with no padding at all. Sequences
that share a prompt (D2O's negative and K self-samples, DPO's chosen and rejected, KTO's completion and
its mismatched partner) are laid out as the prompt once, followed by each completion. A block is a run of
positions that attends causally to itself and, for a completion, to all of its prompt; negalign.attention
computes that in the layout that suits the device (block by block on a CPU, one masked call per layer on CUDA).
Position ids restart at 0 for every prompt and continue from the prompt's
length in every completion, so each completion sees exactly what it would see alone: the log-probs equal
the unshared, unpacked computation (tested), and gradients from every completion flow back through the one
shared copy of the prompt.

The decoder's hidden states are then gathered at the positions that predict completion tokens (the last
prompt position predicts the first token of every completion that shares it), and only those go through
the LM head, in chunks, so the vocabulary-sized log-softmax never covers prompt tokens and peak memory does
not scale with vocabulary x full length.

`logp(y|x)` is the sum over completion tokens (docs/methods.md); "mean" divides by the completion length.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from negalign.attention import build_mask, packed_attention_scope, resolve_layout

Sequence = tuple[list[int], list[int]]  # (prompt_ids, completion_ids)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, T]: every sequence of the batch in one row, no padding
    position_ids: torch.Tensor  # [1, T]
    blocks: torch.Tensor  # [N, 4]: (start, length, prefix_start, prefix_length); prefix = the shared prompt
    target_positions: torch.Tensor  # [M] positions whose hidden state predicts a completion token
    target_ids: torch.Tensor  # [M]
    target_sequence: torch.Tensor  # [M] which sequence each target belongs to
    completion_lengths: torch.Tensor  # [S]

    @property
    def n_sequences(self) -> int:
        return int(self.completion_lengths.numel())

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in (
            self.input_ids, self.position_ids, self.blocks, self.target_positions, self.target_ids,
            self.target_sequence, self.completion_lengths)))


PACKED_FIELDS = tuple(f.name for f in fields(PackedBatch))  # a collated batch's keys (negalign.batches.collate)


def packed_from(inputs: dict, prefix: str = "") -> PackedBatch:
    """The packed batch a collator put in `inputs` under its field names (after `prefix`: "detached_" for the
    columns scored without gradients)."""
    return PackedBatch(*(inputs[prefix + name] for name in PACKED_FIELDS))


@dataclass(frozen=True)
class Scoring:
    """How a run scores sequences, the same in the training step, the reference pass, the retain term and a
    sample refresh: the packed row's attention layout (negalign.attention), whether completions that share a
    prompt share its one encoding, and bf16 autocast (which also keys the reference cache). Built once from a
    config (`Scoring.of`), so the three travel together."""

    attention: str = "auto"
    share_prompts: bool = True
    autocast_bf16: bool = False

    @classmethod
    def of(cls, config) -> "Scoring":
        return cls(config.packed_attention, config.share_prompts, config.bf16)


def pack_sequences(sequences: list[Sequence], share_prompts: bool = True) -> PackedBatch:
    """Lay sequences out in one row. With share_prompts, sequences with identical prompt ids become
    [prompt, completion 1, completion 2, ...]: the prompt is encoded once for all of them."""
    groups: dict[tuple, list[int]] = {}
    for index, (prompt_ids, completion_ids) in enumerate(sequences):
        if not prompt_ids or not completion_ids:
            raise ValueError(f"sequence {index}: prompt and completion must both have at least one token")
        key = tuple(prompt_ids) if share_prompts else index
        groups.setdefault(key, []).append(index)
    tokens, positions, blocks = [], [], []
    targets: dict[int, list[int]] = {}  # sequence index -> positions predicting its completion tokens
    for members in groups.values():
        prompt_ids = list(sequences[members[0]][0])
        prompt_start, p = len(tokens), len(prompt_ids)
        if len(members) == 1:  # nothing to share: one causal block
            completion_ids = list(sequences[members[0]][1])
            tokens += prompt_ids + completion_ids
            positions += range(p + len(completion_ids))
            blocks.append((prompt_start, p + len(completion_ids), 0, 0))
            targets[members[0]] = list(range(prompt_start + p - 1, prompt_start + p - 1 + len(completion_ids)))
            continue
        tokens += prompt_ids
        positions += range(p)
        blocks.append((prompt_start, p, 0, 0))
        for index in members:
            completion_ids, start = list(sequences[index][1]), len(tokens)
            tokens += completion_ids
            positions += range(p, p + len(completion_ids))  # as if it followed the prompt directly
            blocks.append((start, len(completion_ids), prompt_start, p))
            # the last prompt position predicts completion token 0; completion position j predicts token j+1
            targets[index] = [prompt_start + p - 1] + list(range(start, start + len(completion_ids) - 1))
    target_positions, target_ids, target_sequence = [], [], []
    for index, (_, completion_ids) in enumerate(sequences):  # in sequence order (pad_token_logps splits by it)
        target_positions += targets[index]
        target_ids += completion_ids
        target_sequence += [index] * len(completion_ids)
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return PackedBatch(as_long([tokens]), as_long([positions]), as_long(blocks).view(-1, 4),
                       as_long(target_positions), as_long(target_ids), as_long(target_sequence),
                       as_long([len(c) for _, c in sequences]))


def head_logits(head, hidden: torch.Tensor) -> torch.Tensor:
    """An LM head's logits. For a plain Linear head computed as weight @ hidden^T: with few rows against a
    large vocabulary, `F.linear`'s hidden @ weight^T ran at about half the speed on an AVX2 CPU (SmolLM2's
    head, forward and, with the head frozen as under LoRA, backward; docs/benchmarks.md), and no slower
    elsewhere. The same product; any other head runs its own forward."""
    if type(head) is not torch.nn.Linear:
        return head(hidden)
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = torch.mm(head.weight, flat.t()).t()
    if head.bias is not None:
        out = out + head.bias
    return out.reshape(*hidden.shape[:-1], out.shape[-1])


def _decoder_and_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _unwrapped(model):
    """The model inside a distributed wrapper (DDP, FSDP, DeepSpeed keep it in `.module`)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def token_log_softmax(model, batch: PackedBatch, chunk_size: int = 128, attention: str = "auto") -> torch.Tensor:
    """log pi(. | x, y_<t) over the whole vocabulary at every completion position, shape [M, V], float32 (for
    token-level KL; M x V floats, so keep such batches small)."""
    return token_logps(model, batch, chunk_size, full=True, attention=attention)


def token_logps(model, batch: PackedBatch, chunk_size: int = 128, full: bool = False,
                attention: str = "auto") -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every completion token in the batch, shape [M], in float32.

    A distributed wrapper does its work in its own forward: DDP arms the gradient all-reduce there (without
    it every process silently trains on its own shard), FSDP gathers the sharded weights. So a wrapped model
    runs this whole computation as the forward of the model it wraps.

    `attention` picks the packed row's attention layout (negalign.attention: auto, blocks, flex, sdpa)."""
    inner = _unwrapped(model)
    if inner is model:
        return _token_logps(model, batch, chunk_size, full, attention)
    saved = inner.__dict__.get("forward")  # accelerate may have replaced forward (mixed precision)
    # the head is not recomputed under a wrapper: FSDP may have resharded its weight by the backward
    inner.forward = lambda: _token_logps(inner, batch, chunk_size, full, attention, recompute_head=False)
    try:
        return model()
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


def _token_logps(model, batch: PackedBatch, chunk_size: int, full: bool = False, attention: str = "auto",
                 recompute_head: bool | None = None) -> torch.Tensor:
    decoder, head = _decoder_and_head(model)
    device = batch.input_ids.device
    mask = build_mask(resolve_layout(attention, device), batch.blocks, batch.input_ids.shape[1])
    with packed_attention_scope(decoder):
        hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                         negalign_mask=mask).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[batch.target_positions]  # [M, H]: prompt positions never reach the LM head
    if full:
        return torch.cat([head_logits(head, hidden[start:start + chunk_size]).float().log_softmax(-1)
                          for start in range(0, hidden.shape[0], chunk_size)])
    # On a GPU the head's chunks are recomputed in the backward instead of kept: kept, every chunk's float32
    # logits stay alive until the backward (M x V x 4 bytes: 0.8 GB at 4,000 completion tokens and SmolLM2's
    # 49,152 words), for a recompute that costs one more head forward (a few % of a 1.7B model's step). On a
    # CPU memory is not what binds and the recompute would cost time: the logits are kept.
    recompute = (device.type != "cpu") if recompute_head is None else recompute_head
    recompute = recompute and torch.is_grad_enabled() and hidden.requires_grad
    chunk_size = chunk_size if device.type == "cpu" else max(chunk_size, 1024)  # fewer, fuller kernels
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        rows, targets = hidden[start:start + chunk_size], batch.target_ids[start:start + chunk_size]
        if recompute:
            pieces.append(checkpoint(_target_logps, head, rows, targets, use_reentrant=False))
        else:
            pieces.append(_target_logps(head, rows, targets))
    return torch.cat(pieces)


def _target_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # log_softmax at the target, fused (one pass forward and backward over the chunk's logits)
    return -F.cross_entropy(head_logits(head, hidden).float(), targets, reduction="none")


def reduce_token_logps(token_lp: torch.Tensor, batch: PackedBatch, reduction: str = "sum") -> torch.Tensor:
    sums = torch.zeros(batch.n_sequences, dtype=token_lp.dtype, device=token_lp.device)
    sums = sums.index_add(0, batch.target_sequence, token_lp)
    if reduction == "sum":
        return sums
    if reduction == "mean":
        return sums / batch.completion_lengths.to(sums.dtype)
    raise ValueError(f"logp_reduction must be 'sum' or 'mean', got {reduction!r}")


def sequence_logps(model, batch: PackedBatch, reduction: str = "sum", chunk_size: int = 128,
                   attention: str = "auto") -> torch.Tensor:
    """Per-sequence completion log-prob, shape [S]."""
    return reduce_token_logps(token_logps(model, batch, chunk_size, attention=attention), batch, reduction)


def pad_token_logps(token_lp: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs as [S, T_max] plus a bool mask, for token-level objectives (unlikelihood)."""
    lengths = batch.completion_lengths.tolist()
    padded = torch.zeros(len(lengths), max(lengths), dtype=token_lp.dtype, device=token_lp.device)
    mask = torch.zeros_like(padded, dtype=torch.bool)
    for index, piece in enumerate(torch.split(token_lp, lengths)):
        padded[index, : len(piece)] = piece
        mask[index, : len(piece)] = True
    return padded, mask


def naive_sequence_logps(model, sequences: list[Sequence], pad_id: int = 0) -> torch.Tensor:
    """Reference implementation (padded batch, full-vocabulary logits); used to check the fast path."""
    longest = max(len(p) + len(c) for p, c in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for row, (p, c) in enumerate(sequences):
        ids[row, : len(p) + len(c)] = torch.tensor(list(p) + list(c))
        attention[row, : len(p) + len(c)] = 1
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    logps = torch.log_softmax(logits, dim=-1)
    out = []
    for row, (p, c) in enumerate(sequences):
        positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)
        out.append(logps[row, positions, torch.tensor(c)].sum())
    return torch.stack(out)


def slot_logps(model, inputs: dict, layout, scoring: Scoring = Scoring(), with_grad: bool = False,
               autocast=contextlib.nullcontext):
    """One collated batch under `model`: summed completion log-probs and completion lengths, both [B, columns]
    (`layout`: negalign.methods.Layout), plus the token log-probs and packed batch of the columns that carry
    gradients. The layout's detached columns (collated under "detached_" keys) run in a second, no-grad
    forward. `autocast`: the training step's autocast context, so that a live reference runs in the precision
    the cached one was computed in."""
    slots, detached, kept = layout.n_columns, layout.detached, layout.kept
    batch = packed_from(inputs)
    with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()), autocast():
        tokens = token_logps(model, batch, attention=scoring.attention)
    sums = dict(zip(kept, reduce_token_logps(tokens, batch).view(-1, len(kept)).unbind(1)))
    lengths = dict(zip(kept, batch.completion_lengths.view(-1, len(kept)).unbind(1)))
    if detached:
        side = packed_from(inputs, "detached_")
        with torch.no_grad(), autocast():
            side_sums = reduce_token_logps(token_logps(model, side, attention=scoring.attention), side)
        sums.update(zip(detached, side_sums.view(-1, len(detached)).unbind(1)))
        lengths.update(zip(detached, side.completion_lengths.view(-1, len(detached)).unbind(1)))
    as_matrix = lambda columns: torch.stack([columns[s] for s in range(slots)], dim=1)  # noqa: E731
    return as_matrix(sums), as_matrix(lengths).to(torch.float32), tokens, batch
