"""ruff (configured in pyproject.toml) passes on the package, the tests, the benchmarks, the scripts and the study."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (scripts/setup.sh installs it with the test extra)")
    done = subprocess.run([ruff, "check", "negalign", "tests", "benchmarks", "scripts", "study"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:]
