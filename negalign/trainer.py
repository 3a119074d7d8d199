"""One `transformers.Trainer` subclass for every objective.

The training step: pack the batch's completions padding-free, compute the policy's per-sequence
log-probs (completion positions only), take the reference log-probs from the cache (or a live reference),
hand both to the pure objective function, log its metrics.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import defaultdict

import torch
from transformers import Trainer, TrainerCallback

from negalign import objectives
from negalign.batches import PACKED_FIELDS
from negalign.logprobs import PackedBatch, pad_token_logps, reduce_token_logps, token_logps
from negalign.methods import Columns, Layout, method_loss
from negalign.reference import Reference

logger = logging.getLogger("negalign")
MIN_WEIGHT_SHARE = 0.05  # d2o/kl_on_samples is left out of a log line whose importance-weight share is below this


class TrainingDiverged(FloatingPointError, ValueError):
    """Training stopped because the model diverged: non-finite steps, weights blown up, or a gradient that
    vanished. Its message is one line that names the last good checkpoint; a ValueError too, so `negalign
    train` prints it as it prints other bad settings (one line, exit 2, no traceback)."""


# The weights' norm (of the trained parameters) this many times the norm they started from means divergence.
# AdamW moves a parameter by about learning_rate per step (at most ~3x that), whatever the gradient's size: at
# lr 2e-4, even 10,000 steps that all pushed every parameter the same way would move each by at most ~2-6, against
# SmolLM2-135M's typical size (RMS) of 0.18. Measured: the demo's D2O run (144 steps of lr 2e-5) moved SmolLM2's
# weights (norm 2,120) by 2.1 and changed their norm by 0.002 %, its smallest grad_norm 0.056. Three orders of
# magnitude cannot come from a healthy run, LoRA included (B starts at 0, but A, counted with it, does not); lr 1e6
# puts SmolLM2's weights at ~3e6 (~x1e7) and the tests' tiny model's at x4e7 after one step; lr 1e30 overflows.
WEIGHT_GROWTH_LIMIT = 1000.0
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class NonFiniteGuard(TrainerCallback):
    """Stops a run that has diverged, before it saves anything from the wrecked weights.

    - A non-finite loss or gradient skips the optimizer step (gradients dropped, so AdamW leaves every parameter
      alone) and is logged; `limit` such steps in a row abort the run.
    - Weights whose norm is non-finite or WEIGHT_GROWTH_LIMIT x the start's abort the run at once.
    - A gradient that is exactly 0 everywhere (the outputs saturated: lr 1e6 on SmolLM2 gave grad_norm 0 from step
      2 on while the weights sat at 3e6) `limit` steps in a row aborts it; a healthy run's gradient is never
      exactly 0 (a saturating sigmoid loss reaches fp32's 0 only ~100 nats past its target), and no checkpoint
      is saved while it is.

    One read-back per step for the gradients' and the weights' norms together (a per-tensor check is one host
    sync per parameter on a GPU); a step that saves reads the new weights' norm once more, so that a checkpoint
    (or the final model) is never written from weights that blew up in its own step. The abort is a
    TrainingDiverged whose one line names the last good checkpoint."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.skipped = limit, 0, 0
        self.zero_in_a_row = 0
        self.start_norm = None  # the norm of the weights this run (or its resume) started from

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        with torch.no_grad():
            grad_norms = torch.stack(torch._foreach_norm(grads)).float()
            finite, largest, weights = torch.stack([grad_norms.isfinite().all().float(), grad_norms.max(),
                                                    self._weight_norm(params)]).tolist()  # the one read-back
        if self.start_norm is None:
            self.start_norm = weights
        elif self._blown_up(weights):  # the weights after the last step: nothing was saved from them
            raise self._diverged(args, state.global_step - 1, state.global_step,
                                 f"training diverged at step {state.global_step}: " + self._growth(weights))
        if not finite:
            for p in model.parameters():
                p.grad = None
            self.in_a_row += 1
            self.skipped += 1
            logger.warning("negalign: non-finite loss/gradient at step %d: step skipped (%d in a row)",
                           state.global_step + 1, self.in_a_row)
            if self.in_a_row >= self.limit:  # the skipped steps changed no weight: every checkpoint is good
                raise self._diverged(args, state.global_step, None,
                                     f"training stopped: {self.in_a_row} training steps in a row had a non-finite "
                                     f"loss or gradient (last at step {state.global_step + 1}); aborted",
                                     "lower learning_rate or beta, use bf16: false, or check the data for "
                                     "extreme lengths")
            return
        self.in_a_row = 0
        self.zero_in_a_row = self.zero_in_a_row + 1 if largest == 0 else 0
        if self.zero_in_a_row >= self.limit:
            first = state.global_step + 2 - self.zero_in_a_row  # the first step whose gradient was 0
            # the weights of step first - 1 gave that gradient: a checkpoint of them is not good
            raise self._diverged(args, first - 2, first - 1,
                                 f"training diverged by step {first - 1}: the gradient was exactly 0 for "
                                 f"{self.zero_in_a_row} steps in a row (steps {first}-{state.global_step + 1}), the "
                                 "model's outputs saturated")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._check_before_saving(args, state, control, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._check_before_saving(args, state, control, model)

    def _check_before_saving(self, args, state, control, model):
        """Before a checkpoint, or the final model after the last step, is written from this step's weights."""
        if not (control.should_save or state.global_step >= state.max_steps) or self.start_norm is None:
            return
        if self.zero_in_a_row:  # weights whose gradient was 0 last step: not saved as a checkpoint
            control.should_save = False
            return
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():
            weights = float(self._weight_norm(params))
        if self._blown_up(weights):
            control.should_save = False
            raise self._diverged(args, state.global_step - 1, state.global_step,
                                 f"training diverged at step {state.global_step}: " + self._growth(weights))

    @staticmethod
    def _weight_norm(params) -> torch.Tensor:
        return torch.stack(torch._foreach_norm([p.detach() for p in params])).float().norm()

    def _blown_up(self, norm: float) -> bool:
        return not math.isfinite(norm) or (self.start_norm > 0 and norm > WEIGHT_GROWTH_LIMIT * self.start_norm)

    def _growth(self, norm: float) -> str:
        if not math.isfinite(norm):
            return f"the weights overflowed in that step (their norm is {norm}; it started at {self.start_norm:.3g})"
        return (f"the weights' norm grew from {self.start_norm:.3g} to {norm:.3g} ({norm / self.start_norm:.2g}x) "
                "in that step")

    @staticmethod
    def _diverged(args, good_through: int, suspect: int | None, what: str,
                  advice: str | None = None) -> TrainingDiverged:
        """One line: what happened, which checkpoint in output_dir is the last good one (steps <= good_through),
        which one was saved from the diverged weights (`suspect` and later), and what to do. (Not "resume from
        it with a lower learning rate": a resume restores the checkpoint's learning-rate schedule.)"""
        steps = []
        if os.path.isdir(args.output_dir):
            steps = sorted(int(m.group(1)) for n in os.listdir(args.output_dir) if (m := CHECKPOINT.match(n)))
        bad = [s for s in steps if suspect is not None and s >= suspect]
        good = [s for s in steps if s <= good_through and s not in bad]
        advice = advice or f"lower learning_rate (it is {args.learning_rate:g})"
        parts = [what]
        if bad:
            parts.append(f"{', '.join(f'checkpoint-{s}' for s in bad)} was saved from the diverged weights and is "
                         "not good")
        parts.append(f"the last good checkpoint is {os.path.join(args.output_dir, f'checkpoint-{good[-1]}')}"
                     if good else f"there is no checkpoint from before it in {args.output_dir}")
        message = "; ".join([*parts, advice])
        return TrainingDiverged(message)


class CheckpointInterval(TrainerCallback):
    """Skips a due checkpoint that would come less than `minutes` after the previous one (or the start), except
    at the last step. On a GPU a 1.7B full fine-tuning checkpoint (weights and AdamW state) is ~20 GB: written
    every tenth of a short run, saving would take longer than training."""

    def __init__(self, minutes: float):
        self.seconds, self.last = minutes * 60, time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if (control.should_save and state.global_step < state.max_steps
                and time.monotonic() - self.last < self.seconds):
            control.should_save = False

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()


def checkpoint_minutes(args) -> float:
    if args.checkpoint_min_minutes is not None:
        return float(args.checkpoint_min_minutes)
    return 0.0 if args.device.type == "cpu" else 10.0


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def _mean(values: list) -> float:
    """The mean of logged values, tensors read back to the host here, once per log line."""
    return sum(float(v) for v in values) / len(values)


def packed_from(inputs: dict, prefix: str = "") -> PackedBatch:
    return PackedBatch(*(inputs[prefix + name] for name in PACKED_FIELDS))


class NegalignTrainer(Trainer):
    """`Trainer` whose loss is `args.objective` (a NegalignConfig), read from the [B, columns] log-prob
    matrices by slot name (`layout`: negalign.methods). Reference log-probs come from `reference`
    (negalign.reference.Reference: cached in the batch, live models, or the policy with its adapter off)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, layout: Layout | None = None, reference: Reference | None = None,
                 anchor_provenance: dict | None = None, retain=None, refresher=None,
                 **kwargs):
        """Collaborators, all optional: `reference` (negalign.reference.Reference; default: from the args),
        `anchor_provenance` (where D2O's anchors came from, pipeline.anchor_provenance: written beside the saved
        model, and whether d2o/kl_on_samples estimates a KL), `retain` (negalign.retain.RetainSet: rows mixed
        into every step, apart from the feedback rows; with retain_loss kl the reference keeps the starting model,
        Reference.keep_starting_model), `refresher` (negalign.refresh.SampleRefresher, sampling: refresh).

        Built the way TRL's trainers are (no `layout`): `model=`, `args=` (a NegalignConfig), `train_dataset=`
        (a datasets.Dataset or list of rows in any format the data files take) and `processing_class=` (the
        tokenizer); the rows become examples, the reference log-probs are computed and the collator is made
        here, as negalign.train does (which also does LoRA, retain sets and refreshes)."""
        if layout is None:
            layout, reference = self._from_rows(args, kwargs)
        super().__init__(*args, **kwargs)
        self.layout = layout
        self.reference = reference or Reference(self.args, layout)
        self._metrics = defaultdict(list)
        self.pending_logs = {}  # extra values for the next log line (e.g. a sample refresh)
        self.anchor_provenance = anchor_provenance
        # D2O: were the anchors drawn from the reference with no sampling context? (unknown: d2o/kl_on_samples,
        # which estimates a KL only then, is not logged)
        self.samples_from_reference = bool(anchor_provenance and anchor_provenance["from_reference"])
        self.retain = retain
        if refresher is not None:
            refresher.trainer = self  # its refresh messages join the next log line
            self.add_callback(refresher)
        self._retain_step, self._retain_micro = -1, 0
        self._plain_metrics = defaultdict(list)  # logged under their own names, not the objective's
        self.nonfinite_guard = NonFiniteGuard(self.args.max_nonfinite_steps)
        self.add_callback(self.nonfinite_guard)
        if checkpoint_minutes(self.args) > 0:
            self.add_callback(CheckpointInterval(checkpoint_minutes(self.args)))

    @staticmethod
    def _from_rows(positional: tuple, kwargs: dict) -> tuple[Layout, Reference]:
        """The TRL-style construction: rows -> examples, layout, reference log-probs and collator, in kwargs."""
        import functools

        from negalign.batches import collate, prepare_items
        from negalign.methods import method

        args, model, tokenizer = kwargs.get("args"), kwargs.get("model"), kwargs.get("processing_class")
        if positional or args is None or model is None or tokenizer is None or "train_dataset" not in kwargs:
            raise ValueError("NegalignTrainer without a layout is built from keywords: model=, args= (a "
                             "NegalignConfig), train_dataset= and processing_class= (the tokenizer)")
        unsupported = [name for name, on in (("use_lora", args.use_lora), ("retain_data", args.retain_data),
                                             ("sampling: refresh", args.sampling == "refresh")) if on]
        if unsupported:
            raise ValueError(f"{', '.join(unsupported)}: not set up by NegalignTrainer(...) itself; use "
                             "negalign.train (or hand in a PeftModel for LoRA)")
        args.data = args.data or "train_dataset"  # how the rows are named in messages and in the model card
        prepared = prepare_items(args, tokenizer, kwargs["train_dataset"])
        if not prepared.items:
            raise ValueError(f"train_dataset: no training examples for objective {args.objective!r}")
        layout = method(args.objective).layout(len(prepared.items[0]["sequences"]))
        reference = Reference(args, layout)
        reference.prepare(prepared.items, model, args.device)
        kwargs["train_dataset"] = prepared.items
        kwargs.setdefault("data_collator", functools.partial(collate, layout=layout, share_prompts=args.share_prompts))
        return layout, reference

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        except TrainingDiverged:  # end the progress bar's line, so that the one-line message stands on its own
            from transformers.trainer_callback import ProgressCallback

            for callback in self.callback_handler.callbacks:
                if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                    callback.training_bar.close()
                    callback.training_bar = None
            raise

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        policy_sum, lengths, tokens, batch = self.slot_logps(model, inputs, with_grad=True)
        policy = policy_sum if args.logp_reduction == "sum" else policy_sum / lengths
        ref = self.reference_logps(model, inputs)
        if ref is not None and args.logp_reduction == "mean":
            ref = ref / lengths
        token_level = pad_token_logps(tokens, batch) if self.layout.method.token_level else None
        columns = Columns(self.layout, policy, ref, policy_sum, lengths, token_level)
        loss, metrics = method_loss(columns, inputs, args)
        if not self.samples_from_reference:  # exp(h)*h estimates a KL only under the reference's own samples
            metrics.pop("kl_on_samples", None)
            metrics.pop("kl_on_samples_ess", None)
        if self.retain is not None and model.training:  # evaluation and reference passes leave it out
            retain_loss, retain_metrics = self.retain_term(model)
            self._plain_metrics["objective_loss"].append(loss.detach())
            for key, value in retain_metrics.items():
                self._plain_metrics[f"retain/{key}"].append(_detached(value))
            loss = loss + args.retain_weight * retain_loss
        # kept on the device until a log line needs them: a float() here would stall a GPU every step
        for key, value in {**metrics, "policy_logps": policy.mean()}.items():
            self._metrics[key].append(_detached(value))
        return (loss, {"policy_logps": policy}) if return_outputs else loss

    def retain_term(self, model):
        """The retain loss on this micro-step's retain batch (negalign.retain): which rows depends only on the
        global step, the micro-step and the process, so a resumed run draws the batches it would have."""
        from negalign.logprobs import pack_sequences, token_log_softmax
        from negalign.retain import retain_indices

        args = self.args
        if self.state.global_step != self._retain_step:
            self._retain_step, self._retain_micro = self.state.global_step, 0
        draw = ((self._retain_step * args.gradient_accumulation_steps + self._retain_micro) * args.world_size
                + args.process_index)
        self._retain_micro += 1
        size = args.retain_batch_size or args.per_device_train_batch_size
        rows = retain_indices(len(self.retain.sequences), size, draw, args.seed)
        batch = pack_sequences([self.retain.sequences[i] for i in rows], share_prompts=False).to(args.device)
        with self.accelerator.autocast():
            if args.retain_loss != "kl":
                return objectives.retain_nll(token_logps(model, batch, attention=args.packed_attention))
            policy = token_log_softmax(model, batch, attention=args.packed_attention)
            reference = self.reference.starting_token_log_softmax(model, batch, args.packed_attention)
        return objectives.retain_kl(policy, reference)

    def slot_logps(self, model, inputs, with_grad: bool):
        """Summed completion log-probs and completion lengths, both [B, columns], under `model`, plus the token
        log-probs and packed batch of the columns that carry gradients. Detached columns (the method's
        `detached` slots) run in a second, no-grad forward."""
        slots, detached, kept = self.layout.n_columns, self.layout.detached, self.layout.kept
        batch = packed_from(inputs)
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()), self.accelerator.autocast():
            tokens = token_logps(model, batch, attention=self.args.packed_attention)  # autocast: the precision the cached reference was computed in
        sums = dict(zip(kept, reduce_token_logps(tokens, batch).view(-1, len(kept)).unbind(1)))
        lengths = dict(zip(kept, batch.completion_lengths.view(-1, len(kept)).unbind(1)))
        if detached:
            side = packed_from(inputs, "detached_")
            with torch.no_grad(), self.accelerator.autocast():
                side_sums = reduce_token_logps(token_logps(model, side, attention=self.args.packed_attention), side).view(-1, len(detached))
            sums.update(zip(detached, side_sums.unbind(1)))
            lengths.update(zip(detached, side.completion_lengths.view(-1, len(detached)).unbind(1)))
        as_matrix = lambda columns: torch.stack([columns[s] for s in range(slots)], dim=1)  # noqa: E731
        return as_matrix(sums), as_matrix(lengths).to(torch.float32), tokens, batch

    def reference_logps(self, model, inputs):
        """Summed reference log-probs [B, columns] (None for a reference-free method)."""
        return self.reference.batch_logps(model, inputs, lambda m, batch: self.slot_logps(m, batch, with_grad=False)[0])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:  # every process logs here (Trainer gathered the loss first)
            merged = self._merged_metrics()
            if merged.get("kl_on_samples_ess", 1.0) < MIN_WEIGHT_SHARE:  # one anchor carries it: noise, not drift
                merged.pop("kl_on_samples", None)
            for key, value in merged.items():
                logs[f"{self.args.objective}/{key}"] = value
            self._metrics.clear()
            for key, values in self._plain_metrics.items():
                logs[key] = _mean(values)
            self._plain_metrics.clear()
        if "loss" in logs:
            logs["skipped_nonfinite_steps"] = self.nonfinite_guard.skipped
        if self.pending_logs and "loss" in logs:
            logs.update(self.pending_logs)
            self.pending_logs.clear()
        super().log(logs, start_time)

    def _merged_metrics(self) -> dict[str, float]:
        """Metric means over every process: each one saw only its shard of the global batch."""
        local = {key: _mean(values) for key, values in self._metrics.items()}
        if self.args.world_size == 1:
            return local
        gathered = [None] * self.args.world_size
        torch.distributed.all_gather_object(gathered, local)
        keys = sorted({key for metrics in gathered for key in metrics})
        return {key: sum(m[key] for m in gathered if key in m) / sum(key in m for m in gathered) for key in keys}

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        from negalign.provenance import trained_prompts, write_provenance

        prompts = trained_prompts(self.train_dataset, self.retain.prompts if self.retain is not None else None)
        write_provenance(output_dir or self.args.output_dir, self.args, self.anchor_provenance, prompts)

    def create_model_card(self, *args, **kwargs) -> None:
        """negalign's model card (provenance.model_card), not the Trainer's draft: Trainer.push_to_hub calls this
        just before it uploads output_dir, and the Trainer's card would replace README.md there and on the Hub."""
        if not self.is_world_process_zero():
            return
        from negalign.files import atomic_write_text
        from negalign.provenance import model_card

        atomic_write_text(os.path.join(self.args.output_dir, "README.md"), model_card(self.args, self.anchor_provenance))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """A checkpoint's push (hub_strategy every_save, checkpoint, all_checkpoints) uploads output_dir, where the
        Trainer copies only the checkpoint's weights and tokenizer: the card and run files go with them."""
        if self.is_world_process_zero() and self.args.hub_strategy != "end":
            import shutil

            from negalign.provenance import RUN_FILES

            for name in ("README.md", *RUN_FILES):
                if os.path.isfile(os.path.join(checkpoint_folder, name)):
                    shutil.copy2(os.path.join(checkpoint_folder, name), os.path.join(self.args.output_dir, name))
        super()._push_from_checkpoint(checkpoint_folder)
