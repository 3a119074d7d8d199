"""Self-samples for D2O: K answers per prompt, batched, written to disk as they are made, resumable.

Speed: prompts are ordered by length and batched; each batch is decoded by negalign.decoding (one prefill
shared by a prompt's K answers, a static KV cache written in place, top-p from the likeliest tokens).

Never losing work: rows are appended to a jsonl file after every batch (flushed and fsynced). A sidecar
`<output>.meta.json` records the model (name and a fingerprint of its weights), generation settings and
seed; a rerun with the same settings skips every (prompt, sample_index) already present, and a file made
with other settings or weights is refused unless `overwrite=True`. A torn last line from a kill is cut off before appending. Batches and their random
seeds depend only on the prompt list and the seed, so a resumed run writes exactly the rows an
uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from negalign.data import DataError, encode_prompt_with_context, load_rows, prompt_key
from negalign.decoding import generate_batch
from negalign.files import atomic_write_text
from negalign.interrupts import Interrupted, signal_name, stop_requested
from negalign.sampling_context import describe
from negalign.settings import SamplingSettings, check_prompts_fit

META_SUFFIX = ".meta.json"
META_REMEDY = "move {output} and it aside, or rerun with --overwrite to draw the samples again"


@dataclass
class SamplingReport:
    output: str
    n_prompts: int
    n_rows_written: int
    n_rows_reused: int
    seconds: float
    generated_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def unique_prompts(source, on_bad_row: str = "error") -> list[list[dict]]:
    """Distinct prompts (chat messages) of a feedback file / data set / list, in first-seen order."""
    if isinstance(source, (str, os.PathLike)):
        from negalign.data.catalog import resolve_data

        path = resolve_data(str(source))
        try:
            messages = [row["prompt"] for row in load_rows(path, on_bad_row=on_bad_row)[0]]
        except DataError as error:  # prompts without answers (e.g. Alpaca instructions, a .txt file)
            from negalign.data.prompts import read_prompt_rows

            try:
                messages = [row["prompt"] for row in read_prompt_rows(path)]
            except (DataError, ValueError):
                raise error from None
    else:
        messages = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in source]
    seen, out = set(), []
    for prompt in messages:
        key = prompt_key(prompt)
        if key not in seen:
            seen.add(key)
            out.append(prompt)
    return out


def prompts_for_sampling(sources: list, output: str | os.PathLike, max_prompts: int | None = None,
                         data_dir=None, on_bad_row: str = "error", removals: list | None = None) -> list[list[dict]]:
    """The distinct prompts of `sources` (in order, duplicates once), without evaluation prompts when
    `data_dir` holds the evaluation suites (the removals are recorded in OUTPUT.decontamination.json, as
    training records its own beside the model), cut to the first `max_prompts`. With a `removals` list the
    removals go into it instead, for a caller that writes the record once the output is its own
    (decontamination.write_record)."""
    import sys

    prompts = unique_prompts([p for source in sources for p in unique_prompts(source, on_bad_row=on_bad_row)])
    if data_dir is not None:  # the prompts training will use: evaluation prompts never get anchors
        from negalign.decontamination import clean_first_prompts

        kept, removed = clean_first_prompts([{"prompt": p} for p in prompts], max_prompts, data_dir)
        prompts = [row["prompt"] for row in kept]
        if removals is None:
            from negalign.decontamination import write_record

            write_record(output, data_dir, removed)
        else:
            removals.extend(removed)
        if removed:
            print(f"negalign sample: {len(removed)} prompts left out as evaluation prompts (e.g. "
                  f"{removed[0]['prompt'][:60]!r} ~ {removed[0]['match'][:60]!r})", file=sys.stderr)
    prompts = prompts[:max_prompts]
    if not prompts:
        raise ValueError(f"{', '.join(map(str, sources))}: no prompts to sample (the file has no usable rows"
                         + (", or max_prompts is 0)" if max_prompts == 0 else ")"))
    return prompts


REDRAW = "move it aside (with its .meta.json), or rerun with --overwrite to draw the samples again"


def _complete_end(handle, block: int = 1 << 16) -> int:
    """Where the last complete line ends (after its newline), looking back from the end in blocks rather than
    reading the file."""
    end = handle.seek(0, os.SEEK_END)
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        newline = handle.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def cut_torn_tail(path: Path) -> None:
    """A kill mid-write leaves a last line without its newline: cut it off."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        end = _complete_end(handle)
        if end < size:
            handle.truncate(end)


