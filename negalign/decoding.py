"""The decoding engine behind `negalign sample` and evaluation: K answers per prompt from one static KV cache.

Each batch's prompts are prefilled once into a static cache (the tokens all prompts share only once, the rest
in groups of similar length), the cache is repeated K times so the K answers of a prompt share one prefill,
and decoding writes the cache in place, samples top-p from the likeliest tokens (`nucleus`) and lets
finished rows leave the batch. What to sample, where to write it and how to resume is negalign.sampling's.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Protocol

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from negalign.logprobs import head_logits


class DecodingSettings(Protocol):
    """What decoding reads from negalign.sampling.SamplingSettings (or anything with these fields)."""

    k: int
    max_new_tokens: int
    temperature: float
    top_p: float


class _OneDtypeStaticLayer(StaticLayer):
    """A StaticLayer that stores values in the keys' dtype. Under CPU bf16 autocast the keys come out of RoPE
    in fp32 while the values come straight from a bf16 matmul, and StaticLayer's in-place copy refuses
    mixed dtypes (attention casts both again anyway)."""

    def update(self, key_states, value_states, *args, **kwargs):
        dtype = self.keys.dtype if self.is_initialized else key_states.dtype
        return super().update(key_states.to(dtype), value_states.to(dtype), *args, **kwargs)


@functools.cache
def _cache_keyword_of(forward_owner: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(forward_owner.forward).parameters else "past_key_values"


def with_cache(model, cache) -> dict:
    """The forward keyword for a KV cache: `cache` in transformers 5.24 and later (`past_key_values` is
    deprecated there and goes in 5.40), `past_key_values` before. A peft wrapper is asked about its base model,
    whose forward receives the keyword through the wrapper's **kwargs."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {_cache_keyword_of(type(inner)): cache}


def _static_cache(model, max_cache_len: int) -> StaticCache:
    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    for layer in cache.layers:
        if type(layer) is StaticLayer:  # sliding-window layers keep their own class
            layer.__class__ = _OneDtypeStaticLayer
    return cache


# finished rows leave the batch once this share of it has finished: copying the KV cache (every layer) costs
# about one decode step at batch 64, so it is done in a few larger rounds rather than at every finished row
COMPACT_AFTER = 0.25
READ_EVERY_ON_GPU = 8  # decoding steps between two reads of the new tokens on a GPU (one host sync for all)
READ_EVERY_ON_CPU = 1  # a CPU reads every step: finished rows leave the batch soonest there
TOP_P_CANDIDATES = 256  # top-p looks at this many most likely tokens first; the full sort only if they fall short


def next_tokens(logits: torch.Tensor, settings: DecodingSettings, generator: torch.Generator) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else temperature + nucleus (top-p) sampling.

    Top-p keeps a token when the probability mass ranked strictly above it is below top_p (transformers'
    TopPLogitsWarper rule). It is taken from the TOP_P_CANDIDATES most likely tokens when they hold at least
    top_p of the mass in every row, which gives exactly the same kept set; sorting all 49k logits per row and
    drawing over the full vocabulary cost a third of decoding time (measured)."""
    if settings.temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / settings.temperature).softmax(-1)
    if settings.top_p >= 1:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    weights, indices = nucleus(probs, settings.top_p)
    return indices.gather(-1, torch.multinomial(weights, 1, generator=generator)).squeeze(-1)


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, token ids) per row: the probabilities of the top-p tokens, zero for the rest."""
    values, indices = probs.topk(min(TOP_P_CANDIDATES, probs.shape[-1]), dim=-1)
    if bool((values.sum(-1) < top_p).any()):  # the candidates fall short in some row: rank them all
        values, indices = probs.sort(dim=-1, descending=True)
    keep = (values.cumsum(-1) - values) < top_p  # the first token is always kept
    return values * keep, indices


# a prefix shorter than this is prefilled with each row: a separate pass costs more than it saves
MIN_SHARED_PREFIX = 8


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """How many leading tokens all prompts have in common."""
    first, length = prompts[0], min(len(p) for p in prompts)
    for prompt in prompts[1:]:
        same = 0
        while same < length and prompt[same] == first[same]:
            same += 1
        length = same
    return length


