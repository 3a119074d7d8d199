"""Standard benchmarks through lm-evaluation-harness (the optional `harness` extra: pip install lm-eval).

`run_lm_eval` runs lm-eval's own tasks (MMLU, ARC, HellaSwag, ... or a task YAML of yours over local files) on the
model object `negalign eval` already holds, through lm-eval's Python API (`HFLM(pretrained=<model>)`,
`simple_evaluate`), and returns a small JSON-able summary: each task's metrics with their standard errors, the
samples scored and lm-eval's version. Nothing of lm-eval's task code is copied here. docs/harness.md says how to run
MMLU and ARC with Hub access, and a local task offline."""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.util
import math
import os
import random

INSTALL = "install negalign[harness] (pip install lm-eval) to run lm-eval tasks"


def check_lm_eval(tasks) -> None:
    """Refuse lm-eval tasks when lm-eval is not installed: one line, raised before a model loads (a ValueError,
    which `negalign` prints as one line and exits 2)."""
    if tasks and importlib.util.find_spec("lm_eval") is None:
        raise ValueError(f"lm_eval_tasks {list(tasks)} asked for, but lm-eval is not installed: {INSTALL}")


def lm_eval_version() -> str | None:
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        return None


def run_lm_eval(model, tokenizer, tasks: list[str], *, include_path: str | None = None, limit: int | float | None = None,
                batch_size: int = 8, num_fewshot: int | None = None, apply_chat_template: bool = False,
                bootstrap_iters: int = 1000, seed: int = 0) -> dict:
    """Run lm-eval `tasks` (names of its tasks, groups or tags; or of task YAMLs in `include_path`) on `model`, a
    loaded causal LM (a transformers PreTrainedModel or a PEFT model around one) on its own device, scored with
    `tokenizer`. `limit`: samples per task (an int, or a fraction below 1; lm-eval says to use it only for tests
    and quick looks). `num_fewshot`: overrides each task's default (None: the task's own, 0 when it names none).
    `bootstrap_iters`: resamples for the standard errors lm-eval bootstraps (perplexity, F1, BLEU, ...; accuracy
    has a closed form); they run in this process. The model's train/eval mode and the random generators' states
    are as they were on return.

    Returns {"lm_eval_version", "requested", "settings", "tasks": {name: {"metrics": {metric: {"value", "stderr"}},
    "n", "n_total", "num_fewshot", "higher_is_better", "version"[, "subtasks"]}}}: every task and group lm-eval
    reports (a group such as mmlu also lists its subtasks, and its n sums theirs). A metric that lm-eval computes
    after a filter other than "none" is named METRIC,FILTER (gsm8k's "exact_match,strict-match").

    A missing lm-eval, an unknown task name and a task whose data cannot be loaded (a Hub data set while offline)
    raise ValueError with one line saying what to install or fetch."""
    tasks = list(tasks)
    check_lm_eval(tasks)
    if not tasks:
        raise ValueError("run_lm_eval: no lm-eval task named")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    # lm-eval's HFLM sets a pad token on a tokenizer without one: a copy keeps the caller's as it was
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer = copy.deepcopy(tokenizer)
    was_training = getattr(model, "training", False)
    try:
        with _kept_random_state(), _serial_bootstrap(), _quiet_lm_eval():
            manager = _task_manager(tasks, include_path)
            # each task built (its data set loaded) first, so that a missing one is named in one line
            loaded = [_load_task(manager, name, include_path) for name in tasks]
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            results = lm_eval.simple_evaluate(
                model=lm, tasks=[obj for objs in loaded for obj in objs], task_manager=manager, limit=limit,
                num_fewshot=num_fewshot, apply_chat_template=apply_chat_template, bootstrap_iters=bootstrap_iters,
                log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed)
    finally:
        model.train(was_training)
    settings = {"include_path": include_path, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                "apply_chat_template": apply_chat_template, "bootstrap_iters": bootstrap_iters, "seed": seed}
    return {"lm_eval_version": lm_eval_version(), "requested": tasks, "settings": settings,
            "tasks": summarize(results)}


def summarize(results: dict) -> dict:
    """lm-eval's results dict -> {task or group: {metrics: {name: {value, stderr}}, n, n_total, num_fewshot,
    higher_is_better, version[, subtasks]}}, JSON-able (NaN and lm-eval's "N/A" stderr -> None)."""
    subtasks = results.get("group_subtasks", {})
    counts = results.get("n-samples", {})

    def leaves(name: str) -> list[str]:
        if name not in subtasks:
            return [name]
        return [leaf for child in subtasks[name] for leaf in leaves(child)]

    summary = {}
    for name, entry in results["results"].items():
        metrics = {}
        for key, value in entry.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, kind = key.split(",", 1)
            label = metric if kind == "none" else key
            metrics[label] = {"value": _number(value), "stderr": _number(entry.get(f"{metric}_stderr,{kind}"))}
        known = [counts[leaf] for leaf in leaves(name) if leaf in counts]
        summary[name] = {
            "metrics": metrics,
            "n": sum(int(c["effective"]) for c in known) if known else None,
            "n_total": sum(int(c["original"]) for c in known) if known else None,
            "num_fewshot": results.get("n-shot", {}).get(name),
            "higher_is_better": results.get("higher_is_better", {}).get(name, {}),
            "version": results.get("versions", {}).get(name),
        }
        if name in subtasks:
            summary[name]["subtasks"] = list(subtasks[name])
    return summary


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # lm-eval writes "N/A" where it has no stderr
    return float(value) if math.isfinite(value) else None


