"""The benchmark tooling's own measurements: per-stage peak RSS, and the allocator in a recorded command."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_common import RssTimeline, preload_prefix  # noqa: E402


def test_preload_prefix_names_files_without_machine_paths(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/tmp/somewhere/libjemalloc.so.2 /usr/lib/libfoo.so")
    assert preload_prefix() == "LD_PRELOAD=libjemalloc.so.2:libfoo.so "
    monkeypatch.delenv("LD_PRELOAD")
    assert preload_prefix() == ""


def test_rss_timeline_puts_an_allocation_in_its_stage():
    timeline = RssTimeline(interval=0.005)
    time.sleep(0.05)
    timeline.mark("allocate")
    block = b"\x01" * (300 * 2 ** 20)  # 315 MB, every page written
    time.sleep(0.2)
    del block
    timeline.mark("after")
    time.sleep(0.05)
    stages = timeline.stop()
    assert list(stages) == ["start", "allocate", "after"]
    assert stages["allocate"]["peak_rss_gb"] - stages["start"]["peak_rss_gb"] >= 0.28
    assert stages["allocate"]["seconds"] >= 0.2
    # the block went back to the OS (an allocation this large is its own mapping)
    assert stages["after"]["peak_rss_gb"] <= stages["allocate"]["peak_rss_gb"] - 0.25
