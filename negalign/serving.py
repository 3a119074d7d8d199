"""Generation on an OpenAI-compatible serving engine (vLLM, SGLang, llama.cpp's server) instead of negalign's own
decoding loop: D2O's anchors (`negalign sample`) and evaluation's answers (`negalign eval`).

negalign still renders every prompt itself (chat template, sampling context, the cut to max_prompt_length) and
sends the rendered text to `POST {server}/completions`, so the server applies no template of its own and answers
after exactly the tokens training scores. Before anything is sampled, `check_served_model` asks the server for a
few greedy answers and walks each one with the local model: the share of the server's tokens that are also the
local model's likeliest next token must reach `server_check_agreement`, or the run stops naming both models
(anchors must come from the reference policy, not from whatever the server happens to serve).

Requests run concurrently (server_concurrency), each retried on 429 / 5xx / dropped connections with backoff
(negalign.httpclient, shared with the LLM judge); a request that fails for good stops the run with one line,
after every answer already received has been written. Where to write them and how to resume is
negalign.sampling's, as for local decoding.

The API key is read from the environment variable named by server_api_key_env when the client is made, and
kept only in the HTTP client's headers: no settings object, meta file or message holds it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields

import httpx

from negalign.httpclient import HttpSession, MalformedResponse, RequestFailed, json_body, post_with_retries, shown_url
from negalign.settings import Bound, number_problems

CHECK_TOKENS = 32  # tokens per greedy answer of the model check: enough to tell two models apart, cheap to walk


def _help(text: str, **argparse_options) -> dict:
    return {"help": text, "argparse": argparse_options}


@dataclass
class ServerOptions:
    """Where text is generated: without `generation_server`, by negalign's own decoding loop (nothing changes);
    with it, by that OpenAI-compatible server. The same fields are flags of `sample`, `eval` and `demo` and keys
    of a training recipe (which `negalign sample --config` reads)."""

    generation_server: str | None = field(default=None, metadata=_help(
        "OpenAI-compatible server that generates instead of negalign's own decoding (vLLM, SGLang, llama.cpp): "
        "its base URL, e.g. http://127.0.0.1:8000/v1 (docs/serving.md)"))
    served_model: str | None = field(default=None, metadata=_help(
        "the model name the server serves (default: the one model its /v1/models lists)"))
    server_api_key_env: str = field(default="NEGALIGN_SERVER_API_KEY", metadata=_help(
        "environment variable holding the server's API key, if it wants one (the key itself is never a setting "
        "and never written anywhere)"))
    server_concurrency: int = field(default=8, metadata=_help("requests in flight at once"))
    server_timeout: float = field(default=600.0, metadata=_help("seconds one request may take"))
    server_retries: int = field(default=4, metadata=_help(
        "tries after the first for a request answered 429 or 5xx, timed out or dropped (backoff 1, 2, 4, 8 s ...)"))
    server_check_prompts: int = field(default=4, metadata=_help(
        "prompts whose greedy answers check that the server serves the local model (0: no check, recorded)"))
    server_check_agreement: float = field(default=0.9, metadata=_help(
        "share of the server's greedy tokens that must also be the local model's likeliest token"))

    def __post_init__(self):
        if problems := server_problems(self):
            raise ValueError("; ".join(problems))

    @property
    def enabled(self) -> bool:
        return bool(self.generation_server)

    def client(self, **kwargs) -> GenerationClient | None:
        return GenerationClient(self, **kwargs) if self.enabled else None

    def shown(self) -> dict:
        """The settings as written into result files: every field (the key's variable name, not the key; the URL
        without any user:password part)."""
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.generation_server:
            shown["generation_server"] = _shown_or_raw(self.generation_server)
        return shown


SERVER_FIELDS = tuple(f.name for f in fields(ServerOptions))


def server_options(settings) -> ServerOptions:
    """The ServerOptions of an object that has the same fields flat (the training config)."""
    return ServerOptions(**{name: getattr(settings, name) for name in SERVER_FIELDS})


def server_problems(settings) -> list[str]:
    """One line per bad server setting (numbers in range, an http(s) URL), read from any object that has the
    fields: ServerOptions itself or the training config."""
    problems = number_problems(settings, {"server_concurrency": Bound(1, 1024), "server_timeout": Bound(0, above=True),
                                          "server_retries": Bound(0, 100), "server_check_prompts": Bound(0, 1024),
                                          "server_check_agreement": Bound(0, 1)})
    url = getattr(settings, "generation_server", None)
    if url:
        try:
            scheme = httpx.URL(url).scheme
        except httpx.InvalidURL:
            scheme = ""
        if scheme not in ("http", "https"):
            problems.append(f"generation_server must be an http:// or https:// address such as "
                            f"http://127.0.0.1:8000/v1, got {_shown_or_raw(url)!r}")
    if not isinstance(getattr(settings, "server_api_key_env", "") or "", str):
        problems.append("server_api_key_env must be the name of an environment variable")
    return problems


def _shown_or_raw(url: str) -> str:
    try:
        return shown_url(url)
    except httpx.InvalidURL:
        return url


def api_base(url: str) -> str:
    """The OpenAI API's base: `http://host:8000`, `.../v1/` and `.../v1/completions` all mean `http://host:8000/v1`."""
    url = url.rstrip("/")
    for tail in ("/completions", "/chat/completions"):
        if url.endswith("/v1" + tail):
            url = url[: -len(tail)]
    return url if url.endswith("/v1") else url + "/v1"


