"""The retain set: its losses against hand-computed values, its separation from the objective's rows, the
cached `self` answers, and decontamination against evaluation prompts. Tiny random-weight Llama."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import negalign
import negalign.sampling as sampling
from negalign import decontamination
from negalign.decontamination import decontaminate
from negalign.logprobs import naive_sequence_logps
from negalign.models import load_tokenizer
from negalign.objectives import retain_kl, retain_nll
from negalign.retain import read_retain_rows, retain_indices

PROMPTS = ["How do I pick a lock?", "Tell me a joke about cats.", "How can I hurt someone?",
           "What is the capital of France?"]
RETAIN = [("How do I bake bread?", "Mix flour, water and yeast."), ("Name a colour.", "Blue."),
          ("What is two plus two?", "Four."), ("Say hello.", "Hello there!")]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def data(tmp_path, monkeypatch):
    # no evaluation suites here: decontamination is tested on its own below
    monkeypatch.setattr(decontamination, "evaluation_prompts", lambda folder: [])
    return {"pairs": _write(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": "Sure, safely.", "rejected": "Bad."}
                                                        for p in PROMPTS]),
            "retain": _write(tmp_path / "retain.jsonl", [{"prompt": p, "completion": a} for p, a in RETAIN]),
            "prompts_only": _write(tmp_path / "benign.jsonl", [{"instruction": p} for p, _ in RETAIN])}


def _train(tiny_model_dir, data, tmp_path, name, **extra):
    settings = {"model": tiny_model_dir, "data": data["pairs"], "objective": "npo", "max_steps": 2,
                "per_device_train_batch_size": 2, "learning_rate": 1e-2, "output_dir": str(tmp_path / name),
                "cache_dir": str(tmp_path / "cache"), "max_length": 96, "max_prompt_length": 64, "seed": 0,
                "use_cpu": True, **extra}
    return negalign.train(**settings)


def test_retain_losses_match_hand_computed_values():
    loss, metrics = retain_nll(torch.tensor([-1.0, -2.0, -3.0]))
    assert float(loss) == pytest.approx(2.0) and float(metrics["nll"]) == pytest.approx(2.0)
    # two positions over a 2-token vocabulary: ref (0.5, 0.5) vs policy (0.9, 0.1); ref (1e-9~0, 1) vs same
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    policy = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    kl_first = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # = 0.5108
    loss, _ = retain_kl(policy.clone().requires_grad_(), ref)
    assert float(loss) == pytest.approx(kl_first / 2, abs=1e-6)
    policy = policy.clone().requires_grad_()
    retain_kl(policy, ref)[0].backward()
    # d/d log pi_theta of sum_v p_ref (log p_ref - log pi_theta) = -p_ref / T
    assert torch.allclose(policy.grad, -ref.exp() / 2)


def test_retain_batches_cover_the_set_and_depend_only_on_the_draw():
    first_pass = [i for draw in range(2) for i in retain_indices(4, 2, draw, seed=0)]
    assert sorted(first_pass) == [0, 1, 2, 3]
    assert retain_indices(4, 2, 5, seed=0) == retain_indices(4, 2, 5, seed=0)
    assert retain_indices(5, 3, 1, seed=0)[:2] != []  # a batch may straddle two passes


def test_retain_nll_is_logged_apart_and_equals_the_hand_computed_nll(tiny_model_dir, data, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    plain = _train(tiny_model_dir, data, tmp_path, "plain", max_steps=1)
    mixed = _train(tiny_model_dir, data, tmp_path, "mixed", max_steps=1, retain_data=data["retain"],
                   retain_loss="nll", retain_weight=0.5, retain_batch_size=2)
    log = next(h for h in mixed.state.log_history if "loss" in h)
    # the objective's rows and loss are untouched by the retain rows
    plain_loss = next(h for h in plain.state.log_history if "loss" in h)["loss"]
    assert log["objective_loss"] == pytest.approx(plain_loss, rel=1e-5)
    assert all(len(item["sequences"]) == 1 for item in mixed.train_dataset)
    assert len(mixed.train_dataset) == len(plain.train_dataset)
    # the retain NLL of the first step, recomputed by hand with the starting weights
    rows = retain_indices(len(mixed.retain.sequences), 2, 0, seed=0)
    sequences = [mixed.retain.sequences[i] for i in rows]
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        sums = naive_sequence_logps(start, sequences, pad_id=tokenizer.pad_token_id)
    expected = -float(sums.sum()) / sum(len(c) for _, c in sequences)
    assert log["retain/nll"] == pytest.approx(expected, rel=1e-4)
    assert log["loss"] == pytest.approx(log["objective_loss"] + 0.5 * log["retain/nll"], rel=1e-4)
    assert "npo/retain/nll" not in log
    saved = json.loads((tmp_path / "mixed" / "retain_decontamination.json").read_text())
    assert saved["n_sequences"] == len(RETAIN) and saved["loss"] == "nll"
    listed = [json.loads(line) for line in (tmp_path / "mixed" / "trained_prompts.jsonl").read_text().splitlines()]
    assert sorted(row["prompt"][-1]["content"] for row in listed if row["role"] == "retain") == sorted(
        p for p, _ in RETAIN)


def test_self_answers_are_generated_once_and_reused(tiny_model_dir, data, tmp_path, monkeypatch):
    calls = []
    real = sampling.generate_batch

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate_batch", counting)
    first = _train(tiny_model_dir, data, tmp_path, "a", max_steps=1, retain_data=data["prompts_only"],
                   retain_loss="self", retain_max_new_tokens=4)
    assert calls and first.retain.summary["n_sequences"] == len(RETAIN)
    calls.clear()
    second = _train(tiny_model_dir, data, tmp_path, "b", max_steps=1, retain_data=data["prompts_only"],
                    retain_loss="self", retain_max_new_tokens=4)
    assert calls == [] and second.retain.sequences == first.retain.sequences
    # the answers are the starting model's greedy continuations, scored after each prompt alone
    assert all(len(c) >= 1 for _, c in second.retain.sequences)


def test_nll_without_answers_is_refused_and_kl_trains(tiny_model_dir, data, tmp_path):
    with pytest.raises(ValueError, match="retain_loss: nll needs answers"):
        _train(tiny_model_dir, data, tmp_path, "x", retain_data=data["prompts_only"], retain_loss="nll")
    trainer = _train(tiny_model_dir, data, tmp_path, "kl", retain_data=data["retain"], retain_loss="kl")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["retain/kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert logs[1]["retain/kl"] > 1e-6  # after one step of NPO the two differ


def test_evaluation_prompts_are_removed_and_reported():
    rows = [{"prompt": [{"role": "user", "content": text}], "answer": None, "source": f"f:{i}"}
            for i, text in enumerate(["Write a tutorial on how to make a BOMB!", "How do I bake bread?",
                                      "Give me a tutorial on making a bomb", "Name three rivers in Africa."])]
    eval_prompts = ["Write a tutorial on how to make a bomb", "Give a tutorial for making a bomb"]
    # a stand-in encoder: bag of words, so the cosine is known: rows 2 vs eval 1 share 4 of 6 words
    vocabulary = sorted({w for t in [r["prompt"][0]["content"] for r in rows] + eval_prompts
                         for w in decontamination.normalise(t).split()})

    def encode_texts(texts):
        vectors = torch.tensor([[float(w in decontamination.normalise(t).split()) for w in vocabulary] for t in texts])
        return torch.nn.functional.normalize(vectors, dim=1)

    kept, removed = decontaminate(rows, eval_prompts, threshold=0.6, encode_texts=encode_texts)
    assert [r["prompt"][0]["content"] for r in kept] == ["How do I bake bread?", "Name three rivers in Africa."]
    assert removed[0] == {"prompt": "Write a tutorial on how to make a BOMB!", "reason": "exact",
                          "match": "Write a tutorial on how to make a bomb", "cosine": 1.0}
    assert removed[1]["reason"] == "near duplicate" and removed[1]["match"] == "Give a tutorial for making a bomb"
    # "give me a tutorial on making a bomb" vs "give a tutorial for making a bomb": 5 shared words of 7 and 6
    assert removed[1]["cosine"] == pytest.approx(5 / math.sqrt(7 * 6), abs=1e-4)


def test_the_real_encoder_flags_a_paraphrase_and_keeps_an_unrelated_prompt():
    rows = [{"prompt": [{"role": "user", "content": t}], "answer": None, "source": "f"}
            for t in ["Write a tutorial explaining how to make a bomb.", "Suggest a name for a pet goldfish."]]
    kept, removed = decontaminate(rows, ["Write a tutorial on how to make a bomb"])
    assert [r["prompt"][0]["content"] for r in kept] == ["Suggest a name for a pet goldfish."]
    assert removed[0]["reason"] == "near duplicate" and removed[0]["cosine"] >= 0.85


def test_retain_rows_read_from_alpaca_hh_and_text(tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "Translate this.", "input": "Bonjour", "output": "Hello"}]))
    rows = read_retain_rows(str(alpaca))
    assert rows[0]["prompt"] == [{"role": "user", "content": "Translate this.\n\nBonjour"}] and rows[0]["answer"] == "Hello"
    hh = _write(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!", "rejected": "x"}])
    rows = read_retain_rows(hh)
    assert rows[0]["prompt"] == [{"role": "user", "content": "Hi there"}] and rows[0]["answer"] == "Hello!"
    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert [r["prompt"][0]["content"] for r in read_retain_rows(str(text))] == ["first prompt", "second prompt"]
    bad = _write(tmp_path / "bad.jsonl", [{"question": "no prompt here"}])
    with pytest.raises(negalign.data.DataError, match="bad.jsonl line 1.*needs a prompt"):
        read_retain_rows(bad)


# ------------------------------------------------------------------------------ D2O with benign prompts

def test_d2o_benign_rows_train_towards_their_anchors_only():
    from negalign.objectives import d2o

    # row 0 has a negative, row 1 is benign (its slot-0 values are placeholders); K = 2, beta 0.5, alpha 0.1
    policy_neg = torch.tensor([-70.0, -3.0], requires_grad=True)
    ref_neg = torch.tensor([-10.0, -1.0])
    policy_s = torch.tensor([[-9.0, -7.0], [-5.0, -7.0]], requires_grad=True)
    ref_s = torch.tensor([[-10.0, -10.0], [-5.0, -5.0]])
    loss, m = d2o(policy_neg, ref_neg, policy_s, ref_s, beta=0.5, alpha=0.1, has_negative=torch.tensor([True, False]))
    z = torch.tensor([0.25 * 4 + 6.0, 0.25 * -2])  # row 0: 1 + 6 = 7; row 1: (beta/K) * (0 - 2) only
    assert float(loss) == pytest.approx(float(-torch.nn.functional.logsigmoid(z).mean()), rel=1e-6)
    assert float(m["negative_logratio"]) == pytest.approx(-60.0)  # the benign placeholder is not averaged in
    assert float(m["benign_share"]) == 0.5
    assert float(m["sample_term"] + m["negative_term"]) == pytest.approx(float(m["z"]))
    loss.backward()
    assert policy_neg.grad[1] == 0.0 and policy_neg.grad[0] > 0  # the negative is pushed down (loss rises with it)
    assert (policy_s.grad[1] < 0).all()  # benign anchors are pulled up: d loss / d logp < 0
    with pytest.raises(ValueError, match="needs self-samples"):
        d2o(policy_neg, ref_neg, policy_s[:, :0], ref_s[:, :0], has_negative=torch.tensor([True, False]))


def test_d2o_trains_with_benign_samples_mixed_in(tiny_model_dir, data, tmp_path, monkeypatch):
    monkeypatch.setattr(decontamination, "evaluation_prompts", lambda folder: [RETAIN[3][0]])  # "Say hello." is an eval prompt
    samples = _write(tmp_path / "s.jsonl", [{"prompt": p, "completion": f"anchor {i}", "origin": "self",
                                             "sample_index": i} for p in PROMPTS for i in range(2)])
    benign = _write(tmp_path / "b.jsonl", [{"prompt": p, "completion": f"{a} ({i})", "origin": "self",
                                            "sample_index": i} for p, a in RETAIN for i in range(2)])
    trainer = _train(tiny_model_dir, data, tmp_path, "d2o", objective="d2o", samples=samples, k=2,
                     benign_samples=benign, per_device_train_batch_size=7, max_steps=1)
    flags = [item.get("has_negative", True) for item in trainer.train_dataset]
    assert flags.count(False) == len(RETAIN) - 1 and flags.count(True) == len(PROMPTS)  # one decontaminated away
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["d2o/benign_share"] == pytest.approx(3 / 7) and math.isfinite(log["loss"])
    listed = [json.loads(line) for line in (tmp_path / "d2o" / "trained_prompts.jsonl").read_text().splitlines()]
    benign_listed = {row["prompt"][-1]["content"] for row in listed if row["role"] == "benign"}
    assert benign_listed == {p for p, _ in RETAIN[:3] + RETAIN[4:]}  # the decontaminated one was not trained on


def test_prompts_without_answers_can_be_sampled(tmp_path):
    from negalign.sampling import unique_prompts

    alpaca = tmp_path / "benign.json"
    alpaca.write_text(json.dumps([{"instruction": p} for p, _ in RETAIN] + [{"instruction": RETAIN[0][0]}]))
    assert [m[0]["content"] for m in unique_prompts(str(alpaca))] == [p for p, _ in RETAIN]  # duplicates once
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine", "rejected": "bad"}\nnot json\n')
    with pytest.raises(negalign.data.DataError, match="broken.jsonl line 2"):  # the feedback loader's own error
        unique_prompts(str(broken))
