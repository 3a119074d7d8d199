"""A sampling context: chat messages placed before each row's own prompt while D2O's anchors are sampled.

D2O moves the model towards its own K answers and away from the human negative, so the anchors must differ
from the negative for anything to move. A small instruct model asked a harmful question mostly complies, with
or without a system message; a few demonstrations of refusals as earlier turns make it refuse. The context is
where those go: an optional system message and any number of user/assistant demonstration turns.

The context is present only while sampling, never in training: the samples file stores each row's own prompt,
and training scores the anchors after that prompt alone. When a prompt is too long, the row's prompt is cut
(its first tokens go, as in training), never the context. The samples file's .meta.json records the context's
messages and hash, so samples drawn under another context are never silently reused.

`sampling_instruction` (one system message) is the one-message case of the same mechanism.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from negalign.files import read_yaml

PRESET_DIR = Path(__file__).resolve().parent / "contexts"
ROLES = ("system", "user", "assistant")


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read(spec: str) -> tuple[object, str]:
    """The parsed messages of a preset name or a JSON/YAML file, and where they came from (for errors)."""
    if spec in presets():
        path = PRESET_DIR / f"{spec}.yaml"
        return read_yaml(path), f"preset {spec!r}"
    path = Path(os.path.expanduser(spec))
    if not path.is_file():
        raise FileNotFoundError(f"sampling_context: {spec!r} is neither a preset ({', '.join(presets())}) nor a "
                                "file; give a JSON or YAML list of {role, content} messages")
    if path.suffix != ".json":
        try:
            return read_yaml(path), str(path)
        except ValueError as error:
            raise ValueError(f"sampling_context: {error}") from None
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except json.JSONDecodeError as error:
        raise ValueError(f"sampling_context: {path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})") from None


def validate(messages, where: str) -> list[dict]:
    """A context must be a list of {role, content}: at most one system message, first; then user/assistant
    turns in pairs, each user turn answered, so that the row's own prompt (a user turn) follows naturally."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"sampling_context: {where}: expected a non-empty list of {{role, content}} messages")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"sampling_context: {where}: message {index} must have exactly the keys role and "
                             f"content, got {message!r}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"sampling_context: {where}: message {index}: role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"sampling_context: {where}: message {index} ({role}): content must be non-empty text")
        out.append({"role": role, "content": content.strip()})
    turns = out[1:] if out[0]["role"] == "system" else out
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    for index, message in enumerate(turns):
        if message["role"] != expected[index]:
            at = index + (len(out) - len(turns))
            raise ValueError(f"sampling_context: {where}: message {at} is {message['role']!r} where "
                             f"{expected[index]!r} was expected (a system message may only come first; "
                             "demonstrations alternate user, assistant)")
    if turns and turns[-1]["role"] != "assistant":
        raise ValueError(f"sampling_context: {where}: the last demonstration (a user turn) has no assistant answer")
    return out


def resolve_context(context: str | list | None = None, instruction: str | None = None) -> list[dict] | None:
    """`sampling_context` (preset name, file, or a list of messages) or `sampling_instruction` (one system
    message) -> validated messages; None when neither is set."""
    if context and instruction:
        raise ValueError("set sampling_context or sampling_instruction, not both (put the system message in the "
                         "context file instead)")
    if instruction:
        return validate([{"role": "system", "content": instruction}], "sampling_instruction")
    if not context:
        return None
    if isinstance(context, list):
        return validate(context, "messages")
    messages, where = _read(str(context))
    return validate(messages, where)


def context_hash(messages: list[dict] | None) -> str | None:
    if not messages:
        return None
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def describe(messages: list[dict] | None) -> dict | None:
    """What a samples file's meta and a trained model's card record of the context."""
    if not messages:
        return None
    return {"sha256": context_hash(messages), "messages": messages,
            "demonstrations": sum(m["role"] == "user" for m in messages),
            "system": next((m["content"] for m in messages if m["role"] == "system"), None)}


def with_context(prompt: list[dict], messages: list[dict] | None) -> list[dict]:
    """The conversation sampled from: the context, then the row's prompt. A system message of the row is
    dropped when the context brings its own (one conversation has one system message)."""
    if not messages:
        return prompt
    if messages[0]["role"] == "system":
        prompt = [m for m in prompt if m["role"] != "system"]
    elif prompt and prompt[0]["role"] == "system":  # the row's system message stays first
        return [prompt[0], *messages, *prompt[1:]]
    return [*messages, *prompt]
