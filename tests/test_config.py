import pytest

from negalign.cli import main
from negalign.config import NegalignConfig, load_config, parse_overrides


def test_overrides_parse_yaml_scalars_and_both_flag_styles():
    assert parse_overrides(["beta=0.2", "--k", "4", "--use_lora", "--objective=npo", "max-steps=3"]) == {
        "beta": 0.2, "k": 4, "use_lora": True, "objective": "npo", "max_steps": 3}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["beta"])


def test_yaml_recipe_then_command_line_wins(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("objective: npo\nbeta: 0.3\nmax_steps: 7\noutput_dir: %s\n" % tmp_path)
    config = load_config(str(recipe), {"beta": 0.5})
    assert isinstance(config, NegalignConfig)
    assert (config.objective, config.beta, config.max_steps) == ("npo", 0.5, 7)


@pytest.fixture()
def margin_dpo(monkeypatch):
    """DPO with a hyperparameter of its own, registered the way an objective module registers its method."""
    import dataclasses

    from negalign.methods import METHODS, Hyperparameter

    own = (Hyperparameter("margin", 0.25, "subtracted from the reward margin"),
           Hyperparameter("scale", 1.0, "multiplies the margin", strict=True))
    monkeypatch.setitem(METHODS, "margin_dpo", dataclasses.replace(METHODS["dpo"], name="margin_dpo", own=own))
    return "margin_dpo"


def test_a_method_takes_its_own_hyperparameters_by_name(tmp_path, margin_dpo):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"objective: {margin_dpo}\nloss:\n  margin: 0.5\noutput_dir: {tmp_path}\n")
    assert load_config(str(recipe)).loss == {"margin": 0.5, "scale": 1.0}  # recorded with the default it took
    overrides = parse_overrides(["loss.scale=2", "--loss.margin", "0.75"])
    assert load_config(str(recipe), overrides).loss == {"margin": 0.75, "scale": 2}
    assert load_config(None, {"objective": margin_dpo, "output_dir": str(tmp_path)}).loss == {"margin": 0.25,
                                                                                              "scale": 1.0}
    # the config passes them to the loss by name, beside the shared fields
    from negalign.methods import METHODS, Settings

    config = load_config(str(recipe), overrides)
    settings = Settings(config, METHODS[margin_dpo].own_values(config.loss))
    assert (settings.margin, settings.scale, settings.beta) == (0.75, 2, 0.1)


@pytest.mark.parametrize(("loss", "message"), [
    ({"margn": 0.5}, r"loss: margin_dpo has no hyperparameter margn \(its own: margin, scale;"),
    ({"margin": -1}, "loss.margin: must be >= 0, got -1"),
    ({"scale": 0}, "loss.scale: must be > 0, got 0"),
    ({"margin": "wide"}, "loss.margin: must be a finite number, got 'wide'"),
    ({"beta": 0.5}, "has no hyperparameter beta .*shared ones such as beta are top-level options"),
])
def test_a_method_refuses_hyperparameters_it_does_not_declare(tmp_path, margin_dpo, loss, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, {"objective": margin_dpo, "loss": loss, "output_dir": str(tmp_path)})


def test_the_help_of_loss_lists_what_the_methods_declare():
    from negalign.methods import METHODS

    text = NegalignConfig.__dataclass_fields__["loss"].metadata["help"]
    assert all(f"{m.name}: {h.name} (default {h.default:g})" in text for m in METHODS.values() for h in m.own)


def test_a_method_without_hyperparameters_of_its_own_takes_no_loss_mapping(tmp_path):
    assert load_config(None, {"objective": "dpo", "output_dir": str(tmp_path)}).loss is None
    with pytest.raises(ValueError, match=r"loss: dpo has no hyperparameter margin \(its own: none"):
        load_config(None, {"objective": "dpo", "loss.margin": 0.5, "output_dir": str(tmp_path)})


def test_numbers_written_the_short_yaml_way_are_numbers(tmp_path):
    config = load_config(None, {"learning_rate": "1e-5", "max_steps": "3", "output_dir": str(tmp_path)})
    assert config.learning_rate == 1e-5 and config.max_steps == 3
    with pytest.raises(ValueError, match="beta must be a number, got 'high'"):
        load_config(None, {"beta": "high", "output_dir": str(tmp_path)})


def test_no_is_the_string_no_and_only_true_false_are_booleans(tmp_path):
    # YAML 1.1 reads `no` as False, which Hugging Face refuses as a save strategy ("False is not a valid
    # SaveStrategy"); negalign reads booleans the YAML 1.2 way, on the command line and in recipes alike
    assert parse_overrides(["save_strategy=no", "use_lora=true", "bf16=False"]) == {
        "save_strategy": "no", "use_lora": True, "bf16": False}
    assert load_config(None, {**parse_overrides(["save_strategy=no"]), "output_dir": str(tmp_path)}).save_strategy == "no"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("save_strategy: no\nuse_lora: true\noutput_dir: %s\n" % tmp_path)
    config = load_config(str(recipe))
    assert (config.save_strategy, config.use_lora) == ("no", True)
    recipe.write_text("use_lora: yes\noutput_dir: %s\n" % tmp_path)
    with pytest.raises(ValueError, match=r"r.yaml:1: use_lora must be true or false, got 'yes'"):
        load_config(str(recipe))


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match=r"unknown option\(s\): bta \(did you mean beta\?\)"):
        load_config(None, {"bta": 0.1, "output_dir": str(tmp_path)})


@pytest.mark.parametrize("key,value,message", [
    ("beta", 0.0, "beta: must be > 0"), ("alpha", -1.0, "alpha: must be > 0"), ("k", -1, "k: must be >= 0"),
    ("objective", "ppo", "objective: unknown 'ppo'"), ("max_prompt_length", 600, "max_prompt_length"),
    ("learning_rate", -1e-5, "learning_rate: must be >= 0"), ("per_device_train_batch_size", 0,
                                                            "per_device_train_batch_size: must be > 0"),
])
def test_out_of_range_values_are_refused(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, {key: value, "output_dir": str(tmp_path)})


def test_cli_help_lists_every_option(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--objective", "--beta", "--alpha", "--ref_plus_model", "--use_lora", "--learning_rate", "--config"):
        assert option in text


def test_cli_reports_bad_config_without_traceback(capsys, tmp_path):
    assert main(["train", "beta=-1", f"output_dir={tmp_path}"]) == 2
    assert "beta: must be > 0" in capsys.readouterr().err
    assert main(["nonsense"]) == 2


def test_a_run_reproduces_from_its_own_record(tiny_model_dir, tmp_path):
    """`negalign train --config RUN/negalign_config.yaml` is accepted and gives the same weights (it failed on
    `debug: []`, which the Trainer's own post-processing writes as a list)."""
    import json

    import torch
    from safetensors.torch import load_file

    data = tmp_path / "negatives.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "rejected": f"Bad answer {i}"}) + "\n"
                            for i in range(4)))
    first = tmp_path / "first"
    assert main(["train", f"model={tiny_model_dir}", f"data={data}", "objective=npo", "max_steps=2",
                 "per_device_train_batch_size=2", "learning_rate=1e-2", f"output_dir={first}",
                 f"cache_dir={tmp_path / 'cache'}", "use_cpu=true", "max_length=64", "max_prompt_length=32",
                 "save_strategy=no"]) == 0
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "negalign_config.yaml"), f"output_dir={again}"]) == 0
    before, after = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    start = load_file(f"{tiny_model_dir}/model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(before[k], start[k]) for k in start)  # it trained
