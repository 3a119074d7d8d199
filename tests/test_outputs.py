"""Outputs (issue 33, Reliability III): no command writes over what the user did not ask to lose, and the user's own
conditions (a full disk, Ctrl-C or SIGTERM, a folder that cannot be written) end in one line, not a traceback.

- A folder or file that exists, holds something and is not this command's own earlier output is refused unless
  --overwrite, which moves it aside to `<name>.replaced-<time>` and says so; a finished training run is never
  trained over without --overwrite.
- An output is never one of the command's inputs, nor holds one, nor lies inside one (refused even with --overwrite).
- SIGINT / SIGTERM finish the training step or sampling batch and say where to resume; a full disk or an unwritable
  path is one line naming the path and what to do; `negalign --debug ...` shows the traceback.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from negalign.cli import main

HELPER = str(Path(__file__).with_name("killable_cli.py"))
PROMPTS = [f"Question {i}: {'please ' * (i % 3)}how do I do thing number {i}?" for i in range(6)]


def _write(path, records) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((json.dumps(record) if isinstance(record, dict) else record) + "\n")
    return str(path)


def _samples(prompts=PROMPTS, k=2):
    return [{"prompt": [{"role": "user", "content": p}], "completion": f"Answer {i} to {p}", "origin": "self",
             "sample_index": i} for p in prompts for i in range(k)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outputs-data")
    pairs = [{"prompt": p, "chosen": f"I can help safely with: {p}", "rejected": f"Sure, harmful: {p.lower()}"}
             for p in PROMPTS]
    return {"pairs": _write(folder / "pairs.jsonl", pairs), "samples": _write(folder / "samples.jsonl", _samples())}


def _train(tiny_model_dir, files, tmp_path, **extra) -> dict:
    return {"model": tiny_model_dir, "data": files["pairs"], "objective": "npo", "max_steps": 1,
            "per_device_train_batch_size": 2, "learning_rate": 1e-2, "seed": 0, "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"), "max_length": 96, "max_prompt_length": 64, "use_cpu": True,
            "save_strategy": "no", **extra}


def _argv(settings: dict) -> list[str]:
    return [f"{key}={value}" for key, value in settings.items() if value is not None]


def _last_line(capsys) -> str:
    """The command's last stderr line; the whole of stderr must hold no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: a refusal must come before any expensive work."""
    import negalign.models as models
    import negalign.pipeline as pipeline

    def expensive(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    for module in (models, pipeline):
        monkeypatch.setattr(module, "load_model", expensive)


# ----- finding 1: a folder that is not a negalign run ---------------------------------------------------

def test_train_refuses_a_folder_that_is_not_a_negalign_run_unless_overwrite_which_moves_it_aside(
        tiny_model_dir, files, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    (mine / "config.json").write_text('{"mine": 1}\n')
    settings = _train(tiny_model_dir, files, tmp_path, output_dir=str(mine))
    assert main(["train", *_argv(settings)]) == 2
    line = _last_line(capsys)
    assert line.startswith(f"negalign train: {mine} holds files that are not a negalign training run (README.md, "
                           "config.json); pass --overwrite (overwrite: true) to move them aside"), line
    assert _snapshot(mine) == {"README.md": b"my notes\n", "config.json": b'{"mine": 1}\n'}
    assert main(["train", *_argv(settings), "--overwrite"]) == 0
    (aside,) = tmp_path.glob("mine.replaced-*")
    assert _snapshot(aside) == {"README.md": b"my notes\n", "config.json": b'{"mine": 1}\n'}
    assert (mine / "model.safetensors").exists() and (mine / "train_log.json").exists()
    assert f"moved {mine} aside to {aside}" in capsys.readouterr().err


# ----- finding 2: a finished run ---------------------------------------------------------------------------

def test_train_never_replaces_a_finished_run_without_overwrite(tiny_model_dir, files, tmp_path, capsys):
    run = tmp_path / "run"
    npo = _train(tiny_model_dir, files, tmp_path, output_dir=str(run))  # no checkpoints: as the demo leaves runs
    assert main(["train", *_argv(npo)]) == 0
    before = _snapshot(run)
    d2o = {**npo, "objective": "d2o", "samples": files["samples"], "k": 2}
    assert main(["train", *_argv(d2o)]) == 2
    line = _last_line(capsys)
    assert line.startswith(f"negalign train: {run} holds a finished training run with other settings (") and \
        "objective: 'npo' -> 'd2o'" in line and "pass --overwrite" in line, line
    assert main(["train", *_argv(npo)]) == 2  # the same settings: nothing left to train, not trained again
    line = _last_line(capsys)
    assert line.startswith(f"negalign train: {run} holds a finished training run of these settings (step 1 of 1)"), \
        line
    assert _snapshot(run) == before
    assert main(["train", *_argv(d2o), "--overwrite"]) == 0
    (aside,) = tmp_path.glob("run.replaced-*")
    assert _snapshot(aside) == before
    assert "objective: d2o" in (run / "negalign_config.yaml").read_text()


def test_a_finished_run_with_its_last_checkpoint_is_saved_again_not_retrained(tiny_model_dir, files, tmp_path):
    import negalign

    settings = _train(tiny_model_dir, files, tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    negalign.train(**settings)
    assert negalign.train(**settings).state.global_step == 2  # resumed at its last step: nothing trained
    with pytest.raises(ValueError, match="overwrite: true starts over and resume_from_checkpoint continues"):
        negalign.train(**settings, overwrite=True, resume_from_checkpoint=True)


# ----- an output never is, holds or lies inside an input ------------------------------------------------

def test_no_command_writes_over_or_around_its_own_inputs(tiny_model_dir, files, tmp_path, capsys, no_model_load):
    data = tmp_path / "mine" / "pairs.jsonl"
    data.parent.mkdir()
    data.write_bytes(Path(files["pairs"]).read_bytes())
    before = _snapshot(data.parent)
    sample = ["sample", "--model", tiny_model_dir, "--data", str(data), "--k", "1", "--no-anchor-report"]
    for extra in ([], ["--overwrite"]):
        assert main([*sample, "--output", str(data), *extra]) == 2
        assert _last_line(capsys).startswith(f"negalign sample: {data} is also --data, an input of this command: "
                                             "writing it would lose what it reads (even with --overwrite); choose "
                                             "another --output")
        settings = _train(tiny_model_dir, files, tmp_path, data=str(data), output_dir=str(data.parent))
        assert main(["train", *_argv(settings), *extra]) == 2
        assert _last_line(capsys).startswith(f"negalign train: {data.parent} holds data ({data}), an input of this "
                                             "command")
        settings = _train(tiny_model_dir, files, tmp_path, output_dir=tiny_model_dir)
        assert main(["train", *_argv(settings), *extra]) == 2
        assert _last_line(capsys).startswith(f"negalign train: {tiny_model_dir} is also model, an input")
    assert _snapshot(data.parent) == before
    model_files = _snapshot(Path(tiny_model_dir))
    assert main(["eval", "--model", tiny_model_dir, "--output", tiny_model_dir, "--overwrite"]) == 2
    assert _last_line(capsys).startswith(f"negalign eval: {tiny_model_dir} is also --model, an input")
    around = Path(tiny_model_dir).parent
    assert main(["eval", "--model", tiny_model_dir, "--output", str(around), "--overwrite"]) == 2
    assert _last_line(capsys).startswith(f"negalign eval: {around} holds --model ({tiny_model_dir})")
    assert _snapshot(Path(tiny_model_dir)) == model_files


def test_eval_refuses_a_folder_that_is_not_an_evaluation(tiny_model_dir, tmp_path, capsys, no_model_load):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me\n")
    assert main(["eval", "--model", tiny_model_dir, "--output", str(mine)]) == 2
    assert _last_line(capsys).startswith(f"negalign eval: {mine} holds files that are not a negalign evaluation "
                                         "(todo.txt); pass --overwrite")
    assert (mine / "todo.txt").read_text() == "keep me\n"


# ----- finding 3: flag -----------------------------------------------------------------------------------

@pytest.fixture
def fake_judge(monkeypatch):
    """The offline judge's interface, without its encoder: an answer starting "Sure" complies."""
    from negalign.evaluation.judge import HarmJudge

    class Judge:
        @staticmethod
        def complies(questions, answers):
            return [0.9 if a.startswith("Sure") else 0.1 for a in answers]

    monkeypatch.setattr(HarmJudge, "load", classmethod(lambda cls, *args, **kwargs: Judge()))


def test_flag_never_writes_over_its_answers_or_an_earlier_output(tmp_path, capsys, fake_judge):
    answers = tmp_path / "answers.jsonl"
    _write(answers, [{"prompt": [{"role": "user", "content": p}], "completion": ("Sure: " if i % 3 else "No. ") + p,
                      "origin": "self", "sample_index": 0} for i, p in enumerate(PROMPTS)])
    kept_answers = answers.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["flag", "--answers", str(answers), "--output", str(answers), *extra]) == 2
        assert _last_line(capsys).startswith(f"negalign flag: {answers} is also --answers, an input of this command")
        assert answers.read_bytes() == kept_answers
    output = tmp_path / "negatives.jsonl"
    flag = ["flag", "--answers", str(answers), "--output", str(output)]
    assert main(flag) == 0
    negatives = output.read_bytes()
    assert negatives.count(b"\n") == 4
    assert main(flag) == 0 and output.read_bytes() == negatives  # the same command again: the same file
    assert main([*flag, "--keep", "refusing"]) == 2
    line = _last_line(capsys)
    assert line.startswith(f"negalign flag: {output} holds negatives flagged with other settings (kept: "
                           "'complying' -> 'refusing'); pass --overwrite"), line
    assert output.read_bytes() == negatives
    assert main([*flag, "--keep", "refusing", "--overwrite"]) == 0
    (aside,) = tmp_path.glob("negatives.jsonl.replaced-*")
    assert aside.read_bytes() == negatives and output.read_bytes().count(b"\n") == 2
    assert f"moved {output} aside to {aside}" in capsys.readouterr().err
    mine = tmp_path / "mine.jsonl"
    mine.write_text("precious\n")
    assert main(["flag", "--answers", str(answers), "--output", str(mine)]) == 2
    assert _last_line(capsys).startswith(f"negalign flag: {mine} exists and was not written by `negalign flag`")
    assert mine.read_text() == "precious\n"


# ----- finding 5: export ----------------------------------------------------------------------------------

def test_export_never_replaces_the_run_it_reads(tiny_model_dir, files, tmp_path, capsys):
    parent = tmp_path / "runs"
    run = parent / "npo"
    assert main(["train", *_argv(_train(tiny_model_dir, files, tmp_path, output_dir=str(run)))]) == 0
    (parent / "notes.txt").write_text("mine\n")
    before = _snapshot(parent)
    assert {"npo/training_args.bin", "npo/decontamination.json", "notes.txt"} <= set(before)
    for output, message in ((parent, f"{parent} holds the run to export ({run})"),
                            (run, f"{run} is also the run to export"),
                            (run / "exported", f"{run / 'exported'} lies inside the run to export ({run})")):
        assert main(["export", str(run), "--output", str(output), "--overwrite"]) == 2
        assert _last_line(capsys).startswith(f"negalign export: {message}")
    assert _snapshot(parent) == before
    out = tmp_path / "exported"
    assert main(["export", str(run), "--output", str(out)]) == 0
    first = _snapshot(out)
    assert main(["export", str(run), "--output", str(out)]) == 2
    assert "exists and is not empty; pass --overwrite" in _last_line(capsys)
    assert main(["export", str(run), "--output", str(out), "--overwrite"]) == 0
    (aside,) = tmp_path.glob("exported.replaced-*")
    assert _snapshot(aside) == first and (out / "model.safetensors").exists()


# ----- finding 8: a full disk ------------------------------------------------------------------------------

def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_the_rerun_resumes(tiny_model_dir, files, tmp_path,
                                                                                capsys, monkeypatch):
    import torch

    settings = _train(tiny_model_dir, files, tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    out = Path(settings["output_dir"])
    real_save = torch.save

    def full_disk(obj, target, *args, **kwargs):
        if "checkpoint-2" in str(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(["train", *_argv(settings)]) == 2
    line = _last_line(capsys)
    assert line == (f"negalign train: no space left on device while saving {out / 'checkpoint-2'}; free some space "
                    f"(or lower save_total_limit) and rerun the same command: it resumes from "
                    f"{out / 'checkpoint-1'}"), line
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", *_argv(settings)]) == 0
    assert f"resuming from {out / 'checkpoint-1'}" in capsys.readouterr().err
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


# ----- finding 9: SIGINT / SIGTERM -------------------------------------------------------------------------

def _run_until(stage: str, args: list[str], ready, sig: int, log: Path, pause: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as sink:
        process = subprocess.Popen([sys.executable, HELPER, stage, str(pause), *args], stdout=sink,
                                   stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 180
            while not ready():
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            os.kill(process.pid, sig)
            process.wait(timeout=180)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.returncode


def test_sigint_finishes_the_training_step_saves_it_and_says_where_to_resume(tiny_model_dir, files, tmp_path,
                                                                             capsys):
    settings = _train(tiny_model_dir, files, tmp_path, max_steps=6)  # no checkpoints asked for
    out, log = Path(settings["output_dir"]), tmp_path / "train.log"
    started = lambda: "killable_cli: training step 2" in log.read_text()  # noqa: E731
    assert _run_until("training", ["train", *_argv(settings)], started, signal.SIGINT, log, pause=0.5) == 130
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    (checkpoint,) = out.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 2 <= step < 6 and json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert text.strip().splitlines()[-1] == (f"negalign train: stopped by SIGINT after step {step} of 6; saved "
                                             f"{checkpoint}: rerun the same command to resume from it")
    assert not (out / "train_log.json").exists()  # not a finished run
    assert main(["train", *_argv(settings)]) == 0
    assert f"resuming from {checkpoint}" in capsys.readouterr().err
    assert json.loads((out / "train_log.json").read_text())["log_history"][-1]["step"] == 6


def test_sigterm_finishes_the_sampling_batch_and_keeps_every_row(tiny_model_dir, files, tmp_path):
    output, log = tmp_path / "samples.jsonl", tmp_path / "sample.log"
    command = ["sample", "--model", tiny_model_dir, "--data", files["pairs"], "--output", str(output), "--k", "2",
               "--max-new-tokens", "4", "--batch-size", "1", "--seed", "1", "--no-anchor-report"]
    written = lambda: output.exists() and output.stat().st_size > 0  # noqa: E731
    assert _run_until("sampling", command, written, signal.SIGTERM, log, pause=0.5) == 143
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    rows = [json.loads(line) for line in output.read_text().splitlines()]  # every line whole
    assert 0 < len(rows) < 2 * len(PROMPTS) and len(rows) % 2 == 0  # whole batches: both samples of a prompt
    assert text.strip().splitlines()[-1] == (f"negalign sample: stopped by SIGTERM after {len(rows)} of "
                                             f"{2 * len(PROMPTS)} rows, all kept in {output}: rerun the same "
                                             "command to continue")
    assert main(command) == 0
    keys = [(r["prompt"][0]["content"], r["sample_index"]) for r in map(json.loads, output.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 2 * len(PROMPTS)


# ----- finding 10: messages that name the file and why --------------------------------------------------------

@pytest.mark.parametrize("case", ["empty", "all_skipped"])
def test_an_empty_or_all_skipped_data_file_is_named_with_the_reason(case, tiny_model_dir, files, tmp_path, capsys,
                                                                    no_model_load):
    data = tmp_path / f"{case}.jsonl"
    _write(data, [] if case == "empty" else ['{"prompt": "p", "rejected": ', {"prompt": "q", "rejected": ""}])
    settings = _train(tiny_model_dir, files, tmp_path, data=str(data), on_bad_row="skip")
    assert main(["train", *_argv(settings)]) == 2
    reason = ("the file is empty" if case == "empty" else
              f"all 2 records were skipped as bad rows (on_bad_row: skip); the first: {data} line 1: is not valid JSON")
    line = _last_line(capsys)
    assert line.startswith(f"negalign train: {data}: nothing to train on: {reason}"), line


def test_a_skipped_samples_line_is_named_when_its_prompt_comes_up_short(tiny_model_dir, files, tmp_path, capsys,
                                                                        no_model_load):
    rows = [json.dumps(row) for row in _samples()]
    rows[3] = rows[3][:30]  # prompt 1's second sample, cut short
    samples = _write(tmp_path / "torn-samples.jsonl", rows)
    settings = _train(tiny_model_dir, files, tmp_path, objective="d2o", samples=samples, on_bad_row="skip")
    assert main(["train", *_argv(settings)]) == 2
    line = _last_line(capsys)
    assert "this prompt has 1 self-samples" in line and \
        f"1 bad row of {samples} was skipped (on_bad_row: skip): {samples} line 4: is not valid JSON" in line, line


def test_an_output_that_cannot_be_written_is_one_line_naming_it(tiny_model_dir, files, tmp_path, capsys,
                                                                 monkeypatch, fake_judge, no_model_load):
    blocker = tmp_path / "a-file"
    blocker.write_text("x\n")
    answers = _write(tmp_path / "answers.jsonl", _samples(k=1))
    commands = {
        "train": lambda out: ["train", *_argv(_train(tiny_model_dir, files, tmp_path, output_dir=out))],
        "sample": lambda out: ["sample", "--model", tiny_model_dir, "--data", files["pairs"], "--output", out],
        "flag": lambda out: ["flag", "--answers", answers, "--output", out],
        "eval": lambda out: ["eval", "--model", tiny_model_dir, "--output", out],
        "export": lambda out: ["export", tiny_model_dir, "--output", out],
    }
    for name, command in commands.items():
        target = blocker / "out"
        assert main(command(str(target))) == 2, name
        assert _last_line(capsys) == (f"negalign {name}: cannot create {target}: {blocker} is a file, not a "
                                      "folder; choose another output"), name
    # a read-only folder, as a user who is not root sees one
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_open, real_os_open = open, os.open

    def refuse(path):
        if str(path).startswith(str(read_only)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr("builtins.open", lambda path, *a, **k: refuse(path) or real_open(path, *a, **k))
    monkeypatch.setattr(os, "open", lambda path, *a, **k: refuse(path) or real_os_open(path, *a, **k))
    for name in ("train", "flag"):
        assert main(commands[name](str(read_only / "out.jsonl"))) == 2
        line = _last_line(capsys)
        assert line.startswith(f"negalign {name}: cannot write {read_only / 'out.jsonl'}") and \
            "permission denied; choose a place you can write to, or change its permissions" in line and \
            "Errno" not in line, line


def test_debug_shows_the_traceback_of_a_one_line_error(tiny_model_dir, files, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    settings = _train(tiny_model_dir, files, tmp_path, output_dir=str(mine))
    assert main(["--debug", "train", *_argv(settings)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith(f"negalign train: {mine} holds files")
