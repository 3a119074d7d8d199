"""Turn one raw record, in any accepted input format, into normalised rows.

A row is a plain dict (see `negalign.data.rows.Row`):

    {"prompt": [{"role": ..., "content": ...}, ...], "completion": str, "label": bool | None,
     "score": float | None, "origin": "human" | "self", "pair_id": int | None,
     "sample_index": int | None, "source": "file:line"}

Accepted record shapes (detected from the keys; `data_format` can force one):

    negatives   {prompt, rejected}                      -> one row, label False
    unpaired    {prompt, completion, label}             -> one row (TRL unpaired preference)
    scored      {prompt, completion, score}             -> one row
    paired      {prompt, chosen, rejected}              -> two rows, chosen True / rejected False
    transcript  {chosen, rejected} with no prompt       -> two rows; each side is a raw Anthropic HH
                                                           transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...")
                                                           or a list of chat messages (TRL implicit prompt)
                {text | transcript | messages, label | score}  -> one row
                {messages} (TRL conversational SFT, no label)   -> one row, label true (a demonstration)
                {rejected} with no prompt               -> one negative row
    self-sample {prompt, completion, origin: "self"}    -> one unlabelled row (sample_index optional)

pair_id is left None here; the loader numbers pairs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from negalign.data.errors import DataError

ROLES = ("system", "user", "assistant")
ORIGINS = ("human", "self")
DATA_FORMATS = ("auto", "negatives", "unpaired", "scored", "paired", "transcript")
TRANSCRIPT_FIELDS = ("text", "transcript", "messages")
# fields whose empty value (an empty CSV cell) means "not given"
_OPTIONAL_SCALARS = ("label", "score", "origin", "sample_index", "score_chosen", "score_rejected")

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def _show(value) -> str:
    """A value as it would look in the file, shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _present(record: dict, key: str) -> bool:
    value = record.get(key)
    if value is None:
        return False
    if key in _OPTIONAL_SCALARS and isinstance(value, str) and not value.strip():
        return False
    return True


# ----- scalar fields ---------------------------------------------------------------------------------

