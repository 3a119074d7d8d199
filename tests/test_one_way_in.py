"""One recipe, four commands (issue 32): `negalign train|sample|eval|demo --config RECIPE` all read it through the
one loader (negalign.config.load_config), so a key means the same thing in each, and a wrong key or type stops
every command with the same one line before anything is loaded."""

import pytest

from negalign.cli import main
from negalign.commandline import file_defaults
from negalign.config import load_config
from negalign.evaluation.evaluate import EvalSettings
from negalign.sample_command import SampleCommand

COMMANDS = ["train", "sample", "eval", "demo"]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: my-model\nobjective: d2o\nseed: 7\nk: 3\nlearning_rate: 3.0e-5\nmax_steps: 11\n"
                    "sampling_context: refusal\noutput_dir: runs/r\ndata: d.jsonl\nsamples: s.jsonl\n")
    return path


def test_one_key_means_the_same_in_every_command(recipe, monkeypatch):
    config = load_config(str(recipe))
    assert (config.seed, config.k, config.model) == (7, 3, "my-model")
    sample, evaluation = file_defaults(SampleCommand, str(recipe)), file_defaults(EvalSettings, str(recipe))
    assert (sample["seed"], sample["k"], sample["model"], sample["output"]) == (7, 3, "my-model", "s.jsonl")
    assert (evaluation["seed"], evaluation["reference"], evaluation["model"]) == (7, "my-model", "runs/r")
    import negalign.demo as demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", seen.append)
    assert main(["demo", "--config", str(recipe), "--quick"]) == 0
    (settings,) = seen
    assert (settings.seed, settings.k, settings.model, settings.learning_rate, settings.max_steps) == \
        (7, 3, "my-model", 3.0e-5, 11)
    assert settings.sampling_context == "refusal"
    assert main(["demo", "--config", str(recipe), "--quick", "--seed", "9"]) == 0  # a flag wins over the recipe
    assert seen[-1].seed == 9


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("line, message", [("learnig_rate: 1.0e-5", "unknown option(s): learnig_rate (did you mean "
                                            "learning_rate?)"),
                                           ("max_steps: many", "max_steps must be a number, got 'many'")])
def test_a_wrong_key_or_type_stops_every_command_in_one_line(command, line, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(f"model: smollm2-135m-instruct\n{line}\n")
    assert main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and f"negalign {command}: " in err, err


def test_one_spelling_works_for_every_command(monkeypatch):
    """Underscores (the recipe keys' and `train`'s spelling) are accepted where the flags are dashed."""
    import negalign.demo as demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", seen.append)
    assert main(["demo", "--quick", "--learning_rate", "4e-5", "--harmful_prompts", "5"]) == 0
    assert (seen[0].learning_rate, seen[0].harmful_prompts) == (4e-5, 5)
