"""Objectives that learn from negatives: D2O (with its self-sampled anchors), NPO, SimNPO, gradient ascent,
unlikelihood, and the retain terms any objective can add."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from negalign.objectives._common import Metrics, Tensor, _check_same_shape, _metric
from negalign.objectives._registry import SAMPLES, DataShape, Method, register

# --------------------------------------------------------------------------------------------- D2O

SATURATED_SIGMOID = 0.99  # sigmoid(z) above this (z > 4.6): -logsigmoid's gradient factor is below 0.01


def d2o(
    policy_negative_logps: Tensor,
    ref_negative_logps: Tensor,
    policy_sample_logps: Tensor,
    ref_sample_logps: Tensor,
    beta: float = 0.1,
    alpha: float = 0.1,
    instance_level: bool = False,
    has_negative: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """Distributional Dispreference Optimization (D2O).

    Source: Duan et al., "Negating Negatives: Alignment with Human Negative Samples via Distributional
    Dispreference Optimization", arXiv 2403.03419 (Findings of EMNLP 2024).

        z    = (beta / K) * sum_k [logp_theta(y_k|x) - logp_r-(y_k|x)] - alpha * [logp_theta(y_l|x) - logp_r+(y_l|x)]
        loss = mean_B( -logsigmoid(z) )

    ``policy/ref_negative_logps`` are shaped [B] (one human negative y_l per row; a prompt with several
    negatives repeats its sample rows), ``policy/ref_sample_logps`` [B, K] (the K self-samples y_k).
    The sum over samples is divided by K exactly once.

    K = 0 (samples shaped [B, 0]) is the no-sample ablation: ``loss = mean_B(-logsigmoid(-alpha * h(y_l)))``,
    i.e. NPO without its 2/beta scale.

    ``instance_level=True`` is the paper's instance-level variant, one sigmoid per sample:
    ``loss = mean_B( -mean_k logsigmoid(beta * h_-(y_k) - alpha * h_+(y_l)) )``. Since the distributional z is
    the mean over k of these arguments and -logsigmoid is convex, the distributional loss is <= this one
    (Jensen), the bound the paper states.

    ``has_negative`` [B] bool (negalign's extension, docs/retain.md): a row without a human negative is a
    benign prompt with its own anchors only, ``z = (beta / K) * sum_k h(y_k)``, which holds the model to its
    (helpful) answers there; its slot-0 values are placeholders and get no weight. Default: every row has one.

    Metrics: ``z`` (mean over rows; for instance-level the mean of the per-sample arguments, which equals the
    same value), ``sigmoid_z``, ``sample_logratio`` (mean h on samples), ``negative_logratio``,
    ``logratio_margin`` (their difference); the loss balance: ``sample_term`` = mean_B (beta/K) sum_k h(y_k)
    and ``negative_term`` = mean_B -alpha h(y_l), which add up to ``z``, and ``saturated_share``, the share of
    rows (instance-level: of row-sample arguments) with sigmoid(z) > 0.99, whose gradient has all but vanished;
    and ``kl_on_samples`` = mean of exp(h) * h over samples, an importance-weighted estimate of
    KL(pi_theta || pi_ref) that is valid only when the samples were drawn from the reference with no sampling
    context (`d2o_log_metrics` drops it otherwise); 0 when K = 0. ``kl_on_samples_ess`` = (sum w)^2 / (n sum w^2) with
    w = exp(h), the importance weights' effective sample share: near 1/n one anchor carries the estimate and
    kl_on_samples is not to be read as a drift (`d2o_log_metrics` drops it below 0.05; the share is logged).
    """
    _check_same_shape(policy_negative_logps=policy_negative_logps, ref_negative_logps=ref_negative_logps)
    _check_same_shape(policy_sample_logps=policy_sample_logps, ref_sample_logps=ref_sample_logps)
    if policy_negative_logps.dim() != 1:
        raise ValueError(f"negative log-probs must be shaped [B], got {tuple(policy_negative_logps.shape)}")
    if policy_sample_logps.dim() != 2 or policy_sample_logps.shape[0] != policy_negative_logps.shape[0]:
        raise ValueError(
            f"sample log-probs must be shaped [B, K] with B = {policy_negative_logps.shape[0]}, "
            f"got {tuple(policy_sample_logps.shape)}"
        )
    k = policy_sample_logps.shape[1]

    h_neg = policy_negative_logps - ref_negative_logps  # [B]
    h_samples = policy_sample_logps - ref_sample_logps  # [B, K]
    if has_negative is not None:
        has_negative = torch.as_tensor(has_negative, dtype=torch.bool, device=h_neg.device)
        if has_negative.shape != h_neg.shape:
            raise ValueError(f"has_negative must be shaped [B] = {tuple(h_neg.shape)}, got {tuple(has_negative.shape)}")
        if k == 0 and not bool(has_negative.all()):
            raise ValueError("a D2O row without a human negative needs self-samples (K >= 1)")
        h_neg_all = h_neg
        h_neg = torch.where(has_negative, h_neg, torch.zeros_like(h_neg))  # a benign row: no negative term

    if instance_level:
        if k == 0:
            raise ValueError("instance-level D2O needs at least one self-sample (K >= 1)")
        z_inst = beta * h_samples - alpha * h_neg.unsqueeze(1)  # [B, K]
        loss = -F.logsigmoid(z_inst).mean()
        z_metric, sig_metric = z_inst, torch.sigmoid(z_inst.detach())
    else:
        if k == 0:
            z = -alpha * h_neg
        else:
            z = (beta / k) * h_samples.sum(dim=1) - alpha * h_neg
        loss = -F.logsigmoid(z).mean()
        z_metric, sig_metric = z, torch.sigmoid(z.detach())

    if k == 0:
        sample_logratio = torch.zeros((), dtype=torch.float32, device=h_neg.device)
        kl_on_samples = torch.zeros((), dtype=torch.float32, device=h_neg.device)
        weight_ess = torch.ones((), dtype=torch.float32, device=h_neg.device)
    else:
        hs = h_samples.detach().float()
        sample_logratio = hs.mean()
        kl_on_samples = (hs.exp() * hs).mean()
        # the importance weights' effective sample share, (sum w)^2 / (n sum w^2) in (0, 1]: near 1/n, one anchor
        # carries the whole estimate and kl_on_samples (1e9 seen on a GPU run) is noise, not a drift
        weights = (hs - hs.max()).exp()  # the share is scale-free: shifted so that exp never overflows
        weight_ess = weights.sum() ** 2 / (weights.numel() * (weights ** 2).sum())
    if has_negative is None:
        negative_logratio = _metric(h_neg)
    else:  # the mean over rows that have a negative (0 when none does)
        n_negative = has_negative.sum().clamp(min=1)
        negative_logratio = _metric((h_neg_all.detach().float() * has_negative).sum() / n_negative)
    sample_term = (beta / k) * h_samples.detach().float().sum(dim=1) if k else torch.zeros_like(h_neg).float()
    metrics = {
        "z": _metric(z_metric),
        "sigmoid_z": _metric(sig_metric),
        "sample_term": _metric(sample_term),
        "negative_term": _metric(-alpha * h_neg.detach().float()),
        "saturated_share": _metric((sig_metric > SATURATED_SIGMOID).float()),
        "sample_logratio": _metric(sample_logratio),
        "negative_logratio": negative_logratio,
        "logratio_margin": _metric(sample_logratio - negative_logratio),
        "kl_on_samples": _metric(kl_on_samples),
        "kl_on_samples_ess": _metric(weight_ess),
    }
    if has_negative is not None:
        metrics["benign_share"] = _metric((~has_negative).float())
    return loss, metrics


MIN_WEIGHT_SHARE = 0.05  # kl_on_samples is left out of a log line whose importance-weight share is below this


def d2o_log_metrics(merged: dict, anchors: dict | None) -> dict:
    """What a log line shows of D2O's metrics (their means over the line's steps). exp(h) * h estimates a KL
    only under the reference's own samples: kl_on_samples and its weight share go unless the anchors record
    (negalign.anchors.anchor_provenance) says they were drawn from the reference with no sampling context; and
    kl_on_samples goes when one anchor carries it (weight share below MIN_WEIGHT_SHARE): noise, not drift."""
    out = dict(merged)
    if not (anchors and anchors.get("from_reference")):
        out.pop("kl_on_samples", None)
        out.pop("kl_on_samples_ess", None)
    elif out.get("kl_on_samples_ess", 1.0) < MIN_WEIGHT_SHARE:
        out.pop("kl_on_samples", None)
    return out


register(Method("d2o", d2o, ("negative", SAMPLES), DataShape.NEGATIVES_WITH_SAMPLES, log_metrics=d2o_log_metrics,
                demo={"beta": 0.1, "alpha": 0.1}, hyperparameters=("beta", "alpha"), plus_reference=("negative",),
                arguments=lambda c, batch, cfg: dict(
                    policy_negative_logps=c.policy("negative"), ref_negative_logps=c.ref("negative"),
                    policy_sample_logps=c.policy(SAMPLES), ref_sample_logps=c.ref(SAMPLES), beta=cfg.beta,
                    alpha=cfg.alpha, instance_level=cfg.instance_level, has_negative=batch.get("has_negative"))))


def retain_nll(token_logps: Tensor) -> tuple[Tensor, Metrics]:
    """Retain NLL: ``L = -(1/T) sum_t log pi_theta(a_t | x, a_<t)`` over all T answer tokens of the retain
    batch (a per-token mean, so long answers do not outweigh short ones per token)."""
    if token_logps.dim() != 1 or token_logps.numel() == 0:
        raise ValueError(f"retain token log-probs must be a non-empty [T] tensor, got {tuple(token_logps.shape)}")
    loss = -token_logps.mean()
    return loss, {"nll": _metric(loss)}


def retain_kl(policy_token_logsoftmax: Tensor, ref_token_logsoftmax: Tensor) -> tuple[Tensor, Metrics]:
    """Retain KL: ``L = (1/T) sum_t sum_v pi_ref(v|c_t) [log pi_ref(v|c_t) - log pi_theta(v|c_t)]``, the
    forward KL from the reference to the policy at each of the T answer positions c_t, averaged. Inputs are
    full-vocabulary log-softmax rows [T, V]; the reference carries no gradient."""
    _check_same_shape(policy=policy_token_logsoftmax, ref=ref_token_logsoftmax)
    ref = ref_token_logsoftmax.detach()
    per_token = (ref.exp() * (ref - policy_token_logsoftmax)).sum(-1)
    loss = per_token.mean()
    return loss, {"kl": _metric(loss)}


def npo(
    policy_negative_logps: Tensor,
    ref_negative_logps: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Metrics]:
    """Negative Preference Optimization.

    Source: Zhang et al., "Negative Preference Optimization", arXiv 2404.05868 (summed log-probs, beta 0.1).

        loss = mean( -(2 / beta) * logsigmoid(-beta * h(y_l)) )
    """
    _check_same_shape(policy_negative_logps=policy_negative_logps, ref_negative_logps=ref_negative_logps)
    h = policy_negative_logps - ref_negative_logps
    loss = (-(2.0 / beta) * F.logsigmoid(-beta * h)).mean()
    metrics = {
        "negative_logratio": _metric(h),
        "sigmoid_beta_logratio": _metric(torch.sigmoid(beta * h.detach())),
    }
    return loss, metrics


register(Method("npo", npo, ("completion",), DataShape.NEGATIVES, demo={"beta": 0.1},
                arguments=lambda c, batch, cfg: dict(policy_negative_logps=c.policy("completion"),
                                                     ref_negative_logps=c.ref("completion"), beta=cfg.beta)))


def simnpo(
    policy_negative_logps: Tensor,
    negative_lengths: Tensor,
    beta: float = 2.5,
    gamma: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """SimNPO: reference-free, length-normalised NPO.

    Source: Fan et al., "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
    Unlearning", arXiv 2410.07163.

        loss = mean( -(2 / beta) * logsigmoid(-(beta / |y|) * logp_theta(y|x) - gamma) )

    ``policy_negative_logps`` are SUMMED log-probs; ``negative_lengths`` the completion token counts |y| [B]
    (all must be positive).
    """
    lengths = torch.as_tensor(negative_lengths, device=policy_negative_logps.device)
    _check_same_shape(policy_negative_logps=policy_negative_logps, negative_lengths=lengths)
    if torch.any(lengths <= 0):
        raise ValueError("negative_lengths must all be positive")
    per_token = policy_negative_logps / lengths.to(policy_negative_logps.dtype)
    loss = (-(2.0 / beta) * F.logsigmoid(-beta * per_token - gamma)).mean()
    metrics = {
        "negative_logps": _metric(policy_negative_logps),
        "negative_logps_per_token": _metric(per_token),
    }
    return loss, metrics


# SimNPO normalises by length itself, so it always takes the summed log-prob
register(Method("simnpo", simnpo, ("completion",), DataShape.NEGATIVES, reference=False, demo={"beta": 2.5},
                arguments=lambda c, batch, cfg: dict(policy_negative_logps=c.summed("completion"),
                                                     negative_lengths=c.lengths("completion"), beta=cfg.beta,
                                                     gamma=cfg.gamma)))


def gradient_ascent(policy_negative_logps: Tensor) -> tuple[Tensor, Metrics]:
    """Gradient ascent on negatives (the classic unlearning baseline).

    Source: e.g. Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models",
    arXiv 2210.01504; Yao et al., "Large Language Model Unlearning", arXiv 2310.10683.

        loss = mean( logp_theta(y_l|x) )

    Minimising it lowers the negatives' likelihood (it is unbounded below: pair it with a retain term or few
    steps).
    """
    loss = policy_negative_logps.mean()
    return loss, {"negative_logps": _metric(policy_negative_logps)}


register(Method("gradient_ascent", gradient_ascent, ("completion",), DataShape.NEGATIVES, reference=False,
                hyperparameters=(), arguments=lambda c, batch, cfg: dict(policy_negative_logps=c.policy("completion"))))


_UL_MAX_LOGP = math.log1p(-1e-6)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both ends (Maechler's switch at -log 2)."""
    return torch.where(
        x < -math.log(2.0),
        torch.log1p(-torch.exp(x)),
        torch.log(-torch.expm1(x)),
    )