def parse_label(value, where: str, field: str = "label") -> bool:
    """true/false or 0/1 (also as strings, since CSV cells are strings); anything else is an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "0", "1"):
        return value.strip().lower() in ("true", "1")
    raise DataError(where, f"must be a boolean (true/false or 0/1), got {_show(value)}", field)


def parse_score(value, where: str, field: str = "score") -> float:
    if isinstance(value, bool):
        raise DataError(where, f"must be a number, got {_show(value)}; use 'label' for true/false feedback", field)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise DataError(where, f"must be a number, got {_show(value)}", field) from None
    else:
        raise DataError(where, f"must be a number, got {_show(value)}", field)
    if not math.isfinite(number):
        raise DataError(where, f"must be a finite number, got {value}; drop the row or give it a real score", field)
    return number


def parse_origin(value, where: str) -> str:
    if value is None:
        return "human"
    if isinstance(value, str) and value.strip() in ORIGINS:
        return value.strip()
    raise DataError(where, f"must be 'human' (written or judged by people, the default) or 'self' "
                           f"(sampled from the model), got {_show(value)}", "origin")


def parse_sample_index(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise DataError(where, f"must be a non-negative integer, got {_show(value)}", "sample_index")


# ----- prompts, completions, transcripts --------------------------------------------------------------

def parse_messages(value, where: str, field: str) -> list[dict]:
    """A list of {"role", "content"} chat messages, roles system/user/assistant; extra keys are dropped."""
    if not isinstance(value, list) or not value:
        raise DataError(where, f"must be a non-empty list of chat messages, got {_show(value)}", field)
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(where, f"must be a chat message {{\"role\": ..., \"content\": ...}}, got "
                                   f"{_show(message)}", f"{field}[{i}]")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataError(where, f"must be one of {', '.join(repr(r) for r in ROLES)}, got {_show(role)}; "
                                   "rename the role", f"{field}[{i}].role")
        if not isinstance(content, str):
            raise DataError(where, f"must be a string, got {_show(content)}", f"{field}[{i}].content")
        messages.append({"role": role, "content": content})
    return messages


def _check_prompt(messages: list[dict], where: str, field: str) -> list[dict]:
    if not any(m["content"].strip() for m in messages):
        raise DataError(where, "is empty; every row needs a prompt", field)
    return messages


def parse_prompt(value, where: str, field: str = "prompt") -> list[dict]:
    """A plain string (one user message) or a list of chat messages."""
    if isinstance(value, str):
        return _check_prompt([{"role": "user", "content": value}], where, field)
    if isinstance(value, list):
        return _check_prompt(parse_messages(value, where, field), where, field)
    raise DataError(where, f"must be a string or a list of chat messages, got {_show(value)}", field)


def parse_completion(value, where: str, field: str = "completion", allow_empty: bool = False) -> str:
    """A string, or (TRL conversational format) a list holding one assistant message. A model's own sample
    may be empty (it answered with EOS at once): `allow_empty` keeps it, as an anchor it is still real."""
    if isinstance(value, list):
        messages = parse_messages(value, where, field)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise DataError(where, "must be a string or a list with exactly one assistant message, got "
                                   f"{len(messages)} message(s) with roles {[m['role'] for m in messages]}", field)
        value = messages[0]["content"]
    elif not isinstance(value, str):
        raise DataError(where, f"must be a string or a list with one assistant message, got {_show(value)}",
                        field)
    if not value.strip() and not allow_empty:
        raise DataError(where, "is empty; drop the row or give it a completion", field)
    return value


def parse_hh_transcript(text: str, where: str, field: str) -> list[dict]:
    """Parse an Anthropic HH transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." into chat messages.

    Only a speaker tag at the start of a paragraph counts ("... Human: ..." inside a turn is text).
    Consecutive turns of one speaker (HH has a few "Assistant: ...\\n\\nAssistant: ...") are joined with a
    blank line, so roles alternate and the last assistant turn is the whole final answer.
    """
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(where, "must be an Anthropic HH transcript starting with '\\n\\nHuman: ', got "
                               f"{_show(text)}", field)
    messages: list[dict] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role, content = _HH_ROLE[speaker], content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = "\n\n".join(c for c in (messages[-1]["content"], content) if c)
        else:
            messages.append({"role": role, "content": content})
    return messages


def split_conversation(value, where: str, field: str) -> tuple[list[dict], str]:
    """A whole conversation (HH string or message list) -> (prompt messages, last assistant answer)."""
    if isinstance(value, str):
        messages = parse_hh_transcript(value, where, field)
    elif isinstance(value, list):
        messages = parse_messages(value, where, field)
    else:
        raise DataError(where, f"must be an HH transcript string or a list of chat messages, got {_show(value)}",
                        field)
    if messages[-1]["role"] != "assistant":
        raise DataError(where, f"must end with an assistant turn (the answer being judged), but it ends with a "
                               f"{messages[-1]['role']} turn", field)
    if len(messages) < 2:
        raise DataError(where, "has no prompt before the assistant's answer", field)
    completion = messages[-1]["content"]
    if not completion.strip():
        raise DataError(where, "has an empty final assistant answer; drop the row or give it an answer", field)
    return _check_prompt(messages[:-1], where, field), completion


# ----- records -> rows --------------------------------------------------------------------------------

@dataclass
class Normalised:
    """What one record became: rows (two for a pair), whether they form a pair, and the errors of pair
    sides that were dropped (the other side is kept as an unpaired row when skipping bad rows)."""

    rows: list[dict]
    paired: bool = False
    side_errors: list[DataError] = field(default_factory=list)


def make_row(prompt, completion, *, label=None, score=None, origin="human", sample_index=None,
             source="", pair_id=None) -> dict:
    return {"prompt": prompt, "completion": completion, "label": label, "score": score, "origin": origin,
            "pair_id": pair_id, "sample_index": sample_index, "source": source}


def detect_format(record: dict) -> str:
    """The record's format from its keys (one of DATA_FORMATS minus "auto", or "sample")."""
    has = lambda key: _present(record, key)  # noqa: E731
    if not has("prompt"):
        return "transcript"
    if has("chosen"):
        return "paired"
    if has("rejected") and not has("completion"):
        return "negatives"
    if has("label"):
        return "unpaired"
    if has("score"):
        return "scored"
    return "sample"


def _missing(where: str, field: str, hint: str) -> DataError:
    return DataError(where, f"is missing; {hint}", field)


_SHAPES = ("expected one of: {prompt, rejected}; {prompt, completion, label}; {prompt, completion, score}; "
           "{prompt, chosen, rejected}; HH transcripts {chosen, rejected}; {text, label}")


