"""`negalign.train(...)`: feedback file -> tokenised items -> cached reference log-probs -> trained model."""

from __future__ import annotations

import functools
import json
import logging
import os

from transformers import TrainerCallback

from negalign.batches import collate, prepare_items
from negalign.checkpoints import (
    checkpoint_problem,
    claim_output_dir,
    model_changed,
    newest_checkpoint,
    refuse_or_warn,
    resolve_checkpoint,
    training_inputs,
)
from negalign.checkpoints import checkpoint_step as _step
from negalign.config import NegalignConfig, load_config
from negalign.data import DataError
from negalign.data.readers import IN_MEMORY
from negalign.files import atomic_write_text, portable
from negalign.heap import allocator_hint, set_mmap_threshold
from negalign.interrupts import Interrupted, finish_then_stop, signal_name, stop_requested
from negalign.locks import output_lock
from negalign.methods import method
from negalign.models import BASE_RECORD, base_record, check_model, finish_tokenizer, load_model, load_tokenizer, model_fingerprint, model_name
from negalign.outputs import DiskFull, check_before_lock, is_disk_full
from negalign.provenance import input_fingerprints
from negalign.reference import Reference
from negalign.refresh import REFRESH_FILE, SampleRefresher
from negalign.retain import prepare_retain
from negalign.trainer import NegalignTrainer

logger = logging.getLogger("negalign")


def _as_config(config, overrides: dict) -> NegalignConfig:
    if isinstance(config, NegalignConfig) and not overrides:
        return config
    if isinstance(config, NegalignConfig):
        return load_config(None, {**{k: v for k, v in config.to_dict().items() if not k.startswith("_")},
                                  **overrides})
    if isinstance(config, (str, os.PathLike)):
        return load_config(str(config), overrides)
    return load_config(None, {**(config or {}), **overrides})


def check_launch(config: NegalignConfig) -> None:
    """A multi-process launch that the config does not join would train N independent copies that all
    write output_dir (what happens under `accelerate launch`/`torchrun` on a machine without GPUs unless
    use_cpu is set, since only use_cpu selects the gloo backend there)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and config.world_size != launched:
        raise ValueError(f"launched as {launched} processes, but training would run in {config.world_size}: "
                         "on a machine without GPUs set use_cpu: true (the gloo backend); see docs/distributed.md")
    if launched > 1 and config.retain_data:
        raise ValueError("retain_data runs in one process only for now (its second forward per step is not checked "
                         "under DDP); train it without a multi-process launcher")
    if launched > 1 and config.sampling == "refresh":
        raise ValueError("sampling: 'refresh' runs in one process only for now (every process would append the "
                         "same refreshed samples to one file); train it without a multi-process launcher")


def check_refresh_folder(config: NegalignConfig, checkpoint: str | None) -> None:
    """Refreshed samples are keyed by step, not by the weights that drew them: a new run (not a resume) must
    not find an earlier run's in its output_dir, or it would train on that run's samples."""
    folder = os.path.join(config.output_dir, "refreshed_samples")
    if config.sampling != "refresh" or checkpoint or not os.path.isdir(folder):
        return
    if any(REFRESH_FILE.search(name) for name in os.listdir(folder)):
        raise ValueError(f"{folder} holds samples refreshed by an earlier run; a new run would reuse them as its "
                         "own. Resume that run (resume_from_checkpoint: true), or use another output_dir, or "
                         "delete the folder")


def _check_sources(config: NegalignConfig) -> None:
    """Fail on a missing local data or samples file before the tokenizer (and a model conversion) loads."""
    from negalign.data.readers import iter_records, looks_like_path

    for key in ("data", "samples"):
        name = getattr(config, key)
        if name and looks_like_path(str(name)) and not os.path.exists(os.path.expanduser(str(name))):
            try:
                iter_records(str(name))
            except DataError as error:
                raise DataError(error.where, f"{error.reason} (set by `{key}`)") from None


def anchor_provenance(config: NegalignConfig, policy, fingerprint: str | None = None) -> dict | None:
    """Where D2O's anchors come from: the sampling context (from the samples file's meta for static samples,
    from the config under `sampling: refresh`) and whether they were drawn from the reference pi_r- itself
    with no context, the one case where `d2o/kl_on_samples` estimates a KL. A `sampling_context` set in the
    config must match the one a static samples file was drawn with. `fingerprint`: the policy's, if known."""
    from negalign.anchors import anchor_source
    from negalign.sampling_context import context_hash, describe, resolve_context

    if not method(config.objective).anchored or config.k == 0:
        return None
    # D2O reads its anchors from `samples`; context distillation from `data`
    samples = config.data if method(config.objective).anchors_in_data else config.samples
    wanted = resolve_context(config.sampling_context, config.sampling_instruction)
    if config.sampling == "refresh":
        return {"sampling": "refresh", "sampling_context": describe(wanted), "from_reference": False}
    meta = anchor_source(samples)
    if meta is None:
        logger.warning("negalign: %s has no .meta.json: the sampling context and model of its anchors are "
                       "unknown (d2o/kl_on_samples is not logged)", samples)
        return {"sampling": "static", "samples": samples, "sampling_context": "unknown",
                "from_reference": False}
    drawn = (meta.get("sampling_context") or {}).get("messages")
    if (config.sampling_context or config.sampling_instruction) and context_hash(drawn) != context_hash(wanted):
        raise ValueError(f"sampling_context: {samples} was drawn with another sampling context "
                         f"({context_hash(drawn) or 'none'} vs {context_hash(wanted)} asked for here); resample "
                         "with `negalign sample --sampling-context ...` or drop sampling_context from the config")
    minus_name = config.ref_model or config.model  # pi_r-
    from_reference = (drawn is None and minus_name == config.model
                      and meta.get("weights") == (fingerprint or model_fingerprint(policy)))
    out = {"sampling": "static", "samples": samples, "sampling_context": describe(drawn),
           "samples_model": meta.get("model"), "from_reference": from_reference}
    if meta.get("server"):  # drawn through a generation server: where, which served model, its model check
        out["samples_server"] = meta["server"]
    if meta.get("mixed_with"):  # a file of anchors drawn two ways (the demo's harmful and benign anchors)
        out["mixed_with"] = [{"file": m.get("file"), "rows": m.get("rows"),
                              "sampling_context": describe((m.get("sampling_context") or {}).get("messages"))}
                             for m in meta["mixed_with"]]
        out["from_reference"] = False
    return out


