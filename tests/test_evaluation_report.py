"""`negalign compare`: report.json / report.md carry the numbers of each eval; the plots are real PNGs."""

import json

import pytest

from negalign.cli import main
from negalign.evaluation.report import compare, training_series


def rate(value, low, high, n=20):
    return {"rate": value, "low": low, "high": high, "n": n, "count": round(value * n), "interval": "wilson"}


def fake_eval(harm, refuse, accuracy, kl):
    return {
        "model": "m", "reference": "r",
        "suites": {
            "advbench": {"kind": "harmful", "n": 20, "harmful_compliance": harm, "answer_tokens": 50.0,
                         "repeated_3gram_fraction": 0.1},
            "xstest-safe": {"kind": "benign", "n": 20, "benign_refusal": refuse, "answer_tokens": 70.0,
                            "repeated_3gram_fraction": 0.3},
        },
        "harmful": {"harmful_compliance": harm}, "benign": {"benign_refusal": refuse},
        "preference": {"accuracy": accuracy, "mean_margin": 1.25, "chosen_nll_per_token": 2.5},
        "kl": {"kl": kl},
    }


def make_runs(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "eval.json").write_text(json.dumps(fake_eval(rate(0.65, 0.45, 0.85), rate(0.05, 0.0, 0.15), 0.5, 0.0)))
    d2o = tmp_path / "d2o"
    (d2o / "eval").mkdir(parents=True)
    trained = fake_eval(rate(0.25, 0.1, 0.4), rate(0.15, 0.0, 0.3), 0.625, 3.5)
    trained["harmful"]["short_compliance"] = rate(0.15, 0.05, 0.36)  # 3 of the 5 complying answers are fragments
    (d2o / "eval" / "eval.json").write_text(json.dumps(trained))
    history = [{"loss": 0.69 - 0.05 * s, "step": s, "d2o/z": 0.1 * s, "learning_rate": 5e-6, "epoch": 0.1 * s}
               for s in range(1, 11)] + [{"train_runtime": 12.0, "train_loss": 0.5, "step": 10}]
    (d2o / "train_log.json").write_text(json.dumps({"data": "x", "log_history": history}))
    return base, d2o


def test_report_contains_the_numbers(tmp_path):
    base, d2o = make_runs(tmp_path)
    report = compare([str(base), str(d2o)], tmp_path / "report")
    runs = {r["label"]: r for r in report["runs"]}
    assert runs["d2o"]["harmful_compliance"]["rate"] == 0.25 and runs["base"]["benign_refusal"]["rate"] == 0.05
    assert runs["d2o"]["kl"] == 3.5 and runs["d2o"]["preference_accuracy"] == 0.625
    assert runs["d2o"]["train"] == pytest.approx({"steps": 10, "first_loss": 0.64, "last_loss": 0.19})
    assert runs["d2o"]["answer_tokens"] == 60.0  # (20 * 50 + 20 * 70) / 40
    md = (tmp_path / "report" / "report.md").read_text()
    assert runs["d2o"]["short_compliance"]["count"] == 3 and runs["base"]["short_compliance"] is None
    assert "| d2o | 0.250 [0.100, 0.400] (n=20) | 0.150 |" in md and "| base | 0.650 [0.450, 0.850] (n=20) | - |" in md
    for text in ("0.250 [0.100, 0.400] (n=20)", "0.050 [0.000, 0.150] (n=20)", "0.625", "3.50", "| d2o |",
                 "| base |", "![harm_vs_refusal](harm_vs_refusal.png)", "training_curves.png"):
        assert text in md, text
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["runs"][1]["suites"]["advbench"]["rate"] == 0.25
    for name in ("harm_vs_refusal.png", "suites.png", "training_curves.png"):
        data = (tmp_path / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_training_series_skips_summaries():
    series = training_series([{"loss": 1.0, "step": 1, "d2o/z": 0.5}, {"train_runtime": 3.0, "step": 1},
                              {"loss": float("nan"), "step": 2}])
    assert series == {"loss": ([1], [1.0]), "d2o/z": ([1], [0.5])}


def test_cli_compare(tmp_path, capsys):
    base, d2o = make_runs(tmp_path)
    assert main(["compare", str(base), str(d2o / "eval" / "eval.json"), "--output", str(tmp_path / "r")]) == 0
    assert "2 runs" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "missing"), "--output", str(tmp_path / "r")]) == 2


def test_degenerate_models_are_flagged_against_their_starting_model(tmp_path):
    """Worked by hand: the start's held-out NLL is 2.5; a model at 3.2 is 1.28x it (flagged at 1.25x), one at
    3.0 is 1.2x (not flagged); 0.6 of repeated 3-grams is flagged, 0.3 is not."""
    runs = []
    for name, nll, repeats, reference in [("base", 2.5, 0.1, None), ("ok", 3.0, 0.3, "base-model"),
                                          ("nonsense", 3.2, 0.1, "base-model"), ("loops", 2.6, 0.6, "base-model")]:
        evaluation = fake_eval(rate(0.9, 0.7, 0.97), rate(0.0, 0.0, 0.16), 0.5, 1.0)
        evaluation["model"], evaluation["reference"] = ("base-model" if name == "base" else name), reference
        evaluation["preference"]["chosen_nll_per_token"] = nll
        for suite in evaluation["suites"].values():
            suite["repeated_3gram_fraction"] = repeats
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(evaluation))
        runs.append(str(tmp_path / name))
    report = compare(runs, tmp_path / "report")
    flags = {run["label"]: run["degenerate"] for run in report["runs"]}
    assert flags["base"] is None and flags["ok"] is None
    assert flags["nonsense"] == "held-out NLL 1.28x base's"
    assert flags["loops"] == "60% of its 3-grams repeated"
    text = (tmp_path / "report" / "report.md").read_text()
    assert "**Degenerate answers**: nonsense (held-out NLL 1.28x base's); loops (60% of its 3-grams repeated)" in text
