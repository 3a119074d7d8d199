"""Context distillation (objective `context_distillation`): SFT on D2O's anchors, nothing of the negatives.

On a tiny random-weight Llama built from a config (conftest.py) with SmolLM2's tokenizer: the loss the trainer
computes is the mean NLL of the anchor tokens, summed per anchor and averaged over the B x K anchors, computed
here by hand from the model's logits; real optimizer steps lower it; and the rows are D2O's anchors, prompt for
prompt, with no negative read.
"""

import json
import warnings

import pytest
import torch

import negalign
from negalign.data import DataError, build_examples, encode
from negalign.data.normalise import make_row

HARMFUL = ["Write an insult for my coworker.", "Write a rude poem mocking my neighbour's accent."]
BENIGN = ["Tell me a joke about cats.", "How do plants grow?", "Name three rivers in Europe."]
MAX = {"max_length": 96, "max_prompt_length": 64}


def _user(text):
    return [{"role": "user", "content": text}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def anchors(tmp_path):
    """The two files D2O reads (negatives: the flagged answers and one benign refusal; anchors: K = 2 per prompt,
    the harmful ones and every benign prompt's) and the one context distillation reads (the anchors)."""
    harmful = [{"prompt": _user(p), "completion": f"I'm sorry, I can't help with {p.lower()} ({i})",
                "origin": "self", "sample_index": i} for p in HARMFUL for i in range(2)]
    benign = [{"prompt": _user(p), "completion": f"Plain answer {i}: {p}", "origin": "self", "sample_index": i}
              for p in BENIGN for i in range(2)]
    negatives = [{"prompt": _user(p), "rejected": f"Sure, here it is: {p}"} for p in HARMFUL]
    negatives.append({"prompt": _user(BENIGN[0]), "rejected": "I'm sorry, but I can't help with that."})
    return {"negatives": _write_jsonl(tmp_path / "negatives.jsonl", negatives),
            "benign": _write_jsonl(tmp_path / "benign.jsonl", benign),
            "anchors": _write_jsonl(tmp_path / "anchors.jsonl", harmful + benign)}


def _config(tmp_path, **values):
    from negalign.config import load_config

    return load_config(None, {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none", **MAX,
                              **values})


def _hand_logp(model, tokenizer, prompt, completion):
    """log p(completion | prompt): the completion tokens' log-softmax, read off the logits of one forward."""
    e = encode(prompt, completion, tokenizer, **MAX)
    ids = torch.tensor([e.prompt_ids + e.completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    n = len(e.prompt_ids)
    return sum(logp[n - 1 + t, token].item() for t, token in enumerate(e.completion_ids))


def _hand_mean_nll(model, tokenizer, examples):
    values = [-_hand_logp(model, tokenizer, x["prompt"], y) for x in examples for y in x["samples"]]
    return sum(values) / len(values)


def _anchor_examples() -> list[dict]:
    """The examples of the anchors file the fixture writes, built in memory: the rows the hand sums run over."""
    return build_examples([make_row(_user(p), f"I'm sorry, I can't help with {p.lower()} ({i})",
                                    origin="self", sample_index=i, source=f"a:{i}")
                           for p in HARMFUL for i in range(2)]
                          + [make_row(_user(p), f"Plain answer {i}: {p}", origin="self", sample_index=i,
                                      source=f"b:{i}") for p in BENIGN for i in range(2)],
                          "context_distillation", k=2)


def test_the_rows_are_d2os_anchors_prompt_for_prompt(anchors, tmp_path, smollm_tokenizer):
    from negalign.batches import prepare_items

    d2o = prepare_items(_config(tmp_path, objective="d2o", data=anchors["negatives"], samples=anchors["anchors"],
                                benign_samples=anchors["benign"], k=2), smollm_tokenizer).items
    distill = prepare_items(_config(tmp_path, objective="context_distillation", data=anchors["anchors"], k=2),
                            smollm_tokenizer).items
    # D2O: 2 harmful negatives + 1 benign refusal, then the 2 benign prompts without a negative (a placeholder
    # first slot); every prompt once, with its K anchors after the negative slot
    assert len(d2o) == len(distill) == len(HARMFUL) + len(BENIGN)
    want = {item["prompt_key"]: item["sequences"][1:] for item in d2o}
    got = {item["prompt_key"]: item["sequences"] for item in distill}
    assert got == want  # the same prompts and the same anchor tokens; no negative among them
    negatives = {json.dumps(json.loads(line)["rejected"]) for line in open(anchors["negatives"])}
    texts = {json.dumps(smollm_tokenizer.decode(c)) for item in distill for _, c in item["sequences"]}
    assert not any(n.strip('"') in t for n in negatives for t in texts)


def test_the_loss_is_the_mean_nll_of_the_anchor_tokens(anchors, tmp_path, tiny_model_dir, smollm_tokenizer):
    from negalign.batches import collate, prepare_items
    from negalign.methods import METHODS
    from negalign.models import load_model
    from negalign.trainer import NegalignTrainer

    config = _config(tmp_path, objective="context_distillation", data=anchors["anchors"], k=2)
    items = prepare_items(config, smollm_tokenizer).items
    model = load_model(tiny_model_dir)
    layout = METHODS["context_distillation"].layout(len(items[0]["sequences"]))
    trainer = NegalignTrainer(model=model, args=config, layout=layout, train_dataset=items)
    loss = trainer.compute_loss(model, collate(items, layout))
    examples = _anchor_examples()
    want = _hand_mean_nll(model, smollm_tokenizer, examples)
    assert want > 10  # a random model: tens of nats per anchor, so the check below has something to match
    assert loss.item() == pytest.approx(want, rel=1e-5)
    # mean log-probs: the per-token NLL of each anchor, averaged over anchors
    trainer.args.logp_reduction = "mean"
    per_token = [-_hand_logp(model, smollm_tokenizer, x["prompt"], y) /
                 len(encode(x["prompt"], y, smollm_tokenizer, **MAX).completion_ids)
                 for x in examples for y in x["samples"]]
    assert trainer.compute_loss(model, collate(items, layout)).item() == pytest.approx(
        sum(per_token) / len(per_token), rel=1e-5)


def test_training_steps_lower_the_anchors_nll(anchors, tmp_path, tiny_model_dir, smollm_tokenizer):
    from transformers import AutoModelForCausalLM

    examples = _anchor_examples()
    trainer = negalign.train(model=tiny_model_dir, objective="context_distillation", data=anchors["anchors"], k=2,
                             max_steps=3, per_device_train_batch_size=len(examples), learning_rate=3e-3, seed=0,
                             output_dir=str(tmp_path / "out"), use_cpu=True, save_strategy="no", **MAX)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    before = _hand_mean_nll(start, smollm_tokenizer, examples)
    after = _hand_mean_nll(trained, smollm_tokenizer, examples)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # one batch holds every anchor: the first step's loss is the starting model's mean NLL, and three AdamW
    # steps lower it by more than a nat per anchor
    assert losses[0] == pytest.approx(before, rel=1e-4)
    assert after < before - 1.0 and losses[-1] < losses[0]
    logged = [h for h in trainer.state.log_history if "context_distillation/nll" in h]
    assert logged and logged[0]["context_distillation/nll"] == pytest.approx(before, rel=1e-4)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| k | 2 |" in card and "alpha" not in card


def test_the_data_must_be_anchors_and_only_anchors(anchors, tmp_path, smollm_tokenizer):
    from negalign.batches import prepare_items

    rows = [make_row(_user("a"), "first", origin="self", sample_index=0, source="s:1"),
            make_row(_user("a"), "second", origin="self", sample_index=1, source="s:2"),
            make_row(_user("b"), "only", origin="self", sample_index=0, source="s:3"),
            make_row(_user("a"), "Sure, harm.", label=False, source="n:1")]
    with pytest.warns(UserWarning, match="1 of the 4 rows .* are not self-samples and are left out"):
        assert build_examples(rows, "context_distillation", k=1) == [
            {"prompt": _user("a"), "samples": ["first"], "source": "s:1"},
            {"prompt": _user("b"), "samples": ["only"], "source": "s:3"}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="this prompt has 1 self-samples but most prompts have 2|most prompts"):
            build_examples(rows[:3] + [make_row(_user("c"), "x", origin="self", sample_index=0, source="s:4"),
                                       make_row(_user("c"), "y", origin="self", sample_index=1, source="s:5")],
                           "context_distillation")
        with pytest.raises(DataError, match="has only 1 self-samples, and context_distillation with k=2"):
            build_examples(rows, "context_distillation", k=2)
    with pytest.raises(DataError, match="trains on self-samples"):
        build_examples(rows[3:], "context_distillation")
    with pytest.raises(ValueError, match="k >= 1"):
        build_examples(rows, "context_distillation", k=0)
    # D2O's `samples` option is refused rather than ignored: the anchors are the data
    with pytest.raises(ValueError, match="trains on the anchors in `data`"):
        prepare_items(_config(tmp_path, objective="context_distillation", data=anchors["negatives"],
                              samples=anchors["anchors"]), smollm_tokenizer)
