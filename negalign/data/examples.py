"""`build_examples`: rows -> what one objective trains on.

    negatives+samples (d2o)               {"prompt", "negative", "samples": [K strings], "source"}
    samples (context_distillation)        {"prompt", "samples": [K strings], "source"}   one per prompt
    pairs (dpo, ipo)                      {"prompt", "chosen", "rejected", "source"}
    negatives (npo, simnpo, gradient_ascent,
               unlikelihood)              {"prompt", "completion", "source"}   label False
    positives (sft)                       {"prompt", "completion", "source"}   label True
    labels / labels or scores (kto /
        pointwise_dpo, ulma)              {"prompt", "completion", "label", "score", "source"}

Which shape an objective gets is its `trains_on` in negalign.methods.METHODS; the keys are its slot names.

"source" is the "file:line" of the row the example came from (for d2o the negative, for dpo the pair).
"""

from __future__ import annotations

import warnings
from collections import Counter

from negalign.data.errors import DataError
from negalign.data.rows import group_by_prompt, pairs_to_negatives, prompt_key
from negalign.methods import DataShape, method


def _where(rows: list[dict]) -> str:
    """The file names behind some rows, for messages that concern a whole data set."""
    files = list(dict.fromkeys(row["source"].rsplit(":", 1)[0] for row in rows))
    if not files:
        return "data (no rows)"
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def build_examples(rows: list[dict], objective: str, *, samples: list[dict] | None = None,
                   k: int | None = None) -> list[dict]:
    """Group normalised rows into the examples `objective` needs (shapes in the module docstring).

    d2o: one example per human negative (label False, origin "human"; pairs lose their chosen side),
    with the self-samples of its prompt: rows with origin "self" from `samples` and from `rows`,
    matched by `prompt_key` and ordered by sample_index. A prompt with several negatives gives one
    example each, all sharing the prompt's samples. `k=None` uses every sample a prompt has but
    requires the same count for every prompt; `k=n` takes the first n (DataError if a prompt has
    fewer); `k=0` gives no samples. With samples present and k != 0, a prompt that has none is a
    DataError naming its negative's source (samples made from other data). `samples` and `k` are used by d2o only.

    Raises DataError when the rows hold nothing the objective can use, ValueError for an unknown name.
    """
    trains_on = method(objective).trains_on  # ValueError for an unknown name
    if trains_on is DataShape.NEGATIVES_WITH_SAMPLES:
        return _d2o(rows, samples, k)
    if trains_on is DataShape.SAMPLES:
        return _anchors(rows, objective, k)
    if trains_on is DataShape.PAIRS:
        return _dpo(rows, objective)
    if trains_on in (DataShape.NEGATIVES, DataShape.POSITIVES):
        wanted = trains_on is DataShape.POSITIVES
        chosen = [r for r in rows if r["label"] is wanted]
        if not chosen:
            kind = "positives (rows with label true)" if wanted else "negatives (rows with label false)"
            raise DataError(_where(rows), f"{objective} trains on {kind}, and none of the {len(rows)} rows is one")
        return [{"prompt": r["prompt"], "completion": r["completion"], "source": r["source"]} for r in chosen]
    return _pointwise(rows, objective, scores_too=trains_on is DataShape.LABELS_OR_SCORES)


def _d2o(rows: list[dict], samples: list[dict] | None, k: int | None) -> list[dict]:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ValueError(f"k must be None or a non-negative integer, got {k!r}")
    negatives = [r for r in pairs_to_negatives(rows) if r["label"] is False and r["origin"] == "human"]
    if not negatives:
        raise DataError(_where(rows), f"d2o trains on human negatives (rows with label false and origin "
                                      f"'human'), and none of the {len(rows)} rows is one")
    pool = list(samples or []) + [r for r in rows if r["origin"] == "self"]
    for sample in pool:
        if sample["origin"] != "self":
            raise DataError(sample["source"], f"must be 'self' for a d2o self-sample, got {sample['origin']!r}; "
                                              "human rows go in `rows`, not `samples`", "origin")
    by_prompt = {key: sorted(group, key=lambda r: (r["sample_index"] is None, r["sample_index"] or 0))
                 for key, group in group_by_prompt(pool).items()}
    first_negative = {}
    for negative in negatives:
        first_negative.setdefault(prompt_key(negative["prompt"]), negative)
    counts = {key: len(by_prompt.get(key, [])) for key in first_negative}
    unsampled = [key for key, count in counts.items() if count == 0]
    if pool and k != 0 and unsampled:
        # samples exist but miss some prompts: made from other data, cut short, or --max-prompts too small
        covered = len(counts) - len(unsampled)
        raise DataError(first_negative[unsampled[0]]["source"],
                        f"this prompt has 0 self-samples in {_where(pool)}, which covers {covered} of the "
                        f"{len(counts)} prompts with a negative ({len(unsampled)} have none; {len(by_prompt)} "
                        "prompts have samples); the samples were made from other data or cut short: run "
                        "`negalign sample` on this data file (rerunning it finishes an interrupted file), or "
                        "set k=0 to train without samples")
    if k is None:
        common, _ = Counter(counts.values()).most_common(1)[0]
        for key, count in counts.items():
            if count != common:
                raise DataError(first_negative[key]["source"],
                                f"this prompt has {count} self-samples but most prompts have {common}; d2o needs "
                                f"the same number for every prompt: pass k={min(counts.values())} to use the "
                                "first k of each, or sample the missing ones")
    else:
        for key, count in counts.items():
            if count < k:
                raise DataError(first_negative[key]["source"],
                                f"this prompt has only {count} self-samples, and d2o with k={k} needs {k}; "
                                f"sample more, or lower k to {count}")
    return [{"prompt": n["prompt"], "negative": n["completion"],
             "samples": [s["completion"] for s in by_prompt.get(prompt_key(n["prompt"]), [])[:k]],
             "source": n["source"]} for n in negatives]


