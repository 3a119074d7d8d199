"""One `transformers.Trainer` subclass for every objective.

The training step: pack the batch's completions padding-free, compute the policy's per-sequence
log-probs (completion positions only), take the reference log-probs from the cache (or a live reference),
hand both to the pure objective function, log its metrics. What is particular to a method stays with its
Method (its loss, its arguments, which of its metrics a log line shows); the retain term is negalign.retain's,
the run's record beside every save negalign.provenance's.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from transformers import Trainer

from negalign.assemble import BUILT_FROM_KEYWORDS, trainer_inputs
from negalign.guards import CheckpointInterval, NonFiniteGuard, TrainingDiverged, checkpoint_minutes
from negalign.logprobs import Scoring, pad_token_logps, slot_logps
from negalign.methods import Columns, Layout, method_loss
from negalign.provenance import RecordsProvenance
from negalign.reference import Reference
from negalign.retain import RetainTerm

logger = logging.getLogger("negalign")


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def _mean(values: list) -> float:
    """The mean of logged values, tensors read back to the host here, once per log line."""
    return sum(float(v) for v in values) / len(values)


class NegalignTrainer(RecordsProvenance, Trainer):
    """`Trainer` whose loss is `args.objective` (a NegalignConfig), read from the [B, columns] log-prob
    matrices by slot name (`layout`: negalign.methods). Reference log-probs come from `reference`
    (negalign.reference.Reference: cached in the batch, live models, or the policy with its adapter off)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, layout: Layout | None = None, reference: Reference | None = None,
                 anchor_provenance: dict | None = None, retain=None, refresher=None,
                 **kwargs):
        """Collaborators, all optional: `reference` (negalign.reference.Reference; default: from the args),
        `anchor_provenance` (where D2O's anchors came from, negalign.anchors.anchor_provenance: written beside the
        saved model, and read by the method's log_metrics), `retain` (negalign.retain.RetainSet: rows mixed into
        every step, apart from the feedback rows; with retain_loss kl the reference keeps the starting model,
        Reference.keep_starting_model), `refresher` (negalign.refresh.SampleRefresher, sampling: refresh).

        `train_dataset` is what negalign.assemble makes (negalign.train hands in its TrainingSet), or, built the
        way TRL's trainers are, rows: `model=`, `args=` (a NegalignConfig), `train_dataset=` (a datasets.Dataset
        or list of rows in any format the data files take) and `processing_class=` (the tokenizer); the rows
        become examples, and the reference log-probs and the collator are made, by negalign.assemble, as for
        negalign.train (which also does LoRA, retain sets and refreshes). With `layout` given, `train_dataset`
        holds tokenised items already and nothing is made."""
        if layout is None:
            if args:
                raise ValueError(BUILT_FROM_KEYWORDS)
            layout, reference = trainer_inputs(kwargs, reference)
        super().__init__(*args, **kwargs)
        self.layout = layout
        self.scoring = Scoring.of(self.args)
        self.reference = reference or Reference(self.args, layout)
        self._metrics = defaultdict(list)
        self.pending_logs = {}  # extra values for the next log line (e.g. a sample refresh)
        self.anchor_provenance = anchor_provenance
        self.retain = retain
        self.retain_term = RetainTerm(retain, self.args, self.reference) if retain is not None else None
        if refresher is not None:
            refresher.trainer = self  # its refresh messages join the next log line
            self.add_callback(refresher)
        self._plain_metrics = defaultdict(list)  # logged under their own names, not the objective's
        self.nonfinite_guard = NonFiniteGuard(self.args.max_nonfinite_steps)
        self.add_callback(self.nonfinite_guard)
        if checkpoint_minutes(self.args) > 0:
            self.add_callback(CheckpointInterval(checkpoint_minutes(self.args)))

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
        # autocast: the precision the cached reference was computed in
        policy_sum, lengths, tokens, batch = slot_logps(model, inputs, self.layout, self.scoring, with_grad=True,
                                                        autocast=self.accelerator.autocast)
        policy = policy_sum if args.logp_reduction == "sum" else policy_sum / lengths
        ref = self.reference.batch_logps(model, inputs, self.accelerator.autocast)
        if ref is not None and args.logp_reduction == "mean":
            ref = ref / lengths
        token_level = pad_token_logps(tokens, batch) if self.layout.method.token_level else None
        columns = Columns(self.layout, policy, ref, policy_sum, lengths, token_level)
        loss, metrics = method_loss(columns, inputs, args)
        if self.retain_term is not None and model.training:  # evaluation and reference passes leave it out
            retain_loss, retain_metrics = self.retain_term(model, self.state.global_step, self.accelerator.autocast)
            self._plain_metrics["objective_loss"].append(loss.detach())
            for key, value in retain_metrics.items():
                self._plain_metrics[f"retain/{key}"].append(_detached(value))
            loss = loss + args.retain_weight * retain_loss
        # kept on the device until a log line needs them: a float() here would stall a GPU every step
        for key, value in {**metrics, "policy_logps": policy.mean()}.items():
            self._metrics[key].append(_detached(value))
        return (loss, {"policy_logps": policy}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:  # every process logs here (Trainer gathered the loss first)
            merged = self._merged_metrics()
            if self.layout.method.log_metrics is not None:
                merged = self.layout.method.log_metrics(merged, self.anchor_provenance)
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
