"""From feedback rows to tokenised training items and packed batches.

Every objective sees an example as a fixed list of completion *slots* sharing one prompt, named in its
negalign.methods entry (d2o: negative, samples x K; dpo and ipo: chosen, rejected; kto: completion and a
mismatched completion, another prompt's answer for z0; the rest: completion), so a batch of B examples gives
policy and reference log-probs shaped [B, columns] whose columns the trainer hands to the loss by name.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field

import torch

from negalign.data import DataError, build_examples, encode, group_by_prompt, load_rows, prompt_key
from negalign.data.paths import data_dir
from negalign.logprobs import PACKED_FIELDS, pack_sequences
from negalign.methods import Layout, example_slots, method
from negalign.progress import bar

logger = logging.getLogger("negalign")


def add_mismatched_completions(examples: list[dict]) -> list[dict]:
    """KTO's z0 needs (x_i, y_j) with j's prompt different from i's: take the next example, cyclically,
    whose prompt differs. Fixed once at preparation, so its reference log-probs can be cached; never a
    row paired with itself (the odd-batch self-pairing bug)."""
    keys = [prompt_key(e["prompt"]) for e in examples]
    out = []
    for i, example in enumerate(examples):
        for shift in range(1, len(examples)):
            j = (i + shift) % len(examples)
            if keys[j] != keys[i]:
                out.append({**example, "mismatched": examples[j]["completion"]})
                break
        else:
            raise ValueError("kto needs examples from at least two different prompts to estimate z0")
    return out


def first_prompts(rows: list[dict], n: int) -> list[dict]:
    """The rows of the first n distinct prompts, in file order."""
    keep = list(dict.fromkeys(prompt_key(row["prompt"]) for row in rows))[:n]
    keep = set(keep)
    return [row for row in rows if prompt_key(row["prompt"]) in keep]


@dataclass
class PreparedData:
    items: list[dict]
    n_rows: int
    load_summary: str
    n_prompt_truncated: int = 0
    n_completion_truncated: int = 0
    removed_prompts: list[dict] = field(default_factory=list)  # training prompts left out as evaluation prompts
    decontaminated_against: str = "nothing"

    def summary(self) -> str:
        return (f"{len(self.items)} training examples from {self.n_rows} rows ({self.load_summary}); "
                f"truncated: {self.n_prompt_truncated} prompts, {self.n_completion_truncated} completions; "
                f"{len(self.removed_prompts)} prompts left out as evaluation prompts (decontaminated against "
                f"{self.decontaminated_against})")


def prepare_items(config, tokenizer, rows=None) -> PreparedData:
    """Rows of config.data (or `rows` handed over from Python: a datasets.Dataset or list of dicts) -> items."""
    # millions of small lists (token ids, rows) are created and none is garbage: the cyclic collector would
    # rescan all of them again and again (time growing faster than the rows), so it pauses while they are made
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _prepare_items(config, tokenizer, rows)
    finally:
        if gc_was_enabled:
            gc.enable()


def _prepare_items(config, tokenizer, given=None) -> PreparedData:
    rows, stats = load_rows(config.data if given is None else given, split=config.data_split,
                            on_bad_row=config.on_bad_row)
    if not rows:
        raise DataError(str(config.data), f"nothing to train on: {no_rows_reason(stats)}")
    removed = []
    folder = data_dir() if config.decontaminate else None
    if folder is not None:  # never train on an evaluation prompt: max_prompts counts clean prompts
        from negalign.decontamination import clean_first_prompts

        rows, removed = clean_first_prompts(rows, config.max_prompts or None, folder)
        if not rows:
            raise DataError(str(config.data), f"nothing to train on: all {len(removed)} prompts duplicate an "
                            "evaluation prompt and were left out (decontaminate: false keeps them)")
    elif config.max_prompts:
        rows = first_prompts(rows, config.max_prompts)
    samples = None
    the_method = method(config.objective)  # resolved once: everything method-specific below asks it
    if the_method.anchors_in_data and config.samples:
        raise ValueError(f"{config.objective} trains on the anchors in `data` (a samples file) and reads no "
                         f"`samples` file: set data: {config.samples} and drop `samples`")
    if the_method.reads_samples_file and config.k != 0:
        if not config.samples:
            raise ValueError("d2o needs self-samples: set `samples` to a samples file (or k=0 for the ablation)")
        samples, sample_stats = load_rows(config.samples, on_bad_row=config.on_bad_row)
    try:
        examples = build_examples(rows, config.objective, samples=samples, k=config.k)
    except DataError as error:  # a prompt short of samples: say which samples rows were skipped, if any were
        if samples is None or not sample_stats.n_skipped:
            raise
        n = sample_stats.n_skipped
        raise DataError(error.where, f"{error.reason}; {n} bad row{'s' if n > 1 else ''} of {config.samples} "
                        f"{'were' if n > 1 else 'was'} skipped (on_bad_row: skip): {sample_stats.skipped[0]}",
                        error.field) from None
    if config.max_examples:
        examples = examples[: config.max_examples]
    if the_method.needs_mismatched:
        examples = add_mismatched_completions(examples)
    items, n_prompt_cut, n_completion_cut = [], 0, 0
    for example in bar(examples, desc="tokenising", unit="example", mininterval=1.0, disable=len(examples) < 2000):
        sequences = []
        for completion in example_slots(the_method, example):
            encoded = encode(example["prompt"], completion, tokenizer, max_length=config.max_length,
                             max_prompt_length=config.max_prompt_length, source=example.get("source"))
            n_prompt_cut += encoded.prompt_truncated
            n_completion_cut += encoded.completion_truncated
            sequences.append((encoded.prompt_ids, encoded.completion_ids))
        items.append({"sequences": sequences, "label": example.get("label"), "score": example.get("score"),
                      "prompt": example["prompt"], "prompt_key": prompt_key(example["prompt"])})
    if method(config.objective).anchored and config.benign_samples:
        items.extend(benign_items(config, tokenizer, {item["prompt_key"] for item in items}))
    return PreparedData(items, len(rows), stats.summary(), n_prompt_cut, n_completion_cut, removed,
                        decontaminated_against(folder))


def decontaminated_against(folder) -> str:
    """What decontamination.json says the training prompts were checked against."""
    if folder is None:
        return "nothing"
    from negalign.decontamination import held_out_pairs

    return "built-in evaluation suites" + (" and the evaluation's held-out HH pairs" if held_out_pairs(folder) else "")


def no_rows_reason(stats) -> str:
    """Why a data file gave no rows: empty, or every record skipped as bad (and the first one's problem)."""
    if stats.n_read == 0:
        return "the file is empty"
    return (f"all {stats.n_read} records were skipped as bad rows (on_bad_row: skip); the first: "
            f"{stats.skipped[0] if stats.skipped else 'unknown'}")


def benign_items(config, tokenizer, feedback_prompts: set[str]) -> list[dict]:
    """D2O items for benign prompts with anchors and no human negative (`benign_samples`): slot 0 is a
    one-token placeholder that the loss gives no weight (has_negative False). Prompts that are evaluation
    prompts (negalign.decontamination) or that also have a human negative are left out."""
    from negalign import decontamination

    samples, _ = load_rows(config.benign_samples, on_bad_row=config.on_bad_row)
    groups = {key: sorted(group, key=lambda r: r["sample_index"] or 0)
              for key, group in group_by_prompt(samples).items() if key not in feedback_prompts}
    k = config.k or min(len(g) for g in groups.values())
    short = [g[0]["source"] for g in groups.values() if len(g) < k]
    if short:
        raise DataError(short[0], f"benign_samples: this prompt has fewer than k={k} samples ({len(short)} prompts do)")
    rows = [{"prompt": g[0]["prompt"], "group": g} for g in groups.values()]
    folder = data_dir()
    if folder is not None:
        rows, removed = decontamination.decontaminate(rows, decontamination.evaluation_prompts(folder),
                                                      held_out=decontamination.held_out_pairs(folder))
        if removed:
            logger.warning("negalign: benign_samples: %d prompts left out as evaluation prompts (e.g. %r ~ %r)",
                           len(removed), removed[0]["prompt"][:60], removed[0]["match"][:60])
    items = []
    for row in rows:
        prompt = row["prompt"]
        sequences = [encode(prompt, "", tokenizer, max_length=config.max_length,
                            max_prompt_length=config.max_prompt_length)]
        sequences += [encode(prompt, s["completion"], tokenizer, max_length=config.max_length,
                             max_prompt_length=config.max_prompt_length, source=s["source"]) for s in row["group"][:k]]
        items.append({"sequences": [(e.prompt_ids, e.completion_ids) for e in sequences], "label": None,
                      "score": None, "prompt": prompt, "prompt_key": prompt_key(prompt), "has_negative": False})
    return items


def collate(items: list[dict], layout: Layout, share_prompts: bool = True) -> dict[str, torch.Tensor]:
    """Pack every column of every example padding-free, each example's prompt once (tensors, so Trainer moves
    them to the device). The layout's detached columns go into a second packed batch ("detached_" keys) that
    the trainer scores without gradients; the layout itself stays with the trainer."""
    kept, detached = layout.kept, layout.detached
    batch = pack_sequences([item["sequences"][s] for item in items for s in kept], share_prompts)
    out = {name: getattr(batch, name) for name in PACKED_FIELDS}
    if detached:
        side = pack_sequences([item["sequences"][s] for item in items for s in detached], share_prompts)
        out.update({f"detached_{name}": getattr(side, name) for name in PACKED_FIELDS})
    if "ref_logps" in items[0]:
        out["ref_logps"] = torch.tensor([item["ref_logps"] for item in items], dtype=torch.float32)
    if any("has_negative" in item for item in items):  # D2O with benign prompts (docs/retain.md)
        out["has_negative"] = torch.tensor([item.get("has_negative", True) for item in items])
    if items[0].get("score") is not None:
        out["scores"] = torch.tensor([float(item["score"]) for item in items])
    elif items[0].get("label") is not None:
        out["labels_binary"] = torch.tensor([bool(item["label"]) for item in items])
    return out
