"""`negalign loop` end to end on a tiny random-weight Llama and a tiny data folder: two rounds, the report's
numbers, a rerun that redoes nothing, a kill inside a round that the rerun continues, and the folder's lock."""

import json
import math
import os
from pathlib import Path

import pytest
from loop_data import BENIGN_EVAL, HARMFUL_EVAL, HH_REQUEST, make_data, tiny_settings

import negalign


@pytest.fixture(scope="module")
def talking_model(tmp_path_factory, smollm_tokenizer):
    """The tests' tiny Llama with the seed whose greedy answers are words, not blank lines: an empty answer is
    never a negative, and the loop would have nothing to mine."""
    from conftest import make_tiny_llama

    folder = tmp_path_factory.mktemp("talking-llama")
    make_tiny_llama(len(smollm_tokenizer), seed=7).save_pretrained(folder)
    smollm_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("loop") / "data")


@pytest.fixture(scope="module")
def finished(talking_model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("loop-run") / "out"
    report = negalign.loop(tiny_settings(talking_model, data, out))
    return out, report


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def wilson(count, n, z=1.959964):
    p = count / n
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def test_two_rounds_each_start_from_the_last_model_and_keep_their_files(finished, talking_model):
    out, _ = finished
    for number in (0, 1, 2):
        assert (out / f"round-{number}" / "done.json").exists()
        assert (out / f"round-{number}" / "eval" / "eval.json").exists()
        assert (out / f"round-{number}" / "reach" / "eval.json").exists()
    for number in (1, 2):
        folder = out / f"round-{number}"
        for name in ("answers_harmful.jsonl", "negatives_harmful.jsonl", "anchors_harmful.jsonl",
                     "anchors_benign.jsonl", "d2o_negatives.jsonl", "d2o_anchors.jsonl", "watch.json"):
            assert (folder / name).exists(), name
        assert (folder / "model" / "model.safetensors").exists()
        done = json.loads((folder / "done.json").read_text())
        assert done["trained"] and done["model"] == str(folder / "model")
        # the round's answers and anchors come from the model the round started from, and it is its reference
        answered_by = json.loads((folder / "answers_harmful.jsonl.meta.json").read_text())["model"]
        start = talking_model if number == 1 else str(out / "round-1" / "model")
        assert answered_by == start
        config = (folder / "model" / "negalign_config.yaml").read_text()  # paths written machine-neutral
        trained_from = next(line for line in config.splitlines() if line.startswith("model:"))
        assert trained_from.strip("' ").endswith(str(Path(start).relative_to(Path(start).parents[1])))
    # every flagged answer of round 2 has K=2 anchors in its training file, drawn under the refusal context
    negatives = read_jsonl(out / "round-2" / "d2o_negatives.jsonl")
    anchors = read_jsonl(out / "round-2" / "d2o_anchors.jsonl")
    assert negatives and all(sum(a["prompt"] == n["prompt"] for a in anchors) == 2 for n in negatives)
    meta = json.loads((out / "round-2" / "d2o_anchors.jsonl.meta.json").read_text())
    assert meta["sampling_context"]["messages"] and meta["mixed_with"]
    # the watch's numbers sit beside the loss in the trainer's log
    history = json.loads((out / "round-1" / "model" / "train_log.json").read_text())["log_history"]
    logged = [h for h in history if "watch/benign_refusal" in h]
    assert [h["step"] for h in logged] == [1, 2] and all("loss" in h for h in logged)


def test_pools_leave_out_evaluation_and_reach_prompts_and_keep_the_watch_slice_apart(finished):
    out, _ = finished
    pools = json.loads((out / "pools.json").read_text())
    text = lambda prompts: {p[-1]["content"] for p in prompts}  # noqa: E731
    removed = {r["prompt"]: r["reason"] for kind in pools["removed"] for r in pools["removed"][kind]}
    assert removed == {HARMFUL_EVAL[1]: "exact", HH_REQUEST: "exact of a reach prompt", BENIGN_EVAL[0]: "exact"}
    for kind in ("harmful", "benign"):
        assert not text(pools["watch"][kind]) & text(pools["train"][kind])
        assert len(pools["watch"][kind]) == 2
        trained = {r["prompt"][-1]["content"] for n in (1, 2)
                   for r in read_jsonl(out / f"round-{n}" / f"answers_{kind}.jsonl")}
        assert not trained & (text(pools["watch"][kind]) | set(HARMFUL_EVAL + BENIGN_EVAL + [HH_REQUEST]))


def test_report_lists_every_round_with_numbers_worked_from_the_judged_answers(finished):
    out, report = finished
    markdown = (out / "report.md").read_text()
    assert [row["round"] for row in report["rounds"]] == [0, 1, 2]
    assert (out / "front.png").stat().st_size > 0 and (out / "watch.png").stat().st_size > 0
    for row in report["rounds"]:
        answers = out / f"round-{row['round']}" / "eval" / "answers"
        harmful = [j for s in ("advbench", "refusal-harmful", "xstest-unsafe")
                   for j in read_jsonl(answers / f"{s}.judged.jsonl")]
        benign = [j for s in ("xstest-safe", "alpaca-benign") for j in read_jsonl(answers / f"{s}.judged.jsonl")]
        complying = sum(j["complies"] > 0.5 for j in harmful)
        refusing = sum(j["complies"] <= 0.5 for j in benign)
        assert (len(harmful), len(benign)) == (4, 6)  # 1 + 2 + 1 harmful, 3 + 3 benign prompts in the folder
        assert row["harmful_compliance"]["rate"] == pytest.approx(complying / 4)
        assert row["benign_refusal"]["rate"] == pytest.approx(refusing / 6)
        low, high = wilson(refusing, 6)
        assert (row["benign_refusal"]["low"], row["benign_refusal"]["high"]) == pytest.approx((max(0, low), min(1, high)))
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {row['round']} | "))
        assert f"{complying / 4:.3f} [" in line and "(n=4)" in line and f"{refusing / 6:.3f} [" in line
        reach = read_jsonl(out / f"round-{row['round']}" / "reach" / "answers" / "reach-jbb-pair.judged.jsonl")
        assert row["reach"]["reach-jbb-pair"]["rate"] == pytest.approx(sum(j["complies"] > 0.5 for j in reach) / 2)
    for number in (1, 2):
        flagged = len(read_jsonl(out / f"round-{number}" / "negatives_harmful.jsonl"))
        assert report["rounds"][number]["mined"]["harmful"]["negatives"] == flagged
        assert f"| {number} | 4 | {flagged} | 3 |" in markdown


def test_a_rerun_of_a_finished_loop_redoes_no_round(finished, talking_model, data, monkeypatch):
    out, _ = finished
    from negalign.loop import rounds

    def stamps():
        return {p: p.stat().st_mtime_ns for n in (0, 1, 2) for p in (out / f"round-{n}").rglob("*") if p.is_file()}

    before = stamps()
    calls = []
    monkeypatch.setattr(rounds, "mine", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(rounds, "evaluate_model", lambda *a, **k: calls.append(a))
    negalign.loop(tiny_settings(talking_model, data, out))
    assert calls == [] and stamps() == before


def test_a_loop_killed_inside_a_round_continues_without_redrawing_what_is_on_disk(talking_model, data, tmp_path,
                                                                                 monkeypatch):
    from negalign.loop.watch import RefusalWatch

    out = tmp_path / "out"
    scored, real = [], RefusalWatch.score

    def dies_at_step_2(self, model, tokenizer, step):
        if step == 2:
            raise RuntimeError("killed")
        scored.append(step)
        return real(self, model, tokenizer, step)

    monkeypatch.setattr(RefusalWatch, "score", dies_at_step_2)
    with pytest.raises(RuntimeError, match="killed"):
        negalign.loop(tiny_settings(talking_model, data, out, rounds=1))
    folder = out / "round-1"
    assert not (folder / "done.json").exists() and (folder / "model" / "checkpoint-1").is_dir()
    drawn = {name: (folder / name).stat().st_mtime_ns for name in
             ("answers_harmful.jsonl", "answers_benign.jsonl", "anchors_harmful.jsonl", "anchors_benign.jsonl")}
    lines = {name: len(read_jsonl(folder / name)) for name in drawn}

    def counts(self, model, tokenizer, step):
        scored.append(step)
        return real(self, model, tokenizer, step)

    monkeypatch.setattr(RefusalWatch, "score", counts)
    negalign.loop(tiny_settings(talking_model, data, out, rounds=1))
    assert scored == [1, 2]  # step 1 before the kill, then only step 2: training resumed from checkpoint-1
    assert {name: (folder / name).stat().st_mtime_ns for name in drawn} == drawn
    assert {name: len(read_jsonl(folder / name)) for name in drawn} == lines
    assert json.loads((folder / "done.json").read_text())["trained"]
    assert [p["step"] for p in json.loads((folder / "watch.json").read_text())["points"]] == [1, 2]


def test_a_second_loop_on_the_same_folder_is_refused(talking_model, data, tmp_path):
    from negalign.locks import OutputLocked, output_lock

    out = tmp_path / "out"
    with output_lock(out, "the loop"):
        with pytest.raises(OutputLocked):
            negalign.loop(tiny_settings(talking_model, data, out))
    assert not out.exists()


def test_a_folder_of_other_loop_settings_is_not_continued(finished, talking_model, data):
    out, _ = finished
    with pytest.raises(ValueError, match="other settings.*steps"):
        negalign.loop(tiny_settings(talking_model, data, out, steps=3))
    assert os.path.exists(out / "round-2" / "done.json")
