import ctypes
import sys

import pytest

from negalign.heap import set_mmap_threshold


def test_zero_leaves_glibc_alone():
    assert set_mmap_threshold(0) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_threshold_is_set_and_large_frees_go_back_to_the_os():
    assert set_mmap_threshold(2.0) is True
    import torch

    def rss_pages():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1])

    before = rss_pages()
    blocks = [torch.ones(2 ** 20) for _ in range(64)]  # 64 x 4 MiB, each above the threshold
    during = rss_pages()
    del blocks
    after = rss_pages()
    page_mib = 4096 / 2 ** 20
    assert (during - before) * page_mib > 200  # the tensors were resident...
    assert (during - after) * page_mib > 200  # ...and freeing them returned the memory at once
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # back to glibc's initial threshold for other tests
