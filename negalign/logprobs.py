"""Per-sequence completion log-probs, padding-free, with the LM head applied only where it is needed.

A batch of (prompt_ids, completion_ids) sequences is packed into rows of bounded length with position ids
that restart at every sequence; transformers turns restarting position ids (and no attention mask) into a
block-diagonal causal mask, so sequences never see each other and almost no padding passes through the
model (only the tail that evens out the rows, as a separate dummy block). The decoder's hidden states are then gathered
at the positions that predict completion tokens, and only those go through the LM head, in chunks, so the
vocabulary-sized log-softmax never covers prompt tokens and peak memory does not scale with
vocabulary x full length.

`logp(y|x)` is the sum over completion tokens (METHODS.md); "mean" divides by the completion length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Sequence = tuple[list[int], list[int]]  # (prompt_ids, completion_ids)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [R, L]: R packed rows
    position_ids: torch.Tensor  # [R, L]
    target_positions: torch.Tensor  # [M] flat (row * L + column) positions whose logits score a completion token
    target_ids: torch.Tensor  # [M]
    target_sequence: torch.Tensor  # [M] which sequence each target belongs to
    completion_lengths: torch.Tensor  # [S]

    @property
    def n_sequences(self) -> int:
        return int(self.completion_lengths.numel())

    def to(self, device) -> "PackedBatch":
        return PackedBatch(*(t.to(device) for t in (
            self.input_ids, self.position_ids, self.target_positions, self.target_ids,
            self.target_sequence, self.completion_lengths)))


def _bin_rows(lengths: list[int], row_tokens: int | None) -> list[list[int]]:
    """First-fit-decreasing bins of sequence indices, each at most row_tokens long (or one long sequence).
    Bounded rows matter on CPU: SDPA's masked path costs rows x length^2, so one 4k-token row spends most
    of its attention on blocks that the block-diagonal mask throws away."""
    if row_tokens is None:
        return [list(range(len(lengths)))]
    bins, room = [], []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[index] <= free:
                bins[b].append(index)
                room[b] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(row_tokens - lengths[index])
    return [sorted(b) for b in bins]


def pack_sequences(sequences: list[Sequence], row_tokens: int | None = None) -> PackedBatch:
    """Pack sequences padding-free into rows of at most row_tokens (None: a single row). Rows shorter than
    the longest are filled with a dummy block whose positions restart at 0, so it attends only to itself
    and its outputs are never read."""
    lengths = []
    for index, (prompt_ids, completion_ids) in enumerate(sequences):
        if not prompt_ids or not completion_ids:
            raise ValueError(f"sequence {index}: prompt and completion must both have at least one token")
        lengths.append(len(prompt_ids) + len(completion_ids))
    rows = _bin_rows(lengths, row_tokens)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    position_ids = torch.zeros(len(rows), width, dtype=torch.long)
    where = {}  # sequence index -> flat offset of its first token
    for r, row in enumerate(rows):
        offset = 0
        for index in row:
            prompt_ids, completion_ids = sequences[index]
            input_ids[r, offset:offset + lengths[index]] = torch.tensor(list(prompt_ids) + list(completion_ids))
            position_ids[r, offset:offset + lengths[index]] = torch.arange(lengths[index])
            where[index] = r * width + offset
            offset += lengths[index]
        position_ids[r, offset:] = torch.arange(width - offset)  # the dummy block
    target_positions, target_ids, target_sequence = [], [], []
    for index, (prompt_ids, completion_ids) in enumerate(sequences):
        # the logits at position p predict token p+1: completion token j sits at len(prompt)+j
        first = where[index] + len(prompt_ids) - 1
        target_positions.extend(range(first, first + len(completion_ids)))
        target_ids.extend(completion_ids)
        target_sequence.extend([index] * len(completion_ids))
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return PackedBatch(input_ids, position_ids, as_long(target_positions), as_long(target_ids),
                       as_long(target_sequence), as_long([len(c) for _, c in sequences]))


def _decoder_and_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _unwrapped(model):
    """The model inside a distributed wrapper (DDP, FSDP, DeepSpeed keep it in `.module`)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def token_logps(model, batch: PackedBatch, chunk_size: int = 512) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every completion token in the batch, shape [M], in float32.

    A distributed wrapper does its work in its own forward: DDP arms the gradient all-reduce there (without
    it every process silently trains on its own shard), FSDP gathers the sharded weights. So a wrapped model
    runs this whole computation as the forward of the model it wraps."""
    inner = _unwrapped(model)
    if inner is model:
        return _token_logps(model, batch, chunk_size)
    saved = inner.__dict__.get("forward")  # accelerate may have replaced forward (mixed precision)
    inner.forward = lambda: _token_logps(inner, batch, chunk_size)
    try:
        return model()
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


def _token_logps(model, batch: PackedBatch, chunk_size: int) -> torch.Tensor:
    decoder, head = _decoder_and_head(model)
    hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[batch.target_positions]  # [M, H]: prompt positions never reach the LM head
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        logits = head(hidden[start:start + chunk_size]).float()
        targets = batch.target_ids[start:start + chunk_size]
        # log_softmax gathered at the target == logit - logsumexp, without materialising the softmax twice
        pieces.append(logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1))
    return torch.cat(pieces)


def reduce_token_logps(token_lp: torch.Tensor, batch: PackedBatch, reduction: str = "sum") -> torch.Tensor:
    sums = torch.zeros(batch.n_sequences, dtype=token_lp.dtype, device=token_lp.device)
    sums = sums.index_add(0, batch.target_sequence, token_lp)
    if reduction == "sum":
        return sums
    if reduction == "mean":
        return sums / batch.completion_lengths.to(sums.dtype)
    raise ValueError(f"logp_reduction must be 'sum' or 'mean', got {reduction!r}")


def sequence_logps(model, batch: PackedBatch, reduction: str = "sum", chunk_size: int = 512) -> torch.Tensor:
    """Per-sequence completion log-prob, shape [S]."""
    return reduce_token_logps(token_logps(model, batch, chunk_size), batch, reduction)


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
