import json
import subprocess
import sys

import pytest

from negalign import heap
from negalign.heap import allocator_from_maps, allocator_hint, set_mmap_threshold

# A fresh interpreter: in the test process, earlier tests leave free heap memory that glibc would serve
# these blocks from, whatever the threshold.
PROBE = """
import json, torch
from negalign.heap import set_mmap_threshold
def rss_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2 ** 20
was_set = set_mmap_threshold(2.0)
before = rss_mib()
blocks = [torch.ones(2 ** 20) for _ in range(64)]  # 64 x 4 MiB, each above the threshold
during = rss_mib()
del blocks
print(json.dumps({"set": was_set, "held": during - before, "returned": during - rss_mib()}))
"""


def test_zero_leaves_glibc_alone():
    assert set_mmap_threshold(0) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_threshold_is_set_and_large_frees_go_back_to_the_os():
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert out["set"] is True
    assert out["held"] > 200  # the 256 MiB of tensors were resident...
    assert out["returned"] > 200  # ...and freeing them gave the memory back to the OS at once


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_allocator_hint_points_to_an_installed_jemalloc_only(monkeypatch):
    monkeypatch.setattr(heap, "allocator", lambda: "glibc malloc")
    monkeypatch.setattr(heap.ctypes.util, "find_library", lambda name: "libjemalloc.so.2" if name == "jemalloc" else None)
    assert "LD_PRELOAD=libjemalloc.so.2" in allocator_hint()
    monkeypatch.setattr(heap.ctypes.util, "find_library", lambda name: None)
    assert allocator_hint() is None  # nothing installed to point to
    monkeypatch.setattr(heap.ctypes.util, "find_library", lambda name: "libjemalloc.so.2")
    monkeypatch.setattr(heap, "allocator", lambda: "jemalloc (libjemalloc.so.2)")
    assert allocator_hint() is None  # already on it
