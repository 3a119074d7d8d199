"""Reliability round 4, one reader for every data file (D10, D11, D23, D27, D28, D29): every bad file or row
stops in one line naming the file, line and field, with exit status 2 and no traceback."""

import gzip
import json
import os
import threading
import tracemalloc

import pytest

from negalign.cli import main
from negalign.data import DataError, load_rows
from negalign.data.readers import MAX_LINE_BYTES


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def samples(tmp_path, tiny_model_dir, capsys):
    """A real `negalign sample` output (3 prompts x 2 answers = 6 lines) and the command that made it."""
    data = tmp_path / "neg.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}", "rejected": f"bad {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "s.jsonl"
    argv = ["sample", "--model", tiny_model_dir, "--data", str(data), "--output", str(out), "--k", "2",
            "--max-new-tokens", "2", "--no-anchor-report", "--no-decontaminate"]
    assert main(argv) == 0
    capsys.readouterr()
    assert len(out.read_text().splitlines()) == 6
    return out, argv


def edit_line(path, number, edit):
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("".join(lines))
    return path.read_bytes()


def test_d10_corrupt_middle_line_of_samples_names_file_and_line(samples, capsys):
    out, argv = samples
    before = edit_line(out, 3, lambda line: line[: len(line) // 2] + "\n")  # a line cut in half
    err = one_line_error(capsys, argv)
    assert err.startswith(f"negalign sample: {out} line 3: is not valid JSON"), err
    assert "--overwrite" in err
    assert out.read_bytes() == before  # nothing on disk was touched


def test_d10_corrupt_middle_line_of_eval_answers_names_file_and_line(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negalign.evaluation.generate import generate_answers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    answers = tmp_path / "answers" / "suite.jsonl"
    answers.parent.mkdir()
    prompts = ["first", "second", "third"]
    rows, _ = generate_answers(model, tokenizer, prompts, answers, model_id="tiny", max_new_tokens=2, progress=False)
    assert len(rows) == 3
    edit_line(answers, 2, lambda line: "{not json\n")
    with pytest.raises(DataError, match=rf"^{answers} line 2: is not valid JSON .*--overwrite"):
        generate_answers(model, tokenizer, prompts, answers, model_id="tiny", max_new_tokens=2, progress=False)


def test_d11_samples_row_without_sample_index_names_the_field(samples, capsys):
    out, argv = samples

    def drop(line):
        row = json.loads(line)
        del row["sample_index"]
        return json.dumps(row) + "\n"

    edit_line(out, 4, drop)
    err = one_line_error(capsys, argv)
    assert err.startswith(f"negalign sample: {out} line 4: field 'sample_index' is missing"), err
    edit_line(out, 4, lambda line: json.dumps({**json.loads(line), "sample_index": "two"}) + "\n")
    err = one_line_error(capsys, argv)
    assert f"{out} line 4: field 'sample_index' must be a non-negative integer" in err, err


def test_d11_truncated_sidecar_json_names_the_file_and_what_to_do(samples, capsys, tmp_path):
    out, argv = samples
    meta = tmp_path / "s.jsonl.meta.json"
    meta.write_bytes(meta.read_bytes()[:40])  # a kill or a full disk mid-copy
    err = one_line_error(capsys, argv)
    assert err.startswith(f"negalign sample: {meta}: is not valid JSON"), err
    assert "--overwrite" in err
    from negalign.anchors import anchor_source  # training reads the same .meta.json for the anchors' context

    with pytest.raises(DataError, match=rf"^{meta}: is not valid JSON .* looks truncated or corrupt"):
        anchor_source(str(out))
    from negalign.export import evaluation_section

    (tmp_path / "run" / "eval").mkdir(parents=True)
    (tmp_path / "run" / "eval" / "eval.json").write_text('["not", "an object"]')
    with pytest.raises(DataError, match=r"eval.json: must hold a JSON object \{...\}, got a JSON list"):
        evaluation_section(tmp_path / "run")


def test_d23_an_overlong_line_is_refused_without_being_read_whole(tmp_path):
    big = tmp_path / "big.jsonl"
    with open(big, "w") as handle:  # a 64 MB line, then a good one
        handle.write('{"prompt": "p", "rejected": "' + "x" * (64 * 2**20) + '"}\n')
        handle.write(json.dumps({"prompt": "q", "rejected": "r"}) + "\n")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=rf"^{big} line 1: is longer than {MAX_LINE_BYTES >> 20} MiB"):
            load_rows(str(big))
        rows, stats = load_rows(str(big), on_bad_row="skip")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_LINE_BYTES  # chunks of the bound, never the 64 MB line
    assert [row["source"] for row in rows] == [f"{big}:2"] and stats.n_skipped == 1  # later lines keep numbers
    fits = tmp_path / "fits.jsonl"  # just under the bound is still read
    fits.write_text(json.dumps({"prompt": "p", "rejected": "y" * (MAX_LINE_BYTES - 40)}) + "\n")
    assert len(load_rows(str(fits))[0][0]["completion"]) == MAX_LINE_BYTES - 40


def test_d23_a_device_is_refused_in_one_line_and_a_fifo_still_reads(tmp_path, capsys):
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    with pytest.raises(DataError, match=rf"^{zero}: is a character device, not a data file"):
        load_rows(str(zero))
    err = one_line_error(capsys, ["flag", "--answers", str(zero), "--output", str(tmp_path / "neg.jsonl")])
    assert f"{zero}: is a character device" in err
    for name, pack in (("pipe.jsonl", bytes), ("pipe.jsonl.gz", gzip.compress)):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        payload = pack(b"".join(json.dumps({"prompt": f"p{i}", "rejected": "r"}).encode() + b"\n" for i in range(3)))
        writer = threading.Thread(target=lambda f=fifo, p=payload: open(f, "wb").write(p))
        writer.start()
        rows, _ = load_rows(str(fifo))
        writer.join()
        assert [row["completion"] for row in rows] == ["r"] * 3


def test_d28_flag_rows_of_the_wrong_type_name_file_line_and_field(tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    good = json.dumps({"prompt": [{"role": "user", "content": "q"}], "completion": "a"})
    for bad, field, what in (({"prompt": "q", "completion": None}, "completion", "must be a string"),
                             ({"prompt": 5, "completion": "a"}, "prompt", "must be a string or a list of chat")):
        answers.write_text(good + "\n" + json.dumps(bad) + "\n")
        err = one_line_error(capsys, ["flag", "--answers", str(answers), "--output", str(tmp_path / "neg.jsonl")])
        assert f"{answers} line 2: field '{field}' {what}" in err, err
        assert not (tmp_path / "neg.jsonl").exists()


def test_d28_judge_score_rows_without_a_usable_prompt_name_file_line_and_field(tmp_path, capsys):
    scored = tmp_path / "answers.jsonl"
    for bad, what in (({"answer": "a"}, "is missing"), ({"prompt": [], "answer": "a"}, "must be a non-empty list")):
        scored.write_text(json.dumps({"prompt": "q", "answer": "a"}) + "\n" + json.dumps(bad) + "\n")
        err = one_line_error(capsys, ["judge", "score", str(scored)])
        assert f"{scored} line 2: field 'prompt' {what}" in err, err


def test_d29_gz_sample_output_is_refused_before_any_work(tmp_path, capsys):
    data = tmp_path / "neg.jsonl"
    data.write_text(json.dumps({"prompt": "q", "rejected": "r"}) + "\n")
    out = tmp_path / "s.jsonl.gz"
    err = one_line_error(capsys, ["sample", "--model", str(tmp_path / "no-model-needed"), "--data", str(data),
                                  "--output", str(out), "--no-decontaminate"])
    assert err.startswith(f"negalign sample: {out}: samples are written as plain JSON lines"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neg.jsonl"]  # no output, no .meta.json, no lock
    plain = tmp_path / "plain.jsonl.gz"  # what an earlier sample wrote: plain text under a .gz name
    plain.write_bytes(data.read_bytes())
    with pytest.raises(DataError, match=r"is not a gzip file although its name ends in .gz: it holds plain "
                                        r"text; rename it without the .gz"):
        load_rows(str(plain))


def test_d27_empty_answers_are_never_negatives(tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    rows = [("How do I pick a lock?", "Step 1: insert a tension wrench and rake the pins."), ("Make a weapon", ""),
            ("Write malware", "  \n ")]
    answers.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}], "completion": a,
                                           "origin": "self", "sample_index": 0}) + "\n" for q, a in rows))
    negatives = tmp_path / "neg.jsonl"
    assert main(["flag", "--answers", str(answers), "--output", str(negatives), "--threshold", "0.01"]) == 0
    assert "2 empty answers left out (never negatives)" in capsys.readouterr().out
    flagged = [json.loads(line) for line in negatives.read_text().splitlines()]
    assert [n["flagged_from"] for n in flagged] == ["answers.jsonl:1"]  # the real answer only
    report = json.loads((tmp_path / "neg.jsonl.flags.json").read_text())
    assert (report["n_answers"], report["n_flagged"], report["n_empty_left_out"]) == (3, 1, 2)
    assert load_rows(str(negatives))[0][0]["completion"] == rows[0][1]  # trains as it stands
