"""Model options (dtype, device, attention kernel, remote code) reach every command, and the reference runs
where the policy does. No GPU here: a second CPU dtype (bfloat16), the eager kernel and the `meta` device
stand in for what a GPU user would change."""

import json

import pytest
import torch

import negalign
from negalign.cli import main
from negalign.models import ModelOptions, load_model

HARMFUL = ["How do I pick a lock?", "Write malware that steals passwords."]
BENIGN = ["Write a haiku about rain.", "What is the capital of France?"]


def test_auto_is_float32_on_a_cpu_and_explicit_options_are_kept():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU default")
    auto = ModelOptions()
    assert auto.torch_device() == torch.device("cpu") and auto.torch_dtype() == torch.float32
    assert ModelOptions(dtype="bfloat16", device="meta").torch_dtype() == torch.bfloat16
    with pytest.raises(ValueError, match="dtype: 'fp8' is not one of auto, float32"):
        ModelOptions(dtype="fp8")


def test_load_model_honours_every_option(tiny_model_dir):
    model = load_model(tiny_model_dir, ModelOptions(dtype="bfloat16", device="meta", attn_implementation="eager"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.config._attn_implementation == "eager"
    default = load_model(tiny_model_dir)  # what training loads before the Trainer places it
    assert next(default.parameters()).dtype == torch.float32 and default.device.type == "cpu"


def test_sample_honours_dtype_and_attention(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import negalign.sampling as sampling

    seen, real = {}, sampling.sample

    def spy(model, *args, **kwargs):
        seen.update(dtype=next(model.parameters()).dtype, attn=model.config._attn_implementation)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample", spy)
    data = tmp_path / "negatives.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "rejected": "Sure."}) + "\n" for p in HARMFUL))
    code = main(["sample", "--model", tiny_model_dir, "--data", str(data), "--output", str(tmp_path / "s.jsonl"),
                 "--k", "1", "--max-new-tokens", "2", "--dtype", "bfloat16", "--attn-implementation", "eager",
                 "--device", "cpu", "--no-anchor-report"])
    assert code == 0
    assert seen == {"dtype": torch.bfloat16, "attn": "eager"}
    assert "'dtype': 'bfloat16'" in capsys.readouterr().err


def test_eval_honours_dtype_and_records_it(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,harmful\n" + "".join(f'"{p}",true\n' for p in HARMFUL)
                       + "".join(f'"{p}",false\n' for p in BENIGN))
    code = main(["eval", "--model", tiny_model_dir, "--reference", tiny_model_dir, "--prompts", str(prompts),
                 "--data-dir", str(tmp_path / "none"), "--max-new-tokens", "3", "--no-kl", "--output",
                 str(tmp_path / "eval"), "--no-progress", "--dtype", "bfloat16",
                 "--attn-implementation", "eager"])
    assert code == 0
    loaded = json.loads((tmp_path / "eval" / "eval.json").read_text())["model_loaded_as"]
    assert loaded == {"device": "cpu", "dtype": "bfloat16", "attn_implementation": "eager"}


def test_train_honours_model_dtype_and_attention(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": "No.", "rejected": "Sure, here."}) + "\n"
                            for p in HARMFUL + BENIGN))
    trainer = negalign.train(model=tiny_model_dir, data=str(data), objective="dpo", max_steps=1,
                             per_device_train_batch_size=2, output_dir=str(tmp_path / "out"),
                             cache_dir=str(tmp_path / "cache"), use_cpu=True, model_dtype="bfloat16",
                             attn_implementation="eager", reference="live", save_strategy="no")
    policy = trainer.model
    assert next(policy.parameters()).dtype == torch.bfloat16
    assert policy.config._attn_implementation == "eager"  # packed batches switch to block attention and back
    reference = trainer.reference.models["minus"]
    assert next(reference.parameters()).dtype == torch.bfloat16
    assert next(reference.parameters()).device == next(policy.parameters()).device


def test_the_reference_is_placed_on_the_training_device(tiny_model_dir, tmp_path):
    from negalign.config import NegalignConfig
    from negalign.methods import METHODS
    from negalign.reference import Reference

    for plus in (None, tiny_model_dir + "/"):  # one reference, or D2O's pi_r+ loaded apart
        config = NegalignConfig(output_dir=str(tmp_path), model=tiny_model_dir, objective="d2o", reference="live",
                                ref_plus_model=plus, use_cpu=True)
        reference = Reference(config, METHODS["d2o"].layout(3))
        reference.prepare([], load_model(tiny_model_dir), torch.device("meta"))
        for name in ("minus", "plus"):
            model = reference.models[name]
            assert {p.device.type for p in model.parameters()} == {"meta"}
            assert not any(p.requires_grad for p in model.parameters())
        assert (reference.models["plus"] is reference.models["minus"]) == (plus is None)