def normalise_record(record: dict, where: str, source: str, data_format: str = "auto") -> Normalised:
    """One raw record -> its rows. Raises DataError for a bad record; a pair with one bad side keeps
    the good side (as an unpaired row) and reports the bad one in `side_errors`."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {', '.join(DATA_FORMATS)}, got {data_format!r}")
    kind = detect_format(record)
    if data_format == "transcript" and kind != "transcript":
        raise DataError(where, "is present, but data_format='transcript' takes the prompt from the "
                               "transcript; drop the field or use data_format='auto'", "prompt")
    forced = data_format if data_format in ("negatives", "paired", "unpaired", "scored") else None
    origin = parse_origin(record["origin"] if _present(record, "origin") else None, where)
    sample_index = parse_sample_index(record["sample_index"] if _present(record, "sample_index") else None, where)
    common = {"origin": origin, "sample_index": sample_index, "source": source}
    if kind == "transcript":
        return _normalise_transcript(record, where, common, forced)

    kind = forced or kind
    prompt = parse_prompt(record["prompt"], where)
    if kind == "paired":
        return _normalise_pair(record, where, common,
                               lambda value, field: (prompt, parse_completion(value, where, field)))
    if kind == "negatives":
        if not _present(record, "rejected"):
            raise _missing(where, "rejected", "data_format='negatives' reads the bad answer from 'rejected'")
        completion = parse_completion(record["rejected"], where, "rejected")
        return Normalised([make_row(prompt, completion, label=False, **common)])
    if not _present(record, "completion"):
        raise _missing(where, "completion", _SHAPES)
    completion = parse_completion(record["completion"], where, allow_empty=origin == "self")
    label, score = _labels(record, where, kind, origin)
    return Normalised([make_row(prompt, completion, label=label, score=score, **common)])


def _labels(record: dict, where: str, kind: str, origin: str) -> tuple[bool | None, float | None]:
    label = parse_label(record["label"], where) if _present(record, "label") else None
    score = parse_score(record["score"], where) if _present(record, "score") else None
    if kind == "unpaired" and label is None:
        raise _missing(where, "label", "give true (good answer) or false (bad answer)")
    if kind == "scored" and score is None:
        raise _missing(where, "score", "give a number")
    if label is None and score is None and origin != "self":
        raise _missing(where, "label", "a human-written completion needs 'label' (true/false) or 'score'; "
                                       "a completion sampled from the model needs \"origin\": \"self\"")
    return label, score


def _normalise_pair(record, where, common, prompt_and_completion) -> Normalised:
    for side in ("chosen", "rejected"):
        if not _present(record, side):
            raise _missing(where, side, "a pair needs both 'chosen' and 'rejected'")
    rows, errors = [], []
    for side, label in (("chosen", True), ("rejected", False)):
        score_field = f"score_{side}"
        try:
            prompt, completion = prompt_and_completion(record[side], side)
            score = parse_score(record[score_field], where, score_field) if _present(record, score_field) else None
        except DataError as err:
            errors.append(err)
            continue
        rows.append(make_row(prompt, completion, label=label, score=score, **common))
    if len(errors) == 2:
        raise errors[0]
    return Normalised(rows, paired=not errors, side_errors=errors)


def _normalise_transcript(record, where, common, forced: str | None) -> Normalised:
    """Records without a 'prompt': whole conversations whose last assistant turn is the completion."""
    has = lambda key: _present(record, key)  # noqa: E731
    conversation = lambda field: split_conversation(record[field], where, field)  # noqa: E731
    if forced == "paired" or (forced is None and has("chosen")):
        return _normalise_pair(record, where, common, lambda value, field: split_conversation(value, where, field))
    if forced == "negatives" or (forced is None and has("rejected")):
        if not has("rejected"):
            raise _missing(where, "rejected", "data_format='negatives' reads the bad answer from 'rejected'")
        prompt, completion = conversation("rejected")
        return Normalised([make_row(prompt, completion, label=False, **common)])
    for name in TRANSCRIPT_FIELDS:
        if has(name):
            prompt, completion = conversation(name)
            if name == "messages" and not has("label") and not has("score") and common["origin"] != "self":
                # TRL's conversational SFT row ({"messages": [...]}, no label): a demonstration, a good answer
                return Normalised([make_row(prompt, completion, label=True, **common)])
            label, score = _labels(record, where, forced or "transcript", common["origin"])
            return Normalised([make_row(prompt, completion, label=label, score=score, **common)])
    if has("completion") or forced:
        raise _missing(where, "prompt", "a completion needs the 'prompt' it answers")
    raise DataError(where, f"has none of the fields negalign reads (it has: {', '.join(sorted(record)) or 'none'}); "
                           + _SHAPES)
