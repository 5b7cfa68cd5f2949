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

from robench.aggregate import table, worst_case_records
from robench.errors import BadInput
from robench.executors import Inputs, batch_seed, check_corruption_dir, progress_enabled, run_attack_group, run_local
from robench.models import ModelCache, borrowed, check_module
from robench.progress import CellProgress
from robench.plan import Cell, fmt_eps, missing, plan_cells, planned_attacks, row_key, units
from robench.provenance import git_sha, provenance
from robench.spec import SEVERITIES, EvalSpec
from robench.store import MemoryStore

__all__ = ["Cell", "EvalSpec", "evaluate", "evaluate_spec", "summary", "plan_cells", "row_key", "worst_case_records",
           "batch_seed", "run_attack_group", "git_sha", "provenance", "SEVERITIES"]


def prepare_models(cache: ModelCache, cells: list[Cell], data, batch_size: int = 256) -> list[str]:
    """Load (and so verify) every (model, λ) of the plan before the first cell runs and check it fits
    the data; → one description per model: "name (origin, weights path)"."""
    pairs = list(dict.fromkeys((c.model, c.lam) for c in cells))
    cache.check_weights(pairs)
    described = []
    for model, lam in pairs:
        loaded = cache.get(model, lam)
        if model in cache.modules:
            x, _ = data.first(min(batch_size, len(data))).as_float(cache.device)  # a full batch, not 2 images
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
        check_corruption_dir(spec.corruption_dir, [c for c in cells if c.dataset == "cifar10c"], data.labels)
    cache = ModelCache(spec.device, modules)
    with borrowed(list((modules or {}).values())):  # the caller's modules come back exactly as they were
        described = prepare_models(cache, cells, data, spec.batch_size)
        context = provenance(cache.device, tf32=spec.tf32)
        if log is not None:
            log("checkpoints: " + "; ".join(described))
            log(f"evaluating {len(cells)} cells on {data_label(data)} from {data.source}, n={len(data)}, "
                f"device {context['device']} ({context['precision']}, {context['memory_format']}, batch "
                f"{spec.batch_size}), {spec.threads} thread{'s' if spec.threads != 1 else ''}")
        store = MemoryStore()
        lines = CellProgress(len(cells), 0, cells, log) if log is not None and not progress_enabled(progress) else None
        run_local(units(cells), cache, Inputs(data, cache.device, spec.corruption_dir), store,
                  batch_size=spec.batch_size, context=context, threads=spec.threads, tf32=spec.tf32,
                  progress=progress, log=log, on_unit=lines and lines.on_unit, on_cell=lines and lines.on_cell)
    return table(store.records(), planned=planned_attacks(cells), models=spec.model_columns())


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
    :class:`robench.spec.EvalSpec`. The caller's ``model`` is handed back exactly as it came (mode,
    ``requires_grad``, device, layout).

    Returns a DataFrame with these columns (:data:`robench.results.SCHEMA`), one row per cell:

    - what the cell is: ``model``, ``scheme``, ``lam`` (the fixed λ; 0 for ResNet; NaN where λ is
      learned or does not apply), ``dataset``, ``n`` (the first n test images), ``kind`` (clean,
      attack, corruption, worst_case), ``perturbation`` (none, the attack or the corruption),
      ``backend`` (art, foolbox, pyautoattack), ``norm`` (linf, l2), ``eps`` (pixel units), ``severity``
      (1–5), ``steps``, ``seed``, ``params`` (every attack hyper-parameter, defaults included, as JSON);
    - the result: ``correct``, ``accuracy`` (= correct / n), ``ci_low``, ``ci_high`` (Wilson 95 %),
      ``flags`` (per-example "still correct", packed hex; :func:`robench.results.unpack_flags`),
      ``attacks`` and ``complete`` (worst_case rows: the attacks it is the AND of, and whether every
      planned one finished);
    - provenance: ``seconds``, ``device``, ``robench_version``, ``torch_version``, ``art_version``,
      ``foolbox_version``, ``git_sha``, ``timestamp``, ``data_sha256``, ``data_label`` ("CIFAR-10"
      for the official test split, "CIFAR-10, other copy (sha256 …)" otherwise), ``weights_sha256``,
      ``origin`` (shipped, user, file, module), ``card_sha256``;
    - what ran it (whatever can change a number): ``host``, ``device_name`` (GPU, or CPU model and
      instruction set), ``precision`` (fp32, tf32), ``memory_format``, ``batch_size``,
      ``cuda_version``, ``cudnn_version``, ``pyautoattack_version``."""
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
    """The short human table: model, λ, kind, perturbation, ε, severity, n, accuracy in percent with its
    Wilson 95 % interval (the notation of every view: :func:`robench.results.lam_text`, :func:`pct`)."""
    from robench.results import lam_text, pct

    return pd.DataFrame({
        "model": df["model"].astype(str),
        "lam": [lam_text(lam, scheme) for lam, scheme in zip(df["lam"], df["scheme"])],
        "kind": df["kind"].astype(str),
        "perturbation": df["perturbation"].astype(str),
        "eps": [fmt_eps(e) for e in df["eps"]],
        "severity": ["-" if missing(s) else str(int(s)) for s in df["severity"]],
        "n": df["n"].astype(int),
        "accuracy %": [pct(a) for a in df["accuracy"]],
        "95% CI": [pct(a, lo, hi).split(" ", 1)[1] if not missing(lo) else "–"
                   for a, lo, hi in zip(df["accuracy"], df["ci_low"], df["ci_high"])],
        "complete": ["-" if missing(c) else ("yes" if c else "NO") for c in df["complete"]],
    })