def read_existing(output: Path, repair: bool = True) -> dict[tuple[str, int], dict]:
    """Rows already on disk; a torn final line (killed mid-write) is truncated away, or with `repair` False left
    as it is and not read (a check that changes nothing: the file may yet be refused as made otherwise)."""
    from negalign.data.loading import answer_row
    from negalign.data.readers import iter_jsonl

    done = {}
    if not output.exists():
        return done
    with open(output, "rb") as handle:
        torn = _complete_end(handle) < handle.seek(0, os.SEEK_END)
    if torn and repair:
        cut_torn_tail(output)
    records = iter_jsonl(output)
    if torn and not repair:
        records = _all_but_last(records)
    for record in records:
        row = answer_row(record, REDRAW, sample_index=True)
        prompt = row["prompt"]  # `sample` writes chat messages; a prompt given as text is one user message
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        done[(prompt_key(messages), row["sample_index"])] = row
    return done


def check_existing(output: str | os.PathLike) -> None:
    """What an earlier run left (its .meta.json and rows) read before the model loads, so that a corrupt file
    stops the command before any expensive work; whether its settings match is decided once the model is loaded."""
    from negalign.data.readers import read_json_file

    output = Path(output)
    meta_path = Path(str(output) + META_SUFFIX)
    if meta_path.exists():
        read_json_file(meta_path, META_REMEDY.format(output=output))
    read_existing(output, repair=False)


def _all_but_last(items):
    """Every item of an iterator but its last (a torn last line is not read), without reading ahead more than one."""
    previous = next(items, None)
    for item in items:
        yield previous
        previous = item


def check_output_name(output: str | os.PathLike) -> None:
    """Samples are appended line by line as they are made, which a gzip stream cannot resume: a .gz output is
    refused before any work rather than written as plain text under a .gz name."""
    if str(output).lower().endswith(".gz"):
        raise ValueError(f"{output}: samples are written as plain JSON lines (appended as they are made, so a "
                         "rerun continues); name the output without .gz and compress it afterwards if needed")


def template_fingerprint(tokenizer) -> str | None:
    """The chat template the prompts are rendered with, hashed: answers drawn under one template must not be
    extended under another (a `chat_template` override, or another tokenizer)."""
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        return None
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


# meta keys that record how this run went rather than what it makes: not compared on a rerun, rewritten by it
# (a server restarted on another address, or checked again, still continues the file)
RECORD_KEYS = ("server",)


def check_meta(output: Path, meta: dict, overwrite: bool, record: dict | None = None) -> None:
    """Refuse a file made with other settings; write the meta of a new file. `record` (RECORD_KEYS) is written
    with it, and replaces an earlier run's when the settings match."""
    meta_path = Path(str(output) + META_SUFFIX)
    if overwrite:
        for path in (output, meta_path):
            if path.exists():
                path.unlink()
    if meta_path.exists():
        from negalign.data.readers import read_json_file

        recorded = read_json_file(meta_path, META_REMEDY.format(output=output))
        old = {k: v for k, v in recorded.items() if k not in RECORD_KEYS}
        stored = old.get("settings")
        if isinstance(stored, dict) and stored.get("temperature") == 0 and "batch_size" in stored:
            # a greedy file written before greedy keys left batch_size out: greedy answers do not depend on it
            old["settings"] = {k: v for k, v in stored.items() if k != "batch_size"}
        # a file written before the template was recorded: it is taken to be the one in use now
        old.setdefault("chat_template", meta.get("chat_template"))
        kept = {k: v for k, v in recorded.items() if k in RECORD_KEYS}
        if old == meta and (old != {k: v for k, v in recorded.items() if k not in RECORD_KEYS}
                            or (record and record != kept)):
            # an older form of these settings brought to the current one, or this run's record
            atomic_write_text(meta_path, json.dumps({**meta, **kept, **(record or {})}, indent=2))
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ValueError(f"{output} was made with other settings ({', '.join(diff)} differ: "
                             f"{ {k: old.get(k) for k in diff} } vs { {k: meta.get(k) for k in diff} }); "
                             "use another output path or overwrite=True (--overwrite) to regenerate")
    elif output.exists() and output.stat().st_size:
        raise ValueError(f"{output} exists without {meta_path.name}: not a negalign samples file; "
                         "use another output path or --overwrite")
    else:
        atomic_write_text(meta_path, json.dumps({**meta, **(record or {})}, indent=2))


