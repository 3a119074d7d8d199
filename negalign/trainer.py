"""One `transformers.Trainer` subclass for every objective.

The training step: pack the batch's completions padding-free, compute the policy's per-sequence
log-probs (completion positions only), take the reference log-probs from the cache (or a live reference),
hand both to the pure objective function, log its metrics.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

import torch
from transformers import Trainer

from negalign import objectives
from negalign.batches import PACKED_FIELDS
from negalign.guards import (  # noqa: F401 (importable from here, as before)
    CHECKPOINT,
    WEIGHT_GROWTH_LIMIT,
    CheckpointInterval,
    NonFiniteGuard,
    TrainingDiverged,
    checkpoint_minutes,
)
from negalign.logprobs import PackedBatch, pad_token_logps, reduce_token_logps, token_logps
from negalign.methods import Columns, Layout, method_loss
from negalign.reference import Reference

logger = logging.getLogger("negalign")
MIN_WEIGHT_SHARE = 0.05  # d2o/kl_on_samples is left out of a log line whose importance-weight share is below this


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
        from negalign.models import finish_tokenizer

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
        finish_tokenizer(tokenizer, args.chat_template)
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
