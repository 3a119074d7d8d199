"""What the training benchmarks share: a clock on negalign's optimizer steps, and the tokens a step lays out.

Imported by train_vs_trl.py and d2o_cost.py (run as scripts, so this folder is on sys.path).
"""

from __future__ import annotations

import threading
import time


class StepClock:
    """A TrainerCallback recording when each optimizer step ends; times[0] is when the trainer was built."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.times.append(time.time())

        self.times, self.callback = [time.time()], Callback()

    def attach_to_negalign(self) -> None:
        """Every NegalignTrainer built from now on carries this clock, restarted when the trainer is built
        (so model loading, tokenising and the reference pass are not counted as the first step)."""
        from negalign import trainer as trainer_module

        real_init, clock = trainer_module.NegalignTrainer.__init__, self

        def init_with_clock(trainer, *args, **kwargs):
            real_init(trainer, *args, **kwargs)
            trainer.add_callback(clock.callback)
            clock.times[0] = time.time()

        trainer_module.NegalignTrainer.__init__ = init_with_clock

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def token_counts(examples, tokenizer, *, max_length: int, max_prompt_length: int, share_prompts: bool) -> dict:
    """Token totals over `examples` [(prompt messages, [completions])], tokenised as negalign does:
    completion tokens, all tokens with the prompt repeated per completion (what a trainer without prompt
    sharing runs), and the tokens negalign lays out (each example's prompt once when `share_prompts`)."""
    from negalign.data import encode
    from negalign.logprobs import pack_sequences

    completion = total = laid_out = 0
    for prompt, completions in examples:
        encoded = [encode(prompt, c, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
                   for c in completions]
        sequences = [(e.prompt_ids, e.completion_ids) for e in encoded]
        completion += sum(len(c) for _, c in sequences)
        total += sum(len(p) + len(c) for p, c in sequences)
        laid_out += pack_sequences(sequences, share_prompts).input_ids.numel()
    return {"completion": completion, "all": total, "laid_out": laid_out}


class RssTimeline:
    """The process's resident memory sampled every `interval` seconds on a thread, with the peak and the
    wall-clock kept per stage (`mark(name)` starts a stage), so a benchmark can say where its peak RSS and its
    end-to-end time are spent: imports, loading the model, tokenising, the reference pass, the steps, the save."""

    def __init__(self, interval: float = 0.02):
        import os

        self._page = os.sysconf("SC_PAGE_SIZE")
        self.peaks: dict[str, float] = {}
        self.seconds: dict[str, float] = {}  # wall-clock per stage, summed over its visits
        self.stage, self._since, self._stop = "start", time.time(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def rss_gb(self) -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page / 1e9

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self._record()
            time.sleep(interval)

    def _record(self) -> None:
        rss = self.rss_gb()
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), rss)

    def mark(self, stage: str) -> None:
        self._record()  # the stage that ends keeps its last reading
        now = time.time()
        self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + now - self._since
        self.stage, self._since = stage, now
        self._record()

    def stop(self) -> dict[str, dict[str, float]]:
        """{stage: {"peak_rss_gb", "seconds"}} in the order the stages began."""
        self.mark("end")
        self._stop.set()
        self._thread.join()
        return {name: {"peak_rss_gb": round(self.peaks[name], 3), "seconds": round(self.seconds[name], 2)}
                for name in self.seconds}

    def wrap(self, owner, name: str, stage: str) -> None:
        """Mark `stage` whenever owner.name (a function or method) is called."""
        real, timeline = getattr(owner, name), self

        def marked(*args, **kwargs):
            timeline.mark(stage)
            return real(*args, **kwargs)

        setattr(owner, name, marked)


def preload_prefix() -> str:
    """`LD_PRELOAD=<library names> ` when this process was started with one (file names only, no machine
    paths), so a recorded command says which allocator both tools ran on; "" otherwise."""
    import os

    libraries = [entry.rsplit("/", 1)[-1] for entry in os.environ.get("LD_PRELOAD", "").replace(":", " ").split()]
    return f"LD_PRELOAD={':'.join(libraries)} " if libraries else ""
