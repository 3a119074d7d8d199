"""The pairwise LLM judge against a real HTTP server on loopback (a subprocess running http.server).

The server implements `POST /v1/chat/completions`: it checks the API key, reads the judge prompt from the
request, cuts out Response A and Response B, and decides by a rule over their text (the response saying
"good" more often wins; equal counts tie). Queries containing GARBAGE get a reply with no verdict, queries
containing NOTJSON get a 200 whose body is not JSON: the first is a malformed reply, the second a failed
request (no reply at all, never a verdict); neither crashes the run.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from negalign.evaluation.llm_judge import (
    DEFAULT_TEMPLATE,
    ChatClient,
    pairwise_judge,
    parse_verdict,
    question_text,
    render_prompt,
)

SERVER = textwrap.dedent('''
    import json, re, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Judge(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            if self.path != "/v1/chat/completions":
                return self.send_error(404)
            if self.headers.get("Authorization") != "Bearer test-key":
                return self.send_error(401, "bad key")
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = request["messages"][-1]["content"]
            query = re.search(r"Query: (.*?)\\n\\nResponse A:", text, re.S).group(1)
            a = re.search(r"Response A:\\n(.*?)\\n\\nResponse B:", text, re.S).group(1)
            b = re.search(r"Response B:\\n(.*?)\\n\\nFIRST", text, re.S).group(1)
            if "NOTJSON" in query:
                body = b"<html>upstream error</html>"
            else:
                if "GARBAGE" in query:
                    reply = "I would rather talk about the weather."
                else:
                    score_a, score_b = a.count("good"), b.count("good")
                    verdict = "A" if score_a > score_b else "B" if score_b > score_a else "Tie"
                    reply = f"Comparison: A says good {score_a} times, B {score_b} times.\\nMore helpful and harmless: {verdict}"
                body = json.dumps({"id": "x", "object": "chat.completion", "model": request["model"],
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                                "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HTTPServer(("127.0.0.1", 0), Judge)
    print(server.server_address[1], flush=True)
    server.serve_forever()
''')


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    script = tmp_path_factory.mktemp("judge-server") / "server.py"
    script.write_text(SERVER)
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


QUESTIONS = ["What is good?", "Tie me up?", "Which is worse?", "GARBAGE please", "NOTJSON please"]
SYSTEM_1 = ["good good", "good", "bad", "good", "good"]
SYSTEM_2 = ["bad", "good", "good good", "bad", "bad"]  # 1 wins, tie, 1 loses, malformed, failed


@pytest.mark.parametrize("order, requests, malformed", [("random", 5, 1), ("both", 10, 2)])
def test_win_tie_lose_and_malformed(base_url, order, requests, malformed):
    client = ChatClient(base_url, "rule-judge", "test-key", retries=0)
    result = pairwise_judge(QUESTIONS, SYSTEM_1, SYSTEM_2, client, order=order, seed=3, workers=2)
    assert (result["wins"], result["ties"], result["losses"]) == (1, 1, 1)
    assert result["win"] == result["tie"] == result["lose"] == pytest.approx(1 / 3)
    assert result["n_malformed"] == malformed and result["n_failed"] == malformed  # GARBAGE / NOTJSON
    assert result["n_requests"] == requests and result["n_judged"] == 3
    # the verdict is mapped back through the A/B order: the winner is system 1 whichever letter it had
    first = [j for j in result["judgements"] if j["item"] == 0]
    assert all(j["score"] == 1 for j in first)
    assert all(j["verdict"] == j["system_1_is"] for j in first)


def test_order_is_randomised_and_seeded(base_url):
    client = ChatClient(base_url, "rule-judge", "test-key", retries=0)
    n = 40
    result = pairwise_judge(["q"] * n, ["good"] * n, ["bad"] * n, client, seed=0)
    letters = [j["system_1_is"] for j in sorted(result["judgements"], key=lambda j: j["item"])]
    assert 10 < letters.count("A") < 30  # both positions used
    assert result["win"] == 1.0
    again = pairwise_judge(["q"] * n, ["good"] * n, ["bad"] * n, client, seed=0)
    assert [j["system_1_is"] for j in sorted(again["judgements"], key=lambda j: j["item"])] == letters


def test_wrong_key_counts_failures_without_crashing(base_url):
    client = ChatClient(base_url, "rule-judge", "wrong-key", retries=0)
    result = pairwise_judge(["q"], ["good"], ["bad"], client)
    assert result["n_failed"] == 1 and result["n_judged"] == 0 and result["win"] is None
    assert "401" in result["judgements"][0]["error"]


def test_unreachable_server_counts_failures():
    client = ChatClient("http://127.0.0.1:9/v1", "m", None, retries=0, timeout=2)
    result = pairwise_judge(["q"], ["a"], ["b"], client)
    assert result["n_failed"] == 1


def test_parse_verdict_and_template():
    assert parse_verdict("Comparison: B is safer.\nMore helpful and harmless: B") == "B"
    assert parse_verdict('Comparison: ...\nMore helpful and harmless: "A"') == "A"
    assert parse_verdict("Comparison: same.\nMore helpful and harmless: **Tie**") == "tie"
    assert parse_verdict("Long reasoning...\n\nA") == "A"
    assert parse_verdict("Both are fine, I cannot decide.") is None
    assert parse_verdict("") is None and parse_verdict(None) is None
    text = render_prompt("Is {x} ok?", "ans {a}", "ans B", DEFAULT_TEMPLATE)
    assert "Query: Is {x} ok?" in text and "Response A:\nans {a}" in text and '"A", "B" or "Tie"' in text
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "help me"}]
    assert question_text(conversation) == "Human: hi\n\nAssistant: hello\n\nHuman: help me"
    assert question_text([{"role": "user", "content": "just this"}]) == "just this"


def test_cli_llm_judge(base_url, tmp_path, monkeypatch, capsys):
    from negalign.cli import main

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps({"prompt": [{"role": "user", "content": q}], "completion": c})
                           for q, c in zip(QUESTIONS, SYSTEM_1)) + "\n")
    b.write_text("\n".join(json.dumps({"prompt": q, "completion": c}) for q, c in zip(QUESTIONS, SYSTEM_2)) + "\n")
    monkeypatch.setenv("MY_JUDGE_KEY", "test-key")
    code = main(["llm-judge", "--a", str(a), "--b", str(b), "--base-url", base_url, "--judge-model", "rule",
                 "--api-key-env", "MY_JUDGE_KEY", "--output", str(tmp_path / "out"), "--order", "both"])
    assert code == 0
    saved = json.loads((tmp_path / "out" / "llm_judge.json").read_text())
    assert (saved["wins"], saved["ties"], saved["losses"], saved["n_malformed"], saved["n_failed"]) == (1, 1, 1, 2, 2)
    out, err = capsys.readouterr()
    assert "malformed replies 2, failed requests 2" in out
    assert "2 of 10 requests failed (first error: " in err and "reply is not JSON" in err


def test_verdicts_are_cached_so_an_interrupted_run_asks_only_what_is_missing(base_url, tmp_path):
    cache = tmp_path / "verdicts.jsonl"
    asked = []

    class Counting(ChatClient):
        def complete(self, content):
            asked.append(content)
            return super().complete(content)

    good = Counting(base_url, "rule-judge", "test-key", retries=0)
    first = pairwise_judge(QUESTIONS[:2], SYSTEM_1[:2], SYSTEM_2[:2], good, seed=3, cache=cache, progress=False)
    assert len(asked) == 2 and len(cache.read_text().splitlines()) == 2
    with open(cache, "a") as sink:
        sink.write('{"key": "cut short by a ki')  # a kill mid-append leaves a partial last line
    failing = ChatClient(base_url, "rule-judge", "wrong-key", retries=0)  # every new request fails (HTTP 401)
    partial = pairwise_judge(QUESTIONS, SYSTEM_1, SYSTEM_2, failing, seed=3, cache=cache, progress=False)
    assert partial["n_failed"] == len(QUESTIONS) - 2 and partial["n_judged"] == 2  # the cached two still count
    asked.clear()
    whole = pairwise_judge(QUESTIONS, SYSTEM_1, SYSTEM_2, good, seed=3, cache=cache, progress=False)
    assert len(asked) == len(QUESTIONS) - 2  # only the failed ones are asked again
    assert (whole["wins"], whole["ties"], whole["losses"]) == (1, 1, 1)
    assert [j["verdict"] for j in whole["judgements"][:2]] == [j["verdict"] for j in first["judgements"]]
