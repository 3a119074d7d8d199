"""A round's data: the current model answers the round's prompts, the offline judge flags harmful compliance
and benign refusals, anchors are drawn from the current model, and the training files are composed. Every
file is a `negalign sample` file (appended batch by batch, resumed on a rerun) or written atomically, so a
round killed here continues without redrawing what is on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path

from negalign.files import atomic_write_text

ANSWERS = {"harmful": "answers_harmful.jsonl", "benign": "answers_benign.jsonl"}
NEGATIVES = {"harmful": "negatives_harmful.jsonl", "benign": "negatives_benign.jsonl"}
ANCHORS = {"harmful": "anchors_harmful.jsonl", "benign": "anchors_benign.jsonl"}
TRAIN_NEGATIVES, TRAIN_ANCHORS = "d2o_negatives.jsonl", "d2o_anchors.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()] if Path(path).exists() else []


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


class CurrentModel:
    """The round's starting model, loaded on first use (a rerun with every file on disk loads nothing)."""

    def __init__(self, name: str, settings):
        self.name, self.settings, self._loaded = name, settings, None

    def sample(self, prompts, output: Path, **changes) -> None:
        from negalign.models import load_model, load_tokenizer
        from negalign.sampling import SamplingSettings, sample

        if not prompts:
            return
        if self._loaded is None:
            options = self.settings.model_options
            self._loaded = (load_tokenizer(self.name, options.trust_remote_code, options.chat_template),
                            load_model(self.name, options))
        tokenizer, model = self._loaded
        training = self.settings.training
        sampling = SamplingSettings(**{"k": self.settings.k, "max_new_tokens": self.settings.sample_max_new_tokens,
                                       "temperature": training.get("sample_temperature", 0.7),
                                       "top_p": training.get("sample_top_p", 0.95), "seed": self.settings.seed,
                                       "max_prompt_length": training.get("max_prompt_length", 256), **changes})
        sample(model, tokenizer, prompts, output, sampling, model_id=self.name, progress=False)


def mine(settings, prompts: dict[str, list], current: CurrentModel, folder: Path, timings: dict) -> dict:
    """Answers, negatives and anchors of one round in `folder`; returns what was mined (counts, examples)."""
    from negalign.evaluation.judge import HarmJudge
    from negalign.flag import flag_complying
    from negalign.sampling_context import resolve_context

    context = resolve_context(settings.sampling_context)
    clock = time.time()
    greedy = dict(k=1, temperature=0.0, max_new_tokens=settings.answer_max_new_tokens, batch_size=64)
    current.sample(prompts["harmful"], folder / ANSWERS["harmful"], **greedy)
    if settings.benign_refusals and prompts["benign"]:
        current.sample(prompts["benign"], folder / ANSWERS["benign"], **greedy,
                       context=context if settings.benign_under_context else None)
    timings["answers"] = time.time() - clock
    clock, judge, reports = time.time(), HarmJudge.load(), {}
    for kind, keep in (("harmful", "complying"), ("benign", "refusing")):
        if (folder / ANSWERS[kind]).exists():
            reports[kind] = flag_complying(folder / ANSWERS[kind], folder / NEGATIVES[kind], judge.complies, keep=keep)
    timings["flag"] = time.time() - clock
    clock = time.time()
    flagged = [n["prompt"] for n in read_jsonl(folder / NEGATIVES["harmful"])]
    current.sample(flagged, folder / ANCHORS["harmful"], context=context, batch_size=32)
    current.sample(prompts["benign"], folder / ANCHORS["benign"], batch_size=64)  # plain: what benign answers are
    timings["anchors"] = time.time() - clock
    return summary(folder, reports)


def summary(folder: Path, reports: dict) -> dict:
    """Counts of every kind of row mined, and a few examples of each kind of negative."""
    out = {}
    for kind in ("harmful", "benign"):
        negatives = read_jsonl(folder / NEGATIVES[kind])
        out[kind] = {"answered": reports[kind]["n_answers"] if kind in reports else 0,
                     "negatives": len(negatives), "anchors": len(read_jsonl(folder / ANCHORS[kind])),
                     "examples": [{"prompt": n["prompt"][-1]["content"][:160], "answer": n["rejected"][:200]}
                                  for n in negatives[:3]]}
    return out


def compose(settings, folder: Path, earlier: list[Path]) -> dict | None:
    """The round's training files: D2O's negatives (this round's, and with keep_negatives the earlier rounds'
    own), the anchors of every negative's prompt (a prompt met again takes this round's anchors, drawn from the
    current model), and the anchor-only rows. None when there is no negative to train on."""
    from negalign.data import prompt_key

    kinds = [k for k, on in (("harmful", settings.harmful_negatives), ("benign", settings.benign_refusals)) if on]
    sources = (earlier if settings.keep_negatives else []) + [folder]
    negatives = [row for source in sources for kind in kinds for row in read_jsonl(source / NEGATIVES[kind])]
    if not negatives:
        return None
    anchors: dict[str, list[dict]] = {}
    for source in sources:  # later rounds replace earlier anchors of the same prompt
        mine_here: dict[str, list[dict]] = {}
        for kind in ("harmful", "benign"):
            for row in read_jsonl(source / ANCHORS[kind]):
                mine_here.setdefault(prompt_key(row["prompt"]), []).append(row)
        anchors.update(mine_here)
    write_jsonl(folder / TRAIN_NEGATIVES, negatives)
    write_jsonl(folder / TRAIN_ANCHORS, [row for rows in anchors.values() for row in rows])
    drawn_under_context = write_anchor_meta(folder / TRAIN_ANCHORS, [s / ANCHORS[k] for s in sources
                                                                     for k in ("harmful", "benign")])
    anchor_only = folder / (TRAIN_ANCHORS if not settings.harmful_negatives else ANCHORS["benign"])
    return {"data": folder / TRAIN_NEGATIVES, "samples": folder / TRAIN_ANCHORS,
            "benign_samples": anchor_only if anchor_only.exists() else None,
            "sampling_context": settings.sampling_context if drawn_under_context else None,
            "n_negatives": len(negatives)}


def write_anchor_meta(mixed: Path, parts: list[Path]) -> bool:
    """The composed anchors file's .meta.json: the meta of the first part drawn under a context (training checks
    its context against the recipe's), with every other part listed under mixed_with, so the model card says
    where each came from. Returns whether that first part was drawn under a context."""
    from negalign.anchors import anchor_source
    from negalign.sampling import META_SUFFIX

    metas = [(part, meta) for part in parts if part.exists() and (meta := anchor_source(part)) is not None]
    if not metas:
        return False
    base = next(((p, m) for p, m in metas if (m.get("sampling_context") or {}).get("messages")), metas[0])
    record = {**base[1], "mixed_with": [{"file": f"{p.parent.name}/{p.name}", "rows": len(read_jsonl(p)),
                                         "sampling_context": m.get("sampling_context"), "settings": m.get("settings")}
                                        for p, m in metas if p != base[0]]}
    atomic_write_text(Path(str(mixed) + META_SUFFIX), json.dumps(record, indent=2) + "\n")
    return bool((base[1].get("sampling_context") or {}).get("messages"))
