"""Never train on an evaluation prompt: training, benign and retain prompts that duplicate one are left out.

A prompt is an evaluation prompt's duplicate when one of its user turns equals a prompt of a built-in
evaluation suite after normalising case and punctuation (`exact`), or when the two sentence embeddings
(all-MiniLM-L6-v2, unit-norm, mean-pooled) have cosine similarity >= `DUPLICATE_COSINE` (`near duplicate`;
paraphrases of one request score about 0.85-0.95 there, e.g. "How can I rob a bank?" ~ "Provide instructions
on how to rob a bank" 0.89). Every removal is recorded beside the run with the evaluation prompt it matched.

`negalign eval` also scores the chosen answers of the HH harmless-base file's last HELD_OUT_PAIRS pairs (NLL,
preference accuracy), and recipes train on that file: a prompt whose conversation (every turn but a system one,
normalised) is one of those pairs' is left out too (`held-out pair`).

The encoder and the evaluation prompts' embeddings are made once per process (and the embeddings kept on disk
under ~/.cache/negalign/decontamination/, keyed by the prompts), so a run pays only for its own prompts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

DUPLICATE_COSINE = 0.85


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def user_texts(prompt: list[dict]) -> list[str]:
    """Every user turn of a prompt (a multi-turn transcript can carry an evaluation request in any of them)."""
    return [m["content"] for m in prompt if m["role"] == "user" and m["content"].strip()] or [""]


def conversation_key(prompt: list[dict]) -> tuple:
    """A prompt's turns (system messages aside) with their text normalised: equal for one HH transcript read from
    the HH file and written out as chat messages."""
    return tuple((m["role"], normalise(m["content"])) for m in prompt if m["role"] != "system")


def held_out_pairs(data_dir) -> dict[tuple, str]:
    """The conversations of the preference pairs `negalign eval` holds out (the last HELD_OUT_PAIRS of the HH
    harmless-base file in data_dir), each with what to record as its match; empty without the file."""
    return _held_out_pairs(str(data_dir))


@functools.lru_cache(maxsize=4)
def _held_out_pairs(data_dir: str) -> dict[tuple, str]:
    from negalign.evaluation import suites

    path = Path(data_dir) / suites.HH_PAIRS
    if not path.exists():
        return {}
    pairs = suites.held_out_pairs(path, suites.HELD_OUT_PAIRS)
    match = f"an evaluation preference pair (the last {len(pairs)} of {suites.HH_PAIRS})"
    return {conversation_key(pair["prompt"]): match for pair in pairs}


def evaluation_prompts(data_dir) -> list[str]:
    """Every prompt of every built-in evaluation suite (whole suites, not the subsamples a run draws)."""
    return list(_evaluation_prompts(str(data_dir)))


@functools.lru_cache(maxsize=4)
def _evaluation_prompts(data_dir: str) -> tuple[str, ...]:
    from negalign.evaluation.suites import BUILTIN, builtin_suite

    prompts = []
    for name in BUILTIN:
        try:
            prompts.extend(builtin_suite(name, data_dir).prompts)
        except FileNotFoundError:
            continue
    return tuple(prompts)


@functools.lru_cache(maxsize=1)
def _encoder():
    from negalign.evaluation.encoder import SentenceEncoder

    return SentenceEncoder()


def _encode(texts: list[str]):
    return _encoder().encode(texts)


@functools.lru_cache(maxsize=4)
def _evaluation_embeddings(prompts: tuple[str, ...]):
    """The evaluation prompts' embeddings: from memory, from the disk cache, or encoded once and cached."""
    from safetensors.torch import load_file, save_file

    from negalign.evaluation.encoder import encoder_path
    from negalign.files import atomic_output
    from negalign.models import cache_dir

    key = hashlib.sha256(json.dumps([encoder_path(), list(prompts)]).encode()).hexdigest()[:24]
    path = Path(cache_dir()) / "decontamination" / f"evaluation-{key}.safetensors"
    if path.exists():
        try:
            vectors = load_file(path)["embeddings"]
            if vectors.shape[0] == len(prompts):
                return vectors
        except Exception:  # a damaged file: encode again (the write below is atomic)
            pass
    vectors = _encode(list(prompts))
    with atomic_output(path) as tmp:
        save_file({"embeddings": vectors.contiguous()}, str(tmp))
    return vectors


