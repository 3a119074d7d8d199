"""Reliability: a kill -9 loses nothing, bad input stops with a clear message before any expensive work,
and the defaults are safe.

The kill tests start a real process (tests/killable_cli.py: the negalign command line, slowed down so the
kill lands where the test wants it), SIGKILL it, rerun the same command and compare with an uninterrupted
run. Everything uses the tiny random-weight Llama of conftest.py.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import negalign
import negalign.pipeline as pipeline
from negalign.cli import main
from negalign.config import load_config
from negalign.data import DataError
from negalign.reference import Reference

HELPER = str(Path(__file__).with_name("killable_cli.py"))
PROMPTS = [f"Question {i}: {'please ' * (i % 3)}how do I do thing number {i}?" for i in range(6)]


def _write(path, records) -> str:
    """Records are dicts (one JSON line each) or raw str/bytes lines."""
    with open(path, "wb") as handle:
        for record in records:
            record = json.dumps(record) if isinstance(record, dict) else record
            handle.write((record.encode() if isinstance(record, str) else record) + b"\n")
    return str(path)


def _pairs(prompts=PROMPTS):
    return [{"prompt": p, "chosen": f"I can help safely with: {p}", "rejected": f"Sure, harmful: {p.lower()}"}
            for p in prompts]


def _samples(prompts=PROMPTS, k=2):
    return [{"prompt": [{"role": "user", "content": p}], "completion": f"Answer {i} to {p}", "origin": "self",
             "sample_index": i} for p in prompts for i in range(k)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability-data")
    return {"pairs": _write(folder / "pairs.jsonl", _pairs()), "samples": _write(folder / "samples.jsonl", _samples())}


def _train_args(tiny_model_dir, files, tmp_path, **extra) -> dict:
    return {"model": tiny_model_dir, "data": files["pairs"], "samples": files["samples"], "objective": "d2o",
            "k": 2, "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "seed": 0,
            "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "max_length": 96,
            "max_prompt_length": 64, "use_cpu": True, **extra}


def _argv(settings: dict) -> list[str]:
    return [f"{key}={value}" for key, value in settings.items()]


def _run_and_kill(stage: str, args: list[str], ready, tmp_path: Path, pause: float, timeout: float = 120.0) -> float:
    """Start tests/killable_cli.py, wait until ready() is true, wait a random moment more, SIGKILL it.
    Returns the extra delay (for the failure message: any delay must be safe)."""
    log = open(tmp_path / "killed.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, HELPER, stage, str(pause), *args], stdout=log, stderr=subprocess.STDOUT,
                               env=env)
    delay = random.uniform(0, pause)
    try:
        deadline = time.time() + timeout
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"the process ended (rc {process.returncode}) before the kill point:\n"
                            + (tmp_path / "killed.log").read_text()[-3000:])
            if time.time() > deadline:
                pytest.fail("the kill point was never reached:\n" + (tmp_path / "killed.log").read_text()[-3000:])
            time.sleep(0.02)
        time.sleep(delay)
        assert process.poll() is None, "the process finished before it could be killed; slow it down more"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL
    return delay


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


# ----- kill -9, lose nothing -------------------------------------------------------------------------

def test_killed_sampling_resumes_to_the_uninterrupted_rows(tiny_model_dir, files, tmp_path):
    k, n = 2, 4  # the first n prompts
    command = lambda output: ["sample", "--model", tiny_model_dir, "--data", files["pairs"], "--output",  # noqa: E731
                              str(output), "--k", str(k), "--max-new-tokens", "5", "--batch-size", "1", "--seed", "3",
                              "--max-prompts", str(n)]
    killed = tmp_path / "killed.jsonl"
    delay = _run_and_kill("sampling", command(killed), lambda: killed.exists() and killed.stat().st_size > 0, tmp_path,
                          pause=0.7)
    partial = killed.read_bytes().count(b"\n")
    assert 0 < partial < n * k, f"kill after {delay:.2f}s left {partial} rows"
    assert main(command(killed)) == 0  # the same command again: continues where the kill stopped it
    assert main(command(tmp_path / "whole.jsonl")) == 0
    key = lambda r: (r["prompt"][0]["content"], r["sample_index"], r["completion"])  # noqa: E731
    resumed, whole = [key(r) for r in _rows(killed)], [key(r) for r in _rows(tmp_path / "whole.jsonl")]
    assert len(resumed) == len(set(resumed)) == n * k, f"kill after {delay:.2f}s"
    assert sorted(resumed) == sorted(whole), f"kill after {delay:.2f}s"
    assert all(sum(r[0] == p for r in resumed) == k for p in PROMPTS[:n])
    assert main(command(killed)) == 0 and len(_rows(killed)) == n * k  # a third run adds nothing


def test_killed_training_resumes_to_the_uninterrupted_weights(tiny_model_dir, files, tmp_path):
    # the defaults checkpoint (every tenth of the run: here every step), and the same command resumes
    settings = _train_args(tiny_model_dir, files, tmp_path, max_steps=3, learning_rate=3e-3)
    killed = tmp_path / "out"
    has_checkpoint = lambda: any((killed / name / "trainer_state.json").exists()  # noqa: E731
                                 for name in (os.listdir(killed) if killed.exists() else ()))
    delay = _run_and_kill("training", ["train", *_argv(settings)], has_checkpoint, tmp_path, pause=0.6)
    assert not (killed / "model.safetensors").exists(), "the run finished before the kill"
    # the newest complete checkpoint (a kill during a save leaves an incomplete one, which is passed over)
    resume_from = pipeline.resolve_checkpoint(load_config(None, settings))
    assert re.search(r"checkpoint-[12]$", resume_from), resume_from
    assert main(["train", *_argv(settings)]) == 0  # the same command, nothing added
    assert main(["train", *_argv({**settings, "output_dir": str(tmp_path / "whole")})]) == 0
    resumed, whole = load_file(killed / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    worst = max(float((resumed[name] - whole[name]).abs().max()) for name in whole)
    assert worst < 1e-5, f"resumed from {resume_from} (kill {delay:.2f}s after the first checkpoint): {worst}"
    log = lambda folder: json.load(open(folder / "train_log.json"))["log_history"]  # noqa: E731
    losses = lambda folder: [h["loss"] for h in log(folder) if "loss" in h]  # noqa: E731
    assert len(losses(killed)) == 3 and losses(killed) == pytest.approx(losses(tmp_path / "whole"), abs=1e-5)
    assert log(killed)[-1]["step"] == log(tmp_path / "whole")[-1]["step"] == 3
    assert sorted(n for n in os.listdir(killed) if n.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-3"]


def test_a_run_with_other_settings_will_not_resume_or_overwrite_checkpoints(tiny_model_dir, files, tmp_path):
    settings = _train_args(tiny_model_dir, files, tmp_path, max_steps=2)
    negalign.train(**settings)
    with pytest.raises(ValueError, match=r"holds checkpoints of a run with other settings \(learning_rate: 0.01 -> "
                                         r"0.02\); rerun with that run's settings to resume it"):
        negalign.train(**{**settings, "learning_rate": 2e-2})
    with pytest.raises(ValueError, match="resume_from_checkpoint: false, but .* holds checkpoints of an earlier run"):
        negalign.train(**settings, resume_from_checkpoint=False)
    trainer = negalign.train(**settings, logging_steps=2)  # same settings (logging aside): resumes the finished run
    assert trainer.state.global_step == 2


def test_killed_reference_cache_write_leaves_no_corrupt_cache(tiny_model_dir, files, tmp_path):
    settings = _train_args(tiny_model_dir, files, tmp_path, objective="dpo", max_steps=1)
    cache = tmp_path / "cache"
    writing = lambda: "killable_cli: writing" in (tmp_path / "killed.log").read_text()  # noqa: E731
    _run_and_kill("cache", ["train", *_argv(settings)], writing, tmp_path, pause=0.5)
    left = os.listdir(cache)
    left = [name for name in left if not name.endswith(".lock")]  # the lock file is left, unlocked
    assert left and all(name.endswith(".tmp") for name in left), left  # half a temp file, no cache file
    negalign.train(**settings)  # the rerun computes the cache again (it ignores the temp file)
    (cached,) = [name for name in os.listdir(cache) if name.endswith(".safetensors")]
    negalign.train(**{**settings, "cache_dir": str(tmp_path / "whole-cache"), "output_dir": str(tmp_path / "w")})
    assert torch.equal(load_file(cache / cached)["logps"], load_file(tmp_path / "whole-cache" / cached)["logps"])


def test_a_damaged_reference_cache_is_recomputed_not_read(tiny_model_dir, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    from negalign.reference import cached_reference_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sequences = [([1, 2, 3], [4, 5]), ([6, 7], [8, 9, 10])]
    logps, hit = cached_reference_logps(model, sequences, tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:40])  # cut short (a copy interrupted, a full disk)
    again, hit = cached_reference_logps(model, sequences, tmp_path)
    assert not hit and torch.equal(again, logps)
    assert "cannot be read" in caplog.text and "computing it again" in caplog.text
    assert torch.equal(cached_reference_logps(model, sequences, tmp_path)[0], logps)  # repaired: a hit again


def _fake_checkpoint(folder: Path, step: int, state=True, weights=True) -> None:
    folder.mkdir(parents=True)
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if weights:
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, folder / "model.safetensors")  # intact: checkpoint_problem reads its header


def test_resume_passes_over_a_checkpoint_cut_short_by_a_kill(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-2", 2)
    _fake_checkpoint(tmp_path / "checkpoint-3", 3, state=False)  # killed before trainer_state.json was written
    (tmp_path / "checkpoint-4").mkdir()  # killed right after mkdir
    def config(value):
        return load_config(None, {"output_dir": str(tmp_path), "resume_from_checkpoint": value})

    assert pipeline.resolve_checkpoint(config(True)) == str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match=r"other settings \(negalign_config.yaml missing or unreadable"):
        pipeline.resolve_checkpoint(config(None))  # the default resumes only a run of the same settings
    with pytest.raises(ValueError, match=r"checkpoint-3 has no readable trainer_state.json \(not a Trainer "
                                         r"checkpoint, or one cut short by a kill.*set resume_from_checkpoint: true"):
        pipeline.resolve_checkpoint(config(str(tmp_path / "checkpoint-3")))
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_st')  # torn
    with pytest.raises(ValueError, match="holds no complete checkpoint-N"):
        pipeline.resolve_checkpoint(config(True))


# ----- bad input: a clear error, before any expensive work -------------------------------------------

@pytest.fixture
def no_expensive_work(monkeypatch):
    """Model loading and reference log-probs raise; so does the tokenizer when `tokenizer=False`."""
    def expensive(*args, **kwargs):
        raise AssertionError("expensive work started before the input was checked")

    monkeypatch.setattr(pipeline, "load_model", expensive)
    monkeypatch.setattr(Reference, "prepare", expensive)
    return lambda: monkeypatch.setattr(pipeline, "load_tokenizer", expensive)


BAD_DATA = {  # name: (records written to the data file, objective, message that must appear)
    "not_json": ([_pairs()[0], '{"prompt": "p", "chosen": '], "dpo", "bad.jsonl line 2: is not valid JSON"),
    "not_utf8": ([_pairs()[0], b'{"prompt": "caf\xe9", "rejected": "x"}'], "npo",
                 "bad.jsonl line 2: is not valid UTF-8 (byte 0xe9 at column 16); re-save the file as UTF-8"),
    "field_missing": ([_pairs()[0], {"prompt": "p", "chosen": "c"}], "dpo",
                      "bad.jsonl line 2: field 'rejected' is missing"),
    "label_yes": ([{"prompt": "p", "completion": "c", "label": "yes"}], "kto",
                  "bad.jsonl line 1: field 'label' must be a boolean (true/false or 0/1), got \"yes\""),
    "score_high": ([{"prompt": "p", "completion": "c", "score": "high"}], "pointwise_dpo",
                   "bad.jsonl line 1: field 'score' must be a number, got \"high\""),
    "empty_prompt": ([{"prompt": " ", "rejected": "c"}], "npo", "bad.jsonl line 1: field 'prompt' is empty"),
    "empty_completion": ([{"prompt": "p", "rejected": ""}], "npo", "bad.jsonl line 1: field 'rejected' is empty"),
    "unknown_role": ([{"prompt": [{"role": "bot", "content": "hi"}], "rejected": "c"}], "npo",
                     "bad.jsonl line 1: field 'prompt[0].role' must be one of 'system', 'user', 'assistant'"),
    "duplicate": ([_pairs()[0], _pairs()[1], _pairs()[0]], "dpo", "bad.jsonl line 3: duplicates"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_stops_training_before_the_model_loads(case, tiny_model_dir, files, tmp_path, no_expensive_work):
    records, objective, message = BAD_DATA[case]
    data = _write(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError) as info:
        negalign.train(**_train_args(tiny_model_dir, files, tmp_path, data=data, objective=objective))
    assert message.replace("bad.jsonl", data) in str(info.value)


@pytest.mark.parametrize("key", ["data", "samples"])
def test_a_missing_file_is_named_before_even_the_tokenizer_loads(key, tiny_model_dir, files, tmp_path,
                                                                  no_expensive_work):
    no_expensive_work()  # the tokenizer too: a short model name may mean a model conversion
    missing = str(tmp_path / "nowhere" / "feedback.jsonl")
    with pytest.raises(DataError) as info:
        negalign.train(**_train_args(tiny_model_dir, files, tmp_path, **{key: missing}))
    assert str(info.value).startswith(f"{missing}: file not found; check the path")
    assert str(info.value).endswith(f"(set by `{key}`)")


def test_samples_for_other_prompts_name_the_prompt_and_its_count(tiny_model_dir, files, tmp_path, no_expensive_work):
    other = _write(tmp_path / "other-samples.jsonl", _samples([f"Another prompt {i}" for i in range(4)]))
    with pytest.raises(DataError) as info:
        negalign.train(**_train_args(tiny_model_dir, files, tmp_path, samples=other))
    assert str(info.value).startswith(f"{files['pairs']}:1: this prompt has 0 self-samples in {other}, which "
                                      f"covers 0 of the {len(PROMPTS)} prompts")
    assert "run `negalign sample` on this data file" in str(info.value)
    with pytest.raises(DataError, match=r"pairs.jsonl:1: this prompt has 0 self-samples"):  # with k set, too
        negalign.train(**_train_args(tiny_model_dir, files, tmp_path, samples=other, k=2))


def test_samples_cut_short_by_a_kill_are_named(tiny_model_dir, files, tmp_path, no_expensive_work):
    rows = _samples()
    torn = _write(tmp_path / "torn.jsonl", [*rows[:-1], json.dumps(rows[-1])[:25]])
    with pytest.raises(DataError, match=rf"torn.jsonl line {len(rows)}: is not valid JSON"):
        negalign.train(**_train_args(tiny_model_dir, files, tmp_path, samples=torn))
    short = _write(tmp_path / "short.jsonl", rows[:-1])  # the last prompt has 1 sample, the others 2
    with pytest.raises(DataError, match=rf"pairs.jsonl:{len(PROMPTS)}: this prompt has only 1 self-samples, and "
                                        "d2o with k=2 needs 2; sample more, or lower k to 1"):
        negalign.train(**_train_args(tiny_model_dir, files, tmp_path, samples=short))
    with pytest.raises(DataError, match=rf"pairs.jsonl:{len(PROMPTS)}: this prompt has 1 self-samples but most "
                                        "prompts have 2.*pass k=1.*or sample the missing ones"):
        negalign.train(**_train_args(tiny_model_dir, files, tmp_path, samples=short, k=None))


@pytest.mark.parametrize("override,message", [
    ({"bta": 0.1}, r"unknown option\(s\): bta \(did you mean beta\?\)"),
    ({"beta": 0.0}, "beta: must be > 0, got 0.0"),
    ({"k": -1}, "k: must be >= 0, got -1"),
    ({"max_prompt_length": 96}, r"max_prompt_length \(96\) must be < max_length \(96\)"),
    ({"resume_from_checkpoint": "/nowhere/checkpoint-3"}, "/nowhere/checkpoint-3 does not exist"),
])
def test_config_errors_come_before_any_work(override, message, tiny_model_dir, files, tmp_path, no_expensive_work):
    no_expensive_work()
    with pytest.raises(ValueError, match=message):
        negalign.train(**_train_args(tiny_model_dir, files, tmp_path, **override))


def test_one_label_class_warns_before_the_model_loads(tiny_model_dir, files, tmp_path, no_expensive_work):
    only_good = _write(tmp_path / "good.jsonl", [{"prompt": p, "completion": "fine", "label": True} for p in PROMPTS])
    for objective in ("kto", "pointwise_dpo", "ulma"):
        with pytest.warns(UserWarning, match=rf"{objective}: all {len(PROMPTS)} labelled rows .* are True; none is "
                                             r"false \(undesirable\)"):
            with pytest.raises(AssertionError, match="expensive work started"):
                negalign.train(**_train_args(tiny_model_dir, files, tmp_path, data=only_good, objective=objective))


def test_truncation_and_skipped_rows_are_counted_and_reported(tiny_model_dir, files, tmp_path):
    long_prompt = {"prompt": "tell me " * 60 + "a secret", "rejected": "No."}
    data = _write(tmp_path / "mixed.jsonl", [*_pairs()[:3], "{not json", long_prompt, {"prompt": "p", "rejected": ""}])
    trainer = negalign.train(**_train_args(tiny_model_dir, files, tmp_path, data=data, objective="npo",
                                           on_bad_row="skip", max_steps=1, max_prompt_length=48))
    summary = json.load(open(tmp_path / "out" / "train_log.json"))["data"]
    assert summary.startswith("4 training examples from 7 rows (6 records read -> 7 rows; 2 skipped (0 duplicates), "
                              f"first: {data} line 4: is not valid JSON"), summary
    assert "truncated: 1 prompts, 0 completions; " in summary, summary  # kept its last 48 tokens
    assert trainer.state.global_step == 1


def test_a_new_refresh_run_will_not_reuse_an_earlier_runs_samples(tiny_model_dir, files, tmp_path,
                                                                   no_expensive_work):
    settings = _train_args(tiny_model_dir, files, tmp_path, sampling="refresh", refresh_every=2)
    folder = tmp_path / "out" / "refreshed_samples"
    folder.mkdir(parents=True)
    (folder / "step-000002.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"refreshed_samples holds samples refreshed by an earlier run.*Resume that "
                                         r"run \(resume_from_checkpoint: true\), or use another output_dir"):
        negalign.train(**settings)
    _fake_checkpoint(tmp_path / "out" / "checkpoint-2", 2)  # resuming that run is what the samples are for
    with pytest.raises(AssertionError, match="expensive work started"):
        negalign.train(**settings, resume_from_checkpoint=True)


# ----- multi-process launches that would not really be distributed ----------------------------------

def test_a_launch_the_config_does_not_join_is_refused(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="launched as 2 processes, but training would run in 1: on a machine "
                                         "without GPUs set use_cpu: true"):
        pipeline.check_launch(SimpleNamespace(world_size=1, sampling="static", retain_data=None))
    with pytest.raises(ValueError, match="sampling: 'refresh' runs in one process only"):
        pipeline.check_launch(SimpleNamespace(world_size=2, sampling="refresh", retain_data=None))
    with pytest.raises(ValueError, match="retain_data runs in one process only"):
        pipeline.check_launch(SimpleNamespace(world_size=2, sampling="static", retain_data="benign-instructions"))
    pipeline.check_launch(SimpleNamespace(world_size=2, sampling="static", retain_data=None))
    monkeypatch.delenv("WORLD_SIZE")
    pipeline.check_launch(SimpleNamespace(world_size=1, sampling="refresh", retain_data="benign-instructions"))


# ----- safe defaults ---------------------------------------------------------------------------------

def test_remote_code_is_never_trusted_by_default(tiny_model_dir, monkeypatch):
    import transformers

    from negalign.models import load_model, load_tokenizer

    seen = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = auto.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code", False))
            return _real(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    load_model(tiny_model_dir)
    load_tokenizer(tiny_model_dir)
    assert seen == [False, False]
    assert getattr(load_config(None, {"output_dir": "x"}), "trust_remote_code", False) is False


def test_no_pickle_reads_anywhere_in_negalign():
    source = Path(negalign.__file__).parent
    risky = re.compile(r"torch\.load\(|pickle\.loads?\(|joblib|weights_only\s*=\s*False|trust_remote_code\s*=\s*True")
    hits = [f"{path.relative_to(source)}:{number}: {line.strip()}" for path in sorted(source.rglob("*.py"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if risky.search(line)]
    assert hits == []


def test_reference_cache_keys_separate_weights_and_tokens(tiny_model_dir, tmp_path):
    from conftest import make_tiny_llama
    from transformers import AutoModelForCausalLM

    from negalign.reference import cached_reference_logps

    first = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    other = make_tiny_llama(first.config.vocab_size, seed=1)
    sequences = [([1, 2, 3], [4, 5]), ([6, 7], [8, 9, 10])]
    a, _ = cached_reference_logps(first, sequences, tmp_path)
    b, hit_b = cached_reference_logps(other, sequences, tmp_path)  # same tokens, other weights
    c, hit_c = cached_reference_logps(first, [([1, 2, 3], [4, 6]), sequences[1]], tmp_path)  # one token differs
    assert not hit_b and not hit_c and len(list(tmp_path.glob("*.safetensors"))) == 3
    assert not torch.equal(a, b) and a[1] == c[1] and a[0] != c[0]
    with torch.no_grad():  # changing a model in place changes its key too
        first.model.norm.weight.mul_(1.5)
    assert not cached_reference_logps(first, sequences, tmp_path)[1]


# ----- one writer per output ---------------------------------------------------------------------------

def test_a_second_sampler_on_one_output_is_refused_and_leaves_no_duplicate(tiny_model_dir, files, tmp_path, capsys):
    output = tmp_path / "samples.jsonl"
    command = ["sample", "--model", tiny_model_dir, "--data", files["pairs"], "--output", str(output), "--k", "2",
               "--max-new-tokens", "4", "--batch-size", "1", "--seed", "1", "--no-anchor-report"]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, HELPER, "sampling", "0.4", *command], stdout=log,
                             stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 120
        while not (output.exists() and output.stat().st_size > 0):  # the first one is writing rows
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-2000:]
            time.sleep(0.02)
        assert main(command) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"negalign sample: {output} is being written by pid {first.pid}: ") and \
            "--wait" in error and "\n" not in error, error
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    rows = [(r["prompt"][0]["content"], r["sample_index"]) for r in _rows(output)]
    assert len(rows) == len(set(rows)) == 2 * len(PROMPTS)


def test_a_lock_left_by_a_killed_process_blocks_nothing_and_wait_waits(tmp_path):
    from negalign.locks import OutputLocked, lock_path, output_lock

    target = tmp_path / "eval"
    holder = ("import sys, time; from negalign.locks import output_lock\n"
              "with output_lock(sys.argv[1], 'test'):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))")
    process = subprocess.Popen([sys.executable, "-c", holder, str(target), "60"], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    with pytest.raises(OutputLocked, match=rf"is being written by pid {process.pid}"):
        with output_lock(target, "evaluation"):
            pass
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert lock_path(target).exists()  # the file stays; the kernel dropped the lock with the process
    with output_lock(target, "evaluation"):
        pass
    process = subprocess.Popen([sys.executable, "-c", holder, str(target), "1.0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    started = time.time()
    with output_lock(target, "evaluation", wait=True, poll_s=0.05):
        waited = time.time() - started
    assert waited > 0.7  # acquired only once the holder's 1 s with the lock was over
    process.wait()


def test_a_second_training_run_on_one_output_dir_is_refused(tiny_model_dir, files, tmp_path):
    from negalign.locks import OutputLocked, output_lock

    settings = _train_args(tiny_model_dir, files, tmp_path, max_steps=1)
    with output_lock(settings["output_dir"], "training"):  # held by this process's other open file
        with pytest.raises(OutputLocked, match=r"out is being written by pid \d+"):
            negalign.train(**settings)


# ----- config problems: one line, exit 2 -----------------------------------------------------------------

RECIPES = {  # name: (recipe text, expected one-line message after "negalign train: ")
    "syntax": ("objective: d2o\n  beta: 0.1\n", r"syntax.yaml:2:7: invalid YAML: mapping values are not allowed"),
    "unsafe_tag": ("objective: !!python/object/apply:os.system ['true']\n",
                   r"unsafe_tag.yaml:1:12: invalid YAML: could not determine a constructor .*Python object tags "
                   "are refused"),
    "twice": ("beta: 0.1\nobjective: npo\nbeta: 0.2\n", r"twice.yaml:3:1: key 'beta' is given twice \(first on line 1\)"),
    "list_for_number": ("objective: npo\nbeta: [0.1, 0.2]\n", r"list_for_number.yaml:2: beta must be a number, got "
                        r"list \[0.1, 0.2\]"),
    "word_for_bool": ("use_lora: sometimes\n", r"word_for_bool.yaml:1: use_lora must be true or false, got 'sometimes'"),
    "fraction_for_int": ("lora_r: 2.5\n", r"fraction_for_int.yaml:1: lora_r must be a whole number, got 2.5"),
    "not_a_mapping": ("- objective\n- d2o\n", r"not_a_mapping.yaml: a recipe must be a YAML mapping"),
}


@pytest.mark.parametrize("case", [*RECIPES, "missing_file"])
def test_every_config_problem_is_one_line_and_exit_2(case, tmp_path, capsys, no_expensive_work):
    recipe = tmp_path / f"{case}.yaml"
    if case == "missing_file":
        message = rf"{re.escape(str(recipe))}: no such file"
    else:
        text, message = RECIPES[case]
        recipe.write_text(text)
    for flag in (["--config", str(recipe)], [f"--config={recipe}"]):
        assert main(["train", *flag, f"output_dir={tmp_path / 'out'}"]) == 2
        captured = capsys.readouterr()
        error = captured.err.strip()
        assert "\n" not in error and "Traceback" not in captured.err, captured.err
        assert re.match(rf"negalign train: .*{message}", error), error


def test_an_empty_data_file_is_an_error_not_an_empty_success(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["sample", "--model", tiny_model_dir, "--data", str(empty), "--output", str(tmp_path / "s.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"negalign sample: {empty}: no prompts to sample (the file has no usable rows)"
    assert not (tmp_path / "s.jsonl").exists()


def test_file_level_faults_bom_truncated_gzip_and_a_5_mb_line(tmp_path):
    import gzip

    from negalign.data import load_rows

    bom = tmp_path / "bom.jsonl"  # Windows editors write a UTF-8 byte-order mark: read as if absent
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "rejected": "r"}).encode() + b"\n")
    assert load_rows(str(bom))[0][0]["prompt"] == [{"role": "user", "content": "p"}]
    whole = gzip.compress(b"".join(json.dumps({"prompt": f"p{i}", "rejected": "r" * 50}).encode() + b"\n"
                                   for i in range(200)))
    cut = tmp_path / "cut.jsonl.gz"  # a download cut short
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut.jsonl.gz: could not be read to the end .* looks truncated or corrupt"):
        load_rows(str(cut))
    big = tmp_path / "big.jsonl"  # one 5 MB answer: read whole (training truncates it to max_length later)
    big.write_text(json.dumps({"prompt": "p", "rejected": "x " * 2_600_000}) + "\n")
    (row,), _ = load_rows(str(big))
    assert len(row["completion"]) == 5_200_000
