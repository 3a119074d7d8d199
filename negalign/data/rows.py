"""The normalised row, and small conversions between row sets."""

from __future__ import annotations

import hashlib
import json
from typing import Literal, TypedDict


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class Row(TypedDict):
    """One completion with its feedback. Rows are plain dicts; this type only documents them."""

    prompt: list[Message]  # chat messages, ending (normally) with the user's turn
    completion: str  # the assistant's answer being judged
    label: bool | None  # True good / False bad; None when only scored or unlabelled (self-samples)
    score: float | None
    origin: Literal["human", "self"]  # "self": sampled from the model, not written by people
    pair_id: int | None  # the two rows of a chosen/rejected pair share it (unique within one load)
    sample_index: int | None  # position of a self-sample among its prompt's samples
    source: str  # "file:line" it came from


def prompt_key(messages: list[dict]) -> str:
    """A stable key for a prompt: sha1 of its canonical JSON (role and content only)."""
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()


def group_by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by `prompt_key`, groups (and rows within them) in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(prompt_key(row["prompt"]), []).append(row)
    return groups


def complete_pairs(rows: list[dict]) -> list[dict]:
    """Paired rows back to {prompt, chosen, rejected}, in pair_id (file) order; pairs that lost a side
    (a bad row skipped) are left out."""
    pairs: dict[int, dict] = {}
    for row in rows:
        if row.get("pair_id") is not None:
            pair = pairs.setdefault(row["pair_id"], {"prompt": row["prompt"]})
            pair["chosen" if row["label"] else "rejected"] = row["completion"]
    return [p for _, p in sorted(pairs.items()) if "chosen" in p and "rejected" in p]


def pairs_to_negatives(rows: list[dict]) -> list[dict]:
    """Drop the chosen side of every pair, as the D2O paper does with preference data; the rejected side
    becomes a standalone negative (pair_id None, source kept). Rows outside pairs pass through unchanged."""
    out = []
    for row in rows:
        if row["pair_id"] is None:
            out.append(row)
        elif row["label"] is False:
            out.append({**row, "pair_id": None})
    return out
