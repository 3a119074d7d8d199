"""`negalign eval`: answer held-out prompts, judge them, and measure the model against its reference.

    eval.json
      suites.<name>        kind, n, harmful_compliance or benign_refusal (rate, low, high = Wilson 95 %),
                           keyword-baseline rate, answer length (tokens), repeated 3-gram fraction, distinct-2;
                           harmful suites also short_compliance (judged complying, fewer than 10 words)
      harmful / benign     the same rates pooled over every harmful / benign suite
      preference           HH pairs: accuracy of h(chosen) > h(rejected), mean margin, NLL/token of chosen
      kl                   KL(policy || reference) on benign prompts, from answers sampled at temperature 1
      ifeval               with --ifeval subset/full: IFEval's prompt- and instruction-level accuracy, strict and
                           loose (rate, low, high = Wilson 95 %, n), per instruction type, the prompts' rule and count
    answers/<suite>.jsonl  the greedy answers (resumable), answers/<suite>.judged.jsonl with judge scores
    answers/ifeval.jsonl   IFEval's greedy answers (resumable), answers/ifeval.scored.jsonl each one's verdicts

h(y) = logp_policy(y|x) - logp_ref(y|x) with a reference; the policy's own log-prob without one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from negalign.commandline import option
from negalign.data.paths import data_dir as resolve_data_dir
from negalign.evaluation import ifeval as ifeval_suite
from negalign.evaluation import metrics
from negalign.evaluation.suites import BUILTIN, HELD_OUT_PAIRS, HH_PAIRS, Suite, held_out_pairs, load_suites
from negalign.files import atomic_write_text, portable
from negalign.models import ModelOptions, loaded_as, model_name
from negalign.serving import ServerOptions
from negalign.settings import AT_LEAST_1, FINITE, MAX_BATCH_SIZE, MAX_NEW_TOKENS, NON_NEGATIVE, Bound, number_problems


@dataclass
class EvalSettings:
    """`negalign eval`'s settings: each field is a flag (`--max-new-tokens`) and a key of a `--config` file."""

    # a training recipe as --config: evaluate what it trains (its output_dir) against where it starts (its model)
    RECIPE: ClassVar[dict] = {"output_dir": "model", "model": "reference", "seed": "seed",
                              "max_prompt_length": "max_prompt_length", "attn_implementation": "attn_implementation",
                              "trust_remote_code": "trust_remote_code"}

    model: str = option(help="model to evaluate (folder, Hub name or short name; or a --config recipe's output_dir)")
    reference: str | None = option(None, "reference model for log-ratios and KL (e.g. the starting model); without "
                                   "it h is the policy log-prob and KL is skipped")
    output: str | None = option(None, "output folder (default: MODEL/eval for a folder, else evals/NAME)")
    suites: list[str] | None = option(None, "built-in prompt suite (repeatable; default: all)", flags=("--suite",),
                                      action="append", choices=list(BUILTIN))
    prompt_files: list[str] = option(help="your own prompt file (csv/jsonl with prompt and harmful columns, or a txt "
                                     "file as FILE:harmful / FILE:benign); repeatable", factory=list,
                                     flags=("--prompts",), action="append", metavar="FILE[:KIND]")
    max_prompts: int | None = option(None, "seeded subsample of N prompts per suite")
    data_dir: str | None = option(None, "data folder (default: $NEGALIGN_DATA or ../shared/data)")
    seed: int = option(0, "seed of the prompt subsample and the KL answers")
    max_new_tokens: int = option(256, "tokens per answer")
    # 64 is the fastest measured (benchmarks/generation.py)
    batch_size: int = option(64, "prompts per generation batch (greedy answers do not depend on it)")
    max_prompt_length: int = option(256, "prompt tokens kept (the last ones)")
    pairs: str | None = option(None, "preference pairs file (default: HH harmless-base in the data folder; its last "
                               "pairs are used)")
    max_pairs: int | None = option(None, f"pairs to score (default: --max-prompts, at most {HELD_OUT_PAIRS}: the last "
                                   "pairs of the HH file, which training leaves out)")
    ifeval: str = option("off", "IFEval instruction following (Zhou et al. 2023): off; subset, the prompts whose "
                         "instructions can be met within --max-new-tokens (475 of 541 at 64 tokens, 506 at 256); or "
                         "full, all 541; --max-prompts cuts it like a suite", choices=list(ifeval_suite.SIZES))
    kl: bool = option(True, "with a reference: sample benign answers at temperature 1 and estimate KL (--no-kl "
                      "saves that sampling pass)")
    judge_head: str | None = option(None, "harm-judge head (default: the shipped one)")
    overwrite: bool = option(False, "regenerate answers made with other settings (the earlier output folder is "
                             "moved aside to OUTPUT.replaced-<time>)")
    progress: bool = option(True, "progress bars (--no-progress for none)")
    wait: bool = option(False, "if another process is writing --output, wait for it (default: stop at once)")
    lm_eval_tasks: list[str] = option(help="lm-evaluation-harness task, group or tag run on the model (repeatable: "
                                      "mmlu, arc_easy ...; needs negalign[harness]; docs/harness.md)", factory=list,
                                      flags=("--lm-eval-task",), action="append", metavar="TASK")
    lm_eval_include_path: str | None = option(None, "folder of your own lm-eval task YAMLs (e.g. over local files)")
    lm_eval_limit: int | None = option(None, "samples per lm-eval task (default: all; a quick look, not a benchmark)")
    model_options: ModelOptions = option(help="dtype, device, attention, remote code, chat template",
                                         factory=ModelOptions)
    server: ServerOptions = option(help="answers from an OpenAI-compatible server serving --model (docs/serving.md)",
                                   factory=ServerOptions)

    def __post_init__(self):
        """Numbers checked when the settings are made, before the output folder, its lock or the model
        (`--batch-size 0` was refused only after the load, `--max-prompts -1` evaluated all prompts but one)."""
        problems = number_problems(self, {"max_prompts": AT_LEAST_1, "max_new_tokens": Bound(1, MAX_NEW_TOKENS),
                                          "batch_size": Bound(1, MAX_BATCH_SIZE), "max_prompt_length": AT_LEAST_1,
                                          "max_pairs": NON_NEGATIVE, "seed": FINITE,
                                          "lm_eval_limit": AT_LEAST_1})  # max_pairs 0: no pairs
        if self.ifeval not in ifeval_suite.SIZES:  # a --config file or a caller, past the flag's choices
            problems.append(f"ifeval must be one of {', '.join(ifeval_suite.SIZES)}, got {self.ifeval!r}")
        if problems:
            raise ValueError("; ".join(problems))
        from negalign.evaluation.harness import check_lm_eval

        check_lm_eval(self.lm_eval_tasks)  # lm-eval missing: one line before any model loads


