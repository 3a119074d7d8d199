"""Generation through an OpenAI-compatible server (negalign.serving), against HTTP servers on 127.0.0.1 in this
process: one that serves a tiny random model's answers computed with transformers' own `generate` (not
negalign's decoding), and scripted ones that fail the ways real servers do."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from loopback_server import JSON, Loopback, completion_body, model_server, save_untied_models

from negalign.serving import GenerationClient, ServerError, ServerOptions, answer_seed

PROMPTS = [f"Question {i}: {'why ' * (i % 3)}is the sky blue?" for i in range(5)]


@pytest.fixture(scope="module")
def models(tmp_path_factory, smollm_tokenizer):
    """Two different tiny models saved as folders (a and b), loaded as negalign loads them."""
    return save_untied_models(tmp_path_factory, smollm_tokenizer)


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "negatives.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "rejected": "a bad answer"}) + "\n" for p in PROMPTS))
    return str(path)


def rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def by_key(records) -> dict:
    return {(r["prompt"][-1]["content"], r["sample_index"]): r for r in records}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from negalign.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sample_argv(data_file, output, model_dir, url, *extra) -> list[str]:
    return ["sample", "--data", data_file, "--output", str(output), "--model", model_dir, "--k", "2",
            "--max-new-tokens", "6", "--temperature", "0.7", "--no-decontaminate", "--no-anchor-report",
            "--generation-server", url, *extra]


# ----- the client: retries, errors, a server that ignores n -------------------------------------------------

def models_body(name: str = "m", owned_by: str = "llamacpp") -> str:
    return json.dumps({"object": "list", "data": [{"id": name, "object": "model", "owned_by": owned_by}]})


def test_429_503_and_a_dropped_connection_are_retried_then_answered():
    script = iter([(429, {"Retry-After": "0"}, "slow down"), None, (503, {}, "busy")])

    def flaky(request):
        if request["path"].endswith("/models"):
            return 200, JSON, models_body()
        return next(script, (200, JSON, completion_body([("Hello there", "stop"), ("Hi", "length")])))

    with Loopback(flaky) as server:
        options = ServerOptions(generation_server=server.base_url, served_model="m", server_retries=3)
        with GenerationClient(options, backoff_s=0.01) as client:
            answers = client.complete("prompt", n=2, max_tokens=4, temperature=0.7, top_p=1.0, seed=3, stop=[])
    assert [(a.text, a.finished) for a in answers] == [("Hello there", True), ("Hi", False)]
    assert [r["path"] for r in server.requests] == ["/v1/models"] + ["/v1/completions"] * 4
    sent = json.loads(server.requests[-1]["body"])
    # the prompt as rendered, and plain sampling: llama.cpp's own top-k, min-p and repetition penalty turned off
    assert (sent["prompt"], sent["n"], sent["seed"], sent["max_tokens"]) == ("prompt", 2, 3, 4)
    assert (sent["top_k"], sent["min_p"], sent["repeat_penalty"]) == (0, 0.0, 1.0)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_vllm_and_sglang_are_sent_only_the_openai_sampling_fields(engine):
    """Their defaults are already plain sampling, and some versions refuse llama.cpp's top_k 0."""
    def reply(request):
        if request["path"].endswith("/models"):
            return 200, JSON, models_body("org/model", engine)
        return 200, JSON, completion_body([("x", "stop")])

    with Loopback(reply) as server, GenerationClient(ServerOptions(generation_server=server.base_url)) as client:
        client.complete("p", n=1, max_tokens=4, temperature=0.5, top_p=0.9, seed=1, stop=["</s>"])
        assert client.engine == engine
    sent = server.completions()[0]
    assert set(sent) == {"model", "prompt", "n", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
                         "presence_penalty", "frequency_penalty"}
    assert (sent["model"], sent["temperature"], sent["top_p"], sent["stop"]) == ("org/model", 0.5, 0.9, ["</s>"])


