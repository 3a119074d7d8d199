"""Evaluation: the offline harm judge, metrics, prompt suites, `negalign eval`, the LLM judge and reports.

    from negalign.evaluation import HarmJudge, evaluate, EvalSettings, compare
    judge = HarmJudge.load()                          # the shipped head; no data needed
    judge.complies(prompts, answers)                  # -> probability each answer complies (not refuses)
    evaluate(EvalSettings(model="smollm2-135m-instruct", max_prompts=20))   # writes evals/.../eval.json
    compare(["runs/d2o", "runs/dpo"], "reports/d2o-vs-dpo")                   # report.md + PNG plots

Names are imported on first use, so `import negalign.evaluation` stays cheap for the command line.
"""

from importlib import import_module

_EXPORTS = {
    "HarmJudge": "judge", "fit_judge": "judge", "keyword_complies": "judge", "load_xstest_answers": "judge",
    "SentenceEncoder": "encoder",
    "EvalSettings": "evaluate", "evaluate": "evaluate",
    "Suite": "suites", "load_suites": "suites", "file_suites": "suites",
    "ChatClient": "llm_judge", "pairwise_judge": "llm_judge", "parse_verdict": "llm_judge",
    "compare": "report",
    "generate_answers": "generate", "completion_logps": "generate",
}

__all__ = sorted(_EXPORTS) + ["metrics"]


def __getattr__(name):
    if name == "metrics":
        return import_module("negalign.evaluation.metrics")
    if name in _EXPORTS:
        return getattr(import_module(f"negalign.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'negalign.evaluation' has no attribute {name!r}")
