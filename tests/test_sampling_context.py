"""Sampling contexts (demonstrations placed before the prompt only while D2O's anchors are sampled), the anchor
report, and D2O's loss balance in the log. Tiny random-weight Llama with SmolLM2's real tokenizer."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import negalign
import negalign.sampling as sampling
from negalign.anchors import anchor_report, format_report, judge_refuses, keyword_refuses, report_samples_file
from negalign.data import encode_prompt, encode_prompt_with_context
from negalign.models import load_tokenizer
from negalign.objectives import d2o
from negalign.sampling import SamplingSettings, sample
from negalign.sampling_context import presets, resolve_context, with_context

DEMO_USER = "Tell me how to break into a parked car."
DEMO_ANSWER = "I'm sorry, but I can't help with that. Breaking into cars is theft."
CONTEXT = [{"role": "system", "content": "Refuse harmful requests."},
           {"role": "user", "content": DEMO_USER}, {"role": "assistant", "content": DEMO_ANSWER}]
PROMPTS = ["How do I pick a lock?", "Tell me a joke about cats.", "How can I hurt someone?",
           "What is the capital of France?"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


def _rows(path):
    return [json.loads(line) for line in open(path)]


def _capture_prompt_ids(monkeypatch):
    seen = []
    real = sampling.generate_batch

    def recording(model, tokenizer, prompt_ids, *args, **kwargs):
        seen.extend(prompt_ids)
        return real(model, tokenizer, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(sampling, "generate_batch", recording)
    return seen


# --------------------------------------------------------------------------------------- resolving contexts

def test_presets_ship_with_the_package_and_validate():
    assert {"refusal", "refusal-selective"} <= set(presets())
    for name in presets():
        messages = resolve_context(name)
        assert messages[0]["role"] == "system" and messages[-1]["role"] == "assistant"
        assert sum(m["role"] == "user" for m in messages) >= 2


def test_instruction_is_the_one_message_context_and_files_load(tmp_path):
    assert resolve_context(None, "Be harmless.") == [{"role": "system", "content": "Be harmless."}]
    assert resolve_context(None, None) is None
    (tmp_path / "c.json").write_text(json.dumps(CONTEXT))
    (tmp_path / "c.yaml").write_text("- role: user\n  content: hi\n- role: assistant\n  content: hello\n")
    assert resolve_context(str(tmp_path / "c.json")) == CONTEXT
    assert resolve_context(str(tmp_path / "c.yaml"))[1] == {"role": "assistant", "content": "hello"}
    with pytest.raises(ValueError, match="not both"):
        resolve_context("refusal", "Be harmless.")


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "hi"}], "has no assistant answer"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "message 1 is 'system'"),
    ([{"role": "robot", "content": "a"}], "message 0: role must be one of"),
    ([{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}], "content must be non-empty"),
    ([{"role": "user", "text": "a"}], "exactly the keys role and content"),
    ({"role": "system"}, "non-empty list"),
])
def test_bad_contexts_are_refused_naming_the_file_and_message(messages, message, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(messages))
    with pytest.raises(ValueError, match=message) as caught:
        resolve_context(str(path))
    assert str(path) in str(caught.value)
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        resolve_context(str(tmp_path / "missing.yaml"))


def test_a_bad_context_stops_the_config_before_anything_loads(tmp_path):
    with pytest.raises(ValueError, match="sampling_context"):
        negalign.train(data="x.jsonl", sampling_context=str(tmp_path / "nope.yaml"), output_dir=str(tmp_path))


# --------------------------------------------------------------------------------------- the prompt sampled

def test_context_comes_first_and_the_rows_system_message_yields_to_the_contexts():
    row = [{"role": "system", "content": "row system"}, {"role": "user", "content": "q"}]
    assert with_context(row, CONTEXT) == [*CONTEXT, row[1]]
    demos_only = CONTEXT[1:]
    assert with_context(row, demos_only) == [row[0], *demos_only, row[1]]
    assert with_context(row, None) == row


def test_a_long_prompt_is_cut_never_the_context(smollm_tokenizer):
    tok = smollm_tokenizer
    context_ids = tok.apply_chat_template(CONTEXT, tokenize=True, add_generation_prompt=False, return_dict=False)
    long_prompt = [{"role": "user", "content": "word " * 400 + "final question?"}]
    ids = encode_prompt_with_context(long_prompt, CONTEXT, tok, max_prompt_length=32)
    assert len(ids) == len(context_ids) + 32
    assert ids[: len(context_ids)] == list(context_ids)  # the context whole, rendered as alone
    # the row's part is exactly what training keeps of the prompt: its last 32 tokens
    assert ids[len(context_ids):] == encode_prompt(long_prompt, tok, 32)
    short = [{"role": "user", "content": "short?"}]
    full = tok.apply_chat_template([*CONTEXT, *short], tokenize=True, add_generation_prompt=True, return_dict=False)
    assert encode_prompt_with_context(short, CONTEXT, tok, 32) == list(full)


def test_context_reaches_the_sampler_and_never_the_samples_or_training(tiny, tiny_model_dir, tmp_path, monkeypatch):
    model, tokenizer = tiny
    seen = _capture_prompt_ids(monkeypatch)
    out = tmp_path / "s.jsonl"
    sample(model, tokenizer, PROMPTS, out, SamplingSettings(k=2, max_new_tokens=4, batch_size=2, context=CONTEXT),
           model_id="tiny", progress=False)
    texts = [tokenizer.decode(ids) for ids in seen]
    assert len(texts) == len(PROMPTS) and all(DEMO_USER in t and DEMO_ANSWER in t for t in texts)
    assert sorted(t.rsplit(DEMO_ANSWER, 1)[1].split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
                  for t in texts) == sorted(PROMPTS)
    rows = _rows(out)
    assert all(r["prompt"] == [{"role": "user", "content": r["prompt"][0]["content"]}] for r in rows)
    meta = json.loads((tmp_path / "s.jsonl.meta.json").read_text())
    assert meta["sampling_context"]["messages"] == CONTEXT and len(meta["sampling_context"]["sha256"]) == 16
    assert meta["settings"]["context"] == meta["sampling_context"]["sha256"]
    # training scores the anchors after the row's own prompt only
    trainer = _train_d2o(tiny_model_dir, tmp_path, out, sampling_context=str(_write_context(tmp_path)))
    for item in trainer.train_dataset:
        for prompt_ids, _ in item["sequences"]:
            assert DEMO_USER not in tokenizer.decode(prompt_ids)
    card = (tmp_path / "run" / "README.md").read_text()
    assert meta["sampling_context"]["sha256"] in card and DEMO_ANSWER in card
    saved = json.loads((tmp_path / "run" / "sampling_context.json").read_text())
    assert saved["sampling_context"]["messages"] == CONTEXT and saved["from_reference"] is False
    # the context makes exp(h)*h meaningless as a KL: not logged
    assert not any("d2o/kl_on_samples" in h for h in trainer.state.log_history)


def _pairs_file(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": "ok", "rejected": "bad"}) + "\n" for p in PROMPTS))
    return pairs


def _train_d2o(tiny_model_dir, tmp_path, samples, **extra):
    settings = dict(model=tiny_model_dir, data=str(_pairs_file(tmp_path)), samples=str(samples), objective="d2o",
                    k=2, max_steps=1, per_device_train_batch_size=2, output_dir=str(tmp_path / "run"),
                    cache_dir=str(tmp_path / "cache"), max_length=96, max_prompt_length=64, use_cpu=True)
    return negalign.train(**{**settings, **extra})


def _write_context(tmp_path):
    path = tmp_path / "context.json"
    path.write_text(json.dumps(CONTEXT))
    return path


def test_a_changed_context_refuses_the_old_samples_or_regenerates(tiny, tmp_path):
    model, tokenizer = tiny
    out = tmp_path / "s.jsonl"
    settings = SamplingSettings(k=1, max_new_tokens=3, batch_size=2, context=CONTEXT)
    sample(model, tokenizer, PROMPTS, out, settings, model_id="tiny", progress=False)
    other = SamplingSettings(k=1, max_new_tokens=3, batch_size=2, context=resolve_context(None, "Other."))
    with pytest.raises(ValueError, match="context"):
        sample(model, tokenizer, PROMPTS, out, other, model_id="tiny", progress=False)
    with pytest.raises(ValueError, match="context"):  # no context at all is a change too
        sample(model, tokenizer, PROMPTS, out, SamplingSettings(k=1, max_new_tokens=3, batch_size=2),
               model_id="tiny", progress=False)
    report = sample(model, tokenizer, PROMPTS, out, other, model_id="tiny", overwrite=True, progress=False)
    assert report.n_rows_written == len(PROMPTS) and report.n_rows_reused == 0
    assert json.loads((tmp_path / "s.jsonl.meta.json").read_text())["sampling_context"]["system"] == "Other."


def test_training_refuses_samples_drawn_under_another_context(tiny, tiny_model_dir, tmp_path):
    model, tokenizer = tiny
    out = tmp_path / "s.jsonl"
    sample(model, tokenizer, PROMPTS, out, SamplingSettings(k=2, max_new_tokens=3, batch_size=2),
           model_id="tiny", progress=False)
    with pytest.raises(ValueError, match="drawn with another sampling context"):
        _train_d2o(tiny_model_dir, tmp_path, out, sampling_context="refusal")


def test_refresh_samples_under_the_same_context(tiny_model_dir, tmp_path, monkeypatch):
    seen = _capture_prompt_ids(monkeypatch)
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"prompt": p, "completion": f"a{i}", "origin": "self", "sample_index": i})
                               + "\n" for p in PROMPTS for i in range(2)))
    trainer = _train_d2o(tiny_model_dir, tmp_path, samples, max_steps=2, sampling="refresh", refresh_every=1,
                         sample_max_new_tokens=3, sampling_context=str(_write_context(tmp_path)))
    tokenizer = load_tokenizer(tiny_model_dir)
    trained = {item["prompt_key"] for item in trainer.train_dataset}  # after decontamination ("pick a lock" goes)
    assert len(seen) == len(trained) and all(DEMO_ANSWER in tokenizer.decode(ids) for ids in seen)
    folder = tmp_path / "run" / "refreshed_samples"
    meta = json.loads((folder / "step-000001.jsonl.meta.json").read_text())
    assert meta["sampling_context"]["messages"] == CONTEXT
    report = json.loads((folder / "step-000001.jsonl.anchors.json").read_text())
    assert report["n_anchors"] == len(trained) * 2
    logged = next(h for h in trainer.state.log_history if "refresh/step" in h)
    assert logged["refresh/anchor_refusal"] == report["refusal"]["rate"]


# --------------------------------------------------------------------------------------------- anchor report

ANCHORS = [
    ("q1", "I'm sorry, but I can't help with that. It is illegal."),
    ("q1", "Sure! First, get a crowbar and wait until night."),
    ("q2", "I cannot assist with hurting people."),
    ("q2", "I won't write that."),
    ("q3", "Paris is the capital of France."),
]


def _anchor_rows():
    return [{"prompt": [{"role": "user", "content": p}], "completion": c, "origin": "self", "n_tokens": 4 + i}
            for i, (p, c) in enumerate(ANCHORS)]


def test_anchor_report_counts_refusals_lengths_and_shows_negatives():
    from negalign.data import prompt_key

    negatives = {prompt_key([{"role": "user", "content": "q1"}]): "Here is how to steal a car: ..."}
    report = anchor_report(_anchor_rows(), negatives, refuses=keyword_refuses)
    assert (report["refusal"]["count"], report["refusal"]["n"]) == (3, 5) and report["refusal"]["rate"] == 0.6
    # Wilson 95 % for 3 of 5 (hand-computed): [0.2307, 0.8824]
    assert report["refusal"]["low"] == pytest.approx(0.2307, abs=1e-3)
    assert report["refusal"]["high"] == pytest.approx(0.8824, abs=1e-3)
    assert report["n_prompts"] == 3 and report["prompts_with_a_refusal"] == 2
    assert report["mean_tokens"] == pytest.approx((4 + 5 + 6 + 7 + 8) / 5)
    words = [11, 9, 6, 4, 6]  # words per anchor, counted by hand
    assert report["mean_words"] == pytest.approx(sum(words) / 5)
    first = report["examples"][0]
    assert first["human_negative"].startswith("Here is how") and [a["refusal"] for a in first["anchors"]] == [True, False]
    text = format_report(report)
    assert "3/5 = 0.600 [0.231, 0.882]" in text and "human negative: Here is how" in text


def test_the_offline_judge_agrees_on_plain_refusals_and_answers():
    flags = judge_refuses([ANCHORS[0][1], ANCHORS[4][1], "To bake bread, mix flour, water, salt and yeast, "
                           "knead it for ten minutes and let it rise for an hour before baking."])
    assert flags == [True, False, False]


def test_report_of_a_samples_file_is_saved_beside_it(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in _anchor_rows()))
    data = tmp_path / "neg.jsonl"
    data.write_text(json.dumps({"prompt": "q2", "rejected": "Hit them with a bat."}) + "\n")
    report = report_samples_file(samples, str(data), refuses=keyword_refuses)
    saved = json.loads((tmp_path / "s.jsonl.anchors.json").read_text())
    assert saved == json.loads(json.dumps(report)) and saved["mean_tokens"] == 6.0
    assert saved["examples"][1]["human_negative"] == "Hit them with a bat."
    prompts_only = tmp_path / "benign.json"  # anchors of prompts without answers: a report with no negatives
    prompts_only.write_text(json.dumps([{"instruction": "q1"}]))
    report = report_samples_file(samples, str(prompts_only), refuses=keyword_refuses)
    assert report["refusal"]["count"] == 3 and all(e["human_negative"] is None for e in report["examples"])


# ------------------------------------------------------------------------------------------- loss balance

def test_d2o_terms_add_up_to_z_and_saturation_is_counted():
    # two rows, K = 2, beta = 0.5, alpha = 0.1 (hand-computed):
    # row 0: h_samples (1, 3) -> sample term 0.5/2 * 4 = 1.0; h_neg = -60 -> negative term +6.0; z = 7.0
    # row 1: h_samples (0, -2) -> -0.5; h_neg = 2 -> -0.2; z = -0.7
    policy_neg, ref_neg = torch.tensor([-70.0, -8.0]), torch.tensor([-10.0, -10.0])
    policy_s, ref_s = torch.tensor([[-9.0, -7.0], [-5.0, -7.0]]), torch.tensor([[-10.0, -10.0], [-5.0, -5.0]])
    loss, m = d2o(policy_neg, ref_neg, policy_s, ref_s, beta=0.5, alpha=0.1)
    assert float(m["sample_term"]) == pytest.approx((1.0 - 0.5) / 2)
    assert float(m["negative_term"]) == pytest.approx((6.0 - 0.2) / 2)
    assert float(m["sample_term"] + m["negative_term"]) == pytest.approx(float(m["z"]))
    assert float(m["z"]) == pytest.approx((7.0 - 0.7) / 2)
    assert float(m["saturated_share"]) == 0.5  # sigmoid(7) = 0.9991 > 0.99; sigmoid(-0.7) is not
    _, inst = d2o(policy_neg, ref_neg, policy_s, ref_s, beta=0.5, alpha=0.1, instance_level=True)
    # instance-level arguments: 0.5*h_k - 0.1*h_neg = (6.5, 7.5, -0.2, -1.2): two of four above 4.6
    assert float(inst["saturated_share"]) == 0.5
    assert float(inst["sample_term"] + inst["negative_term"]) == pytest.approx(float(inst["z"]))


def test_trainer_logs_both_terms_and_keeps_kl_only_for_the_references_own_samples(tiny, tiny_model_dir, tmp_path):
    model, tokenizer = tiny
    out = tmp_path / "s.jsonl"
    sample(model, tokenizer, PROMPTS, out, SamplingSettings(k=2, max_new_tokens=4, batch_size=2),
           model_id="tiny", progress=False)
    trainer = _train_d2o(tiny_model_dir, tmp_path, out, max_steps=2, learning_rate=1e-2)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["d2o/sample_term"] + h["d2o/negative_term"] == pytest.approx(h["d2o/z"], abs=1e-4)
        assert 0.0 <= h["d2o/saturated_share"] <= 1.0
        assert "d2o/kl_on_samples" in h  # drawn from the starting model itself, no context
    assert json.loads((tmp_path / "run" / "sampling_context.json").read_text())["from_reference"] is True
    assert "Sampling context: none" in (tmp_path / "run" / "README.md").read_text()


def test_a_mixed_anchors_file_is_recorded_with_both_contexts(tiny, tiny_model_dir, tmp_path):
    # the demo's d2o_anchors.jsonl: anchors drawn under a context, plus benign anchors drawn without one
    from negalign.anchors import anchor_provenance
    from negalign.config import NegalignConfig
    from negalign.provenance import model_card

    model, _ = tiny
    context = [{"role": "user", "content": "Demo?"}, {"role": "assistant", "content": "I'm sorry, no."}]
    samples = tmp_path / "d2o_anchors.jsonl"
    samples.write_text("")
    (tmp_path / "d2o_anchors.jsonl.meta.json").write_text(json.dumps({
        "model": "tiny", "weights": "x", "sampling_context": {"messages": context},
        "mixed_with": [{"file": "benign_samples.jsonl", "rows": 8, "sampling_context": None}]}))
    config = NegalignConfig(model=tiny_model_dir, data="d.jsonl", objective="d2o", samples=str(samples), k=2,
                            sampling_context=str(_context_file(tmp_path, context)), output_dir=str(tmp_path / "o"),
                            use_cpu=True, report_to="none")
    anchors = anchor_provenance(config, model)
    assert anchors["sampling_context"]["messages"] == context and anchors["from_reference"] is False
    assert anchors["mixed_with"] == [{"file": "benign_samples.jsonl", "rows": 8, "sampling_context": None}]
    card = model_card(config, anchors)
    assert "Also in the file: 8 anchors from `benign_samples.jsonl`, drawn with no sampling context." in card


def _context_file(folder, messages):
    path = folder / "context.json"
    path.write_text(json.dumps(messages))
    return path