def unlikelihood(policy_token_logps: Tensor, completion_mask: Tensor) -> tuple[Tensor, Metrics]:
    """Token-level unlikelihood on negatives.

    Source: Welleck et al., "Neural Text Generation with Unlikelihood Training", arXiv 1908.04319.

        per sequence: -sum_t mask_t * log(1 - p_theta(y_t | x, y_<t)),   loss = mean over B

    ``policy_token_logps`` [B, T] holds log p of each target token, ``completion_mask`` [B, T] (bool or 0/1)
    marks completion tokens. log(1 - p) is computed as a stable log1mexp with log p clamped to at most
    log(1 - 1e-6), so p = 1 gives a finite loss (about 13.8 per token; no gradient beyond the clamp, as in the
    original clamp of 1 - p at 1e-5). Masked positions are replaced before any arithmetic, so padding
    values (even -inf) cannot leak NaN.
    """
    mask = torch.as_tensor(completion_mask, device=policy_token_logps.device)
    _check_same_shape(policy_token_logps=policy_token_logps, completion_mask=mask)
    if policy_token_logps.dim() != 2:
        raise ValueError(f"token log-probs must be shaped [B, T], got {tuple(policy_token_logps.shape)}")
    mask = mask.bool() if mask.dtype == torch.bool else mask != 0

    logp = torch.where(mask, policy_token_logps, torch.full_like(policy_token_logps, -1.0))
    logp = logp.clamp(max=_UL_MAX_LOGP)
    log_one_minus_p = torch.where(mask, _log1mexp(logp), torch.zeros_like(logp))
    per_sequence = -log_one_minus_p.sum(dim=1)
    loss = per_sequence.mean()

    n_tokens = mask.sum()
    token_probs = torch.where(mask, logp.detach().exp(), torch.zeros_like(logp))
    metrics = {
        "unlikelihood_per_sequence": _metric(per_sequence),
        "negative_token_prob": _metric(token_probs.sum() / n_tokens.clamp(min=1)),
        "num_tokens": _metric(n_tokens.float()),
    }
    return loss, metrics


register(Method("unlikelihood", unlikelihood, ("completion",), DataShape.NEGATIVES, reference=False,
                hyperparameters=(), token_level=True,
                arguments=lambda c, batch, cfg: dict(zip(("policy_token_logps", "completion_mask"), c.tokens))))
