"""negalign eval's lm_eval_tasks (negalign/evaluation/harness.py, wired into evaluate.py and report.py) end to end,
into eval.json and compare's report."""

import json

import pytest

from tests.test_evaluation_eval import inputs, settings  # noqa: F401 - the fixture
from tests.test_lm_eval import local_tasks, offline  # noqa: F401 - the fixtures


def test_eval_runs_lm_eval_tasks_into_eval_json_and_report(tiny_model_dir, inputs, local_tasks, offline, tmp_path):  # noqa: F811
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'negalign[harness]')")
    from negalign.evaluation.evaluate import EvalSettings, evaluate
    from negalign.evaluation.report import compare

    if "lm_eval_tasks" not in EvalSettings.__dataclass_fields__:
        pytest.skip("EvalSettings has no lm_eval_tasks yet: the harness hook is wired into evaluate.py at merge")
    out = tmp_path / "eval"
    result = evaluate(settings(tiny_model_dir, inputs, out, lm_eval_tasks=["tiny_quiz"],
                               lm_eval_include_path=local_tasks, lm_eval_limit=4))
    saved = json.loads((out / "eval.json").read_text())
    assert saved["lm_eval"]["tasks"]["tiny_quiz"]["n"] == 4 == result["lm_eval"]["tasks"]["tiny_quiz"]["n"]
    assert "lm_eval" in saved["seconds"]
    compare([str(out)], tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Standard benchmarks (lm-evaluation-harness)" in report and "| tiny_quiz | acc ↑ |" in report
