"""The one exception type that means "the user asked for something invalid".

The class is defined in :mod:`model_zoo.errors` (the leaf package); this is the same object, so
``except robench.errors.BadInput`` catches what the zoo raises.
"""
from __future__ import annotations

from model_zoo.errors import BadInput, did_you_mean

__all__ = ["BadInput", "NonFiniteLogits", "did_you_mean"]


class NonFiniteLogits(BadInput):
    """The model returned NaN or Inf logits during a cell (clean, corrupted or adversarial images)."""