def sample_line(prompt: list[dict], completion: str, sample_index: int, n_tokens: int, finished: bool) -> str:
    """One row of a samples file, the same from negalign's decoding and from a server."""
    return json.dumps({"prompt": prompt, "completion": completion, "origin": "self", "sample_index": sample_index,
                       "n_tokens": n_tokens, "finished": finished}) + "\n"


def sample(model, tokenizer, prompts, output: str | os.PathLike, settings: SamplingSettings | None = None, *,
           model_id: str = "unknown", overwrite: bool = False, progress: bool = True,
           stop_on_signal: bool = False, server=None) -> SamplingReport:
    """Write K samples per prompt to `output` (jsonl), resuming from whatever is already there. With
    `stop_on_signal`, a SIGINT / SIGTERM asked for under negalign.interrupts.finish_then_stop ends it after the
    batch under way is written, with an Interrupted saying how many rows are kept.

    `server` (a negalign.serving.GenerationClient): the answers come from that OpenAI-compatible server, after
    a check that it serves `model` (negalign.serving.check_served_model); the file, its meta, resume and lock
    are the same as with local decoding."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    settings = settings or SamplingSettings()
    check_output_name(output)
    output = Path(output)
    prompts = unique_prompts(prompts)
    from negalign.models import model_fingerprint

    # the weights, not only the name: a model retrained under the same name must not extend old samples
    meta = {"model": model_id, "weights": model_fingerprint(model), "settings": settings.generation_key(),
            "chat_template": template_fingerprint(tokenizer),
            "sampling_context": describe(settings.context),
            "n_prompts": len(prompts),
            "prompts_fingerprint": prompt_key([{"role": "x", "content": prompt_key(p)} for p in prompts])}
    encoded = [encode_prompt_with_context(p, settings.context, tokenizer, settings.max_prompt_length)
               for p in prompts]
    check_prompts_fit(model, [len(ids) for ids in encoded], settings.max_new_tokens,  # before the meta is written
                      lambda i: f"prompt {i + 1} ({prompts[i][-1]['content'][:50]!r})")
    record = None
    keys = [prompt_key(p) for p in prompts]
    if server is not None:
        from negalign.serving import check_served_model

        meta["engine"] = "server"  # rows drawn by negalign's decoding and by a server are not mixed in one file
        earlier = {} if overwrite else read_existing(output, repair=False)
        if any((key, s) not in earlier for key in keys for s in range(settings.k)):  # a finished file needs no server
            check = check_served_model(server, model, tokenizer, encoded, model_id, meta["weights"])
            record = {"server": {"url": server.shown, "served_model": check["served_model"], "check": check}}
    check_meta(output, meta, overwrite, record)
    done = read_existing(output)
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    written, tokens, start = 0, 0, time.time()
    was_training = model.training
    model.eval()
    columns = [TextColumn("sampling"), BarColumn(), TextColumn("{task.completed}/{task.total} prompts"),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    from negalign.progress import quiet

    with Progress(*columns, disable=not progress or quiet()) as bar, open(output, "a", encoding="utf-8") as sink:
        task = bar.add_task("sampling", total=len(prompts), rate="")
        if server is not None:
            written, tokens = _sample_through_server(server, tokenizer, prompts, encoded, keys, done, settings, sink,
                                                     lambda n, w, t: bar.update(task, advance=n, rate=_rate(w, t, start)),
                                                     stop_on_signal, output)
            batches = []  # the server answered every prompt: no local decoding
        for batch_number, batch in enumerate(batches):
            missing = [(i, s) for i in batch for s in range(settings.k) if (keys[i], s) not in done]
            if missing:
                answers = generate_batch(model, tokenizer, [encoded[i] for i in batch], settings,
                                         generator_seed=settings.seed * 1_000_003 + batch_number)
                lines = []
                for position, i in enumerate(batch):
                    for s, ids in enumerate(answers[position]):
                        if (keys[i], s) in done:
                            continue
                        finished = tokenizer.eos_token_id in ids
                        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                        lines.append(sample_line(prompts[i], text, s, len(ids), finished))
                        tokens += len(ids)
                sink.write("".join(lines))
                sink.flush()
                os.fsync(sink.fileno())
                written += len(lines)
            if stop_on_signal and (signum := stop_requested()) is not None:
                raise Interrupted(f"stopped by {signal_name(signum)} after {len(done) + written} of "
                                  f"{len(prompts) * settings.k} rows, all kept in {output}: rerun the same command "
                                  "to continue", signum)
            elapsed = time.time() - start
            bar.update(task, advance=len(batch), rate=f"{written / elapsed:.1f} samples/s, "
                       f"{tokens / elapsed:.0f} tok/s" if written else "")
    model.train(was_training)
    return SamplingReport(str(output), len(prompts), written, len(done), time.time() - start, tokens)


def _rate(written: int, tokens: int, start: float) -> str:
    elapsed = time.time() - start
    return f"{written / elapsed:.1f} samples/s, {tokens / elapsed:.0f} tok/s" if written and elapsed else ""


def _sample_through_server(server, tokenizer, prompts, encoded, keys, done, settings, sink, advance,
                           stop_on_signal: bool, output) -> tuple[int, int]:
    """The missing rows from the server, each prompt's answers appended (flushed, fsynced) as they arrive, in
    whatever order the requests finish: a kill loses only the requests in flight, and the rerun asks for the
    prompts not in the file. Returns (rows written, tokens). A request that fails for good ends the run in one
    line saying how many rows the file holds."""
    from negalign.serving import ServerError, prompt_text, run_requests

    stop = [tokenizer.eos_token] if tokenizer.eos_token else []
    jobs = []
    for i in range(len(prompts)):
        missing = [s for s in range(settings.k) if (keys[i], s) not in done]
        if missing:
            jobs.append((i, missing))
    advance(len(prompts) - len(jobs), 0, 0)
    counts = {"written": 0, "tokens": 0}

    def ask(job):
        i, missing = job
        return server.answers(prompt_text(tokenizer, encoded[i]), keys[i], missing, settings, stop)

    def keep(job, answers):
        i, missing = job
        lines = []
        for s, answer in zip(missing, answers):
            # the answer's length as training encodes its text (the server returns text, not tokens), its end-
            # of-sequence token counted as local decoding counts it; cut at max_tokens, it is max_tokens long
            n_tokens = (len(tokenizer.encode(answer.text, add_special_tokens=False)) + 1 if answer.finished
                        else settings.max_new_tokens)
            lines.append(sample_line(prompts[i], answer.text.strip(), s, min(n_tokens, settings.max_new_tokens),
                                     answer.finished))
            counts["tokens"] += min(n_tokens, settings.max_new_tokens)
        sink.write("".join(lines))
        sink.flush()
        os.fsync(sink.fileno())
        counts["written"] += len(lines)
        advance(1, counts["written"], counts["tokens"])

    total = len(prompts) * settings.k
    try:
        signum = run_requests(server, jobs, ask, keep, stop_requested if stop_on_signal else None)
    except ServerError as error:
        raise ServerError(f"{error}; {len(done) + counts['written']} of {total} rows are kept in {output}: rerun the "
                          "same command to continue") from error
    if signum is not None:
        raise Interrupted(f"stopped by {signal_name(signum)} after {len(done) + counts['written']} of {total} rows, "
                          f"all kept in {output}: rerun the same command to continue", signum)
    return counts["written"], counts["tokens"]
