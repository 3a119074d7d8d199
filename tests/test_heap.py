import json
import subprocess
import sys

import pytest

from negalign.heap import set_mmap_threshold

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
