"""The demo's data stages: the model's answers to harmful prompts, flagged; anchors drawn under the refusal
context; benign anchors and benign refusals; the rows the baselines train on. Each stage's file is reused
when the demo is run again."""

from __future__ import annotations

import json
import time
from pathlib import Path

from negalign.demo.settings import DemoSettings
from negalign.files import atomic_write_text


def _log(message: str) -> None:
    print(f"[negalign demo] {message}", flush=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def baseline_rows(negatives: list[dict], anchors: list[dict]) -> list[dict]:
    """{prompt, chosen, rejected} for the baselines: each flagged answer with its prompt's first anchor."""
    from negalign.data import prompt_key

    first = {}
    for row in sorted(anchors, key=lambda r: r["sample_index"]):
        first.setdefault(prompt_key(row["prompt"]), row["completion"])
    return [{"prompt": n["prompt"], "chosen": first[prompt_key(n["prompt"])], "rejected": n["rejected"]}
            for n in negatives if prompt_key(n["prompt"]) in first]


class _Sampler:
    """The starting model, loaded once for the demo's three sampling stages."""

    def __init__(self, settings: DemoSettings, base: str):
        self.settings, self.base, self._loaded = settings, base, None

    def __call__(self, prompts, output: Path, what: str, **changes):
        from negalign.models import load_model, load_tokenizer
        from negalign.sampling import SamplingSettings, sample

        if self._loaded is None:
            options = self.settings.model_options
            self._loaded = (load_tokenizer(self.base, options.trust_remote_code, options.chat_template),
                            load_model(self.base, options))
        tokenizer, model = self._loaded
        sampling = SamplingSettings(**{"k": self.settings.k, "max_new_tokens": self.settings.sample_max_new_tokens,
                                       "seed": self.settings.seed, "max_prompt_length": self.settings.training["max_prompt_length"],
                                       **changes})
        # samples made otherwise (another model or sampling setting) are refused, not redrawn in place: runs
        # trained on them may sit in the same folder (demo --overwrite moves the whole folder aside)
        report = sample(model, tokenizer, prompts, output, sampling, model_id=self.settings.model)
        _log(f"{what}: {report.n_rows_written} new, {report.n_rows_reused} reused "
             f"({report.tokens_per_second:.0f} tokens/s)")


def demo_files(settings: DemoSettings, out: Path) -> dict[str, Path]:
    """The files prepare_data leaves for training, by role: `negatives` (the baselines' and D2O's negatives),
    `samples` (D2O's anchors), `benign_samples`, `d2o_negatives` and `anchor_only` (--no-harmful-negatives:
    the benign refusals alone, and every anchor as an anchor-only row), `anchors` (every anchor: context
    distillation's rows) and `pairs` (the baselines' rows). Known from the settings alone, so that what a run
    will be trained on can be checked before any stage runs."""
    refusals = bool(settings.benign_refusals and settings.benign_prompts and settings.k)
    # a share below 1 names its files apart, so that a model trained on the other rows is not reused
    tag = "" if settings.benign_refusal_share == 1.0 else f"_share{settings.benign_refusal_share:g}"
    files = {"negatives": out / (f"d2o_negatives{tag}.jsonl" if refusals else "negatives.jsonl")}
    if not settings.k:
        return files
    files["samples"] = out / ("d2o_anchors.jsonl" if refusals else "samples.jsonl")
    if settings.benign_prompts:
        files["benign_samples"] = out / "benign_samples.jsonl"
    if refusals and not settings.harmful_negatives:
        files["d2o_negatives"] = out / f"d2o_negatives_benign_only{tag}.jsonl"
        files["anchor_only"] = files["samples"]
    files["anchors"] = out / "d2o_anchors.jsonl" if settings.benign_prompts else files["samples"]
    files["pairs"] = out / (f"train_pairs_benign_refusals{tag}.jsonl" if refusals else "train_pairs.jsonl")
    return files


def prepare_data(settings: DemoSettings, out: Path, base: str, timings: dict) -> dict:
    """Sample the model's answers, flag the complying ones, draw the anchors: the files training reads."""
    from negalign.data.catalog import resolve_data
    from negalign.data.paths import data_dir
    from negalign.evaluation.judge import HarmJudge
    from negalign.flag import flag_complying
    from negalign.sampling import prompts_for_sampling
    from negalign.sampling_context import resolve_context

    folder = data_dir(settings.data_dir)
    sampler, files = _Sampler(settings, base), demo_files(settings, out)
    clock = time.time()
    answers, flagged = out / "answers.jsonl", out / "negatives.jsonl"
    sources = [resolve_data(name, settings.data_dir) for name in settings.harmful]
    prompts = prompts_for_sampling(sources, answers, settings.harmful_prompts, folder)
    sampler(prompts, answers, "the model's answers to harmful prompts", k=1, temperature=0.0, batch_size=64)
    timings["answers"] = time.time() - clock

    clock = time.time()
    judge = HarmJudge.load()  # loaded once: the benign refusals are flagged with it too
    report = flag_complying(answers, flagged, judge.complies)
    timings["flag"] = time.time() - clock
    _log(f"flagged {report['n_flagged']} of {report['n_answers']} answers as complying: the negatives"
         + _empty_note(report))
    negatives = _read_jsonl(flagged)
    if not negatives:
        raise ValueError(f"{answers}: the judge flagged none of the model's answers{_empty_note(report)}; nothing "
                         "to train on")
    if not settings.k:
        return files

    clock = time.time()
    harmful_anchors = out / "samples.jsonl"
    context = resolve_context(settings.sampling_context, settings.sampling_instruction)
    sampler([n["prompt"] for n in negatives], harmful_anchors, f"anchors (context: {settings.sampling_context})",
            context=context, batch_size=32)
    from negalign.anchors import format_report, report_samples_file

    _log(format_report(report_samples_file(harmful_anchors, str(flagged))))
    timings["anchors"] = time.time() - clock

    anchors = _read_jsonl(harmful_anchors)
    if settings.benign_prompts:
        clock = time.time()
        benign = prompts_for_sampling([resolve_data(settings.benign, settings.data_dir)], files["benign_samples"],
                                      settings.benign_prompts, folder)
        sampler(benign, files["benign_samples"], "benign anchors", batch_size=64)
        timings["benign_anchors"] = time.time() - clock
        benign_anchors = _read_jsonl(files["benign_samples"])
        if settings.benign_refusals:
            clock = time.time()
            answers = out / "benign_answers.jsonl"
            sampler(benign, answers, f"benign prompts answered under the context ({settings.sampling_context})",
                    k=1, temperature=0.0, batch_size=64, context=context)
            report = flag_complying(answers, out / "benign_refusals.jsonl", judge.complies, keep="refusing")
            _log(f"flagged {report['n_flagged']} of {report['n_answers']} benign answers as refusals: negatives too"
                 + _empty_note(report))
            refusals = keep_share(_read_jsonl(out / "benign_refusals.jsonl"), settings.benign_refusal_share,
                                  settings.seed)
            if settings.benign_refusal_share < 1.0:
                _log(f"kept {len(refusals)} of them (share {settings.benign_refusal_share:g})")
            # D2O reads one negatives file and one anchors file: the harmful rows and the benign refusals
            negatives += refusals
            _write_jsonl(files["negatives"], negatives)
            if "d2o_negatives" in files:
                # --no-harmful-negatives: D2O's negatives are the benign refusals alone, and every anchor is also
                # an anchor-only row's: training leaves out the prompts that have a negative, so the flagged
                # prompts and the benign prompts that were answered become the rows with no negative
                _write_jsonl(files["d2o_negatives"], refusals)
            timings["benign_refusals"] = time.time() - clock
        # every anchor D2O trains towards (the harmful prompts' and the benign ones'), in one file: the rows of
        # context distillation, which reads nothing else (with the benign refusals, D2O's own anchors file)
        _write_jsonl(files["anchors"], anchors + benign_anchors)
        write_mixed_meta(files["anchors"], harmful_anchors, files["benign_samples"], len(benign_anchors))
        anchors = anchors + benign_anchors if settings.benign_refusals else anchors
    _write_jsonl(files["pairs"], baseline_rows(negatives, anchors))
    return files


def _empty_note(report: dict) -> str:
    """Empty answers are never negatives (flag leaves them out): say how many, where there were any."""
    empty = report.get("n_empty_left_out", 0)
    return f" ({empty} empty answers left out, never negatives)" if empty else ""


def write_mixed_meta(mixed: Path, harmful: Path, benign: Path, benign_rows: int) -> None:
    """d2o_anchors.jsonl's .meta.json: the harmful anchors' (model, weights, sampling context, which training
    checks against the recipe's), plus what the `benign_rows` benign anchors appended to them were drawn with,
    so that the trained model's card says both."""
    from negalign.anchors import anchor_source
    from negalign.sampling import META_SUFFIX

    meta, other = anchor_source(harmful), anchor_source(benign)
    if meta is None or other is None:  # samples made elsewhere: training says "unknown"
        return
    meta["mixed_with"] = [{"file": benign.name, "rows": benign_rows,
                           "sampling_context": other.get("sampling_context"), "settings": other.get("settings")}]
    atomic_write_text(Path(str(mixed) + META_SUFFIX), json.dumps(meta, indent=2) + "\n")


def keep_share(rows: list[dict], share: float, seed: int) -> list[dict]:
    """round(share x n) of the rows, drawn with the seed, in their file order (all of them at share 1)."""
    import random

    if share >= 1.0:
        return rows
    kept = sorted(random.Random(seed).sample(range(len(rows)), round(share * len(rows))))
    return [rows[i] for i in kept]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