def _task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's task index: the include_path alone when it defines every task asked for (indexing lm-eval's
    ~15,000 built-in task YAMLs takes seconds), else lm-eval's tasks with the include_path's over them."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not os.path.isdir(include_path):
            raise ValueError(f"lm_eval_include_path {include_path}: no such folder (a folder of lm-eval task YAMLs)")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(_known(local, name) for name in tasks):
            return local
    return TaskManager(include_path=include_path)


def _known(manager, name: str) -> bool:
    return name in manager.all_tasks or name in manager.all_groups or name in manager.all_tags


def _load_task(manager, name: str, include_path: str | None) -> list:
    """One task, group or tag built (its data set loaded), or one line saying why not."""
    if not _known(manager, name):
        where = f"lm-eval's tasks or {include_path}" if include_path else "lm-eval's tasks"
        raise ValueError(f"lm-eval task {name!r} is not in {where} (`lm-eval ls tasks` lists lm-eval's; a task of "
                         "your own is a YAML in lm_eval_include_path)")
    try:
        built = manager.load([name])
    except Exception as error:  # noqa: BLE001 - whatever the data set's loader raises, said in one line
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"lm-eval task {name!r}: its data set could not be loaded ({reason}); it must be "
                         "downloadable from the Hugging Face Hub, or given locally as a task YAML over local files "
                         "in lm_eval_include_path (docs/harness.md)") from error
    if name in built["groups"]:
        return [built["groups"][name]]
    if name in built["tasks"]:
        return [built["tasks"][name]]
    return [*built["tasks"].values()]  # a tag: its tasks


@contextlib.contextmanager
def _kept_random_state():
    """simple_evaluate seeds Python's, NumPy's and torch's generators; the rest of an evaluation keeps its own."""
    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _serial_bootstrap():
    """lm-eval bootstraps standard errors in a multiprocessing pool of one process per CPU unless
    DISABLE_MULTIPROC is set: forking a process that holds a model for a few thousand resamples costs more
    than it saves."""
    before = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = before


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval logs each setting at INFO, and warns that a model object leaves model arguments unused and runs in
    one process (both expected here): its other warnings and errors still show."""
    import logging

    root, hf = logging.getLogger("lm_eval"), logging.getLogger("lm_eval.models.huggingface")
    level = root.level
    root.setLevel(logging.WARNING)
    hf.addFilter(_drop_unused_arguments_warning)
    try:
        yield
    finally:
        hf.removeFilter(_drop_unused_arguments_warning)
        root.setLevel(level)


def _drop_unused_arguments_warning(record) -> bool:
    message = str(record.msg)
    return not message.startswith(("`pretrained` model kwarg is not of type `str`",
                                   "Passed an already-initialized model through `pretrained`"))


def markdown_section(runs: list[tuple[str, dict | None]]) -> list[str]:
    """The report's lines for lm-eval results: one row per requested task and metric, one column per model
    (label, its eval.json "lm_eval" entry or None), cells "value ± stderr (n=N)". No lines when no run has any."""
    if not any(entry for _, entry in runs):
        return []
    rows: list[tuple[str, str]] = []
    for _, entry in runs:
        for task in (entry or {}).get("requested", []):
            for metric in (entry["tasks"].get(task) or {}).get("metrics", {}):
                if (task, metric) not in rows:
                    rows.append((task, metric))
    versions = sorted({entry.get("lm_eval_version") or "?" for _, entry in runs if entry})
    lines = ["", "## Standard benchmarks (lm-evaluation-harness)", "",
             f"Tasks run by lm-eval {', '.join(versions)} on each model; ± is lm-eval's standard error, n the "
             "samples scored (fewer than the task's with a limit).", "",
             "| task | metric | " + " | ".join(label for label, _ in runs) + " |", "|---|---|" + "---|" * len(runs)]
    for task, metric in rows:
        cells = []
        for _, entry in runs:
            result = ((entry or {}).get("tasks") or {}).get(task) or {}
            value = result.get("metrics", {}).get(metric)
            if not value or value.get("value") is None:
                cells.append("-")
                continue
            stderr = f" ± {value['stderr']:.3f}" if value.get("stderr") is not None else ""
            cells.append(f"{value['value']:.3f}{stderr} (n={result.get('n')})")
        arrow = {True: " ↑", False: " ↓"}.get(_higher_is_better(runs, task, metric), "")
        lines.append(f"| {task} | {metric}{arrow} | " + " | ".join(cells) + " |")
    return lines


def _higher_is_better(runs, task: str, metric: str):
    for _, entry in runs:
        known = (((entry or {}).get("tasks") or {}).get(task) or {}).get("higher_is_better", {})
        if metric.split(",")[0] in known:  # "exact_match,strict-match" -> exact_match's direction
            return known[metric.split(",")[0]]
    return None
