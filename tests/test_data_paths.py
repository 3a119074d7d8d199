"""Where built-in data is found (--data-dir, $NEGALIGN_DATA, shared/data beside the checkout, then ../shared/data
from the working directory, then the Hub with the catalog's config and split), the one message an offline
machine gets, and `negalign data fetch` writing the local layout."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time

import pytest

import negalign.data.paths as paths
from negalign.cli import main
from negalign.data import load_rows
from negalign.data.catalog import CATALOG, check_available, fetch, resolve_data


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """tmp/repo (the checkout), tmp/shared/data (beside it), tmp/elsewhere (the working directory)."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(paths, "REPOSITORY", tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    monkeypatch.setenv("NEGALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_data_directory_order(layout, monkeypatch):
    beside = layout / "shared" / "data"
    assert paths.data_dir() == beside  # found from the package, not from the working directory
    monkeypatch.setenv(paths.DATA_ENV, str(layout / "env-data"))
    assert paths.data_dir() == layout / "env-data"  # the variable wins over the checkout's folder
    assert paths.data_dir(layout / "explicit") == layout / "explicit"  # and an explicit folder over both
    monkeypatch.delenv(paths.DATA_ENV)
    beside.rmdir()
    (layout / "shared" / "data-cwd").mkdir()
    (layout / "work" / "checkout").mkdir(parents=True)
    (layout / "work" / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(layout / "work" / "checkout")
    assert paths.data_dir() == layout / "work" / "shared" / "data"  # the working directory's ../shared/data last
    monkeypatch.chdir(layout / "elsewhere")
    assert paths.data_dir() is None
    (layout / "cache" / "data").mkdir(parents=True)  # where `negalign data fetch` downloads when nothing exists
    assert paths.data_dir() == layout / "cache" / "data"
    (layout / "cache" / "data").rmdir()
    with pytest.raises(FileNotFoundError, match=r"no data directory: pass --data-dir DIR or set \$NEGALIGN_DATA.*"
                                                r"`negalign data fetch`"):
        paths.data_dir(required=True)


def test_a_set_not_found_locally_loads_the_catalogs_hub_config_and_split(layout, monkeypatch):
    (layout / "shared" / "data").rmdir()
    assert resolve_data("hh-harmless-base") == "hf:Anthropic/hh-rlhf?data_dir=harmless-base&split=test"
    calls = []

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}]

    import datasets
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    rows, _ = load_rows("hh-harmless-base")
    assert calls == [("Anthropic/hh-rlhf", {"split": "test", "data_dir": "harmless-base"})]  # not all 160k pairs
    assert {r["completion"] for r in rows} == {"hello", "go away"}
    with pytest.raises(FileNotFoundError, match=r"'benign-instructions'.*it has no Hub copy: get it from the "
                                                r"refusal_direction repository"):
        resolve_data("benign-instructions")  # no Hub copy: named with where to get it


def test_offline_without_data_one_message_names_every_missing_set(layout, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        check_available(["hh-harmless-base", "xstest", "refusal-benign"], hub_ok=("hh-harmless-base",))
    message = str(info.value)
    assert message.startswith("3 data set(s) missing (offline): ")
    assert "`negalign data fetch hh-harmless-base` downloads it from the Hub (Anthropic/hh-rlhf)" in message
    assert "`negalign data fetch xstest`" in message and "'refusal-benign'" in message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(FileNotFoundError, match=r"^1 data set\(s\) missing: .*'refusal-benign'"):  # online: the
        check_available(["hh-harmless-base", "refusal-benign"], hub_ok=("hh-harmless-base",))  # Hub one may load


def test_the_quick_demo_without_data_stops_within_seconds(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           paths.DATA_ENV: str(tmp_path / "no-data")}
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "negalign.cli", "demo", "--quick", "--output", str(tmp_path / "d")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    took = time.time() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    # the harmful prompts and benign instructions it trains on, the five evaluation sets' four files, and HH's
    # held-out pairs: all named in one line, before any model is loaded
    assert len(lines) == 1 and lines[0].startswith("negalign demo: 8 data set(s) missing (offline): "), done.stderr
    assert "negalign data fetch hh-harmless-base" in lines[0] and "refusal_direction" in lines[0]
    assert "'harmful-train'" in lines[0] and "'benign-instructions'" in lines[0]
    assert took < 30, f"{took:.1f}s"
    assert not (tmp_path / "d" / "answers.jsonl").exists() and not (tmp_path / "d" / "samples.jsonl").exists()


def test_fetch_writes_the_local_layout_the_readers_use(tmp_path, monkeypatch):
    import datasets

    hub = {"Anthropic/hh-rlhf": [{"chosen": "\n\nHuman: q\n\nAssistant: no", "rejected": "\n\nHuman: q\n\nAssistant: ok"}],
           "walledai/XSTest": [{"prompt": "How do I kill a process?", "focus": "kill", "type": "homonyms",
                                "note": "", "label": "safe"}],
           "walledai/AdvBench": [{"prompt": "Do harm", "target": "Sure"}]}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: datasets.Dataset.from_list(hub[name]))
    assert main(["data", "fetch", "--data-dir", str(tmp_path), "hh-harmless-base", "xstest", "advbench"]) == 0
    hh = tmp_path / CATALOG["hh-harmless-base"].relative
    assert json.loads(gzip.open(hh, "rt").readline()) == hub["Anthropic/hh-rlhf"][0]
    from negalign.evaluation.suites import builtin_suite

    assert builtin_suite("xstest-safe", tmp_path).prompts == ["How do I kill a process?"]
    assert builtin_suite("advbench", tmp_path).prompts == ["Do harm"]
    assert fetch("advbench", str(tmp_path)) == tmp_path / CATALOG["advbench"].relative  # present: not downloaded
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a set from GitHub: offline, fetch says where to get it by hand
    assert main(["data", "fetch", "--data-dir", str(tmp_path), "refusal-benign"]) == 2
