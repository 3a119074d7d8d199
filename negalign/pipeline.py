"""`negalign.train(...)`: feedback file -> tokenised items -> cached reference log-probs -> trained model."""

from __future__ import annotations

import contextlib
import json
import logging
import os

from negalign.anchors import anchor_provenance
from negalign.assemble import reference_pass, training_set
from negalign.checkpoints import checkpoint_step as _step
from negalign.checkpoints import (
    claim_output_dir,
    disk_full,
    model_changed,
    refuse_or_warn,
    resolve_checkpoint,
    training_inputs,
)
from negalign.config import NegalignConfig, load_config
from negalign.data import DataError
from negalign.data.readers import IN_MEMORY
from negalign.files import atomic_write_text, portable
from negalign.guards import train_until_done_or_stopped
from negalign.heap import allocator_hint, set_mmap_threshold
from negalign.locks import output_lock
from negalign.models import BASE_RECORD, base_record, check_model, load_model, load_tokenizer, model_fingerprint, model_name
from negalign.outputs import check_before_lock, is_disk_full
from negalign.provenance import input_fingerprints
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


def _check_inputs(config: NegalignConfig, checkpoint: str | None) -> None:
    """Fail on a missing local data or samples file before the tokenizer (and a model conversion) loads, and on an
    earlier run's refreshed samples in output_dir: they are keyed by step, not by the weights that drew them, so
    a new run (not a resume) would train on that run's samples."""
    from negalign.data.readers import iter_records, looks_like_path

    for key in ("data", "samples"):
        name = getattr(config, key)
        if name and looks_like_path(str(name)) and not os.path.exists(os.path.expanduser(str(name))):
            try:
                iter_records(str(name))
            except DataError as error:
                raise DataError(error.where, f"{error.reason} (set by `{key}`)") from None
    folder = os.path.join(config.output_dir, "refreshed_samples")
    if config.sampling != "refresh" or checkpoint or not os.path.isdir(folder):
        return
    if any(REFRESH_FILE.search(name) for name in os.listdir(folder)):
        raise ValueError(f"{folder} holds samples refreshed by an earlier run; a new run would reuse them as its "
                         "own. Resume that run (resume_from_checkpoint: true), or use another output_dir, or "
                         "delete the folder")


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


def train(config: NegalignConfig | dict | str | None = None, *, model=None, tokenizer=None, train_dataset=None,
          callbacks: list | None = None, **overrides) -> NegalignTrainer:
    """Train with any objective. `config` is a NegalignConfig, a dict of its fields, or a YAML recipe path;
    keyword overrides win. What you already hold can be passed instead of names: `model` (a loaded
    PreTrainedModel, or a PeftModel whose adapter is trained), `tokenizer`, `train_dataset` (a datasets.Dataset
    or a list of dicts, in any format the data files take), `callbacks` (transformers TrainerCallbacks added to
    the trainer's own, e.g. negalign.loop's refusal watch). Returns the trainer: `.model` is the trained model,
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
    with contextlib.ExitStack() as main_process_only:  # one lock per run: the main process holds it for all of them
        if int(os.environ.get("RANK", "0")) == 0:
            # a model that cannot load, an output_dir inside an input or under a file: refused before its lock file
            if model is None:
                for key in ("model", "ref_model", "ref_plus_model"):
                    if getattr(config, key):
                        check_model(getattr(config, key), key)
            check_before_lock(config.output_dir, training_inputs(config), folder=True, option="output_dir")
            main_process_only.enter_context(output_lock(config.output_dir, "training", wait=config.wait_for_lock))
            claim_output_dir(config)  # never over a folder that is not a run, or a finished run, unless overwrite
            from negalign.progress import quietly

            # the Trainer's bar off: negalign's bars (reference pass ...) too
            main_process_only.enter_context(quietly(config.disable_tqdm))
        return _train(config, model, tokenizer, train_dataset, callbacks)


def _model_name(model, tokenizer) -> str:
    """What a model object is called in the run's records and reference cache names: its name_or_path (for a
    PeftModel its base's). Without one, the tokenizer must be given (nothing to load it from)."""
    name = model_name(model)
    if not name and tokenizer is None:
        raise ValueError("model has no name_or_path to load its tokenizer from: pass tokenizer= as well")
    return name or "in-memory-model"


