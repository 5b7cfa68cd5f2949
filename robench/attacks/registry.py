"""Attack registry: public names → norm, backends and default hyper-parameters.

The registry holds only data; the libraries are reached through ``art_backend`` / ``foolbox_backend``
and the shared contract lives in ``robench.attacks.base``.
"""
from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from robench.errors import BadInput, did_you_mean


class AttackKind(enum.Enum):
    """What an attack needs and how it is scored; the backends and the wrapper dispatch on this,
    never on attack names.

    - ``GRADIENT``: white box, fixed ε (searches inside the ε-ball it is given).
    - ``SCORE_BASED``: black box reading the model's scores, fixed ε (Square).
    - ``MINIMAL_NORM``: white box, searches the smallest adversarial perturbation without an ε; run
      once per example set and scored at every ε by projection (C&W, DeepFool).
    - ``DECISION_BASED``: black box reading only the predicted label, minimal norm; starts from
      misclassified points (HopSkipJump).
    """

    GRADIENT = "gradient"
    SCORE_BASED = "score_based"
    MINIMAL_NORM = "minimal_norm"
    DECISION_BASED = "decision_based"

    @property
    def minimal(self) -> bool:
        """Searches without ε (run once, projected and scored at every ε)."""
        return self in (AttackKind.MINIMAL_NORM, AttackKind.DECISION_BASED)

    @property
    def needs_starting_points(self) -> bool:
        """Starts from points the model already misclassifies."""
        return self is AttackKind.DECISION_BASED


