"""ORPO (negalign/objectives/orpo.py): the loss against values worked out by hand, its gradients, the stable
log odds, the columns its Method reads, its recipe, and a tiny model trained from `negalign train --config
configs/orpo.yaml` whose loss goes down."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from negalign.cli import main
from negalign.config import load_config, parse_overrides
from negalign.methods import METHODS, Columns, method_loss
from negalign.objectives.orpo import log_odds, orpo

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "orpo.yaml"
LOG = math.log


def t(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_orpo_by_hand():
    # Pair 1: P(y_w) = 0.5 over 3 tokens, P(y_l) = 0.2 over 5: odds 1 and 1/4, log odds ratio log 4,
    #   NLL -log 0.5 = log 2, L_OR = -log sigmoid(log 4) = -log(4/5) = log 1.25.
    # Pair 2: P(y_w) = 0.2 over 2 tokens, P(y_l) = 0.5 over 4: log odds ratio -log 4,
    #   NLL log 5, L_OR = -log sigmoid(-log 4) = -log(1/5) = log 5.
    chosen, rejected = t([3 * LOG(0.5), 2 * LOG(0.2)], grad=True), t([5 * LOG(0.2), 4 * LOG(0.5)], grad=True)
    lengths_w, lengths_l = torch.tensor([3, 2]), torch.tensor([5, 4])
    loss, metrics = orpo(chosen, rejected, lengths_w, lengths_l, odds_ratio_weight=0.1)
    nll, odds = (LOG(2) + LOG(5)) / 2, (LOG(1.25) + LOG(5)) / 2
    assert loss.item() == pytest.approx(nll + 0.1 * odds, rel=1e-12)
    assert loss.item() == pytest.approx(1.2429216, rel=1e-6)  # 1.1512925 + 0.1 * 0.9162907
    assert metrics["nll"].item() == pytest.approx(nll) and metrics["odds_ratio_loss"].item() == pytest.approx(odds)
    assert metrics["log_odds_ratio"].item() == pytest.approx(0.0, abs=1e-6)  # log 4 and -log 4
    assert metrics["odds_ratio_accuracy"].item() == pytest.approx(0.5)
    assert all(not m.requires_grad and m.dim() == 0 for m in metrics.values())
    loss.backward()
    # d/dm(y_w) = -(1/B) (1 + lambda (1 - sigma(ratio)) / (1 - P(y_w))); d/dm(y_l) = +(lambda/B) (1 - sigma(ratio))
    # / (1 - P(y_l)); the summed log-prob's gradient divides by |y|. Pair 1: 1 - sigma(log 4) = 1/5; pair 2: 4/5.
    assert chosen.grad.tolist() == pytest.approx([-0.5 * (1 + 0.1 * 0.2 * 2) / 3, -0.5 * (1 + 0.1 * 0.8 * 1.25) / 2])
    assert rejected.grad.tolist() == pytest.approx([0.05 * 0.2 * 1.25 / 5, 0.05 * 0.8 * 2 / 4])
    assert torch.all(chosen.grad < 0) and torch.all(rejected.grad > 0)


def test_orpo_without_the_odds_ratio_term_is_sft_on_the_chosen_answer():
    chosen, rejected = t([-6.0, -1.0], grad=True), t([-2.0, -9.0], grad=True)
    loss, _ = orpo(chosen, rejected, torch.tensor([3, 4]), torch.tensor([2, 3]), odds_ratio_weight=0.0)
    assert loss.item() == pytest.approx((2.0 + 0.25) / 2)
    loss.backward()
    assert rejected.grad.tolist() == [0.0, 0.0]


def test_log_odds_is_stable_at_both_ends():
    m = t([-1e-9, -1e-4, -math.log(2.0), -5.0, -80.0, 0.0])
    got = log_odds(m)
    assert torch.all(torch.isfinite(got))
    p = math.exp(-1e-4)
    assert got[1].item() == pytest.approx(LOG(p / (1 - p)), rel=1e-6)
    assert got[2].item() == pytest.approx(0.0, abs=1e-12)  # P = 1/2: odds 1
    assert got[3].item() == pytest.approx(-5.0 - math.log1p(-math.exp(-5.0)), rel=1e-12)
    assert got[4].item() == pytest.approx(-80.0, rel=1e-9)  # P tiny: log odds ~ log P
    assert got[0].item() == pytest.approx(got[5].item()) == pytest.approx(-math.log(1e-6), rel=1e-3)  # P -> 1: capped
    x = t([-0.3], grad=True)
    log_odds(x).sum().backward()
    assert x.grad.item() == pytest.approx(1 / (1 - math.exp(-0.3)))  # d/dm log odds = 1 / (1 - P)


def test_orpo_reads_the_summed_log_probs_of_its_columns_and_its_own_lambda():
    m = METHODS["orpo"]
    assert m.slots == ("chosen", "rejected") and not m.reference and m.hyperparameters == ()
    layout = m.layout(2)
    mean = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])  # what logp_reduction: mean gives: never read
    summed = torch.tensor([[-9.0, -14.0], [-4.0, -33.0]])
    lengths = torch.tensor([[9.0, 7.0], [8.0, 11.0]])
    loss, _ = method_loss(Columns(layout, mean, None, summed, lengths), {}, SimpleNamespace(loss={"odds_ratio_weight": 0.7}))
    want, _ = orpo(summed[:, 0], summed[:, 1], lengths[:, 0], lengths[:, 1], odds_ratio_weight=0.7)
    assert torch.allclose(loss, want)
    swapped, _ = method_loss(Columns(layout, mean, None, summed[:, [1, 0]], lengths[:, [1, 0]]), {},
                             SimpleNamespace(loss={"odds_ratio_weight": 0.7}))
    assert not torch.allclose(swapped, want)
    default, _ = method_loss(Columns(layout, mean, None, summed, lengths), {}, SimpleNamespace())  # lambda 0.1
    assert torch.allclose(default, orpo(summed[:, 0], summed[:, 1], lengths[:, 0], lengths[:, 1], 0.1)[0])


def test_the_orpo_recipe_and_its_hyperparameter(tmp_path):
    config = load_config(str(RECIPE), {"output_dir": str(tmp_path)})
    assert (config.objective, config.loss) == ("orpo", {"odds_ratio_weight": 0.1})
    changed = load_config(str(RECIPE), {"output_dir": str(tmp_path), **parse_overrides(["--loss.odds_ratio_weight", "0.5"])})
    assert changed.loss == {"odds_ratio_weight": 0.5}
    with pytest.raises(ValueError, match="loss: orpo has no hyperparameter lambda"):
        load_config(str(RECIPE), {"output_dir": str(tmp_path), "loss.lambda": 0.5})


def test_orpo_trains_from_its_recipe_and_its_loss_goes_down(tiny_model_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    prompts = ["How do I pick a lock?", "Tell me a joke about cats.", "How do plants grow?", "Insult my coworker."]
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": f"I can help safely with: {p}",
                                         "rejected": f"Sure, something harmful about {p.lower()}"}) + "\n"
                             for p in prompts))
    out = tmp_path / "run"
    assert main(["train", "--config", str(RECIPE), f"model={tiny_model_dir}", f"data={pairs}", "max_steps=6",
                 "learning_rate=1e-3", "max_length=64", "max_prompt_length=32", "decontaminate=false",
                 "save_strategy=no", "use_cpu=true", f"output_dir={out}", f"cache_dir={tmp_path / 'cache'}"]) == 0
    assert "trained 6 steps of orpo" in capsys.readouterr().out
    history = json.loads((out / "train_log.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    assert any("orpo/log_odds_ratio" in h for h in history)
