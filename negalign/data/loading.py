"""`load_rows`: any source -> normalised rows, with bad rows raised or skipped and counted. `answer_row`: one row
of a file of the model's answers (`negalign sample` output, eval answers), checked field by field."""

from __future__ import annotations

from dataclasses import dataclass, field

from negalign.data.errors import DataError
from negalign.data.normalise import DATA_FORMATS, normalise_record, parse_completion, parse_prompt, parse_sample_index
from negalign.data.readers import RawRecord, iter_records
from negalign.data.rows import prompt_key

ON_BAD_ROW = ("error", "skip")


@dataclass
class LoadStats:
    n_read: int = 0  # records read from the source (a pair is one record; blank lines don't count)
    n_rows: int = 0  # rows produced (a pair gives two)
    n_skipped: int = 0  # bad records (or bad sides of pairs) skipped, duplicates included
    skipped: list[str] = field(default_factory=list)  # their error messages, in order
    n_duplicates: int = 0  # how many of the skipped were duplicates

    def summary(self) -> str:
        text = f"{self.n_read} records read -> {self.n_rows} rows"
        if self.n_skipped:
            text += f"; {self.n_skipped} skipped ({self.n_duplicates} duplicates), first: {self.skipped[0]}"
        return text


def _duplicate_keys(rows: list[dict], paired: bool) -> list[tuple]:
    """Keys that must not repeat within a source. A pair repeats only if both sides do (two pairs may
    share a chosen answer). Self-samples may repeat text (a peaked model samples the same answer twice)
    but not their (prompt, sample_index)."""
    if paired:
        chosen, rejected = rows
        return [("pair", prompt_key(chosen["prompt"]), chosen["completion"], prompt_key(rejected["prompt"]),
                 rejected["completion"], chosen["score"], rejected["score"], chosen["origin"])]
    keys = []
    for row in rows:
        if row["origin"] == "self":
            keys.append(None if row["sample_index"] is None
                        else ("sample", prompt_key(row["prompt"]), row["sample_index"]))
        else:
            keys.append(("row", prompt_key(row["prompt"]), row["completion"], row["label"], row["score"]))
    return keys


def _duplicate_message(paired: bool, row: dict, first_where: str) -> str:
    if paired:
        what = "same prompt, chosen and rejected"
    elif row["origin"] == "self":
        what = f"same prompt and sample_index {row['sample_index']}"
    else:
        what = "same prompt, completion, label and score"
    return (f"duplicates {first_where} ({what}); remove one of them, or load with on_bad_row='skip' "
            "to keep only the first")


def load_rows(source, *, split: str | None = None, on_bad_row: str = "error",
              data_format: str = "auto") -> tuple[list[dict], LoadStats]:
    """Load feedback from a local file (.jsonl, .jsonl.gz, .json, .csv, .parquet) or a Hub data set
    name, and normalise every record into rows (see `negalign.data.rows.Row`).

    Args:
        source: a file path, a Hugging Face Hub data set name (anything that is not an existing
            local path and does not look like one), or rows in memory (a datasets.Dataset or a list of
            dicts in any format the files take).
        split: the Hub split to load (default "train"); ignored for local files.
        on_bad_row: "error" raises the first bad record's DataError; "skip" drops bad records, counts
            them and keeps their messages in `LoadStats.skipped`. A pair with one bad side keeps the good
            side as an unpaired row.
        data_format: "auto" detects each record's format from its keys; "negatives", "unpaired",
            "scored", "paired" or "transcript" force one.

    Returns:
        (rows, stats). Pairs get pair_ids 0, 1, 2, ... in file order (unique within this call).
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    from negalign.data.catalog import resolve_data
    from negalign.data.readers import is_in_memory

    if not is_in_memory(source):
        source = resolve_data(str(source))  # a catalog short name (hh-harmless-base, ...) -> local file or Hub
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {', '.join(DATA_FORMATS)}, got {data_format!r}")
    rows: list[dict] = []
    stats = LoadStats()
    first_seen: dict[tuple, str] = {}
    next_pair_id = 0

    def bad(error: DataError, duplicate: bool = False) -> None:
        if on_bad_row == "error":
            raise error
        stats.n_skipped += 1
        stats.n_duplicates += duplicate
        stats.skipped.append(str(error))

    for record in iter_records(source, split):
        stats.n_read += 1
        if isinstance(record.value, DataError):
            bad(record.value)
            continue
        try:
            result = normalise_record(record.value, record.where, record.source, data_format)
        except DataError as error:
            bad(error)
            continue
        for error in result.side_errors:
            bad(error)
        keys = _duplicate_keys(result.rows, result.paired)
        if result.paired:
            if keys[0] in first_seen:
                bad(DataError(record.where, _duplicate_message(True, result.rows[0], first_seen[keys[0]])),
                    duplicate=True)
                continue
            first_seen[keys[0]] = record.where
            for row in result.rows:
                row["pair_id"] = next_pair_id
            next_pair_id += 1
            rows.extend(result.rows)
            continue
        for key, row in zip(keys, result.rows):
            if key is not None:
                if key in first_seen:
                    bad(DataError(record.where, _duplicate_message(False, row, first_seen[key])), duplicate=True)
                    continue
                first_seen[key] = record.where
            rows.append(row)
    stats.n_rows = len(rows)
    return rows, stats


def answer_row(record: RawRecord, remedy: str, *, sample_index: bool = False,
               answer_fields: tuple[str, ...] = ("completion",)) -> dict:
    """A model's answer as `negalign sample` writes it, checked field by field (a bad one raises a DataError
    naming the file, line and field, ending in `remedy`): the prompt (text or chat messages, given back as it
    is), the answer under the first of `answer_fields` present (a string, maybe empty) given back as
    "completion", and with `sample_index` a non-negative sample_index and n_tokens."""
    def bad(where, reason, field=None):
        return DataError(where, f"{reason}; {remedy}", field)

    if isinstance(record.value, DataError):
        raise bad(record.value.where, record.value.reason, record.value.field)
    row, where = dict(record.value), record.where
    answer = next((name for name in answer_fields if name in row), answer_fields[0])
    needed = ["prompt", answer] + (["sample_index"] if sample_index else [])
    try:
        for name in needed:
            if name not in row:
                raise DataError(where, f"is missing (each row needs {', '.join(repr(n) for n in needed)})", name)
        parse_prompt(row["prompt"], where)
        row["completion"] = parse_completion(row[answer], where, field=answer, allow_empty=True)
        if sample_index:
            row["sample_index"] = parse_sample_index(row["sample_index"], where)
            if row["sample_index"] is None:
                raise DataError(where, "must be a non-negative integer, got null", "sample_index")
            tokens = row.get("n_tokens", 0)  # eval reads answer lengths from it
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise DataError(where, f"must be a non-negative integer, got {tokens!r}", "n_tokens")
    except DataError as error:
        raise bad(error.where, error.reason, error.field) from None
    return row