def _repeat_rows(cache: StaticCache, times: int) -> None:
    """Each row of the cache `times` times in a row (StaticLayer has no batch_repeat_interleave)."""
    if times == 1:
        return
    for layer in cache.layers:
        if not layer.is_initialized:  # nothing prefilled yet: the first step fills every row
            continue
        layer.keys, layer.values = layer.keys.repeat_interleave(times, 0), layer.values.repeat_interleave(times, 0)
        layer.batch_size *= times


@contextlib.contextmanager
def _wide_head(model):
    """The LM head computed as weight @ hidden^T while decoding (negalign.logprobs.head_logits): at 32 rows
    against SmolLM2's 49k-token vocabulary the usual hidden @ weight^T took a quarter of each decoding step on
    this CPU and the transposed product half of that (measured). Heads that are not a plain Linear are left
    alone."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        yield
        return
    head.forward = lambda hidden: head_logits(head, hidden)  # an instance attribute: __call__ finds it first
    try:
        yield
    finally:
        del head.forward


PREFILL_ROWS = 8  # rows prefilled together: each group is padded only to its own longest prompt


def _prefill_in_groups(model, cache: StaticCache, own: list[list[int]], ids, mask, positions, shared: int) -> None:
    """Every row's own tokens but its last into the cache, PREFILL_ROWS rows of similar length at a time, each
    group padded only to its longest row and then copied into the batch's cache at the slots the one padded
    prefill would have filled. One long prompt no longer makes every row compute its padding: a batch of 32
    evaluation prompts (own lengths up to 67) laid out 3.5 times its real tokens, and prefilling was a
    quarter of its generation time (measured)."""
    batch, width = len(own), ids.shape[1]
    order = sorted(range(batch), key=lambda i: len(own[i]))
    for first in range(0, batch, PREFILL_ROWS):
        rows = order[first:first + PREFILL_ROWS]
        group_width = max(len(own[i]) for i in rows)
        if group_width == 1:  # only last tokens: the first decoding step feeds them
            continue
        index = torch.tensor(rows, device=ids.device)
        group = _static_cache(model, shared + group_width)
        if shared:  # the group starts from the prefix already in the batch's cache
            for big, small in zip(cache.layers, group.layers):
                small.lazy_initialization(big.keys[index], big.values[index])
                small.keys[:, :, :shared] = big.keys[index, :, :shared]
                small.values[:, :, :shared] = big.values[index, :, :shared]
                small.cumulative_length.fill_(shared)
        columns = slice(width - group_width, width - 1)  # left-padded rows: the group's tokens are the last columns
        group_mask = torch.cat([mask[index, :shared], mask[index, shared:][:, columns]], dim=1)
        model(input_ids=ids[index][:, columns], attention_mask=group_mask, position_ids=positions[index][:, columns],
              **with_cache(model, group), use_cache=True, logits_to_keep=1)
        slots = slice(shared + width - group_width, shared + width - 1)
        for big, small in zip(cache.layers, group.layers):
            if not big.is_initialized:  # no shared prefix: the batch's cache is allocated by the first group
                shape = (batch, *small.keys.shape[1:2], 1)
                big.lazy_initialization(small.keys.new_empty(*shape, small.keys.shape[-1]),
                                        small.values.new_empty(*shape, small.values.shape[-1]))
            big.keys[index, :, slots] = small.keys[:, :, shared:shared + group_width - 1]
            big.values[index, :, slots] = small.values[:, :, shared:shared + group_width - 1]
    for layer in cache.layers:
        layer.cumulative_length.fill_(shared + width - 1)


@torch.no_grad()
def generate_batch(model, tokenizer, prompt_ids: list[list[int]], settings: DecodingSettings,
                   generator_seed: int) -> list[list[list[int]]]:
    with _wide_head(model):
        return _generate_batch(model, tokenizer, prompt_ids, settings, generator_seed)


def _generate_batch(model, tokenizer, prompt_ids: list[list[int]], settings: DecodingSettings,
                    generator_seed: int) -> list[list[list[int]]]:
    """K completions (token ids, cut after EOS) for each prompt: prompts prefilled once (left-padded) into a
    static KV cache, the cache repeated K times, then all rows decoded together until each has its EOS.

    The tokens every prompt of the batch starts with (the chat template's opening, a sampling context's
    system message and demonstrations) are prefilled once for the whole batch and copied to every row; each
    row then continues after them: [shared prefix][padding][own tokens], the padding masked out and the own
    tokens' positions following the prefix, so each row computes what its whole prompt alone would give."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos, k = tokenizer.eos_token_id, settings.k
    device = next(model.parameters()).device
    # every row keeps at least its last token, which the first decoding step feeds
    shared = min(shared_prefix_length(prompt_ids), min(len(p) for p in prompt_ids) - 1)
    if shared < MIN_SHARED_PREFIX:
        shared = 0
    own = [p[shared:] for p in prompt_ids]
    width = max(len(p) for p in own)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in own], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(p)) + [1] * len(p) for p in own], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    # a static cache: decoding writes each new token in place; a dynamic cache re-concatenates every layer's
    # keys and values at every step (measured: half of all sampling time at K = 4, 8 prompts)
    cache = _static_cache(model, shared + width + settings.max_new_tokens)
    if shared:
        model(input_ids=torch.tensor([prompt_ids[0][:shared]], device=device), **with_cache(model, cache),
              use_cache=True, logits_to_keep=1)
        _repeat_rows(cache, len(own))
    if width > 1 and all(isinstance(layer, StaticLayer) and not layer.is_sliding for layer in cache.layers):
        _prefill_in_groups(model, cache, own, ids, mask, positions, shared)
    elif width > 1:
        model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
              **with_cache(model, cache), use_cache=True, logits_to_keep=1)  # only the cache is wanted here
    _repeat_rows(cache, k)
    generator = torch.Generator(device=device).manual_seed(generator_seed)
    token, position = ids[:, -1:].repeat_interleave(k, 0), positions[:, -1:].repeat_interleave(k, 0)
    mask = mask.repeat_interleave(k, 0)
    rows = [[] for _ in range(token.shape[0])]
    alive = list(range(token.shape[0]))  # which answer each row of the batch decodes
    running = torch.ones(token.shape[0], dtype=torch.bool, device=device)
    cached = with_cache(model, cache)
    # Reading the new tokens back is a host sync, which on a GPU stops the next step's kernels from being
    # queued while this one runs: there the tokens are read every `READ_EVERY_ON_GPU` steps (one sync for all
    # of them); a CPU reads every step, as the finished rows then leave the batch soonest.
    read_every = READ_EVERY_ON_CPU if device.type == "cpu" else READ_EVERY_ON_GPU
    pending = []  # (tokens chosen, rows still running before the step), on the device until read
    for step in range(settings.max_new_tokens):
        logits = model(input_ids=token, attention_mask=mask, position_ids=position, **cached,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        chosen = torch.where(running, next_tokens(logits, settings, generator), pad)
        pending.append((chosen, running.clone()))
        running &= chosen != eos
        token, position = chosen[:, None], position + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if (step + 1) % read_every and step + 1 < settings.max_new_tokens:
            continue
        values, live = (torch.stack(column, dim=1).tolist() for column in zip(*pending))
        pending = []
        for row, row_values, row_live in zip(alive, values, live):
            rows[row].extend(v for v, is_live in zip(row_values, row_live) if is_live)
        n_running = int(running.sum())
        if n_running == 0:
            break
        if n_running <= (1 - COMPACT_AFTER) * len(alive):
            # finished rows leave the batch: every later step would compute them for nothing
            keep = running.nonzero().flatten()
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
                layer.batch_size = n_running
            token, position, mask, running = token[keep], position[keep], mask[keep], running[keep]
            alive = [alive[i] for i in keep.tolist()]
    return [rows[i * k:(i + 1) * k] for i in range(len(prompt_ids))]
