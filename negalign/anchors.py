"""What D2O's anchors (the K self-samples per prompt) carry, and where they came from.

D2O pulls the model towards its anchors and away from the human negative; when the anchors say what the
negative says, nothing moves. `anchor_report` shows before training whether they differ: the share judged as
refusals (with its n and Wilson interval), mean length, distinct-2, and a few anchors beside their prompt's
human negative. `negalign sample` prints and saves it beside the samples file; `sampling: refresh` saves one
per refresh.

`anchor_source` reads a samples file's .meta.json: the sampling context it was drawn under and the weights
that drew it; `anchor_provenance` makes a run's record of them (sampling_context.json, the model card), which
also decides whether `d2o/kl_on_samples` (an estimate valid only for samples drawn from the reference, with
no context) is logged.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from negalign.files import atomic_write_text

logger = logging.getLogger("negalign")

REPORT_SUFFIX = ".anchors.json"
N_EXAMPLES = 4


def keyword_refuses(answers: Sequence[str]) -> list[bool]:
    from negalign.evaluation.judge import has_refusal_phrase

    return [has_refusal_phrase(a) for a in answers]


@functools.lru_cache(maxsize=1)
def _judge():
    from negalign.evaluation.judge import HarmJudge

    return HarmJudge.load()


def judge_refuses(answers: Sequence[str]) -> list[bool]:
    """The offline harm judge (embedding + refusal-phrase head): probability of complying <= 0.5."""
    from negalign.evaluation.metrics import THRESHOLD

    return [p <= THRESHOLD for p in _judge().complies([""] * len(answers), list(answers))]


def _last_user(prompt: list[dict]) -> str:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


def anchor_report(samples: list[dict], negatives: dict[str, str] | None = None,
                  refuses: Callable[[Sequence[str]], list[bool]] | None = None, n_examples: int = N_EXAMPLES) -> dict:
    """Summary of sample rows ({prompt, completion, n_tokens?}); `negatives` maps prompt_key -> the human
    negative shown beside the examples; `refuses` judges answers (default: the offline judge)."""
    from negalign.data import prompt_key
    from negalign.evaluation.metrics import distinct_n, wilson_interval, words

    answers = [row["completion"] for row in samples]
    flags = (refuses or judge_refuses)(answers) if answers else []
    count = int(sum(flags))
    low, high = wilson_interval(count, len(flags))
    by_prompt: dict[str, list[int]] = {}
    for index, row in enumerate(samples):
        by_prompt.setdefault(prompt_key(row["prompt"]), []).append(index)
    examples = []
    for key, indices in list(by_prompt.items())[:n_examples]:
        examples.append({"prompt": _last_user(samples[indices[0]]["prompt"]),
                         "human_negative": (negatives or {}).get(key),
                         "anchors": [{"text": answers[i], "refusal": bool(flags[i])} for i in indices]})
    tokens = [row["n_tokens"] for row in samples if "n_tokens" in row]
    return {
        "n_anchors": len(answers), "n_prompts": len(by_prompt),
        "refusal": {"rate": count / len(flags) if flags else None, "count": count, "n": len(flags),
                    "low": low, "high": high, "judge": "offline" if refuses is None else getattr(refuses, "__name__", "custom")},
        "prompts_with_a_refusal": sum(any(flags[i] for i in ix) for ix in by_prompt.values()),
        "mean_tokens": sum(tokens) / len(tokens) if tokens else None,
        "mean_words": sum(len(words(a)) for a in answers) / len(answers) if answers else None,
        "distinct_2": distinct_n([words(a) for a in answers], 2) if answers else None,
        "examples": examples,
    }


def format_report(report: dict, width: int = 160) -> str:
    r = report["refusal"]
    rate = "n/a" if r["rate"] is None else f"{r['rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
    lines = [f"anchors: {report['n_anchors']} on {report['n_prompts']} prompts; judged refusals {r['count']}/{r['n']} "
             f"= {rate} (Wilson 95 %); prompts with at least one refusal: {report['prompts_with_a_refusal']}",
             f"  mean length {report['mean_words'] or 0:.1f} words"
             + (f" ({report['mean_tokens']:.1f} tokens)" if report["mean_tokens"] else "")
             + f"; distinct-2 {report['distinct_2'] or 0:.3f}"]
    clip = lambda text: " ".join(str(text).split())[:width]  # noqa: E731
    for example in report["examples"]:
        lines.append(f"  prompt: {clip(example['prompt'])}")
        if example["human_negative"] is not None:
            lines.append(f"    human negative: {clip(example['human_negative'])}")
        for anchor in example["anchors"]:
            lines.append(f"    anchor ({'refusal' if anchor['refusal'] else 'answer'}): {clip(anchor['text'])}")
    return "\n".join(lines)


def report_samples_file(samples_path: str | os.PathLike, data: str | None = None, on_bad_row: str = "error",
                        refuses=None) -> dict:
    """Anchor report of a samples file (negatives from `data` when given), saved as <samples>.anchors.json."""
    from negalign.data import load_rows, prompt_key

    samples, _ = load_rows(str(samples_path))
    negatives = {}
    if data:
        from negalign.data import DataError
        from negalign.data.catalog import resolve_data

        try:
            rows, _ = load_rows(resolve_data(data), on_bad_row=on_bad_row)
        except DataError:  # prompts without answers (benign instructions): no negatives to show beside
            rows = []
        for row in rows:
            if row.get("label") is False and row.get("origin", "human") == "human":
                negatives.setdefault(prompt_key(row["prompt"]), row["completion"])
    from negalign.data.readers import iter_jsonl

    raw = [record.value for record in iter_jsonl(samples_path)]  # load_rows above has checked every line
    for row, line in zip(samples, raw):  # load_rows normalises away n_tokens; lengths come from the raw lines
        if "n_tokens" in line:
            row["n_tokens"] = line["n_tokens"]
    report = anchor_report(samples, negatives, refuses)
    atomic_write_text(str(samples_path) + REPORT_SUFFIX, json.dumps(report, indent=2) + "\n")
    return report


def anchor_source(samples_path: str | None) -> dict | None:
    """The samples file's .meta.json (model, weights fingerprint, settings, sampling_context) or None."""
    from negalign.sampling import META_SUFFIX

    if not samples_path:
        return None
    meta = Path(str(samples_path) + META_SUFFIX)
    if not meta.exists():
        return None
    from negalign.data.readers import read_json_file

    return read_json_file(meta, f"move {samples_path} and it aside and draw the samples again (negalign sample)")


