"""The demo's stages as typed pieces: the files each set of settings makes (DemoFiles), the settings an earlier
result differs in, the files each method trains on, and the training and evaluation stages' reuse. No model is
loaded: the stages that would load one are stubbed."""

from __future__ import annotations

import ast
import json
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _settings(tmp_path, **changes):
    from negalign.demo import DemoSettings

    return DemoSettings(preset="quick", output=str(tmp_path), **changes)


def test_demo_files_of_the_quick_preset_with_benign_refusals(tmp_path):
    from negalign.demo import DemoFiles
    from negalign.demo.data import demo_files

    out = tmp_path
    assert demo_files(_settings(tmp_path), out) == DemoFiles(
        answers=out / "answers.jsonl", flagged=out / "negatives.jsonl", negatives=out / "d2o_negatives.jsonl",
        harmful_anchors=out / "samples.jsonl", samples=out / "d2o_anchors.jsonl",
        benign_samples=out / "benign_samples.jsonl", benign_answers=out / "benign_answers.jsonl",
        benign_refusals=out / "benign_refusals.jsonl", d2o_negatives=None, anchor_only=None,
        anchors=out / "d2o_anchors.jsonl", pairs=out / "train_pairs_benign_refusals.jsonl")


def test_demo_files_without_benign_refusals_keep_the_harmful_anchors_for_d2o(tmp_path):
    from negalign.demo import DemoFiles
    from negalign.demo.data import demo_files

    out = tmp_path
    assert demo_files(_settings(tmp_path, benign_refusals=False), out) == DemoFiles(
        answers=out / "answers.jsonl", flagged=out / "negatives.jsonl", negatives=out / "negatives.jsonl",
        harmful_anchors=out / "samples.jsonl", samples=out / "samples.jsonl",
        benign_samples=out / "benign_samples.jsonl", anchors=out / "d2o_anchors.jsonl",
        pairs=out / "train_pairs.jsonl")


def test_demo_files_without_harmful_negatives_at_a_share_name_their_files_apart(tmp_path):
    from negalign.demo.data import demo_files

    files = demo_files(_settings(tmp_path, harmful_negatives=False, benign_refusal_share=0.5), tmp_path)
    assert files.negatives == tmp_path / "d2o_negatives_share0.5.jsonl"
    assert files.d2o_negatives == tmp_path / "d2o_negatives_benign_only_share0.5.jsonl"
    assert files.anchor_only == files.samples == files.anchors == tmp_path / "d2o_anchors.jsonl"
    assert files.pairs == tmp_path / "train_pairs_benign_refusals_share0.5.jsonl"
    assert files.flagged == tmp_path / "negatives.jsonl"  # what flag wrote stays where it was


def test_demo_files_at_k_0_are_the_answers_and_their_negatives_alone(tmp_path):
    from negalign.demo import DemoFiles
    from negalign.demo.data import demo_files

    out = tmp_path
    assert demo_files(_settings(tmp_path, k=0), out) == DemoFiles(
        answers=out / "answers.jsonl", flagged=out / "negatives.jsonl", negatives=out / "negatives.jsonl")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_stale_names_exactly_the_settings_that_changed(tmp_path, suffix):
    from negalign.demo import stale

    record = tmp_path / f"record{suffix}"
    stored = {"a": 1, "b": 2, "c": "x", "nested": {"t": "one.jinja"}}
    record.write_text(json.dumps(stored))  # JSON is YAML too
    assert stale(record, {"a": 1, "b": 3, "c": "y", "d": None}) == ["b", "c"]  # d: recorded as nothing
    assert stale(record, {"a": 1, "c": "x"}) == []
    assert stale(record, {"t": "two.jinja"}, key="nested") == ["t"]
    assert stale(record, {"t": None}, key="missing.deeper") == []  # an absent record part holds nothing
    assert stale(tmp_path / f"absent{suffix}", {"a": 1}) is None


def test_each_method_trains_on_its_own_files(tmp_path):
    from negalign.demo import training_inputs
    from negalign.demo.data import demo_files

    settings = _settings(tmp_path, harmful_negatives=False)
    files = demo_files(settings, tmp_path)
    context = {"k": 2, "sampling_context": "refusal", "sampling_instruction": None}
    assert training_inputs(settings, "d2o", files) == {
        "data": str(tmp_path / "d2o_negatives_benign_only.jsonl"), "objective": "d2o",
        "samples": str(tmp_path / "d2o_anchors.jsonl"), **context,
        "benign_samples": str(tmp_path / "d2o_anchors.jsonl")}
    assert training_inputs(settings, "context_distillation", files) == {
        "data": str(tmp_path / "d2o_anchors.jsonl"), "objective": "context_distillation", **context}
    assert training_inputs(settings, "kto", files) == {
        "data": str(tmp_path / "train_pairs_benign_refusals.jsonl"), "objective": "kto"}
    # k 0: D2O alone, on the flagged answers, with no anchors file
    bare = _settings(tmp_path, k=0)
    assert training_inputs(bare, "d2o", demo_files(bare, tmp_path)) == {
        "data": str(tmp_path / "negatives.jsonl"), "objective": "d2o", "samples": None, "k": 0,
        "sampling_context": "refusal", "sampling_instruction": None, "benign_samples": None}


