"""The one exception type that means "the user asked for something invalid".

Defined here, in the leaf package, so that ``model_zoo`` needs nothing from ``robench``;
``robench.errors.BadInput`` is this same class.
"""
from __future__ import annotations


class BadInput(ValueError):
    """Invalid user input. The CLI prints ``error: <message>`` on one line and exits with code 2."""
