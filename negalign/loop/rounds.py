"""One round of the loop, and the starting model's round 0: mine, train D2O with the current model as policy
start and reference, evaluate on the suites and the reach check, and mark the round done.

A round is done only when round-r/done.json exists, written atomically after its last evaluation: a rerun skips
a done round whole, and resumes an unfinished one stage by stage (sample files append, training resumes from
its newest checkpoint, evaluation answers resume)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from negalign.files import atomic_write_text
from negalign.loop.mining import CurrentModel, compose, mine

DONE = "done.json"


def _log(message: str) -> None:
    print(f"[negalign loop] {message}", flush=True)


def read_done(folder: Path) -> dict | None:
    path = folder / DONE
    return json.loads(path.read_text()) if path.exists() else None


def model_options_for_training(settings) -> dict:
    """The loop's model options as training settings (as the demo passes them): float32 unless a dtype is
    asked for, the CPU when the device is the CPU."""
    options = settings.model_options
    out = {"attn_implementation": options.attn_implementation, "trust_remote_code": options.trust_remote_code,
           "chat_template": options.chat_template, "use_cpu": options.torch_device().type == "cpu"}
    if options.dtype != "auto":
        out.update(model_dtype=options.dtype, bf16=False)
    return out


def train_round(settings, start: str, files: dict, folder: Path, watch) -> str:
    """D2O on the round's files from `start` (policy start and reference) into folder/model; its path."""
    from negalign.loop.front import prune_checkpoints
    from negalign.pipeline import train
    from negalign.progress import quiet

    out = folder / "model"
    if not (out / "train_log.json").exists():
        saving = ({"save_strategy": "steps", "save_steps": settings.watch_every, "save_total_limit": None}
                  if watch is not None else {"save_strategy": "steps"})  # every tenth, newest two: resumable
        config = {**settings.training, "model": start, "objective": "d2o", "data": str(files["data"]),
                  "samples": str(files["samples"]), "k": settings.k,
                  "benign_samples": str(files["benign_samples"]) if files["benign_samples"] else None,
                  "sampling_context": files["sampling_context"], "beta": settings.beta, "alpha": settings.alpha,
                  "learning_rate": settings.learning_rate, "max_steps": settings.steps,
                  "per_device_train_batch_size": settings.batch_size, "seed": settings.seed, "output_dir": str(out),
                  "disable_tqdm": quiet(), **model_options_for_training(settings), **saving}
        train(config, callbacks=[watch] if watch is not None else None)
    if watch is not None:  # the run is over: only the front is left
        prune_checkpoints(out, watch.scores(), keep_newest=False)
    return str(out)


def evaluate_model(settings, model: str, reference: str, folder: Path, reach_files: list[str]) -> dict:
    """folder/eval (the suites, as `negalign eval` does, IFEval as configured) and folder/reach; an evaluation
    already finished is read, not redone."""
    from negalign.evaluation.evaluate import EvalSettings, evaluate

    common = dict(model=model, data_dir=settings.data_dir, max_new_tokens=settings.eval_max_new_tokens,
                  seed=settings.seed, progress=False, model_options=settings.model_options)
    results = {}
    plans = {"eval": dict(reference=reference, max_prompts=settings.eval_prompts, ifeval=settings.ifeval,
                          suites=settings.eval_suites)}
    if reach_files:  # no KL, no pairs: the suites' evaluation has them
        plans["reach"] = dict(prompt_files=list(reach_files), kl=False, max_pairs=0, ifeval="off")
    for name, plan in plans.items():
        record = folder / name / "eval.json"
        results[name] = (json.loads(record.read_text()) if record.exists() else
                         evaluate(EvalSettings(**common, **plan, output=str(folder / name))))
    return results


def starting_round(settings, start: str, folder: Path, reach_files: list[str]) -> dict:
    """Round 0: the starting model evaluated against itself (KL 0), the row every round is compared with."""
    done = read_done(folder)
    if done is not None:
        return done
    clock = time.time()
    _log(f"round 0: evaluating the starting model {start}")
    evaluate_model(settings, start, start, folder, reach_files)
    done = {"round": 0, "model": start, "trained": False, "mined": None, "watch": None, "kept_checkpoints": [],
            "seconds": {"evaluate": round(time.time() - clock, 1)}}
    atomic_write_text(folder / DONE, json.dumps(done, indent=2) + "\n")
    return done


def run_round(number: int, settings, pools, start: str, reference: str, folder: Path, earlier: list[Path],
              reach_files: list[str]) -> dict:
    """Round `number` from model `start`: its done record (read back if the round was done)."""
    from negalign.loop.front import pareto_front
    from negalign.loop.watch import RefusalWatch

    done = read_done(folder)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    prompts = {kind: pools.round_prompts(kind, per_round, number, settings.fresh_prompts) for kind, per_round in
               (("harmful", settings.harmful_prompts), ("benign", settings.benign_prompts))}
    _log(f"round {number}: {len(prompts['harmful'])} harmful and {len(prompts['benign'])} benign prompts, "
         f"answered by {start}")
    mined = mine(settings, prompts, CurrentModel(start, settings), folder, timings)
    _log(f"round {number}: mined {mined['harmful']['negatives']} harmful answers and {mined['benign']['negatives']} "
         "benign refusals")
    files = compose(settings, folder, earlier)
    watch = None
    if files is not None and settings.watch_every:
        watch = RefusalWatch(pools.watch["harmful"], pools.watch["benign"], settings.watch_every,
                             folder / "watch.json", budget=settings.refusal_budget,
                             max_new_tokens=settings.watch_max_new_tokens,
                             max_prompt_length=settings.training.get("max_prompt_length", 256))
    clock = time.time()
    if files is None:  # nothing flagged: the model goes on unchanged
        _log(f"round {number}: no negatives, nothing to train; the model is unchanged")
        model = start
    else:
        _log(f"round {number}: training D2O on {files['n_negatives']} negatives, {settings.steps} steps")
        model = train_round(settings, start, files, folder, watch)
    timings["train"] = time.time() - clock
    clock = time.time()
    evaluate_model(settings, model, reference, folder, reach_files)
    timings["evaluate"] = time.time() - clock
    record = json.loads((folder / "watch.json").read_text()) if (folder / "watch.json").exists() else None
    front = sorted(pareto_front({p["step"]: (p["harmful_compliance"], p["benign_refusal"])
                                 for p in record["points"]})) if record else []
    done = {"round": number, "model": model, "trained": files is not None, "mined": mined,
            "n_training_negatives": files["n_negatives"] if files else 0,
            "watch": "watch.json" if record else None, "stopped_at": record.get("stopped_at") if record else None,
            "kept_checkpoints": front, "seconds": {k: round(v, 1) for k, v in timings.items()}}
    atomic_write_text(folder / DONE, json.dumps(done, indent=2) + "\n")
    return done
