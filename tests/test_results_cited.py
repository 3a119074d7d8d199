"""The committed results are the ones the docs cite, under a size budget (docs/results.md, "Size budget").

results/ is cited file by file: every tracked file under it appears, by its path, in some tracked Markdown file.
The study (study/<question>/) is cited at the granularity its docs use: each run record `runs/<run>/` is listed
in its question's README (the record is a folder of a few JSON files read together), and every other data file
of a question (summaries, plots, reports) appears by path, relative to the question or to the repository, in
some tracked Markdown file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = (".py", ".sh")
# the size budget: docs/results.md states it and says what is kept
BUDGET = {"results": (150, 1_000_000), "study": (350, 3_500_000)}

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="needs git and a git checkout")


def tracked(*paths: str) -> list[str]:
    done = subprocess.run(["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if (ROOT / line).exists()]


def markdown() -> str:
    return "\n".join((ROOT / name).read_text(encoding="utf-8") for name in tracked("*.md"))


def test_every_file_under_results_is_cited_by_its_path():
    text = markdown()
    files = tracked("results")
    assert files, "nothing tracked under results/"
    assert [name for name in files if name not in text] == []


def test_every_study_run_record_is_listed_in_its_questions_readme():
    missing = []
    for name in tracked("study"):
        parts = name.split("/")
        if len(parts) > 3 and parts[2] == "runs":
            readme = ROOT / "study" / parts[1] / "README.md"
            listed = readme.exists() and f"runs/{parts[3]}/" in readme.read_text(encoding="utf-8")
            if not listed:
                missing.append(f"study/{parts[1]}/runs/{parts[3]}")
    assert sorted(set(missing)) == []


def test_every_other_study_file_is_cited():
    text = markdown()
    missing = []
    for name in tracked("study"):
        parts = name.split("/")
        if name.endswith(SCRIPTS + (".md",)) or (len(parts) > 3 and parts[2] == "runs"):
            continue
        inside = "/".join(parts[2:])  # the path from its question's folder
        if name not in text and inside not in (ROOT / "study" / parts[1] / "README.md").read_text(encoding="utf-8"):
            missing.append(name)
    assert missing == []


@pytest.mark.parametrize("folder", sorted(BUDGET))
def test_the_committed_results_keep_to_the_size_budget(folder):
    files = tracked(folder)
    most_files, most_bytes = BUDGET[folder]
    size = sum((ROOT / name).stat().st_size for name in files)
    assert len(files) < most_files and size < most_bytes, (len(files), size)
