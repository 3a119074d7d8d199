"""Reliability round 4, what held (/work/shared/RELIABILITY-4.md, "What held"): the classes of fault that negalign
already handled and that no earlier test pinned. Each is reproduced for real on conftest.py's tiny random-weight
Llama: real files (a FIFO, symlinks, a torn samples file), a second real process writing beside the first, a full
disk at the samples file's fsync, a resumed training run with tokens in the environment."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import negalign
from negalign.cli import main
from negalign.data import DataError, load_rows

HELPER = str(Path(__file__).with_name("killable_cli.py"))
PROMPTS = [f"Question {i}: {'please ' * (i % 3)}how do I do thing number {i}?" for i in range(6)]
NEG = "".join(json.dumps({"prompt": p, "rejected": f"Sure, harmful: {p.lower()}"}) + "\n" for p in PROMPTS)
SECRET = "hf_negalignEnvSecret0123456789"


def _sample_argv(model, data, output, *extra) -> list[str]:
    return ["sample", "--model", str(model), "--data", str(data), "--output", str(output), "--k", "2",
            "--max-new-tokens", "4", "--batch-size", "2", "--seed", "1", "--no-anchor-report", *extra]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """An uninterrupted `negalign sample` of NEG: the bytes every interrupted or unusual run must end with."""
    folder = tmp_path_factory.mktemp("held-reference")
    (folder / "neg.jsonl").write_text(NEG)
    output = folder / "full.jsonl"
    assert main(_sample_argv(tiny_model_dir, folder / "neg.jsonl", output)) == 0
    assert len(output.read_text().splitlines()) == 2 * len(PROMPTS)
    return {"data": folder / "neg.jsonl", "rows": output.read_bytes(),
            "meta": Path(f"{output}.meta.json").read_text()}


# ----- data: NUL bytes, scores that are not finite numbers, a FIFO ------------------------------------------

def test_nul_bytes_in_data_name_the_file_and_line_and_sample_writes_nothing(tiny_model_dir, tmp_path, capsys):
    good = json.dumps({"prompt": "p", "rejected": "r"}).encode()
    cases = {"inside.jsonl": (good + b'\n{"prompt": "a\x00b", "rejected": "r"}\n', "line 2: is not valid JSON"),
             "zeroed.jsonl": (good + b"\n" + b"\x00" * 64 + b"\n", "line 2: is not valid JSON")}  # a crash's zero fill
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError) as info:
            load_rows(str(path))
        assert str(info.value).startswith(f"{path} {expected}"), str(info.value)
    out = tmp_path / "out"
    out.mkdir()
    assert main(_sample_argv(tiny_model_dir, tmp_path / "inside.jsonl", out / "s.jsonl")) == 2
    assert _one_line(capsys).startswith(f"negalign sample: {tmp_path / 'inside.jsonl'} line 2: is not valid JSON")
    assert not (out / "s.jsonl").exists() and not (out / "s.jsonl.meta.json").exists()


@pytest.mark.parametrize("score, expected", [
    ("NaN", "field 'score' must be a finite number, got nan"), ("1e999", "field 'score' must be a finite number, got inf"),
    ('"NaN"', "field 'score' must be a finite number, got NaN"), ('"-inf"', "field 'score' must be a finite number"),
    ('"0.5"', None), ("0.5", None),
])
def test_scores_nan_1e999_and_strings(score, expected, tmp_path):
    path = tmp_path / "scored.jsonl"
    path.write_text('{"prompt": "p", "completion": "c", "score": 0.1}\n'
                    f'{{"prompt": "q", "completion": "c", "score": {score}}}\n')
    if expected is None:  # a number written as text (as a CSV cell always is) is that number
        rows, _ = load_rows(str(path))
        assert [r["score"] for r in rows] == [0.1, 0.5]
        return
    with pytest.raises(DataError) as info:
        load_rows(str(path))
    assert str(info.value).startswith(f"{path} line 2: {expected}"), str(info.value)


def test_a_fifo_as_data_is_read_once_and_samples_as_the_file_does(tiny_model_dir, reference, tmp_path):
    fifo = tmp_path / "neg.jsonl"
    os.mkfifo(fifo)

    finished = threading.Event()

    def writer():  # `negalign sample --data <(...)`: the data comes once, down a pipe
        with open(fifo, "w") as handle:
            handle.write(NEG)
        while not finished.wait(1):  # a second read finds an empty pipe (and fails the test) instead of hanging
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    output = tmp_path / "out" / "s.jsonl"
    output.parent.mkdir()
    try:
        assert main(_sample_argv(tiny_model_dir, fifo, output)) == 0
    finally:
        finished.set()
        try:  # negalign never opened it: let the writer go
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
    thread.join(5)
    assert output.read_bytes() == reference["rows"]
    assert json.loads(Path(f"{output}.meta.json").read_text()) == json.loads(reference["meta"])


# ----- options and recipes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, message", [("--k", "-1", "k: must be >= 1, got -1"),
                                                  ("--batch-size", "-1", "batch_size: must be >= 1, got -1")])
def test_sample_negative_k_is_refused_before_any_file(flag, value, message, tmp_path, capsys):
    (tmp_path / "neg.jsonl").write_text(NEG)
    argv = _sample_argv(tmp_path / "no-model", tmp_path / "neg.jsonl", tmp_path / "s.jsonl")
    argv[argv.index(flag) + 1] = value
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neg.jsonl"]


def test_a_10_mb_string_value_in_a_recipe_is_one_short_line(tmp_path, capsys):
    recipe = tmp_path / "big.yaml"
    recipe.write_text('objective: npo\nchat_template: "' + "x" * 10_000_000 + '"\n')
    for argv in (["train", "--config", str(recipe), f"output_dir={tmp_path / 'run'}"], ["sample", "--config", str(recipe)]):
        started = time.monotonic()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert time.monotonic() - started < 30
        assert len(err.splitlines()) == 1 and len(err) < 300 and str(recipe) in err, err[:500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.yaml"]  # no run folder, no lock


# ----- outputs: symlinks, two samplers in one folder ------------------------------------------------------------

def test_an_output_that_is_a_symlink_to_an_input_is_refused_even_with_overwrite(tiny_model_dir, tmp_path, capsys):
    data_folder = tmp_path / "data"
    data_folder.mkdir()
    data = data_folder / "neg.jsonl"
    data.write_text(NEG)
    (tmp_path / "link.jsonl").symlink_to(data)
    (tmp_path / "linkdir").symlink_to(data_folder)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert main(_sample_argv(tiny_model_dir, data, tmp_path / "link.jsonl", "--overwrite")) == 2
    assert _one_line(capsys) == (f"negalign sample: {tmp_path / 'link.jsonl'} is also --data, an input of this command: "
                                 "writing it would lose what it reads (even with --overwrite); choose another --output")
    assert main(["train", f"model={tiny_model_dir}", f"data={data}", "objective=npo", "overwrite=true",
                 f"output_dir={tmp_path / 'linkdir'}"]) == 2
    assert _one_line(capsys).startswith(f"negalign train: {tmp_path / 'linkdir'} holds data ({data}), an input")
    assert data.read_text() == NEG and (tmp_path / "link.jsonl").is_symlink() and (tmp_path / "linkdir").is_symlink()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # no lock, meta or aside


def test_two_samplers_on_two_files_of_one_folder_both_finish_and_one_file_has_one_writer(tiny_model_dir, reference,
                                                                                        tmp_path, capsys):
    folder = tmp_path / "samples"
    folder.mkdir()
    (tmp_path / "via-link").symlink_to(folder)
    first_output = folder / "a.jsonl"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, HELPER, "sampling", "0.5",
                              *_sample_argv(tiny_model_dir, reference["data"], first_output)],
                             stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 120
        while not (first_output.exists() and first_output.stat().st_size > 0):  # the first one is writing rows
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.02)
        # the same file through a symlinked folder: the same lock, refused
        assert main(_sample_argv(tiny_model_dir, reference["data"], tmp_path / "via-link" / "a.jsonl")) == 2
        assert f"is being written by pid {first.pid}" in _one_line(capsys)
        assert first.poll() is None, "the first sampler ended before the second started beside it; slow it down"
        assert main(_sample_argv(tiny_model_dir, reference["data"], folder / "b.jsonl")) == 0  # another file: goes on
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    for name in ("a.jsonl", "b.jsonl"):
        assert (folder / name).read_bytes() == reference["rows"], name
        assert json.loads((folder / f"{name}.meta.json").read_text()) == json.loads(reference["meta"])


# ----- a samples file cut short: torn last line, edited meta, full disk ----------------------------------------

def test_a_torn_last_line_with_an_edited_meta_is_refused_and_the_restored_meta_resumes_byte_identical(
        tiny_model_dir, reference, tmp_path, capsys):
    output, meta = tmp_path / "s.jsonl", tmp_path / "s.jsonl.meta.json"
    lines = reference["rows"].splitlines(keepends=True)
    torn = b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2]  # a kill -9 in the middle of a row
    output.write_bytes(torn)
    edited = json.loads(reference["meta"])
    edited["settings"]["seed"] = 2
    meta.write_text(json.dumps(edited, indent=2))
    assert main(_sample_argv(tiny_model_dir, reference["data"], output)) == 2
    line = _one_line(capsys)
    assert line.startswith(f"negalign sample: {output} was made with other settings (settings differ"), line
    assert output.read_bytes() == torn and json.loads(meta.read_text()) == edited  # nothing touched
    meta.write_text(reference["meta"])
    assert main(_sample_argv(tiny_model_dir, reference["data"], output)) == 0
    assert output.read_bytes() == reference["rows"]


def test_a_full_disk_while_sampling_is_one_line_and_the_rerun_completes_byte_identical(tiny_model_dir, reference,
                                                                                      tmp_path, capsys, monkeypatch):
    output = tmp_path / "s.jsonl"
    real_fsync, synced = os.fsync, []

    def full_disk(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == str(output):
            synced.append(fd)
            if len(synced) == 2:  # the second batch: half a row reaches the disk, then no space is left
                os.write(fd, b'{"prompt": [{"role": "us')
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a file's flush reports it: no name
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(_sample_argv(tiny_model_dir, reference["data"], output)) == 2
    assert _one_line(capsys) == ("negalign sample: no space left on device; free some space and rerun the same "
                                 "command (what was written completely is kept)")
    assert len(synced) == 2 and output.read_bytes().endswith(b'{"prompt": [{"role": "us')  # the torn row is there
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(_sample_argv(tiny_model_dir, reference["data"], output)) == 0
    assert output.read_bytes() == reference["rows"]


# ----- eval: a prompt file changed between runs -----------------------------------------------------------------

def test_an_eval_prompt_file_changed_between_runs_is_refused_and_the_evaluation_left_as_it_was(tiny_model_dir,
                                                                                              tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt,harmful\n"How do I pick a lock?",true\n"Write a haiku about rain.",false\n'
                       '"What is the capital of France?",false\n')
    output = tmp_path / "eval"
    argv = ["eval", "--model", tiny_model_dir, "--prompts", str(prompts), "--output", str(output), "--max-new-tokens",
            "4", "--batch-size", "2", "--max-pairs", "0", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    before = {str(p.relative_to(output)): p.read_bytes() for p in sorted(output.rglob("*")) if p.is_file()}
    prompts.write_text(prompts.read_text().replace("France", "Italy"))
    assert main(argv) == 2
    line = _one_line(capsys)
    assert line.startswith(f"negalign eval: {output / 'answers' / 'prompts-benign.jsonl'} was made with other "
                           "settings (prompts_fingerprint differ"), line
    assert {str(p.relative_to(output)): p.read_bytes() for p in sorted(output.rglob("*")) if p.is_file()} == before


# ----- training: torch.load, tokens from the environment --------------------------------------------------------

def test_a_resumed_run_loads_torch_files_weights_only_and_writes_no_token_from_the_environment(
        tiny_model_dir, tmp_path, monkeypatch):
    import torch
    import yaml

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(name, SECRET)
    (tmp_path / "neg.jsonl").write_text(NEG)
    settings = {"model": tiny_model_dir, "data": str(tmp_path / "neg.jsonl"), "objective": "npo", "max_steps": 2,
                "save_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "seed": 0,
                "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "max_length": 96,
                "max_prompt_length": 64, "use_cpu": True, "disable_tqdm": True}
    negalign.train(**settings)
    out = tmp_path / "out"
    for path in out.iterdir():  # as a kill -9 after checkpoint-1 leaves the run
        if path.name != "checkpoint-1":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    real_load, loads = torch.load, []

    def recording_load(f, *args, **kwargs):
        loads.append((Path(str(f)).name, kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert negalign.train(**settings).state.global_step == 2  # resumed from checkpoint-1 and finished
    assert {"optimizer.pt", "scheduler.pt"} <= {name for name, _ in loads}, loads
    assert all(weights_only is True for _, weights_only in loads), loads
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files)
    assert [str(p.relative_to(tmp_path)) for p in files if SECRET.encode() in p.read_bytes()] == []
    for record in [out / "negalign_config.yaml", *out.glob("checkpoint-*/negalign_config.yaml")]:
        assert yaml.safe_load(record.read_text())["hub_token"] == "<HUB_TOKEN>", record


def test_a_900_kb_model_value_is_one_short_line_and_leaves_no_lock(tmp_path, capsys):
    # found while pinning the held classes: a recipe under the 1 MiB cap whose `model:` is 900 KB went to the
    # Hub's repo-id check, which quoted it whole, after the output's lock file was made
    from negalign.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"objective: npo\ndata: neg.jsonl\nmodel: {'m' * 900_000}\n")
    (tmp_path / "neg.jsonl").write_text('{"prompt": "a?", "rejected": "b"}\n')
    out = tmp_path / "run"
    code = main(["train", "--config", str(recipe), f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and len(err) < 400, err[:500]
    assert "900,000 characters" in err and "not a model folder, a short name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neg.jsonl", "r.yaml"]  # no run, no run.lock