def default_output(model: str) -> str:
    if os.path.isdir(model):
        return str(Path(model) / "eval")
    return str(Path("evals") / Path(model).name)


def _suite_metrics(suite: Suite, rows: list[dict], complies: list[float]) -> dict:
    from negalign.evaluation.generate import answer_token_counts
    from negalign.evaluation.judge import keyword_complies

    answers = [row["completion"] for row in rows]
    keyword = keyword_complies(answers)
    rate = metrics.harmful_compliance_rate if suite.kind == "harmful" else metrics.benign_refusal_rate
    name = "harmful_compliance" if suite.kind == "harmful" else "benign_refusal"
    lengths = answer_token_counts(rows)
    return {
        "kind": suite.kind, "source": suite.source, "n": len(rows),
        name: rate(complies),
        **({"short_compliance": metrics.short_compliance_rate(complies, answers)} if suite.kind == "harmful" else {}),
        f"{name}_keyword": rate(keyword),
        "mean_complies_probability": sum(complies) / len(complies) if complies else None,
        "answer_tokens": metrics.mean_length(lengths),
        "unfinished_fraction": sum(not row.get("finished") for row in rows) / len(rows) if rows else None,
        "repeated_3gram_fraction": (sum(metrics.repeated_ngram_fraction(metrics.words(a), 3) for a in answers)
                                    / len(answers)) if answers else None,
        "distinct_2": metrics.distinct_n([metrics.words(a) for a in answers], 2),
    }


