"""Read a source (local file or Hub data set) into raw records, each tagged with where it came from.

Readers only parse the container format; they know nothing about prompts or labels. A record that can't
be parsed (a line that is not JSON or not UTF-8) is yielded as a `DataError` instead of a dict, so the
loader can either raise it or skip and count it. Problems with the file as a whole (missing, not gzip,
a broken JSON array, a device, too large) raise at once.

Every data file negalign reads goes through here (feedback, samples and eval answers, the answers `flag` and
`judge score` read, and the JSON files beside outputs: `read_json_file`), so every one is bounded the same
way: a line is read in chunks of at most MAX_LINE_BYTES and refused past that without being held whole, a
file parsed whole (a JSON array, a CSV, a sidecar) at most MAX_WHOLE_FILE_BYTES, and only regular files and
FIFOs are opened (a device such as /dev/zero never ends).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from negalign.data.errors import DataError

# One record (a jsonl line) at most: 8 MiB is far past any model's context (the longest answer a test reads
# is 5 MB) yet small enough to parse and tokenize; a 200 MB line would take gigabytes.
MAX_LINE_BYTES = 8 * 2**20
# A file parsed whole (a JSON array, a CSV, a sidecar JSON): beyond this, .jsonl is read line by line.
MAX_WHOLE_FILE_BYTES = 512 * 2**20

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".csv.gz", ".parquet")


@dataclass
class RawRecord:
    where: str  # "data.jsonl line 7", for messages
    source: str  # "data.jsonl:7", stored in each row
    value: dict | DataError


def looks_like_path(source: str) -> bool:
    """True for names that can only mean a local file. Hub ids are "name" or "owner/name", so "/" alone
    does not decide it: a data-file extension, a leading "/", ".", "~", a backslash, or more than one "/" do."""
    lowered = source.lower()
    return (
        any(lowered.endswith(suffix) for suffix in SUPPORTED_SUFFIXES + (".gz", ".txt", ".tsv"))
        or source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


IN_MEMORY = "train_dataset"  # how rows handed over from Python are named in messages and in each row's source


def is_in_memory(source) -> bool:
    """A data set already in memory: a datasets.Dataset or a list of dicts, not a file or data set name."""
    return not isinstance(source, (str, os.PathLike)) and hasattr(source, "__iter__")


def _iter_memory(rows) -> Iterator[RawRecord]:
    for index, item in enumerate(rows):
        value = dict(item) if isinstance(item, dict) or hasattr(item, "keys") else DataError(
            f"{IN_MEMORY} row {index}", f"a row must be a mapping of field: value, got {type(item).__name__}")
        yield RawRecord(f"{IN_MEMORY} row {index}", f"{IN_MEMORY}:{index}", value)


def iter_records(source, split: str | None = None) -> Iterator[RawRecord]:
    """Yield the raw records of a local file, rows in memory (a datasets.Dataset or a list of dicts) or, for
    any other name, a Hub data set."""
    if is_in_memory(source):
        return _iter_memory(source)
    if isinstance(source, os.PathLike) or os.path.exists(os.path.expanduser(str(source))):
        return _iter_file(Path(os.path.expanduser(str(source))), str(source))
    name = str(source)
    if name.startswith("hf:"):  # a catalog set's Hub form: hf:owner/name?data_dir=...&split=...
        from urllib.parse import parse_qsl

        hub, _, query = name[3:].partition("?")
        options = dict(parse_qsl(query))
        return _iter_hub(hub, options.pop("split", split), **options)
    if looks_like_path(name):
        raise DataError(name, "file not found; check the path (a Hub data set name looks like 'owner/name')")
    return _iter_hub(name, split)


def check_data_file(path: Path, name: str) -> None:
    """A regular file or a FIFO (a pipe streams data, see docs/reliability.md); anything else is refused before
    it is opened: a directory, or a device, socket ... (/dev/zero would be read forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(name, "file not found; check the path") from None
    if stat.S_ISDIR(mode):
        raise DataError(name, "is a directory; give one data file (.jsonl, .jsonl.gz, .json, .csv or .parquet)")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise DataError(name, f"is {kind}, not a data file; give a regular file (or a named pipe)")


def _iter_file(path: Path, name: str) -> Iterator[RawRecord]:
    check_data_file(path, name)
    lowered = path.name.lower()
    compressed = lowered.endswith(".gz")
    base = lowered[:-3] if compressed else lowered
    if base.endswith(".jsonl"):
        return iter_jsonl(path, name)
    if base.endswith(".json"):
        return _iter_json(path, name, compressed)
    if base.endswith(".csv"):
        return _iter_csv(path, name, compressed)
    if base.endswith(".parquet") and not compressed:
        return _iter_parquet(path, name)
    raise DataError(name, f"unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}")


class _Gunzip(gzip.GzipFile):
    """A gzip stream that also closes the file under it (GzipFile(fileobj=...) leaves it open)."""

    def __init__(self, raw):
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self):
        try:
            super().close()
        finally:
            self._raw.close()


