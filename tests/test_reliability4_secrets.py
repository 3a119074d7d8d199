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
    from negalign import cli
    from negalign.locks import output_lock

    def hold(argv):  # stands in for `train`'s work: takes the output's lock through negalign's own main
        with output_lock(target, "training"):
            print("held", flush=True)
            time.sleep(60)

    target, argv = sys.argv[1], sys.argv[2:]
    sys.argv = ["negalign", *argv]  # the command line as negalign's console script sees it
    cli.COMMANDS["train"] = ("__main__:hold", "")
    sys.exit(cli.main(argv))
""")


@pytest.mark.parametrize("argv", [["train", "hub_token=hf_SECRET", "objective=npo"],
                                  ["train", "--hub_token=hf_x", "hub_token=hf_SECRET"]])
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


def test_d8_llm_judge_refuses_an_existing_result_and_overwrite_moves_it_aside(tmp_path, capsys):
    with Server(verdicts) as judge:
        a, b = answer_files(tmp_path)
        result = tmp_path / "answers" / "llm_judge.json"  # the default output: the --a folder
        assert llm_judge(capsys, a, b, base_url=judge.base_url)[0] == 0
        first = result.read_bytes()
        for options in [(), ("--order", "both")]:  # the same settings (finished), or others: refused either way
            code, out, err = llm_judge(capsys, a, b, *options, base_url=judge.base_url)
            assert code == 2 and len(err.strip().splitlines()) == 1 and "--overwrite" in err, err
            assert result.read_bytes() == first
        assert "order: 'random' -> 'both'" in err
        asked = len(judge.requests)
        code, out, err = llm_judge(capsys, a, b, "--order", "both", "--overwrite", base_url=judge.base_url)
        assert code == 0 and len(judge.requests) == asked + 6  # started over: the cached verdicts went aside too
    aside = sorted(p.name for p in result.parent.iterdir() if ".replaced-" in p.name)
    assert [name.split(".replaced-")[0] for name in aside] == ["llm_judge.json", "llm_judge.verdicts.jsonl"]
    assert (result.parent / aside[0]).read_bytes() == first
    assert json.loads(result.read_text())["order"] == "both"


def test_d8_a_result_with_failed_requests_is_continued_by_the_same_command(tmp_path, capsys):
    a, b = answer_files(tmp_path)
    out_dir, result = tmp_path / "out", tmp_path / "out" / "llm_judge.json"
    with Server(lambda request: (401, {}, "no") if "question 1?" in request["body"] else verdicts(request)) as judge:
        assert llm_judge(capsys, a, b, "--output", str(out_dir), base_url=judge.base_url)[0] == 0
    assert json.loads(result.read_text())["n_failed"] == 1
    with Server(verdicts) as judge:
        code, out, err = llm_judge(capsys, a, b, "--output", str(out_dir), base_url=judge.base_url)
        assert code == 0 and len(judge.requests) == 1  # only the failed request is asked again
        assert json.loads(result.read_text())["n_failed"] == 0
        code, out, err = llm_judge(capsys, a, b, "--output", str(out_dir), base_url=judge.base_url)
        assert code == 2 and "holds the finished llm-judge result of these settings" in err  # now finished


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_d18_llm_judge_max_items_must_be_at_least_one(tmp_path, capsys, value):
    with Server(verdicts) as judge:
        a, b = answer_files(tmp_path)
        code, out, err = llm_judge(capsys, a, b, "--max-items", value, base_url=judge.base_url)
        assert judge.requests == []
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("negalign llm-judge: argument --max-items: must be ") and repr(value)[1:-1] in err


@pytest.mark.parametrize("bad_line, expected", [
    ('{"completion": "no prompt"}', "a.jsonl line 2: field 'prompt' is missing"),
    ('{"prompt": "q", "completion": ', "a.jsonl line 2: is not valid JSON"),
    ('{"prompt": 5, "completion": "x"}', "a.jsonl line 2: field 'prompt' must be a string or a list of chat messages"),
    ('{"prompt": "q"}', "a.jsonl line 2: field 'completion' is missing"),
])
def test_d28_llm_judge_bad_answer_rows_are_named_in_one_line(tmp_path, capsys, bad_line, expected):
    with Server(verdicts) as judge:
        a, b = answer_files(tmp_path)
        rows = a.read_text().splitlines()
        a.write_text("\n".join([rows[0], bad_line, *rows[1:]]) + "\n")
        code, out, err = llm_judge(capsys, a, b, base_url=judge.base_url)
        assert judge.requests == []
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert expected in err and "Traceback" not in err


def test_d32_llm_judge_whose_every_request_failed_exits_2(tmp_path, capsys):
    with Server(lambda request: (401, {}, "invalid key")) as judge:
        a, b = answer_files(tmp_path)
        code, out, err = llm_judge(capsys, a, b, "--output", str(tmp_path / "out"), base_url=judge.base_url)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "all 3 requests failed" in err and "HTTP 401: invalid key" in err
    assert not (tmp_path / "out" / "llm_judge.json").exists()


def test_d32_llm_judge_partial_failures_are_counted(tmp_path, capsys):
    with Server(lambda request: (401, {}, "no") if "question 1?" in request["body"] else verdicts(request)) as judge:
        a, b = answer_files(tmp_path)
        code, out, err = llm_judge(capsys, a, b, "--output", str(tmp_path / "out"), base_url=judge.base_url)
    assert code == 0 and "over 2/3 items" in out and "failed requests 1" in out
    assert "1 of 3 requests failed (first error: " in err and "rerun the same command" in err