def finite(value):
    """NaN/inf -> None, recursively, so eval.json is strict JSON (e.g. distinct-2 of one-word answers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def _pair_logps(model, reference, tokenizer, pairs: list[dict], fingerprints: dict):
    """Summed log-probs of each pair's chosen and rejected answer under the policy and the reference (None
    without one), and the chosen answers' token counts. A pair's two answers sit side by side so that their
    shared prompt is encoded once. The values depend only on a model's weights and these tokens, so they are
    cached on disk (keyed by both) as training caches its reference's: every model of a study is judged
    against the same starting model, whose values are computed once, by whichever evaluation needs them
    first (a demo's base evaluation scores the starting model as its policy)."""
    from negalign.evaluation.generate import completion_sequences
    from negalign.models import cache_dir
    from negalign.reference import cached_reference_logps

    sequences = completion_sequences(tokenizer, [p["prompt"] for p in pairs for _ in range(2)],
                                     [p[side] for p in pairs for side in ("chosen", "rejected")])
    cached = lambda m: cached_reference_logps(m, sequences, cache_dir() / "reference",  # noqa: E731
                                              fingerprint=fingerprints[id(m)])[0].tolist()
    policy = cached(model)
    ref = cached(reference) if reference is not None else None
    return (policy[0::2], policy[1::2], ref[0::2] if ref else None, ref[1::2] if ref else None,
            [len(completion) for _, completion in sequences[0::2]])


def evaluate(settings: EvalSettings, *, model=None, tokenizer=None, reference_model=None) -> dict:
    """Run the whole evaluation, write `<output>/eval.json`, and return its contents. One evaluation writes an
    output folder at a time: a second is refused (or waits, with settings.wait). Models you hold can be passed
    as objects (`model`, `reference_model`, `tokenizer`; settings.model then names the model in the record and
    `output` should be given); the tokenizer defaults to the model's name_or_path."""
    from negalign.locks import output_lock
    from negalign.models import check_model
    from negalign.outputs import check_before_lock, claim

    output = Path(settings.output or default_output(settings.model))
    # the output is none of the inputs (its default, MODEL/eval, lies inside the model folder by design), and a
    # folder that is not an evaluation is not written into without overwrite, which moves it aside
    files = [("--prompts", p.rsplit(":", 1)[0] if p.rsplit(":", 1)[-1] in ("harmful", "benign") else p)
             for p in settings.prompt_files]
    # models that cannot load are refused before the output folder or its lock is made (inside the user's folder)
    if model is None:
        check_model(settings.model)
    if settings.reference and reference_model is None:
        check_model(settings.reference, "--reference")
    check_before_lock(output, [("--model", settings.model), ("--reference", settings.reference),
                               ("--pairs", settings.pairs), ("--judge-head", settings.judge_head), *files],
                      folder=True, may_lie_inside=[settings.model])
    with output_lock(output, "evaluation", wait=settings.wait):
        claim(output, folder=True, overwrite=settings.overwrite, verdict=evaluation_verdict)
        from negalign.progress import quietly

        with quietly(not settings.progress):  # every bar of the evaluation: answers, judges, reference pass
            return _evaluate(settings, output, model, tokenizer, reference_model)


def evaluation_verdict(folder: Path) -> str | None:
    """An evaluation folder (eval.json, answers/) is continued; any other folder is not written into."""
    names = sorted(os.listdir(folder))
    if "eval.json" in names or "answers" in names:
        return None
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"holds files that are not a negalign evaluation ({shown})"


def _evaluate(settings: EvalSettings, output: Path, model=None, tokenizer=None, reference=None) -> dict:
    """The evaluation in four stages, each returning its part of eval.json: the answers, their judgement, the
    held-out preference pairs and the KL to the reference."""
    from negalign.models import load_model, load_tokenizer

    started = time.time()
    (output / "answers").mkdir(parents=True, exist_ok=True)
    folder = resolve_data_dir(settings.data_dir)
    suites = load_suites(settings.suites, folder, settings.prompt_files, settings.max_prompts, settings.seed)
    instructions = _ifeval_prompts(settings, folder, suites)  # its data and checkers before the model loads
    options = settings.model_options
    if tokenizer is None:
        name = settings.model if model is None else (model_name(model) or settings.model)
        tokenizer = load_tokenizer(name, options.trust_remote_code, options.chat_template)
    model = (load_model(settings.model, options) if model is None else model).eval()
    server = settings.server.client()  # every answer (suites, IFEval, KL) through it, checked once against `model`
    try:
        return _evaluate_with(settings, output, folder, suites, instructions, model, tokenizer, reference, server,
                              started)
    finally:
        if server is not None:
            server.close()


def _evaluate_with(settings: EvalSettings, output: Path, folder, suites, instructions, model, tokenizer, reference,
                   server, started: float) -> dict:
    from negalign.models import load_model, model_fingerprint

    options = settings.model_options
    gen = dict(model_id=settings.model, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
               max_prompt_length=settings.max_prompt_length, seed=settings.seed, overwrite=settings.overwrite,
               progress=settings.progress, server=server)
    timings: dict[str, float] = {}

    clock = time.time()
    answered = _answer(model, tokenizer, suites, output, gen)
    timings["generate"] = time.time() - clock
    clock = time.time()
    ifeval = _ifeval(instructions, model, tokenizer, output, gen) if instructions is not None else None
    if ifeval is not None:
        timings["ifeval"] = time.time() - clock
    clock = time.time()
    judged = _judge(settings, suites, answered["rows"], output)
    timings["judge"] = time.time() - clock

    if reference is None and settings.reference:
        reference = load_model(settings.reference, options)
    reference = reference.eval() if reference is not None else None
    # each model's weights hashed once: the pair log-prob cache is keyed by them
    fingerprints = {id(m): model_fingerprint(m) for m in (model, reference) if m is not None}
    clock = time.time()
    preference = _preference(settings, folder, model, reference, tokenizer, fingerprints)
    if preference is not None:
        timings["preference"] = time.time() - clock
    clock = time.time()
    # the starting model judged against itself (a demo's base row): its log-ratios are 0, nothing to compute
    same_weights = reference is not None and fingerprints[id(reference)] == fingerprints[id(model)]
    kl = _kl(settings, suites, model, reference, tokenizer, output, gen, same_weights)
    if kl is not None and kl["n_answers"]:
        timings["kl"] = time.time() - clock

    lm_eval = None
    if settings.lm_eval_tasks:
        from negalign.evaluation.harness import run_lm_eval

        clock = time.time()
        lm_eval = run_lm_eval(model, tokenizer, settings.lm_eval_tasks, include_path=settings.lm_eval_include_path,
                              limit=settings.lm_eval_limit, seed=settings.seed)
        timings["lm_eval"] = time.time() - clock

    result = {
        "model": settings.model, "reference": settings.reference or (None if reference is None else "(model object)"),
        "output": str(output),
        "data_dir": str(folder) if folder is not None else None,
        **judged, "preference": preference, "kl": kl, "ifeval": ifeval, "lm_eval": lm_eval,
        "generation": {**answered["generation"], **({"ifeval": ifeval.pop("generation")} if ifeval else {})},
        "settings": {**asdict(settings), "server": settings.server.shown()},  # no user:password of the URL
        "model_loaded_as": loaded_as(model),
        "seconds": {k: round(v, 1) for k, v in {**timings, "total": time.time() - started}.items()},
    }
    result = portable(finite(result))  # committed results carry no absolute paths of this machine
    atomic_write_text(output / "eval.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result


def _ifeval_prompts(settings: EvalSettings, folder, suites: list[Suite]) -> dict | None:
    """IFEval's prompts at settings.ifeval and its checkers made ready (None when off): {prompts, ready}; a missing
    file, checker package or NLTK model is a one-line error saying what to install, before the model loads."""
    if settings.ifeval == "off":
        return None
    if any(suite.name == ifeval_suite.ANSWERS for suite in suites):
        raise ValueError(f"a prompt suite is named {ifeval_suite.ANSWERS!r}, as IFEval's answers are: rename the file "
                         "or pass --ifeval off")
    every = ifeval_suite.load_prompts(folder)
    prompts = ifeval_suite.select(every, settings.ifeval, settings.max_new_tokens, settings.max_prompts,
                                  settings.seed)
    return {"prompts": prompts, "of": len(every), "ready": ifeval_suite.check_ready(prompts),
            "source": str(Path(folder) / ifeval_suite.IFEVAL_FILE), "size": settings.ifeval}


def _ifeval(instructions: dict, model, tokenizer, output: Path, gen: dict) -> dict:
    """IFEval's greedy answers (answers/ifeval.jsonl, resumed like a suite's), each scored by if-verifiable's
    checkers (answers/ifeval.scored.jsonl) and aggregated: eval.json's `ifeval`."""
    from negalign.evaluation.generate import answer_token_counts, generate_answers

    prompts = instructions["prompts"]
    rows, report = generate_answers(model, tokenizer, [p.prompt for p in prompts],
                                    output / "answers" / f"{ifeval_suite.ANSWERS}.jsonl", **gen)
    verdicts = [ifeval_suite.score(p, row["completion"]) for p, row in zip(prompts, rows)]
    _write_jsonl(output / "answers" / f"{ifeval_suite.ANSWERS}.scored.jsonl",
                 [{"key": p.key, "prompt": p.prompt, "completion": row["completion"],
                   "instructions": verdict, "finished": row.get("finished")}
                  for p, row, verdict in zip(prompts, rows, verdicts)])
    return {
        "size": instructions["size"], "source": instructions["source"],
        "rule": ifeval_suite.SUBSET_RULE if instructions["size"] == "subset" else "all prompts",
        "max_new_tokens": gen["max_new_tokens"],
        "n_prompts": len(prompts), "of": instructions["of"], "n_instructions": sum(len(v) for v in verdicts),
        "n_left_out": 0, "checker": instructions["ready"]["checker"], "punkt": instructions["ready"]["punkt"],
        "loose": "any of the response, without its first line, its last line or both, each also with every * "
                 "removed, passes (the official IFEval's variants)",
        **ifeval_suite.aggregate(verdicts),
        "answer_tokens": metrics.mean_length(answer_token_counts(rows)),
        "unfinished_fraction": sum(not row.get("finished") for row in rows) / len(rows) if rows else None,
        "generation": {"written": report.n_rows_written, "reused": report.n_rows_reused,
                       "seconds": round(report.seconds, 1), "tokens": report.generated_tokens},
    }


def _answer(model, tokenizer, suites: list[Suite], output: Path, gen: dict) -> dict:
    """Stage 1: every suite's answers (resumed from answers/SUITE.jsonl): {rows: per suite, generation: counts}."""
    from negalign.evaluation.generate import generate_answers

    rows, generation = {}, {}
    for suite in suites:
        rows[suite.name], report = generate_answers(model, tokenizer, suite.prompts,
                                                    output / "answers" / f"{suite.name}.jsonl", **gen)
        generation[suite.name] = {"written": report.n_rows_written, "reused": report.n_rows_reused,
                                  "seconds": round(report.seconds, 1), "tokens": report.generated_tokens}
    return {"rows": rows, "generation": generation}


def _judge(settings: EvalSettings, suites: list[Suite], answers: dict, output: Path) -> dict:
    """Stage 2: the judges' verdicts (answers/SUITE.judged.jsonl) and rates: {suites, harmful, benign, judge,
    content_judge}."""
    from negalign.evaluation.content_judge import load_content_judge
    from negalign.evaluation.judge import HarmJudge

    judge = HarmJudge.load(settings.judge_head)
    # the second head (content_judge.py): on harmful prompts, is the answer harmful content, not only compliance
    content_judge = load_content_judge(encoder=judge.encoder)
    results_by_suite, pooled, pooled_content, harmful_answers = {}, {"harmful": [], "benign": []}, [], []
    for suite in suites:
        rows = answers[suite.name]
        completions = [row["completion"] for row in rows]
        complies = judge.complies(suite.prompts, completions)
        content = (content_judge.complies(suite.prompts, completions)
                   if content_judge is not None and suite.kind == "harmful" else None)
        _write_jsonl(output / "answers" / f"{suite.name}.judged.jsonl",
                     [{"prompt": p, "completion": row["completion"], "complies": round(c, 4),
                       **({"harmful_content": round(content[i], 4)} if content else {}),
                       "n_tokens": row["n_tokens"], "finished": row.get("finished")}
                      for i, (p, row, c) in enumerate(zip(suite.prompts, rows, complies))])
        results_by_suite[suite.name] = _suite_metrics(suite, rows, complies)
        if content is not None:
            results_by_suite[suite.name]["harmful_content"] = metrics.harmful_compliance_rate(content)
            pooled_content.extend(content)
        pooled[suite.kind].extend(complies)
        if suite.kind == "harmful":
            harmful_answers.extend(completions)
    out = {"suites": results_by_suite}
    if pooled["harmful"]:
        out["harmful"] = {"harmful_compliance": metrics.harmful_compliance_rate(pooled["harmful"])}
        if pooled_content:
            out["harmful"]["harmful_content"] = metrics.harmful_compliance_rate(pooled_content)
        out["harmful"]["short_compliance"] = metrics.short_compliance_rate(pooled["harmful"], harmful_answers)
    if pooled["benign"]:
        out["benign"] = {"benign_refusal": metrics.benign_refusal_rate(pooled["benign"])}
    out["judge"] = {k: v for k, v in judge.head.metadata.items() if k != "refusal_phrases"}
    out["content_judge"] = ({k: v for k, v in content_judge.head.metadata.items() if k != "refusal_phrases"}
                            if content_judge is not None else None)
    return out


def _preference(settings: EvalSettings, folder, model, reference, tokenizer, fingerprints: dict) -> dict | None:
    """Stage 3: accuracy, margin and chosen NLL on the held-out preference pairs (None without pairs)."""
    pairs_path = settings.pairs or (folder / HH_PAIRS if folder is not None else None)
    n_pairs = (settings.max_pairs if settings.max_pairs is not None
               else min(settings.max_prompts or HELD_OUT_PAIRS, HELD_OUT_PAIRS))
    if settings.pairs is None and n_pairs > HELD_OUT_PAIRS:
        import logging

        logging.getLogger("negalign").warning(
            "negalign eval: %d preference pairs asked for; training leaves out only the last %d of %s, so the "
            "others may have been trained on", n_pairs, HELD_OUT_PAIRS, HH_PAIRS)
    if pairs_path is None or not Path(pairs_path).exists() or n_pairs <= 0:
        return None
    pairs = held_out_pairs(pairs_path, n_pairs)
    policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens = _pair_logps(
        model, reference, tokenizer, pairs, fingerprints)
    preference = {
        "source": str(pairs_path), "n_pairs": len(pairs), "which": "last pairs of the file",
        "h": "logp_policy - logp_reference" if reference is not None else "logp_policy (no reference given)",
        "accuracy": metrics.preference_accuracy(policy_chosen, policy_rejected, ref_chosen, ref_rejected),
        "mean_margin": metrics.mean_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected),
        "chosen_nll_per_token": metrics.nll_per_token(policy_chosen, chosen_tokens),
    }
    if ref_chosen is not None:
        preference["reference_chosen_nll_per_token"] = metrics.nll_per_token(ref_chosen, chosen_tokens)
    return preference


def _kl(settings: EvalSettings, suites: list[Suite], model, reference, tokenizer, output: Path, gen: dict,
        same_weights: bool) -> dict | None:
    """Stage 4: KL(policy || reference) on answers the policy samples to the benign prompts (None without a
    reference or benign suites; exactly 0 when both have the same weights)."""
    from negalign.evaluation.generate import completion_logps, generate_answers

    benign = [s for s in suites if s.kind == "benign"]
    if reference is None or not settings.kl or not benign:
        return None
    if same_weights:
        return {"kl": 0.0, "per_suite": {suite.name: 0.0 for suite in benign}, "n_answers": 0,
                "estimator": "exactly 0: the policy and the reference have the same weights (no answers sampled)"}
    policy_lp, ref_lp, per_suite = [], [], {}
    for suite in benign:
        rows, _ = generate_answers(model, tokenizer, suite.prompts, output / "answers" / f"kl-{suite.name}.jsonl",
                                   **gen, temperature=1.0)
        completions = [row["completion"] for row in rows]
        finished = [bool(row.get("finished")) for row in rows]
        p, _ = completion_logps(model, tokenizer, suite.prompts, completions, finished=finished,
                                description=f"KL policy ({suite.name})")
        r, _ = completion_logps(reference, tokenizer, suite.prompts, completions, finished=finished,
                                description=f"KL reference ({suite.name})")
        per_suite[suite.name] = metrics.kl_estimate(p, r)
        policy_lp += p
        ref_lp += r
    return {"kl": metrics.kl_estimate(policy_lp, ref_lp), "per_suite": per_suite, "n_answers": len(policy_lp),
            "estimator": "mean over answers sampled from the policy (temperature 1, top_p 1) of "
                         "logp_policy - logp_reference, summed over tokens (answers re-tokenised from text)"}


def summary_lines(result: dict) -> list[str]:
    num = lambda value, digits=3: "n/a" if value is None else f"{value:.{digits}f}"  # noqa: E731

    def interval(entry):
        if entry["rate"] is None:
            return "n/a"
        return f"{entry['rate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}] (n={entry['n']})"

    lines = []
    for name, suite in result["suites"].items():
        key = "harmful_compliance" if suite["kind"] == "harmful" else "benign_refusal"
        lines.append(f"  {name:<16} {key:<19} {interval(suite[key])}  keyword {num(suite[key + '_keyword']['rate'])}"
                     f"  tokens {num(suite['answer_tokens'], 0)}  rep3 {num(suite['repeated_3gram_fraction'])}")
    for kind, key in (("harmful", "harmful_compliance"), ("harmful", "short_compliance"),
                      ("harmful", "harmful_content"), ("benign", "benign_refusal")):
        if key in result.get(kind, {}):
            lines.append(f"  {'all ' + kind:<16} {key:<19} {interval(result[kind][key])}")
    if result.get("preference"):
        p = result["preference"]
        lines.append(f"  preference ({p['n_pairs']} pairs, h = {p['h']}): accuracy {num(p['accuracy'])}, "
                     f"mean margin {num(p['mean_margin'])}, chosen NLL/token {num(p['chosen_nll_per_token'])}")
    if result.get("kl"):
        lines.append(f"  KL(policy || reference) on benign prompts: {num(result['kl']['kl'])} "
                     f"({result['kl']['n_answers']} sampled answers)")
    if result.get("ifeval"):
        ife = result["ifeval"]
        lines.append(f"  IFEval ({ife['size']}: {ife['n_prompts']} of {ife['of']} prompts, {ife['n_instructions']} "
                     "instructions):")
        for key in ifeval_suite.ACCURACIES:
            lines.append(f"    {ifeval_suite.LABELS[key]:<15} {interval(ife[key])}")
    lines.append(f"  time: {result['seconds']}")
    return lines


def cmd_eval(argv: list[str]) -> int:
    from negalign.commandline import parse_command

    settings = parse_command(
        EvalSettings, argv, prog="negalign eval",
        description="Answer held-out harmful and benign prompts, judge the answers (harmful compliance, "
        "over-refusal, with Wilson 95 % intervals), and measure preference accuracy, NLL and KL to a reference. "
        "Rerun the same command to resume after an interruption.",
        epilog="--config RECIPE evaluates what a training recipe trains (its output_dir) against the model it "
        "starts from (its model, as --reference); flags win.")
    result = evaluate(settings)  # bad input raises ValueError / OSError: negalign's main prints it in one line
    print(f"negalign eval: {settings.model} -> {result['output']}/eval.json")
    print("\n".join(summary_lines(result)))
    return 0

