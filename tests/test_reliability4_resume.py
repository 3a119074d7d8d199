"""Reliability round 4 (docs/reliability.md, "Checkpoints and resume"): what a resume compares with the run it
continues (the inputs' contents and the model's weights, not how their paths are spelled, and not a setting added
since at its default), and checkpoints verified before they are resumed. Real tiny training runs (conftest.py's
random-weight Llama) where a checkpoint is needed."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

import negalign
from negalign.checkpoints import compare_settings, newest_checkpoint, resolve_checkpoint, settings_changed
from negalign.cli import main
from negalign.config import load_config
from negalign.files import portable
from negalign.provenance import CONFIG_FILE, INPUTS_FILE

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [f"Question {i}: how do I do thing number {i}?" for i in range(6)]


def _write_rows(path: Path, rejected: str = "Sure, harmful") -> str:
    path.write_text("".join(json.dumps({"prompt": p, "rejected": f"{rejected}: {p.lower()}"}) + "\n" for p in PROMPTS))
    return str(path)


def _settings(tiny_model_dir, tmp_path, data: str, **extra) -> dict:
    return {"model": tiny_model_dir, "data": data, "objective": "npo", "max_steps": 4, "save_steps": 2,
            "per_device_train_batch_size": 2, "learning_rate": 1e-2, "seed": 0, "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"), "max_length": 96, "max_prompt_length": 64, "use_cpu": True,
            "disable_tqdm": True, **extra}


@pytest.fixture(scope="module")
def npo_run(tiny_model_dir, tmp_path_factory):
    """A finished 4-step NPO run that kept checkpoint-2 and checkpoint-4, copied afresh for each test."""
    folder = tmp_path_factory.mktemp("npo-run")
    data = _write_rows(folder / "negM.jsonl")
    negalign.train(**_settings(tiny_model_dir, folder, data))
    return folder


@pytest.fixture
def killed_run(npo_run, tmp_path):
    """The run as a kill -9 after checkpoint-4 leaves it: its checkpoints, no final model."""
    shutil.copytree(npo_run / "out", tmp_path / "out", ignore=lambda d, names: [
        n for n in names if d == str(npo_run / "out") and not n.startswith("checkpoint-")])
    shutil.copy(npo_run / "negM.jsonl", tmp_path / "negM.jsonl")
    for name in ("checkpoint-2", "checkpoint-4"):  # recorded as if this copy's data file had been trained on
        record = yaml.safe_load((tmp_path / "out" / name / CONFIG_FILE).read_text())
        (tmp_path / "out" / name / CONFIG_FILE).write_text(yaml.safe_dump(
            {**record, "data": portable(str(tmp_path / "negM.jsonl")), "output_dir": portable(str(tmp_path / "out"))}))
    return tmp_path


def _record(folder: Path) -> tuple[dict, dict | None]:
    then = yaml.safe_load((folder / CONFIG_FILE).read_text())
    inputs = folder / INPUTS_FILE
    return then, json.loads(inputs.read_text()) if inputs.exists() else None


# F1: the comparison itself


def test_f1_model_moved_with_the_same_fingerprint_is_the_same_settings(killed_run, tiny_model_dir):
    then, inputs = _record(killed_run / "out" / "checkpoint-4")
    assert set(inputs) == {"data", "model"}  # recorded by the run: the data's sha256, the starting weights'
    now = {**then, "model": "/elsewhere/cache/models/tiny"}
    assert compare_settings(then, inputs, now, {"data": inputs["data"]}, "checkpoint-4") == []
    # the weights are compared once the model is loaded: other weights under the same name are a change
    from negalign.checkpoints import model_changed

    checkpoint = str(killed_run / "out" / "checkpoint-4")
    assert model_changed(checkpoint, tiny_model_dir, inputs["model"]) == []
    assert model_changed(checkpoint, tiny_model_dir, "0" * 24) == [
        f"model: the weights of {tiny_model_dir} are not those checkpoint-4 was trained from"]


def test_f1_a_setting_added_since_is_no_change_at_its_default(killed_run):
    then, inputs = _record(killed_run / "out" / "checkpoint-4")
    older = {k: v for k, v in then.items() if k != "packed_attention"}  # recorded before the setting existed
    assert then["packed_attention"] == "auto"
    assert compare_settings(older, inputs, then, {"data": inputs["data"]}, "checkpoint-4") == []
    assert compare_settings(older, inputs, {**then, "packed_attention": "blocks"}, {"data": inputs["data"]},
                            "checkpoint-4") == ["packed_attention: None -> 'blocks'"]


def test_f1_an_old_record_names_the_bundled_model_by_any_machines_cache_folder(tmp_path, monkeypatch):
    # the committed demo run recorded the model as the converted folder in the cache of the machine that ran it
    monkeypatch.setenv("NEGALIGN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "models" / "smollm2-135m-instruct").mkdir(parents=True)
    then = {"model": "../demo-cache/models/smollm2-135m-instruct", "learning_rate": 2e-5}
    now = {"model": str(tmp_path / "cache" / "models" / "smollm2-135m-instruct"), "learning_rate": 2e-5}
    assert compare_settings(then, None, now, {}, "checkpoint-4") == []
    assert compare_settings(then, None, {**now, "model": str(tmp_path)}, {}, "checkpoint-4") == [
        f"model: '../demo-cache/models/smollm2-135m-instruct' -> {str(tmp_path)!r}"]


def test_f1_the_committed_demo_run_compares_as_the_settings_the_demo_uses_today(tmp_path, monkeypatch):
    """results/demo/runs/d2o as committed against the training settings `negalign demo` builds from
    results/demo/demo_config.json (as negalign/demo/__init__.py's run_demo does), on a machine whose cache is
    elsewhere; no training."""
    from negalign.demo.settings import DemoSettings

    record = REPO / "results" / "demo" / "runs" / "d2o"
    if not (record / CONFIG_FILE).exists():
        pytest.skip("no committed demo run")
    monkeypatch.chdir(REPO)  # the demo runs from the repository root, where its recorded paths are relative to
    monkeypatch.setenv("NEGALIGN_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")  # resolve_model_path: the converted cache folder exists
    recorded = json.loads((REPO / "results" / "demo" / "demo_config.json").read_text())
    settings = DemoSettings(**{k: v for k, v in recorded.items() if k not in ("model_options", "methods")},
                            methods=["d2o"])
    out = Path(settings.output)
    recipe = {**settings.method_training("d2o"), "data": str(out / "d2o_negatives.jsonl"), "objective": "d2o",
              "samples": str(out / "d2o_anchors.jsonl"), "k": settings.k, "sampling_context": settings.sampling_context,
              "sampling_instruction": settings.sampling_instruction,
              "benign_samples": str(out / "benign_samples.jsonl"), "max_steps": settings.max_steps,
              "per_device_train_batch_size": settings.batch_size, "learning_rate": settings.learning_rate,
              "seed": settings.seed, "use_lora": settings.lora}
    from negalign.demo import _train_model_options
    from negalign.models import resolve_model_path

    config = load_config(None, {"model": resolve_model_path(settings.model), **recipe,
                                **_train_model_options(settings), "output_dir": str(record),
                                "save_strategy": "no", "overwrite": False, "disable_tqdm": True})
    assert settings_changed(config, str(record)) == []


# D3: the inputs' contents


def test_d3_edited_data_since_the_checkpoint_is_named_and_refused(killed_run, tiny_model_dir, capsys):
    settings = _settings(tiny_model_dir, killed_run, str(killed_run / "negM.jsonl"))
    _write_rows(killed_run / "negM.jsonl", rejected="Edited")
    argv = ["train"] + [f"{k}={v}" for k, v in settings.items()]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "data: negM.jsonl changed since checkpoint-4 was written" in err and "Traceback" not in err
    assert sorted(os.listdir(killed_run / "out")) == ["checkpoint-2", "checkpoint-4"]  # nothing lost


def test_d3_redrawn_samples_since_the_checkpoint_are_a_change(tiny_model_dir, tmp_path):
    # a D2O run's samples file, redrawn between the kill and the rerun
    samples = tmp_path / "samples.jsonl"
    draw = lambda word: samples.write_text("".join(json.dumps({  # noqa: E731
        "prompt": [{"role": "user", "content": p}], "completion": f"{word} {i} to {p}", "origin": "self",
        "sample_index": i}) + "\n" for p in PROMPTS for i in range(2)))
    draw("Answer")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "rejected": f"Sure: {p}"}) + "\n" for p in PROMPTS))
    settings = _settings(tiny_model_dir, tmp_path, str(data), objective="d2o", samples=str(samples), k=2,
                         max_steps=2, save_steps=2)
    negalign.train(**settings)
    (tmp_path / "out" / "model.safetensors").unlink()  # as if killed after the checkpoint
    (tmp_path / "out" / "train_log.json").unlink()
    config = load_config(None, settings)
    assert resolve_checkpoint(config) == str(tmp_path / "out" / "checkpoint-2")  # unchanged: resumes
    draw("Redrawn")
    with pytest.raises(ValueError, match="samples: samples.jsonl changed since checkpoint-2 was written"):
        resolve_checkpoint(config)


def test_d3_an_older_checkpoint_without_fingerprints_resumes_with_a_warning(killed_run, tiny_model_dir, caplog):
    for name in ("checkpoint-2", "checkpoint-4"):  # as an older negalign wrote them: no inputs.json
        (killed_run / "out" / name / INPUTS_FILE).unlink()
    config = load_config(None, _settings(tiny_model_dir, killed_run, str(killed_run / "negM.jsonl")))
    with caplog.at_level(logging.WARNING, logger="negalign"):
        assert resolve_checkpoint(config) == str(killed_run / "out" / "checkpoint-4")
    assert "records no fingerprints of its input files" in caplog.text


# D26: the same files from another working directory


def test_d26_a_rerun_from_another_directory_is_the_same_settings(killed_run, tiny_model_dir, monkeypatch):
    settings = _settings(tiny_model_dir, killed_run, str(killed_run / "negM.jsonl"))
    # the first run was started from the data's folder: its record holds paths relative to that folder
    monkeypatch.chdir(killed_run)
    for name in ("checkpoint-2", "checkpoint-4"):
        folder = killed_run / "out" / name
        record = yaml.safe_load((folder / CONFIG_FILE).read_text())
        (folder / CONFIG_FILE).write_text(yaml.safe_dump({**record, "data": "negM.jsonl", "output_dir": "out"}))
    deeper = killed_run / "a" / "b"
    deeper.mkdir(parents=True)
    monkeypatch.chdir(deeper)  # the identical command (absolute paths) from two folders down
    assert resolve_checkpoint(load_config(None, settings)) == str(killed_run / "out" / "checkpoint-4")


# D12: a damaged newest checkpoint


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_d12_truncated_newest_checkpoint_falls_back_to_the_intact_one(name, killed_run, tiny_model_dir, caplog):
    damaged = killed_run / "out" / "checkpoint-4" / name
    with open(damaged, "r+b") as handle:
        handle.truncate(os.path.getsize(damaged) // 2)
    with caplog.at_level(logging.WARNING, logger="negalign"):
        assert newest_checkpoint(str(killed_run / "out")) == str(killed_run / "out" / "checkpoint-2")
    assert f"passing over {killed_run / 'out' / 'checkpoint-4'}: it has a damaged {name} (" in caplog.text
    trainer = negalign.train(**_settings(tiny_model_dir, killed_run, str(killed_run / "negM.jsonl")))
    assert trainer.state.global_step == 4  # resumed from checkpoint-2 and finished
    assert (killed_run / "out" / "model.safetensors").exists()


def test_f1_the_same_weights_elsewhere_resume_and_other_weights_are_refused(killed_run, tiny_model_dir, capsys):
    from conftest import make_tiny_llama

    other = killed_run / "other-weights"
    shutil.copytree(tiny_model_dir, other)
    vocab = json.loads((other / "config.json").read_text())["vocab_size"]
    make_tiny_llama(vocab, seed=1).save_pretrained(other)  # same name shape, same config, other weights
    settings = _settings(tiny_model_dir, killed_run, str(killed_run / "negM.jsonl"))
    assert main(["train"] + [f"{k}={v}" for k, v in {**settings, "model": other}.items()]) == 2
    err = capsys.readouterr().err
    assert f"model: the weights of {other} are not those checkpoint-4 was trained from" in err
    moved = killed_run / "moved"  # the same model in another place (another machine's cache)
    shutil.copytree(tiny_model_dir, moved)
    trainer = negalign.train(**{**settings, "model": str(moved)})
    assert trainer.state.global_step == 4 and (killed_run / "out" / "model.safetensors").exists()