def decontaminate(rows: list[dict], eval_prompts: list[str], threshold: float = DUPLICATE_COSINE,
                  encode_texts=None, held_out: dict[tuple, str] | None = None) -> tuple[list[dict], list[dict]]:
    """(kept rows, removed [{prompt, reason, match, cosine}]) for rows with a "prompt" (messages): the
    conversations of held-out evaluation pairs (`held_out`, from held_out_pairs), exact duplicates of an
    evaluation prompt (normalised text of any user turn), then near duplicates by embedding cosine >= threshold.
    `encode_texts` (texts -> unit-norm [N, D]) replaces the sentence encoder in tests."""
    exact = {normalise(p): p for p in eval_prompts}
    kept, removed = [], []  # kept: (place in `rows`, row), so removals can be put back in file order
    for place, row in enumerate(rows):
        hit = next((t for t in user_texts(row["prompt"]) if normalise(t) in exact), None)
        if held_out and (pair := held_out.get(conversation_key(row["prompt"]))) is not None:
            removed.append({"prompt": user_texts(row["prompt"])[-1], "reason": "held-out pair", "match": pair,
                            "cosine": 1.0, "row": place})
        elif hit is not None:
            removed.append({"prompt": hit, "reason": "exact", "match": exact[normalise(hit)], "cosine": 1.0,
                            "row": place})
        else:
            kept.append((place, row))
    if not kept or not eval_prompts:
        return [row for _, row in kept], _in_order(removed)
    if encode_texts is None:
        theirs, encode_texts = _evaluation_embeddings(tuple(eval_prompts)), _encode
    else:
        theirs = encode_texts(list(eval_prompts))
    turns = [(i, text) for i, (_, row) in enumerate(kept) for text in user_texts(row["prompt"])]
    best, index = (encode_texts([text for _, text in turns]) @ theirs.T).max(dim=1)
    worst: dict[int, tuple[float, int, str]] = {}  # row -> its user turn closest to an evaluation prompt
    for (i, text), cosine, at in zip(turns, best.tolist(), index.tolist()):
        if i not in worst or cosine > worst[i][0]:
            worst[i] = (cosine, at, text)
    survivors = []
    for i, (place, row) in enumerate(kept):
        cosine, at, text = worst[i]
        if cosine >= threshold:
            removed.append({"prompt": text, "reason": "near duplicate", "match": eval_prompts[at],
                            "cosine": round(cosine, 4), "row": place})
        else:
            survivors.append(row)
    return survivors, _in_order(removed)


def _in_order(removed: list[dict]) -> list[dict]:
    """Removals in the order of the rows they came from, without the row index."""
    return [{k: v for k, v in r.items() if k != "row"} for r in sorted(removed, key=lambda r: r["row"])]


def clean_first_prompts(rows: list[dict], n: int | None, data_dir, block: int = 512) -> tuple[list[dict], list[dict]]:
    """The rows of the first n distinct prompts (file order) that are not evaluation prompts or held-out
    evaluation pairs (all of them for n None), and the removals. Prompts are checked in blocks, so a run on n
    prompts of a large file encodes about n prompts, not the file."""
    from negalign.data import prompt_key

    eval_prompts, held_out = evaluation_prompts(data_dir), held_out_pairs(data_dir)
    order = list(dict.fromkeys(prompt_key(row["prompt"]) for row in rows))
    first = {}
    for row in rows:
        first.setdefault(prompt_key(row["prompt"]), row)
    clean, removed, at = [], [], 0  # removed: (place in `order`, record)
    while at < len(order) and (n is None or len(clean) < n):
        take = order[at:at + (block if n is None else max(block, n - len(clean)))]
        kept, gone = decontaminate([{"prompt": first[key]["prompt"], "key": key} for key in take], eval_prompts,
                                   held_out=held_out)
        kept_keys = {row["key"] for row in kept}
        places = [at + i for i, key in enumerate(take) if key not in kept_keys]  # file order, as `gone` is
        clean.extend((at + i, key) for i, key in enumerate(take) if key in kept_keys)
        removed.extend(zip(places, gone))
        at += len(take)
    if n is not None:
        clean = clean[:n]
    # only what was left out to reach the n prompts counts (a block checks a few prompts beyond them)
    last = clean[-1][0] if n is not None and clean and len(clean) == n else len(order)
    keep = {key for _, key in clean}
    return [row for row in rows if prompt_key(row["prompt"]) in keep], [r for place, r in removed if place < last]


RECORD_SUFFIX = ".decontamination.json"


def write_record(output, data_dir, removed: list[dict]) -> None:
    """OUTPUT.decontamination.json: the prompts a samples file left out as evaluation prompts. Written only by the
    command that owns OUTPUT (after its claim), so that a refused command never rewrites another file's record."""
    from negalign.files import atomic_write_text, portable

    atomic_write_text(f"{output}{RECORD_SUFFIX}", json.dumps(portable({
        "decontaminated_against": "built-in evaluation suites", "data_dir": str(data_dir),
        "n_removed": len(removed), "removed": removed}), indent=2) + "\n")
