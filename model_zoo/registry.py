"""Name → constructor registry (timm-style). Names are the public API of robench."""
from __future__ import annotations

import fnmatch
from typing import Any, Callable

import torch.nn as nn

from robench.errors import BadInput

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; a second registration of a name is a bug."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching an fnmatch ``pattern``, sorted naturally (resnet20 < resnet110)."""
    names = [n for n in _MODELS if fnmatch.fnmatchcase(n, pattern)]
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> tuple:
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def is_model(name: str) -> bool:
    return name in _MODELS


def check_model_name(name: str) -> None:
    if name not in _MODELS:
        raise BadInput(f"unknown model {name!r}; valid choices: {', '.join(list_models())}")


def create_model(name: str, *, num_classes: int = 10, lam: float | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model. ``lam`` fixes λ for every block of a damped model (None: learned)."""
    check_model_name(name)
    model = _MODELS[name](num_classes=num_classes, lam=lam, **kwargs)
    model.model_name = name
    return model