def test_retries_run_out_in_one_line():
    with Loopback(lambda request: (503, {}, "<html>\n  overloaded\n</html>")) as server:
        options = ServerOptions(generation_server=server.base_url, served_model="m", server_retries=2)
        with GenerationClient(options, backoff_s=0.01) as client, pytest.raises(ServerError) as failed:
            client.complete("p", n=1, max_tokens=4, temperature=0, top_p=1, seed=0, stop=[])
        # the model list answered 503 too: a named model is asked for all the same, its engine unknown
        assert client.engine is None and client.sampling_options() == {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
    assert [r["path"] for r in server.requests] == ["/v1/models"] * 3 + ["/v1/completions"] * 3  # 1 try + 2 retries
    assert str(failed.value) == f"generation server {server.base_url}/completions: HTTP 503: <html> overloaded </html>"


@pytest.mark.parametrize("body, problem", [("not json {", "reply is not JSON"), ('{"choices": []}', "reply has no choices"),
                                           ('{"choices": [{"text": "x", "finish_reason": null}]}', "not a finished completion")])
def test_malformed_replies_are_not_retried(body, problem):
    def reply(request):
        return (200, JSON, models_body()) if request["path"].endswith("/models") else (200, JSON, body)

    with Loopback(reply) as server:
        options = ServerOptions(generation_server=server.base_url, served_model="m", server_retries=3)
        with GenerationClient(options, backoff_s=0.01) as client, pytest.raises(ServerError) as failed:
            client.complete("p", n=1, max_tokens=4, temperature=0, top_p=1, seed=0, stop=[])
    assert len(server.completions()) == 1 and problem in str(failed.value) and "\n" not in str(failed.value)


def test_served_model_is_the_one_the_server_lists_or_must_be_named():
    listing = {"data": [{"id": "one"}]}
    with Loopback(lambda request: (200, JSON, json.dumps(listing))) as server:
        with GenerationClient(ServerOptions(generation_server=f"http://127.0.0.1:{server.port}")) as client:
            assert client.served_model() == "one"  # the base URL without /v1 means the API under /v1
        listing["data"].append({"id": "two"})
        with GenerationClient(ServerOptions(generation_server=server.base_url)) as client, \
                pytest.raises(ServerError, match=r"serves 2 models \(one, two\): name the one to use with --served-model"):
            client.served_model()
    assert [r["path"] for r in server.requests] == ["/v1/models", "/v1/models"]


def test_a_server_that_ignores_n_is_asked_once_per_answer(models):
    path, model = models["a"]
    tokenizer = models["tokenizer"]
    from negalign.settings import SamplingSettings

    with Loopback(model_server(model, tokenizer, one_choice=True)) as server:
        options = ServerOptions(generation_server=server.base_url, served_model="tiny-a")
        settings = SamplingSettings(k=3, max_new_tokens=5, temperature=1.0, top_p=1.0, seed=7)
        with GenerationClient(options) as client:
            answers = client.answers("hello", "key", [0, 1, 2], settings, stop=[])
            assert client.ignores_n
            again = client.answers("hello", "key", [1, 2], settings, stop=[])
    asked = server.completions()
    assert [(b["n"], b["seed"]) for b in asked] == [(3, answer_seed(7, "key", 0)), (1, answer_seed(7, "key", 1)),
                                                    (1, answer_seed(7, "key", 2)), (1, answer_seed(7, "key", 1)),
                                                    (1, answer_seed(7, "key", 2))]
    assert len(answers) == 3 and len({a.text for a in answers}) == 3  # three draws, not one answer three times
    assert [a.text for a in again] == [a.text for a in answers[1:]]  # a rerun asks with the same seeds


# ----- the model check ------------------------------------------------------------------------------------

def test_model_check_passes_for_the_served_model_and_records_it(models, data_file, tmp_path, capsys):
    path, model = models["a"]
    with Loopback(model_server(model, models["tokenizer"])) as server:
        code, out, err = run_cli(capsys, *sample_argv(data_file, tmp_path / "s.jsonl", path, server.base_url))
    assert code == 0, err
    meta = json.loads((tmp_path / "s.jsonl.meta.json").read_text())
    check = meta["server"]["check"]
    assert meta["engine"] == "server" and meta["server"]["url"] == server.base_url
    assert meta["server"]["served_model"] == "tiny-a"
    # the same weights: every one of the server's greedy tokens is the local model's likeliest (4 prompts x 32)
    assert (check["prompts"], check["tokens"], check["agreeing"], check["agreement"]) == (4, 128, 128, 1.0)
    assert check["passed"] is True and check["required"] == 0.9
    assert len(rows(tmp_path / "s.jsonl")) == 10


def test_a_server_serving_another_model_is_refused_before_anything_is_sampled(models, data_file, tmp_path, capsys):
    path_b, _ = models["b"]
    _, model_a = models["a"]
    with Loopback(model_server(model_a, models["tokenizer"])) as server:
        code, out, err = run_cli(capsys, *sample_argv(data_file, tmp_path / "s.jsonl", path_b, server.base_url))
    refusal = err.strip().splitlines()[-1]
    assert code == 2 and refusal.count("negalign sample:") == 1, err
    assert refusal.startswith(f"negalign sample: {server.base_url} serves 'tiny-a', which is not {path_b}:"), refusal
    # the server's tokens walked with model b: none is its likeliest (the walk takes >= 32 steps per prompt)
    assert re.search(r"on 4 prompts its greedy tokens are .*'s likeliest on 0\.0% of 1[2-9]\d tokens, below the 90% "
                     "required", refusal), refusal
    # only the check's greedy requests were made, and nothing was written
    assert all((b["n"], b["temperature"], b["max_tokens"]) == (1, 0.0, 32) for b in server.completions())
    assert len(server.completions()) == 4
    assert not (tmp_path / "s.jsonl").exists() or (tmp_path / "s.jsonl").read_text() == ""
    assert not (tmp_path / "s.jsonl.meta.json").exists()


# ----- the rows: the same as negalign's own decoding ------------------------------------------------------

def test_greedy_rows_through_the_server_are_local_sampling_rows(models, tmp_path):
    from negalign.sampling import SamplingSettings, sample

    path, model = models["a"]
    tokenizer = models["tokenizer"]
    settings = SamplingSettings(k=2, max_new_tokens=7, temperature=0.0, batch_size=2, seed=3)
    sample(model, tokenizer, PROMPTS, tmp_path / "local.jsonl", settings, model_id="tiny-a", progress=False)
    with Loopback(model_server(model, tokenizer)) as server:
        with ServerOptions(generation_server=server.base_url).client() as client:
            report = sample(model, tokenizer, PROMPTS, tmp_path / "served.jsonl", settings, model_id="tiny-a",
                            progress=False, server=client)
    local, served = rows(tmp_path / "local.jsonl"), rows(tmp_path / "served.jsonl")
    assert report.n_rows_written == len(served) == len(local) == 10
    assert [list(r) for r in served] == [list(r) for r in local][: len(served)]  # the same fields in the same order
    assert by_key(served) == by_key(local)  # the same answers, lengths and end flags, row for row
    assert {r["finished"] for r in served} == {False} and {r["n_tokens"] for r in served} == {7}
    assert all(r["completion"] for r in served)


def test_finished_and_cut_answers_keep_local_decodings_end_handling(models, tmp_path):
    """An answer the server ended with the end-of-sequence token counts it, as local decoding's ids hold it;
    one cut at max_tokens is max_tokens long and unfinished."""
    from negalign.sampling import SamplingSettings, sample

    path, model = models["a"]
    tokenizer = models["tokenizer"]
    replies = {PROMPTS[0]: ("  Blue light scatters more.  ", "stop"), PROMPTS[1]: (" Because of", "length")}

    def reply(request):
        if request["path"].endswith("/models"):
            return 200, JSON, models_body("a")
        body = json.loads(request["body"])
        if body["temperature"] == 0 and body["max_tokens"] == 32:  # the model check: the model's own answers
            return model_server(model, tokenizer)(request)
        prompt = next(p for p in replies if p in body["prompt"])
        return 200, JSON, completion_body([replies[prompt]] * body["n"])

    settings = SamplingSettings(k=2, max_new_tokens=9, temperature=0.7)
    with Loopback(reply) as server, ServerOptions(generation_server=server.base_url, served_model="a").client() as client:
        sample(model, tokenizer, PROMPTS[:2], tmp_path / "s.jsonl", settings, model_id="a", progress=False,
               server=client)
    got = by_key(rows(tmp_path / "s.jsonl"))
    stop_tokens = len(tokenizer.encode("  Blue light scatters more.  ", add_special_tokens=False)) + 1
    assert got[(PROMPTS[0], 1)] == {"prompt": [{"role": "user", "content": PROMPTS[0]}],
                                    "completion": "Blue light scatters more.", "origin": "self", "sample_index": 1,
                                    "n_tokens": stop_tokens, "finished": True}
    assert (got[(PROMPTS[1], 0)]["completion"], got[(PROMPTS[1], 0)]["n_tokens"], got[(PROMPTS[1], 0)]["finished"]) \
        == ("Because of", 9, False)


def test_eval_answers_through_the_server_are_the_local_answers(models, tmp_path):
    from negalign.evaluation.generate import generate_answers

    path, model = models["a"]
    tokenizer = models["tokenizer"]
    local, _ = generate_answers(model, tokenizer, PROMPTS, tmp_path / "local.jsonl", model_id="a", max_new_tokens=5,
                                progress=False)
    with Loopback(model_server(model, tokenizer)) as server, \
            ServerOptions(generation_server=server.base_url).client() as client:
        served, report = generate_answers(model, tokenizer, PROMPTS, tmp_path / "served.jsonl", model_id="a",
                                          max_new_tokens=5, progress=False, server=client)
    assert served == local and report.n_rows_written == 5


# ----- failures mid-run, kill -9, resume --------------------------------------------------------------------

def test_a_server_that_dies_mid_run_leaves_its_answers_and_the_rerun_completes_the_file(models, data_file, tmp_path,
                                                                                       capsys):
    path, model = models["a"]
    tokenizer = models["tokenizer"]
    serve = model_server(model, tokenizer)
    output = tmp_path / "s.jsonl"
    with Loopback(serve) as reference_server:  # the same samples, drawn without interruption
        assert run_cli(capsys, *sample_argv(data_file, tmp_path / "whole.jsonl", path, reference_server.base_url))[0] == 0
    answered = {"n": 0}
    dying = None

    def reply(request):
        body = json.loads(request["body"]) if request["body"] else {}
        if body.get("temperature", 0) != 0:  # a sampling request (not the check's): three, then the server dies
            if answered["n"] == 3:
                threading.Thread(target=dying.stop).start()
                return None
            answered["n"] += 1
        return serve(request)

    dying = Loopback(reply)
    code, out, err = run_cli(capsys, *sample_argv(data_file, output, path, dying.base_url, "--server-concurrency",
                                                  "1", "--server-retries", "0"))
    error = err.strip().splitlines()[-1]
    assert code == 2 and error.count("negalign sample:") == 1, err
    assert error.startswith(f"negalign sample: generation server {dying.base_url}/completions: RemoteProtocolError")
    assert error.endswith(f"; 6 of 10 rows are kept in {output}: rerun the same command to continue")
    kept = rows(output)
    assert len(kept) == 6 and len(by_key(kept)) == 6
    with Loopback(serve) as restarted:  # on another port: the file is still this command's to continue
        code, out, err = run_cli(capsys, *sample_argv(data_file, output, path, restarted.base_url))
        assert code == 0, err
        assert len(restarted.completions()) == 4 + 2  # the check, then only the two prompts not in the file
    final = rows(output)
    assert final[:6] == kept and len(final) == 10
    assert by_key(final) == by_key(rows(tmp_path / "whole.jsonl"))  # what an uninterrupted run writes
    assert json.loads((tmp_path / "s.jsonl.meta.json").read_text())["server"]["url"] == restarted.base_url


def test_a_malformed_reply_mid_run_is_one_line_and_keeps_the_answers(models, data_file, tmp_path, capsys):
    path, model = models["a"]
    serve = model_server(model, models["tokenizer"])
    answered = {"n": 0}

    def reply(request):
        body = json.loads(request["body"]) if request["body"] else {}
        if body.get("temperature", 0) != 0:
            if answered["n"] == 2:
                return 200, JSON, "<html>502 from a proxy</html>"
            answered["n"] += 1
        return serve(request)

    with Loopback(reply) as server:
        code, out, err = run_cli(capsys, *sample_argv(data_file, tmp_path / "s.jsonl", path, server.base_url,
                                                      "--server-concurrency", "1"))
    error = err.strip().splitlines()[-1]
    assert code == 2 and error == (f"negalign sample: generation server {server.base_url}/completions: reply is not "
                                   f"JSON: '<html>502 from a proxy</html>'; 4 of 10 rows are kept in "
                                   f"{tmp_path / 's.jsonl'}: rerun the same command to continue")
    assert len(rows(tmp_path / "s.jsonl")) == 4


def test_a_server_that_is_down_is_one_line_before_anything_is_written(models, data_file, tmp_path, capsys):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = run_cli(capsys, *sample_argv(data_file, tmp_path / "s.jsonl", models["a"][0],
                                                  f"http://127.0.0.1:{port}/v1", "--server-retries", "0"))
    error = err.strip().splitlines()[-1]
    assert code == 2 and error.startswith(f"negalign sample: generation server http://127.0.0.1:{port}/v1/models: "
                                          "ConnectError"), err
    assert not (tmp_path / "s.jsonl.meta.json").exists()


KILLABLE = """
import sys
from negalign.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_with_sigkill_the_file_resumes_to_the_whole_set(models, data_file, tmp_path, capsys):
    path, model = models["a"]
    serve = model_server(model, models["tokenizer"])

    def slow(request):
        time.sleep(0.3 if request["body"] and json.loads(request["body"]).get("temperature") else 0)
        return serve(request)

    output = tmp_path / "s.jsonl"
    with Loopback(slow) as server:
        argv = sample_argv(data_file, output, path, server.base_url, "--server-concurrency", "1")
        environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        process = subprocess.Popen([sys.executable, "-c", KILLABLE, *argv], env=environment,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not (output.exists() and len(output.read_text().splitlines()) >= 4):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = rows(output)
        assert 4 <= len(before) < 10
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, err
    final = rows(output)
    assert final[: len(before)] == before and len(final) == 10 and len(by_key(final)) == 10


# ----- the key -----------------------------------------------------------------------------------------------

def test_the_api_key_is_sent_and_written_nowhere(models, data_file, tmp_path, capsys, monkeypatch):
    path, model = models["a"]
    monkeypatch.setenv("MY_SERVER_KEY", "sk-SECRET-4242")
    serve = model_server(model, models["tokenizer"])
    with Loopback(serve) as server:
        code, out, err = run_cli(capsys, *sample_argv(data_file, tmp_path / "out" / "s.jsonl", path, server.base_url,
                                                      "--server-api-key-env", "MY_SERVER_KEY"))
    assert code == 0, err
    assert {r["headers"].get("Authorization") for r in server.requests} == {"Bearer sk-SECRET-4242"}
    written = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert {f.name for f in written} >= {"s.jsonl", "s.jsonl.meta.json"}
    assert all(b"sk-SECRET-4242" not in f.read_bytes() for f in written)
    assert "sk-SECRET-4242" not in out + err
    assert json.loads((tmp_path / "out" / "s.jsonl.meta.json").read_text())["server"]["url"] == server.base_url


def test_settings_are_checked_and_refresh_with_a_server_is_refused():
    from negalign.config import load_config

    with pytest.raises(ValueError, match="generation_server must be an http:// or https:// address"):
        ServerOptions(generation_server="127.0.0.1:8000")
    with pytest.raises(ValueError, match="server_concurrency: must be >= 1, got 0"):
        ServerOptions(generation_server="http://h/v1", server_concurrency=0)
    with pytest.raises(ValueError, match="a generation_server still serving the starting weights cannot"):
        load_config("d2o", {"generation_server": "http://127.0.0.1:8000/v1", "sampling": "refresh",
                            "output_dir": "unused"})
    config = load_config("d2o", {"generation_server": "http://127.0.0.1:8000/v1", "output_dir": "unused"})
    assert config.generation_server == "http://127.0.0.1:8000/v1" and config.server_api_key_env == "NEGALIGN_SERVER_API_KEY"


def test_the_model_card_says_which_server_drew_the_anchors(models, tmp_path):
    from negalign.anchors import anchor_provenance
    from negalign.config import NegalignConfig
    from negalign.provenance import model_card

    path, model = models["a"]
    samples = tmp_path / "anchors.jsonl"
    samples.write_text("")
    check = {"prompts": 4, "tokens": 939, "agreeing": 907, "agreement": 0.9659, "required": 0.9, "passed": True}
    (tmp_path / "anchors.jsonl.meta.json").write_text(json.dumps({
        "model": path, "weights": "x", "sampling_context": None, "engine": "server",
        "server": {"url": "http://127.0.0.1:8080/v1", "served_model": "smollm2.gguf", "check": check}}))
    config = NegalignConfig(model=path, data="d.jsonl", objective="d2o", samples=str(samples), k=2,
                            output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")
    card = model_card(config, anchor_provenance(config, model))
    assert ("Anchors generated by the server at `http://127.0.0.1:8080/v1` serving `smollm2.gguf`; model check: its "
            "greedy tokens were this run's starting model's likeliest on 96.6% of 939 tokens (90% required).") in card
