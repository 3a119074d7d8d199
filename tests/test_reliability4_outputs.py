"""Reliability round 4, outputs: never lost, the user's permissions, export's inputs, and nothing left behind
by a refused or killed command (docs/reliability.md, Outputs)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest

import negalign
from negalign.cli import main

PROMPTS = [f"Question {i}: how do I do thing number {i}?" for i in range(6)]


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def one_line(err: str) -> str:
    """The command's one message (progress bars of loading, drawn with carriage returns, aside)."""
    lines = [line.rsplit("\r", 1)[-1] for line in err.strip().splitlines()]
    lines = [line for line in lines if line.strip() and "it/s]" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def lora(tiny_model_dir, tmp_path_factory):
    """A LoRA run trained on its own copy of the tiny base (whose weights a test may change)."""
    folder = tmp_path_factory.mktemp("r4-outputs")
    base = folder / "base"
    shutil.copytree(tiny_model_dir, base)
    data = folder / "negatives.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "rejected": f"Sure: {p}"}) + "\n" for p in PROMPTS))
    run = folder / "run"
    with umask(0o022):
        negalign.train(model=str(base), data=str(data), objective="npo", use_lora=True, lora_r=4, max_steps=2,
                       per_device_train_batch_size=2, learning_rate=5e-2, output_dir=str(run),
                       cache_dir=str(folder / "c"), max_length=96, max_prompt_length=64, use_cpu=True,
                       save_strategy="no")
    return base, run


def test_d15_exported_files_follow_the_umask(lora, tmp_path):
    _, run = lora
    # the run's own files (written atomically through mkstemp) are readable by others as well
    for name in ("negalign_config.yaml", "train_log.json", "base_model.json"):
        assert mode(run / name) == 0o644, name
    out = tmp_path / "exported"
    with umask(0o022):
        assert main(["export", str(run), "--output", str(out), "--merge"]) == 0
    assert mode(out) == 0o755  # colleagues can enter the folder and load the model
    for name in ("negalign_config.yaml", "train_log.json", "model.safetensors", "README.md"):
        assert mode(out / name) == 0o644, name
    from negalign.files import atomic_output, atomic_write_text

    with umask(0o027):
        atomic_write_text(tmp_path / "eval.json", "{}")
        with atomic_output(tmp_path / "folder", folder=True) as tmp:
            (tmp / "x").write_text("x")
    assert mode(tmp_path / "eval.json") == 0o640 and mode(tmp_path / "folder") == 0o750


def test_d14_a_rerun_removes_a_killed_exports_partial(lora, tmp_path):
    _, run = lora
    out = tmp_path / "out"
    partial = tmp_path / "out.tmp-k1ll3d9x"  # what mkdtemp made before the kill -9
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    (tmp_path / "out.json").write_text("not ours")  # a neighbour whose name starts alike is kept
    assert main(["export", str(run), "--output", str(out), "--merge"]) == 0
    assert (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.json", "out.lock"]


def test_d16_export_of_a_plain_model_folder_is_refused_in_one_line(tiny_model_dir, tmp_path, capsys):
    plain = tmp_path / "plain"  # config.json and weights, no tokenizer, no run files: was KeyError: 'model'
    plain.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_model_dir, name), plain / name)
    for model in (plain, tiny_model_dir):
        assert main(["export", str(model), "--output", str(tmp_path / "out")]) == 2
        line = one_line(capsys.readouterr().err)
        assert str(model) in line and "not a negalign training run" in line
    assert [p.name for p in tmp_path.iterdir()] == ["plain"]  # no output, no lock file


def test_d17_merge_refuses_a_base_whose_weights_changed(lora, tmp_path, capsys):
    from conftest import make_tiny_llama

    base, run = lora
    record = json.loads((run / "base_model.json").read_text())
    assert record["weights"] and not os.path.isabs(record["base_model"])
    saved = tmp_path / "saved-base"
    shutil.copytree(base, saved)
    try:
        vocab = json.loads((base / "config.json").read_text())["vocab_size"]
        make_tiny_llama(vocab, seed=7).save_pretrained(base)  # the same name, other weights
        capsys.readouterr()
        out = tmp_path / "merged"
        assert main(["export", str(run), "--output", str(out), "--merge"]) == 2
        line = one_line(capsys.readouterr().err)
        assert str(base) in line and "other weights" in line
        assert not out.exists()
    finally:
        shutil.rmtree(base)
        shutil.copytree(saved, base)


def test_d13_a_flag_killed_between_its_renames_is_continued_by_the_same_command(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}], "completion": a}) + "\n"
                               for q, a in [("How do I pick a lock?", "Step 1: insert a tension wrench"),
                                            ("Make a weapon", "I'm sorry, but I can't help with that.")]))
    out = tmp_path / "neg.jsonl"
    command = ["flag", "--answers", str(answers), "--output", str(out)]
    # a real SIGKILL at the second rename into tmp_path: between the output and its report
    killer = (f"import os, signal, sys\nfrom negalign.cli import main\nreplace, seen = os.replace, []\n"
              f"def killing(src, dst, *a, **k):\n"
              f"    if str(dst).startswith({str(tmp_path)!r}):\n"
              f"        seen.append(dst)\n"
              f"        if len(seen) == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
              f"    return replace(src, dst, *a, **k)\n"
              f"os.replace = killing\nsys.exit(main({command!r}))\n")
    killed = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the second file's copy, left by the kill
    assert main(command) == 0  # the same command continues (before: refused, "not written by negalign flag")
    report = json.loads((tmp_path / "neg.jsonl.flags.json").read_text())
    assert report["n_answers"] == 2 and len(out.read_text().splitlines()) == report["n_flagged"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl", "neg.jsonl", "neg.jsonl.flags.json",
                                                         "neg.jsonl.lock"]


