"""The one command-line path (negalign.commandline): a settings dataclass is its flags and its config file."""

from dataclasses import dataclass

import pytest

from negalign.commandline import option, parse_command
from negalign.models import ModelOptions


@dataclass
class Toy:
    RECIPE = {"model": "model", "seed": "seed", "output_dir": "target", "decontaminate": "keep_all"}

    model: str = option(help="the model")
    seed: int = option(0, "seed")
    rate: float = option(0.5, "a rate")
    target: str | None = option(None, "where")
    steps: int = option(3, "steps", flags=("--n",))
    tags: list[str] = option(help="tags", factory=list)
    keep_all: bool = option(False, "keep all")
    progress: bool = option(True, "show progress")
    model_options: ModelOptions = option(help="", factory=ModelOptions)


def parse(argv):
    return parse_command(Toy, argv, prog="negalign toy")


def test_every_field_is_a_flag_in_both_spellings():
    toy = parse(["--model", "m", "--seed", "4", "--rate", "0.25", "--tags", "a", "b",
                 "--keep-all", "--no-progress", "--n", "9", "--dtype", "float32", "--trust_remote_code"])
    assert (toy.model, toy.seed, toy.rate, toy.tags, toy.keep_all, toy.progress, toy.steps) == \
        ("m", 4, 0.25, ["a", "b"], True, False, 9)
    assert toy.model_options == ModelOptions(dtype="float32", trust_remote_code=True)
    assert parse(["--model", "m", "--keep_all"]).keep_all is True


def test_a_missing_required_field_is_one_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        parse([])
    assert stop.value.code == 2 and "--model is required" in capsys.readouterr().err


def test_the_commands_own_config_file_and_flags_over_it(tmp_path):
    path = tmp_path / "own.yaml"
    path.write_text("model: m\nseed: 5\nrate: 1e-5\nsteps: 4.0\n")  # YAML reads 1e-5 as a string
    toy = parse(["--config", str(path)])
    assert (toy.model, toy.seed, toy.rate, toy.steps) == ("m", 5, 1e-5, 4)
    assert parse(["--config", str(path), "--seed", "8"]).seed == 8


@pytest.mark.parametrize("line, message", [("seed: many", "seed must be a number, got 'many'"),
                                           ("steps: 2.5", "steps must be a whole number, got 2.5"),
                                           ("rate: fast", "rate must be a number, got 'fast'")])
def test_a_wrong_type_in_the_file_names_the_file_and_key(tmp_path, line, message):
    path = tmp_path / "own.yaml"
    path.write_text(f"model: m\n{line}\n")
    with pytest.raises(ValueError, match=message) as error:
        parse(["--config", str(path)])
    assert str(path) in str(error.value)


def test_a_training_recipe_gives_the_shared_settings_under_the_commands_names(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: m\nobjective: d2o\nseed: 7\noutput_dir: runs/r\ndata: d.jsonl\ndecontaminate: false\n")
    toy = parse(["--config", str(path)])
    # output_dir -> target, decontaminate -> keep_all; objective and data are training's alone
    assert (toy.model, toy.seed, toy.target, toy.keep_all) == ("m", 7, "runs/r", False)


def test_a_recipe_with_an_unknown_key_stops_in_one_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: m\nlearnig_rate: 1.0e-5\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\): learnig_rate \(did you mean learning_rate\?\)"):
        parse(["--config", str(path)])