class ServerError(OSError):
    """The generation server is down, answered an error after the retries, or answered something that is not a
    completion: one line (an OSError: the user's condition, printed without a traceback)."""


class ServedModelMismatch(ValueError):
    """The server's greedy answers are not the local model's: it serves another model."""


@dataclass
class Answer:
    text: str  # as the server returned it (not stripped)
    finished: bool  # ended by the end-of-sequence token (finish_reason "stop"), not cut at max_tokens


def answer_seed(seed: int, prompt_key: str, sample_index: int) -> int:
    """The seed of a prompt's request: fixed by the run's seed, the prompt and the first sample it asks for, so a
    rerun asks exactly what the interrupted run asked (31 bits: every engine takes it)."""
    digest = hashlib.sha256(f"{seed}|{prompt_key}|{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def prompt_text(tokenizer, prompt_ids: list[int]) -> str:
    """The rendered prompt as the text sent to the server (special tokens written out, which vLLM, SGLang and
    llama.cpp tokenize back as special tokens). A leading BOS is left for the server to add where the tokenizer
    adds one itself, as every engine does for such a model; sending it too would double it."""
    bos = tokenizer.bos_token_id
    if bos is not None and prompt_ids[:1] == [bos] and _adds_bos(tokenizer):
        prompt_ids = prompt_ids[1:]
    return tokenizer.decode(prompt_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


class GenerationClient(HttpSession):
    """Completions from one OpenAI-compatible server, shared by the worker threads (one httpx connection pool)."""

    def __init__(self, options: ServerOptions, *, backoff_s: float = 1.0):
        self.options, self.backoff_s = options, backoff_s
        self.base = api_base(options.generation_server)
        self.shown = shown_url(self.base)
        key = os.environ.get(options.server_api_key_env) if options.server_api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=options.server_concurrency,
                              max_keepalive_connections=options.server_concurrency)
        timeout = httpx.Timeout(options.server_timeout, connect=min(options.server_timeout, 10.0))
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, headers=headers, limits=limits)
        self.abort = threading.Event()  # set when a request failed for good: the others stop retrying
        self.ignores_n = False  # llama.cpp's server answers one choice whatever `n` asks
        self._model = options.served_model
        self._listed: dict | None = None  # the server's /models entries by name, asked once
        self.checks: dict[str, dict] = {}  # local weights' fingerprint -> the check's record

    def _send(self, path: str, body: dict | None) -> dict:
        try:
            response = post_with_retries(self._http, self.base + path, body, retries=self.options.server_retries,
                                         key_for="--generation-server", backoff_s=self.backoff_s, abort=self.abort)
            return json_body(response, self.shown + path)
        except RequestFailed as error:
            raise ServerError(f"generation server {error}") from error

    def served_model(self) -> str:
        """The name requests carry: --served-model, else the one model the server lists. The list also says
        which engine serves it (`owned_by`: vllm, sglang, llamacpp ...), which decides how plain sampling is asked
        for (sampling_options)."""
        if self._listed is None and self._model is not None:
            try:
                self._listed = self._models()
            except ServerError as error:
                if isinstance(error.__cause__, RequestFailed) and error.__cause__.status is None:
                    raise  # no answer at all: the server is down
                self._listed = {}  # a named model on an endpoint that lists none: the engine stays unknown
        if self._listed is None:
            self._listed = self._models()
        if self._model is None:
            if len(self._listed) != 1:
                raise ServerError(f"generation server {self.shown} serves {len(self._listed)} models "
                                  f"({', '.join(self._listed)}): name the one to use with --served-model")
            self._model = next(iter(self._listed))
        return self._model

    def _models(self) -> dict:
        body = self._send("/models", None)
        listed = body.get("data")
        entries = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else None
        if entries is None or not entries or not all(isinstance(m.get("id"), str) for m in entries):
            raise ServerError(f"generation server {self.shown}/models: reply is not a model list: "
                              f"{str(body)[:200]!r}")
        return {m["id"]: m for m in entries}

    @property
    def engine(self) -> str | None:
        """The served model's `owned_by` in the server's model list (vllm, sglang, llamacpp, ...), None if unsaid."""
        owner = (self._listed or {}).get(self.served_model(), {}).get("owned_by")
        return owner if isinstance(owner, str) else None

    def sampling_options(self) -> dict:
        """What turns the engine's own sampling extras off, so that temperature and top_p alone decide, as in
        negalign's decoding: vLLM and SGLang use no top-k, min-p or repetition penalty unless asked (and reject
        llama.cpp's spelling of "no top-k" in some versions); llama.cpp's servers apply top_k 40, min_p 0.05 and
        repeat_penalty 1.1 unless told otherwise, and so may another engine: it is told."""
        if self.engine in ("vllm", "sglang"):
            return {}
        return {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}

    def complete(self, prompt: str, *, n: int, max_tokens: int, temperature: float, top_p: float, seed: int,
                 stop: list[str]) -> list[Answer]:
        """Up to `n` answers to one rendered prompt, sampled the plain way negalign's decoding samples
        (sampling_options)."""
        body = {"model": self.served_model(), "prompt": prompt, "n": n, "max_tokens": max_tokens,
                "temperature": temperature, "top_p": top_p, "seed": seed, "stop": stop, "stream": False,
                "presence_penalty": 0.0, "frequency_penalty": 0.0, **self.sampling_options()}
        reply = self._send("/completions", body)
        where = self.shown + "/completions"
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ServerError(f"generation server {MalformedResponse(where, 'reply has no choices', str(reply))}")
        answers = []
        for choice in sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)[:n]:
            text = choice.get("text") if isinstance(choice, dict) else None
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if not isinstance(text, str) or reason not in ("stop", "length"):
                raise ServerError(f"generation server {where}: reply's choice is not a finished completion (text "
                                  f"{type(text).__name__}, finish_reason {reason!r}): {str(choice)[:200]!r}")
            answers.append(Answer(text, reason == "stop"))
        return answers

    def answers(self, prompt: str, key: str, missing: list[int], settings, stop: list[str]) -> list[Answer]:
        """One answer per sample index in `missing`: one request with n = len(missing), or, from a server that
        ignores n, one request per answer, each with its own seed (the first one's the same either way)."""
        ask = dict(max_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p,
                   stop=stop)
        got: list[Answer] = []
        if not self.ignores_n:
            got = self.complete(prompt, n=len(missing), seed=answer_seed(settings.seed, key, missing[0]), **ask)
            if len(got) < len(missing):
                self.ignores_n = True
        while len(got) < len(missing):
            index = missing[len(got)]
            got += self.complete(prompt, n=1, seed=answer_seed(settings.seed, key, index), **ask)[:1]
        return got


