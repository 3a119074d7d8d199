"""Loss functions over per-sequence log-probabilities.

Every objective is a pure function: it takes log-prob tensors (already reduced over the completion's tokens,
except ``unlikelihood``, which is token-level) and returns ``(loss, metrics)``. ``loss`` is a scalar tensor
that carries gradient; ``metrics`` maps names to detached float scalar tensors. Formulas and sources follow
``docs/methods.md``. Notation: ``h(y) = logp_theta(y|x) - logp_ref(y|x)``.

No model, data or I/O lives here; negalign.methods.METHODS declares which slots feed each function.
"""

from negalign.objectives._common import Metrics, Tensor
from negalign.objectives.negatives import (
    SATURATED_SIGMOID,
    d2o,
    gradient_ascent,
    npo,
    retain_kl,
    retain_nll,
    simnpo,
    unlikelihood,
)
from negalign.objectives.pairwise import dpo, ipo
from negalign.objectives.pointwise import kto, pointwise_dpo, ulma
from negalign.objectives.supervised import context_distillation, sft

__all__ = ["d2o", "pointwise_dpo", "ulma", "dpo", "ipo", "npo", "simnpo", "kto", "gradient_ascent", "sft",
           "context_distillation", "unlikelihood", "retain_nll", "retain_kl", "SATURATED_SIGMOID", "Metrics", "Tensor"]
