"""Answers to evaluation prompts, and log-probs of given answers.

Generation goes through `negalign.sampling.sample` with K=1: prompts length-sorted and batched with left
padding, KV cache on, greedy at temperature 0, every batch appended to a jsonl file (flushed, fsynced) as it
is made, so a rerun skips the prompts already answered. A `.meta.json` beside the file records the model and
settings; a rerun with other settings is refused unless `overwrite`.
"""

from __future__ import annotations

import os
from pathlib import Path

from negalign.data import encode, prompt_key
from negalign.reference import compute_logps
from negalign.sampling import SamplingReport, SamplingSettings, read_existing, sample


def as_messages(prompt: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def generate_answers(model, tokenizer, prompts: list[str | list[dict]], output: str | os.PathLike, *,
                     model_id: str, max_new_tokens: int = 256, batch_size: int = 8, max_prompt_length: int = 256,
                     temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, overwrite: bool = False,
                     progress: bool = True, server=None) -> tuple[list[dict], SamplingReport]:
    """One answer per prompt, in prompt order: rows {prompt, completion, n_tokens, finished, ...}; with `server`
    (a negalign.serving.GenerationClient) the answers come from it, as `sample` takes them."""
    messages = [as_messages(p) for p in prompts]
    settings = SamplingSettings(k=1, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                seed=seed, batch_size=batch_size, max_prompt_length=max_prompt_length)
    report = sample(model, tokenizer, messages, output, settings, model_id=model_id, overwrite=overwrite,
                    progress=progress, server=server)
    done = read_existing(Path(output))
    return [done[(prompt_key(m), 0)] for m in messages], report


def answer_token_counts(rows: list[dict]) -> list[int]:
    """Answer lengths in model tokens, the closing eos not counted."""
    return [int(row["n_tokens"]) - int(bool(row.get("finished"))) for row in rows]


def completion_logps(model, tokenizer, prompts: list[str | list[dict]], completions: list[str], *,
                     finished: list[bool] | None = None, max_length: int | None = 1024,
                     max_prompt_length: int | None = 256, max_tokens: int = 4096,
                     description: str = "log-probs") -> tuple[list[float], list[int]]:
    """Summed log-probs of each completion given its prompt, and its token count (eos included when the
    answer ended; an answer cut at max_new_tokens (`finished` False) is scored without the eos that
    `encode` would append)."""
    sequences = completion_sequences(tokenizer, prompts, completions, finished=finished, max_length=max_length,
                                     max_prompt_length=max_prompt_length)
    if not sequences:
        return [], []
    logps = compute_logps(model, sequences, max_tokens=max_tokens, description=description)
    return logps.tolist(), [len(c) for _, c in sequences]


def completion_sequences(tokenizer, prompts: list[str | list[dict]], completions: list[str], *,
                         finished: list[bool] | None = None, max_length: int | None = 1024,
                         max_prompt_length: int | None = 256) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of each answer, encoded as training encodes them."""
    sequences = []
    for index, (prompt, completion) in enumerate(zip(prompts, completions)):
        encoded = encode(as_messages(prompt), completion, tokenizer, max_length=max_length,
                         max_prompt_length=max_prompt_length, source=f"answer {index}")
        ids = encoded.completion_ids
        if finished is not None and not finished[index] and len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
        sequences.append((encoded.prompt_ids, ids))
    return sequences
