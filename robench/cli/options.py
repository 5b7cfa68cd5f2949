"""Parsers shared by several commands (ε lists, λ values, fractions)."""
from __future__ import annotations

import math
from fractions import Fraction

from robench.errors import BadInput


def parse_number(text: str, what: str) -> float:
    """``8/255``, ``0.031`` or ``1e-2`` → float; anything else is bad input naming ``what``."""
    t = str(text).strip()
    try:
        v = float(Fraction(t)) if "/" in t else float(t)
    except (ValueError, ZeroDivisionError):
        raise BadInput(f"malformed {what} {text!r}; write a number such as 0.031 or a fraction such as 8/255") from None
    if not math.isfinite(v):
        raise BadInput(f"malformed {what} {text!r}; it must be finite")
    return v


def parse_lam(text: str | None) -> float | None:
    if text is None or str(text).strip().lower() in ("", "learned", "none"):
        return None
    v = parse_number(text, "λ (--lam)")
    if not 0.0 <= v <= 1.0:
        raise BadInput(f"λ (--lam) must be in [0, 1] or 'learned', got {text}")
    return v
