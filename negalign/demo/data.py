"""The demo's data stages: the model's answers to harmful prompts, flagged; anchors drawn under the refusal
context; benign anchors and benign refusals; the rows the baselines train on. Each stage's file is reused
when the demo is run again. DemoFiles names every file, by role, from the settings alone."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from negalign.demo.settings import DemoSettings
from negalign.files import atomic_write_text


def _log(message: str) -> None:
    print(f"[negalign demo] {message}", flush=True)


@contextmanager
def timed(timings: dict, stage: str):
    """Record in `timings[stage]` the seconds the block took (demo_timings.json); nothing when it raises."""
    clock = time.time()
    yield
    timings[stage] = time.time() - clock


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
    """The starting model, loaded once for the demo's sampling stages. With a generation server (settings.server)
    the answers come from it, through one client for every stage: the served model is checked once against the
    starting model (negalign.serving.check_served_model), and each samples file's meta records the server as
    `negalign sample` records it (engine, url, served model, the check; never the key)."""

    def __init__(self, settings: DemoSettings, base: str):
        self.settings, self.base, self._loaded = settings, base, None
        self.server = settings.server.client()
        if self.server is not None:
            _log(f"the starting model's answers come from the generation server {self.server.shown}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.close()

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
        # samples made otherwise (another model or sampling setting, or drawn locally where a server now answers:
        # the meta's engine) are refused, not redrawn in place: runs trained on them may sit in the same folder
        # (demo --overwrite moves the whole folder aside)
        report = sample(model, tokenizer, prompts, output, sampling, model_id=self.settings.model, server=self.server)
        _log(f"{what}: {report.n_rows_written} new, {report.n_rows_reused} reused "
             f"({report.tokens_per_second:.0f} tokens/s)")


@dataclass(frozen=True)
class DemoFiles:
    """The demo's files in its output folder, by role. A role these settings leave out (no anchors at k 0, no
    benign refusals without --benign-refusals) is None."""

    answers: Path  # the model's answers to the harmful prompts
    flagged: Path  # those judged complying: the harmful negatives, as `negalign flag` writes them
    negatives: Path  # the negatives D2O and the baselines read (with the benign refusals, a file of its own)
    harmful_anchors: Path | None = None  # the anchors drawn for the flagged prompts
    samples: Path | None = None  # D2O's anchors (with the benign refusals, every anchor)
    benign_samples: Path | None = None  # the benign prompts' plain anchors
    benign_answers: Path | None = None  # the benign prompts answered under the sampling context
    benign_refusals: Path | None = None  # those judged refusals
    d2o_negatives: Path | None = None  # --no-harmful-negatives: D2O's negatives, the benign refusals alone
    anchor_only: Path | None = None  # --no-harmful-negatives: every anchor as an anchor-only row
    anchors: Path | None = None  # every anchor: context distillation's rows
    pairs: Path | None = None  # the baselines' {prompt, chosen, rejected} rows


def demo_files(settings: DemoSettings, out: Path) -> DemoFiles:
    """The files prepare_data writes in `out`. Known from the settings alone, so that what a run will be
    trained on can be checked before any stage runs."""
    refusals = bool(settings.benign_refusals and settings.benign_prompts and settings.k)
    # a share below 1 names its files apart, so that a model trained on the other rows is not reused
    tag = "" if settings.benign_refusal_share == 1.0 else f"_share{settings.benign_refusal_share:g}"
    answered = DemoFiles(answers=out / "answers.jsonl", flagged=out / "negatives.jsonl",
                         negatives=out / (f"d2o_negatives{tag}.jsonl" if refusals else "negatives.jsonl"))
    if not settings.k:
        return answered
    samples = out / ("d2o_anchors.jsonl" if refusals else "samples.jsonl")
    benign_only = refusals and not settings.harmful_negatives
    return replace(
        answered, harmful_anchors=out / "samples.jsonl", samples=samples,
        benign_samples=out / "benign_samples.jsonl" if settings.benign_prompts else None,
        benign_answers=out / "benign_answers.jsonl" if refusals else None,
        benign_refusals=out / "benign_refusals.jsonl" if refusals else None,
        d2o_negatives=out / f"d2o_negatives_benign_only{tag}.jsonl" if benign_only else None,
        anchor_only=samples if benign_only else None,
        anchors=out / "d2o_anchors.jsonl" if settings.benign_prompts else samples,
        pairs=out / (f"train_pairs_benign_refusals{tag}.jsonl" if refusals else "train_pairs.jsonl"))


def prepare_data(settings: DemoSettings, out: Path, base: str, timings: dict) -> DemoFiles:
    """Sample the model's answers, flag the complying ones, draw the anchors: the files training reads."""
    from negalign.data.paths import data_dir

    folder, files = data_dir(settings.data_dir), demo_files(settings, out)
    with _Sampler(settings, base) as sampler:
        return _prepare(settings, files, sampler, folder, timings)


