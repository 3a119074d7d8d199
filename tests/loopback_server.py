"""A loopback OpenAI-compatible server for the fast tests of generation through a server (tests/test_serving.py,
tests/test_demo_serving.py): an HTTP server on 127.0.0.1 in this process, which serves a tiny random model's answers
computed with transformers' own `generate` (not negalign's decoding), or scripted replies that fail the ways real
servers do."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class Loopback:
    """An HTTP server on 127.0.0.1 in a thread. `reply(request)` gets {"method", "path", "headers", "body"} and
    returns (status, headers, body), or None to drop the connection unanswered; every request is kept."""

    def __init__(self, reply):
        self.requests = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                           "body": self.rfile.read(length).decode() if length else ""}
                owner.requests.append(request)
                answer = reply(request)
                if answer is None:  # a dropped connection: closed without a status line
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status, headers, body = answer
                data = body.encode()
                self.send_response(status)
                for name, value in {"Content-Length": str(len(data)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def completions(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests if r["path"].endswith("/completions")]


def completion_body(choices: list[tuple[str, str]]) -> str:
    return json.dumps({"id": "cmpl-1", "object": "text_completion", "model": "m",
                       "choices": [{"index": i, "text": text, "finish_reason": reason}
                                   for i, (text, reason) in enumerate(choices)]})


JSON = {"Content-Type": "application/json"}


def model_server(model, tokenizer, name: str = "tiny-a", one_choice: bool = False):
    """reply() of a server that serves `model`: it tokenizes the prompt text it is sent (special tokens as
    special tokens, as vLLM and llama.cpp do) and answers with transformers' generate, greedy at temperature 0,
    else seeded sampling; `one_choice` answers one choice whatever `n` asks (as llama.cpp's server does)."""
    lock = threading.Lock()
    eos = tokenizer.eos_token_id

    def reply(request):
        if request["path"].endswith("/models"):
            return 200, JSON, json.dumps({"object": "list", "data": [{"id": name, "object": "model"}]})
        body = json.loads(request["body"])
        ids = tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
        choices = []
        with lock:
            for index in range(1 if one_choice else body.get("n", 1)):
                options = dict(max_new_tokens=body["max_tokens"], eos_token_id=eos, pad_token_id=eos)
                if body["temperature"] == 0:
                    options["do_sample"] = False
                else:
                    torch.manual_seed(body["seed"] + index)
                    options.update(do_sample=True, temperature=body["temperature"], top_p=body["top_p"], top_k=0)
                new = model.generate(torch.tensor([ids]), **options)[0, len(ids):].tolist()
                finished = eos in new
                new = new[:new.index(eos)] if finished else new
                choices.append((tokenizer.decode(new, skip_special_tokens=True), "stop" if finished else "length"))
        return 200, JSON, completion_body(choices)

    return reply


def untied_llama(vocab_size: int, seed: int):
    """A tiny random Llama whose output head is not its embedding: a tied one greedily repeats the last prompt
    token ("\\n" after the chat template), the same for every seed, and two such models could not be told apart."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def save_untied_models(tmp_path_factory, tokenizer) -> dict:
    """Two different tiny models saved as folders with `tokenizer` ("a" and "b": (folder, model)), and the
    tokenizer as negalign loads it from folder a ("tokenizer")."""
    from transformers import AutoModelForCausalLM

    from negalign.models import load_tokenizer

    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        folder = tmp_path_factory.mktemp(f"untied-{name}")
        untied_llama(len(tokenizer), seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[name] = (str(folder), AutoModelForCausalLM.from_pretrained(folder).eval())
    out["tokenizer"] = load_tokenizer(out["a"][0])
    return out