def run_requests(client: GenerationClient, jobs: list, ask, on_answers, should_stop=None):
    """ask(job) -> answers in worker threads (at most server_concurrency at once); on_answers(job, answers) in
    this thread as each returns. A failed request stops the run: the others stop retrying, no new one starts,
    and what the requests in flight bring back is still handed to on_answers before the ServerError is raised.
    `should_stop()` (a signal asked for): returns its value once the requests in flight are in."""
    client.abort.clear()
    queue = iter(jobs)
    failure, stopped = None, None
    with ThreadPoolExecutor(max_workers=client.options.server_concurrency) as pool:
        running = {}

        def top_up():
            while len(running) < client.options.server_concurrency and failure is None and stopped is None:
                job = next(queue, None)
                if job is None:
                    return
                running[pool.submit(ask, job)] = job

        try:
            top_up()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    try:
                        answers = future.result()
                    except ServerError as error:
                        if failure is None:
                            failure = error
                            client.abort.set()
                        continue
                    on_answers(job, answers)
                if stopped is None and should_stop is not None:
                    stopped = should_stop()
                top_up()
        except BaseException:
            client.abort.set()  # an interrupt or a bug: the workers stop retrying before the pool is joined
            raise
    if failure is not None:
        raise failure
    return stopped


def check_served_model(client: GenerationClient, model, tokenizer, prompt_ids: list[list[int]], model_id: str,
                       fingerprint: str | None = None) -> dict:
    """Greedy answers of the server to the first server_check_prompts prompts, each walked with the local model
    (teacher-forced on the server's text): at each step, is the server's next piece of text the local model's
    likeliest token? Below server_check_agreement of all steps (the end-of-sequence included), the server
    serves another model: ServedModelMismatch, before anything is sampled. The record goes into the samples
    file's meta. One check per local model and client (an evaluation samples several files)."""
    options = client.options
    if fingerprint is not None and fingerprint in client.checks:
        return client.checks[fingerprint]
    served = client.served_model()
    record = {"server": client.shown, "served_model": served, "prompts": 0, "tokens": 0, "agreeing": 0,
              "agreement": None, "required": options.server_check_agreement, "max_tokens": CHECK_TOKENS}
    chosen = prompt_ids[: options.server_check_prompts]
    if not chosen:
        record["skipped"] = "server_check_prompts is 0: the served model was not checked"
        return record
    stop = [tokenizer.eos_token] if tokenizer.eos_token else []
    agreeing = total = 0
    for ids in chosen:
        answer = client.complete(prompt_text(tokenizer, ids), n=1, max_tokens=CHECK_TOKENS, temperature=0.0,
                                 top_p=1.0, seed=0, stop=stop)[0]
        agree, steps = greedy_agreement(model, tokenizer, ids, answer.text, answer.finished)
        agreeing, total = agreeing + agree, total + steps
    agreement = agreeing / total if total else 0.0
    record.update(prompts=len(chosen), tokens=total, agreeing=agreeing, agreement=round(agreement, 4))
    if agreement < options.server_check_agreement:
        raise ServedModelMismatch(
            f"{client.shown} serves {served!r}, which is not {model_id}: on {len(chosen)} prompts its greedy tokens "
            f"are {model_id}'s likeliest on {agreement:.1%} of {total} tokens, below the {options.server_check_agreement:.0%} "
            f"required (server_check_agreement); serve {model_id} there or point --generation-server at a server "
            "that does")
    record["passed"] = True
    if fingerprint is not None:
        client.checks[fingerprint] = record
    return record


