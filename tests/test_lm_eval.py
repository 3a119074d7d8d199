"""Standard benchmarks through lm-evaluation-harness (negalign/evaluation/harness.py), offline: tasks defined by YAMLs
this file writes over local jsonl files, run on a tiny random-weight Llama object, and their accuracy and
perplexity checked against the same model's log-likelihoods computed here by hand."""

import json
import math
import random

import numpy as np
import pytest
import torch

from negalign.evaluation import harness

QUESTIONS = [
    {"question": "What colour is the sky on a clear day?", "choices": ["blue", "green", "red"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight"], "answer": 1},
    {"question": "Which is a fruit?", "choices": ["carrot", "potato", "apple", "onion"], "answer": 2},
    {"question": "What do bees make?", "choices": ["milk", "honey", "silk"], "answer": 1},
    {"question": "Which planet is closest to the Sun?", "choices": ["Mercury", "Venus", "Mars", "Earth"], "answer": 0},
    {"question": "What is frozen water called?", "choices": ["steam", "ice"], "answer": 1},
]
SENTENCES = [  # a loglikelihood task: the continuation's probability given the context
    {"context": "The capital of France is", "target": " Paris"},
    {"context": "One plus one equals", "target": " two"},
    {"context": "Water boils at a hundred degrees", "target": " Celsius"},
    {"context": "The opposite of hot is", "target": " cold"},
]


@pytest.fixture()
def offline(monkeypatch):
    """Nothing reaches the Hub: the environment and the flags datasets and huggingface_hub read at import."""
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(datasets.config, name, True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture()
def local_tasks(tmp_path):
    """A folder of task YAMLs over local jsonl files (lm-eval reads them with datasets' json builder)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tmp_path / "quiz.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tmp_path / "sentences.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SENTENCES))
    (tasks / "tiny_quiz.yaml").write_text(f"""\
task: tiny_quiz
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / "quiz.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    (tasks / "tiny_sentences.yaml").write_text(f"""\
task: tiny_sentences
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / "sentences.jsonl"}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
""")
    return str(tasks)


@pytest.fixture(scope="module")
def tiny(smollm_tokenizer):
    from tests.conftest import make_tiny_llama

    return make_tiny_llama(len(smollm_tokenizer), seed=3), smollm_tokenizer


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of the continuation's token log-probs given the context: the context and the whole text tokenized
    alone, the continuation being the whole text's tokens after the context's (how lm-eval splits them)."""
    context_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    assert whole[:len(context_ids)] == context_ids
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole)))


def test_multiple_choice_accuracy_is_the_models_own(tiny, local_tasks, offline):
    """A 6-question multiple-choice task over a local file: lm-eval's acc and acc_norm are what the model's
    log-likelihoods of each choice (" " + choice after "Question: ...\\nAnswer:") give, computed here."""
    pytest.importorskip("lm_eval", reason=harness.INSTALL)
    model, tokenizer = tiny
    right, right_norm = [], []
    for q in QUESTIONS:
        context = f"Question: {q['question']}\nAnswer:"
        scores = [_loglikelihood(model, tokenizer, context, " " + choice) for choice in q["choices"]]
        normed = [s / len(" " + c) for s, c in zip(scores, q["choices"])]  # acc_norm: per byte of the choice
        right.append(int(np.argmax(scores)) == q["answer"])
        right_norm.append(int(np.argmax(normed)) == q["answer"])
    expected, expected_norm = np.mean(right), np.mean(right_norm)

    state = random.getstate(), torch.get_rng_state()
    result = harness.run_lm_eval(model, tokenizer, ["tiny_quiz"], include_path=local_tasks, batch_size=4)

    quiz = result["tasks"]["tiny_quiz"]
    assert quiz["metrics"]["acc"]["value"] == pytest.approx(expected)
    assert quiz["metrics"]["acc_norm"]["value"] == pytest.approx(expected_norm)
    n = len(QUESTIONS)  # accuracy's standard error: lm-eval's closed form, sqrt(p(1-p)/(n-1))
    assert quiz["metrics"]["acc"]["stderr"] == pytest.approx(math.sqrt(expected * (1 - expected) / (n - 1)))
    assert quiz["n"] == quiz["n_total"] == n and quiz["num_fewshot"] == 0
    assert quiz["higher_is_better"] == {"acc": True, "acc_norm": True}
    assert result["lm_eval_version"] and result["requested"] == ["tiny_quiz"]
    json.dumps(result, allow_nan=False)  # eval.json is strict JSON
    # simple_evaluate seeds the global generators: the caller's states come back
    assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[1])
    assert not model.training


