"""Self-sampling on a tiny random-weight Llama: resumable cache, determinism, refusal of a foreign cache."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import negalign.sampling as sampling
from negalign.models import load_tokenizer
from negalign.sampling import SamplingSettings, generate_batch, sample

PROMPTS = [f"Question number {i}: {'why ' * (i % 4)}is the sky blue?" for i in range(7)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


def _rows(path):
    return [json.loads(line) for line in open(path)]


def _settings(**extra):
    return SamplingSettings(**{"k": 3, "max_new_tokens": 6, "batch_size": 2, "seed": 1, **extra})


def test_rows_have_k_samples_per_prompt_and_metadata(tiny, tmp_path):
    model, tokenizer = tiny
    report = sample(model, tokenizer, PROMPTS, tmp_path / "s.jsonl", _settings(), model_id="tiny", progress=False)
    rows = _rows(tmp_path / "s.jsonl")
    assert report.n_rows_written == len(rows) == 21
    pairs = {(r["prompt"][0]["content"], r["sample_index"]) for r in rows}
    assert pairs == {(p, s) for p in PROMPTS for s in range(3)}
    assert all(r["origin"] == "self" for r in rows)
    meta = json.loads((tmp_path / "s.jsonl.meta.json").read_text())
    assert meta["model"] == "tiny" and meta["settings"]["k"] == 3 and meta["settings"]["seed"] == 1


def test_same_seed_same_samples_other_seed_differs(tiny, tmp_path):
    model, tokenizer = tiny
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        sample(model, tokenizer, PROMPTS, tmp_path / f"{name}.jsonl", _settings(seed=seed), progress=False)
        runs[name] = sorted((r["prompt"][0]["content"], r["sample_index"], r["completion"]) for r in _rows(tmp_path / f"{name}.jsonl"))
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_interrupted_run_resumes_to_the_uninterrupted_result(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    sample(model, tokenizer, PROMPTS, tmp_path / "full.jsonl", _settings(), progress=False)
    calls = {"n": 0}
    real = sampling.generate_batch

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sample(model, tokenizer, PROMPTS, tmp_path / "part.jsonl", _settings(), progress=False)
    monkeypatch.setattr(sampling, "generate_batch", real)
    assert len(_rows(tmp_path / "part.jsonl")) == 12  # two batches of 2 prompts x 3 samples
    with open(tmp_path / "part.jsonl", "a") as handle:  # a kill -9 in the middle of a write
        handle.write('{"prompt": [{"role": "user", "cont')
    report = sample(model, tokenizer, PROMPTS, tmp_path / "part.jsonl", _settings(), progress=False)
    assert (report.n_rows_reused, report.n_rows_written) == (12, 9)
    key = lambda r: (r["prompt"][0]["content"], r["sample_index"], r["completion"])  # noqa: E731
    resumed = [key(r) for r in _rows(tmp_path / "part.jsonl")]
    assert len(resumed) == len(set(resumed)) == 21
    assert sorted(resumed) == sorted(key(r) for r in _rows(tmp_path / "full.jsonl"))
    again = sample(model, tokenizer, PROMPTS, tmp_path / "part.jsonl", _settings(), progress=False)
    assert again.n_rows_written == 0


def test_cache_made_with_other_settings_is_refused_or_overwritten(tiny, tmp_path):
    model, tokenizer = tiny
    sample(model, tokenizer, PROMPTS[:2], tmp_path / "s.jsonl", _settings(), model_id="tiny", progress=False)
    with pytest.raises(ValueError, match=r"other settings \(settings differ"):
        sample(model, tokenizer, PROMPTS[:2], tmp_path / "s.jsonl", _settings(temperature=1.0), model_id="tiny",
               progress=False)
    with pytest.raises(ValueError, match="model differ"):
        sample(model, tokenizer, PROMPTS[:2], tmp_path / "s.jsonl", _settings(), model_id="other", progress=False)
    retrained = AutoModelForCausalLM.from_config(model.config).eval()  # same name, other weights
    with pytest.raises(ValueError, match="weights differ"):
        sample(retrained, tokenizer, PROMPTS[:2], tmp_path / "s.jsonl", _settings(), model_id="tiny", progress=False)
    report = sample(model, tokenizer, PROMPTS[:2], tmp_path / "s.jsonl", _settings(k=2), model_id="tiny",
                    overwrite=True, progress=False)
    assert report.n_rows_written == 4 and len(_rows(tmp_path / "s.jsonl")) == 4


def test_shared_prefill_generates_what_plain_generate_does(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             return_dict=False) for p in PROMPTS[:3]]
    ours = generate_batch(model, tokenizer, prompts, _settings(temperature=0.0, k=2, max_new_tokens=5), 0)
    for prompt, answers in zip(prompts, ours):
        plain = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=5, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        assert answers == [plain, plain]