def greedy_agreement(model, tokenizer, prompt_ids: list[int], server_text: str, finished: bool) -> tuple[int, int]:
    """(steps where the local model's likeliest token continues the server's text, steps walked).

    The walk follows the server's text, not the local model: a step whose likeliest token does not continue
    the text takes the text's own next token (as negalign's tokenizer encodes what remains) and goes on, so one
    early difference (a near tie broken the other way by a quantised engine) costs one step, not the rest of
    the answer. Steps are compared as text (the decoded tokens must be a prefix of the server's text), not as
    token ids: the server returns text, and encoding it again can split it otherwise than the model produced it
    ("\\n\\n" is one token or two). A finished answer adds a last step: the end-of-sequence token must be the
    likeliest there."""
    import torch
    from transformers import DynamicCache

    from negalign.decoding import with_cache

    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    cache = DynamicCache()
    was_training = model.training
    model.eval()
    agree = steps = 0
    ids: list[int] = []
    shown = ""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids], device=device), **with_cache(model, cache),
                       use_cache=True).logits[0, -1]
        while True:
            guess = int(logits.argmax())
            if len(shown) >= len(server_text):
                if finished:
                    steps, agree = steps + 1, agree + (guess == eos)
                break
            steps += 1
            text = tokenizer.decode(ids + [guess], skip_special_tokens=True) if guess != eos else shown
            if len(text) > len(shown) and server_text.startswith(text):
                token, agree = guess, agree + 1
            else:
                following = tokenizer.encode(server_text[len(shown):], add_special_tokens=False)
                token = following[0] if following else None
                text = tokenizer.decode(ids + [token], skip_special_tokens=True) if token is not None else shown
                if len(text) <= len(shown) or not server_text.startswith(text):
                    break  # the text cannot be followed token by token (a split character): compared so far
            ids.append(token)
            shown = text
            logits = model(input_ids=torch.tensor([[token]], device=device), **with_cache(model, cache),
                           use_cache=True).logits[0, -1]
    model.train(was_training)
    return agree, steps
