"""Defaults made for GPU runs, checked on a CPU: checkpoint_min_minutes (a due checkpoint that comes too soon
after the last one is skipped, the last step's never is: writing a large model's optimizer state every tenth of
a short run costs more than training), and d2o/kl_on_samples left out of a log line when one anchor's importance
weight carries it (a GPU run logged 1.1e9)."""

import json

import pytest

import negalign


@pytest.fixture(scope="module")
def negatives(tmp_path_factory):
    path = tmp_path_factory.mktemp("interval") / "negatives.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "rejected": f"Bad answer {i}"}) + "\n"
                            for i in range(8)))
    return str(path)


@pytest.mark.parametrize("minutes, expected", [(0, ["checkpoint-3", "checkpoint-4"]), (30, ["checkpoint-4"])])
def test_checkpoints_respect_the_minimum_interval(minutes, expected, tiny_model_dir, negatives, tmp_path):
    out = tmp_path / "run"
    negalign.train(model=tiny_model_dir, data=negatives, objective="npo", max_steps=4, per_device_train_batch_size=2,
                   output_dir=str(out), cache_dir=str(tmp_path / "cache"), max_length=64, max_prompt_length=32,
                   use_cpu=True, save_steps=1, save_total_limit=2, checkpoint_min_minutes=minutes)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == expected
    assert (out / "model.safetensors").exists()


def test_the_default_is_every_save_steps_on_a_cpu_and_ten_minutes_on_a_gpu():
    from types import SimpleNamespace

    import torch

    from negalign.guards import checkpoint_minutes

    assert checkpoint_minutes(SimpleNamespace(checkpoint_min_minutes=None, device=torch.device("cpu"))) == 0
    assert checkpoint_minutes(SimpleNamespace(checkpoint_min_minutes=None, device=torch.device("cuda"))) == 10
    assert checkpoint_minutes(SimpleNamespace(checkpoint_min_minutes=2.5, device=torch.device("cuda"))) == 2.5


def test_kl_on_samples_is_left_out_when_one_anchor_carries_it(tiny_model_dir, negatives, tmp_path):
    """The trainer shows what its method's log_metrics leaves of a log line (D2O's rule, given here to an NPO run
    whose anchors came from the reference: the rule itself is tested on the Method in test_objectives)."""
    import dataclasses

    from negalign.methods import METHODS

    trainer = negalign.train(model=tiny_model_dir, data=negatives, objective="npo", max_steps=1,
                             per_device_train_batch_size=2, output_dir=str(tmp_path / "run"),
                             cache_dir=str(tmp_path / "cache"), max_length=64, max_prompt_length=32, use_cpu=True,
                             save_strategy="no")
    with_rule = dataclasses.replace(METHODS["npo"], log_metrics=METHODS["d2o"].log_metrics)
    trainer.layout = dataclasses.replace(trainer.layout, method=with_rule)
    trainer.anchor_provenance = {"from_reference": True}
    for share, kept in ((0.01, False), (0.5, True)):
        trainer._metrics.clear()
        trainer._metrics["kl_on_samples"] += [1.0e9, 3.0]
        trainer._metrics["kl_on_samples_ess"] += [share, share]
        trainer.log({"loss": 1.0})
        logged = trainer.state.log_history[-1]
        assert logged["npo/kl_on_samples_ess"] == pytest.approx(share)
        assert ("npo/kl_on_samples" in logged) == kept