def test_loglikelihood_perplexity_and_limit(tiny, local_tasks, offline):
    """A loglikelihood task: lm-eval's perplexity is exp(-mean log-likelihood) of the targets, the number computed
    here; with limit=3 only the first three documents are scored. Two tasks run in one call."""
    pytest.importorskip("lm_eval", reason=harness.INSTALL)
    model, tokenizer = tiny
    scores = [_loglikelihood(model, tokenizer, s["context"], s["target"]) for s in SENTENCES[:3]]

    result = harness.run_lm_eval(model, tokenizer, ["tiny_sentences", "tiny_quiz"], include_path=local_tasks,
                                 limit=3, batch_size=2)

    sentences = result["tasks"]["tiny_sentences"]
    assert sentences["metrics"]["perplexity"]["value"] == pytest.approx(math.exp(-np.mean(scores)), rel=1e-4)
    assert sentences["metrics"]["perplexity"]["stderr"] is not None  # bootstrapped, in this process
    assert sentences["n"] == 3 and sentences["n_total"] == len(SENTENCES)
    assert result["tasks"]["tiny_quiz"]["n"] == 3 and result["settings"]["limit"] == 3


def test_unknown_task_and_missing_data_say_what_to_do(tiny, local_tasks, offline, tmp_path):
    """An unknown name and a task whose data cannot be loaded (its local file gone; a Hub data set offline)
    end in one line: a ValueError, which `negalign` prints and exits 2 on."""
    pytest.importorskip("lm_eval", reason=harness.INSTALL)
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="lm-eval task 'no_such_task' is not in lm-eval's tasks or"):
        harness.run_lm_eval(model, tokenizer, ["no_such_task"], include_path=local_tasks)
    (tmp_path / "quiz.jsonl").unlink()
    with pytest.raises(ValueError, match="lm-eval task 'tiny_quiz': its data set could not be loaded .*"
                                         "downloadable from the Hugging Face Hub, or given locally") as caught:
        harness.run_lm_eval(model, tokenizer, ["tiny_quiz"], include_path=local_tasks)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="no such folder"):
        harness.run_lm_eval(model, tokenizer, ["tiny_quiz"], include_path=str(tmp_path / "nowhere"))


def test_hub_task_offline_says_the_data_must_be_downloadable_or_local(tiny, offline):
    """arc_easy is one of lm-eval's own tasks; its data set is on the Hub, which is not reached offline."""
    pytest.importorskip("lm_eval", reason=harness.INSTALL)
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="lm-eval task 'arc_easy': its data set could not be loaded .*Hub"):
        harness.run_lm_eval(model, tokenizer, ["arc_easy"])


def test_without_lm_eval_one_line_says_what_to_install(monkeypatch):
    """Without lm-eval installed, asking for tasks is refused in one line naming the extra; asking for none is not."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ValueError, match=r"lm-eval is not installed: install negalign\[harness\] \(pip install lm-eval\)"):
        harness.check_lm_eval(["mmlu"])
    harness.check_lm_eval([])  # no tasks: nothing to check


def test_report_section_one_row_per_task_and_metric():
    """The report's table: a row per requested task and metric (a group's subtasks left out), a column per model,
    "-" where a model has no result; no section when no run has lm-eval results."""
    def entry(acc, n):
        return {"lm_eval_version": "0.4.13", "requested": ["mmlu", "gsm8k"], "tasks": {
            "mmlu": {"metrics": {"acc": {"value": acc, "stderr": 0.004}}, "n": n, "higher_is_better": {"acc": True},
                     "subtasks": ["mmlu_stem"]},
            "mmlu_stem": {"metrics": {"acc": {"value": 0.3, "stderr": 0.01}}, "n": 10},
            "gsm8k": {"metrics": {"exact_match,strict-match": {"value": 0.05, "stderr": None}}, "n": n,
                      "higher_is_better": {"exact_match": True}}}}

    lines = harness.markdown_section([("start", entry(0.3012, 14042)), ("d2o", entry(0.2987, 14042)), ("npo", None)])
    table = "\n".join(lines)
    assert "| task | metric | start | d2o | npo |" in table
    assert "| mmlu | acc ↑ | 0.301 ± 0.004 (n=14042) | 0.299 ± 0.004 (n=14042) | - |" in table
    assert "| gsm8k | exact_match,strict-match ↑ | 0.050 (n=14042) | 0.050 (n=14042) | - |" in table
    assert "mmlu_stem" not in table and "lm-eval 0.4.13" in table
    assert harness.markdown_section([("start", None)]) == []
