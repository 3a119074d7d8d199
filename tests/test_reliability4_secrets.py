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


# ----- the LLM judge's HTTP client and command: servers on 127.0.0.1 ----------------------------------------

VERDICT_BODY = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content":
                                                                "Comparison: A is better.\nMore helpful and harmless: A"}}]})


class Server:
    """An HTTP server on 127.0.0.1 in a thread. `reply(request)` gets {"method", "path", "headers", "body"} and
    returns (status, headers, body), or None to drop the connection without an answer; every request is kept."""

    def __init__(self, reply):
        self.requests = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                           "body": self.rfile.read(length).decode() if length else ""}
                owner.requests.append(request)
                answer = reply(request)
                if answer is None:  # drop the connection: no status line at all
                    self.close_connection = True
                    return
                status, headers, body = answer
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body.encode())), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def verdicts(request):
    return 200, {"Content-Type": "application/json"}, VERDICT_BODY


def answer_files(tmp_path, n=3):
    folder = tmp_path / "answers"
    folder.mkdir(exist_ok=True)
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    a.write_text("".join(json.dumps({"prompt": f"question {i}?", "completion": "good"}) + "\n" for i in range(n)))
    b.write_text("".join(json.dumps({"prompt": f"question {i}?", "completion": "bad"}) + "\n" for i in range(n)))
    return a, b


def llm_judge(capsys, a, b, *options, base_url=None):
    """`negalign llm-judge` through cli.main: (exit status, stdout, stderr)."""
    from negalign.cli import main

    argv = ["llm-judge", "--a", str(a), "--b", str(b), "--judge-model", "m", "--api-key-env", "JUDGE_KEY",
            "--no-progress", *(["--base-url", base_url] if base_url else []), *options]
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def judge_key(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-SECRET")
    monkeypatch.delenv("NEGALIGN_JUDGE_URL", raising=False)


def test_d2_redirect_to_another_host_gets_no_key_and_counts_no_verdict(tmp_path, capsys):
    with Server(verdicts) as other:
        target = f"http://127.0.0.1:{other.port}/v1/chat/completions"
        with Server(lambda request: (302, {"Location": target}, "")) as judge:
            a, b = answer_files(tmp_path)
            code, out, err = llm_judge(capsys, a, b, "--output", str(tmp_path / "out"), base_url=judge.base_url)
    assert other.requests == []  # neither the key nor the prompts reached the other host
    assert [r["method"] for r in judge.requests] == ["POST"] * 3
    assert all(r["headers"].get("Authorization") == "Bearer sk-SECRET" for r in judge.requests)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "all 3 requests failed" in err and f"redirect to 127.0.0.1:{other.port} not followed" in err
    assert not (tmp_path / "out" / "llm_judge.json").exists()


@pytest.mark.parametrize("body", ["", "{}", "<html>bad gateway</html>", '{"choices": []}',
                                  '{"choices": [{"message": {"role": "assistant"}}]}',
                                  '{"choices": [{"message": {"content": null}}]}'])
def test_d2_empty_or_not_a_chat_completion_is_a_failed_request(tmp_path, body):
    from negalign.evaluation.llm_judge import ChatClient, pairwise_judge

    with Server(lambda request: (200, {"Content-Type": "application/json"}, body)) as judge:
        with ChatClient(judge.base_url, "m", "k", retries=0) as client:
            result = pairwise_judge(["q1", "q2"], ["good", "good"], ["bad", "bad"], client, progress=False,
                                    cache=tmp_path / "verdicts.jsonl")
    assert (result["n_judged"], result["n_failed"], result["n_malformed"]) == (0, 2, 0)
    assert result["win"] is None and all("error" in j for j in result["judgements"])
    assert not (tmp_path / "verdicts.jsonl").exists()  # failures are not cached: a rerun asks again


def test_d2_429_5xx_and_dropped_connections_are_retried(tmp_path):
    from negalign.evaluation.llm_judge import ChatClient

    script = iter([(429, {"Retry-After": "0"}, "slow down"), None, (503, {"Retry-After": "0"}, "busy")])

    def flaky(request):
        return next(script, verdicts(request))

    with Server(flaky) as judge, ChatClient(judge.base_url, "m", "k", retries=3, timeout=5) as client:
        assert client.complete("q").endswith("More helpful and harmless: A")
        assert len(judge.requests) == 4 and {r["method"] for r in judge.requests} == {"POST"}


def test_d2_no_base_url_is_refused_in_one_line(tmp_path, capsys):
    with Server(verdicts) as judge:
        a, b = answer_files(tmp_path)
        code, out, err = llm_judge(capsys, a, b)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("negalign llm-judge: --base-url is required (or set NEGALIGN_JUDGE_URL)"), err
    assert judge.requests == [] and not (tmp_path / "answers" / "llm_judge.json").exists()
