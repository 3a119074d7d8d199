"""Host memory: stop glibc from keeping freed activation memory for the rest of the run, and say which malloc
the process runs on.

glibc serves large allocations with their own mmap and returns them to the OS when freed, but after the
first such free it raises that threshold (up to 32 MiB), so every later activation tensor comes from the
heap, whose freed holes it keeps. Measured on a DPO step (SmolLM2-135M, LoRA, 917 tokens): peak RSS grew
from 3.5 to 4.7 GB over three identical steps while live tensors stayed at about 2.4 GB. A fixed threshold
sends tensors above it to mmap for good: peak RSS stays at 2.7-2.8 GB there, at the price of the kernel
zero-filling fresh pages for every such tensor: +5 % step time on the DPO benchmark (peak RSS 3.48 -> 3.27
GB under Trainer) and +25 % on a D2O step of 1,743 tokens. So it is off by default
(`host_mmap_threshold_mb: 0`); `gradient_checkpointing: true` is the stronger memory saver.

A different malloc helps without that price: preloaded jemalloc (`LD_PRELOAD=libjemalloc.so.2`) lowered
negalign's peak RSS on the D2O benchmark from 2.12 to 1.75 GB, and with checkpointing from 1.63 to 1.25 GB,
with the speed-up over TRL unchanged (docs/benchmarks.md). It has to be chosen when the process starts, so
negalign can only detect it and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # <malloc.h>


def set_mmap_threshold(megabytes: float) -> bool:
    """Fix glibc's mmap threshold at `megabytes` (0: leave glibc's default). Returns whether it was set:
    False off glibc (macOS, musl), where nothing changes."""
    if megabytes <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(megabytes * 2 ** 20)))
    except (OSError, AttributeError):
        return False


ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def allocator_from_maps(maps: str) -> str:
    """Which malloc a process runs on, from the text of its /proc/<pid>/maps: a preloaded jemalloc, tcmalloc
    or mimalloc shows as its shared library (named with its file, e.g. "jemalloc (libjemalloc.so.2)");
    otherwise the C library's own malloc."""
    for line in maps.splitlines():
        fields = line.split()
        name = fields[-1].rsplit("/", 1)[-1] if fields else ""
        for allocator in ALLOCATORS:
            if name.startswith(f"lib{allocator}"):
                return f"{allocator} ({name})"
    return "glibc malloc"


def allocator() -> str:
    """The malloc this process runs on (Linux); "unknown" where /proc is not there."""
    try:
        with open("/proc/self/maps") as handle:
            return allocator_from_maps(handle.read())
    except OSError:
        return "unknown"


def allocator_hint() -> str | None:
    """A line for the log when the process runs on glibc's malloc and jemalloc is installed: how to use it.
    None otherwise (another allocator already, not Linux, or no jemalloc to point to)."""
    if not sys.platform.startswith("linux") or allocator() != "glibc malloc":
        return None
    library = ctypes.util.find_library("jemalloc")
    if not library:
        return None
    return (f"running on glibc's malloc; starting negalign with LD_PRELOAD={library} (jemalloc, installed here) "
            "lowers peak memory (D2O benchmark: 2.12 -> 1.75 GB; docs/benchmarks.md)")
