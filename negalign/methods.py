"""The table of training methods, as the rest of the package reads it.

Each objective module in negalign/objectives/ declares its methods next to their loss functions
(`register(Method(...))`, negalign/objectives/_registry.py); importing negalign.objectives imports every one
of them, so `METHODS` here is complete. Adding a method is one new module in objectives/ with its loss and
its `register` call, plus its recipe, its tests and its section of docs/methods.md ("Adding a method").
"""

from __future__ import annotations

from torch import Tensor

from negalign import objectives  # noqa: F401  (imports every objective module: they fill METHODS)
from negalign.objectives._registry import (
    METHODS,
    SAMPLES,
    Columns,
    DataShape,
    Hyperparameter,
    Layout,
    Method,
    Settings,
    register,
)


def method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def method_loss(columns: Columns, batch: dict, config) -> tuple[Tensor, dict]:
    """The loss of the method the columns belong to, from its named slots, its own hyperparameters (`loss:`)
    and the config's shared ones."""
    m = columns.layout.method
    settings = Settings(config, m.own_values(getattr(config, "loss", None)))
    return m.loss(**m.arguments(columns, batch, settings))


def example_slots(method: Method, example: dict) -> list[str]:
    """The completion texts of one example in column order ("samples" spread out)."""
    return [text for slot in method.slots
            for text in (example[slot] if slot == SAMPLES else [example[slot]])]


__all__ = ["METHODS", "SAMPLES", "Columns", "DataShape", "Hyperparameter", "Layout", "Method", "example_slots",
           "method", "method_loss", "register"]
