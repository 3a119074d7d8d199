"""ORPO: reference-free odds-ratio preference optimisation, an SFT term plus an odds-ratio term on pairs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from negalign.objectives._common import Metrics, Tensor, _metric, _per_token
from negalign.objectives._registry import DataShape, Hyperparameter, Method, register

# log(1 - 1e-6): the largest token-mean log-prob taken, so that P(y) -> 1 keeps log odds finite (about 13.8)
_MAX_MEAN_LOGP = math.log1p(-1e-6)


def log_odds(mean_logps: Tensor) -> Tensor:
    """log(P / (1 - P)) for P = exp(m), m < 0 the token-mean log-prob: m - log(1 - exp(m)), with log(1 - exp(m))
    computed stably on both sides of -log 2."""
    m = mean_logps.clamp(max=_MAX_MEAN_LOGP)
    return m - torch.where(m < -math.log(2.0), torch.log1p(-torch.exp(m)), torch.log(-torch.expm1(m)))


def orpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    odds_ratio_weight: float = 0.1,
) -> tuple[Tensor, Metrics]:
    """Odds Ratio Preference Optimization on pairs (y_w, y_l), with no reference model.

    Source: Hong, Lee and Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
    arXiv 2403.07691.

        m(y)        = logp_theta(y|x) / |y|                 the token-mean log-prob; P(y) = exp(m(y))
        log odds(y) = m(y) - log(1 - exp(m(y)))
        loss        = mean( -m(y_w) ) + lambda * mean( -logsigmoid(log odds(y_w) - log odds(y_l)) )

    ``policy_*_logps`` are SUMMED log-probs [B]; ``*_lengths`` the completions' token counts |y| [B] (all
    positive); ``odds_ratio_weight`` is lambda (the paper's 0.1; TRL calls it beta). Metrics: ``nll`` (the
    SFT term), ``odds_ratio_loss`` (the term lambda weights), ``log_odds_ratio`` (mean log odds(y_w) - log
    odds(y_l)) and ``odds_ratio_accuracy`` (share of pairs where it is positive).
    """
    chosen, rejected = _per_token(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths)
    ratio = log_odds(chosen) - log_odds(rejected)
    nll = -chosen.mean()
    odds_ratio_loss = -F.logsigmoid(ratio).mean()
    loss = nll + odds_ratio_weight * odds_ratio_loss
    metrics = {
        "nll": _metric(nll),
        "odds_ratio_loss": _metric(odds_ratio_loss),
        "log_odds_ratio": _metric(ratio),
        "odds_ratio_accuracy": _metric((ratio.detach() > 0).float()),
    }
    return loss, metrics


# ORPO takes the token-mean log-prob itself, so it always reads the summed log-probs and the lengths
register(Method(
    "orpo", orpo, ("chosen", "rejected"), DataShape.PAIRS, reference=False, hyperparameters=(),
    own=(Hyperparameter("odds_ratio_weight", 0.1, "ORPO's lambda: the weight of the odds-ratio term beside the "
                        "SFT term (the paper: 0.1; TRL's beta)"),),
    arguments=lambda c, batch, cfg: dict(
        policy_chosen_logps=c.summed("chosen"), policy_rejected_logps=c.summed("rejected"),
        chosen_lengths=c.lengths("chosen"), rejected_lengths=c.lengths("rejected"),
        odds_ratio_weight=cfg.odds_ratio_weight)))