def _train(config: NegalignConfig, model=None, tokenizer=None, rows=None, callbacks=None) -> NegalignTrainer:
    """A run's steps, in order: what can fail cheaply is checked before anything loads, and what needs the
    starting weights (their record, the anchors' record, the reference pass, the retain set) comes before LoRA
    or training changes them."""
    checkpoint = resolve_checkpoint(config)
    _check_inputs(config, checkpoint)
    if not set_mmap_threshold(config.host_mmap_threshold_mb) and (hint := allocator_hint()):
        logger.info("negalign: %s", hint)
    if tokenizer is None:
        tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.chat_template)
    examples = training_set(config, tokenizer, rows)
    if model is None:
        model = load_model(config.model, config.model_options())
    anchors = _record_starting_point(config, model, checkpoint)
    reference = reference_pass(config, examples, model)
    retain = prepare_retain(config, tokenizer, model, reference, config.output_dir if config.should_save else None)
    # a LoRA run records its base's weights: export --merge (any load of the run) refuses a base changed since
    base = base_record(config.model, model, config._inputs["model"]) if config.use_lora and config.should_save else None
    if config.use_lora:
        model = apply_lora(model, config)
    refresher = None
    if config.sampling == "refresh":
        prompts = list({item["prompt_key"]: item["prompt"] for item in examples.items}.values())
        refresher = SampleRefresher(config, tokenizer, examples.items, prompts, reference)
    trainer = NegalignTrainer(model=model, args=config, train_dataset=examples, processing_class=tokenizer,
                              reference=reference, anchor_provenance=anchors, retain=retain, refresher=refresher,
                              callbacks=callbacks)
    if refresher is not None:
        resume_refresher(refresher, trainer.model, checkpoint)
    _train_and_save(trainer, checkpoint)
    _write_run_record(trainer, examples.prepared, base)
    if config.push_to_hub:  # output_dir with negalign's card (provenance.RecordsProvenance) and the run's files
        _push(trainer)
    return trainer


def _record_starting_point(config: NegalignConfig, model, checkpoint: str | None) -> dict | None:
    """Before the reference pass: every sequence fits the model's positions; what the run starts from is recorded
    (config._inputs, written by every save as inputs.json for a resume to compare: the input files' contents,
    then the starting weights, since a model's path may change, e.g. another machine's cache, its weights not)
    and compared with the checkpoint it resumes. Returns the anchors' record (anchors.anchor_provenance)."""
    config.check_context_length(model)
    config._inputs = {**input_fingerprints(config.to_dict()), "model": model_fingerprint(model)}
    if checkpoint:  # resume_from_checkpoint set (true or a folder): the user asked for this checkpoint
        refuse_or_warn(config.output_dir, config.resume_from_checkpoint not in (None, ""), checkpoint,
                       model_changed(checkpoint, config.model, config._inputs["model"]))
    return anchor_provenance(config, model, config._inputs["model"])


def _train_and_save(trainer: NegalignTrainer, checkpoint: str | None) -> None:
    """Train from `checkpoint` (or the start) and save the final model; a full disk ends in one line saying where
    a rerun resumes from."""
    args = trainer.args
    try:
        if checkpoint and 0 < args.max_steps <= _step(checkpoint):
            # the run had finished its steps (a rerun, or a kill during the final save); Trainer would take one
            # more step past max_steps when resumed there, so load the checkpoint instead of training from it
            from transformers import TrainerState

            logger.warning("negalign: %s is at step %d of %d: nothing left to train; saving it as the final model",
                           checkpoint, _step(checkpoint), args.max_steps)
            trainer._load_from_checkpoint(checkpoint)
            trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        else:
            train_until_done_or_stopped(trainer, checkpoint)
        trainer.save_model(args.output_dir, _internal_call=True)  # pushed afterwards, once the run's files are written
    except Exception as error:
        for callback in trainer.callback_handler.callbacks:  # a bar left open prints itself after the message
            if getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()
        if is_disk_full(error, args.output_dir):
            raise disk_full(args.output_dir) from error
        raise


def _write_run_record(trainer: NegalignTrainer, prepared, base: dict | None) -> None:
    """The files written once training is done (by the main process, as for the model); train_log.json, last,
    marks a finished run."""
    if not trainer.args.should_save:
        return
    out = trainer.args.output_dir
    if base is not None:
        atomic_write_text(os.path.join(out, BASE_RECORD), json.dumps(base, indent=2) + "\n")
    atomic_write_text(os.path.join(out, "decontamination.json"), json.dumps(portable({
        "decontaminated_against": prepared.decontaminated_against, "n_removed": len(prepared.removed_prompts),
        "removed": prepared.removed_prompts}), indent=2) + "\n")
    atomic_write_text(os.path.join(out, "train_log.json"), json.dumps(portable(
        {"data": prepared.summary(), "log_history": trainer.state.log_history}), indent=2))


def _push(trainer: NegalignTrainer) -> None:
    try:
        trainer.push_to_hub(commit_message="End of training")
    except OSError as error:  # the Hub's errors (no token, no network, refused) are OSErrors
        out = trainer.args.output_dir
        raise OSError(f"the run is saved in {out}, but pushing it to the Hub ({trainer.hub_model_id}) failed: "
                      f"{' '.join(str(error).split()).rstrip('.')}; upload it with `hf upload {trainer.hub_model_id} {out} "
                      "--exclude 'checkpoint-*'`") from error
