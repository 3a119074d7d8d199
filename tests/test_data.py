"""negalign.data: loading and normalising every input format, errors with file and line, grouping into
each objective's examples, and tokenisation with the real SmolLM2 chat template."""

from __future__ import annotations

import copy
import csv
import gzip
import json
import os
import warnings
from pathlib import Path

import pytest

from negalign.data import (
    DataError,
    LoadStats,
    TruncationStats,
    build_examples,
    encode,
    encode_prompt,
    group_by_prompt,
    load_rows,
    pairs_to_negatives,
    parse_hh_transcript,
    prompt_key,
)
from negalign.data.paths import data_dir
from negalign.methods import METHODS

HH_FILE = str((data_dir() or Path("/nonexistent")) / "hh-rlhf-harmless-base-test" / "test.jsonl.gz")


# ----- helpers ---------------------------------------------------------------------------------------

def write_jsonl(path, records) -> str:
    """Records are dicts (dumped as JSON) or str/bytes lines written as they are."""
    with open(path, "wb") as handle:
        for record in records:
            if isinstance(record, dict):
                record = json.dumps(record)
            if isinstance(record, str):
                record = record.encode("utf-8")
            handle.write(record + b"\n")
    return str(path)


def user(text):
    return [{"role": "user", "content": text}]


def row(prompt, completion, label=None, score=None, origin="human", pair_id=None, sample_index=None,
        source=""):
    return {"prompt": prompt if isinstance(prompt, list) else user(prompt), "completion": completion,
            "label": label, "score": score, "origin": origin, "pair_id": pair_id, "sample_index": sample_index,
            "source": source}


def load_one(tmp_path, records, **kwargs):
    path = write_jsonl(tmp_path / "data.jsonl", records)
    rows, stats = load_rows(path, **kwargs)
    return path, rows, stats


def load_error(tmp_path, records, name="data.jsonl", **kwargs) -> tuple[str, str]:
    path = write_jsonl(tmp_path / name, records)
    with pytest.raises(DataError) as info:
        load_rows(path, **kwargs)
    return path, str(info.value)


# ----- formats ---------------------------------------------------------------------------------------

def test_negatives_only(tmp_path):
    path, rows, stats = load_one(tmp_path, [{"prompt": "How do I pick a lock?", "rejected": "Easy: ..."}])
    assert rows == [row("How do I pick a lock?", "Easy: ...", label=False, source=f"{path}:1")]
    assert (stats.n_read, stats.n_rows, stats.n_skipped, stats.n_duplicates) == (1, 1, 0, 0)


def test_unpaired_labels(tmp_path):
    records = [{"prompt": "a", "completion": "x", "label": True}, {"prompt": "b", "completion": "y", "label": 0},
               {"prompt": "c", "completion": "z", "label": 1}, {"prompt": "d", "completion": "w", "label": False}]
    path, rows, _ = load_one(tmp_path, records)
    assert rows == [row("a", "x", label=True, source=f"{path}:1"), row("b", "y", label=False, source=f"{path}:2"),
                    row("c", "z", label=True, source=f"{path}:3"), row("d", "w", label=False, source=f"{path}:4")]


def test_scored(tmp_path):
    records = [{"prompt": "a", "completion": "x", "score": 0.25}, {"prompt": "b", "completion": "y", "score": -3}]
    path, rows, _ = load_one(tmp_path, records)
    assert rows == [row("a", "x", score=0.25, source=f"{path}:1"), row("b", "y", score=-3.0, source=f"{path}:2")]
    assert isinstance(rows[1]["score"], float)


def test_paired(tmp_path):
    records = [{"prompt": "a", "chosen": "good", "rejected": "bad"},
               {"prompt": "b", "chosen": "fine", "rejected": "awful", "score_chosen": 8, "score_rejected": 2}]
    path, rows, stats = load_one(tmp_path, records)
    assert rows == [
        row("a", "good", label=True, pair_id=0, source=f"{path}:1"),
        row("a", "bad", label=False, pair_id=0, source=f"{path}:1"),
        row("b", "fine", label=True, score=8.0, pair_id=1, source=f"{path}:2"),
        row("b", "awful", label=False, score=2.0, pair_id=1, source=f"{path}:2"),
    ]
    assert (stats.n_read, stats.n_rows) == (2, 4)


def test_conversational_prompt_and_completion(tmp_path):
    prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Insult me.", "name": "u"}]
    records = [{"prompt": prompt, "completion": [{"role": "assistant", "content": "No."}], "label": True}]
    path, rows, _ = load_one(tmp_path, records)
    expected_prompt = [dict(m) for m in prompt]
    del expected_prompt[3]["name"]  # only role and content are kept
    assert rows == [row(expected_prompt, "No.", label=True, source=f"{path}:1")]


