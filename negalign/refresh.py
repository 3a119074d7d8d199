"""D2O's variable sampling policy: `sampling: refresh` draws new self-samples from the current policy every
`refresh_every` steps (or epochs) and scores them under pi_r-.

Each refresh is written with the resumable sampler to `<output_dir>/refreshed_samples/step-NNNNNN.jsonl`
before the training items change, so a run resumed from a checkpoint at step S reloads the newest refresh
at or before S (`apply_latest`) and trains on exactly the samples the interrupted run had. All prompts of
the training set are resampled at each refresh (K x prompts generations).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from transformers import TrainerCallback

from negalign.anchors import report_samples_file
from negalign.data import encode, load_rows, prompt_key
from negalign.methods import SAMPLES
from negalign.sampling import SamplingSettings, sample
from negalign.sampling_context import resolve_context

logger = logging.getLogger("negalign")
REFRESH_FILE = re.compile(r"step-(\d+)\.jsonl$")


class SampleRefresher(TrainerCallback):
    """Owns the D2O items' "samples" columns (layout.columns) and their pi_r- log-probs after the first
    refresh."""

    def __init__(self, config, tokenizer, items: list[dict], prompts: list[list[dict]], reference):
        self.config, self.tokenizer, self.items, self.prompts = config, tokenizer, items, prompts
        self.reference = reference  # negalign.reference.Reference: scores the new anchors under pi_r-
        self.columns = reference.layout.columns(SAMPLES)
        self.folder = Path(config.output_dir) / "refreshed_samples"
        self.trainer = None
        self.refuses = None  # anchor report judge (None: the offline harm judge)

    def settings(self, step: int) -> SamplingSettings:
        c = self.config
        return SamplingSettings(k=c.k, max_new_tokens=c.sample_max_new_tokens, temperature=c.sample_temperature,
                                top_p=c.sample_top_p, seed=c.seed + step, batch_size=c.sample_batch_size,
                                max_prompt_length=c.max_prompt_length,
                                context=resolve_context(c.sampling_context, c.sampling_instruction))

    def _due(self, state, unit: str) -> bool:
        if self.config.refresh_unit != unit:
            return False
        count = state.global_step if unit == "steps" else round(state.epoch or 0)
        return count > 0 and count % self.config.refresh_every == 0 and state.global_step < state.max_steps

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._due(state, "steps"):
            self.refresh(model, state.global_step)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self._due(state, "epochs"):
            self.refresh(model, state.global_step)

    def refresh(self, model, step: int) -> None:
        path = self.folder / f"step-{step:06d}.jsonl"
        was_training = model.training
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.bf16 and model.device.type == "cpu"):
            # overwrite: a file left by a run killed mid-refresh is redrawn whole from these weights (the same
            # seed and weights give the same rows), never extended under a fingerprint check that
            # bit-level nondeterminism across a resume could fail
            report = sample(model, self.tokenizer, self.prompts, path, self.settings(step),
                            model_id=f"{self.config.model}@step{step}", overwrite=True)
        model.train(was_training)
        n = self.apply(path, model)
        anchors = report_samples_file(path, refuses=self.refuses)  # saved as step-N.jsonl.anchors.json
        message = {"refresh/step": step, "refresh/samples": n, "refresh/generated_tokens_per_s":
                   round(report.tokens_per_second, 1), "refresh/anchor_refusal": anchors["refusal"]["rate"],
                   "refresh/anchor_words": anchors["mean_words"]}
        logger.info("negalign: refreshed D2O samples at step %d: %s", step, message)
        with open(self.folder / "refresh_log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(message) + "\n")
        if self.trainer is not None:  # merged into the next regular log (a log() here would eat the step's)
            self.trainer.pending_logs.update(message)

    def apply(self, path: Path, policy) -> int:
        """Swap the items' sample slots for the samples in `path` and score them under pi_r- (cached mode;
        the live modes score every batch anyway)."""
        rows, _ = load_rows(str(path))
        by_prompt: dict[str, list] = {}
        for row in sorted(rows, key=lambda r: r["sample_index"]):
            by_prompt.setdefault(prompt_key(row["prompt"]), []).append(row["completion"])
        sequences = []
        for item in self.items:
            completions = by_prompt[item["prompt_key"]][: self.config.k]
            encoded = [encode(item["prompt"], text, self.tokenizer, max_length=self.config.max_length,
                              max_prompt_length=self.config.max_prompt_length) for text in completions]
            for column, e in zip(self.columns, encoded, strict=True):
                item["sequences"][column] = (e.prompt_ids, e.completion_ids)
            sequences.extend(item["sequences"][column] for column in self.columns)
        if self.reference.mode == "cached":
            logps = self.reference.score_minus(sequences, policy).view(len(self.items), -1).tolist()
            for item, sample_logps in zip(self.items, logps):
                for column, value in zip(self.columns, sample_logps):
                    item["ref_logps"][column] = value
        return len(sequences)

    def apply_latest(self, step: int, policy) -> int | None:
        """On resume at `step`: reload the newest refresh made at or before it. Returns its step."""
        if not self.folder.exists():
            return None
        made = sorted(int(m.group(1)) for f in os.listdir(self.folder) if (m := REFRESH_FILE.search(f)))
        made = [s for s in made if s <= step]
        if not made:
            return None
        self.apply(self.folder / f"step-{made[-1]:06d}.jsonl", policy)
        return made[-1]