def _anchors(rows: list[dict], objective: str, k: int | None) -> list[dict]:
    """Context distillation: one example per prompt of the self-samples in `rows` (origin "self"), its first
    k by sample_index (k None: all, the same count for every prompt, as d2o). Human rows are left out: the
    method reads nothing of the negatives."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"{objective} trains on k >= 1 anchors per prompt (None: all), got {k!r}")
    pool = [r for r in rows if r["origin"] == "self"]
    if not pool:
        raise DataError(_where(rows), f"{objective} trains on self-samples (rows with origin 'self', a "
                                      f"`negalign sample` file), and none of the {len(rows)} rows is one")
    if len(pool) < len(rows):
        warnings.warn(f"{objective}: {len(rows) - len(pool)} of the {len(rows)} rows of {_where(rows)} are not "
                      "self-samples and are left out", stacklevel=3)
    groups = [sorted(group, key=lambda r: (r["sample_index"] is None, r["sample_index"] or 0))
              for group in group_by_prompt(pool).values()]
    if k is None:
        k, _ = Counter(len(g) for g in groups).most_common(1)[0]
        odd = next((g for g in groups if len(g) != k), None)
        if odd is not None:
            raise DataError(odd[0]["source"], f"this prompt has {len(odd)} self-samples but most prompts have {k}; "
                                              f"{objective} needs the same number for every prompt: pass k="
                                              f"{min(len(g) for g in groups)} to use the first k of each")
    short = next((g for g in groups if len(g) < k), None)
    if short is not None:
        raise DataError(short[0]["source"], f"this prompt has only {len(short)} self-samples, and {objective} "
                                            f"with k={k} needs {k}; sample more, or lower k to {len(short)}")
    return [{"prompt": g[0]["prompt"], "samples": [r["completion"] for r in g[:k]], "source": g[0]["source"]}
            for g in groups]


def _dpo(rows: list[dict], objective: str) -> list[dict]:
    pairs: dict[int, list[dict]] = {}
    for row in rows:
        if row["pair_id"] is not None:
            pairs.setdefault(row["pair_id"], []).append(row)
    if not pairs:
        raise DataError(_where(rows), f"{objective} trains on chosen/rejected pairs, and these rows have none; load data "
                                      "with 'chosen' and 'rejected' fields, or use an objective for single rows "
                                      "(d2o, npo, kto, pointwise_dpo, ...)")
    examples, n_prompt_differs = [], 0
    for pair_id, pair in pairs.items():
        chosen = [r for r in pair if r["label"] is True]
        rejected = [r for r in pair if r["label"] is False]
        if len(pair) != 2 or len(chosen) != 1 or len(rejected) != 1:
            raise DataError(pair[0]["source"], f"pair_id {pair_id} has {len(chosen)} chosen and {len(rejected)} "
                                               "rejected rows, expected one of each; rows from separate "
                                               "load_rows calls may reuse pair ids", "pair_id")
        (chosen,), (rejected,) = chosen, rejected
        if prompt_key(chosen["prompt"]) != prompt_key(rejected["prompt"]):
            n_prompt_differs += 1
            continue
        examples.append({"prompt": chosen["prompt"], "chosen": chosen["completion"],
                         "rejected": rejected["completion"], "source": chosen["source"]})
    if not examples:
        raise DataError(_where(rows), f"{objective}: none of the {len(pairs)} pairs has the same prompt on both "
                                      "sides (it compares two answers to one prompt)")
    if n_prompt_differs:
        warnings.warn(f"{objective}: dropped {n_prompt_differs} of {len(pairs)} pairs whose chosen and rejected "
                      "transcripts have different prompts (it compares two answers to one prompt)", stacklevel=3)
    return examples


def _pointwise(rows: list[dict], objective: str, scores_too: bool) -> list[dict]:
    if not scores_too:
        chosen = [r for r in rows if r["label"] is not None]
        needs = "rows with a label (true/false)"
    else:
        chosen = [r for r in rows if r["label"] is not None or r["score"] is not None]
        needs = "rows with a label or a score"
    if not chosen:
        raise DataError(_where(rows), f"{objective} trains on {needs}, and none of the {len(rows)} rows has one")
    labels = [r["label"] for r in chosen if r["label"] is not None]
    if labels and len(set(labels)) == 1:
        missing = "false (undesirable)" if labels[0] else "true (desirable)"
        warnings.warn(f"{objective}: all {len(labels)} labelled rows of {_where(chosen)} are {labels[0]}; "
                      f"none is {missing}, so only one side of the loss trains", stacklevel=3)
    scored = [r for r in chosen if r["score"] is not None]
    if scores_too and scored and len(scored) != len(chosen) and len(labels) != len(chosen):
        # the loss takes scores or labels for a whole batch: a batch of both kinds has no single loss
        odd = next(r for r in chosen if r["label"] is None) if len(labels) < len(chosen) else \
            next(r for r in chosen if r["score"] is None)
        raise DataError(odd["source"], f"{objective}: this row has {'no label' if odd['label'] is None else 'no score'}"
                                       f", but {len(scored)} of {len(chosen)} rows have a score and {len(labels)} "
                                       "a label; give every row a score (the continuous loss) or every row a label")
    if scores_too and scored and len(scored) != len(chosen):
        chosen = [{**r, "score": None} for r in chosen]  # all have labels: train on them, not on a few scores
        warnings.warn(f"{objective}: {len(scored)} of {len(chosen)} rows of {_where(chosen)} have a score but all "
                      "have a label; training on the labels", stacklevel=3)
    return [{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"], "score": r["score"],
             "source": r["source"]} for r in chosen]