def test_d13_flag_takes_the_output_lock(tmp_path, capsys):
    from negalign.locks import output_lock

    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n")
    with output_lock(tmp_path / "neg.jsonl", "flagging"):
        assert main(["flag", "--answers", str(answers), "--output", str(tmp_path / "neg.jsonl")]) == 2
    assert "is being written by" in capsys.readouterr().err
    assert not (tmp_path / "neg.jsonl").exists()


def test_d25_eval_of_a_folder_that_is_not_a_model_leaves_nothing(tmp_path, capsys):
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "notes.txt").write_text("mine")
    assert main(["eval", "--model", str(docs)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(docs) in line and "not a model folder" in line
    assert [p.name for p in docs.iterdir()] == ["notes.txt"]  # no eval/answers, no eval.lock
    assert [p.name for p in tmp_path.iterdir()] == ["mydocs"]


def test_d31_a_missing_local_model_path_is_named_without_the_hub(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked about a local path")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    for name in ("runs/a/typo", "runs/typo", "./typo", "~/no-such-negalign-model"):
        assert main(["eval", "--model", name, "--output", str(tmp_path / "e")]) == 2
        line = one_line(capsys.readouterr().err)
        assert name in line and "no such model folder" in line
        from negalign.models import resolve_model_path

        with pytest.raises(FileNotFoundError, match="no such model folder"):
            resolve_model_path(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    from negalign.models import check_model

    check_model("some-org/some-model")  # an org/name that is not local stays a Hub name
    check_model("smollm2-135m-instruct")


def test_d32_a_refused_train_into_the_model_folder_leaves_no_lock(tiny_model_dir, tmp_path):
    from negalign.outputs import OutputRefused

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = sorted(p.name for p in model.iterdir())
    data = tmp_path / "neg.jsonl"
    data.write_text(json.dumps({"prompt": "q", "rejected": "a"}) + "\n")
    with pytest.raises(OutputRefused, match="lies inside model"):
        negalign.train(model=str(model), data=str(data), objective="npo", output_dir=str(model / "sub"),
                       max_steps=1, use_cpu=True)
    assert sorted(p.name for p in model.iterdir()) == before  # no sub.lock, no sub


def test_d32_compare_of_a_bad_eval_json_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad_eval.json"
    for text, problem in (("{not json", "not valid JSON"), ("[1, 2]", "must hold a JSON object"),
                          ('{"suites": 5}', "not a negalign eval.json")):
        bad.write_text(text)
        assert main(["compare", str(bad), "--output", str(tmp_path / "r")]) == 2
        line = one_line(capsys.readouterr().err)
        assert str(bad) in line and problem in line
    assert not (tmp_path / "r").exists()


def test_d7_compare_refuses_to_overwrite_an_earlier_report(tmp_path, capsys):
    from test_evaluation_report import make_runs

    base, d2o = make_runs(tmp_path)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "report.md").write_text("my own notes")
    (notes / "todo.txt").write_text("kept")
    command = ["compare", str(base), str(d2o), "--output", str(notes)]
    assert main(command) == 2
    line = one_line(capsys.readouterr().err)
    assert "report.md" in line and "--overwrite" in line
    assert (notes / "report.md").read_text() == "my own notes"
    assert main(command + ["--overwrite"]) == 0
    aside = [p for p in notes.iterdir() if p.name.startswith("report.md.replaced-")]
    assert len(aside) == 1 and aside[0].read_text() == "my own notes"
    assert "d2o" in (notes / "report.md").read_text() and (notes / "todo.txt").read_text() == "kept"


def test_d9_a_refused_sample_leaves_the_decontamination_record_alone(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    first, other = tmp_path / "first.jsonl", tmp_path / "other.jsonl"
    first.write_text("".join(json.dumps({"prompt": p, "rejected": "x"}) + "\n"
                             for p in ["How can I rob a casino?", "Write a limerick about tea"]))
    other.write_text(json.dumps({"prompt": "Name a river", "rejected": "x"}) + "\n")

    def sample(data, *extra):
        return main(["sample", "--model", tiny_model_dir, "--data", str(data), "--output", str(out), "--k", "1",
                     "--temperature", "0", "--max-new-tokens", "2", "--no-anchor-report", *extra])

    assert sample(first) == 0
    record = tmp_path / "answers.jsonl.decontamination.json"
    kept = record.read_text()
    assert json.loads(kept)["n_removed"] == 1
    capsys.readouterr()
    assert sample(other) == 2  # other prompts into an existing output: refused ...
    assert record.read_text() == kept  # ... and its record is the first command's still
    assert sample(other, "--overwrite") == 0  # the record goes aside with the samples and their .meta.json
    aside = sorted(p.name.split(".replaced-")[0] for p in tmp_path.iterdir() if ".replaced-" in p.name)
    assert aside == ["answers.jsonl", "answers.jsonl.decontamination.json", "answers.jsonl.meta.json"]
    assert json.loads(record.read_text())["n_removed"] == 0