def test_timed_records_a_stage_that_finishes_and_not_one_that_raises():
    from negalign.demo.data import timed

    timings = {}
    with timed(timings, "done"):
        pass
    with pytest.raises(KeyError):
        with timed(timings, "failed"):
            raise KeyError("x")
    assert list(timings) == ["done"] and timings["done"] >= 0


def test_train_method_reuses_a_model_of_these_settings_and_replaces_one_of_others(tmp_path, monkeypatch):
    import negalign.checkpoints
    import negalign.config
    import negalign.pipeline
    from negalign.demo import train_method
    from negalign.demo.data import demo_files

    settings = _settings(tmp_path / "demo")
    files = demo_files(settings, tmp_path / "demo")
    run_dir = tmp_path / "demo" / "runs" / "d2o"
    run_dir.mkdir(parents=True)
    trained, changed = [], []
    monkeypatch.setattr(negalign.config, "load_config", lambda path, overrides: overrides)
    monkeypatch.setattr(negalign.checkpoints, "settings_changed", lambda config, folder: changed)
    monkeypatch.setattr(negalign.pipeline, "train", trained.append)
    timings = {}
    # nothing there: trained, nothing to move aside
    assert train_method(settings, "d2o", run_dir, files, timings) is True
    assert trained[-1]["overwrite"] is False and trained[-1]["output_dir"] == str(run_dir)
    assert list(timings) == ["train_d2o"]
    # a model of these settings: reused, not trained
    (run_dir / "model.safetensors").write_bytes(b"")
    assert train_method(settings, "d2o", run_dir, files, {}) is False and len(trained) == 1
    # a model of other settings: replaced
    changed.append("max_steps: 4 -> 5")
    assert train_method(settings, "d2o", run_dir, files, {}) is True and trained[-1]["overwrite"] is True


def test_the_demo_evaluates_a_retrained_model_afresh_and_reuses_what_it_can(tmp_path, monkeypatch):
    import negalign.data.catalog
    import negalign.demo
    import negalign.evaluation.evaluate
    import negalign.evaluation.report
    import negalign.models
    import negalign.pipeline
    from negalign.demo import DEMO_IFEVAL, DemoSettings, run_demo
    from negalign.demo.data import demo_files

    out = tmp_path / "demo"
    settings = DemoSettings(preset="quick", output=str(out), methods=["d2o", "kto"])
    evaluated = []
    monkeypatch.setattr(negalign.data.catalog, "check_available", lambda *a, **k: None)
    monkeypatch.setattr(negalign.demo, "_check_ifeval", lambda settings: None)
    monkeypatch.setattr(negalign.models, "resolve_model_path", lambda name: "base-model")
    monkeypatch.setattr(negalign.demo, "prepare_data", lambda settings, out, base, timings: demo_files(settings, out))
    monkeypatch.setattr(negalign.pipeline, "train", lambda config: None)
    monkeypatch.setattr(negalign.evaluation.evaluate, "evaluate", evaluated.append)
    monkeypatch.setattr(negalign.evaluation.report, "compare", lambda runs, out, **_: {"runs": runs})
    # an earlier demo of these settings, whose starting model's evaluation is there already: reused
    (out / "runs" / "base").mkdir(parents=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(settings)))
    (out / "runs" / "base" / "eval.json").write_text(json.dumps({"settings": {
        "max_prompts": settings.eval_prompts, "max_new_tokens": settings.eval_max_new_tokens,
        "seed": settings.seed, "ifeval": DEMO_IFEVAL}}))
    report = run_demo(settings)
    assert report == {"runs": [str(out / "runs" / name) for name in ("base", "d2o", "kto")]}
    # both methods were trained just now: each evaluated afresh, against the starting model
    assert [(e.output, e.model, e.reference, e.overwrite) for e in evaluated] == [
        (str(out / "runs" / m / "eval"), str(out / "runs" / m), "base-model", True) for m in ("d2o", "kto")]
    timings = json.loads((out / "demo_timings.json").read_text())
    assert set(timings) == {"train_d2o", "train_kto", "eval_d2o", "eval_kto", "total"}
    assert json.loads((out / "demo_config.json").read_text())["methods"] == ["d2o", "kto"]


def test_no_function_in_the_demo_is_over_50_lines():
    lengths = {}
    for path in sorted((ROOT / "negalign" / "demo").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert lengths and max(lengths.values()) <= 50, {k: v for k, v in lengths.items() if v > 50}
