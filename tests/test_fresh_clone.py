"""README command 1 on a fresh clone, without training: where the demo writes, what it makes of the committed
results, and whether every flag its messages advise exists. (tests/test_readme_commands.py runs the command
itself, --quick, on a real clone; this file checks in seconds what made the full one stop after 13 minutes.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


needs_git = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                               reason="needs git and a git checkout")


def _committed_copy(folder: str, into: Path) -> Path:
    """The tracked files of `folder`, as a fresh clone has them (no weights, no data rows), under `into`."""
    files = _git("ls-files", "--", folder).stdout.split()
    assert files, f"nothing committed under {folder}"
    for name in files:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return into / folder


@needs_git
@pytest.mark.parametrize("preset", ["full", "quick"])
def test_the_demo_writes_where_the_repository_tracks_nothing(preset):
    from negalign.demo import DemoSettings

    output = DemoSettings(preset=preset).output
    assert _git("ls-files", "--", output).stdout == "", f"{output} holds committed files a run would rewrite"
    for name in ("report.md", "runs/d2o/eval/eval.json", "samples.jsonl.meta.json"):
        assert _git("check-ignore", "-q", f"{output}/{name}").returncode == 0, f"{output}/{name} is not ignored"


@needs_git
def test_the_committed_demo_is_the_reference_todays_demo_reproduces(tmp_path, monkeypatch):
    # results/demo is a committed copy of what README command 1 makes in runs/demo. Put back where the command
    # writes, as a fresh clone has it (no weights, no data rows), today's demo recognises the folder as a demo of
    # its own settings (a key added since, at its default, is no change), and the run it holds as trained with
    # the settings it would train with today (data and anchors by path: their contents are not committed)
    from negalign.checkpoints import settings_changed
    from negalign.config import load_config
    from negalign.demo import DemoSettings, training_recipe
    from negalign.demo.data import demo_files
    from negalign.demo.folder import folder_verdict

    settings = DemoSettings()
    out = tmp_path / settings.output
    out.parent.mkdir(parents=True)
    _committed_copy("results/demo", tmp_path).rename(out)
    monkeypatch.chdir(tmp_path)
    out = Path(settings.output)
    assert folder_verdict(settings)(out) is None
    record = json.loads((out / "demo_config.json").read_text())
    assert record["methods"] == ["d2o"]
    for method in record["methods"]:
        run_dir = out / "runs" / method
        config = load_config(None, {**training_recipe(settings, method, demo_files(settings, out)),
                                    "output_dir": str(run_dir)})
        assert settings_changed(config, str(run_dir)) == [], method


def test_a_demo_of_other_data_settings_or_a_users_folder_is_refused_and_the_advised_flag_exists(tmp_path):
    from negalign.commandline import parse_command
    from negalign.demo import DemoSettings
    from negalign.demo.folder import folder_verdict
    from negalign.outputs import OutputRefused, claim

    users = tmp_path / "notes"
    users.mkdir()
    (users / "report.md").write_text("my notes\n")
    (users / "demo_config.json").write_text('{"mine": 1}\n')
    earlier = tmp_path / "demo"
    earlier.mkdir()
    recorded = DemoSettings(preset="quick", output=str(earlier))
    from dataclasses import asdict

    (earlier / "demo_config.json").write_text(json.dumps(asdict(recorded)))
    (earlier / "samples.jsonl").write_text("{}\n")
    messages = []
    for folder, settings in ((users, DemoSettings(preset="quick", output=str(users))),
                             (earlier, DemoSettings(preset="quick", output=str(earlier), k=1))):
        with pytest.raises(OutputRefused) as refused:
            claim(folder, folder=True, overwrite=False, verdict=folder_verdict(settings), option="--output")
        messages.append(str(refused.value))
    assert "did not write" in messages[0] and "report.md" in messages[0]
    assert "k: 2 -> 1" in messages[1]
    assert (users / "report.md").read_text() == "my notes\n" and (earlier / "samples.jsonl").exists()
    advised = {flag for message in messages for flag in re.findall(r"--[a-z][a-z-]+", message)}
    assert advised == {"--overwrite", "--output"}
    parsed = parse_command(DemoSettings, ["--quick", "--overwrite", "--output", str(earlier)], prog="negalign demo")
    assert parsed.overwrite
    # --overwrite moves the whole earlier demo aside, its runs with the data they were trained on
    moved = claim(earlier, folder=True, overwrite=True, verdict=folder_verdict(parsed), option="--output")
    assert not earlier.exists() and (moved / "samples.jsonl").exists() and (moved / "demo_config.json").exists()


def test_the_demo_record_of_the_same_settings_continues_and_a_new_key_at_its_default_is_no_change(tmp_path):
    from dataclasses import asdict

    from negalign.demo import DemoSettings
    from negalign.demo.folder import changed_settings

    settings = DemoSettings(preset="quick", output=str(tmp_path))
    record = asdict(settings)
    assert changed_settings(record, settings) == []
    older = {k: v for k, v in record.items() if k not in ("harmful_negatives", "config", "training")}
    older["model_options"] = {k: v for k, v in record["model_options"].items() if k != "chat_template"}
    assert changed_settings(older, settings) == []
    # the same missing key is a change when today's value is not its default
    assert changed_settings(older, DemoSettings(preset="quick", output=str(tmp_path), benign_refusals=True,
                                                harmful_negatives=False)) == ["harmful_negatives: True -> False"]
    # what only adds to the folder is not a data setting
    assert changed_settings(record, DemoSettings(preset="quick", output="elsewhere", methods=["d2o", "kto"],
                                                 eval_prompts=3)) == []


def test_the_readme_quotes_no_held_out_figure_that_data_holds():
    # FINDINGS §6: the "held-out harm sets kept outside this repository" were in ../shared/data (17 of their
    # prompts trained on); the README quotes the fresh sets' figures instead
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "kept outside this repository" not in text and "0.89 -> 0.53" not in text
    assert "0.73" in text and "0.52" in text


def test_d4_d6_a_second_demo_on_one_folder_and_a_users_folder_are_refused_before_any_work(tmp_path):
    # D4: two demos at once appended every anchor twice; D6: a user's report.md and demo_config.json were
    # replaced. Both stop at run_demo's claim, before a model loads, and leave the folder as it was.
    from negalign.data.paths import data_dir
    from negalign.demo import DemoSettings, run_demo
    from negalign.locks import OutputLocked, output_lock
    from negalign.outputs import OutputRefused

    if data_dir() is None:
        pytest.skip("needs the offline data directory")
    out = tmp_path / "demo"
    with output_lock(out, "another demo"):
        with pytest.raises(OutputLocked, match="being written by"):
            run_demo(DemoSettings(preset="quick", output=str(out)))
    assert not out.exists()
    out.mkdir()
    (out / "report.md").write_text("mine\n")
    (out / "demo_config.json").write_text("{}\n")
    with pytest.raises(OutputRefused, match="--overwrite"):
        run_demo(DemoSettings(preset="quick", output=str(out)))
    assert sorted(p.name for p in out.iterdir()) == ["demo_config.json", "report.md"]
    assert (out / "report.md").read_text() == "mine\n" and (out / "demo_config.json").read_text() == "{}\n"
