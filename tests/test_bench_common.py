"""The benchmark tooling's own measurements: per-stage peak RSS and which allocator a run used."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_common import RssTimeline, allocator_from_maps, preload_prefix  # noqa: E402

MAPS = """\
55d0c0a00000-55d0c0a2b000 r--p 00000000 08:01 123 /usr/bin/python3.12
7f1a2c000000-7f1a2c02a000 r-xp 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1a2d000000-7f1a2d021000 rw-p 00000000 00:00 0
"""


def test_allocator_is_read_from_the_mapped_libraries():
    assert allocator_from_maps(MAPS) == "glibc malloc"
    jemalloc = MAPS + "7f1a2e000000-7f1a2e0a0000 r-xp 00000000 08:01 789 /opt/jemalloc/lib/libjemalloc.so.2\n"
    assert allocator_from_maps(jemalloc) == "jemalloc (libjemalloc.so.2)"
    tcmalloc = MAPS + "7f1a2e000000-7f1a2e0a0000 r-xp 00000000 08:01 789 /usr/lib/libtcmalloc_minimal.so.4\n"
    assert allocator_from_maps(tcmalloc) == "tcmalloc (libtcmalloc_minimal.so.4)"
    # a folder named after an allocator is not the allocator
    assert allocator_from_maps(MAPS.replace("/usr/lib/x86_64-linux-gnu/", "/srv/jemalloc-build/")) == "glibc malloc"


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
