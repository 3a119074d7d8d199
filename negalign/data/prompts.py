"""Rows of prompts, with or without answers: instruction sets (Alpaca style), any negalign data file, HH
transcripts, or a .txt file of one prompt per line. Retain sets and sampling read prompts through here."""

from __future__ import annotations

from pathlib import Path

from negalign.data.errors import DataError
from negalign.data.readers import iter_records

ANSWER_FIELDS = ("completion", "chosen", "output", "response", "answer")


def _messages(value, where: str) -> list[dict]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(where, "the prompt must be non-empty text or a list of {role, content} messages", "prompt")


def read_prompt_rows(source: str, data_dir: str | None = None) -> list[dict]:
    """Rows {prompt: messages, answer: str | None, source}. Accepts any negalign data file (or catalog name)
    whose records have `prompt` (or `instruction` [+ `input`], Alpaca style) and optionally an answer in one of
    completion / chosen / output / response / answer; HH transcripts give their last turn as the answer; a
    .txt file is one prompt per line."""
    from negalign.data.catalog import resolve_data
    from negalign.data.normalise import parse_hh_transcript

    path = resolve_data(source, data_dir)
    if str(path).endswith(".txt"):
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [{"prompt": _messages(line.strip(), f"{path}:{n}"), "answer": None, "source": f"{path}:{n}"}
                for n, line in enumerate(lines, start=1) if line.strip()]
    rows = []
    for record in iter_records(path):
        if isinstance(record.value, DataError):
            raise record.value
        value, where = record.value, record.where
        answer = next((value[f] for f in ANSWER_FIELDS if isinstance(value.get(f), str) and value[f].strip()), None)
        if "prompt" in value:
            prompt = _messages(value["prompt"], where)
        elif "instruction" in value:
            text = str(value["instruction"]) + (f"\n\n{value['input']}" if value.get("input") else "")
            prompt = _messages(text, where)
        elif answer is not None and answer.lstrip().startswith("Human:"):  # an HH transcript
            turns = parse_hh_transcript(answer, where, "chosen")
            prompt, answer = turns[:-1], turns[-1]["content"]
        else:
            raise DataError(where, f"a row needs a prompt (or an instruction), got keys {sorted(value)}")
        rows.append({"prompt": prompt, "answer": answer, "source": record.source})
    if not rows:
        raise DataError(str(path), "no rows with a prompt")
    return rows
