"""What every objective shares: the tensor and metric types and a few checks."""

from __future__ import annotations

import torch

Tensor = torch.Tensor
Metrics = dict[str, Tensor]


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


def _per_token(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths, rejected_lengths
               ) -> tuple[Tensor, Tensor]:
    """The pair's summed log-probs divided by their completions' token counts (all positive): the length-
    normalised log-probs the reference-free pair losses (SimPO, ORPO) score."""
    chosen_lengths = torch.as_tensor(chosen_lengths, device=policy_chosen_logps.device)
    rejected_lengths = torch.as_tensor(rejected_lengths, device=policy_chosen_logps.device)
    _check_same_shape(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                      chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    if torch.any(chosen_lengths <= 0) or torch.any(rejected_lengths <= 0):
        raise ValueError("chosen_lengths and rejected_lengths must all be positive")
    return (policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype),
            policy_rejected_logps / rejected_lengths.to(policy_rejected_logps.dtype))


def _reward_metrics(chosen: Tensor, rejected: Tensor) -> Metrics:
    """A pair loss's implicit rewards: their means, the mean margin and the share of pairs ranked right."""
    return {
        "chosen_reward": _metric(chosen),
        "rejected_reward": _metric(rejected),
        "reward_margin": _metric(chosen - rejected),
        "reward_accuracy": _metric((chosen.detach() > rejected.detach()).float()),
    }


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
