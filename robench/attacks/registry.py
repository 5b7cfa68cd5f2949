"""Attack registry: public names → norm, backends and default hyper-parameters.

The registry holds only data; the libraries are reached through ``art_backend`` / ``foolbox_backend``
and the shared contract lives in ``robench.attacks.base``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from robench.errors import BadInput


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: its default, a validator and a one-line description."""

    default: Any
    kind: str  # "int>0", "int>=0", "float>0", "float>=0", "float>0|None", "bool"
    doc: str

    def check(self, attack: str, key: str, value: Any) -> Any:
        bad = BadInput(f"{attack}: hyper-parameter {key}={value!r} must be {self.kind.replace('|None', ' or None')}")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if value is None:
            if self.kind.endswith("|None"):
                return None
            raise bad
        if isinstance(value, bool):
            raise bad
        if self.kind.startswith("int"):
            if not isinstance(value, numbers.Integral) and not (isinstance(value, numbers.Real) and float(value).is_integer()):
                raise bad
            value = int(value)
        else:
            if not isinstance(value, numbers.Real):
                raise bad
            value = float(value)
            if not math.isfinite(value):
                raise bad
        strict = ">0" in self.kind
        if (strict and value <= 0) or (not strict and value < 0):
            raise bad
        return value


@dataclass(frozen=True)
class AttackSpec:
    name: str
    norm: str  # "linf" | "l2"
    backends: tuple[str, ...]  # first one is the default
    params: dict[str, Param]
    summary: str
    # Minimal-norm attacks (cw_l2, deepfool, hsj) do not take ε: the wrapper projects their output.
    minimal: bool = False
    budget: str = "cheap"
    steps_of: Callable[[dict], int | None] = field(default=lambda p: p.get("steps"))


_STEP_PGD = "step size in pixels; None → 2.5·ε/steps (Madry et al.)"

REGISTRY: dict[str, AttackSpec] = {}


def _add(spec: AttackSpec) -> None:
    REGISTRY[spec.name] = spec


