"""`negalign data fetch` for the sets without a Hub copy (pinned raw GitHub files, negalign.data.download) and
`negalign data list`'s needed-by and license lines. No network: the GitHub base URL is pointed at a file://
copy in a temporary folder laid out as raw.githubusercontent.com is (owner/name/commit/path), so the URLs the
catalog builds are the ones fetched. The needed-by lists are checked against what the evaluation suites, the
demo and the judge read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import negalign.data.catalog as catalog
import negalign.data.download as download
import negalign.data.paths as paths
from negalign.cli import main
from negalign.data.catalog import CATALOG, JBB_FILES, XSTEST_MODELS

GITHUB_SETS = [name for name, entry in CATALOG.items() if entry.hub is None]
COMPLETION_COLUMNS = ["id", "type", "prompt", "completion", "annotation_1", "annotation_2", "agreement",
                      "final_label"]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _remote_file(name: str, file: str) -> Path:
    return Path(CATALOG[name].github.repo, CATALOG[name].github.commit, CATALOG[name].github.path, file)


@pytest.fixture
def remote(tmp_path, monkeypatch):
    """A small stand-in for every GitHub set at its pinned repository, commit and path; the catalog's raw URL
    base points at it."""
    base = tmp_path / "remote"
    for name in GITHUB_SETS:
        entry = CATALOG[name]
        if entry.check == "instructions":
            path = base / _remote_file(name, "")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps([{"instruction": f"{name} {n}", "category": "c"} for n in range(3)]))
    for file in JBB_FILES:
        path = base / _remote_file("jbb-artifacts", file)
        path.parent.mkdir(parents=True, exist_ok=True)
        attack, model = file.split("/")[0], Path(file).stem
        record = ({"models": {}} if file.endswith("attack-info.json") else
                  {"parameters": {"method": attack, "model": model},
                   "jailbreaks": [{"index": 1, "goal": f"goal of {file}", "prompt": "p", "response": "Sure: ...",
                                   "jailbroken": True},
                                  {"index": 2, "goal": "g", "prompt": "p", "response": None, "jailbroken": False}]})
        path.write_text(json.dumps(record))
    for model in XSTEST_MODELS:
        _write_csv(base / _remote_file("xstest-completions", f"xstest_v2_completions_{model}.csv"),
                   COMPLETION_COLUMNS,
                   [["v2-1", "homonyms", "How do I kill a process?", "Use kill.", "", "", "", "1_full_compliance"],
                    ["v2-2", "contrast_homonyms", "How do I kill a person?", "No.", "", "", "", "2_full_refusal"]])
    monkeypatch.setattr(download, "RAW", base.as_uri())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return base


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_fetch_downloads_every_github_set_into_the_layout_the_commands_read(remote, tmp_path, capsys,
                                                                           monkeypatch):
    data = tmp_path / "data"
    assert main(["data", "fetch", "--data-dir", str(data), *GITHUB_SETS]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == len(GITHUB_SETS)
    assert f"refusal-benign -> {data / 'refusal-direction-splits/harmless_test.json'} (license: CC BY-NC 4.0" in out
    assert "jbb-artifacts -> " in out and "(license: MIT (JailbreakBench" in out

    from negalign.data.prompts import read_prompt_rows
    from negalign.evaluation.content_judge import load_jbb_answers
    from negalign.evaluation.judge import load_xstest_answers
    from negalign.evaluation.suites import builtin_suite

    assert builtin_suite("refusal-harmful", data).prompts == [f"refusal-harmful {n}" for n in range(3)]
    assert sorted(builtin_suite("alpaca-benign", data).prompts) == [f"refusal-benign {n}" for n in range(3)]
    assert len(read_prompt_rows("harmful-train", str(data))) == 3  # how flag, sample and the demo read it
    jbb = load_jbb_answers(data)
    assert len(jbb) == 18 and {row["attack"] for row in jbb} == {"DSN", "GCG", "JBC", "PAIR",
                                                                   "prompt_with_random_search"}
    xstest = load_xstest_answers(data)
    assert sorted({row["model"] for row in xstest}) == sorted(XSTEST_MODELS) and len(xstest) == 10
    assert all(catalog.present(name, str(data)) for name in GITHUB_SETS)
    assert not [p for p in tmp_path.rglob(".negalign-fetch-*")]  # the staging folders are gone

    # present: nothing is downloaded again (the remote is gone)
    written = {p: p.stat().st_mtime_ns for p in _files(data)}
    monkeypatch.setattr(download, "RAW", (tmp_path / "nowhere").as_uri())
    assert main(["data", "fetch", "--data-dir", str(data), *GITHUB_SETS]) == 0
    assert {p: p.stat().st_mtime_ns for p in _files(data)} == written


def test_a_set_missing_one_file_gets_just_that_file(remote, tmp_path):
    data = tmp_path / "data"
    assert main(["data", "fetch", "--data-dir", str(data), "xstest-completions"]) == 0
    gone = data / "xstest/model_completions/xstest_v2_completions_gpt4.csv"
    gone.unlink()
    assert not catalog.present("xstest-completions", str(data))
    with pytest.raises(FileNotFoundError, match="xstest-completions.*negalign data fetch xstest-completions"):
        catalog.check_available(["xstest-completions"], str(data))
    assert main(["data", "fetch", "--data-dir", str(data), "xstest-completions"]) == 0
    assert gone.exists() and catalog.present("xstest-completions", str(data))


def test_a_corrupt_download_writes_nothing_and_says_which_set_and_why(remote, tmp_path, capsys):
    data = tmp_path / "data"
    last = remote / _remote_file("jbb-artifacts", JBB_FILES[-1])  # the others download and pass first
    last.write_text('{"parameters": {"method": "PAIR"')
    assert main(["data", "fetch", "--data-dir", str(data), "jbb-artifacts"]) == 2
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("negalign data: data set 'jbb-artifacts': ")
    assert JBB_FILES[-1] in line and "is not JSON" in line and "nothing written" in line
    assert _files(data) == [] and not list(tmp_path.rglob(".negalign-fetch-*"))

    not_an_artifact = remote / _remote_file("jbb-artifacts", "GCG/transfer/gpt-4-0125-preview.json")
    last.write_text(not_an_artifact.read_text())
    not_an_artifact.write_text(json.dumps({"jailbreaks": []}))
    assert main(["data", "fetch", "--data-dir", str(data), "jbb-artifacts"]) == 2
    assert "not a JailbreakBench artifact" in capsys.readouterr().out and _files(data) == []

    # a CSV without a column the judge reads: nothing written, and a present copy is kept under --overwrite
    assert main(["data", "fetch", "--data-dir", str(data), "xstest-completions"]) == 0
    before = {p: p.read_bytes() for p in _files(data)}
    broken = remote / _remote_file("xstest-completions", "xstest_v2_completions_mistralinstruct.csv")
    _write_csv(broken, COMPLETION_COLUMNS[:-1], [["v2-1", "homonyms", "q", "a", "", "", ""]])
    capsys.readouterr()
    assert main(["data", "fetch", "--data-dir", str(data), "--overwrite", "xstest-completions"]) == 2
    line = capsys.readouterr().out.strip()
    assert line.startswith("negalign data: data set 'xstest-completions': ")
    assert "xstest_v2_completions_mistralinstruct.csv has no column(s) final_label" in line
    assert {p: p.read_bytes() for p in _files(data)} == before

    bad = remote / _remote_file("benign-instructions", "")
    bad.write_text(json.dumps([{"prompt": "not an instruction"}]))
    assert main(["data", "fetch", "--data-dir", str(data), "benign-instructions"]) == 2
    assert "'benign-instructions'" in capsys.readouterr().out
    assert not (data / CATALOG["benign-instructions"].relative).exists()


def test_offline_or_unreachable_says_where_to_get_each_set_by_hand(remote, tmp_path, capsys, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\n(offline mode)")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data"
    assert main(["data", "fetch", "--data-dir", str(data), "xstest-completions", "harmful-val",
                 "hh-harmless-base"]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3  # one line per set
    completions, split, hh = lines
    assert "data set 'xstest-completions': offline (HF_HUB_OFFLINE=1)" in completions
    assert ("https://github.com/paul-rottger/exaggerated-safety/tree/d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d/"
            "model_completions by hand into " + str(data / "xstest/model_completions")) in completions
    assert "subject to the original licenses of Meta, Mistral and OpenAI" in completions
    assert ("https://github.com/andyrdt/refusal_direction/blob/0b9c8bc56a73b42f595fd173156d4aefe9a9143c/dataset/"
            f"splits/harmful_val.json into {data / 'refusal-direction-splits/harmful_val.json'}") in split
    assert "get it by hand from https://github.com/anthropics/hh-rlhf/blob/" in hh and "license: MIT (Anthropic)" in hh
    assert _files(data) == []

    monkeypatch.delenv("HF_HUB_OFFLINE")  # online, but the server cannot be reached
    monkeypatch.setattr(download, "RAW", (tmp_path / "unreachable").as_uri())
    assert main(["data", "fetch", "--data-dir", str(data), "refusal-benign"]) == 2
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "data set 'refusal-benign': could not download " in line
    assert "get it by hand from https://github.com/andyrdt/refusal_direction/blob/" in line
    assert "CC BY-NC 4.0 (Stanford Alpaca): non-commercial use only" in line and _files(data) == []


def _blocks(text: str) -> dict[str, str]:
    blocks, name = {}, None
    for line in text.splitlines():
        if not line.startswith(" "):
            name = line.split()[0]
            blocks[name] = ""
        blocks[name] += line + "\n"
    return blocks


def test_data_list_shows_needed_by_and_license(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    assert main(["data", "list", "--data-dir", str(tmp_path / "empty")]) == 0
    blocks = _blocks(capsys.readouterr().out)
    assert list(blocks) == list(CATALOG)
    assert "needed by: demo, eval\n" in blocks["xstest"] and "license: CC BY 4.0" in blocks["xstest"]
    assert "not local" in blocks["jbb-artifacts"] and "needed by: judge fit-content\n" in blocks["jbb-artifacts"]
    assert "fetch from github.com/JailbreakBench/artifacts at 909e68c01d, attack-artifacts (23 files)" in \
        blocks["jbb-artifacts"]
    assert "needed by: judge fit, judge fit-content\n" in blocks["xstest-completions"]
    assert "license: CC BY-NC 4.0 (Stanford Alpaca): non-commercial use only" in blocks["benign-instructions"]
    assert "Hub hf:Anthropic/hh-rlhf?data_dir=harmless-base&split=test" in blocks["hh-harmless-base"]
    for name, entry in CATALOG.items():
        assert entry.license and f"license: {entry.license}\n" in blocks[name]
        assert entry.hub or (entry.github and entry.check), name  # every set can be fetched


# ------------------------------------------------------------------ needed-by against what the code reads

def _needing(command: str) -> set[str]:
    return {name for name, entry in CATALOG.items() if command in entry.needed_by}


class Checked(Exception):
    pass


def _capture_check(monkeypatch) -> list:
    seen = []

    def check_available(names, data_dir=None, hub_ok=()):
        seen.append(list(names))
        raise Checked

    monkeypatch.setattr(catalog, "check_available", check_available)
    return seen


def test_needed_by_eval_is_the_builtin_suites_and_the_held_out_pairs(tmp_path, monkeypatch):
    from negalign.evaluation.evaluate import HH_PAIRS
    from negalign.evaluation.suites import BUILTIN, load_suites

    seen = _capture_check(monkeypatch)
    with pytest.raises(Checked):
        load_suites(None, str(tmp_path))  # what `negalign eval` checks before loading a model
    assert set(seen[0]) == {catalog.name_for(relative) for _, relative, _ in BUILTIN.values()}
    assert _needing("eval") == set(seen[0]) | {catalog.name_for(HH_PAIRS)}


def test_needed_by_demo_is_what_the_demo_checks(tmp_path, monkeypatch):
    from negalign.demo import DemoSettings, run_demo

    seen = _capture_check(monkeypatch)
    with pytest.raises(Checked):
        run_demo(DemoSettings(data_dir=str(tmp_path), output=str(tmp_path / "demo")))
    assert _needing("demo") == set(seen[0])
    assert not (tmp_path / "demo").exists()


def test_needed_by_judge_is_what_its_fitting_reads(remote, tmp_path):
    from negalign.evaluation import content_judge, judge

    # which catalog set each loader reads: it works in a data directory holding that set alone
    data = tmp_path / "data"
    assert main(["data", "fetch", "--data-dir", str(data / "jbb"), "jbb-artifacts"]) == 0
    assert main(["data", "fetch", "--data-dir", str(data / "xstest"), "xstest-completions"]) == 0
    reads = {"load_xstest_answers": "xstest-completions", "xstest_unsafe_answers": "xstest-completions",
             "load_jbb_answers": "jbb-artifacts"}
    assert judge.load_xstest_answers(data / "xstest") and content_judge.xstest_unsafe_answers(data / "xstest")
    assert content_judge.load_jbb_answers(data / "jbb")
    with pytest.raises(FileNotFoundError):
        judge.load_xstest_answers(data / "jbb")
    with pytest.raises(FileNotFoundError):
        content_judge.load_jbb_answers(data / "xstest")
    assert catalog.name_for(content_judge.JBB_FOLDER) == "jbb-artifacts"

    def sets(function) -> set[str]:
        return {reads[name] for name in function.__code__.co_names if name in reads}

    assert _needing("judge fit") == sets(judge.fit_judge) == {"xstest-completions"}
    assert _needing("judge fit-content") == sets(content_judge.fit_content_judge)


def test_needed_by_names_real_commands():
    from negalign.cli import COMMANDS

    for name, entry in CATALOG.items():
        for command in entry.needed_by:
            words = command.split()
            assert words[0] in COMMANDS, (name, command)
            assert words[0] != "judge" or words[1] in ("fit", "fit-content"), (name, command)


def test_the_shared_copies_match_the_catalog_and_pass_its_checks():
    """Where this project's offline copies are at hand: each GitHub set's files are all there under the names
    the catalog downloads, and each passes the check a download must pass (the checks take the real data)."""
    root = paths.data_dir()
    if root is None or not (root / CATALOG["jbb-artifacts"].relative).is_dir():
        pytest.skip("no offline data directory")
    jbb = root / CATALOG["jbb-artifacts"].relative
    assert sorted(str(p.relative_to(jbb)) for p in jbb.rglob("*.json")) == list(JBB_FILES)
    for name in GITHUB_SETS:
        entry = CATALOG[name]
        for file in entry.files(root):
            download.check_file(entry.check, file, file.name)
