"""The table of methods (negalign.methods): the trainer hands every loss the columns it names.

For each method, [B, columns] policy and reference matrices are built by hand from distinct per-slot values,
and the loss the trainer computes from them is checked against the pure function called here with the named
tensors written out, so a method reading the wrong column (DPO's chosen for its rejected, D2O's negative for
a sample) fails. A second test runs real examples through the dataset, the collator and the trainer's forward
on a tiny model, and checks each column holds the log-prob of the text its slot names.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from negalign import objectives
from negalign.methods import METHODS, SAMPLES, Columns, example_slots, method, method_loss

B, K = 3, 2
CONFIG = SimpleNamespace(beta=0.3, alpha=0.05, gamma=0.2, c=0.1, instance_level=False, desirable_weight=1.5,
                         undesirable_weight=0.7)


def _matrices(name: str, seed: int = 0):
    """Distinct values per slot (policy, reference, lengths), and the [B, columns] matrices in the layout's
    column order."""
    generator = torch.Generator().manual_seed(seed)
    m = METHODS[name]
    layout = m.layout(len(m.slots) - 1 + K if SAMPLES in m.slots else len(m.slots))
    named = {}
    for slot in m.slots:
        shape = (B, K) if slot == SAMPLES else (B,)
        named[slot] = {"policy": -torch.rand(shape, generator=generator) * 40 - 1,
                       "ref": -torch.rand(shape, generator=generator) * 40 - 1,
                       "lengths": torch.randint(3, 30, shape, generator=generator).float()}

    def matrix(kind):
        out = torch.empty(B, layout.n_columns)
        for slot in m.slots:
            out[:, layout.columns(slot)] = named[slot][kind].view(B, -1)
        return out

    return layout, named, matrix("policy"), matrix("ref"), matrix("lengths")


LABELS = torch.tensor([True, False, True])
SCORES = torch.tensor([0.9, -0.4, 0.2])


def _expected(name: str, v: dict, batch: dict):
    """The pure function with the named tensors written out by hand (independent of the table's routing)."""
    c, p, r = CONFIG, (lambda s: v[s]["policy"]), (lambda s: v[s]["ref"])
    if name == "d2o":
        return objectives.d2o(p("negative"), r("negative"), p(SAMPLES), r(SAMPLES), beta=c.beta, alpha=c.alpha,
                              has_negative=batch.get("has_negative"))
    if name in ("dpo", "ipo"):
        return getattr(objectives, name)(p("chosen"), p("rejected"), r("chosen"), r("rejected"), beta=c.beta)
    if name == "npo":
        return objectives.npo(p("completion"), r("completion"), beta=c.beta)
    if name == "simnpo":
        return objectives.simnpo(v["completion"]["policy"], v["completion"]["lengths"], beta=c.beta, gamma=c.gamma)
    if name == "kto":
        return objectives.kto(p("completion"), r("completion"), LABELS, p("mismatched"), r("mismatched"),
                              beta=c.beta, desirable_weight=c.desirable_weight,
                              undesirable_weight=c.undesirable_weight)
    if name in ("pointwise_dpo", "ulma"):
        return getattr(objectives, name)(p("completion"), r("completion"), scores=SCORES, beta=c.beta, c=c.c)
    if name in ("gradient_ascent", "sft"):
        return getattr(objectives, name)(p("completion"))
    if name == "context_distillation":  # the mean NLL of the B x K anchors
        return -p(SAMPLES).mean(), {"nll": -p(SAMPLES).mean()}
    raise AssertionError(f"no hand-written call for {name}: add one")


# the methods `_expected` writes out; a method added since checks its own columns in its own tests/test_<name>.py
HAND_WRITTEN = ("d2o", "dpo", "ipo", "npo", "simnpo", "kto", "pointwise_dpo", "ulma", "gradient_ascent", "sft",
                "context_distillation")


def test_every_method_has_its_columns_checked():
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    unchecked = [name for name in METHODS if name not in (*HAND_WRITTEN, "unlikelihood")
                 and not (tests / f"test_{name}.py").exists()]
    assert unchecked == []


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_the_loss_reads_each_named_column(name):
    layout, named, policy, ref, lengths = _matrices(name)
    batch = {"labels_binary": LABELS} if name == "kto" else {"scores": SCORES}
    if name == "d2o":
        batch = {"has_negative": torch.tensor([True, False, True])}
    # SimNPO takes summed log-probs: pass the policy matrix as the summed one too
    loss, metrics = method_loss(Columns(layout, policy, ref, policy, lengths), batch, CONFIG)
    want, want_metrics = _expected(name, named, batch)
    assert torch.allclose(loss, want, rtol=1e-6), (float(loss), float(want))
    assert metrics.keys() == want_metrics.keys()
    # a swapped pair of columns changes the loss: the check above can fail (not for a mean over the K anchors
    # alone, which no order of them changes)
    if layout.n_columns > 1 and name != "context_distillation":
        swapped = policy[:, [1, 0, *range(2, layout.n_columns)]]
        other, _ = method_loss(Columns(layout, swapped, ref, swapped, lengths), batch, CONFIG)
        assert not torch.allclose(other, want, rtol=1e-4)


def test_unlikelihood_reads_the_token_level_log_probs():
    layout = METHODS["unlikelihood"].layout(1)
    tokens = (torch.tensor([[-0.1, -2.0, 0.0], [-0.5, -0.2, -3.0]]), torch.tensor([[1, 1, 0], [1, 1, 1]]).bool())
    loss, _ = method_loss(Columns(layout, torch.zeros(2, 1), None, torch.zeros(2, 1), torch.ones(2, 1), tokens),
                          {}, CONFIG)
    # -mean over sequences of the summed log(1 - p) of the completion tokens, by hand
    p = [[0.1, 2.0], [0.5, 0.2, 3.0]]
    per_sequence = [-sum(torch.log1p(-torch.exp(torch.tensor(-x))).item() for x in row) for row in p]
    assert loss.item() == pytest.approx(sum(per_sequence) / 2, rel=1e-5)


def test_ipo_by_hand():
    # margin = (-5 - -6) - (-9 - -7) = 1 + 2 = 3; target 1/(2*0.25) = 2; loss (3 - 2)^2 = 1
    # second pair: margin = (-4 - -4) - (-3 - -3) = 0; loss (0 - 2)^2 = 4 -> mean 2.5
    pc, pr = torch.tensor([-5.0, -4.0], requires_grad=True), torch.tensor([-9.0, -3.0])
    loss, metrics = objectives.ipo(pc, pr, torch.tensor([-6.0, -4.0]), torch.tensor([-7.0, -3.0]), beta=0.25)
    assert loss.item() == pytest.approx(2.5)
    assert metrics["logratio_margin"].item() == pytest.approx(1.5) and metrics["target_margin"].item() == 2.0
    assert metrics["margin_accuracy"].item() == pytest.approx(0.5)
    loss.backward()
    # d/d pc of mean((m - 2)^2) = (m - 2): first pair over target (+1/... pushes chosen down), second under
    assert pc.grad.tolist() == pytest.approx([1.0, -2.0])


def test_the_table_declares_every_layout():
    d2o = METHODS["d2o"].layout(1 + 4)
    assert d2o.names == ("negative", *[SAMPLES] * 4) and d2o.k == 4 and d2o.plus == [0]
    assert d2o.columns(SAMPLES) == [1, 2, 3, 4] and d2o.detached == []
    assert METHODS["d2o"].layout(1).k == 0 and METHODS["d2o"].layout(1).columns(SAMPLES) == []
    kto = METHODS["kto"].layout(2)
    assert kto.detached == [1] and kto.kept == [0] and kto.plus == []
    assert {n for n in HAND_WRITTEN if not METHODS[n].reference} == {"simnpo", "gradient_ascent", "sft",
                                                                      "context_distillation"}
    assert not METHODS["unlikelihood"].reference
    with pytest.raises(KeyError, match="dpo has no slot 'negative'"):
        METHODS["dpo"].layout(2).columns("negative")
    with pytest.raises(ValueError, match="unknown objective 'no-such-objective'; choose one of d2o, "):
        method("no-such-objective")
    assert example_slots(METHODS["d2o"], {"negative": "n", SAMPLES: ["a", "b"]}) == ["n", "a", "b"]
    assert example_slots(METHODS["dpo"], {"chosen": "c", "rejected": "r"}) == ["c", "r"]
    distill = METHODS["context_distillation"].layout(3)
    assert distill.names == (SAMPLES,) * 3 and distill.k == 3 and METHODS["context_distillation"].anchored
    assert example_slots(METHODS["context_distillation"], {"negative": "n", SAMPLES: ["a", "b"]}) == ["a", "b"]


@pytest.mark.parametrize("name", ["dpo", "d2o", "kto", "context_distillation"])
def test_each_column_holds_the_log_prob_of_its_slot_text(name, tiny_model_dir, smollm_tokenizer, tmp_path):
    """Dataset order -> collator -> trainer forward: the column of slot s is log p(text of s | prompt)."""
    from negalign.batches import collate
    from negalign.config import NegalignConfig
    from negalign.data import encode
    from negalign.logprobs import pack_sequences, sequence_logps, slot_logps
    from negalign.models import load_model
    from negalign.trainer import NegalignTrainer

    texts = {"negative": "Sure, here is how.", SAMPLES: ["I can't help with that.", "Let me explain safely."],
             "chosen": "No, that is unsafe.", "rejected": "Here is the plan.", "completion": "Fine, do it.",
             "mismatched": "Paris is the capital."}
    examples = [{slot: texts[slot] for slot in METHODS[name].slots} for _ in range(2)]
    prompts = [[{"role": "user", "content": "How do I pick a lock?"}], [{"role": "user", "content": "Hi there"}]]
    model = load_model(tiny_model_dir)
    items = []
    for prompt, example in zip(prompts, examples):
        encoded = [encode(prompt, text, smollm_tokenizer, max_length=64, max_prompt_length=32)
                   for text in example_slots(METHODS[name], example)]
        items.append({"sequences": [(e.prompt_ids, e.completion_ids) for e in encoded], "label": True, "score": None})
    layout = METHODS[name].layout(len(items[0]["sequences"]))
    config = NegalignConfig(output_dir=str(tmp_path), objective=name, use_cpu=True, report_to=[])
    trainer = NegalignTrainer(model=model, args=config, layout=layout, train_dataset=items)
    sums, lengths, _, _ = slot_logps(model, collate(items, layout), trainer.layout, trainer.scoring)
    for row, (prompt, example) in enumerate(zip(prompts, examples)):
        for slot in METHODS[name].slots:
            for column, text in zip(layout.columns(slot), texts[slot] if slot == SAMPLES else [texts[slot]]):
                e = encode(prompt, text, smollm_tokenizer, max_length=64, max_prompt_length=32)
                want = sequence_logps(model, pack_sequences([(e.prompt_ids, e.completion_ids)]), "sum")
                assert sums[row, column].item() == pytest.approx(want.item(), rel=1e-4, abs=1e-4), (slot, column)
                assert lengths[row, column].item() == len(e.completion_ids)


def test_a_new_method_is_one_entry(monkeypatch):
    """IPO was added as one table entry and one function; a method can also be registered from outside."""
    reverse = dataclasses.replace(METHODS["dpo"], name="reverse_dpo",
                                  arguments=lambda c, batch, cfg: dict(
                                      policy_chosen_logps=c.policy("rejected"), policy_rejected_logps=c.policy("chosen"),
                                      ref_chosen_logps=c.ref("rejected"), ref_rejected_logps=c.ref("chosen"),
                                      beta=cfg.beta))
    monkeypatch.setitem(METHODS, "reverse_dpo", reverse)
    layout, named, policy, ref, lengths = _matrices("dpo")
    layout = reverse.layout(2)
    loss, _ = method_loss(Columns(layout, policy, ref, policy, lengths), {}, CONFIG)
    want, _ = objectives.dpo(named["rejected"]["policy"], named["chosen"]["policy"], named["rejected"]["ref"],
                             named["chosen"]["ref"], beta=CONFIG.beta)
    assert torch.allclose(loss, want)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_a_recipe_that_loads(name):
    from pathlib import Path

    from negalign.config import load_config

    recipe = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    config = load_config(str(recipe), {"output_dir": "unused"})
    assert config.objective == name and config.beta == pytest.approx(METHODS[name].demo.get("beta", config.beta))


def test_the_methods_page_lists_every_method():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text(encoding="utf-8")
    table = page.split("\n## ")[0]  # the table of objectives at the top
    assert [name for name in METHODS if f"[`{name}`](#" not in table] == []


def test_no_objective_name_is_compared_outside_the_method_table():
    """Everything method-specific is asked of the Method: no `objective == "..."` elsewhere."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "negalign"
    pattern = re.compile(r"""(objective|method)\s*[!=]=\s*["']|["'](d2o|dpo|kto|npo|sft)["']\s*[!=]=""")
    offenders = [f"{path.relative_to(package)}:{n}" for path in package.rglob("*.py") if path.name != "methods.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_each_method_checks_its_own_hyperparameters():
    from types import SimpleNamespace

    from negalign.methods import METHODS

    settings = dict(beta=0.0, alpha=0.0, sampling="static", k=2, benign_samples=None)
    assert METHODS["d2o"].check(SimpleNamespace(**settings)) == ["beta: must be > 0, got 0.0",
                                                                  "alpha: must be > 0, got 0.0"]
    assert METHODS["npo"].check(SimpleNamespace(**settings)) == ["beta: must be > 0, got 0.0"]
    assert METHODS["sft"].check(SimpleNamespace(**settings)) == []  # SFT reads no beta
    refresh = SimpleNamespace(**{**settings, "beta": 0.1, "sampling": "refresh"})
    assert METHODS["npo"].check(refresh) == ["sampling: 'refresh' needs objective d2o and k >= 1"]
    assert METHODS["d2o"].check(SimpleNamespace(**{**settings, "beta": 0.1, "alpha": 0.1, "sampling": "refresh"})) == []
