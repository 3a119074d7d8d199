"""A retain set: prompts the model must keep answering while an objective unlearns something else.

Whatever a method teaches on harmful prompts spills onto benign ones in a small model (over-refusal). A retain
term, as in the unlearning literature (gradient difference, NPO + retain), adds to every step
`retain_weight x L_retain` on a batch of retain rows drawn apart from the feedback rows:

    nll   L = -(1/T) sum_t log pi_theta(a_t | x, a_<t)                 over the given answers' T tokens
    self  the same NLL on the starting model's own greedy answers (generated once, cached on disk)
    kl    L = (1/T) sum_t KL( pi_ref(. | x, a_<t) || pi_theta(. | x, a_<t) )   full-vocabulary, per token,
          on the given answers or, where there are none, the starting model's greedy answers

Retain prompts are decontaminated before use (negalign.decontamination): a prompt that duplicates an evaluation
prompt, exactly or by embedding similarity, is removed, and the removals are written beside the run
(retain_decontamination.json).
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from negalign import decontamination
from negalign.data import encode, prompt_key
from negalign.data.prompts import read_prompt_rows as read_retain_rows
from negalign.logprobs import pack_sequences, token_log_softmax, token_logps
from negalign.objectives import retain_kl, retain_nll

logger = logging.getLogger("negalign")


@dataclass
class RetainSet:
    sequences: list[tuple[list[int], list[int]]]  # (prompt ids, answer ids)
    summary: dict = field(default_factory=dict)
    prompts: list[list[dict]] = field(default_factory=list)  # the retain prompts, as messages (trained_prompts.jsonl)


def self_answers(model, tokenizer, prompts: list[list[dict]], folder: str | os.PathLike, max_new_tokens: int,
                 max_prompt_length: int, batch_size: int = 8) -> list[str]:
    """The starting model's greedy answers, generated once with the batched sampler and cached under `folder`,
    keyed by the model's weights and the prompts: a rerun reads them back without generating."""
    from negalign.models import model_fingerprint
    from negalign.sampling import SamplingSettings, read_existing, sample

    key = prompt_key([{"role": "x", "content": prompt_key(p)} for p in prompts])[:16]
    path = Path(folder) / f"{model_fingerprint(model)}-{key}-{max_new_tokens}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = SamplingSettings(k=1, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0,
                                batch_size=batch_size, max_prompt_length=max_prompt_length)
    sample(model, tokenizer, prompts, path, settings, model_id="retain-self", progress=True)
    done = read_existing(path)
    return [done[(prompt_key(p), 0)]["completion"] for p in prompts]


