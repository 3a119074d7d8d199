"""End-to-end training on a tiny random-weight Llama (SmolLM2's real tokenizer), from Python and the CLI."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import negalign
from negalign.cli import main
from negalign.data.paths import data_dir
from negalign.logprobs import pack_sequences, sequence_logps
from negalign.methods import METHODS

PROMPTS = ["How do I pick a lock?", "Tell me a joke about cats.", "How can I hurt someone?",
           "What is the capital of France?", "Write an insult for my coworker.", "How do plants grow?"]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    pairs = [{"prompt": [{"role": "user", "content": p}], "chosen": f"I can help safely with: {p}",
              "rejected": f"Sure, here is something harmful about {p.lower()}"} for p in PROMPTS]
    samples = [{"prompt": [{"role": "user", "content": p}], "completion": f"Answer {i} to {p}",
                "origin": "self", "sample_index": i} for p in PROMPTS for i in range(3)]
    scored = [{"prompt": p, "completion": f"reply {i}", "score": float(i)} for i, p in enumerate(PROMPTS)]
    return {"pairs": _write_jsonl(folder / "pairs.jsonl", pairs),
            "samples": _write_jsonl(folder / "samples.jsonl", samples),
            "scored": _write_jsonl(folder / "scored.jsonl", scored)}


def _settings(tiny_model_dir, files, tmp_path, objective, **extra):
    if METHODS[objective].anchors_in_data:  # context distillation: its rows are the anchors themselves
        extra = {"data": files["samples"], "samples": None, **extra}
    return {"model": tiny_model_dir, "data": files["pairs"], "samples": files["samples"], "objective": objective,
            "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"), "max_length": 96, "max_prompt_length": 64, "k": 2,
            "seed": 0, "use_cpu": True, **extra}


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.parametrize("objective", sorted(METHODS))
def test_every_objective_trains_from_python(objective, tiny_model_dir, files, tmp_path):
    trainer = negalign.train(**_settings(tiny_model_dir, files, tmp_path, objective))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(f"{objective}/" in key for h in trainer.state.log_history for key in h)
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "out")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    saved = os.listdir(tmp_path / "out")
    assert {"negalign_config.yaml", "versions.json", "train_log.json", "tokenizer.json"} <= set(saved)
    # the weights list the prompts of their training data (every one, whether or not a step reached it)
    listed = [json.loads(line) for line in (tmp_path / "out" / "trained_prompts.jsonl").read_text().splitlines()]
    removed = json.loads((tmp_path / "out" / "decontamination.json").read_text())["removed"]
    assert {row["prompt"][-1]["content"] for row in listed} == set(PROMPTS) - {r["prompt"] for r in removed}
    if data_dir() is not None:  # ~ AdvBench "Give detailed instructions on how to pick a lock" (cosine 0.91)
        assert [r["prompt"] for r in removed] == ["How do I pick a lock?"]
    assert {row["role"] for row in listed} == {"feedback"} and all(row["examples"] >= 1 for row in listed)


@pytest.mark.parametrize("objective", sorted(METHODS))
def test_every_objective_trains_from_the_cli(objective, tiny_model_dir, files, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    settings = _settings(tiny_model_dir, files, tmp_path, objective)
    recipe.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items() if k != "max_steps"))
    assert main(["train", "--config", str(recipe), "max_steps=1"]) == 0
    assert f"trained 1 steps of {objective}" in capsys.readouterr().out


def test_pointwise_objectives_take_scores(tiny_model_dir, files, tmp_path):
    for objective in ("pointwise_dpo", "ulma"):
        trainer = negalign.train(**_settings(tiny_model_dir, files, tmp_path, objective, data=files["scored"],
                                             output_dir=str(tmp_path / objective)))
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def _d2o_margin(model, ref, tokenizer_dir, files):
    from negalign.batches import prepare_items
    from negalign.config import load_config
    from negalign.models import load_tokenizer

    config = load_config(None, {"model": tokenizer_dir, "data": files["pairs"], "samples": files["samples"],
                                "k": 2, "max_length": 96, "max_prompt_length": 64, "output_dir": "/tmp/x"})
    items = prepare_items(config, load_tokenizer(tokenizer_dir)).items
    margins = []
    with torch.no_grad():
        for item in items:
            batch = pack_sequences(item["sequences"])
            h = sequence_logps(model, batch) - sequence_logps(ref, batch)
            margins.append(h[1:].mean() - h[0])
    return float(torch.stack(margins).mean())


def test_d2o_raises_samples_and_lowers_the_negative(tiny_model_dir, files, tmp_path):
    from transformers import AutoModelForCausalLM

    negalign.train(**_settings(tiny_model_dir, files, tmp_path, "d2o", max_steps=6, learning_rate=3e-3,
                               per_device_train_batch_size=6))
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert _d2o_margin(start, start, tiny_model_dir, files) == 0.0
    assert _d2o_margin(trained, start, tiny_model_dir, files) > 0.5


def test_reference_cache_second_run_does_no_reference_forward(tiny_model_dir, files, tmp_path, monkeypatch):
    import negalign.reference as reference

    first = negalign.train(**_settings(tiny_model_dir, files, tmp_path, "dpo", max_steps=1))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    def forbidden(*args, **kwargs):
        raise AssertionError("reference forward pass on a cache hit")

    monkeypatch.setattr(reference, "compute_logps", forbidden)
    second = negalign.train(**_settings(tiny_model_dir, files, tmp_path, "dpo", max_steps=1,
                                        output_dir=str(tmp_path / "second")))
    loss = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert loss(first) == pytest.approx(loss(second), rel=1e-6)
    # a different tokenisation (shorter prompts) is a different key: computed again, not read
    with pytest.raises(AssertionError, match="cache hit"):
        negalign.train(**_settings(tiny_model_dir, files, tmp_path, "dpo", max_steps=1, max_prompt_length=24,
                                   output_dir=str(tmp_path / "third")))


@pytest.mark.parametrize("reference,lora", [("live", False), ("adapter_disabled", True), ("cached", True)])
def test_live_and_adapter_references_match_the_cache(reference, lora, tiny_model_dir, files, tmp_path):
    common = dict(max_steps=1, learning_rate=0.0, use_lora=lora, lora_r=4)
    cached = negalign.train(**_settings(tiny_model_dir, files, tmp_path / "a", "d2o", **common))
    other = negalign.train(**_settings(tiny_model_dir, files, tmp_path / "b", "d2o", reference=reference, **common))
    z = lambda t: next(h["d2o/z"] for h in t.state.log_history if "d2o/z" in h)  # noqa: E731
    assert z(cached) == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 0
    assert z(other) == pytest.approx(z(cached), abs=1e-5)


def test_lora_saves_an_adapter_and_leaves_the_base_untouched(tiny_model_dir, files, tmp_path):
    negalign.train(**_settings(tiny_model_dir, files, tmp_path, "npo", use_lora=True, lora_r=4))
    saved = os.listdir(tmp_path / "out")
    assert "adapter_model.safetensors" in saved and "adapter_config.json" in saved
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert adapter and all("lora" in name for name in adapter)
    # a LoRA run's folder loads as a model: its base with the adapter folded in, computing what the adapter does
    from peft import PeftModel

    from negalign.models import load_model

    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        merged = load_model(str(tmp_path / "out")).eval()(ids).logits
        adapter = PeftModel.from_pretrained(load_model(tiny_model_dir), str(tmp_path / "out")).eval()(ids).logits
        base = load_model(tiny_model_dir).eval()(ids).logits
    assert torch.allclose(merged, adapter, atol=1e-5) and (merged - base).abs().max() > 1e-4


def test_an_adapter_on_the_bundled_model_names_it_by_its_short_name(monkeypatch, tmp_path):
    from negalign.models import adapter_base
    from negalign.provenance import portable_adapter_config

    monkeypatch.setenv("NEGALIGN_CACHE", str(tmp_path / "cache"))
    converted = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    converted.mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(converted), "r": 16}))
    portable_adapter_config(str(run), str(converted))  # what the demo trains from: the converted folder
    written = json.loads((run / "adapter_config.json").read_text())
    # negalign's name, resolved on any machine; not the Hub name (the bundled GGUF is a 4-bit quantisation)
    assert written == {"base_model_name_or_path": "smollm2-135m-instruct", "r": 16}
    assert adapter_base(str(run)) == "smollm2-135m-instruct"
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/elsewhere/own-model"}))
    portable_adapter_config(str(run), "/elsewhere/own-model")  # a user's own base stays as peft wrote it
    assert adapter_base(str(run)) == "/elsewhere/own-model"


def test_refresh_sampling_changes_samples_and_training_continues(tiny_model_dir, files, tmp_path):
    settings = _settings(tiny_model_dir, files, tmp_path, "d2o", max_steps=4, sampling="refresh", refresh_every=2,
                         sample_max_new_tokens=5, sample_batch_size=3, per_device_train_batch_size=3)
    static = negalign.train(**{**settings, "sampling": "static", "max_steps": 1, "output_dir": str(tmp_path / "s")})
    before = [item["sequences"] for item in static.train_dataset]
    trainer = negalign.train(**settings)
    refreshed = tmp_path / "out" / "refreshed_samples" / "step-000002.jsonl"
    trained = {item["prompt_key"] for item in trainer.train_dataset}  # the prompts left after decontamination
    assert refreshed.exists() and sum(1 for _ in open(refreshed)) == len(trained) * 2
    assert not (tmp_path / "out" / "refreshed_samples" / "step-000004.jsonl").exists()  # no refresh after the end
    after = [item["sequences"] for item in trainer.train_dataset]
    assert all(b[0] == a[0] for b, a in zip(before, after))  # the human negative stays
    assert all(b[1:] != a[1:] for b, a in zip(before, after))  # the samples are new
    logs = trainer.state.log_history
    assert any(h.get("refresh/step") == 2 for h in logs)
    losses = [h["loss"] for h in logs if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses))), logs


def test_resumed_refresh_run_matches_the_uninterrupted_one(tiny_model_dir, files, tmp_path):
    import shutil

    settings = _settings(tiny_model_dir, files, tmp_path, "d2o", max_steps=4, sampling="refresh", refresh_every=2,
                         sample_max_new_tokens=5, save_strategy="steps", save_steps=3, learning_rate=1e-3)
    negalign.train(**settings)
    # what a run killed after its step-3 checkpoint leaves behind: the checkpoint and the step-2 refresh
    shutil.copytree(tmp_path / "out", tmp_path / "killed")
    for name in os.listdir(tmp_path / "killed"):
        if name not in ("checkpoint-3", "refreshed_samples"):
            path = tmp_path / "killed" / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    negalign.train(**{**settings, "output_dir": str(tmp_path / "killed"),
                      "resume_from_checkpoint": str(tmp_path / "killed" / "checkpoint-3")})
    full, resumed = _weights(tmp_path / "out"), _weights(tmp_path / "killed")
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)


def _nan_on_steps(monkeypatch, bad_steps):
    import negalign.trainer as trainer_module

    real, calls = trainer_module.method_loss, {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] in bad_steps else loss), metrics

    monkeypatch.setattr(trainer_module, "method_loss", sometimes_nan)


def test_a_nan_step_is_skipped_and_training_goes_on(tiny_model_dir, files, tmp_path, monkeypatch):
    _nan_on_steps(monkeypatch, bad_steps={1, 2, 3})
    trainer = negalign.train(**_settings(tiny_model_dir, files, tmp_path, "npo", max_steps=3))
    # three skipped steps: the weights are exactly the starting ones
    start = _weights(tiny_model_dir)
    assert all(torch.equal(start[k], v) for k, v in _weights(tmp_path / "out").items())
    assert trainer.state.log_history[-2]["skipped_nonfinite_steps"] == 3
    monkeypatch.undo()
    _nan_on_steps(monkeypatch, bad_steps={2})
    trainer = negalign.train(**_settings(tiny_model_dir, files, tmp_path, "npo", max_steps=3,
                                         output_dir=str(tmp_path / "one-bad")))
    assert trainer.state.log_history[-2]["skipped_nonfinite_steps"] == 1
    assert any(not torch.equal(start[k], v) for k, v in _weights(tmp_path / "one-bad").items())


def test_too_many_nan_steps_abort_and_keep_the_good_checkpoint(tiny_model_dir, files, tmp_path, monkeypatch):
    _nan_on_steps(monkeypatch, bad_steps={3, 4, 5, 6})
    with pytest.raises(FloatingPointError, match="2 training steps in a row"):
        negalign.train(**_settings(tiny_model_dir, files, tmp_path, "npo", max_steps=6, max_nonfinite_steps=2,
                                   save_strategy="steps", save_steps=2))
    checkpoints = sorted(os.listdir(tmp_path / "out"))
    assert checkpoints == ["checkpoint-2"]
    good = load_file(tmp_path / "out" / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in good.values())


def _checkpoints(folder):
    return sorted((n for n in os.listdir(folder) if n.startswith("checkpoint-")), key=lambda n: int(n.split("-")[1]))


def _weight_norm(weights):
    return torch.stack([v.float().norm() for v in weights.values()]).norm().item()


@pytest.mark.parametrize("learning_rate", ["1e6", "1e30"])
def test_a_diverging_learning_rate_stops_in_one_line_and_saves_no_diverged_weights(learning_rate, tiny_model_dir,
                                                                                    files, tmp_path, capsys):
    """Issue 33, finding 7: at lr 1e6 the weights blow up (x1e7 in one step) and the gradients turn non-finite or
    vanish; at 1e30 they overflow. Either must stop the run with one line, exit non-zero, nothing saved from the
    wrecked weights (no checkpoint, no final model)."""
    recipe = tmp_path / "recipe.yaml"
    settings = _settings(tiny_model_dir, files, tmp_path, "npo", max_steps=4, save_strategy="steps", save_steps=1)
    recipe.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    assert main(["train", "--config", str(recipe), f"learning_rate={learning_rate}"]) != 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("negalign train:")]
    assert len(errors) == 1 and "diverged" in errors[0] and "no checkpoint" in errors[0], captured.err
    out = tmp_path / "out"
    assert _checkpoints(out) == [] and not (out / "model.safetensors").exists()


def test_a_run_that_diverges_midway_keeps_and_names_the_checkpoint_from_before(tiny_model_dir, files, tmp_path,
                                                                               monkeypatch):
    """The third optimizer step wrecks the weights (x1e4): no checkpoint is saved from them, the run stops, and
    the message names checkpoint-2, the last one from before, as the one to resume from."""
    real, calls = torch.optim.AdamW.step, {"n": 0}

    def wrecking_step(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.mul_(1e4)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", wrecking_step)
    with pytest.raises(ValueError, match=r"diverged at step 3.*checkpoint-2") as caught:
        negalign.train(**_settings(tiny_model_dir, files, tmp_path, "npo", max_steps=6, save_strategy="steps",
                                   save_steps=1, save_total_limit=None, learning_rate=1e-3))
    assert "\n" not in str(caught.value)
    out = tmp_path / "out"
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"] and not (out / "model.safetensors").exists()
    good = load_file(out / "checkpoint-2" / "model.safetensors")
    assert _weight_norm(good) < 2 * _weight_norm(_weights(tiny_model_dir))


def test_vanished_gradients_stop_training_and_the_checkpoint_they_came_from_is_not_called_good(
        tiny_model_dir, files, tmp_path, monkeypatch):
    """A wrecked model whose outputs saturated has an exactly-zero gradient (lr 1e6 on SmolLM2: grad_norm 0 from
    step 2, twelve "trained" steps, exit 0). From step 3 on the gradient is 0 here: after max_nonfinite_steps (2)
    such steps in a row the run stops; checkpoint-2 holds the weights whose gradient was 0, so checkpoint-1 is the
    one named good; nothing is saved while the gradient is 0."""
    import negalign.trainer as trainer_module

    real, calls = trainer_module.method_loss, {"n": 0}

    def vanishing(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = real(*args, **kwargs)
        return (loss * 0 if calls["n"] >= 3 else loss), metrics

    monkeypatch.setattr(trainer_module, "method_loss", vanishing)
    with pytest.raises(ValueError, match=r"gradient.*0.*checkpoint-2.*not good.*checkpoint-1") as caught:
        negalign.train(**_settings(tiny_model_dir, files, tmp_path, "npo", max_steps=8, max_nonfinite_steps=2,
                                   save_strategy="steps", save_steps=1, save_total_limit=None))
    assert "\n" not in str(caught.value)
    assert _checkpoints(tmp_path / "out") == ["checkpoint-1", "checkpoint-2"]


def test_kto_scores_mismatched_completions_without_a_graph_and_trains_the_same(tiny_model_dir, files, tmp_path,
                                                                             monkeypatch):
    """KTO's mismatched completions only give z0, which is detached: negalign scores them in a second,
    no-grad forward (no activations kept, no backward). Training must end where packing them with the
    graph-carrying slots ends."""
    import dataclasses

    import negalign.logprobs as logprobs

    grad_modes, real = [], logprobs.token_logps

    def recording(model, batch, *args, **kwargs):
        if model.training:  # the training step's forwards (logprobs.slot_logps), not the reference pass (eval mode)
            grad_modes.append(torch.is_grad_enabled())
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(logprobs, "token_logps", recording)
    # plain SGD: an update proportional to the gradient, so the two paths' rounding differences stay that small
    # (AdamW's g / sqrt(v) turns a 1e-9 gradient into a full learning-rate step whose sign is rounding noise)
    settings = dict(max_steps=3, learning_rate=1.0, per_device_train_batch_size=4, optim="sgd")
    negalign.train(**_settings(tiny_model_dir, files, tmp_path / "detached", "kto", **settings))
    assert grad_modes == [True, False] * 3  # per step: the graph-carrying slots, then the mismatched ones
    monkeypatch.setitem(METHODS, "kto", dataclasses.replace(METHODS["kto"], detached=()))
    negalign.train(**_settings(tiny_model_dir, files, tmp_path / "together", "kto", **settings))
    detached, together = _weights(tmp_path / "detached" / "out"), _weights(tmp_path / "together" / "out")
    assert any((detached[k] - load_file(os.path.join(tiny_model_dir, "model.safetensors"))[k]).abs().max() > 1e-4
               for k in detached)  # it trained
    for key in detached:
        assert torch.allclose(detached[key], together[key], atol=1e-5), key
