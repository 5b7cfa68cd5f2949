"""Name → constructor registry (timm-style). Names are the public API of robench."""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
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


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know about a registered architecture, without its weights.

    ``scheme``: "euler", "damped", "lambda_damped" or "lm"; ``takes_lam``: a fixed λ applies (damped
    schemes); ``learned``: with lam=None the model learns per-block coefficients; ``num_classes`` and
    ``dataset``: what the registered default is built for.
    """

    name: str
    scheme: str
    takes_lam: bool
    learned: bool
    num_classes: int
    dataset: str


@functools.lru_cache(maxsize=None)
def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model (interim: built once on the meta device, no allocation)."""
    import torch

    check_model_name(name)
    with torch.device("meta"):
        m = _MODELS[name](num_classes=10, lam=None)
    scheme = m.scheme.value
    return ModelInfo(name=name, scheme=scheme, takes_lam=scheme in ("damped", "lambda_damped"),
                     learned=bool(m.learned), num_classes=10, dataset="cifar10")