def apply_lora(model, config: NegalignConfig):
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def resume_refresher(refresher: SampleRefresher, model, checkpoint: str | None) -> None:
    """D2O `sampling: refresh` resumed: reload the newest refresh the checkpoint had seen."""
    if checkpoint:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
            step = json.load(handle)["global_step"]
        logger.info("negalign: resumed at step %d with the samples refreshed at step %s",
                       step, refresher.apply_latest(step, model))


class _StopOnSignal(TrainerCallback):
    """Ends training after the step under way when SIGINT / SIGTERM asked to stop, saving a checkpoint of it."""

    def on_step_end(self, args, state, control, **kwargs):
        if stop_requested() is not None:
            control.should_save = control.should_training_stop = True


def _train_until_done_or_stopped(trainer: NegalignTrainer, checkpoint: str | None) -> None:
    """trainer.train(); a first SIGINT / SIGTERM finishes the step under way, saves it as a checkpoint and raises
    Interrupted, one line saying where to resume (a second stops at once). One process only: under a
    multi-process launch every process would stop at its own step."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        trainer.train(resume_from_checkpoint=checkpoint)
        return
    callbacks = trainer.callback_handler.callbacks  # before the divergence guard, which may still veto the save
    guard = next((i for i, c in enumerate(callbacks) if type(c).__name__ == "NonFiniteGuard"), len(callbacks))
    callbacks.insert(guard, _StopOnSignal())
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


def _disk_full(output_dir: str) -> DiskFull:
    """The full disk as one line: what was being saved and where a rerun resumes from."""
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    last = newest_checkpoint(output_dir, quiet=True)
    cut = sorted((int(name.split("-")[1]), name) for name in names
                 if name.startswith("checkpoint-") and name.split("-")[1].isdigit()
                 and checkpoint_problem(os.path.join(output_dir, name)) is not None)
    being = os.path.join(output_dir, cut[-1][1]) if cut else output_dir
    return DiskFull(f"no space left on device while saving {being}; free some space (or lower save_total_limit) "
                    f"and rerun the same command: it resumes from {last or 'the start (no complete checkpoint)'}")


def train(config: NegalignConfig | dict | str | None = None, *, model=None, tokenizer=None, train_dataset=None,
          **overrides) -> NegalignTrainer:
    """Train with any objective. `config` is a NegalignConfig, a dict of its fields, or a YAML recipe path;
    keyword overrides win. What you already hold can be passed instead of names: `model` (a loaded
    PreTrainedModel, or a PeftModel whose adapter is trained), `tokenizer`, `train_dataset` (a datasets.Dataset
    or a list of dicts, in any format the data files take). Returns the trainer: `.model` is the trained model,
    `.state.log_history` the logged metrics, `.args.output_dir` where the model was saved."""
    if isinstance(model, (str, os.PathLike)):  # train(model="name", ...): the config field, not an object
        overrides["model"], model = str(model), None
    if train_dataset is not None:
        given = config.get("data") if isinstance(config, dict) else getattr(config, "data", None)
        if overrides.get("data") or (given and given != IN_MEMORY):
            raise ValueError("give the training rows once: `data` (a file or data set name) or train_dataset")
        overrides["data"] = IN_MEMORY
    if model is not None:
        overrides["model"] = _model_name(model, tokenizer)
    config = _as_config(config, overrides)
    if model is not None and config.use_lora and hasattr(model, "peft_config"):
        raise ValueError("model is already a PeftModel, whose adapter is trained: leave use_lora off")
    if not config.data:
        raise ValueError("no training data: set `data` to a feedback file or data set name")
    check_launch(config)
    if int(os.environ.get("RANK", "0")) != 0:  # one lock per run: the main process holds it for all of them
        return _train(config, model, tokenizer, train_dataset)
    # a model that cannot load, an output_dir inside an input or under a file: refused before its lock file
    if model is None:
        for key in ("model", "ref_model", "ref_plus_model"):
            if getattr(config, key):
                check_model(getattr(config, key), key)
    check_before_lock(config.output_dir, training_inputs(config), folder=True, option="output_dir")
    with output_lock(config.output_dir, "training", wait=config.wait_for_lock):
        claim_output_dir(config)  # never over a folder that is not a run, or a finished run, unless overwrite
        from negalign.progress import quietly

        with quietly(config.disable_tqdm):  # the Trainer's bar off: negalign's bars (reference pass ...) too
            return _train(config, model, tokenizer, train_dataset)


def _model_name(model, tokenizer) -> str:
    """What a model object is called in the run's records and reference cache names: its name_or_path (for a
    PeftModel its base's). Without one, the tokenizer must be given (nothing to load it from)."""
    name = model_name(model)
    if not name and tokenizer is None:
        raise ValueError("model has no name_or_path to load its tokenizer from: pass tokenizer= as well")
    return name or "in-memory-model"