def _open_binary(path: Path, name: str, compressed: bool):
    """Opened once and peeked at, not opened twice: a FIFO can be read only once."""
    check_data_file(path, name)
    raw = open(path, "rb")
    if not compressed:
        return raw
    head = raw.peek(2)[:2]
    if head != b"\x1f\x8b":
        raw.close()
        plain = head[:1] in (b"{", b"[") or head[:1].isalnum()
        raise DataError(name, "is not a gzip file although its name ends in .gz" + (
            ": it holds plain text; rename it without the .gz (or compress it with gzip)" if plain else
            "; decompress it with gzip -d, or rename it without the .gz if it is plain text"))
    return _Gunzip(raw)


def _bounded_lines(handle, name: str) -> Iterator[tuple[int, bytes | DataError]]:
    """(line number, the line's bytes) for each line, read in chunks of at most MAX_LINE_BYTES: a longer line
    is never held whole; it is passed over and stands as a DataError, so the lines after it keep their numbers."""
    number = 0
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # the rest of the line, passed over a mebibyte at a time
            yield number, DataError(f"{name} line {number}", f"is longer than {MAX_LINE_BYTES >> 20} MiB, far "
                                    "more than any model reads; it was not read (one JSON object per line)")
            continue
        yield number, raw


def _decode_line(raw: bytes, where: str) -> str | DataError:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return DataError(where, f"is not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                "re-save the file as UTF-8")


def _json_message(err: json.JSONDecodeError) -> str:
    return err.msg.removesuffix(" at")  # "Invalid control character at" is followed by its position


def _parse_json_line(text: str, where: str) -> dict | DataError:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return DataError(where, f"is not valid JSON ({_json_message(err)} at column {err.colno}); "
                                "each line must hold one JSON object")
    if not isinstance(value, dict):
        return DataError(where, f"must be a JSON object {{...}}, got a JSON {type(value).__name__}")
    return value


def _jsonl_records(handle, name: str) -> Iterator[RawRecord]:
    for line_number, raw in _bounded_lines(handle, name):
        where, source = f"{name} line {line_number}", f"{name}:{line_number}"
        if isinstance(raw, DataError):
            yield RawRecord(where, source, raw)
            continue
        if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # UTF-8 byte-order mark
        if not raw.strip():
            continue
        text = _decode_line(raw, where)
        value = text if isinstance(text, DataError) else _parse_json_line(text, where)
        yield RawRecord(where, source, value)


def _records_of(handle, name: str) -> Iterator[RawRecord]:
    with handle:
        try:
            yield from _jsonl_records(handle, name)
        except (OSError, EOFError) as err:  # truncated or corrupt gzip stream
            raise DataError(name, f"could not be read to the end ({err}); the file looks truncated or "
                                  "corrupt") from err


def iter_jsonl(path: str | os.PathLike, name: str | None = None) -> Iterator[RawRecord]:
    """The records of a JSON-lines file (gzip-compressed when its name ends in .gz), whatever else its name:
    one dict per line, or a DataError for a line that is not one. The file is checked and opened at once."""
    path = Path(path)
    name = str(path) if name is None else name
    return _records_of(_open_binary(path, name, path.name.lower().endswith(".gz")), name)


def _read_capped(handle, name: str, limit: int = MAX_WHOLE_FILE_BYTES) -> bytes:
    with handle:
        try:
            data = handle.read(limit + 1)
        except (OSError, EOFError) as err:
            raise DataError(name, f"could not be read ({err}); the file looks truncated or corrupt") from err
    if len(data) > limit:
        raise DataError(name, f"is larger than {limit >> 20} MiB, too large to read whole; give the rows as "
                              ".jsonl, which is read line by line")
    return data


def read_json_file(path: str | os.PathLike, remedy: str) -> dict:
    """A JSON object kept beside an output (.meta.json, .flags.json, eval.json, ...), read the one way: a file
    that is truncated, not JSON or not an object is named, with what is wrong and `remedy`, what to do."""
    name = str(path)
    data = _read_capped(_open_binary(Path(path), name, False), name)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(name, f"is not UTF-8 text; the file is corrupt: {remedy}") from None
    except json.JSONDecodeError as err:
        raise DataError(name, f"is not valid JSON ({_json_message(err)} at line {err.lineno} column {err.colno}); the file "
                              f"looks truncated or corrupt: {remedy}") from None
    if not isinstance(value, dict):
        raise DataError(name, f"must hold a JSON object {{...}}, got a JSON {type(value).__name__}: {remedy}")
    return value


def _iter_json(path: Path, name: str, compressed: bool) -> Iterator[RawRecord]:
    """A .json file holds a JSON array of objects, or one object per line (jsonl content, read line by line)."""
    handle = _open_binary(path, name, compressed)
    head = handle.peek(MAX_LINE_BYTES) if hasattr(handle, "peek") else b""
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return _records_of(handle, name)
    data = _read_capped(handle, name)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_number = data[: err.start].count(b"\n") + 1
        raise DataError(f"{name} line {line_number}", "is not valid UTF-8; re-save the file as UTF-8") from err
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{name} line {err.lineno}", f"is not valid JSON ({_json_message(err)} at column {err.colno})") from err

    def records():
        for index, item in enumerate(items):
            where, source = f"{name} item {index}", f"{name}:{index}"
            if not isinstance(item, dict):
                item = DataError(where, f"must be a JSON object {{...}}, got a JSON {type(item).__name__}")
            yield RawRecord(where, source, item)

    return records()


def _iter_csv(path: Path, name: str, compressed: bool) -> Iterator[RawRecord]:
    """CSV with a header row (line 1). Parsed with the csv module rather than pandas so that a record's
    line is its real first line even when quoted cells hold newlines (completions usually do).
    Every cell is a string; empty cells count as missing values."""
    data = _read_capped(_open_binary(path, name, compressed), name)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_number = data[: err.start].count(b"\n") + 1
        raise DataError(f"{name} line {line_number}", "is not valid UTF-8; re-save the file as UTF-8") from err
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(name, "is empty; a CSV file needs a header row (prompt,completion,label,...)") from None
    header = [column.strip() for column in header]

    def records():
        start = reader.line_num + 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(f"{name} line {start}", f"is not valid CSV ({err})") from err
            where, source = f"{name} line {start}", f"{name}:{start}"
            start = reader.line_num + 1
            if not cells or all(not cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                yield RawRecord(where, source, DataError(
                    where, f"has {len(cells)} cells but the header has {len(header)}; quote cells that "
                           "contain commas or newlines"))
                continue
            yield RawRecord(where, source, {k: v for k, v in zip(header, cells) if v != ""})

    return records()


def _iter_parquet(path: Path, name: str) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for non-parquet content
        raise DataError(name, f"is not a readable parquet file ({err})") from err

    def records():
        index = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for item in batch.to_pylist():
                yield RawRecord(f"{name} row {index}", f"{name}:{index}", item)
                index += 1

    return records()


def _iter_hub(name: str, split: str | None, **options) -> Iterator[RawRecord]:
    import datasets

    split = split or "train"
    try:
        dataset = datasets.load_dataset(name, split=split, **options)
    except Exception as err:  # offline, unknown name, missing split, ...: all mean "could not load it"
        extra = "".join(f", {key} '{value}'" for key, value in options.items())
        raise DataError(name, f"could not be loaded as a Hugging Face Hub data set, split '{split}'{extra} "
                              f"({type(err).__name__}: {err}); if it is a local file, check the path") from err

    def records():
        for index, item in enumerate(dataset):
            yield RawRecord(f"{name} row {index}", f"{name}:{index}", dict(item))

    return records()
