"""Objectives that learn from labelled or scored single answers: point-wise DPO, ULMA and KTO."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from negalign.objectives._common import Metrics, Tensor, _binary_labels, _check_same_shape, _masked_mean, _metric, _one_of
from negalign.objectives._registry import DataShape, Method, register


def pointwise_dpo(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor | None = None,
    scores: Tensor | None = None,
    beta: float = 0.1,
    c: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """Point-wise DPO.

    Source: Cai et al., "ULMA: Unified Language Model Alignment with Demonstration and Point-wise Human
    Preference", arXiv 2312.02554; official code ``src/llmtuner/tuner/ulma/trainer.py`` (``ulma_loss``).
    ``c = beta * log Z(x)``, approximated by a constant (default 0).

    Binary labels z in {0, 1} (bool or 0/1 tensor [B]):

        loss = -mean_{z=1} logsigmoid(beta * h + c) - mean_{z=0} logsigmoid(-(beta * h + c))

    each mean over its own subset; an empty subset contributes exactly 0 (no NaN, finite gradient).

    Continuous scores s [B] (paper eq. 9):  ``loss = mean (s - beta * h - c)^2``.

    Exactly one of ``labels`` / ``scores`` must be given.
    """
    _one_of(labels, scores)
    _check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps)
    h = policy_logps - ref_logps
    reward = beta * h + c

    if labels is not None:
        pos = _binary_labels(labels, h)
        neg = ~pos
        pos_loss = -_masked_mean(F.logsigmoid(reward), pos)
        neg_loss = -_masked_mean(F.logsigmoid(-reward), neg)
        loss = pos_loss + neg_loss
        correct = torch.where(pos, reward.detach() > 0, reward.detach() < 0)
        metrics = {
            "positive_loss": _metric(pos_loss),
            "negative_loss": _metric(neg_loss),
            "positive_logratio": _metric(_masked_mean(h.detach(), pos)),
            "negative_logratio": _metric(_masked_mean(h.detach(), neg)),
            "reward": _metric(reward),
            "reward_accuracy": _metric(correct.float()),
            "positive_fraction": _metric(pos.float()),
        }
        return loss, metrics

    s = torch.as_tensor(scores, device=h.device, dtype=h.dtype)
    _check_same_shape(scores=s, policy_logps=h)
    loss = ((s - reward) ** 2).mean()
    metrics = {
        "mse": _metric(loss),
        "reward": _metric(reward),
        "score": _metric(s),
        "logratio": _metric(h),
    }
    return loss, metrics


def _feedback(c, batch: dict, cfg) -> dict:
    """Point-wise DPO's and ULMA's arguments: continuous scores where the rows have them, binary labels
    otherwise."""
    feedback = {"scores": batch["scores"]} if "scores" in batch else {"labels": batch["labels_binary"]}
    return dict(policy_logps=c.policy("completion"), ref_logps=c.ref("completion"), beta=cfg.beta, c=cfg.c, **feedback)


register(Method("pointwise_dpo", pointwise_dpo, ("completion",), DataShape.LABELS_OR_SCORES,
                demo={"beta": 0.1, "logp_reduction": "mean"}, arguments=_feedback))


def ulma(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor | None = None,
    scores: Tensor | None = None,
    demonstration_mask: Tensor | None = None,
    beta: float = 0.1,
    c: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """ULMA: SFT on positives / demonstrations, KL-regularised point-wise DPO on the rest.

    Source: Cai et al., arXiv 2312.02554; official code ``src/llmtuner/tuner/ulma/trainer.py``.

    Binary labels z in {0, 1}:

        loss = -mean_{z=1} logp_theta(y|x) - mean_{z=0} logsigmoid(-(beta * h + c))

    each mean over its own subset; an empty subset contributes exactly 0.

    Continuous scores s:

        loss = -mean_{demo} logp_theta(y|x) + mean_all (s - beta * h - c)^2

    where the demonstration rows are ``demonstration_mask`` (bool [B]) or, when it is None, the rows whose
    score equals the batch's maximum score. ``demonstration_mask`` is only meaningful with ``scores``
    (ValueError with ``labels``). Exactly one of ``labels`` / ``scores`` must be given.
    """
    _one_of(labels, scores)
    _check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps)
    h = policy_logps - ref_logps
    reward = beta * h + c

    if labels is not None:
        if demonstration_mask is not None:
            raise ValueError("`demonstration_mask` applies to continuous `scores` only; with `labels` the positives are the demonstrations")
        pos = _binary_labels(labels, h)
        neg = ~pos
        sft_loss = -_masked_mean(policy_logps, pos)
        neg_loss = -_masked_mean(F.logsigmoid(-reward), neg)
        loss = sft_loss + neg_loss
        metrics = {
            "sft_loss": _metric(sft_loss),
            "negative_loss": _metric(neg_loss),
            "positive_logps": _metric(_masked_mean(policy_logps.detach(), pos)),
            "positive_logratio": _metric(_masked_mean(h.detach(), pos)),
            "negative_logratio": _metric(_masked_mean(h.detach(), neg)),
            "positive_fraction": _metric(pos.float()),
        }
        return loss, metrics

    s = torch.as_tensor(scores, device=h.device, dtype=h.dtype)
    _check_same_shape(scores=s, policy_logps=h)
    if demonstration_mask is None:
        demo = s == s.max()
    else:
        demo = _binary_labels(demonstration_mask, h)
    sft_loss = -_masked_mean(policy_logps, demo)
    mse = ((s - reward) ** 2).mean()
    loss = sft_loss + mse
    metrics = {
        "sft_loss": _metric(sft_loss),
        "mse": _metric(mse),
        "demonstration_fraction": _metric(demo.float()),
        "reward": _metric(reward),
        "logratio": _metric(h),
    }
    return loss, metrics


register(Method("ulma", ulma, ("completion",), DataShape.LABELS_OR_SCORES, demo={"beta": 0.1, "logp_reduction": "mean"},
                arguments=_feedback))


def kto(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    policy_mismatched_logps: Tensor,
    ref_mismatched_logps: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Metrics]:
    """Kahneman-Tversky Optimization.

    Source: Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization", arXiv 2402.01306;
    loss normalisation as in TRL's ``KTOTrainer``.

        z0 = max(0, mean(policy_mismatched - ref_mismatched))          (detached)
        desirable rows   (label 1): desirable_weight   * (1 - sigmoid(beta * (h - z0)))
        undesirable rows (label 0): undesirable_weight * (1 - sigmoid(beta * (z0 - h)))
        loss = (sum over desirable rows + sum over undesirable rows) / B

    The mismatched log-probs estimate the KL reference point on pairs (x_i, y_{i+1 mod B}). The caller builds
    them and must never pair a row with itself: with a batch of 1 the shift maps the row onto itself, the
    odd-batch self-pairing bug that other libraries had; such a batch needs another source of mismatched
    completions (or z0 taken as 0).
    """
    _check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps)
    _check_same_shape(policy_mismatched_logps=policy_mismatched_logps, ref_mismatched_logps=ref_mismatched_logps)
    desirable = _binary_labels(labels, policy_logps)
    h = policy_logps - ref_logps
    if policy_mismatched_logps.numel() == 0:
        raise ValueError("KTO needs at least one mismatched pair to estimate z0")
    z0 = (policy_mismatched_logps - ref_mismatched_logps).mean().clamp(min=0).detach()

    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (h - z0)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - h)))
    per_row = torch.where(desirable, desirable_losses, undesirable_losses)
    loss = per_row.sum() / max(h.numel(), 1)

    rewards = beta * h.detach()
    metrics = {
        "kl_z0": _metric(z0),
        "chosen_reward": _metric(_masked_mean(rewards, desirable)),
        "rejected_reward": _metric(_masked_mean(rewards, ~desirable)),
        "positive_logratio": _metric(_masked_mean(h.detach(), desirable)),
        "negative_logratio": _metric(_masked_mean(h.detach(), ~desirable)),
        "desirable_fraction": _metric(desirable.float()),
    }
    return loss, metrics


register(Method("kto", kto, ("completion", "mismatched"), DataShape.LABELS, detached=("mismatched",), demo={"beta": 0.1},
                arguments=lambda c, batch, cfg: dict(
                    policy_logps=c.policy("completion"), ref_logps=c.ref("completion"), labels=batch["labels_binary"],
                    policy_mismatched_logps=c.policy("mismatched"), ref_mismatched_logps=c.ref("mismatched"),
                    beta=cfg.beta, desirable_weight=cfg.desirable_weight,
                    undesirable_weight=cfg.undesirable_weight)))
