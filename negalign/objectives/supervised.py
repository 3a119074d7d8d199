"""Plain likelihood on answers to imitate: SFT and context distillation."""

from __future__ import annotations

from negalign.objectives._common import Metrics, Tensor, _metric
from negalign.objectives._registry import SAMPLES, DataShape, Method, register


def sft(policy_logps: Tensor) -> tuple[Tensor, Metrics]:
    """Supervised fine-tuning (negative log-likelihood) on positives / retain data.

        loss = -mean( logp_theta(y|x) )

    With summed log-probs this is the per-sequence NLL; with mean-reduced log-probs the per-token NLL.
    """
    loss = -policy_logps.mean()
    return loss, {"nll": _metric(loss)}


register(Method("sft", sft, ("completion",), DataShape.POSITIVES, reference=False, hyperparameters=(),
                arguments=lambda c, batch, cfg: dict(policy_logps=c.policy("completion"))))


def context_distillation(policy_sample_logps: Tensor) -> tuple[Tensor, Metrics]:
    """Context distillation: SFT on the self-samples (anchors) drawn under a sampling context, trained on
    the plain prompt (the context is never in training).

        loss = -mean_B mean_k( logp_theta(y_k|x) )          over the [B, K] anchors of a batch

    `sft` on every anchor alike: no reference, no negative, no saturation. D2O with alpha -> 0 reads the same
    anchors but weights each prompt's gradient by (beta/K) * (1 - sigma(z)), which fades as the anchors rise
    above the reference; this loss keeps pulling (docs/methods.md).
    """
    return sft(policy_sample_logps.reshape(-1))


# SFT on D2O's anchors and nothing else: one example per prompt of an anchors file (`data`), its K samples
register(Method("context_distillation", context_distillation, (SAMPLES,), DataShape.SAMPLES, reference=False,
                hyperparameters=(), arguments=lambda c, batch, cfg: dict(policy_sample_logps=c.policy(SAMPLES))))
