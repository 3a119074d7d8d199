"""The Trainer callbacks that guard a run: the non-finite and divergence guard (one read-back a step), the
minimum interval between checkpoints, and a stop on SIGINT / SIGTERM after the step under way, saved as a
checkpoint (negalign.interrupts holds the signal handling every command shares)."""

from __future__ import annotations

import logging
import math
import os
import re
import time

import torch
from transformers import TrainerCallback

from negalign.checkpoints import checkpoint_problem, newest_checkpoint
from negalign.interrupts import Interrupted, finish_then_stop, signal_name, stop_requested

logger = logging.getLogger("negalign")


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


class StopOnSignal(TrainerCallback):
    """Ends training after the step under way when SIGINT / SIGTERM asked to stop, saving a checkpoint of it."""

    def on_step_end(self, args, state, control, **kwargs):
        if stop_requested() is not None:
            control.should_save = control.should_training_stop = True


def train_until_done_or_stopped(trainer, checkpoint: str | None) -> None:
    """trainer.train(); a first SIGINT / SIGTERM finishes the step under way, saves it as a checkpoint and raises
    Interrupted, one line saying where to resume (a second stops at once). One process only: under a
    multi-process launch every process would stop at its own step."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        trainer.train(resume_from_checkpoint=checkpoint)
        return
    callbacks = trainer.callback_handler.callbacks  # before the divergence guard, which may still veto the save
    guard = next((i for i, c in enumerate(callbacks) if isinstance(c, NonFiniteGuard)), len(callbacks))
    callbacks.insert(guard, StopOnSignal())
    with finish_then_stop("training step"):
        trainer.train(resume_from_checkpoint=checkpoint)
        signum, step, out = stop_requested(), trainer.state.global_step, trainer.args.output_dir
        if signum is None or step >= trainer.state.max_steps:
            return
        saved = os.path.join(out, f"checkpoint-{step}")
        if checkpoint_problem(saved) is not None and not getattr(trainer.nonfinite_guard, "zero_in_a_row", 0):
            trainer._save_checkpoint(trainer.model, trial=None)  # a save that a checkpoint interval skipped
        where = (f"saved {saved}: rerun the same command to resume from it" if checkpoint_problem(saved) is None
                 else f"rerun the same command to resume from {newest_checkpoint(out, quiet=True) or 'the start'}")
        raise Interrupted(f"stopped by {signal_name(signum)} after step {step} of {trainer.state.max_steps}; {where}",
                          signum)
