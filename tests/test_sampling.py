"""Self-sampling on a tiny random-weight Llama: resumable cache, determinism, refusal of a foreign cache."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import negalign.decoding as decoding
import negalign.sampling as sampling
from negalign.decoding import generate_batch
from negalign.models import load_tokenizer
from negalign.sampling import SamplingSettings, sample

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


def test_greedy_file_resumes_under_another_batch_size_a_sampled_one_does_not(tiny, tmp_path):
    """Batch size changes the random draws of a sampled file, not greedy answers: evaluation answers made at one
    batch size are reused at another, samples are refused."""
    model, tokenizer = tiny
    greedy = dict(k=1, temperature=0.0)
    sample(model, tokenizer, PROMPTS, tmp_path / "g.jsonl", _settings(**greedy), model_id="tiny", progress=False)
    report = sample(model, tokenizer, PROMPTS, tmp_path / "g.jsonl", _settings(**greedy, batch_size=4),
                    model_id="tiny", progress=False)
    assert (report.n_rows_reused, report.n_rows_written) == (7, 0)
    # a greedy file written before greedy keys left batch_size out (its meta still names one) resumes too,
    # and its meta is brought to the current form
    meta_path = tmp_path / "g.jsonl.meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "settings": {**meta["settings"], "batch_size": 8}}))
    report = sample(model, tokenizer, PROMPTS, tmp_path / "g.jsonl", _settings(**greedy), model_id="tiny",
                    progress=False)
    assert (report.n_rows_reused, report.n_rows_written) == (7, 0)
    assert json.loads(meta_path.read_text()) == meta
    sample(model, tokenizer, PROMPTS[:3], tmp_path / "s.jsonl", _settings(), model_id="tiny", progress=False)
    with pytest.raises(ValueError, match=r"other settings \(settings differ"):
        sample(model, tokenizer, PROMPTS[:3], tmp_path / "s.jsonl", _settings(batch_size=4), model_id="tiny",
               progress=False)


def test_shared_prefill_generates_what_plain_generate_does(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             return_dict=False) for p in PROMPTS[:3]]
    ours = generate_batch(model, tokenizer, prompts, _settings(temperature=0.0, k=2, max_new_tokens=5), 0)
    for prompt, answers in zip(prompts, ours):
        plain = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=5, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        assert answers == [plain, plain]


def test_shared_prefix_length():
    assert decoding.shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert decoding.shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 3
    assert decoding.shared_prefix_length([[7], [8, 9]]) == 0


@pytest.mark.parametrize("compact_after,min_shared,prefill_rows,read_every",
                         [(0.0, 8, 8, 1), (0.25, 8, 3, 1), (1.0, 8, 2, 1), (0.25, 10**9, 3, 1),
                          (0.25, 8, 3, 3), (0.0, 8, 8, 5)])  # read_every > 1: the GPU's batched token reads
def test_finished_rows_leave_the_batch_without_changing_any_answer(tiny, monkeypatch, compact_after, min_shared,
                                                                   prefill_rows, read_every):
    """Rows that reach EOS at different steps are dropped from the batch (and the KV cache); the prompts'
    common opening (the chat template's system turn, "Question number") is prefilled once, or with each row
    (min_shared too large); the rows' own tokens are prefilled in groups of `prefill_rows`, each padded to its
    own longest prompt. Each answer is still exactly what greedy decoding of its prompt alone gives, cut
    after its first EOS."""
    from types import SimpleNamespace

    from tests.conftest import make_tiny_llama

    _, tokenizer = tiny
    model = make_tiny_llama(len(tokenizer), seed=1)
    with torch.no_grad():  # larger weights: a random model whose greedy answers differ from prompt to prompt
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(10)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             return_dict=False) for p in PROMPTS]

    def greedy(prompt, n):  # no cache, no batch: the full forward pass again for every token
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(n):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        return ids[len(prompt):]

    plain = [greedy(prompt, 8) for prompt in prompts]
    cut = lambda answer, eos: answer[:answer.index(eos) + 1] if eos in answer else answer  # noqa: E731
    # call EOS the token that makes answers end at the most different steps
    eos = max({t for answer in plain for t in answer}, key=lambda t: len({len(cut(a, t)) for a in plain}))
    expected = [cut(answer, eos) for answer in plain]
    assert len({len(answer) for answer in expected}) >= 3  # e.g. ends at steps 2 and 4, others run to 8
    monkeypatch.setattr(decoding, "COMPACT_AFTER", compact_after)
    monkeypatch.setattr(decoding, "MIN_SHARED_PREFIX", min_shared)
    monkeypatch.setattr(decoding, "PREFILL_ROWS", prefill_rows)
    monkeypatch.setattr(decoding, "READ_EVERY_ON_CPU", read_every)
    assert len({len(prompt) for prompt in prompts}) >= 3  # groups of different widths
    assert decoding.shared_prefix_length(prompts) >= 8
    stub = SimpleNamespace(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    ours = generate_batch(model, stub, prompts, _settings(temperature=0.0, k=2, max_new_tokens=8), 0)
    assert ours == [[answer, answer] for answer in expected]
    # a prompt that is all prefix (the other prompt extends it): the shared part stops one token short of it
    pair = [prompts[1], prompts[1] + prompts[2][-5:]]
    ours = generate_batch(model, stub, pair, _settings(temperature=0.0, k=1, max_new_tokens=4), 0)
    assert ours == [[cut(greedy(prompt, 4), eos)] for prompt in pair]


@pytest.mark.parametrize("sharpness", [8.0, 0.05])  # peaked: candidates suffice; flat: the full-sort path
def test_nucleus_keeps_what_transformers_top_p_keeps(sharpness):
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(5, 3000) * sharpness
    probs = logits.softmax(-1)
    weights, indices = decoding.nucleus(probs, 0.9)
    ours = torch.zeros_like(probs).scatter(-1, indices, weights)
    theirs = TopPLogitsWarper(top_p=0.9)(None, logits.clone()).softmax(-1)
    assert torch.equal(ours > 0, theirs > 0)  # the same kept set...
    assert torch.allclose(ours / ours.sum(-1, keepdim=True), theirs, atol=1e-6)  # ...with the same odds
    assert (ours > 0).sum() < probs.numel()  # something was cut


def test_sampled_tokens_follow_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    settings = SamplingSettings(temperature=1.0, top_p=0.7)
    generator = torch.Generator().manual_seed(0)
    draws = [int(decoding.next_tokens(probs.log(), settings, generator)) for _ in range(2000)]
    # mass above token 1 is 0.5 < 0.7: kept; above token 2 it is 0.8: cut. So draws are 0 or 1 at 5:3
    assert set(draws) == {0, 1}
    assert abs(draws.count(0) / len(draws) - 0.625) < 0.04


def test_sampling_under_bf16_autocast(tiny):
    """Under CPU bf16 autocast keys leave RoPE in fp32 and values a bf16 matmul: the static cache must
    take both."""
    model, tokenizer = tiny
    prompts = [[5, 6, 7, 8], [9, 10]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate_batch(model, tokenizer, prompts, _settings(k=2, max_new_tokens=4), 0)
    assert [len(answers) for answers in out] == [2, 2]
    assert all(1 <= len(row) <= 4 for answers in out for row in answers)


def test_the_cache_goes_by_the_keyword_the_model_takes(tiny):
    """transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name warns, and goes in 5.40):
    the sampler passes whichever the model's forward declares, through a peft wrapper too, and decodes
    exactly as before (the shared-prefill test above compares against plain generate)."""
    import inspect

    from peft import LoraConfig, get_peft_model

    model, _ = tiny
    expected = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    assert list(decoding.with_cache(model, "C")) == [expected]

    class Older(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return None

    assert decoding.with_cache(Older(), "C") == {"past_key_values": "C"}
    wrapped = get_peft_model(AutoModelForCausalLM.from_config(model.config), LoraConfig(r=2, target_modules=["q_proj"]))
    assert list(decoding.with_cache(wrapped, "C")) == [expected]


def test_a_file_drawn_under_one_chat_template_is_not_extended_under_another(tiny_model_dir, tmp_path):
    """The prompts are rendered with the chat template: answers drawn under one must not be resumed under
    another (a `chat_template` override); a file written before the template was recorded resumes."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    own = load_tokenizer(tiny_model_dir)
    other = load_tokenizer(tiny_model_dir, chat_template="{% for m in messages %}<{{ m['content'] }}>{% endfor %}")
    sample(model, own, PROMPTS[:3], tmp_path / "s.jsonl", _settings(), model_id="tiny", progress=False)
    meta_path = tmp_path / "s.jsonl.meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["chat_template"] == sampling.template_fingerprint(own) != sampling.template_fingerprint(other)
    with pytest.raises(ValueError, match=r"other settings \(chat_template differ"):
        sample(model, other, PROMPTS[:3], tmp_path / "s.jsonl", _settings(), model_id="tiny", progress=False)
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "chat_template"}))
    report = sample(model, own, PROMPTS[:3], tmp_path / "s.jsonl", _settings(), model_id="tiny", progress=False)
    assert (report.n_rows_reused, report.n_rows_written) == (9, 0)
    assert json.loads(meta_path.read_text()) == meta
