"""What a NegalignTrainer trains on, made in one place for `negalign.train` (and so `negalign train`) and for
`NegalignTrainer(model=, args=, train_dataset=, processing_class=)` built the way TRL's trainers are: the rows as
tokenised examples with their column layout (`training_set`), the reference log-probs (`reference_pass`), and the
collator (`trainer_inputs`, which the trainer calls as it is built).

negalign.train calls the first two itself, because its own steps come between them (the model loads only once
the data has been read, and its checks and the anchors' record come before the reference pass); it hands the
results to NegalignTrainer, whose `trainer_inputs` then does no more than make the collator. Built from rows,
the trainer gets all three here."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from negalign.batches import PreparedData, collate, prepare_items
from negalign.methods import Layout, method
from negalign.models import finish_tokenizer
from negalign.reference import Reference

logger = logging.getLogger("negalign")

BUILT_FROM_KEYWORDS = ("NegalignTrainer without a layout is built from keywords: model=, args= (a NegalignConfig), "
                       "train_dataset= and processing_class= (the tokenizer)")


@dataclass
class TrainingSet:
    """The training rows as tokenised examples (batches.prepare_items' result: items, summary, the prompts
    left out as evaluation prompts) and the columns of one example (`layout`)."""

    prepared: PreparedData
    layout: Layout

    @property
    def items(self) -> list[dict]:
        return self.prepared.items


def training_set(config, tokenizer, rows=None) -> TrainingSet:
    """`rows` (or config.data when None) as the objective's tokenised examples; the tokenizer is given what
    negalign needs of it first (models.finish_tokenizer: a pad token, the config's chat template)."""
    finish_tokenizer(tokenizer, config.chat_template)
    prepared = prepare_items(config, tokenizer, rows)
    if not prepared.items:
        raise ValueError(f"{config.data}: no training examples for objective {config.objective!r}")
    logger.info("negalign: %s", prepared.summary())
    return TrainingSet(prepared, method(config.objective).layout(len(prepared.items[0]["sequences"])))


def reference_pass(config, examples: TrainingSet, model) -> Reference:
    """The run's reference, prepared while `model` still has its starting weights: cached log-probs filled into
    the examples, or live models loaded (reference.Reference.prepare)."""
    reference = Reference(config, examples.layout)
    # one process per node computes and caches; the others then read the cache (written atomically)
    with config.main_process_first(local=True, desc="reference log-probs"):
        report = reference.prepare(examples.items, model, config.device)
    if report:
        logger.info("negalign: reference log-probs: %s", report)
    return reference


def trainer_inputs(kwargs: dict, reference: Reference | None) -> tuple[Layout, Reference]:
    """The trainer's layout and reference; `kwargs` (the Trainer's keywords) get their training items and, unless
    given, the collator. `train_dataset` is a TrainingSet (negalign.train made it, and the reference) or rows in
    any format the data files take (made into examples and scored here)."""
    examples, config = kwargs.get("train_dataset"), kwargs.get("args")
    if not isinstance(examples, TrainingSet):
        examples = _from_rows(kwargs)
    if reference is None:
        reference = reference_pass(config, examples, kwargs["model"])
    kwargs["train_dataset"] = examples.items
    kwargs.setdefault("data_collator", functools.partial(collate, layout=examples.layout,
                                                         share_prompts=config.share_prompts))
    return examples.layout, reference


def _from_rows(kwargs: dict) -> TrainingSet:
    """The TRL-style construction's rows as examples, for the runs it sets up on its own."""
    args, model, tokenizer = kwargs.get("args"), kwargs.get("model"), kwargs.get("processing_class")
    if args is None or model is None or tokenizer is None or "train_dataset" not in kwargs:
        raise ValueError(BUILT_FROM_KEYWORDS)
    unsupported = [name for name, on in (("use_lora", args.use_lora), ("retain_data", args.retain_data),
                                         ("sampling: refresh", args.sampling == "refresh")) if on]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: not set up by NegalignTrainer(...) itself; use "
                         "negalign.train (or hand in a PeftModel for LoRA)")
    args.data = args.data or "train_dataset"  # how the rows are named in messages and in the model card
    return training_set(args, tokenizer, kwargs["train_dataset"])
