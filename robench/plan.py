"""Cells from a validated spec, cell identity, and the work units an executor runs.

A cell is one model (+λ) × one perturbation at one strength × one seed on the first n images, run
with one batch size on one device kind (attack seeds are drawn per batch, and kernels differ between
devices, so both are part of a cell's identity though not of the table's :data:`~robench.results.KEY`).
The attack cells that share (model, λ, attack, backend, params, seed) form one :class:`Unit`, which
:func:`robench.executors.run_attack_group` runs for all its ε at once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import pandas as pd

from model_zoo.schemes import lam_schemes
from robench.results import KEY
from robench.spec import EvalSpec

CELL_KINDS = ("clean", "attack", "corruption")


def fmt_eps(eps: float | None) -> str:
    if eps is None or missing(eps):
        return "-"
    k = eps * 255
    if not math.isfinite(k):
        return f"{eps:.4g}"
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:.4g}"


def missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work: a model (+λ), one perturbation at one strength, one seed, the first n images."""

    model: str
    lam: float | None
    kind: str
    perturbation: str
    backend: str | None
    eps: float | None
    severity: int | None
    seed: int
    n: int
    dataset: str
    params: tuple = ()
    batch_size: int | None = None  # None: not yet fixed (a hand-made cell); plan_cells always sets it
    device: str = "cpu"  # the device kind: cpu, cuda or mps

    def __post_init__(self) -> None:
        if self.kind not in CELL_KINDS:
            raise ValueError(f"cell kind must be one of {CELL_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "batch_size", None if self.batch_size is None else int(self.batch_size))
        # frozen: normalise through object.__setattr__ so equal cells have equal keys
        object.__setattr__(self, "lam", None if self.lam is None else float(self.lam))
        object.__setattr__(self, "eps", None if self.eps is None else float(self.eps))
        object.__setattr__(self, "severity", None if self.severity is None else int(self.severity))
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    def key(self) -> tuple:
        """Stable identity: the values of :data:`robench.results.KEY` (in that order), ``params``, then
        the batch size and device kind (:data:`robench.results.RUN_KEY`)."""
        return (*self.table_key(), self.params, *self.run_key())

    def run_key(self) -> tuple:
        """(batch size, device kind): equals :func:`robench.results.run_key` of this cell's row."""
        return (self.batch_size, self.device)

    def table_key(self) -> tuple:
        """The :data:`robench.results.KEY` values alone; equals :func:`row_key` of this cell's row."""
        return tuple(getattr(self, c) for c in KEY)

    def cell_id(self) -> str:
        """Short hex digest of :meth:`key`, usable as a file name."""
        return hashlib.sha256(repr(self.key()).encode()).hexdigest()[:16]

    def group(self) -> tuple:
        """The worst-case group of an attack cell: (model, λ, dataset, n, seed, ε)."""
        return (self.model, self.lam, self.dataset, self.n, self.seed, self.eps)

    def label(self) -> str:
        lam = "" if self.lam is None else f" λ={self.lam:g}"
        what = {"clean": "clean", "attack": f"{self.perturbation}[{self.backend}] ε={fmt_eps(self.eps)}",
                "corruption": f"{self.perturbation} s{self.severity}"}[self.kind]
        return f"{self.model}{lam} {what} seed={self.seed}"


def row_key(row: dict | pd.Series) -> tuple:
    """A table row's identity in the form of :meth:`Cell.table_key` (NaN/NA → None; a model without
    a fixed-λ scheme → lam None, so ResNet's lam=0.0 matches its cell)."""
    r = dict(row)
    vals = []
    for col in KEY:
        v = r.get(col)
        if missing(v):
            v = None
        elif col == "lam":
            v = float(v) if str(r.get("scheme")) in lam_schemes() else None
        elif col == "eps":
            v = float(v)
        elif col in ("severity", "seed", "n"):
            v = int(v)
        else:
            v = str(v)
        vals.append(v)
    return tuple(vals)


def plan_cells(spec: EvalSpec, *, n: int, dataset: str) -> list[Cell]:
    """Every cell of a validated spec at the data's real ``n`` and ``dataset``, in a fixed order:
    per model, λ and seed: clean, then each attack × ε, then each corruption × severity.

    The (model, λ) pairs are :meth:`EvalSpec.pairs`: a model written ``NAME@LAM`` at its own λ, a fixed
    λ of the spec only for models whose scheme takes λ; other models get lam=None once. A cell's
    ``model`` is the table's model column, tag included (``resnet20.s1``). With a
    ``corruption_dir`` the corruption cells read CIFAR-10-C (dataset "cifar10c"). An attack's backend
    is resolved here (its default when the spec has none), so keys match rows. Every cell carries the
    spec's batch size and device kind."""
    from robench.attacks import make_attack
    from robench.devices import device_kind

    attack_specs = []
    for a in spec.attacks:
        params = tuple(sorted(spec.params_of(a).items()))
        backend = make_attack(a, eps=spec.eps[0], backend=spec.backend, seed=0, **dict(params)).backend
        attack_specs += [(a, backend, e, params) for e in spec.eps]
    corruption_specs = [(c, s) for c in spec.corruptions for s in (spec.severities or ())]
    c_dataset = "cifar10c" if spec.corruption_dir is not None else dataset
    cells: list[Cell] = []
    for m, lam in spec.pairs():
        for seed in spec.seeds:
            common = dict(model=m, lam=lam, seed=seed, n=n, batch_size=spec.batch_size,
                          device=device_kind(spec.device))
            cells.append(Cell(kind="clean", perturbation="none", backend=None, eps=None, severity=None,
                              dataset=dataset, **common))
            for a, b, e, params in attack_specs:
                cells.append(Cell(kind="attack", perturbation=a, backend=b, eps=e, severity=None,
                                  dataset=dataset, params=params, **common))
            for c, s in corruption_specs:
                cells.append(Cell(kind="corruption", perturbation=c, backend=None, eps=None, severity=s,
                                  dataset=c_dataset, **common))
    return cells


def planned_attacks(cells: list[Cell]) -> dict[tuple, set[str]]:
    """Worst-case group (model, λ, dataset, n, seed, ε) → the attacks the plan has for it."""
    out: dict[tuple, set[str]] = {}
    for c in cells:
        if c.kind == "attack":
            out.setdefault(c.group(), set()).add(c.perturbation)
    return out


@dataclasses.dataclass(frozen=True)
class Unit:
    """What an executor runs in one go: one clean or corruption cell, or the attack cells of one
    (model, λ, attack, backend, params, seed) at every ε of the plan."""

    cells: tuple

    @property
    def kind(self) -> str:
        return self.cells[0].kind

    def label(self) -> str:
        first = self.cells[0]
        if len(self.cells) == 1:
            return first.label()
        return f"{first.label().rsplit(' ε=', 1)[0]} ε={','.join(fmt_eps(c.eps) for c in self.cells)} seed={first.seed}"


def units(cells: list[Cell]) -> list[Unit]:
    """Cells → units in run order: attack cells grouped over ε; corruption cells last, grouped by
    (corruption, severity, seed) so each corrupted set is made once and shared by every model."""
    groups: dict[tuple, list[Cell]] = {}
    order: list[tuple] = []
    for i, c in enumerate(cells):
        k = (c.model, c.lam, c.perturbation, c.backend, c.params, c.seed, c.n, c.dataset) if c.kind == "attack" \
            else ("#", i)
        if k not in groups:
            groups[k] = []
            order.append(k)
        groups[k].append(c)
    out = [Unit(tuple(groups[k])) for k in order]
    return sorted(out, key=lambda u: (u.kind == "corruption",
                                      (u.cells[0].perturbation, u.cells[0].severity, u.cells[0].seed)
                                      if u.kind == "corruption" else ()))