def _prepare(settings: DemoSettings, files: DemoFiles, sampler: _Sampler, folder: Path | None,
             timings: dict) -> DemoFiles:
    """prepare_data's stages, with the starting model (or its server) in `sampler`."""
    from negalign.evaluation.judge import HarmJudge
    from negalign.flag import flag_complying
    from negalign.sampling_context import resolve_context

    with timed(timings, "answers"):
        answer_harmful_prompts(settings, files, sampler, folder)
    with timed(timings, "flag"):
        judge = HarmJudge.load()  # loaded once: the benign refusals are flagged with it too
        report = flag_complying(files.answers, files.flagged, judge.complies)
    negatives = read_negatives(files, report)
    if not settings.k:
        return files
    context = resolve_context(settings.sampling_context, settings.sampling_instruction)
    with timed(timings, "anchors"):
        anchors = draw_anchors(settings, files, sampler, negatives, context)
    if settings.benign_prompts:
        with timed(timings, "benign_anchors"):
            benign, benign_anchors = draw_benign_anchors(settings, files, sampler, folder)
        if settings.benign_refusals:
            with timed(timings, "benign_refusals"):
                negatives = negatives + benign_refusals(settings, files, sampler, judge, benign, context)
                # D2O reads one negatives file and one anchors file: the harmful rows and the benign refusals
                _write_jsonl(files.negatives, negatives)
        write_every_anchor(files, anchors, benign_anchors)
        if settings.benign_refusals:  # the baselines pair each benign refusal with its prompt's plain anchor
            anchors = anchors + benign_anchors
    _write_jsonl(files.pairs, baseline_rows(negatives, anchors))
    return files


def answer_harmful_prompts(settings: DemoSettings, files: DemoFiles, sampler: _Sampler,
                           folder: Path | None) -> None:
    """The starting model's greedy answers to the harmful prompts."""
    from negalign.data.catalog import resolve_data
    from negalign.sampling import prompts_for_sampling

    sources = [resolve_data(name, settings.data_dir) for name in settings.harmful]
    prompts = prompts_for_sampling(sources, files.answers, settings.harmful_prompts, folder)
    sampler(prompts, files.answers, "the model's answers to harmful prompts", k=1, temperature=0.0, batch_size=64)


def read_negatives(files: DemoFiles, report: dict) -> list[dict]:
    """The flagged answers, said and read; none at all leaves nothing to train on."""
    _log(f"flagged {report['n_flagged']} of {report['n_answers']} answers as complying: the negatives"
         + _empty_note(report))
    negatives = _read_jsonl(files.flagged)
    if not negatives:
        raise ValueError(f"{files.answers}: the judge flagged none of the model's answers{_empty_note(report)}; "
                         "nothing to train on")
    return negatives


def draw_anchors(settings: DemoSettings, files: DemoFiles, sampler: _Sampler, negatives: list[dict],
                 context: list[dict] | None) -> list[dict]:
    """K anchors for each flagged prompt, drawn under the sampling context, and their report."""
    from negalign.anchors import format_report, report_samples_file

    sampler([n["prompt"] for n in negatives], files.harmful_anchors,
            f"anchors (context: {settings.sampling_context})", context=context, batch_size=32)
    _log(format_report(report_samples_file(files.harmful_anchors, str(files.flagged))))
    return _read_jsonl(files.harmful_anchors)


def draw_benign_anchors(settings: DemoSettings, files: DemoFiles, sampler: _Sampler,
                        folder: Path | None) -> tuple[list, list[dict]]:
    """K plain answers for each benign prompt: the prompts, and the anchors drawn."""
    from negalign.data.catalog import resolve_data
    from negalign.sampling import prompts_for_sampling

    benign = prompts_for_sampling([resolve_data(settings.benign, settings.data_dir)], files.benign_samples,
                                  settings.benign_prompts, folder)
    sampler(benign, files.benign_samples, "benign anchors", batch_size=64)
    return benign, _read_jsonl(files.benign_samples)


def benign_refusals(settings: DemoSettings, files: DemoFiles, sampler: _Sampler, judge, benign: list,
                    context: list[dict] | None) -> list[dict]:
    """The benign prompts answered greedily under the sampling context; the answers judged refusals (their
    seeded share) are negatives. With --no-harmful-negatives they are also D2O's only negatives."""
    from negalign.flag import flag_complying

    sampler(benign, files.benign_answers, f"benign prompts answered under the context ({settings.sampling_context})",
            k=1, temperature=0.0, batch_size=64, context=context)
    report = flag_complying(files.benign_answers, files.benign_refusals, judge.complies, keep="refusing")
    _log(f"flagged {report['n_flagged']} of {report['n_answers']} benign answers as refusals: negatives too"
         + _empty_note(report))
    refusals = keep_share(_read_jsonl(files.benign_refusals), settings.benign_refusal_share, settings.seed)
    if settings.benign_refusal_share < 1.0:
        _log(f"kept {len(refusals)} of them (share {settings.benign_refusal_share:g})")
    if files.d2o_negatives:
        # --no-harmful-negatives: D2O's negatives are the benign refusals alone, and every anchor is also
        # an anchor-only row's: training leaves out the prompts that have a negative, so the flagged
        # prompts and the benign prompts that were answered become the rows with no negative
        _write_jsonl(files.d2o_negatives, refusals)
    return refusals


def write_every_anchor(files: DemoFiles, anchors: list[dict], benign_anchors: list[dict]) -> None:
    """Every anchor D2O trains towards (the harmful prompts', then the benign ones'), in one file: the rows of
    context distillation, which reads nothing else (with the benign refusals, D2O's own anchors file)."""
    _write_jsonl(files.anchors, anchors + benign_anchors)
    write_mixed_meta(files.anchors, files.harmful_anchors, files.benign_samples, len(benign_anchors))


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
                           "sampling_context": other.get("sampling_context"), "settings": other.get("settings"),
                           **{key: other[key] for key in ("engine", "server") if key in other}}]
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
