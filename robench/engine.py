"""``robench.evaluate``: a spec → plan → local executor → memory store → the tidy table.

The pieces live in their own modules: :mod:`robench.spec` (what to evaluate, validated),
:mod:`robench.plan` (cells and their identity), :mod:`robench.executors` (running cells),
:mod:`robench.store` (where finished cells go), :mod:`robench.aggregate` (worst case and row order)
and :mod:`robench.provenance`. ``robench sweep`` (:mod:`robench.sweep`) uses the same plan with any
executor and the disk store.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from model_zoo.schemes import lam_schemes
from robench.aggregate import table, worst_case_records
from robench.errors import BadInput
from robench.executors import Inputs, batch_seed, check_corruption_dir, run_attack_group, run_local
from robench.models import ModelCache, check_module
from robench.plan import Cell, fmt_eps, missing, plan_cells, planned_attacks, row_key, units
from robench.provenance import git_sha, provenance
from robench.spec import SEVERITIES, EvalSpec
from robench.store import MemoryStore

__all__ = ["Cell", "EvalSpec", "evaluate", "evaluate_spec", "summary", "plan_cells", "row_key", "worst_case_records",
           "batch_seed", "run_attack_group", "git_sha", "provenance", "SEVERITIES"]


def prepare_models(cache: ModelCache, cells: list[Cell], data) -> list[str]:
    """Load (and so verify) every (model, λ) of the plan before the first cell runs and check it fits
    the data; → one description per model: "name (origin, weights path)"."""
    pairs = list(dict.fromkeys((c.model, c.lam) for c in cells))
    cache.check_weights(pairs)
    described = []
    for model, lam in pairs:
        loaded = cache.get(model, lam)
        if model in cache.modules:
            x, _ = data.first(min(2, len(data))).as_float(cache.device)
            check_module(model, loaded.module, x, data.num_classes)
        elif loaded.num_classes is not None and loaded.num_classes != data.num_classes:
            raise BadInput(f"{model} has {loaded.num_classes} classes but {data.name} has {data.num_classes}; "
                           f"valid datasets for it: {'cifar100' if loaded.num_classes == 100 else 'samples, cifar10'}")
        described.append(("" if lam is None else f"λ={lam:g} ") + loaded.describe(model))
    return described


def evaluate_spec(spec: EvalSpec, *, modules: Mapping[str, torch.nn.Module] | None = None, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Evaluate a spec (validated here) with the local executor and an in-memory store → the table.
    Every input — names, λ, ε, severities, n, data, weights of every (model, λ) — is checked before
    any cell runs. ``log`` gets the checkpoints used (first line), the plan, and a line per cell
    when no progress bar is shown."""
    spec = spec.validate()
    from robench.data import data_label, load_dataset

    data = load_dataset(spec.dataset, spec.data_dir, n=spec.n)
    cells = plan_cells(spec, n=len(data), dataset=data.name)
    if spec.corruption_dir is not None:
        check_corruption_dir(spec.corruption_dir, [c for c in cells if c.dataset == "cifar10c"])
    cache = ModelCache(spec.device, modules)
    described = prepare_models(cache, cells, data)
    context = provenance(cache.device, tf32=spec.tf32)
    if log is not None:
        log("checkpoints: " + "; ".join(described))
        log(f"evaluating {len(cells)} cells on {data_label(data)}, n={len(data)}, device {context['device']} "
            f"({context['precision']}, {context['memory_format']}, batch {spec.batch_size}), "
            f"{spec.threads} thread{'s' if spec.threads != 1 else ''}")
    store = MemoryStore()
    run_local(units(cells), cache, Inputs(data, cache.device, spec.corruption_dir), store,
              batch_size=spec.batch_size, context=context, threads=spec.threads, tf32=spec.tf32, progress=progress,
              log=log)
    return table(store.records(), planned=planned_attacks(cells), models=spec.models)


def evaluate(*, models: Sequence[str] = (), lams: Sequence[float | str | None] = (None,), attacks: Sequence[str] = (),
             eps: Sequence[float | str] | None = None, corruptions: Sequence[str] = (),
             severities: Sequence[int] | None = None, seeds: Sequence[int] = (0,), dataset: str | None = None,
             data_dir: str | os.PathLike | None = None, n: int | None = None, batch_size: int | None = None,
             device: str = "cpu", tf32: bool = False, backend: str | None = None, corruption_dir: str | os.PathLike | None = None,
             attack_params: Mapping[str, Mapping[str, Any]] | None = None, threads: int | None = None,
             model: torch.nn.Module | None = None, name: str | None = None, progress: bool = True,
             log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Evaluate zoo models — or your own ``model`` (any ``nn.Module`` mapping [0,1] images to logits,
    normalisation inside, evaluated under ``name``; its rows have origin "module") — on clean data,
    attacks and corruptions → a tidy table: one row per cell plus a ``worst_case`` row per
    (model, λ, seed, ε) when attacks ran.

    Without ``dataset``/``data_dir`` this uses the 20 bundled ``samples`` images (n=20). ε defaults
    to 8/255 for attacks and severities to 1..5 for corruptions, ``batch_size`` to the device's (256 on
    CPU, 1000 on CUDA); on CUDA the run is deterministic, with TF32 only when ``tf32``. See
    :class:`robench.spec.EvalSpec`."""
    modules = {}
    if model is not None or name is not None:
        if model is None or not isinstance(name, str) or not name:
            raise BadInput("evaluate(model=..., name=...) needs both: the nn.Module and the name its rows carry")
        if name in models:
            raise BadInput(f"name {name!r} is also among models; give the module another name")
        modules[name] = model
        models = (*models, name)
    spec = EvalSpec(models=models, lams=lams, attacks=attacks, eps=eps, attack_params=attack_params or {},
                    corruptions=corruptions, severities=severities, seeds=seeds, dataset=dataset, data_dir=data_dir,
                    corruption_dir=corruption_dir, n=n, batch_size=batch_size, device=device, tf32=tf32, backend=backend,
                    threads=threads, modules=tuple(modules))
    return evaluate_spec(spec, modules=modules, progress=progress, log=log)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The short human table: model, lam, kind, perturbation, eps, severity, n, accuracy, CI."""
    def lam(row) -> str:
        if not missing(row["lam"]):
            return f"{row['lam']:g}"
        return "learned" if str(row["scheme"]) in lam_schemes() else "-"

    return pd.DataFrame({
        "model": df["model"].astype(str),
        "lam": [lam(r) for _, r in df.iterrows()],
        "kind": df["kind"].astype(str),
        "perturbation": df["perturbation"].astype(str),
        "eps": [fmt_eps(e) for e in df["eps"]],
        "severity": ["-" if missing(s) else str(int(s)) for s in df["severity"]],
        "n": df["n"].astype(int),
        "accuracy": [f"{a:.3f}" for a in df["accuracy"]],
        "CI95": [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(df["ci_low"], df["ci_high"])],
        "complete": ["-" if missing(c) else ("yes" if c else "NO") for c in df["complete"]],
    })
