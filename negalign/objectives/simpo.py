"""SimPO: reference-free, length-normalised preference optimisation on chosen/rejected pairs."""

from __future__ import annotations

import torch.nn.functional as F

from negalign.objectives._common import Metrics, Tensor, _per_token, _reward_metrics
from negalign.objectives._registry import DataShape, Hyperparameter, Method, register


def simpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> tuple[Tensor, Metrics]:
    """Simple Preference Optimization on pairs (y_w, y_l), with no reference model.

    Source: Meng, Xia and Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arXiv 2405.14734.

        r(y) = (beta / |y|) * logp_theta(y|x)
        loss = mean( -logsigmoid(r(y_w) - r(y_l) - gamma) )

    ``policy_*_logps`` are SUMMED log-probs [B]; ``*_lengths`` the completions' token counts |y| [B] (all
    positive). Metrics: ``chosen_reward`` / ``rejected_reward`` (mean r), ``reward_margin`` (mean r(y_w) -
    r(y_l)) and ``reward_accuracy`` (share of pairs with r(y_w) > r(y_l)).
    """
    chosen, rejected = _per_token(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths)
    chosen, rejected = beta * chosen, beta * rejected
    loss = -F.logsigmoid(chosen - rejected - gamma).mean()
    return loss, _reward_metrics(chosen, rejected)


# SimPO normalises by length itself, so it always takes the summed log-probs; gamma is set as a share of beta,
# as the paper tunes it (gamma/beta about 0.5)
register(Method(
    "simpo", simpo, ("chosen", "rejected"), DataShape.PAIRS, reference=False, demo={"beta": 2.0},
    own=(Hyperparameter("gamma_beta_ratio", 0.5, "SimPO's target reward margin gamma as a share of beta: "
                        "gamma = gamma_beta_ratio * beta (the paper: about 0.5)"),),
    arguments=lambda c, batch, cfg: dict(
        policy_chosen_logps=c.summed("chosen"), policy_rejected_logps=c.summed("rejected"),
        chosen_lengths=c.lengths("chosen"), rejected_lengths=c.lengths("rejected"), beta=cfg.beta,
        gamma=cfg.gamma_beta_ratio * cfg.beta)))
