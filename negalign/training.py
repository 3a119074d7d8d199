"""`negalign.train(...)`: feedback file -> tokenised items -> cached reference log-probs -> trained model."""

from __future__ import annotations

import copy
import functools
import json
import logging
import os

import torch
from transformers.trainer_utils import get_last_checkpoint

from negalign.config import REFERENCE_FREE, NegalignConfig, load_config
from negalign.dataset import attach_reference_logps, collate, prepare_items
from negalign.models import cache_dir, load_model, load_tokenizer
from negalign.reference import cached_reference_logps
from negalign.refresh import SampleRefresher, no_context
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


def _reference_names(config: NegalignConfig) -> tuple[str, str]:
    minus = config.ref_model or config.model
    plus = config.ref_plus_model or minus
    return minus, plus


def cache_reference_logps(config: NegalignConfig, items: list[dict], policy) -> dict:
    """Fill item["ref_logps"] ([slots] summed log-probs) from the on-disk cache, computing what is missing.
    D2O's slot 0 (the human negative) is scored by pi_r+, every other slot by pi_r-."""
    minus_name, plus_name = _reference_names(config)
    slots = len(items[0]["sequences"])
    plus_slots = [0] if config.objective == "d2o" else []
    assignments = {minus_name: [s for s in range(slots) if s not in plus_slots or plus_name == minus_name]}
    if plus_slots and plus_name != minus_name:
        assignments[plus_name] = plus_slots
    folder = config.cache_dir or str(cache_dir() / "reference")
    table = torch.zeros(len(items), slots)
    report = {}
    for name, covered in assignments.items():
        model = policy if name == config.model else load_model(name)
        sequences = [item["sequences"][s] for item in items for s in covered]
        logps, hit = cached_reference_logps(model, sequences, folder, autocast_bf16=config.bf16,
                                            row_tokens=config.packing_row_tokens)
        table[:, covered] = logps.view(len(items), len(covered))
        report[name] = "cache hit" if hit else "computed and cached"
        if model is not policy:
            del model
    attach_reference_logps(items, table)
    return report


def apply_lora(model, config: NegalignConfig):
    from peft import LoraConfig, get_peft_model

    targets = config.lora_target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def add_refresher(trainer, config: NegalignConfig, tokenizer, items: list[dict]) -> SampleRefresher:
    """D2O `sampling: refresh`; on resume, reload the newest refresh the checkpoint had seen."""
    def reference_loader():
        minus_name, _ = _reference_names(config)
        if config.use_lora and minus_name == config.model:
            return trainer.model, trainer.model.disable_adapter
        if not hasattr(reference_loader, "model"):
            reference_loader.model = load_model(minus_name).eval()
        return reference_loader.model, no_context

    prompts = list({item["prompt_key"]: item["prompt"] for item in items}.values())
    refresher = SampleRefresher(config, tokenizer, items, prompts, reference_loader)
    refresher.trainer = trainer
    trainer.add_callback(refresher)
    checkpoint = config.resume_from_checkpoint
    if checkpoint:
        if checkpoint is True or checkpoint == "True":
            checkpoint = get_last_checkpoint(config.output_dir)
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
            step = json.load(handle)["global_step"]
        logger.warning("negalign: resumed at step %d with the samples refreshed at step %s",
                       step, refresher.apply_latest(step))
    return refresher


def train(config: NegalignConfig | dict | str | None = None, **overrides) -> NegalignTrainer:
    """Train with any objective. `config` is a NegalignConfig, a dict of its fields, or a YAML recipe path;
    keyword overrides win. Returns the trainer (its `state.log_history` holds the logged metrics)."""
    config = _as_config(config, overrides)
    if not config.data:
        raise ValueError("no training data: set `data` to a feedback file or data set name")
    tokenizer = load_tokenizer(config.model)
    prepared = prepare_items(config, tokenizer)
    if not prepared.items:
        raise ValueError(f"{config.data}: no training examples for objective {config.objective!r}")
    logger.warning("negalign: %s", prepared.summary())
    model = load_model(config.model)
    reference_models = None
    if config.objective not in REFERENCE_FREE:
        if config.reference == "cached":
            logger.warning("negalign: reference log-probs: %s", cache_reference_logps(config, prepared.items, model))
        elif config.reference == "live":
            minus_name, plus_name = _reference_names(config)
            load = lambda name: (copy.deepcopy(model) if name == config.model else load_model(name)).eval()  # noqa: E731
            minus = load(minus_name)
            reference_models = {"minus": minus, "plus": minus if plus_name == minus_name else load(plus_name)}
            for ref in {id(m): m for m in reference_models.values()}.values():
                ref.requires_grad_(False)
    if config.use_lora:
        model = apply_lora(model, config)
    trainer = NegalignTrainer(model=model, args=config, train_dataset=prepared.items,
                              data_collator=functools.partial(collate, row_tokens=config.packing_row_tokens),
                              processing_class=tokenizer, reference_models=reference_models)
    if config.sampling == "refresh":
        add_refresher(trainer, config, tokenizer, prepared.items)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    with open(os.path.join(config.output_dir, "train_log.json"), "w", encoding="utf-8") as handle:
        json.dump({"data": prepared.summary(), "log_history": trainer.state.log_history}, handle, indent=2)
    return trainer
