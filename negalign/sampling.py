"""Self-samples for D2O: K answers per prompt, batched, written to disk as they are made, resumable.

Speed: prompts are ordered by length and batched; each batch's prompts are prefilled once into a static KV
cache whose tensors are then repeated K times, so the K answers of a prompt share one prefill; decoding
writes the cache in place, samples top-p from the likeliest tokens (`nucleus`) and stops rows at EOS.

Never losing work: rows are appended to a jsonl file after every batch (flushed and fsynced). A sidecar
`<output>.meta.json` records the model (name and a fingerprint of its weights), generation settings and
seed; a rerun with the same settings skips every (prompt, sample_index) already present, and a file made
with other settings or weights is refused unless `overwrite=True`. A torn last line from a kill is cut off before appending. Batches and their random
seeds depend only on the prompt list and the seed, so a resumed run writes exactly the rows an
uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from negalign.data import DataError, encode_prompt_with_context, load_rows, prompt_key
from negalign.files import atomic_write_text
from negalign.logprobs import head_logits
from negalign.sampling_context import context_hash, describe

META_SUFFIX = ".meta.json"


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


@dataclass
class SamplingReport:
    output: str
    n_prompts: int
    n_rows_written: int
    n_rows_reused: int
    seconds: float
    generated_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def unique_prompts(source, on_bad_row: str = "error") -> list[list[dict]]:
    """Distinct prompts (chat messages) of a feedback file / data set / list, in first-seen order."""
    if isinstance(source, (str, os.PathLike)):
        from negalign.data.catalog import resolve_data

        path = resolve_data(str(source))
        try:
            messages = [row["prompt"] for row in load_rows(path, on_bad_row=on_bad_row)[0]]
        except DataError as error:  # prompts without answers (e.g. Alpaca instructions, a .txt file)
            from negalign.data.prompts import read_prompt_rows

            try:
                messages = [row["prompt"] for row in read_prompt_rows(path)]
            except (DataError, ValueError):
                raise error from None
    else:
        messages = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in source]
    seen, out = set(), []
    for prompt in messages:
        key = prompt_key(prompt)
        if key not in seen:
            seen.add(key)
            out.append(prompt)
    return out


def prompts_for_sampling(sources: list, output: str | os.PathLike, max_prompts: int | None = None,
                         data_dir=None, on_bad_row: str = "error") -> list[list[dict]]:
    """The distinct prompts of `sources` (in order, duplicates once), without evaluation prompts when
    `data_dir` holds the evaluation suites (the removals are recorded in OUTPUT.decontamination.json, as
    training records its own beside the model), cut to the first `max_prompts`."""
    import sys

    prompts = unique_prompts([p for source in sources for p in unique_prompts(source, on_bad_row=on_bad_row)])
    if data_dir is not None:  # the prompts training will use: evaluation prompts never get anchors
        from negalign.decontamination import clean_first_prompts
        from negalign.files import portable

        kept, removed = clean_first_prompts([{"prompt": p} for p in prompts], max_prompts, data_dir)
        prompts = [row["prompt"] for row in kept]
        atomic_write_text(f"{output}.decontamination.json", json.dumps(portable({
            "decontaminated_against": "built-in evaluation suites", "data_dir": str(data_dir),
            "n_removed": len(removed), "removed": removed}), indent=2) + "\n")
        if removed:
            print(f"negalign sample: {len(removed)} prompts left out as evaluation prompts (e.g. "
                  f"{removed[0]['prompt'][:60]!r} ~ {removed[0]['match'][:60]!r})", file=sys.stderr)
    prompts = prompts[:max_prompts]
    if not prompts:
        raise ValueError(f"{', '.join(map(str, sources))}: no prompts to sample (the file has no usable rows"
                         + (", or max_prompts is 0)" if max_prompts == 0 else ")"))
    return prompts


def read_existing(output: Path) -> dict[tuple[str, int], dict]:
    """Rows already on disk; a torn final line (killed mid-write) is truncated away."""
    done = {}
    if not output.exists():
        return done
    with open(output, "rb+") as handle:
        data = handle.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            handle.truncate(end)
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{output} line {number}: not JSON ({error.msg}); delete the file or pass overwrite")
            done[(prompt_key(row["prompt"]), int(row["sample_index"]))] = row
    return done


def check_meta(output: Path, meta: dict, overwrite: bool) -> None:
    meta_path = Path(str(output) + META_SUFFIX)
    if overwrite:
        for path in (output, meta_path):
            if path.exists():
                path.unlink()
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        stored = old.get("settings")
        if isinstance(stored, dict) and stored.get("temperature") == 0 and "batch_size" in stored:
            # a greedy file written before greedy keys left batch_size out: greedy answers do not depend on it
            old = {**old, "settings": {k: v for k, v in stored.items() if k != "batch_size"}}
            if old == meta:
                atomic_write_text(meta_path, json.dumps(meta, indent=2))
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ValueError(f"{output} was made with other settings ({', '.join(diff)} differ: "
                             f"{ {k: old.get(k) for k in diff} } vs { {k: meta.get(k) for k in diff} }); "
                             "use another output path or overwrite=True (--overwrite) to regenerate")
    elif output.exists() and output.stat().st_size:
        raise ValueError(f"{output} exists without {meta_path.name}: not a negalign samples file; "
                         "use another output path or --overwrite")
    else:
        atomic_write_text(meta_path, json.dumps(meta, indent=2))


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


def next_tokens(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator) -> torch.Tensor:
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
def generate_batch(model, tokenizer, prompt_ids: list[list[int]], settings: SamplingSettings,
                   generator_seed: int) -> list[list[list[int]]]:
    with _wide_head(model):
        return _generate_batch(model, tokenizer, prompt_ids, settings, generator_seed)


def _generate_batch(model, tokenizer, prompt_ids: list[list[int]], settings: SamplingSettings,
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


def sample(model, tokenizer, prompts, output: str | os.PathLike, settings: SamplingSettings | None = None, *,
           model_id: str = "unknown", overwrite: bool = False, progress: bool = True) -> SamplingReport:
    """Write K samples per prompt to `output` (jsonl), resuming from whatever is already there."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    settings = settings or SamplingSettings()
    output = Path(output)
    prompts = unique_prompts(prompts)
    from negalign.reference import model_fingerprint

    # the weights, not only the name: a model retrained under the same name must not extend old samples
    meta = {"model": model_id, "weights": model_fingerprint(model), "settings": settings.generation_key(),
            "sampling_context": describe(settings.context),
            "n_prompts": len(prompts),
            "prompts_fingerprint": prompt_key([{"role": "x", "content": prompt_key(p)} for p in prompts])}
    check_meta(output, meta, overwrite)
    done = read_existing(output)
    encoded = [encode_prompt_with_context(p, settings.context, tokenizer, settings.max_prompt_length)
               for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    keys = [prompt_key(p) for p in prompts]
    written, tokens, start = 0, 0, time.time()
    was_training = model.training
    model.eval()
    columns = [TextColumn("sampling"), BarColumn(), TextColumn("{task.completed}/{task.total} prompts"),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar, open(output, "a", encoding="utf-8") as sink:
        task = bar.add_task("sampling", total=len(prompts), rate="")
        for batch_number, batch in enumerate(batches):
            missing = [(i, s) for i in batch for s in range(settings.k) if (keys[i], s) not in done]
            if missing:
                answers = generate_batch(model, tokenizer, [encoded[i] for i in batch], settings,
                                         generator_seed=settings.seed * 1_000_003 + batch_number)
                lines = []
                for position, i in enumerate(batch):
                    for s, ids in enumerate(answers[position]):
                        if (keys[i], s) in done:
                            continue
                        finished = tokenizer.eos_token_id in ids
                        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                        lines.append(json.dumps({"prompt": prompts[i], "completion": text, "origin": "self",
                                                 "sample_index": s, "n_tokens": len(ids),
                                                 "finished": finished}) + "\n")
                        tokens += len(ids)
                sink.write("".join(lines))
                sink.flush()
                os.fsync(sink.fileno())
                written += len(lines)
            elapsed = time.time() - start
            bar.update(task, advance=len(batch), rate=f"{written / elapsed:.1f} samples/s, "
                       f"{tokens / elapsed:.0f} tok/s" if written else "")
    model.train(was_training)
    return SamplingReport(str(output), len(prompts), written, len(done), time.time() - start, tokens)
