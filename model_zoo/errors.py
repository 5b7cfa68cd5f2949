"""The one exception type that means "the user asked for something invalid".

Defined here, in the leaf package, so that ``model_zoo`` needs nothing from ``robench``;
``robench.errors.BadInput`` is this same class.
"""
from __future__ import annotations


class BadInput(ValueError):
    """Invalid user input. The CLI prints ``error: <message>`` on one line and exits with code 2."""


def did_you_mean(name: object, choices) -> str:
    """``" (did you mean 'resnet20'?)"`` for the closest of ``choices`` to a mistyped ``name`` (difflib),
    or ``""`` when none is close; appended to an "unknown …" message before its valid choices."""
    import difflib

    if not isinstance(name, str) or not name:
        return ""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not close:  # a case slip (ResNet20) or a missing separator (gaussiannoise)
        folded = {c.lower().replace("_", "").replace("-", ""): c for c in choices}
        hit = folded.get(name.lower().replace("_", "").replace("-", ""))
        close = [hit] if hit else []
    return f" (did you mean {close[0]!r}?)" if close else ""