_add(AttackSpec(
    "fgsm", "linf", ("art", "foolbox"), {},
    "FGSM: one signed-gradient step of size ε (seed protocol)",
    steps_of=lambda p: 1,
))
_add(AttackSpec(
    "ifgsm", "linf", ("art", "foolbox"),
    {"steps": Param(20, "int>0", "iterations"),
     "step_size": Param(1 / 255, "float>0", "step size in pixels")},
    "I-FGSM / BIM: 20 steps of 1/255 from the clean image (seed protocol)",
))
_add(AttackSpec(
    "pgd", "linf", ("art", "foolbox"),
    {"steps": Param(20, "int>0", "iterations"),
     "step_size": Param(1 / 255, "float>0|None", _STEP_PGD),
     "random_start": Param(True, "bool", "start uniformly in the ε-ball")},
    "PGD L∞: 20 steps of 1/255, random start, projection centred on the clean image (seed protocol, fixed)",
))
_add(AttackSpec(
    "pgd10", "linf", ("art", "foolbox"),
    {"steps": Param(10, "int>0", "iterations"),
     "step_size": Param(None, "float>0|None", _STEP_PGD),
     "random_start": Param(True, "bool", "start uniformly in the ε-ball")},
    "PGD-10 L∞: 10 steps of 2.5·ε/10, random start (common protocol)",
))
_add(AttackSpec(
    "pgd_l2", "l2", ("art", "foolbox"),
    {"steps": Param(20, "int>0", "iterations"),
     "step_size": Param(None, "float>0|None", _STEP_PGD),
     "random_start": Param(True, "bool", "start at a random point of the ε-ball")},
    "PGD L2: 20 steps of 2.5·ε/20, random start",
))
_add(AttackSpec(
    "apgd_ce", "linf", ("art",),
    {"steps": Param(100, "int>0", "iterations"),
     "restarts": Param(1, "int>0", "random restarts")},
    "Auto-PGD with cross-entropy loss (Croce & Hein 2020), initial step 2·ε",
    budget="moderate: 100 fwd+bwd per restart; n=20: ~2 s",
))
_add(AttackSpec(
    "cw_l2", "l2", ("foolbox", "art"),
    {"steps": Param(50, "int>0", "Adam steps per binary-search step"),
     "binary_search_steps": Param(5, "int>0", "binary-search steps over the trade-off constant"),
     "learning_rate": Param(0.01, "float>0", "Adam learning rate"),
     "initial_const": Param(0.01, "float>0", "initial trade-off constant c"),
     "confidence": Param(0.0, "float>=0", "logit margin κ")},
    "Carlini–Wagner L2 (minimal norm; output projected into the ε-ball)",
    minimal=True, budget="moderate: 5×50 steps (paper: 9×10000); n=20: foolbox ~5 s, art 40 s–5 min",
))
_add(AttackSpec(
    "deepfool", "l2", ("foolbox", "art"),
    {"steps": Param(50, "int>0", "iterations"),
     "overshoot": Param(0.02, "float>=0", "overshoot past the linearised boundary"),
     "candidates": Param(10, "int>0", "classes considered (top logits), capped at num_classes")},
    "DeepFool L2 (minimal norm; output projected into the ε-ball)",
    minimal=True, budget="cheap: ≤50 steps; n=20: foolbox ~1 s, art ~7 s",
))
_add(AttackSpec(
    "square", "linf", ("art",),
    {"queries": Param(1000, "int>0", "iterations (one model query per remaining example each)"),
     "p_init": Param(0.05, "float>0", "initial fraction of pixels changed"),
     "restarts": Param(1, "int>0", "restarts")},
    "Square Attack L∞ (score-based black box, Andriushchenko et al. 2020)",
    budget="moderate: 1000 queries (paper: 10000); n=20: ~30 s",
    steps_of=lambda p: p["queries"],
))
_add(AttackSpec(
    "hsj", "linf", ("foolbox", "art"),
    {"steps": Param(20, "int>0", "iterations (geometric step-size search each)"),
     "max_evals": Param(1000, "int>0", "max queries for one gradient estimate"),
     "init_evals": Param(100, "int>0", "queries for the first gradient estimate")},
    "HopSkipJump L∞ (decision-based; minimal norm, output projected into the ε-ball)",
    minimal=True, budget="moderate: 20 iterations, ≤1000 queries per estimate (paper: 64, 10000); n=20: ~1 min",
))
_add(AttackSpec(
    "autoattack", "linf", ("art",),
    {"steps": Param(100, "int>0", "APGD iterations (CE and DLR)"),
     "queries": Param(1000, "int>0", "Square queries")},
    "AutoAttack-lite (ART): APGD-CE + APGD-DLR + Square, 1 restart each, worst case per example",
    budget="moderate: 2×100 fwd+bwd + 1000 queries (standard AA: APGD-T, FAB-T, Square 5000); n=20: 3–40 s",
))


def get_spec(name: str) -> AttackSpec:
    if not isinstance(name, str) or name not in REGISTRY:
        raise BadInput(f"unknown attack {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_attacks() -> list[str]:
    """Public attack names, in registry order (the CLI's choices)."""
    return list(REGISTRY)


def backends_for(name: str) -> list[str]:
    """Libraries that implement ``name``; the first is the default backend."""
    return list(get_spec(name).backends)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        k = v * 255
        if v > 0 and abs(k - round(k)) < 1e-9 and round(k) < 255:
            return f"{round(k)}/255"
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def attack_defaults() -> list[dict]:
    """The defaults table: one flat record per attack (also rendered in the package docstring)."""
    rows = []
    for spec in REGISTRY.values():
        rows.append({
            "attack": spec.name,
            "norm": spec.norm,
            "backends": ",".join(spec.backends),
            "default_backend": spec.backends[0],
            "minimal_norm": spec.minimal,
            "defaults": ", ".join(f"{k}={_fmt(p.default)}" for k, p in spec.params.items()) or "step=ε",
            "budget": spec.budget,
            "description": spec.summary,
        })
    return rows


def defaults_markdown() -> str:
    """The defaults table as Markdown (README / CLI / docstring)."""
    cols = ["attack", "norm", "backends", "defaults", "budget", "description"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in attack_defaults():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)
