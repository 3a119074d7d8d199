"""D2O with only some of its negatives (docs/quality.md, "Which negatives matter"): the flagged prompts as
anchor-only rows beside the benign refusals' negatives, read from one anchors file as `benign_samples`; and
why it cuts more harm: a row whose negative has been pushed down saturates, and its anchors stop being
pulled, where an anchor-only row keeps pulling. Gradients worked out by hand; rows built with SmolLM2's
tokenizer (no model)."""

import json
import math

import pytest
import torch

from negalign.objectives import d2o

HARMFUL = ["Write an insult for my coworker.", "Write a rude poem mocking my neighbour's accent."]
BENIGN = ["Tell me a joke about cats.", "How do plants grow?", "Name three rivers in Europe."]


def _user(text):
    return [{"role": "user", "content": text}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def files(tmp_path):
    anchors = [{"prompt": _user(p), "completion": f"I'm sorry, I can't help with {p.lower()} ({i})",
                "origin": "self", "sample_index": i} for p in HARMFUL for i in range(2)]
    anchors += [{"prompt": _user(p), "completion": f"Plain answer {i}: {p}", "origin": "self", "sample_index": i}
                for p in BENIGN for i in range(2)]
    harmful = [{"prompt": _user(p), "rejected": f"Sure, here it is: {p}"} for p in HARMFUL]
    refusal = [{"prompt": _user(BENIGN[0]), "rejected": "I'm sorry, but I can't help with that."}]
    return {"both": _write_jsonl(tmp_path / "both.jsonl", harmful + refusal),
            "refusals": _write_jsonl(tmp_path / "refusals.jsonl", refusal),
            "anchors": _write_jsonl(tmp_path / "anchors.jsonl", anchors),
            "benign": _write_jsonl(tmp_path / "benign.jsonl", anchors[4:])}


def _items(tmp_path, tokenizer, **values):
    from negalign.batches import prepare_items
    from negalign.config import load_config

    config = load_config(None, {"output_dir": str(tmp_path / "out"), "use_cpu": True, "report_to": "none",
                                "objective": "d2o", "k": 2, "max_length": 96, "max_prompt_length": 64, **values})
    return prepare_items(config, tokenizer).items


def test_only_the_benign_refusals_as_negatives_keeps_every_prompt_and_anchor(files, tmp_path, smollm_tokenizer):
    both = _items(tmp_path, smollm_tokenizer, data=files["both"], samples=files["anchors"],
                  benign_samples=files["benign"])
    only = _items(tmp_path, smollm_tokenizer, data=files["refusals"], samples=files["anchors"],
                  benign_samples=files["anchors"])
    # the same five prompts with the same K anchors: equal rows, so equal compute at equal steps
    assert len(both) == len(only) == len(HARMFUL) + len(BENIGN)
    assert ({i["prompt_key"]: i["sequences"][1:] for i in both} == {i["prompt_key"]: i["sequences"][1:] for i in only})
    # only the refused benign prompt has a negative; the flagged prompts are anchor-only rows
    with_negative = [i["prompt"][-1]["content"] for i in only if i.get("has_negative", True)]
    assert with_negative == [BENIGN[0]]
    assert sorted(i["prompt"][-1]["content"] for i in both if i.get("has_negative", True)) == sorted(
        HARMFUL + [BENIGN[0]])


def test_a_pushed_down_negative_starves_the_anchors_pull_and_an_anchor_only_row_does_not():
    # one row, K = 2, beta = alpha = 0.1; the anchors at the reference (h_k = 0), the flagged answer pushed down
    # 40 nats below it (h_l = -40). loss = -logsigmoid(z), z = (beta/K) sum_k h_k - alpha h_l, so
    # d loss / d h_k = -(beta/K) (1 - sigmoid(z)): with the negative z = 4, without it z = 0
    beta, alpha = 0.1, 0.1
    grads = {}
    for has_negative in (True, False):
        samples = torch.zeros(1, 2, requires_grad=True)
        loss, metrics = d2o(torch.tensor([-40.0]), torch.tensor([0.0]), samples, torch.zeros(1, 2), beta=beta,
                            alpha=alpha, has_negative=torch.tensor([has_negative]))
        loss.backward()
        grads[has_negative] = samples.grad[0, 0].item()
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert grads[True] == pytest.approx(-(beta / 2) * (1 - sigmoid(4.0)), rel=1e-5)  # -0.00090
    assert grads[False] == pytest.approx(-(beta / 2) * 0.5, rel=1e-5)  # -0.025: 28 times the pull
    assert grads[False] / grads[True] > 25
