"""Objectives that learn from chosen/rejected pairs: DPO and IPO."""

from __future__ import annotations

import torch.nn.functional as F

from negalign.objectives._common import Metrics, Tensor, _check_same_shape, _metric, _reward_metrics
from negalign.objectives._registry import DataShape, Method, register


def dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Metrics]:
    """Direct Preference Optimization on pairs (y_w, y_l).

    Source: Rafailov et al., "Direct Preference Optimization", arXiv 2305.18290.

        loss = -mean logsigmoid(beta * (h(y_w) - h(y_l)))

    Metrics: ``chosen_reward`` / ``rejected_reward`` (mean beta * h), ``reward_margin`` and
    ``reward_accuracy`` (fraction of pairs with chosen reward > rejected reward).
    """
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, _reward_metrics(chosen, rejected)


def _pair(c, batch, cfg) -> dict:
    """DPO's and IPO's arguments: the pair's policy and reference log-probs, and beta."""
    return dict(policy_chosen_logps=c.policy("chosen"), policy_rejected_logps=c.policy("rejected"),
                ref_chosen_logps=c.ref("chosen"), ref_rejected_logps=c.ref("rejected"), beta=cfg.beta)


register(Method("dpo", dpo, ("chosen", "rejected"), DataShape.PAIRS, demo={"beta": 0.1}, arguments=_pair))


def ipo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Metrics]:
    """Identity Preference Optimisation on pairs (y_w, y_l).

    Source: Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arXiv 2310.12036, eq. (17).

        loss = mean( ((h(y_w) - h(y_l)) - 1 / (2 * beta))^2 )

    A squared loss that pulls the log-ratio margin to 1/(2 beta) instead of pushing it without bound as DPO
    does. TRL applies it to length-averaged log-probs (`logp_reduction: mean`, the demo's setting).

    Metrics: ``logratio_margin`` (mean h(y_w) - h(y_l)), ``target_margin`` (1 / (2 beta)) and
    ``margin_accuracy`` (fraction of pairs with a positive margin).
    """
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    loss = ((margin - 1.0 / (2.0 * beta)) ** 2).mean()
    metrics = {
        "logratio_margin": _metric(margin),
        "target_margin": _metric(1.0 / (2.0 * beta)),
        "margin_accuracy": _metric((margin.detach() > 0).float()),
    }
    return loss, metrics


register(Method("ipo", ipo, ("chosen", "rejected"), DataShape.PAIRS, demo={"beta": 0.1, "logp_reduction": "mean"},
                arguments=_pair))