def prepare_retain(config, tokenizer, model, reference, output_dir: str | None = None) -> RetainSet | None:
    """config.retain_* -> tokenised retain sequences, decontaminated against the evaluation suites (the removals
    written to `output_dir`). Needs the starting model (its self answers, and with retain_loss kl the reference
    keeps it: Reference.keep_starting_model), so it runs before LoRA or training change it."""
    if not config.retain_data:
        return None
    from negalign.data.paths import data_dir as find_data_dir
    from negalign.files import atomic_write_text, portable
    from negalign.models import cache_dir

    rows = read_retain_rows(config.retain_data)
    random.Random(config.seed).shuffle(rows)
    if config.retain_max_prompts:
        rows = rows[: config.retain_max_prompts]
    folder = find_data_dir()
    if folder is not None:
        kept, removed = decontamination.decontaminate(rows, decontamination.evaluation_prompts(folder),
                                                      held_out=decontamination.held_out_pairs(folder))
    else:  # no evaluation suites to compare against: say so in the record rather than guess
        kept, removed = rows, []
    summary = {"source": config.retain_data, "loss": config.retain_loss, "weight": config.retain_weight,
               "n_selected": len(rows), "n_kept": len(kept), "n_removed": len(removed),
               "decontaminated_against": "built-in evaluation suites" if folder is not None else "nothing (no data "
               "directory)", "duplicate_cosine": decontamination.DUPLICATE_COSINE, "removed": removed}
    if not kept:
        raise ValueError(f"retain_data: {config.retain_data}: every row was removed as an evaluation prompt")
    missing = [r for r in kept if r["answer"] is None]
    if config.retain_loss == "nll" and missing:
        raise ValueError(f"retain_loss: nll needs answers, but {missing[0]['source']} (and {len(missing) - 1} more) "
                         "have none; use retain_loss: self (the starting model's own answers) or kl")
    if config.retain_loss == "self" or missing:
        generated = self_answers(model, tokenizer, [r["prompt"] for r in kept],
                                 Path(config.cache_dir or cache_dir() / "reference").parent / "retain",
                                 config.retain_max_new_tokens, config.max_prompt_length)
        for row, answer in zip(kept, generated):
            if config.retain_loss == "self" or row["answer"] is None:
                row["answer"] = answer
    sequences = []
    for row in kept:  # an empty greedy answer stays: stopping at once is then the behaviour to keep
        encoded = encode(row["prompt"], row["answer"], tokenizer, max_length=config.max_length,
                         max_prompt_length=config.max_prompt_length, source=row["source"])
        sequences.append((encoded.prompt_ids, encoded.completion_ids))
    summary["n_sequences"] = len(sequences)
    if output_dir:
        atomic_write_text(os.path.join(output_dir, "retain_decontamination.json"), json.dumps(portable(summary), indent=2) + "\n")
    logger.info("negalign: retain set: %d sequences from %s (%d of %d prompts removed as evaluation prompts), loss "
                "%s x %s", len(sequences), config.retain_data, len(removed), len(rows), config.retain_loss,
                config.retain_weight)
    if config.retain_loss == "kl":
        reference.keep_starting_model(model, config.device)
    return RetainSet(sequences, summary, [row["prompt"] for row in kept])


def retain_indices(n_rows: int, batch_size: int, draw: int, seed: int) -> list[int]:
    """Rows of the `draw`-th retain batch: consecutive slices of a seeded permutation per pass over the set, so
    the batch of every step depends only on the step (a resumed run draws what the uninterrupted one did)."""
    out = []
    position = draw * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, n_rows)
        order = list(range(n_rows))
        random.Random(f"{seed}-retain-{epoch}").shuffle(order)
        out.append(order[offset])
        position += 1
    return out


class RetainTerm:
    """The retain loss of each training micro-step, on a batch of retain rows of its own. Which rows depends only
    on the global step, the micro-step within it and the process (`retain_indices`), so a resumed run draws the
    batches the uninterrupted one would have. With retain_loss kl the reference side is the starting model
    (negalign.reference.Reference.keep_starting_model)."""

    def __init__(self, retain: RetainSet, config, reference):
        self.retain, self.reference, self.loss = retain, reference, config.retain_loss
        self.attention, self.device, self.seed = config.packed_attention, config.device, config.seed
        self.batch_size = config.retain_batch_size or config.per_device_train_batch_size
        self.accumulation, self.world_size = config.gradient_accumulation_steps, config.world_size
        self.process = config.process_index
        self._step, self._micro = -1, 0

    def rows(self, global_step: int) -> list[int]:
        """The retain rows of the next micro-step of `global_step`."""
        if global_step != self._step:
            self._step, self._micro = global_step, 0
        draw = (self._step * self.accumulation + self._micro) * self.world_size + self.process
        self._micro += 1
        return retain_indices(len(self.retain.sequences), self.batch_size, draw, self.seed)

    def __call__(self, model, global_step: int, autocast):
        """(retain loss, its metrics) under `model`, in the training step's `autocast` context."""
        rows = self.rows(global_step)
        batch = pack_sequences([self.retain.sequences[i] for i in rows], share_prompts=False).to(self.device)
        with autocast():
            if self.loss != "kl":
                return retain_nll(token_logps(model, batch, attention=self.attention))
            policy = token_log_softmax(model, batch, attention=self.attention)
            reference = self.reference.starting_token_log_softmax(model, batch)
        return retain_kl(policy, reference)
