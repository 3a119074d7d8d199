"""SimPO (negalign/objectives/simpo.py): the loss against values worked out by hand, its gradient signs, the
columns its Method reads, its recipe, and a tiny model trained from `negalign train --config configs/simpo.yaml`
whose loss goes down."""

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
from negalign.objectives.simpo import simpo

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "simpo.yaml"


def nls(x: float) -> float:
    """-log(sigmoid(x)) = log(1 + e^-x)."""
    return math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_simpo_by_hand():
    # beta 2, gamma 1. Pair 1: r(y_w) = 2/3 * -6 = -4, r(y_l) = 2/4 * -12 = -6, z = -4 + 6 - 1 = 1.
    # Pair 2: r(y_w) = 2/5 * -10 = -4, r(y_l) = 2/2 * -2 = -2, z = -4 + 2 - 1 = -3.
    chosen, rejected = t([-6.0, -10.0], grad=True), t([-12.0, -2.0], grad=True)
    loss, metrics = simpo(chosen, rejected, torch.tensor([3, 5]), torch.tensor([4, 2]), beta=2.0, gamma=1.0)
    assert loss.item() == pytest.approx((nls(1.0) + nls(-3.0)) / 2, rel=1e-12)
    assert loss.item() == pytest.approx(1.6809245, rel=1e-6)  # (0.3132617 + 3.0485874) / 2
    assert metrics["chosen_reward"].item() == pytest.approx(-4.0)
    assert metrics["rejected_reward"].item() == pytest.approx(-4.0)
    assert metrics["reward_margin"].item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["reward_accuracy"].item() == pytest.approx(0.5)
    assert all(not m.requires_grad and m.dim() == 0 for m in metrics.values())
    loss.backward()
    # d/d logp(y_w) = -(1 - sigma(z)) * beta / |y_w| / B: descent raises the chosen answers
    assert chosen.grad.tolist() == pytest.approx([-(1 - sig(1.0)) * 2 / 3 / 2, -(1 - sig(-3.0)) * 2 / 5 / 2])
    # d/d logp(y_l) = +(1 - sigma(z)) * beta / |y_l| / B: and lowers the rejected ones
    assert rejected.grad.tolist() == pytest.approx([(1 - sig(1.0)) * 2 / 4 / 2, (1 - sig(-3.0)) * 2 / 2 / 2])
    assert torch.all(chosen.grad < 0) and torch.all(rejected.grad > 0)


def test_simpo_margin_and_length_normalisation():
    # the same per-token log-prob at any length gives the same reward: with gamma 0 the loss is log 2
    loss, _ = simpo(t([-2.0]), t([-20.0]), torch.tensor([1]), torch.tensor([10]), beta=2.5, gamma=0.0)
    assert loss.item() == pytest.approx(math.log(2.0))
    # gamma asks for a margin: at a zero reward margin the loss is -logsigmoid(-gamma)
    loss, _ = simpo(t([-2.0]), t([-20.0]), torch.tensor([1]), torch.tensor([10]), beta=2.5, gamma=1.25)
    assert loss.item() == pytest.approx(nls(-1.25))
    with pytest.raises(ValueError, match="must all be positive"):
        simpo(t([-2.0]), t([-2.0]), torch.tensor([0]), torch.tensor([1]))


def test_simpo_reads_the_summed_log_probs_of_its_columns_and_its_own_gamma():
    m = METHODS["simpo"]
    assert m.slots == ("chosen", "rejected") and not m.reference and m.hyperparameters == ("beta",)
    layout = m.layout(2)
    mean = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])  # what logp_reduction: mean gives: never read
    summed = torch.tensor([[-9.0, -14.0], [-4.0, -33.0]])
    lengths = torch.tensor([[9.0, 7.0], [8.0, 11.0]])
    config = SimpleNamespace(beta=2.0, loss={"gamma_beta_ratio": 0.25})
    loss, _ = method_loss(Columns(layout, mean, None, summed, lengths), {}, config)
    want, _ = simpo(summed[:, 0], summed[:, 1], lengths[:, 0], lengths[:, 1], beta=2.0, gamma=0.5)
    assert torch.allclose(loss, want)
    swapped, _ = method_loss(Columns(layout, mean, None, summed[:, [1, 0]], lengths[:, [1, 0]]), {}, config)
    assert not torch.allclose(swapped, want)
    # without `loss`, the declared default: gamma = 0.5 * beta
    default, _ = method_loss(Columns(layout, mean, None, summed, lengths), {}, SimpleNamespace(beta=2.0))
    assert torch.allclose(default, simpo(summed[:, 0], summed[:, 1], lengths[:, 0], lengths[:, 1], 2.0, 1.0)[0])


def test_the_simpo_recipe_and_its_hyperparameter(tmp_path):
    config = load_config(str(RECIPE), {"output_dir": str(tmp_path)})
    assert (config.objective, config.beta, config.loss) == ("simpo", 2.0, {"gamma_beta_ratio": 0.5})
    changed = load_config(str(RECIPE), {"output_dir": str(tmp_path), **parse_overrides(["loss.gamma_beta_ratio=0.3"])})
    assert changed.loss == {"gamma_beta_ratio": 0.3}
    with pytest.raises(ValueError, match="loss.gamma_beta_ratio: must be >= 0, got -1"):
        load_config(str(RECIPE), {"output_dir": str(tmp_path), "loss.gamma_beta_ratio": -1})


def test_simpo_trains_from_its_recipe_and_its_loss_goes_down(tiny_model_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    prompts = ["How do I pick a lock?", "Tell me a joke about cats.", "How do plants grow?", "Insult my coworker."]
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": f"I can help safely with: {p}",
                                         "rejected": f"Sure, something harmful about {p.lower()}"}) + "\n"
                             for p in prompts))
    out = tmp_path / "run"
    assert main(["train", "--config", str(RECIPE), f"model={tiny_model_dir}", f"data={pairs}", "max_steps=6",
                 "learning_rate=1e-3", "max_length=64", "max_prompt_length=32", "decontaminate=false",
                 "save_strategy=no", "use_cpu=true", f"output_dir={out}", f"cache_dir={tmp_path / 'cache'}"]) == 0
    assert "trained 6 steps of simpo" in capsys.readouterr().out
    history = json.loads((out / "train_log.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    assert any("simpo/reward_margin" in h for h in history)
