"""Checks of negalign.objectives against values worked out with plain-Python math."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from negalign import objectives
from negalign.objectives import (
    d2o,
    dpo,
    gradient_ascent,
    kto,
    npo,
    pointwise_dpo,
    sft,
    simnpo,
    ulma,
    unlikelihood,
)

# ----------------------------------------------------------------------------- plain-Python references


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def nls(x: float) -> float:
    """-log(sigmoid(x)) in plain Python."""
    return -math.log(sig(x))


def t(values, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def close(actual: torch.Tensor, expected: float, tol: float = 1e-9) -> None:
    assert actual.dim() == 0
    assert math.isclose(actual.item(), expected, rel_tol=tol, abs_tol=tol), (actual.item(), expected)


def assert_metrics_detached(metrics: dict) -> None:
    assert metrics, "no metrics"
    for name, value in metrics.items():
        assert isinstance(value, torch.Tensor), name
        assert not value.requires_grad, name
        assert value.grad_fn is None, name
        assert value.dim() == 0, name
        assert value.is_floating_point(), name
        assert math.isfinite(value.item()), name


# ------------------------------------------------------------------------------------------------ D2O

# two rows, K = 3
PN = [-10.0, -20.0]
RN = [-11.0, -19.5]
PS = [[-5.0, -6.0, -7.0], [-8.0, -9.0, -4.0]]
RS = [[-5.5, -6.0, -6.0], [-8.5, -10.0, -4.2]]


def d2o_ref(pn, rn, ps, rs, beta, alpha):
    total = 0.0
    for i in range(len(pn)):
        k = len(ps[i])
        mean_h = sum(p - r for p, r in zip(ps[i], rs[i])) / k if k else 0.0
        z = beta * mean_h - alpha * (pn[i] - rn[i])
        total += nls(z)
    return total / len(pn)


def d2o_instance_ref(pn, rn, ps, rs, beta, alpha):
    total = 0.0
    for i in range(len(pn)):
        hl = pn[i] - rn[i]
        terms = [nls(beta * (p - r) - alpha * hl) for p, r in zip(ps[i], rs[i])]
        total += sum(terms) / len(terms)
    return total / len(pn)


def test_d2o_value_and_metrics():
    loss, m = d2o(t(PN), t(RN), t(PS), t(RS), beta=0.1, alpha=0.1)
    close(loss, d2o_ref(PN, RN, PS, RS, 0.1, 0.1))
    # row 0: mean h = (0.5 + 0 - 1) / 3, h_l = 1; row 1: mean h = (0.5 + 1 + 0.2) / 3, h_l = -0.5
    z0 = 0.1 * (-0.5 / 3) - 0.1 * 1.0
    z1 = 0.1 * (1.7 / 3) - 0.1 * (-0.5)
    close(m["z"], (z0 + z1) / 2, 1e-6)
    close(m["sigmoid_z"], (sig(z0) + sig(z1)) / 2, 1e-6)
    hs = [0.5, 0.0, -1.0, 0.5, 1.0, 0.2]
    close(m["sample_logratio"], sum(hs) / 6, 1e-6)
    close(m["negative_logratio"], (1.0 - 0.5) / 2, 1e-6)
    close(m["logratio_margin"], sum(hs) / 6 - 0.25, 1e-6)
    close(m["kl_on_samples"], sum(math.exp(h) * h for h in hs) / 6, 1e-6)
    w = [math.exp(h) for h in hs]
    close(m["kl_on_samples_ess"], sum(w) ** 2 / (6 * sum(x * x for x in w)), 1e-6)
    assert_metrics_detached(m)


def test_d2o_weight_share_reads_one_dominant_anchor_without_overflow():
    """h of 400 overflows exp in float32 (the unguarded estimate reads inf); the share stays finite, ~1/n."""
    _, m = d2o(t([-1.0]), t([-1.0]), t([[400.0 - 5, -5.0, -5.0, -5.0]]), t([[-5.0] * 4]), beta=0.1, alpha=0.1)
    close(m["kl_on_samples_ess"], 0.25, 1e-6)
    assert not math.isfinite(float(m["kl_on_samples"]))


def test_d2o_log_metrics_keep_the_kl_estimate_only_under_the_references_own_anchors():
    """D2O's Method decides what a log line shows of its metrics. Four anchors, one with h = 2 (w = e^2) and three
    with h = 0 (w = 1): share = (e^2 + 3)^2 / (4 (e^4 + 3)) = 10.389^2 / (4 x 57.598) = 0.4685 >= 0.05, so the
    estimate is shown when the anchors came from the reference; below 0.05 it is not."""
    from negalign.methods import METHODS
    from negalign.objectives.negatives import MIN_WEIGHT_SHARE

    show = METHODS["d2o"].log_metrics
    share = (math.e ** 2 + 3) ** 2 / (4 * (math.e ** 4 + 3))
    assert share == pytest.approx(0.4685, abs=1e-4)
    merged = {"z": 0.25, "kl_on_samples": 3.0, "kl_on_samples_ess": share}
    assert show(merged, {"from_reference": True}) == merged
    # drawn under a sampling context, by another model, or of unknown origin: exp(h) h estimates no KL
    for anchors in (None, {"from_reference": False}, {"sampling_context": "unknown"}):
        assert show(merged, anchors) == {"z": 0.25}
    # one anchor carries the estimate (share below 0.05): noise, not drift; the share itself is still shown
    assert MIN_WEIGHT_SHARE == 0.05
    noisy = {**merged, "kl_on_samples": 1.0e9, "kl_on_samples_ess": 0.049}
    assert show(noisy, {"from_reference": True}) == {"z": 0.25, "kl_on_samples_ess": 0.049}
    assert show({**noisy, "kl_on_samples_ess": 0.05}, {"from_reference": True})["kl_on_samples"] == 1.0e9
    assert noisy["kl_on_samples"] == 1.0e9  # the merged means handed in are left as they were


def test_other_methods_show_every_metric():
    from negalign.methods import METHODS

    assert [name for name, m in METHODS.items() if m.log_metrics is not None] == ["d2o"]


def test_d2o_different_beta_alpha():
    loss, _ = d2o(t(PN), t(RN), t(PS), t(RS), beta=0.5, alpha=0.2)
    close(loss, d2o_ref(PN, RN, PS, RS, 0.5, 0.2))


def test_d2o_gradient_signs():
    pn, ps = t(PN, grad=True), t(PS, grad=True)
    loss, _ = d2o(pn, t(RN), ps, t(RS), beta=0.1, alpha=0.1)
    loss.backward()
    # descent raises the self-samples' log-probs and lowers the human negative's
    assert torch.all(ps.grad < 0)
    assert torch.all(pn.grad > 0)


def test_d2o_gradient_value_k1():
    # single row, K = 1: d loss / d logp_sample = -beta * (1 - sigmoid(z)), d / d logp_neg = alpha * (1 - sigmoid(z))
    pn, ps = t([-3.0], grad=True), t([[-2.0]], grad=True)
    loss, _ = d2o(pn, t([-2.0]), ps, t([[-4.0]]), beta=0.3, alpha=0.2)
    z = 0.3 * 2.0 - 0.2 * (-1.0)
    close(loss, nls(z))
    loss.backward()
    close(ps.grad[0, 0], -0.3 * (1 - sig(z)))
    close(pn.grad[0], 0.2 * (1 - sig(z)))


def test_d2o_k1_equals_instance_level():
    pn, rn, ps, rs = [-3.0, -1.0], [-2.0, -1.5], [[-2.0], [-5.0]], [[-4.0], [-4.0]]
    dist, _ = d2o(t(pn), t(rn), t(ps), t(rs), beta=0.1, alpha=0.1)
    inst, _ = d2o(t(pn), t(rn), t(ps), t(rs), beta=0.1, alpha=0.1, instance_level=True)
    close(dist, d2o_ref(pn, rn, ps, rs, 0.1, 0.1))
    close(dist, inst.item())


def test_d2o_divides_by_k_once():
    # one row, K = 2, sample log-ratios 4 and 6 (sum 10), negative log-ratio 0
    loss, m = d2o(t([-1.0]), t([-1.0]), t([[0.0, 0.0]]), t([[-4.0, -6.0]]), beta=1.0, alpha=0.1)
    once = nls(1.0 * 10 / 2)  # z = 5
    twice = nls(1.0 * 10 / 2 / 2)  # z = 2.5, what dividing by K again would give
    close(loss, once)
    assert abs(loss.item() - twice) > 1e-3
    close(m["z"], 5.0)


def test_d2o_k0_is_npo_like():
    pn, rn = [-3.0, -7.0], [-4.0, -6.0]
    empty = torch.zeros(2, 0, dtype=torch.float64)
    pn_t = t(pn, grad=True)
    loss, m = d2o(pn_t, t(rn), empty, empty, beta=0.1, alpha=0.3)
    expected = (nls(-0.3 * 1.0) + nls(-0.3 * -1.0)) / 2
    close(loss, expected)
    assert not torch.isnan(loss)
    loss.backward()
    assert torch.all(torch.isfinite(pn_t.grad)) and torch.all(pn_t.grad > 0)
    close(m["sample_logratio"], 0.0)
    close(m["kl_on_samples"], 0.0)
    assert_metrics_detached(m)


def test_d2o_k0_instance_level_raises():
    empty = torch.zeros(2, 0)
    with pytest.raises(ValueError):
        d2o(torch.zeros(2), torch.zeros(2), empty, empty, instance_level=True)


def test_d2o_instance_level_value():
    loss, m = d2o(t(PN), t(RN), t(PS), t(RS), beta=0.1, alpha=0.1, instance_level=True)
    close(loss, d2o_instance_ref(PN, RN, PS, RS, 0.1, 0.1))
    assert_metrics_detached(m)
    # the mean of the per-sample arguments equals the distributional z
    _, m_dist = d2o(t(PN), t(RN), t(PS), t(RS), beta=0.1, alpha=0.1)
    close(m["z"], m_dist["z"].item(), 1e-6)


def test_d2o_instance_level_gradient_signs():
    pn, ps = t(PN, grad=True), t(PS, grad=True)
    loss, _ = d2o(pn, t(RN), ps, t(RS), instance_level=True)
    loss.backward()
    assert torch.all(ps.grad < 0) and torch.all(pn.grad > 0)


@pytest.mark.parametrize("seed", range(6))
def test_d2o_distributional_bounded_by_instance(seed):
    g = torch.Generator().manual_seed(seed)
    b, k = 4, 5
    scale = 5.0 * (seed + 1)
    pn = torch.randn(b, generator=g, dtype=torch.float64) * scale
    rn = torch.randn(b, generator=g, dtype=torch.float64) * scale
    ps = torch.randn(b, k, generator=g, dtype=torch.float64) * scale
    rs = torch.randn(b, k, generator=g, dtype=torch.float64) * scale
    for beta, alpha in [(0.1, 0.1), (0.5, 0.2)]:
        dist, _ = d2o(pn, rn, ps, rs, beta=beta, alpha=alpha)
        inst, _ = d2o(pn, rn, ps, rs, beta=beta, alpha=alpha, instance_level=True)
        assert dist.item() <= inst.item() + 1e-12


def test_d2o_shape_errors():
    with pytest.raises(ValueError):
        d2o(torch.zeros(2), torch.zeros(2), torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError):
        d2o(torch.zeros(2), torch.zeros(2), torch.zeros(2, 4), torch.zeros(2, 3))


# --------------------------------------------------------------------------------------- point-wise DPO

P = [-4.0, -6.0, -3.0, -9.0]
R = [-5.0, -5.0, -3.5, -8.0]
H = [1.0, -1.0, 0.5, -1.0]


def test_pointwise_dpo_binary_value():
    labels = torch.tensor([True, False, False, True])
    beta, c = 0.5, 0.1
    loss, m = pointwise_dpo(t(P), t(R), labels=labels, beta=beta, c=c)
    pos = [nls(beta * H[0] + c), nls(beta * H[3] + c)]
    neg = [nls(-(beta * H[1] + c)), nls(-(beta * H[2] + c))]
    close(loss, sum(pos) / 2 + sum(neg) / 2)
    close(m["positive_logratio"], (H[0] + H[3]) / 2, 1e-6)
    close(m["negative_logratio"], (H[1] + H[2]) / 2, 1e-6)
    # rewards: 0.6 (pos, right), -0.4 (neg, right), 0.35 (neg, wrong), -0.4 (pos, wrong)
    close(m["reward_accuracy"], 0.5, 1e-6)
    assert_metrics_detached(m)


def test_pointwise_dpo_unbalanced_subsets_use_own_means():
    # 3 positives, 1 negative: the negative is not diluted by the batch size
    labels = torch.tensor([1, 1, 1, 0])
    loss, _ = pointwise_dpo(t(P), t(R), labels=labels, beta=1.0)
    expected = (nls(H[0]) + nls(H[1]) + nls(H[2])) / 3 + nls(-H[3])
    close(loss, expected)


def test_pointwise_dpo_gradient_signs():
    p = t(P, grad=True)
    labels = torch.tensor([True, False, False, True])
    loss, _ = pointwise_dpo(p, t(R), labels=labels)
    loss.backward()
    assert p.grad[0] < 0 and p.grad[3] < 0  # positives pushed up
    assert p.grad[1] > 0 and p.grad[2] > 0  # negatives pushed down


@pytest.mark.parametrize("all_positive", [True, False])
def test_pointwise_dpo_empty_subset(all_positive):
    p = t(P, grad=True)
    labels = torch.full((4,), all_positive)
    loss, m = pointwise_dpo(p, t(R), labels=labels, beta=0.1)
    if all_positive:
        expected = sum(nls(0.1 * h) for h in H) / 4
    else:
        expected = sum(nls(-0.1 * h) for h in H) / 4
    close(loss, expected)
    loss.backward()
    assert torch.all(torch.isfinite(p.grad))
    assert torch.all(p.grad < 0) if all_positive else torch.all(p.grad > 0)
    close(m["negative_logratio" if all_positive else "positive_logratio"], 0.0)
    assert_metrics_detached(m)


def test_pointwise_dpo_scores():
    s = [1.0, -0.5, 0.0, 2.0]
    p = t(P, grad=True)
    beta, c = 0.5, 0.2
    loss, m = pointwise_dpo(p, t(R), scores=t(s), beta=beta, c=c)
    close(loss, sum((si - beta * h - c) ** 2 for si, h in zip(s, H)) / 4)
    loss.backward()
    # d/dp (s - beta*h - c)^2 / B = -2 beta (s - beta*h - c) / B
    for i in range(4):
        close(p.grad[i], -2 * beta * (s[i] - beta * H[i] - c) / 4)
    assert_metrics_detached(m)


def test_pointwise_dpo_needs_exactly_one_target():
    with pytest.raises(ValueError):
        pointwise_dpo(t(P), t(R))
    with pytest.raises(ValueError):
        pointwise_dpo(t(P), t(R), labels=torch.ones(4, dtype=torch.bool), scores=t(P))
    with pytest.raises(ValueError):
        pointwise_dpo(t(P), t(R), labels=torch.tensor([0, 1, 2, 1]))


# ------------------------------------------------------------------------------------------------ ULMA


def test_ulma_binary_value_and_signs():
    labels = torch.tensor([True, False, False, True])
    beta, c = 0.5, 0.1
    p = t(P, grad=True)
    loss, m = ulma(p, t(R), labels=labels, beta=beta, c=c)
    expected = -(P[0] + P[3]) / 2 + (nls(-(beta * H[1] + c)) + nls(-(beta * H[2] + c))) / 2
    close(loss, expected)
    loss.backward()
    close(p.grad[0], -0.5)  # pure SFT on positives: -1 / n_pos
    close(p.grad[3], -0.5)
    assert p.grad[1] > 0 and p.grad[2] > 0
    assert_metrics_detached(m)


@pytest.mark.parametrize("all_positive", [True, False])
def test_ulma_empty_subset(all_positive):
    p = t(P, grad=True)
    labels = torch.full((4,), all_positive)
    loss, m = ulma(p, t(R), labels=labels, beta=0.1)
    expected = -sum(P) / 4 if all_positive else sum(nls(-0.1 * h) for h in H) / 4
    close(loss, expected)
    loss.backward()
    assert torch.all(torch.isfinite(p.grad))
    assert_metrics_detached(m)


def test_ulma_scores_default_demonstrations_are_top_score():
    s = [1.0, 3.0, 0.0, 3.0]
    beta = 0.5
    p = t(P, grad=True)
    loss, m = ulma(p, t(R), scores=t(s), beta=beta)
    sft_part = -(P[1] + P[3]) / 2
    mse = sum((si - beta * h) ** 2 for si, h in zip(s, H)) / 4
    close(loss, sft_part + mse)
    close(m["demonstration_fraction"], 0.5)
    loss.backward()
    assert torch.all(torch.isfinite(p.grad))
    assert_metrics_detached(m)


def test_ulma_scores_explicit_mask():
    s = [1.0, 3.0, 0.0, 3.0]
    mask = torch.tensor([True, False, False, False])
    loss, _ = ulma(t(P), t(R), scores=t(s), demonstration_mask=mask, beta=0.5, c=0.3)
    expected = -P[0] + sum((si - 0.5 * h - 0.3) ** 2 for si, h in zip(s, H)) / 4
    close(loss, expected)


def test_ulma_argument_errors():
    with pytest.raises(ValueError):
        ulma(t(P), t(R))
    with pytest.raises(ValueError):
        ulma(t(P), t(R), labels=torch.ones(4), demonstration_mask=torch.ones(4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------- DPO


def test_dpo_value_metrics_and_signs():
    pc, pr = t([-3.0, -6.0], grad=True), t([-5.0, -4.0], grad=True)
    rc, rr = t([-4.0, -5.0]), t([-4.0, -5.0])
    beta = 0.2
    loss, m = dpo(pc, pr, rc, rr, beta=beta)
    # h_w = [1, -1], h_l = [-1, 1]
    close(loss, (nls(beta * 2) + nls(beta * -2)) / 2)
    close(m["chosen_reward"], 0.0, 1e-7)
    close(m["rejected_reward"], 0.0, 1e-7)
    close(m["reward_margin"], 0.0, 1e-7)
    close(m["reward_accuracy"], 0.5)
    assert_metrics_detached(m)
    loss.backward()
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)


def test_dpo_accuracy_and_rewards():
    _, m = dpo(t([-1.0]), t([-5.0]), t([-2.0]), t([-4.0]), beta=0.1)
    close(m["chosen_reward"], 0.1, 1e-6)
    close(m["rejected_reward"], -0.1, 1e-6)
    close(m["reward_margin"], 0.2, 1e-6)
    close(m["reward_accuracy"], 1.0)


# ------------------------------------------------------------------------------------------- NPO, SimNPO


def test_npo_value_and_sign():
    p = t([-3.0, -10.0], grad=True)
    beta = 0.1
    loss, m = npo(p, t([-4.0, -7.0]), beta=beta)
    close(loss, ((2 / beta) * nls(-beta * 1.0) + (2 / beta) * nls(-beta * -3.0)) / 2)
    loss.backward()
    assert torch.all(p.grad > 0)
    # d/dh = (2/beta) * beta * sigmoid(beta h) / B = 2 sigmoid(beta h) / B
    close(p.grad[0], 2 * sig(0.1) / 2)
    close(m["negative_logratio"], -1.0, 1e-6)
    assert_metrics_detached(m)


def test_simnpo_length_normalisation():
    p = t([-10.0, -10.0], grad=True)
    beta, gamma = 2.5, 0.5
    loss, m = simnpo(p, torch.tensor([2, 10]), beta=beta, gamma=gamma)
    # per-token log-probs -5 and -1
    expected = ((2 / beta) * nls(-(beta / 2) * -10.0 - gamma) + (2 / beta) * nls(-(beta / 10) * -10.0 - gamma)) / 2
    close(loss, expected)
    close(m["negative_logps_per_token"], -3.0, 1e-6)
    loss.backward()
    assert torch.all(p.grad > 0)
    # d/dlogp of -(2/beta) logsigmoid(u), u = -(beta/|y|) logp - gamma, is (2/|y|) (1 - sigmoid(u)); mean over B = 2
    for i, (length, logp) in enumerate([(2, -10.0), (10, -10.0)]):
        u = -(beta / length) * logp - gamma
        close(p.grad[i], (2 / length) * (1 - sig(u)) / 2)
    assert_metrics_detached(m)


def test_simnpo_same_per_token_logp_same_loss():
    a, _ = simnpo(t([-4.0]), torch.tensor([4]))
    b, _ = simnpo(t([-40.0]), torch.tensor([40]))
    close(a, b.item())


def test_simnpo_rejects_zero_length():
    with pytest.raises(ValueError):
        simnpo(t([-1.0]), torch.tensor([0]))


# ------------------------------------------------------------------------------------------------- KTO


def test_kto_value():
    p, r = [-3.0, -6.0, -2.0], [-4.0, -5.0, -2.5]  # h = 1, -1, 0.5
    labels = torch.tensor([True, False, True])
    pm, rm = t([-5.0, -6.0, -7.0]), t([-5.5, -6.0, -7.4])  # mean mismatched h = 0.3
    beta, wd, wu = 0.5, 1.0, 1.5
    loss, m = kto(t(p), t(r), labels, pm, rm, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    z0 = 0.3
    expected = (wd * (1 - sig(beta * (1 - z0))) + wu * (1 - sig(beta * (z0 - -1))) + wd * (1 - sig(beta * (0.5 - z0)))) / 3
    close(loss, expected)
    close(m["kl_z0"], z0, 1e-6)
    assert_metrics_detached(m)


def test_kto_z0_clamped_at_zero_and_detached():
    p = t([-3.0, -6.0], grad=True)
    pm = t([-9.0, -9.0], grad=True)  # mismatched h = -1 -> z0 = 0
    loss, m = kto(p, t([-4.0, -5.0]), torch.tensor([1, 0]), pm, t([-8.0, -8.0]), beta=0.1)
    close(m["kl_z0"], 0.0)
    expected = ((1 - sig(0.1 * 1.0)) + (1 - sig(0.1 * (0 - -1.0)))) / 2
    close(loss, expected)
    loss.backward()
    assert pm.grad is None or torch.all(pm.grad == 0)
    assert p.grad[0] < 0  # desirable pushed up
    assert p.grad[1] > 0  # undesirable pushed down


def test_kto_no_grad_through_positive_z0():
    pm = t([-1.0, -2.0], grad=True)
    p = t([-3.0, -6.0], grad=True)
    loss, m = kto(p, t([-4.0, -5.0]), torch.tensor([True, False]), pm, t([-3.0, -3.0]))
    close(m["kl_z0"], 1.5, 1e-6)
    loss.backward()
    assert pm.grad is None or torch.all(pm.grad == 0)
    assert torch.all(torch.isfinite(p.grad))


def test_kto_single_label_batch_averages_over_all_rows():
    loss, _ = kto(t([-1.0, -2.0]), t([-1.0, -2.0]), torch.tensor([0, 0]), t([0.0]), t([0.0]), beta=0.1)
    close(loss, 0.5)  # h = 0, z0 = 0: each row 1 - sigmoid(0)


# ------------------------------------------------------------------------------- gradient ascent, SFT


def test_gradient_ascent_and_sft():
    p = t([-2.0, -4.0], grad=True)
    loss, m = gradient_ascent(p)
    close(loss, -3.0)
    loss.backward()
    assert torch.all(p.grad > 0)  # descent lowers the negatives' log-probs
    assert_metrics_detached(m)

    q = t([-2.0, -4.0], grad=True)
    loss, m = sft(q)
    close(loss, 3.0)
    loss.backward()
    assert torch.all(q.grad < 0)  # descent raises the positives' log-probs
    close(m["nll"], 3.0)
    assert_metrics_detached(m)


# ---------------------------------------------------------------------------------------- unlikelihood


def test_unlikelihood_matches_naive_on_moderate_values():
    probs = [[0.1, 0.5, 0.9], [0.3, 0.7, 0.2]]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logp = t([[math.log(q) for q in row] for row in probs], grad=True)
    loss, m = unlikelihood(logp, mask)
    seq0 = -(math.log(1 - 0.1) + math.log(1 - 0.5))
    seq1 = -(math.log(1 - 0.3) + math.log(1 - 0.7) + math.log(1 - 0.2))
    close(loss, (seq0 + seq1) / 2)
    close(m["num_tokens"], 5.0)
    close(m["negative_token_prob"], (0.1 + 0.5 + 0.3 + 0.7 + 0.2) / 5, 1e-6)
    loss.backward()
    # gradient descent lowers every masked token's log-prob; the masked-out one gets none
    assert torch.all(logp.grad[mask.bool()] > 0)
    assert logp.grad[0, 2] == 0
    # d/dlogp of -log(1 - p) is p / (1 - p), averaged over B = 2
    close(logp.grad[0, 1], 0.5 / 0.5 / 2)
    assert_metrics_detached(m)


def test_unlikelihood_tiny_probability_precision():
    # log(1 - p) ~ -p for tiny p: needs log1p, not log(1 - exp(logp))
    logp = torch.tensor([[-30.0]], dtype=torch.float32)
    loss, _ = unlikelihood(logp, torch.tensor([[True]]))
    assert math.isclose(loss.item(), math.exp(-30.0), rel_tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unlikelihood_stable_at_p_one(dtype):
    logp = torch.tensor([[0.0, -1e-9, -1e-3], [0.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, m = unlikelihood(logp, mask)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.all(torch.isfinite(logp.grad))
    # p = 1 is clamped to p = 1 - 1e-6: about -log(1e-6) per token
    per_clamped = -math.log(1e-6)
    expected = ((2 * per_clamped - math.log(1 - math.exp(-1e-3))) + per_clamped) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-3)
    assert_metrics_detached(m)


def test_unlikelihood_ignores_padding_values():
    logp = torch.tensor([[-1.0, float("-inf"), float("nan")]], requires_grad=True)
    loss, _ = unlikelihood(logp, torch.tensor([[True, False, False]]))
    close(loss, -math.log(1 - math.exp(-1.0)), 1e-6)
    loss.backward()
    assert torch.all(torch.isfinite(logp.grad))


# --------------------------------------------------------------------------------------------- registry


def test_objectives_registry():
    """Every module of negalign/objectives declares its methods where its losses live, and every registered
    method's loss is in that package under the method's name."""
    import pkgutil

    from negalign.methods import METHODS

    modules = {f"negalign.objectives.{m.name}" for m in pkgutil.iter_modules(objectives.__path__)
               if not m.name.startswith("_")}
    assert {m.loss.__module__ for m in METHODS.values()} == modules
    assert {"d2o", "pointwise_dpo", "ulma", "dpo", "ipo", "npo", "simnpo", "kto", "gradient_ascent", "sft",
            "context_distillation", "unlikelihood"} <= set(METHODS)
    assert all(getattr(objectives, name) is m.loss for name, m in METHODS.items())
    assert METHODS["d2o"].loss is d2o and METHODS["unlikelihood"].loss is unlikelihood


def test_a_name_is_registered_once():
    from negalign.methods import METHODS, register

    with pytest.raises(ValueError, match="a method named 'dpo' is already registered"):
        register(dataclasses.replace(METHODS["dpo"], loss=objectives.ipo))
    assert register(METHODS["dpo"]) is METHODS["dpo"]  # the same loss again (a module reloaded) is no clash


def test_objectives_callable_by_keyword():
    # other modules call these by keyword: the argument names are part of the interface
    b = 2
    z = torch.zeros(b)
    d2o(policy_negative_logps=z, ref_negative_logps=z, policy_sample_logps=torch.zeros(b, 3),
        ref_sample_logps=torch.zeros(b, 3), beta=0.1, alpha=0.1, instance_level=False)
    pointwise_dpo(policy_logps=z, ref_logps=z, labels=torch.tensor([1, 0]), scores=None, beta=0.1, c=0.0)
    ulma(policy_logps=z, ref_logps=z, labels=None, scores=z, demonstration_mask=None, beta=0.1, c=0.0)
    dpo(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z, ref_rejected_logps=z, beta=0.1)
    npo(policy_negative_logps=z, ref_negative_logps=z, beta=0.1)
    simnpo(policy_negative_logps=z, negative_lengths=torch.tensor([1, 2]), beta=2.5, gamma=0.0)
    kto(policy_logps=z, ref_logps=z, labels=torch.tensor([1, 0]), policy_mismatched_logps=z,
        ref_mismatched_logps=z, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0)
    gradient_ascent(policy_negative_logps=z)
    sft(policy_logps=z)
    unlikelihood(policy_token_logps=torch.full((b, 3), -1.0), completion_mask=torch.ones(b, 3))