def anchor_provenance(config, policy, fingerprint: str | None = None) -> dict | None:
    """Where D2O's anchors come from: the sampling context (from the samples file's meta for static samples,
    from the config under `sampling: refresh`) and whether they were drawn from the reference pi_r- itself
    with no context, the one case where `d2o/kl_on_samples` estimates a KL. A `sampling_context` set in the
    config must match the one a static samples file was drawn with. `fingerprint`: the policy's, if known."""
    from negalign.methods import method
    from negalign.models import model_fingerprint
    from negalign.sampling_context import context_hash, describe, resolve_context

    if not method(config.objective).anchored or config.k == 0:
        return None
    # D2O reads its anchors from `samples`; context distillation from `data`
    samples = config.data if method(config.objective).anchors_in_data else config.samples
    wanted = resolve_context(config.sampling_context, config.sampling_instruction)
    if config.sampling == "refresh":
        return {"sampling": "refresh", "sampling_context": describe(wanted), "from_reference": False}
    meta = anchor_source(samples)
    if meta is None:
        logger.warning("negalign: %s has no .meta.json: the sampling context and model of its anchors are "
                       "unknown (d2o/kl_on_samples is not logged)", samples)
        return {"sampling": "static", "samples": samples, "sampling_context": "unknown",
                "from_reference": False}
    drawn = (meta.get("sampling_context") or {}).get("messages")
    if (config.sampling_context or config.sampling_instruction) and context_hash(drawn) != context_hash(wanted):
        raise ValueError(f"sampling_context: {samples} was drawn with another sampling context "
                         f"({context_hash(drawn) or 'none'} vs {context_hash(wanted)} asked for here); resample "
                         "with `negalign sample --sampling-context ...` or drop sampling_context from the config")
    minus_name = config.ref_model or config.model  # pi_r-
    from_reference = (drawn is None and minus_name == config.model
                      and meta.get("weights") == (fingerprint or model_fingerprint(policy)))
    out = {"sampling": "static", "samples": samples, "sampling_context": describe(drawn),
           "samples_model": meta.get("model"), "from_reference": from_reference}
    if meta.get("server"):  # drawn through a generation server: where, which served model, its model check
        out["samples_server"] = meta["server"]
    if meta.get("mixed_with"):  # a file of anchors drawn two ways (the demo's harmful and benign anchors)
        out["mixed_with"] = [{"file": m.get("file"), "rows": m.get("rows"),
                              "sampling_context": describe((m.get("sampling_context") or {}).get("messages"))}
                             for m in meta["mixed_with"]]
        out["from_reference"] = False
    return out
