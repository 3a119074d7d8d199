"""Loss functions over per-sequence log-probabilities.

Every objective is a pure function: it takes log-prob tensors (already reduced over the completion's tokens,
except ``unlikelihood``, which is token-level) and returns ``(loss, metrics)``. ``loss`` is a scalar tensor
that carries gradient; ``metrics`` maps names to detached float scalar tensors. Formulas and sources follow
``docs/methods.md``. Notation: ``h(y) = logp_theta(y|x) - logp_ref(y|x)``.

No model, data or I/O lives here; negalign.methods.METHODS declares which slots feed each function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Metrics = dict[str, Tensor]


# --------------------------------------------------------------------------------------------- helpers


def _metric(x: Tensor | float) -> Tensor:
    """A detached float32 scalar (the mean when ``x`` is not already a scalar)."""
    if not isinstance(x, Tensor):
        return torch.tensor(float(x))
    x = x.detach().float()
    return x.mean() if x.numel() != 1 else x.reshape(())


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; exactly 0 (finite gradient) when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _binary_labels(labels: Tensor | list, like: Tensor) -> Tensor:
    """Bool tensor on ``like``'s device from a bool or 0/1 label tensor shaped like ``like``."""
    labels = torch.as_tensor(labels, device=like.device)
    if labels.shape != like.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} != log-probs shape {tuple(like.shape)}")
    if labels.dtype != torch.bool:
        if not torch.all((labels == 0) | (labels == 1)):
            raise ValueError("binary labels must be bool or 0/1")
        labels = labels != 0
    return labels


def _one_of(labels, scores) -> None:
    if (labels is None) == (scores is None):
        raise ValueError("give exactly one of `labels` (binary) or `scores` (continuous)")


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
    context (the trainer drops it otherwise); 0 when K = 0. ``kl_on_samples_ess`` = (sum w)^2 / (n sum w^2) with
    w = exp(h), the importance weights' effective sample share: near 1/n one anchor carries the estimate and
    kl_on_samples is not to be read as a drift (the trainer drops it below 0.05, and logs the share).
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


# ------------------------------------------------------------------------------ retain terms (any objective)


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


# ------------------------------------------------------------------------------ point-wise DPO and ULMA


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


# --------------------------------------------------------------------------------------------- baselines


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
    metrics = {
        "chosen_reward": _metric(chosen),
        "rejected_reward": _metric(rejected),
        "reward_margin": _metric(chosen - rejected),
        "reward_accuracy": _metric((chosen.detach() > rejected.detach()).float()),
    }
    return loss, metrics


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


def sft(policy_logps: Tensor) -> tuple[Tensor, Metrics]:
    """Supervised fine-tuning (negative log-likelihood) on positives / retain data.

        loss = -mean( logp_theta(y|x) )

    With summed log-probs this is the per-sequence NLL; with mean-reduced log-probs the per-token NLL.
    """
    loss = -policy_logps.mean()
    return loss, {"nll": _metric(loss)}


def context_distillation(policy_sample_logps: Tensor) -> tuple[Tensor, Metrics]:
    """Context distillation: SFT on the self-samples (anchors) drawn under a sampling context, trained on
    the plain prompt (the context is never in training).

        loss = -mean_B mean_k( logp_theta(y_k|x) )          over the [B, K] anchors of a batch

    `sft` on every anchor alike: no reference, no negative, no saturation. D2O with alpha -> 0 reads the same
    anchors but weights each prompt's gradient by (beta/K) * (1 - sigma(z)), which fades as the anchors rise
    above the reference; this loss keeps pulling (docs/methods.md).
    """
    return sft(policy_sample_logps.reshape(-1))


# log(1 - 1e-6): the largest token log-prob unlikelihood uses, so that p -> 1 gives a finite loss.
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


__all__ = ["d2o", "pointwise_dpo", "ulma", "dpo", "ipo", "npo", "simnpo", "kto", "gradient_ascent", "sft",
           "context_distillation", "unlikelihood", "retain_nll", "retain_kl"]