def _train(config: NegalignConfig, model=None, tokenizer=None, rows=None) -> NegalignTrainer:
    checkpoint = resolve_checkpoint(config)
    check_refresh_folder(config, checkpoint)
    _check_sources(config)
    if not set_mmap_threshold(config.host_mmap_threshold_mb) and (hint := allocator_hint()):
        logger.info("negalign: %s", hint)
    if tokenizer is None:
        tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.chat_template)
    else:
        finish_tokenizer(tokenizer, config.chat_template)
    prepared = prepare_items(config, tokenizer, rows)
    if not prepared.items:
        raise ValueError(f"{config.data}: no training examples for objective {config.objective!r}")
    logger.info("negalign: %s", prepared.summary())
    layout = method(config.objective).layout(len(prepared.items[0]["sequences"]))
    if model is None:
        model = load_model(config.model, config.model_options())
    config.check_context_length(model)  # before the reference pass: every sequence fits the model's positions
    # what the run starts from, recorded in every save (inputs.json) for a resume to compare: the input files'
    # contents, then the starting weights (a model's path may change, e.g. another machine's cache, its weights not)
    config._inputs = {**input_fingerprints(config.to_dict()), "model": model_fingerprint(model)}
    if checkpoint:  # resume_from_checkpoint set (true or a folder): the user asked for this checkpoint
        refuse_or_warn(config.output_dir, config.resume_from_checkpoint not in (None, ""), checkpoint,
                       model_changed(checkpoint, config.model, config._inputs["model"]))
    anchors = anchor_provenance(config, model, config._inputs["model"])  # before any weight changes
    reference = Reference(config, layout)
    # one process per node computes and caches; the others then read the cache (written atomically)
    with config.main_process_first(local=True, desc="reference log-probs"):
        report = reference.prepare(prepared.items, model, config.device)
    if report:
        logger.info("negalign: reference log-probs: %s", report)
    # the retain set needs the starting model (self answers, kl reference) before LoRA or training change it
    retain = prepare_retain(config, tokenizer, model, config.output_dir if config.should_save else None)
    if retain is not None:
        logger.info("negalign: retain set: %d sequences from %s (%d of %d prompts removed as evaluation "
                       "prompts), loss %s x %s", retain.summary["n_sequences"], config.retain_data,
                       retain.summary["n_removed"], retain.summary["n_selected"], config.retain_loss,
                       config.retain_weight)
        if config.retain_loss == "kl":
            reference.keep_starting_model(model, config.device)
    # a LoRA run records its base's weights: export --merge (any load of the run) refuses a base changed since
    base = base_record(config.model, model, config._inputs["model"]) if config.use_lora and config.should_save else None
    if config.use_lora:
        model = apply_lora(model, config)
    refresher = None
    if config.sampling == "refresh":
        prompts = list({item["prompt_key"]: item["prompt"] for item in prepared.items}.values())
        refresher = SampleRefresher(config, tokenizer, prepared.items, prompts, reference)
    trainer = NegalignTrainer(model=model, args=config, train_dataset=prepared.items,
                              data_collator=functools.partial(collate, layout=layout,
                                                                share_prompts=config.share_prompts),
                              processing_class=tokenizer, layout=layout, reference=reference,
                              anchor_provenance=anchors, retain=retain,
                              refresher=refresher)
    if refresher is not None:
        resume_refresher(refresher, trainer.model, checkpoint)
    try:
        if checkpoint and 0 < config.max_steps <= _step(checkpoint):
            # the run had finished its steps (a rerun, or a kill during the final save); Trainer would take one
            # more step past max_steps when resumed there, so load the checkpoint instead of training from it
            from transformers import TrainerState

            logger.warning("negalign: %s is at step %d of %d: nothing left to train; saving it as the final model",
                           checkpoint, _step(checkpoint), config.max_steps)
            trainer._load_from_checkpoint(checkpoint)
            trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        else:
            _train_until_done_or_stopped(trainer, checkpoint)
        trainer.save_model(config.output_dir, _internal_call=True)  # pushed below, once the run's files are written
    except Exception as error:
        for callback in trainer.callback_handler.callbacks:  # a bar left open prints itself after the message
            if getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()
        if is_disk_full(error, config.output_dir):
            raise _disk_full(config.output_dir) from error
        raise
    if trainer.args.should_save:  # the main process only, as for the model
        if base is not None:
            atomic_write_text(os.path.join(config.output_dir, BASE_RECORD), json.dumps(base, indent=2) + "\n")
        atomic_write_text(os.path.join(config.output_dir, "decontamination.json"), json.dumps(portable({
            "decontaminated_against": prepared.decontaminated_against, "n_removed": len(prepared.removed_prompts),
            "removed": prepared.removed_prompts}), indent=2) + "\n")
        atomic_write_text(os.path.join(config.output_dir, "train_log.json"), json.dumps(portable(
            {"data": prepared.summary(), "log_history": trainer.state.log_history}), indent=2))
    if config.push_to_hub:  # output_dir with negalign's card (NegalignTrainer.create_model_card) and the run's files
        _push(trainer)
    return trainer


def _push(trainer: NegalignTrainer) -> None:
    try:
        trainer.push_to_hub(commit_message="End of training")
    except OSError as error:  # the Hub's errors (no token, no network, refused) are OSErrors
        out = trainer.args.output_dir
        raise OSError(f"the run is saved in {out}, but pushing it to the Hub ({trainer.hub_model_id}) failed: "
                      f"{' '.join(str(error).split()).rstrip('.')}; upload it with `hf upload {trainer.hub_model_id} {out} "
                      "--exclude 'checkpoint-*'`") from error