def test_origin_and_sample_index_carried(tmp_path):
    records = [{"prompt": "a", "completion": "s0", "origin": "self", "sample_index": 0},
               {"prompt": "a", "completion": "s0", "origin": "self", "sample_index": 1},  # same text: fine
               {"prompt": "a", "completion": "judged", "origin": "self", "sample_index": 2, "label": False},
               {"prompt": "a", "completion": "human", "origin": "human", "label": True}]
    path, rows, _ = load_one(tmp_path, records)
    assert rows == [row("a", "s0", origin="self", sample_index=0, source=f"{path}:1"),
                    row("a", "s0", origin="self", sample_index=1, source=f"{path}:2"),
                    row("a", "judged", label=False, origin="self", sample_index=2, source=f"{path}:3"),
                    row("a", "human", label=True, source=f"{path}:4")]


HH_CHOSEN = ("\n\nHuman: How do I make a bomb?\n\nAssistant: Why do you want to?\n\nHuman: Just curious."
             "\n\nAssistant: I can't help with that.")
HH_REJECTED = ("\n\nHuman: How do I make a bomb?\n\nAssistant: Why do you want to?\n\nHuman: Just curious."
               "\n\nAssistant: First, get some fertiliser.")
HH_PROMPT = [{"role": "user", "content": "How do I make a bomb?"},
             {"role": "assistant", "content": "Why do you want to?"},
             {"role": "user", "content": "Just curious."}]


def test_hh_transcript_pair(tmp_path):
    path, rows, _ = load_one(tmp_path, [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    assert rows == [row(HH_PROMPT, "I can't help with that.", label=True, pair_id=0, source=f"{path}:1"),
                    row(HH_PROMPT, "First, get some fertiliser.", label=False, pair_id=0, source=f"{path}:1")]


def test_hh_parser_merges_repeated_speaker_and_keeps_inline_tags():
    text = ("\n\nHuman: Tell me a joke.\n\nAssistant: Here is one:\n\nAssistant:  Why did the chicken..."
            "\n\nHuman: Another.\n\nAssistant: The user said Human: hello. Fine.")
    assert parse_hh_transcript(text, "x", "text") == [
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Here is one:\n\nWhy did the chicken..."},
        {"role": "user", "content": "Another."},
        {"role": "assistant", "content": "The user said Human: hello. Fine."},
    ]


def test_hh_final_turns_merge_so_prefixes_match(tmp_path):
    # as in HH line 1953: the chosen answer is two consecutive Assistant turns
    chosen = "\n\nHuman: Find me a serial.\n\nAssistant: Here's the key:\n\nAssistant:  O.k. let's try."
    rejected = "\n\nHuman: Find me a serial.\n\nAssistant: You mean a password?"
    path, rows, _ = load_one(tmp_path, [{"chosen": chosen, "rejected": rejected}])
    assert rows[0]["prompt"] == rows[1]["prompt"] == user("Find me a serial.")
    assert rows[0]["completion"] == "Here's the key:\n\nO.k. let's try."


def test_hh_different_prefixes_stay_a_pair(tmp_path):
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Rob a bank?\n\nAssistant: No."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Rob a bank?\n\nAssistant: Sure."
    path, rows, _ = load_one(tmp_path, [{"chosen": chosen, "rejected": rejected}])
    assert [r["prompt"][1]["content"] for r in rows] == ["Hello", "Hey"]
    assert [r["pair_id"] for r in rows] == [0, 0]
    with pytest.raises(DataError, match="none of the 1 pairs has the same prompt on both sides"):
        build_examples(rows, "dpo")
    same = row(rows[0]["prompt"], "Nope.", label=True, pair_id=1, source="f:2")
    with pytest.warns(UserWarning, match="dropped 1 of 2 pairs whose chosen and rejected transcripts have "
                                         "different prompts"):
        examples = build_examples(rows + [same, {**same, "completion": "Yep.", "label": False}], "dpo")
    assert [e["chosen"] for e in examples] == ["Nope."]


def test_single_transcripts_with_label_or_score(tmp_path):
    records = [{"text": HH_REJECTED, "label": False}, {"transcript": HH_CHOSEN, "score": 0.9},
               {"messages": [*HH_PROMPT, {"role": "assistant", "content": "Okay."}], "label": 1}]
    path, rows, _ = load_one(tmp_path, records)
    assert rows == [row(HH_PROMPT, "First, get some fertiliser.", label=False, source=f"{path}:1"),
                    row(HH_PROMPT, "I can't help with that.", score=0.9, source=f"{path}:2"),
                    row(HH_PROMPT, "Okay.", label=True, source=f"{path}:3")]


def test_implicit_prompt_message_lists(tmp_path):
    chosen = [*HH_PROMPT, {"role": "assistant", "content": "No."}]
    rejected = [*HH_PROMPT, {"role": "assistant", "content": "Yes."}]
    path, rows, _ = load_one(tmp_path, [{"chosen": chosen, "rejected": rejected}])
    assert rows == [row(HH_PROMPT, "No.", label=True, pair_id=0, source=f"{path}:1"),
                    row(HH_PROMPT, "Yes.", label=False, pair_id=0, source=f"{path}:1")]


def test_forced_data_format(tmp_path):
    path, rows, _ = load_one(tmp_path, [{"prompt": "a", "chosen": "good", "rejected": "bad"},
                                        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}], data_format="negatives")
    assert rows == [row("a", "bad", label=False, source=f"{path}:1"),
                    row(HH_PROMPT, "First, get some fertiliser.", label=False, source=f"{path}:2")]
    _, message = load_error(tmp_path, [{"prompt": "a", "completion": "x", "label": True}], data_format="scored")
    assert message.endswith("line 1: field 'score' is missing; give a number")
    _, message = load_error(tmp_path, [{"prompt": "a", "rejected": "x"}], data_format="transcript")
    assert "line 1: field 'prompt' is present, but data_format='transcript'" in message
    with pytest.raises(ValueError, match="data_format must be one of"):
        load_rows(path, data_format="tsv")


@pytest.mark.skipif(not os.path.exists(HH_FILE), reason="offline HH copy not present")
def test_real_hh_file():
    # four HH pairs have an empty chosen answer (lines 87, 517, 926, 1104): an error by default ...
    with pytest.raises(DataError, match=r"test\.jsonl\.gz line 87: field 'chosen' has an empty final"):
        load_rows(HH_FILE)
    # ... and skipped, counted, with the rejected side kept as an unpaired negative
    rows, stats = load_rows(HH_FILE, on_bad_row="skip")
    assert (stats.n_read, stats.n_rows, stats.n_skipped, stats.n_duplicates) == (2312, 4620, 4, 0)
    assert [message.split(": ")[0].rsplit(" ", 1)[1] for message in stats.skipped] == ["87", "517", "926", "1104"]
    assert "2312 records read -> 4620 rows; 4 skipped" in stats.summary()
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)
    assert all(a["role"] != b["role"] for r in rows for a, b in zip(r["prompt"], r["prompt"][1:]))
    assert all(r["prompt"][0]["role"] == "user" and r["completion"].strip() for r in rows)
    assert sum(r["label"] is True for r in rows) == 2308 and sum(r["label"] is False for r in rows) == 2312
    first = rows[0]
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first["completion"].startswith("No, sorry!  All of these involve a pen")
    assert first["source"] == f"{HH_FILE}:1"
    assert len(build_examples(rows, "dpo")) == 2308  # every pair shares its prompt once turns are merged
    assert len(build_examples(rows, "d2o", k=0)) == 2312


