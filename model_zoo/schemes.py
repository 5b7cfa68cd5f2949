"""Skip rules ("schemes"): each is one registered :class:`Scheme` carrying all it means.

A scheme says how a residual block combines its branch ``f = f(x_n)`` with the state: the update
``step(f, x, prev, c)`` (``prev`` = x_{n−1}, ``c`` = the block's coefficient), whether a fixed λ
applies, whether the model learns a per-block coefficient k_n when λ is not fixed, the name the
coefficient is reported under, how λ_n follows from k_n, the reference code's init range of k_n,
and the update written out for the README. This module imports no torch: the zoo table, the
README and the engine's planning read schemes without building a network.

Adding a scheme is one ``register_scheme(Scheme(...))``; :class:`model_zoo.resnet.CifarResNet`
and everything downstream read the record.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from model_zoo.errors import BadInput


@dataclasses.dataclass(frozen=True)
class Scheme:
    """One skip rule. ``value`` is its name (as in tables and cards)."""

    value: str
    update: str                      # the update, for people (README, zoo list)
    step: Callable[[Any, Any, Any, Any], Any] = dataclasses.field(repr=False, compare=False)
    takes_lam: bool = False          # a fixed λ in [0, 1] may replace the learned coefficients
    learned: bool = False            # with lam=None the model learns one k_n per damped block
    coef: str = "lam"                # name of the per-block coefficient in damping() records
    k_init: tuple[float, float] | None = None  # uniform init range of k_n (reference code)
    lam_of_k: Callable[[Any], Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.value

    def __reduce__(self):
        # pickled (and deep-copied) by name: the registered record is the one definition
        return get_scheme, (self.value,)


_SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    if scheme.value in _SCHEMES:
        raise ValueError(f"scheme {scheme.value!r} is already registered")
    if scheme.learned and scheme.k_init is None:
        raise ValueError(f"scheme {scheme.value!r} learns k_n and needs k_init")
    _SCHEMES[scheme.value] = scheme
    return scheme


def get_scheme(scheme: Scheme | str) -> Scheme:
    """The registered scheme of that name (a :class:`Scheme` passes through)."""
    if isinstance(scheme, Scheme):
        return scheme
    try:
        return _SCHEMES[str(scheme)]
    except KeyError:
        raise BadInput(f"unknown scheme {scheme!r}; valid choices: {', '.join(_SCHEMES)}") from None


def list_schemes() -> list[Scheme]:
    return list(_SCHEMES.values())


def lam_schemes() -> tuple[str, ...]:
    """Names of the schemes whose λ can be fixed."""
    return tuple(s.value for s in _SCHEMES.values() if s.takes_lam)



def _relu_one_minus(k):
    import torch.nn.functional as F

    return F.relu(1 - k)


def _relu_k(k):
    import torch.nn.functional as F

    return F.relu(k)


EULER = register_scheme(Scheme(
    "euler", "x_{n+1} = x_n + f(x_n)",
    step=lambda f, x, prev, c: x + f))
DAMPED = register_scheme(Scheme(
    "damped", "x_{n+1} = f(x_n) + (1−λ_n) x_n, λ_n = relu(1−k_n)",
    step=lambda f, x, prev, lam: f + (1 - lam) * x,
    takes_lam=True, learned=True, coef="lam", k_init=(0.75, 0.8), lam_of_k=_relu_one_minus))
LAMBDA_DAMPED = register_scheme(Scheme(
    "lambda_damped", "x_{n+1} = (1+λ_n) f(x_n) + (1−λ_n) x_n, λ_n = relu(k_n)",
    step=lambda f, x, prev, lam: (1 + lam) * f + (1 - lam) * x,
    takes_lam=True, learned=True, coef="lam", k_init=(0.2, 0.25), lam_of_k=_relu_k))
LM = register_scheme(Scheme(
    "lm", "x_{n+1} = (1−k_n) x_n + k_n x_{n−1} + f(x_n)",
    step=lambda f, x, prev, k: f + (1 - k) * x + k * prev,
    learned=True, coef="k", k_init=(-0.1, 0.0)))
