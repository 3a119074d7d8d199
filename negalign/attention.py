"""Attention over a packed row (negalign.logprobs): each block attends causally to itself and, for a completion,
fully to its shared prompt. Three layouts compute the same thing; which one is fastest depends on the device.

- ``blocks`` (the CPU default): one SDPA call per block, each block's own square only. A packed row under one
  mask costs T^2 attention, nearly all of it masked out (measured: a third of a training step on a 2-core CPU);
  block by block it costs the sum of the blocks' squares. On a GPU the same loop is thousands of tiny kernel
  launches per step (48 blocks x 24 layers, forward and backward), and it reads the block table on the host.
- ``flex`` (the CUDA default): one FlexAttention call per layer with a block mask built once per batch from
  the block table, on the device: tiles that are wholly masked are skipped, so the cost stays near the blocks'
  own squares, without a Python loop or a host sync. Needs `torch.compile` (Triton) to be fast; where it
  cannot compile, negalign falls back to ``sdpa`` and says so once. PyTorch has no FlexAttention backward on
  a CPU, so there it serves no-grad passes only.
- ``sdpa``: one SDPA call per layer with a dense [T, T] boolean mask built once per batch: no loop, no sync,
  T^2 work. Runs anywhere; the fallback.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

logger = logging.getLogger("negalign")

PACKED_ATTENTION = "negalign_packed"  # the name the decoder's layers look up while a packed row runs
LAYOUTS = ("auto", "blocks", "flex", "sdpa")


def resolve_layout(layout: str, device: torch.device | str) -> str:
    """`auto`: blocks on a CPU (fastest there, measured), flex on CUDA where PyTorch has it, else sdpa."""
    if layout not in LAYOUTS:
        raise ValueError(f"packed_attention must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout != "auto":
        return layout
    if torch.device(device).type == "cpu":
        return "blocks"
    return "flex" if _flex_available() else "sdpa"


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def block_table(blocks: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position of the row: its block's index, and the index of the block it sees whole (its shared
    prompt; -1 for none). Device tensor ops only: nothing is read back to the host."""
    starts = blocks[:, 0].contiguous()
    positions = torch.arange(length, device=blocks.device)
    block_of = torch.searchsorted(starts, positions, right=True) - 1
    prefix_index = torch.searchsorted(starts, blocks[:, 2].contiguous())
    prefix_index = torch.where(blocks[:, 3] > 0, prefix_index, torch.full_like(prefix_index, -1))
    return block_of, prefix_index[block_of]


def dense_mask(blocks: torch.Tensor, length: int) -> torch.Tensor:
    """[1, 1, T, T] bool, True where query t may attend to key s."""
    block_of, prefix_of = block_table(blocks, length)
    positions = torch.arange(length, device=blocks.device)
    own = (block_of[:, None] == block_of[None, :]) & (positions[None, :] <= positions[:, None])
    return (own | (prefix_of[:, None] == block_of[None, :]))[None, None]


def flex_block_mask(blocks: torch.Tensor, length: int):
    from torch.nn.attention.flex_attention import create_block_mask

    block_of, prefix_of = block_table(blocks, length)

    def packed(batch, head, query, key):
        return ((block_of[query] == block_of[key]) & (key <= query)) | (prefix_of[query] == block_of[key])

    return create_block_mask(packed, None, None, length, length, device=blocks.device)


def build_mask(layout: str, blocks: torch.Tensor, length: int):
    """What the layers of one packed forward share: the block table (blocks, as Python ints), a FlexAttention
    block mask (flex) or a dense boolean mask (sdpa). Built once per batch, not per layer."""
    if layout == "blocks":
        return tuple(tuple(block) for block in blocks.tolist())  # read once, not per layer
    if layout == "flex":
        return flex_block_mask(blocks, length)
    return dense_mask(blocks, length)


_compiled_flex = None
_flex_failed = False


def _flex(query, key, value, block_mask, scale, gqa):
    """FlexAttention, compiled once (dynamic shapes: every packed row has its own length). Eager FlexAttention
    materialises every score, so where compiling fails the layer takes the dense SDPA mask instead."""
    global _compiled_flex, _flex_failed
    from torch.nn.attention.flex_attention import flex_attention

    if query.device.type == "cpu":  # no compiled CPU kernel is needed for the no-grad checks this serves
        return flex_attention(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    if not _flex_failed:
        try:
            if _compiled_flex is None:
                _compiled_flex = torch.compile(flex_attention, dynamic=True)
            return _compiled_flex(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=gqa)
        except Exception as error:  # noqa: BLE001 - Triton missing, an unsupported GPU, a compiler bug
            _flex_failed = True
            logger.warning("negalign: FlexAttention could not compile (%s: %s); packed attention falls back to "
                           "one SDPA call with a dense mask (packed_attention: sdpa)", type(error).__name__, error)
    # the fallback: the same mask, dense (the mask_mod evaluated on every (query, key) pair)
    positions = torch.arange(query.shape[2], device=query.device)
    mask = block_mask.mask_mod(0, 0, positions[:, None], positions[None, :])[None, None]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, enable_gqa=gqa)


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     negalign_mask=None, **kwargs):
    """Attention of a packed row under `negalign_mask` (from build_mask). Without it (generation, evaluation)
    this is plain transformers SDPA."""
    if negalign_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects the single packed row that pack_sequences makes")
    gqa = query.shape[1] != key.shape[1]
    if isinstance(negalign_mask, tuple):
        out = _blockwise(query, key, value, negalign_mask, scaling, gqa)
    elif isinstance(negalign_mask, torch.Tensor):
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=negalign_mask, scale=scaling, enable_gqa=gqa)
    else:
        out = _flex(query, key, value, negalign_mask, scaling, gqa)
    return out.transpose(1, 2).contiguous(), None


def _blockwise(query, key, value, blocks, scaling, gqa):
    # One split per tensor, not a slice per block: a slice's backward writes its gradient into a zeroed
    # tensor of the full row, so per-block slices cost blocks x row length (measured: 11 % of a D2O step).
    lengths = [block[1] for block in blocks]
    queries, keys, values = (torch.split(t, lengths, dim=2) for t in (query, key, value))
    index_at = {block[0]: i for i, block in enumerate(blocks)}
    pieces = []
    for i, (start, length, prefix_start, prefix_length) in enumerate(blocks):
        q, k, v = queries[i], keys[i], values[i]
        if prefix_length == 0:  # SDPA's causal kernel skips the upper triangle
            pieces.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa))
            continue
        prefix = index_at[prefix_start]  # the shared prompt is itself a block
        k, v = torch.cat([keys[prefix], k], dim=2), torch.cat([values[prefix], v], dim=2)
        mask = torch.ones(length, prefix_length + length, dtype=torch.bool, device=query.device)
        mask[:, prefix_length:] = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
        pieces.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa))
    return torch.cat(pieces, dim=2)


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def packed_attention_scope(decoder):
    """Packed attention for one forward; the model's own attention implementation before and after, so
    generation and evaluation run as the user configured them. With gradient checkpointing the switch
    stays: the backward re-runs the forward outside this scope (outside packed batches packed attention is
    plain SDPA)."""
    before = decoder.config._attn_implementation
    if before != PACKED_ATTENTION:
        decoder.config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        if before != PACKED_ATTENTION and not _checkpointing(decoder):
            decoder.config._attn_implementation = before


def _checkpointing(model) -> bool:
    flag = getattr(model, "is_activation_checkpointing", None)  # the newer name; the older one warns
    return bool(flag if flag is not None else getattr(model, "is_gradient_checkpointing", False))