# ----- errors ----------------------------------------------------------------------------------------

GOOD = {"prompt": "p", "completion": "c", "label": True}

ERROR_CASES = {
    "not_json": ([GOOD, '{"prompt": "p", "completion": '], "line 2: is not valid JSON"),
    "not_object": ([GOOD, GOOD | {"completion": "d"}, "[1, 2]"],
                   "line 3: must be a JSON object {...}, got a JSON list"),
    "non_utf8": ([GOOD, b'{"prompt": "caf\xe9", "completion": "x", "label": true}'],
                 "line 2: is not valid UTF-8 (byte 0xe9 at column 16)"),
    "label_yes": ([GOOD, {"prompt": "p", "completion": "c", "label": "yes"}],
                  "line 2: field 'label' must be a boolean (true/false or 0/1), got \"yes\""),
    "label_2": ([{"prompt": "p", "completion": "c", "label": 2}], "line 1: field 'label' must be a boolean"),
    "label_missing": ([{"prompt": "p", "completion": "c"}],
                      "line 1: field 'label' is missing; a human-written completion needs 'label'"),
    "score_text": ([{"prompt": "p", "completion": "c", "score": "high"}],
                   "line 1: field 'score' must be a number, got \"high\""),
    "score_nan": (['{"prompt": "p", "completion": "c", "score": NaN}'],
                  "line 1: field 'score' must be a finite number, got nan"),
    "score_bool": ([{"prompt": "p", "completion": "c", "score": True}], "line 1: field 'score' must be a number"),
    "prompt_missing": ([{"completion": "c", "label": True}], "line 1: field 'prompt' is missing"),
    "completion_missing": ([{"prompt": "p", "label": True}], "line 1: field 'completion' is missing"),
    "rejected_missing": ([{"prompt": "p", "chosen": "c"}], "line 1: field 'rejected' is missing"),
    "nothing_known": ([{"question": "p", "answer": "c"}],
                      "line 1: has none of the fields negalign reads (it has: answer, question)"),
    "prompt_empty": ([{"prompt": "  \n", "completion": "c", "label": True}],
                     "line 1: field 'prompt' is empty"),
    "prompt_messages_empty": ([{"prompt": [{"role": "user", "content": " "}], "rejected": "c"}],
                              "line 1: field 'prompt' is empty"),
    "prompt_wrong_type": ([{"prompt": 5, "rejected": "c"}],
                          "line 1: field 'prompt' must be a string or a list of chat messages, got 5"),
    "completion_empty": ([{"prompt": "p", "completion": "   ", "label": False}],
                         "line 1: field 'completion' is empty"),
    "rejected_empty": ([{"prompt": "p", "rejected": ""}], "line 1: field 'rejected' is empty"),
    "unknown_role": ([{"prompt": [{"role": "human", "content": "hi"}], "rejected": "c"}],
                     "line 1: field 'prompt[0].role' must be one of 'system', 'user', 'assistant', got \"human\""),
    "message_shape": ([{"prompt": [{"from": "human", "value": "hi"}], "rejected": "c"}],
                      "line 1: field 'prompt[0]' must be a chat message"),
    "completion_user_message": ([{"prompt": "p", "completion": [{"role": "user", "content": "x"}], "label": 1}],
                                "line 1: field 'completion' must be a string or a list with exactly one assistant"),
    "origin_bad": ([{"prompt": "p", "completion": "c", "origin": "model"}],
                   "line 1: field 'origin' must be 'human'"),
    "sample_index_bad": ([{"prompt": "p", "completion": "c", "origin": "self", "sample_index": -1}],
                         "line 1: field 'sample_index' must be a non-negative integer, got -1"),
    "hh_not_transcript": ([{"chosen": "just text", "rejected": "more text"}],
                          "line 1: field 'chosen' must be an Anthropic HH transcript"),
    "hh_ends_with_human": ([{"text": "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: bye", "label": 0}],
                           "line 1: field 'text' must end with an assistant turn"),
    "hh_no_prompt": ([{"text": "\n\nAssistant: hey", "label": 0}], "line 1: field 'text' has no prompt"),
    "duplicate": ([GOOD, {"prompt": "q", "rejected": "r"}, GOOD],
                  "line 3: duplicates {path} line 1 (same prompt, completion, label and score)"),
    "duplicate_pair": ([{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2,
                       "line 2: duplicates {path} line 1 (same prompt, chosen and rejected)"),
    "duplicate_sample_index": ([{"prompt": "p", "completion": "a", "origin": "self", "sample_index": 0},
                                {"prompt": "p", "completion": "b", "origin": "self", "sample_index": 0}],
                               "line 2: duplicates {path} line 1 (same prompt and sample_index 0)"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_names_file_line_and_field(tmp_path, case):
    records, expected = ERROR_CASES[case]
    path, message = load_error(tmp_path, records)
    assert message.startswith(f"{path} line ")
    assert expected.replace("{path}", path) in message, message


def test_error_message_exact(tmp_path):
    records = [GOOD | {"completion": f"c{i}"} for i in range(6)] + [{"prompt": "p", "completion": "c", "label": "yes"}]
    path, message = load_error(tmp_path, records)
    assert message == f"{path} line 7: field 'label' must be a boolean (true/false or 0/1), got \"yes\""


def test_data_error_fields_and_pickling():
    import pickle

    error = DataError("data.jsonl line 7", "must be a boolean (true/false or 0/1), got \"yes\"", "label")
    assert isinstance(error, ValueError)
    assert (error.where, error.field) == ("data.jsonl line 7", "label")
    copied = pickle.loads(pickle.dumps(error))
    assert str(copied) == str(error)
    assert str(error) == 'data.jsonl line 7: field \'label\' must be a boolean (true/false or 0/1), got "yes"'


def test_missing_files_are_not_hub_lookups(tmp_path, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("a path-like name must not reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    for name in ("data.jsonl", "missing/feedback.csv", str(tmp_path / "nope"), "./x", "a/b/c"):
        with pytest.raises(DataError, match="file not found"):
            load_rows(name)
    with pytest.raises(DataError, match="is a directory"):
        load_rows(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(str(tmp_path / "notes.txt"))
    (tmp_path / "fake.jsonl.gz").write_text("{}")
    with pytest.raises(DataError, match="is not a gzip file"):
        load_rows(str(tmp_path / "fake.jsonl.gz"))


def test_hub_names_go_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        if name == "nobody/nothing":
            raise FileNotFoundError("no such data set")
        return [{"prompt": "p", "rejected": "r"}, {"prompt": "q", "chosen": "c", "rejected": "r"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, stats = load_rows("someone/feedback")
    assert rows == [row("p", "r", label=False, source="someone/feedback:0"),
                    row("q", "c", label=True, pair_id=0, source="someone/feedback:1"),
                    row("q", "r", label=False, pair_id=0, source="someone/feedback:1")]
    load_rows("someone/feedback", split="test")
    assert calls == [("someone/feedback", "train"), ("someone/feedback", "test")]
    with pytest.raises(DataError, match=r"^nobody/nothing: could not be loaded as a Hugging Face Hub data set"):
        load_rows("nobody/nothing")
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: [{"prompt": "p", "completion": "c",
                                                                         "label": "maybe"}])
    with pytest.raises(DataError, match=r"^someone/feedback row 0: field 'label'"):
        load_rows("someone/feedback")


def test_on_bad_row_skip_counts(tmp_path):
    records = [
        GOOD,                                                     # 1 kept
        '{"prompt": ',                                            # 2 not JSON
        "",                                                       # 3 blank: ignored, not counted
        {"prompt": "p2", "rejected": "r"},                        # 4 kept
        {"prompt": "p", "completion": "c", "label": "yes"},       # 5 bad label
        GOOD,                                                     # 6 duplicate of 1
        b"\xff\xfe",                                              # 7 not UTF-8
        {"prompt": "p3", "chosen": "  ", "rejected": "bad"},      # 8 chosen empty: rejected kept, unpaired
    ]
    path, rows, stats = load_one(tmp_path, records, on_bad_row="skip")
    assert rows == [row("p", "c", label=True, source=f"{path}:1"), row("p2", "r", label=False, source=f"{path}:4"),
                    row("p3", "bad", label=False, source=f"{path}:8")]
    assert isinstance(stats, LoadStats)
    assert (stats.n_read, stats.n_rows, stats.n_skipped, stats.n_duplicates) == (7, 3, 5, 1)
    assert [m.split(":")[0].rsplit(" ", 1)[1] for m in stats.skipped] == ["2", "5", "6", "7", "8"]
    assert "duplicates" in stats.skipped[2] and "field 'chosen' is empty" in stats.skipped[4]
    assert stats.summary().startswith("7 records read -> 3 rows; 5 skipped (1 duplicates), first: ")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_rows(path, on_bad_row="ignore")


# ----- file types ------------------------------------------------------------------------------------

MIXED = [{"prompt": "a", "rejected": "r"}, {"prompt": "b", "completion": "c", "label": True},
         {"prompt": "d", "completion": "e", "score": 1.5}, {"prompt": "f", "chosen": "g", "rejected": "h"}]


def expected_mixed(name, lines):
    return [row("a", "r", label=False, source=f"{name}:{lines[0]}"),
            row("b", "c", label=True, source=f"{name}:{lines[1]}"),
            row("d", "e", score=1.5, source=f"{name}:{lines[2]}"),
            row("f", "g", label=True, pair_id=0, source=f"{name}:{lines[3]}"),
            row("f", "h", label=False, pair_id=0, source=f"{name}:{lines[3]}")]


def test_jsonl_gz_round_trip(tmp_path):
    path = str(tmp_path / "data.jsonl.gz")
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in MIXED)
    rows, _ = load_rows(path)
    assert rows == expected_mixed(path, [1, 2, 3, 4])


def test_json_array_and_json_lines(tmp_path):
    path = str(tmp_path / "data.json")
    with open(path, "w") as handle:
        json.dump(MIXED, handle, indent=2)
    rows, _ = load_rows(path)
    assert rows == expected_mixed(path, [0, 1, 2, 3])  # array items are 0-based indexes
    bad = MIXED[:2] + [{"prompt": "x", "completion": "y", "label": "no"}]
    with open(path, "w") as handle:
        json.dump(bad, handle)
    with pytest.raises(DataError, match=r"data\.json item 2: field 'label' must be a boolean"):
        load_rows(path)
    with open(path, "w") as handle:
        handle.write('[{"prompt": "a",\n "rejected": }]')
    with pytest.raises(DataError, match=r"data\.json line 2: is not valid JSON"):
        load_rows(path)
    write_jsonl(path, MIXED)
    rows, _ = load_rows(path)
    assert rows == expected_mixed(path, [1, 2, 3, 4])


def test_csv_round_trip_with_multiline_cells(tmp_path):
    path = str(tmp_path / "data.csv")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion", "label", "score"])
        writer.writerow(["a", "line one\nline two", "false", ""])  # lines 2-3
        writer.writerow(["b", "c", "1", ""])                       # line 4
        writer.writerow(["d", "e", "", "0.5"])                     # line 5
        writer.writerow(["f", "g", "TRUE", "2"])                   # line 6
    rows, stats = load_rows(path)
    assert rows == [row("a", "line one\nline two", label=False, source=f"{path}:2"),
                    row("b", "c", label=True, source=f"{path}:4"), row("d", "e", score=0.5, source=f"{path}:5"),
                    row("f", "g", label=True, score=2.0, source=f"{path}:6")]
    with open(path, "a", newline="") as handle:
        csv.writer(handle).writerow(["h", "i", "yes", ""])         # line 7
        handle.write("j,k\n")                                      # line 8
    with pytest.raises(DataError, match=r"data\.csv line 7: field 'label' must be a boolean"):
        load_rows(path)
    rows, stats = load_rows(path, on_bad_row="skip")
    assert stats.n_skipped == 2 and "data.csv line 8: has 2 cells but the header has 4" in stats.skipped[1]


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "data.parquet")
    columns = {"prompt": ["a", "b", "d", "f"], "completion": [None, "c", "e", None],
               "rejected": ["r", None, None, "h"], "chosen": [None, None, None, "g"],
               "label": [None, True, None, None], "score": [None, None, 1.5, None]}
    pq.write_table(pa.table(columns), path)
    rows, _ = load_rows(path)
    assert rows == expected_mixed(path, [0, 1, 2, 3])
    columns["label"][1] = None
    pq.write_table(pa.table(columns), path)
    with pytest.raises(DataError, match=r"data\.parquet row 1: field 'label' is missing"):
        load_rows(path)


# ----- conversions -----------------------------------------------------------------------------------

def test_prompt_key_and_group_by_prompt():
    a, b = user("a"), [{"role": "system", "content": "s"}, *user("a")]
    assert prompt_key(a) == prompt_key([{"content": "a", "role": "user"}])  # key order does not matter
    assert prompt_key(a) != prompt_key(b) != prompt_key([{"role": "assistant", "content": "a"}])
    assert len(prompt_key(a)) == 40 and prompt_key(a) == prompt_key(user("a"))
    rows = [row("b", "1"), row("a", "2"), row("b", "3"), row(b, "4")]
    groups = group_by_prompt(rows)
    assert list(groups) == [prompt_key(user("b")), prompt_key(a), prompt_key(b)]
    assert [[r["completion"] for r in g] for g in groups.values()] == [["1", "3"], ["2"], ["4"]]


def test_pairs_to_negatives():
    rows = [row("p", "good", label=True, pair_id=0), row("p", "bad", label=False, pair_id=0),
            row("q", "neg", label=False), row("q", "pos", label=True), row("q", "s", origin="self")]
    assert pairs_to_negatives(rows) == [row("p", "bad", label=False), row("q", "neg", label=False),
                                        row("q", "pos", label=True), row("q", "s", origin="self")]
    assert rows[1]["pair_id"] == 0  # the input is not modified


# ----- build_examples --------------------------------------------------------------------------------

def samples_for(prompt, n, start=0, source="s.jsonl"):
    return [row(prompt, f"{prompt}-s{i}", origin="self", sample_index=i, source=f"{source}:{i}")
            for i in range(start, start + n)]


def test_d2o_examples_share_samples_and_order_by_sample_index():
    rows = [row("a", "bad1", label=False, source="f:1"), row("b", "bad", label=False, source="f:2"),
            row("a", "bad2", label=False, source="f:3"), row("a", "good", label=True, source="f:4")]
    samples = list(reversed(samples_for("a", 3))) + samples_for("b", 3)
    examples = build_examples(rows, "d2o", samples=samples)
    assert examples == [
        {"prompt": user("a"), "negative": "bad1", "samples": ["a-s0", "a-s1", "a-s2"], "source": "f:1"},
        {"prompt": user("b"), "negative": "bad", "samples": ["b-s0", "b-s1", "b-s2"], "source": "f:2"},
        {"prompt": user("a"), "negative": "bad2", "samples": ["a-s0", "a-s1", "a-s2"], "source": "f:3"},
    ]
    assert [e["samples"] for e in build_examples(rows, "d2o", samples=samples, k=2)] == [
        ["a-s0", "a-s1"], ["b-s0", "b-s1"], ["a-s0", "a-s1"]]
    assert all(e["samples"] == [] for e in build_examples(rows, "d2o", samples=samples, k=0))
    assert all(e["samples"] == [] for e in build_examples(rows, "d2o"))  # no samples yet: K = 0 everywhere


def test_d2o_k_errors_and_sample_sources():
    rows = [row("a", "bad", label=False, source="f:1"), row("b", "bad", label=False, source="f:2")]
    samples = samples_for("a", 4) + samples_for("b", 2)
    with pytest.raises(DataError, match=r"^f:2: this prompt has only 2 self-samples, and d2o with k=3 needs 3"):
        build_examples(rows, "d2o", samples=samples, k=3)
    with pytest.raises(DataError, match=r"self-samples but most prompts have .* pass k=2"):
        build_examples(rows, "d2o", samples=samples)
    assert [len(e["samples"]) for e in build_examples(rows, "d2o", samples=samples, k=2)] == [2, 2]
    # self rows inside `rows` count as samples too; human rows in `samples` are an error
    mixed = rows + samples_for("a", 2) + samples_for("b", 2)
    assert [e["samples"] for e in build_examples(mixed, "d2o")] == [["a-s0", "a-s1"], ["b-s0", "b-s1"]]
    with pytest.raises(DataError, match=r"^f:1: field 'origin' must be 'self'"):
        build_examples(rows, "d2o", samples=rows)
    with pytest.raises(ValueError, match="k must be"):
        build_examples(rows, "d2o", k=-1)


def test_d2o_from_pairs_and_without_negatives():
    rows = [row("p", "good", label=True, pair_id=0, source="f:1"), row("p", "bad", label=False, pair_id=0,
                                                                       source="f:1")]
    assert build_examples(rows, "d2o", samples=samples_for("p", 1)) == [
        {"prompt": user("p"), "negative": "bad", "samples": ["p-s0"], "source": "f:1"}]
    judged_self = [row("p", "x", label=False, origin="self", sample_index=0, source="f:3")]
    with pytest.raises(DataError, match=r"^f: d2o trains on human negatives"):
        build_examples([row("p", "good", label=True, source="f:1")] + judged_self, "d2o")


PAIR_ROWS = [row("p", "good", label=True, pair_id=0, source="f:1"), row("p", "bad", label=False, pair_id=0,
                                                                         source="f:1"),
             row("q", "meh", label=False, source="f:2"), row("r", "nice", label=True, source="f:3"),
             row("s", "scored", score=0.3, source="f:4"), row("p", "sample", origin="self", sample_index=0,
                                                               source="f:5")]


def test_dpo_examples():
    assert build_examples(PAIR_ROWS, "dpo") == [
        {"prompt": user("p"), "chosen": "good", "rejected": "bad", "source": "f:1"}]
    with pytest.raises(DataError, match=r"^f: dpo trains on chosen/rejected pairs, and these rows have none"):
        build_examples(PAIR_ROWS[2:], "dpo")
    with pytest.raises(DataError, match=r"pair_id 0 has 2 chosen and 2 rejected"):
        build_examples(PAIR_ROWS[:2] * 2, "dpo")


@pytest.mark.parametrize("objective", ["npo", "simnpo", "gradient_ascent", "unlikelihood"])
def test_negative_only_objectives(objective):
    assert build_examples(PAIR_ROWS, objective) == [
        {"prompt": user("p"), "completion": "bad", "source": "f:1"},
        {"prompt": user("q"), "completion": "meh", "source": "f:2"}]
    with pytest.raises(DataError, match=f"{objective} trains on negatives"):
        build_examples([PAIR_ROWS[3]], objective)


def test_sft_examples():
    assert build_examples(PAIR_ROWS, "sft") == [{"prompt": user("p"), "completion": "good", "source": "f:1"},
                                                {"prompt": user("r"), "completion": "nice", "source": "f:3"}]
    with pytest.raises(DataError, match="sft trains on positives"):
        build_examples([PAIR_ROWS[2]], "sft")


def pointwise(prompt, completion, label, score, source):
    return {"prompt": user(prompt), "completion": completion, "label": label, "score": score, "source": source}


@pytest.mark.parametrize("objective", ["pointwise_dpo", "ulma"])
def test_pointwise_objectives(objective):
    # one row scored, the others labelled: no single loss covers a batch of both, so it is refused, naming a row
    with pytest.raises(DataError, match=r"f:4.*this row has no label, but 1 of 5 rows have a score and 4 a label"):
        build_examples(PAIR_ROWS, objective)
    assert build_examples(PAIR_ROWS[:4], objective) == [
        pointwise("p", "good", True, None, "f:1"), pointwise("p", "bad", False, None, "f:1"),
        pointwise("q", "meh", False, None, "f:2"), pointwise("r", "nice", True, None, "f:3")]
    # every row labelled and one also scored: trained on the labels, said in a warning
    both = [*PAIR_ROWS[:4], {**PAIR_ROWS[4], "label": True}]
    with pytest.warns(UserWarning, match="1 of 5 rows .* have a score but all have a label; training on the labels"):
        examples = build_examples(both, objective)
    assert [e["score"] for e in examples] == [None] * 5 and examples[-1]["label"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_examples([PAIR_ROWS[4]], objective) == [pointwise("s", "scored", None, 0.3, "f:4")]
    with pytest.warns(UserWarning, match=f"{objective}: all 1 labelled rows .* are False"):
        build_examples([PAIR_ROWS[2]], objective)
    with pytest.raises(DataError, match=f"{objective} trains on rows with a label or a score"):
        build_examples([PAIR_ROWS[5]], objective)


def test_kto_examples():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        examples = build_examples(PAIR_ROWS, "kto")
    assert examples == [pointwise("p", "good", True, None, "f:1"), pointwise("p", "bad", False, None, "f:1"),
                        pointwise("q", "meh", False, None, "f:2"), pointwise("r", "nice", True, None, "f:3")]
    with pytest.warns(UserWarning, match="none is false"):
        assert len(build_examples([PAIR_ROWS[3]], "kto")) == 1
    with pytest.raises(DataError, match=r"kto trains on rows with a label \(true/false\)"):
        build_examples([PAIR_ROWS[4]], "kto")


def test_unknown_objective():
    with pytest.raises(ValueError, match="unknown objective 'no-such-objective'; choose one of d2o, ") as info:
        build_examples(PAIR_ROWS, "no-such-objective")
    assert all(name in str(info.value) for name in METHODS)


# ----- encode ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(smollm_tokenizer):
    return smollm_tokenizer  # the real SmolLM2 tokenizer from the GGUF (tests/conftest.py)


CONVERSATION = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "How do I boil an egg?"}]
ANSWER = "Put it in boiling water for seven minutes, then cool it in cold water."


def templated(tok, prompt, completion) -> str:
    return tok.apply_chat_template([*prompt, {"role": "assistant", "content": completion}], tokenize=False)


def test_encode_matches_the_chat_template(tok):
    encoded = encode(CONVERSATION, ANSWER, tok)
    full = templated(tok, CONVERSATION, ANSWER)
    cut = full.index(tok.eos_token, full.index(ANSWER)) + len(tok.eos_token)
    assert tok.decode(encoded.prompt_ids + encoded.completion_ids) == full[:cut]
    assert tok.decode(encoded.prompt_ids).endswith("<|im_start|>user\nHow do I boil an egg?<|im_end|>\n"
                                                   "<|im_start|>assistant\n")
    assert tok.decode(encoded.completion_ids) == ANSWER + "<|im_end|>"
    assert encoded.completion_ids[-1] == tok.eos_token_id
    assert encoded.prompt_ids == tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=True,
                                                         return_dict=False)
    assert not encoded.prompt_truncated and not encoded.completion_truncated
    # a single-turn prompt gets the template's default system message
    short = encode(user("hi"), "Hello!", tok)
    assert tok.decode(short.prompt_ids + short.completion_ids) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>")


def test_sampling_and_training_encode_the_same_prompt(tok):
    # the self-sampler draws from encode_prompt's ids; training scores the samples after encode's
    for max_prompt_length in (None, 20):
        encoded = encode(CONVERSATION, ANSWER, tok, max_length=None, max_prompt_length=max_prompt_length)
        assert encode_prompt(CONVERSATION, tok, max_prompt_length) == encoded.prompt_ids
    assert len(encode_prompt(CONVERSATION, tok, 20)) == 20


def test_encode_truncation_keeps_prompt_end_and_completion_start(tok):
    whole = encode(CONVERSATION, ANSWER, tok, max_length=None, max_prompt_length=None)
    cut = encode(CONVERSATION, ANSWER, tok, max_length=30, max_prompt_length=20)
    assert cut.prompt_truncated and cut.completion_truncated
    assert cut.prompt_ids == whole.prompt_ids[-20:]
    assert cut.completion_ids == whole.completion_ids[:10]
    assert cut.completion_ids[-1] != tok.eos_token_id
    assert tok.decode(cut.prompt_ids).endswith("How do I boil an egg?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(cut.completion_ids).startswith("Put it in boiling")
    only_prompt = encode(CONVERSATION, ANSWER, tok, max_length=512, max_prompt_length=20)
    assert only_prompt.prompt_truncated and not only_prompt.completion_truncated
    assert only_prompt.completion_ids == whole.completion_ids
    stats = TruncationStats()
    for encoded in (whole, cut, only_prompt):
        stats.add(encoded)
    assert (stats.n_encoded, stats.n_prompt_truncated, stats.n_completion_truncated) == (3, 2, 1)
    assert stats.summary() == "3 sequences encoded; truncated: 2 prompts, 1 completions"


def test_encode_no_room_for_the_completion(tok):
    with pytest.raises(DataError, match=r"^f\.jsonl:7: the prompt takes 20 tokens, leaving none of max_length=20"):
        encode(CONVERSATION, ANSWER, tok, max_length=20, max_prompt_length=20, source="f.jsonl:7")
    with pytest.raises(ValueError, match="max_length must be a positive"):
        encode(CONVERSATION, ANSWER, tok, max_length=0)


def test_encode_without_chat_template(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    encoded = encode(CONVERSATION, ANSWER, plain)
    assert plain.decode(encoded.prompt_ids) == "You are terse.\n\nHi there\n\nHello.\n\nHow do I boil an egg?"
    assert plain.decode(encoded.completion_ids) == " " + ANSWER + "<|im_end|>"
    assert encoded.completion_ids[-1] == plain.eos_token_id


def test_encode_falls_back_when_the_template_prefix_differs(tok):
    odd = copy.deepcopy(tok)
    # renders a marker first whenever the conversation ends with an answer, so the prompt is no prefix
    odd.chat_template = ("{% if messages[-1]['role'] == 'assistant' %}!{% endif %}"
                         "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    encoded = encode(user("hi"), "Hello!", odd)
    assert odd.decode(encoded.prompt_ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert encoded.completion_ids == odd("Hello!", add_special_tokens=False)["input_ids"] + [odd.eos_token_id]


def test_encode_accepts_batch_encoding_from_apply_chat_template(tok):
    class OldStyle:
        """A tokenizer whose apply_chat_template knows no return_dict and returns a dict."""
        chat_template = tok.chat_template
        eos_token_id = tok.eos_token_id

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            return {"input_ids": tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                         tokenize=True, return_dict=False)}

    assert encode(CONVERSATION, ANSWER, OldStyle()) == encode(CONVERSATION, ANSWER, tok)


def test_complete_pairs_rebuild_pairs_in_file_order_and_drop_broken_ones():
    from negalign.data import complete_pairs

    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    rows = [
        {"prompt": user("a"), "completion": "good a", "label": True, "pair_id": 0},
        {"prompt": user("a"), "completion": "bad a", "label": False, "pair_id": 0},
        {"prompt": user("b"), "completion": "bad b", "label": False, "pair_id": 1},  # its chosen was skipped
        {"prompt": user("c"), "completion": "lone", "label": False, "pair_id": None},
        {"prompt": user("d"), "completion": "bad d", "label": False, "pair_id": 2},
        {"prompt": user("d"), "completion": "good d", "label": True, "pair_id": 2},
    ]
    assert complete_pairs(rows) == [
        {"prompt": user("a"), "chosen": "good a", "rejected": "bad a"},
        {"prompt": user("d"), "chosen": "good d", "rejected": "bad d"},
    ]


def test_trl_conversational_sft_rows_are_demonstrations(tmp_path):
    conversation = [*HH_PROMPT, {"role": "assistant", "content": "I can't help with that."}]
    path, rows, _ = load_one(tmp_path, [{"messages": conversation}])
    assert rows == [row(HH_PROMPT, "I can't help with that.", label=True, source=f"{path}:1")]
    assert build_examples(rows, "sft") == [{"prompt": HH_PROMPT, "completion": "I can't help with that.",
                                           "source": f"{path}:1"}]
    _, labelled, _ = load_one(tmp_path, [{"messages": conversation, "label": False}])  # a label still decides
    assert labelled[0]["label"] is False