def _num(v: float) -> str:
    """10**5 rather than 100000 for the large bounds; g-format otherwise."""
    if v >= 1e4 and float(v).is_integer() and 10 ** round(math.log10(v)) == v:
        return f"10**{round(math.log10(v))}"
    return f"{v:g}"


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: default, type, documented sane range and a one-line description.

    ``kind`` is "int", "float" or "bool"; ``lo``..``hi`` is the closed valid range (``lo_open``
    excludes ``lo``); ``none_ok`` allows None (e.g. ``step_size=None`` → 2.5·ε/steps).
    """

    default: Any
    kind: str
    doc: str
    lo: float = 0
    hi: float = 0
    lo_open: bool = False
    none_ok: bool = False

    def range_text(self) -> str:
        if self.kind == "bool":
            return "True or False"
        what = "an integer" if self.kind == "int" else "a number"
        left = "(" if self.lo_open else "["
        text = f"{what} in {left}{_num(self.lo)}, {_num(self.hi)}]"
        return text + " or None" if self.none_ok else text

    def check(self, attack: str, key: str, value: Any) -> Any:
        bad = BadInput(f"{attack}: hyper-parameter {key}={value!r} is out of range; valid: {self.range_text()}")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if value is None:
            if self.none_ok:
                return None
            raise bad
        if isinstance(value, bool):
            raise bad
        if self.kind == "int":
            if not isinstance(value, numbers.Integral) and not (
                    isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()):
                raise bad
            value = int(value)
        else:
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise bad
            value = float(value)
        if value > self.hi or value < self.lo or (self.lo_open and value == self.lo):
            raise bad
        return value


# The documented sane ranges (a typo such as steps=10**12 is refused before anything runs).
MAX_STEPS = 10 ** 5      # iterations of one attack run
MAX_QUERIES = 10 ** 6    # model queries (black-box attacks)
MAX_RESTARTS = 100       # random restarts / binary-search steps


def _steps(default: int, doc: str = "iterations") -> Param:
    return Param(default, "int", doc, 1, MAX_STEPS)


def _queries(default: int, doc: str) -> Param:
    return Param(default, "int", doc, 1, MAX_QUERIES)


def _restarts(default: int, doc: str = "random restarts") -> Param:
    return Param(default, "int", doc, 1, MAX_RESTARTS)


def _frac(default: float | None, doc: str, *, none_ok: bool = False) -> Param:
    """A step size or fraction in pixel units: (0, 1]."""
    return Param(default, "float", doc, 0, 1, lo_open=True, none_ok=none_ok)


def _bool(default: bool, doc: str) -> Param:
    return Param(default, "bool", doc)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    norm: str  # "linf" | "l2"
    backends: tuple[str, ...]  # first one is the default
    params: dict[str, Param]
    summary: str
    kind: AttackKind = AttackKind.GRADIENT
    budget: str = "cheap"
    steps_of: Callable[[dict], int | None] = field(default=lambda p: p.get("steps"))
    targeted: str = "untargeted"  # the threat model's words: untargeted, or which parts are targeted

    @property
    def minimal(self) -> bool:
        return self.kind.minimal


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
    {"steps": _steps(20),
     "step_size": _frac(1 / 255, "step size in pixels")},
    "I-FGSM / BIM: 20 steps of 1/255 from the clean image (seed protocol)",
))
_add(AttackSpec(
    "pgd", "linf", ("art", "foolbox"),
    {"steps": _steps(20),
     "step_size": _frac(1 / 255, _STEP_PGD, none_ok=True),
     "random_start": _bool(True, "start uniformly in the ε-ball")},
    "PGD L∞: 20 steps of 1/255, random start, projection centred on the clean image (seed protocol, fixed)",
))
_add(AttackSpec(
    "pgd10", "linf", ("art", "foolbox"),
    {"steps": _steps(10),
     "step_size": _frac(None, _STEP_PGD, none_ok=True),
     "random_start": _bool(True, "start uniformly in the ε-ball")},
    "PGD-10 L∞: 10 steps of 2.5·ε/10, random start (common protocol)",
))
_add(AttackSpec(
    "pgd_l2", "l2", ("art", "foolbox"),
    {"steps": _steps(20),
     "step_size": Param(None, "float", _STEP_PGD, 0, 100, lo_open=True, none_ok=True),
     "random_start": _bool(True, "start at a random point of the ε-ball")},
    "PGD L2: 20 steps of 2.5·ε/20, random start",
))
_add(AttackSpec(
    "apgd_ce", "linf", ("art",),
    {"steps": _steps(100),
     "restarts": _restarts(1)},
    "Auto-PGD with cross-entropy loss (Croce & Hein 2020), initial step 2·ε",
    budget="moderate: 100 fwd+bwd per restart; n=20: ~2 s",
))
_add(AttackSpec(
    "cw_l2", "l2", ("foolbox", "art"),
    {"steps": _steps(50, "Adam steps per binary-search step"),
     "binary_search_steps": _restarts(5, "binary-search steps over the trade-off constant"),
     "learning_rate": _frac(0.01, "Adam learning rate"),
     "initial_const": Param(0.01, "float", "initial trade-off constant c", 0, 1e6, lo_open=True),
     "confidence": Param(0.0, "float", "logit margin κ", 0, 1000)},
    "Carlini–Wagner L2 (minimal norm; output projected into the ε-ball)",
    kind=AttackKind.MINIMAL_NORM,
    budget="moderate: 5×50 steps (paper: 9×10000); n=20: foolbox ~5 s, art 40 s–5 min",
))
_add(AttackSpec(
    "deepfool", "l2", ("foolbox", "art"),
    {"steps": _steps(50),
     "overshoot": Param(0.02, "float", "overshoot past the linearised boundary", 0, 1),
     "candidates": Param(10, "int", "classes considered (top logits), capped at num_classes", 2, 10 ** 4)},
    "DeepFool L2 (minimal norm; output projected into the ε-ball)",
    kind=AttackKind.MINIMAL_NORM, budget="cheap: ≤50 steps; n=20: foolbox ~1 s, art ~7 s",
))
_add(AttackSpec(
    "square", "linf", ("art",),
    {"queries": _queries(1000, "iterations (one model query per remaining example each)"),
     "p_init": _frac(0.05, "initial fraction of pixels changed"),
     "restarts": _restarts(1, "restarts")},
    "Square Attack L∞ (score-based black box, Andriushchenko et al. 2020)",
    kind=AttackKind.SCORE_BASED,
    budget="moderate: 1000 queries (paper: 10000); n=20: ~30 s",
    steps_of=lambda p: p["queries"],
))
_add(AttackSpec(
    "hsj", "linf", ("foolbox", "art"),
    {"steps": _steps(20, "iterations (geometric step-size search each)"),
     "max_evals": _queries(1000, "max queries for one gradient estimate"),
     "init_evals": _queries(100, "queries for the first gradient estimate")},
    "HopSkipJump L∞ (decision-based; minimal norm, output projected into the ε-ball)",
    kind=AttackKind.DECISION_BASED,
    budget="moderate: 20 iterations, ≤1000 queries per estimate (paper: 64, 10000); n=20: ~1 min",
))
def _autoattack_params() -> dict[str, Param]:
    """Standard AutoAttack's hyper-parameters: the same for the authors' code and the ART composition
    that cross-checks it."""
    return {"steps": _steps(100, "iterations of APGD-CE, APGD-T (per target) and FAB-T (per target)"),
            "target_classes": Param(9, "int", "target classes of APGD-T and FAB-T (capped at classes − 1)", 1, 999),
            "queries": _queries(5000, "Square queries")}


_add(AttackSpec(
    "autoattack", "linf", ("pyautoattack",), _autoattack_params(),
    "Standard AutoAttack (Croce & Hein 2020) run by the authors' code (pyautoattack, version='standard'): "
    "APGD-CE, APGD-T, FAB-T, Square, worst case per example, on the model's device",
    budget="expensive: APGD-CE 100 fwd+bwd, then APGD-T 9×100, FAB-T 9×100 and Square 5000 queries on the "
    "examples still robust; n=200 ResNet-20 at 8/255: ~2 min on one busy CPU thread",
    targeted="untargeted APGD-CE and Square, targeted APGD-T and FAB-T",
))
_add(AttackSpec(
    "autoattack_art", "linf", ("art",), _autoattack_params(),
    "Standard AutoAttack composed from ART (APGD-CE, APGD-T with ART's DLR, Square; FAB-T from pyautoattack), "
    "worst case per example: an independent implementation to cross-check autoattack",
    budget="expensive: as autoattack, with ART's host-side loops; n=200 ResNet-20 at 8/255: ~4.5 min on one "
    "busy CPU thread",
    targeted="untargeted APGD-CE and Square, targeted APGD-T and FAB-T",
))
_add(AttackSpec(
    "autoattack_lite", "linf", ("art",),
    {"steps": _steps(100, "APGD iterations (CE and DLR)"),
     "queries": _queries(1000, "Square queries")},
    "AutoAttack-lite (ART): APGD-CE + APGD-DLR + Square, 1 restart each, worst case per example "
    "(not the standard AutoAttack)",
    budget="moderate: 2×100 fwd+bwd + 1000 queries; n=20: 3–40 s",
))


# -- backends --------------------------------------------------------------------------------
# backend name → generate(spec, model, x, y, *, eps, params, num_classes) -> raw adversarial batch.
# Each backend module fills this at import (``register_backend``); ``robench.attacks`` imports them,
# so the shared wrapper (``robench.attacks.base``) dispatches without importing any backend.
BACKENDS: dict[str, Callable[..., Any]] = {}


def register_backend(name: str, generate: Callable[..., Any]) -> None:
    """Make ``generate`` the implementation of backend ``name`` (one per name)."""
    if name in BACKENDS and BACKENDS[name] is not generate:
        raise ValueError(f"attack backend {name!r} is registered twice")
    BACKENDS[name] = generate


def backend_generate(name: str) -> Callable[..., Any]:
    """The registered implementation of backend ``name``."""
    if name not in BACKENDS:
        raise BadInput(f"attack backend {name!r} is not available; registered: {', '.join(sorted(BACKENDS)) or 'none'}")
    return BACKENDS[name]


def get_spec(name: str) -> AttackSpec:
    if not isinstance(name, str) or name not in REGISTRY:
        raise BadInput(f"unknown attack {name!r}{did_you_mean(name, REGISTRY)}; choose one of: {', '.join(REGISTRY)}")
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
            "kind": spec.kind.value,
            "minimal_norm": spec.minimal,
            "defaults": ", ".join(f"{k}={_fmt(p.default)}" for k, p in spec.params.items()) or "step=ε",
            "budget": spec.budget,
            "description": spec.summary,
        })
    return rows


def defaults_markdown() -> str:
    """The defaults table as Markdown (README / CLI / docstring)."""
    cols = ["attack", "kind", "norm", "backends", "defaults", "budget", "description"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in attack_defaults():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def param_ranges() -> list[dict]:
    """Every hyper-parameter with its default and documented valid range: one flat record each."""
    return [{"attack": spec.name, "param": k, "default": _fmt(p.default), "range": p.range_text(), "doc": p.doc}
            for spec in REGISTRY.values() for k, p in spec.params.items()]


def ranges_markdown() -> str:
    """The hyper-parameter ranges as Markdown (README)."""
    cols = ["attack", "param", "default", "range", "doc"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in param_ranges():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)
