"""README command 1, as written, from a clean clone: CI runs command 2 (this test suite), and this test runs the
demo part of command 1 in its quick form (`--quick`, which the README offers) on a fresh `git clone` of the
committed tree, with the clone's own code. The committed results must never block it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from negalign.data.paths import data_dir

ROOT = Path(__file__).resolve().parents[1]


def readme_command(start: str) -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    (line,) = [line for line in lines if line.startswith(start)]
    return shlex.split(line)


def test_the_readme_commands_are_the_ones_ci_runs():
    assert readme_command("bash scripts/setup.sh && .venv/bin/python -m pytest") == \
        ["bash", "scripts/setup.sh", "&&", ".venv/bin/python", "-m", "pytest", "-q"]
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    demo = readme_command("bash scripts/setup.sh && .venv/bin/negalign demo")
    assert demo[:5] == ["bash", "scripts/setup.sh", "&&", ".venv/bin/negalign", "demo"]


@pytest.mark.slow
def test_readme_command_1_runs_to_the_end_from_a_clean_clone(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    folder = data_dir()
    if folder is None:
        pytest.skip("needs the offline data directory")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    demo = readme_command("bash scripts/setup.sh && .venv/bin/negalign demo")[4:]  # what follows .venv/bin/negalign
    env = {**os.environ, "PYTHONPATH": str(clone), "NEGALIGN_DATA": str(folder), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "negalign", *demo, "--quick"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    report = clone / "runs" / "demo-quick" / "report.md"
    assert report.exists(), done.stderr[-2000:]
    methods = demo[demo.index("--methods") + 1].split(",") if "--methods" in demo else ["d2o"]
    text = report.read_text()
    assert all(f"| {method} |" in text for method in methods), text[:2000]
    out = clone / "runs" / "demo-quick"
    # the run leaves the clone as it found it: nothing committed rewritten, nothing untracked left to commit
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout
    summary = json.loads((out / "report.json").read_text())
    assert [run["label"] for run in summary["runs"]] == ["base", *methods]
    for run in summary["runs"]:
        harmful = run["harmful_compliance"]
        assert 0.0 <= harmful["low"] <= harmful["rate"] <= harmful["high"] <= 1.0
    assert (out / "harm_vs_refusal.png").exists()
    # the same command again reuses every stage (samples, trained model, evaluations)
    first = json.loads((out / "demo_timings.json").read_text())["total"]
    again = subprocess.run([sys.executable, "-m", "negalign", *demo, "--quick"], cwd=clone, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((out / "demo_timings.json").read_text())["total"] < first / 2
