"""Reliability round 4, secrets, locks and the LLM judge's HTTP client (docs/reliability.md; the defects are
numbered as in the round's report). Each test reproduces the fault for real: a second process holding a lock,
HTTP servers on 127.0.0.1 that redirect or answer nonsense, answer files with bad rows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# ----- D1: the lock file and the refusal carry no secret ---------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from negalign.locks import output_lock
    target, argv = sys.argv[1], sys.argv[2:]
    sys.argv = argv  # the command line of the process that takes the lock, as negalign's console script sees it
    with output_lock(target, "training"):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("argv", [["negalign", "train", "hub_token=hf_SECRET", "objective=npo"],
                                  ["negalign", "--hub_token=hf_x", "train", "hub_token=hf_SECRET"]])
def test_d1_lock_file_holds_no_token(tmp_path, argv):
    from negalign.locks import OutputLocked, lock_path, output_lock

    target = tmp_path / "runs" / "sec1"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), *argv], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        recorded = lock_path(target).read_text()
        assert recorded.strip() == f"pid {process.pid}: negalign train"  # pid and command name, no argument
        with pytest.raises(OutputLocked) as refused:
            with output_lock(target, "training"):
                pass
        message = str(refused.value)
        assert f"pid {process.pid}: negalign train (training)" in message
        assert "hf_" not in recorded and "hf_" not in message and "SECRET" not in message
    finally:
        process.kill()
        process.wait()
