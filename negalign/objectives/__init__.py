"""Loss functions over per-sequence log-probabilities, each declared as a method where it is defined.

Every objective is a pure function: it takes log-prob tensors (already reduced over the completion's tokens,
except ``unlikelihood``, which is token-level) and returns ``(loss, metrics)``. ``loss`` is a scalar tensor
that carries gradient; ``metrics`` maps names to detached float scalar tensors. Formulas and sources follow
``docs/methods.md``. Notation: ``h(y) = logp_theta(y|x) - logp_ref(y|x)``.

Next to its function, each module registers the method that trains with it (``register(Method(...))``: which
slots feed the function, which rows it trains on, its hyperparameters). Importing this package imports every
module in it (a new objective is a new module, nothing to list here), and every registered method's loss is
also here by the method's name (``objectives.dpo``). No model, data or I/O lives here.
"""

import importlib
import pkgutil

from negalign.objectives._common import Metrics, Tensor
from negalign.objectives._registry import METHODS
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

for _module in pkgutil.iter_modules(__path__):  # the objectives added as modules of their own (simpo.py, ...)
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
# a module named like its method (simpo.py) would otherwise leave the module, not the loss, under that name
globals().update({name: m.loss for name, m in METHODS.items()})

__all__ = ["d2o", "pointwise_dpo", "ulma", "dpo", "ipo", "npo", "simnpo", "kto", "gradient_ascent", "sft",
           "context_distillation", "unlikelihood", "retain_nll", "retain_kl", "SATURATED_SIGMOID", "Metrics", "Tensor"]
