"""`encode`: (prompt messages, completion) -> prompt token ids and completion token ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from negalign.data.errors import DataError


@dataclass
class Encoded:
    prompt_ids: list[int]
    completion_ids: list[int]  # ends with eos unless the completion was truncated
    prompt_truncated: bool
    completion_truncated: bool


@dataclass
class TruncationStats:
    """Counts of truncated sequences over many `encode` calls: `stats.add(encode(...))`."""

    n_encoded: int = 0
    n_prompt_truncated: int = 0
    n_completion_truncated: int = 0

    def add(self, encoded: Encoded) -> Encoded:
        self.n_encoded += 1
        self.n_prompt_truncated += encoded.prompt_truncated
        self.n_completion_truncated += encoded.completion_truncated
        return encoded

    def summary(self) -> str:
        return (f"{self.n_encoded} sequences encoded; truncated: {self.n_prompt_truncated} prompts, "
                f"{self.n_completion_truncated} completions")


def _as_ids(output) -> list[int]:
    """apply_chat_template(tokenize=True) returns a list in transformers 4 and a BatchEncoding in 5."""
    if isinstance(output, Mapping) or hasattr(output, "input_ids"):
        output = output["input_ids"]
    if hasattr(output, "tolist"):
        output = output.tolist()
    if output and isinstance(output[0], list):
        output = output[0]
    return [int(i) for i in output]


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    kwargs = {"add_generation_prompt": add_generation_prompt, "tokenize": True}
    try:
        output = tokenizer.apply_chat_template(messages, return_dict=False, **kwargs)
    except TypeError:  # a tokenizer whose apply_chat_template takes no return_dict
        output = tokenizer.apply_chat_template(messages, **kwargs)
    return _as_ids(output)


def _text_ids(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    return _as_ids(tokenizer(text, add_special_tokens=add_special_tokens))


def encode_prompt(prompt_messages: list[dict], tokenizer, max_prompt_length: int | None = None) -> list[int]:
    """The prompt as the model sees it before its answer: the chat template with the generation prompt
    (without a template: the messages' contents joined by blank lines), keeping the LAST max_prompt_length
    tokens. Training (`encode`) and self-sampling use this one function, so samples are drawn from exactly
    the prompt they are later scored after."""
    if getattr(tokenizer, "chat_template", None):
        ids = _chat_ids(tokenizer, prompt_messages, add_generation_prompt=True)
    else:
        ids = _text_ids(tokenizer, "\n\n".join(m["content"] for m in prompt_messages), add_special_tokens=True)
    return ids[-max_prompt_length:] if max_prompt_length else ids


def encode_prompt_with_context(prompt_messages: list[dict], context: list[dict] | None, tokenizer,
                               max_prompt_length: int | None = None) -> list[int]:
    """The prompt a self-sample is drawn after: a sampling context (negalign.sampling_context) followed by
    the row's own prompt. The row's part is cut to its last `max_prompt_length` tokens exactly as
    `encode_prompt` cuts it for training; the context is never cut. Without a context: `encode_prompt`."""
    if not context:
        return encode_prompt(prompt_messages, tokenizer, max_prompt_length)
    from negalign.sampling_context import with_context

    conversation = with_context(prompt_messages, context)
    own = [m for m in prompt_messages if m["role"] != "system"]
    head = conversation[: len(conversation) - len(own)]  # the context (and a system message kept before it)
    full = encode_prompt(conversation, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        head_ids = _chat_ids(tokenizer, head, add_generation_prompt=False)
    else:
        head_ids = _text_ids(tokenizer, "\n\n".join(m["content"] for m in head), add_special_tokens=True)
    # templates render the context identically whether or not a prompt follows (checked in the tests for
    # SmolLM2's); where one does not, the context's length still marks where the row's part begins
    head_ids, own_ids = full[: len(head_ids)], full[len(head_ids):]
    return head_ids + (own_ids[-max_prompt_length:] if max_prompt_length else own_ids)


def _untruncated(prompt_messages: list[dict], completion: str, tokenizer, eos: int) -> tuple[list[int], list[int]]:
    prompt_ids = encode_prompt(prompt_messages, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        full_ids = _chat_ids(tokenizer, [*prompt_messages, {"role": "assistant", "content": completion}],
                             add_generation_prompt=False)
        if full_ids[: len(prompt_ids)] == prompt_ids:
            completion_ids = full_ids[len(prompt_ids):]
            if eos in completion_ids:  # drop what the template puts after the turn (e.g. "\n")
                return prompt_ids, completion_ids[: completion_ids.index(eos) + 1]
            return prompt_ids, completion_ids + [eos]
        # the template renders the prompt differently once an answer follows: encode the answer alone
        return prompt_ids, _text_ids(tokenizer, completion, add_special_tokens=False) + [eos]
    return prompt_ids, _text_ids(tokenizer, " " + completion, add_special_tokens=False) + [eos]


def encode(prompt_messages: list[dict], completion: str, tokenizer, *, max_length: int | None = 512,
           max_prompt_length: int | None = 256, source: str | None = None) -> Encoded:
    """Tokenise one prompt and one completion, so that prompt_ids + completion_ids is the conversation
    the model sees and only completion_ids are trained on.

    With a chat template: prompt_ids is the templated prompt with the generation prompt (the assistant
    header); completion_ids is what the templated full conversation adds after it, up to and including
    the first eos (the model must learn to stop; whatever the template puts after eos is dropped). If the
    template renders the prompt differently once an answer follows, the completion is tokenised alone,
    plus eos. Without a chat template: the prompt is its messages' contents joined by blank lines, the
    completion is tokenised with a leading space, plus eos.

    Truncation: the prompt keeps its LAST `max_prompt_length` tokens (the latest turns matter most);
    then the completion keeps its FIRST `max_length - len(prompt_ids)` tokens (a truncated completion
    loses its eos). None means no limit. A completion left with no tokens raises DataError naming
    `source` (the row's "file:line").
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token so completions can end")
    for name, value in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive number of tokens or None, got {value}")
    prompt_ids, completion_ids = _untruncated(prompt_messages, completion, tokenizer, eos)

    prompt_truncated = max_prompt_length is not None and len(prompt_ids) > max_prompt_length
    if prompt_truncated:
        prompt_ids = prompt_ids[-max_prompt_length:]
    room = len(completion_ids) if max_length is None else max_length - len(prompt_ids)
    if room < 1:
        raise DataError(source or "encode", f"the prompt takes {len(prompt_ids)} tokens, leaving none of "
                                            f"max_length={max_length} for the completion; lower "
                                            "max_prompt_length or raise max_length")
    completion_truncated = len(completion_ids) > room
    if completion_truncated:
        completion_ids = completion_ids[:room]
    return Encoded(prompt_ids, completion_ids, prompt_truncated, completion_truncated)
