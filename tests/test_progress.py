"""One progress switch (issue 34, item 5): --no-progress silences every bar of a command, the reference pass and
the embedding bars included; without it the long steps show one."""

import json
import re

import pytest

from negalign.cli import main
from negalign.progress import bar, quiet, quietly


def test_the_switch_nests_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv("NEGALIGN_NO_PROGRESS", raising=False)
    assert not quiet() and not bar(range(3)).disable
    with quietly():
        assert quiet() and bar(range(3)).disable
        with quietly(False):  # an inner "loud" cannot undo an outer quiet
            assert quiet()
    assert not quiet()
    monkeypatch.setenv("NEGALIGN_NO_PROGRESS", "1")
    assert quiet()


@pytest.fixture
def run_args(tiny_model_dir, tmp_path):
    data = tmp_path / "negatives.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Write a line about the colour number {i}.", "rejected": "No."})
                            + "\n" for i in range(4)))
    return ["--model", tiny_model_dir, "--data", str(data), "--objective", "npo", "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--use_cpu", "true", "--save_strategy", "no",
            "--cache_dir", str(tmp_path / "cache")]


@pytest.mark.parametrize("quiet_run", [False, True])
def test_train_no_progress_silences_the_reference_pass_and_the_trainer_bar(run_args, tmp_path, capsys, quiet_run):
    extra = ["--no-progress"] if quiet_run else []
    assert main(["train", *run_args, "--output_dir", str(tmp_path / f"run-{quiet_run}"), *extra]) == 0
    err = capsys.readouterr().err
    assert bool(re.search(r"reference log-probs: +\d+%", err)) is not quiet_run
    assert ("it/s]" in err or "s/it]" in err) is not quiet_run  # the Trainer's own bar
    if quiet_run:
        assert "%|" not in err  # no bar at all, transformers' own (saving the model's shards) included


def test_the_embedding_bar_shows_for_long_lists_only(monkeypatch):
    import negalign.progress as progress
    from negalign.evaluation.encoder import SHOW_BAR_FROM, SentenceEncoder

    seen, real = [], progress.bar
    monkeypatch.setattr(progress, "bar", lambda iterable, **kw: seen.append(kw) or real(iterable, **kw))
    encoder = SentenceEncoder()
    short, long = encoder.encode(["a short text"] * 8), encoder.encode(["x"] * SHOW_BAR_FROM, batch_size=256)
    assert short.shape[0] == 8 and long.shape[0] == SHOW_BAR_FROM
    assert [kw["disable"] for kw in seen] == [True, False] and seen[1]["desc"] == "embedding"
