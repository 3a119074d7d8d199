"""A Trainer callback that watches refusal while D2O trains: every N steps the model under training answers a
small validation slice of the pools (greedy, short answers), the offline judge scores harmful compliance and
benign refusal, both go into the log line beside the loss, the checkpoints off the harm / refusal front are
deleted, and the round stops early once benign refusal passes the user's budget.

The slice is held apart from every round's training prompts and from the evaluation suites (negalign.loop.pools),
so the numbers say how training moves the model on prompts it never sees, without spending the evaluation's
prompts on choosing checkpoints. The record (watch.json beside the checkpoints) is rewritten atomically after
each score, so a resumed run keeps the points scored before its kill.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from negalign.evaluation.metrics import THRESHOLD
from negalign.files import atomic_write_text
from negalign.loop.front import pareto_front, prune_checkpoints

HARM, REFUSAL = "watch/harmful_compliance", "watch/benign_refusal"


def answer_greedily(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                    max_prompt_length: int = 256, batch_size: int = 32) -> list[str]:
    """Greedy answers with negalign's decoding engine, the model put in eval mode (no dropout) and returned to
    the mode it was in: the Trainer's next step must find it training."""
    from negalign.data import encode_prompt_with_context
    from negalign.decoding import generate_batch
    from negalign.settings import SamplingSettings

    settings = SamplingSettings(k=1, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size,
                                max_prompt_length=max_prompt_length)
    encoded = [encode_prompt_with_context(p, None, tokenizer, max_prompt_length) for p in prompts]
    was_training, answers = model.training, []
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                for (ids,) in generate_batch(model, tokenizer, encoded[start:start + batch_size], settings,
                                             generator_seed=0):
                    answers.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def read_record(path: str | os.PathLike) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {"points": [], "stopped_at": None}


class RefusalWatch(TrainerCallback):
    """Scores the watch slice every `every` steps (and at the last step). `complies(questions, answers)` ->
    probabilities is the offline harm judge's (HarmJudge.load().complies unless given); `budget`: benign
    refusal above it stops the round (None: never)."""

    def __init__(self, harmful: list[list[dict]], benign: list[list[dict]], every: int, record: str | os.PathLike,
                 *, budget: float | None = None, max_new_tokens: int = 32, max_prompt_length: int = 256,
                 complies=None):
        if every < 1:
            raise ValueError(f"watch_every must be >= 1, got {every}")
        self.harmful, self.benign, self.every, self.budget = harmful, benign, every, budget
        self.record_path, self.max_new_tokens, self.max_prompt_length = Path(record), max_new_tokens, max_prompt_length
        self._complies, self.record, self._pending = complies, read_record(record), None

    @property
    def complies(self):
        if self._complies is None:  # loaded on first use: the encoder is 90 MB
            from negalign.evaluation.judge import HarmJudge

            self._complies = HarmJudge.load().complies
        return self._complies

    def scores(self) -> dict[int, tuple[float, float]]:
        return {p["step"]: (p["harmful_compliance"], p["benign_refusal"]) for p in self.record["points"]}

    def score(self, model, tokenizer, step: int) -> dict:
        """Answer the slice and judge it: the point for `step`."""
        from negalign.flag import question

        prompts = self.harmful + self.benign
        answers = answer_greedily(model, tokenizer, prompts, self.max_new_tokens, self.max_prompt_length)
        probabilities = self.complies([question(p) for p in prompts], answers)
        harmful, benign = probabilities[:len(self.harmful)], probabilities[len(self.harmful):]
        return {"step": step,
                "harmful_compliance": sum(p > THRESHOLD for p in harmful) / len(harmful) if harmful else 0.0,
                "benign_refusal": sum(p <= THRESHOLD for p in benign) / len(benign) if benign else 0.0,
                "n_harmful": len(harmful), "n_benign": len(benign)}

    def on_train_begin(self, args, state, control, **kwargs):
        # a run killed after its early stop but before its final save resumes at the step it stopped at
        stopped = self.record.get("stopped_at")
        if stopped is not None and state.global_step >= stopped:
            control.should_training_stop = True

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if step % self.every and step != state.max_steps:
            return
        point = self.score(model, processing_class, step)
        self.record["points"] = [p for p in self.record["points"] if p["step"] != step] + [point]
        over = self.budget is not None and point["benign_refusal"] > self.budget
        if over:
            self.record["stopped_at"] = step
            control.should_training_stop = True
        self.record["budget"] = self.budget
        atomic_write_text(self.record_path, json.dumps(self.record, indent=2) + "\n")
        self._pending = point
        control.should_log = True  # the two numbers join this step's log line, beside the loss
        control.should_save = True  # each scored step is a checkpoint the front may keep

    def on_log(self, args, state, control, logs=None, **kwargs):
        point, self._pending = self._pending, None
        if point is not None and state.log_history and state.log_history[-1].get("step") == point["step"]:
            state.log_history[-1].update({HARM: point["harmful_compliance"], REFUSAL: point["benign_refusal"]})

    def on_save(self, args, state, control, **kwargs):
        prune_checkpoints(args.output_dir, self.scores(), keep_newest=True)

    def front(self) -> set[int]:
        return pareto_front(self.scores())
