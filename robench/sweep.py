"""Sweeps: a TOML spec (``configs/*.toml``) planned like ``robench eval``, run resumably on any
executor (local; Ray) into the crash-safe disk store (:mod:`robench.store`), merged into one table.

A finished sweep is never silently mixed with a different one: re-using an out dir with another
dataset, n or data fingerprint, batch size, device kind, TF32 setting, robench code (the sha256 of its
sources) or library versions, with another copy of CIFAR-10-C (sha256 of each file read), or after
the zoo weights of a (model, λ) it already ran changed (weights sha256), is :class:`BadInput` (one
line naming what differs); so is a stored cell whose key or fingerprint disagrees with the plan (e.g.
the same cell with other attack parameters). Adding models, attacks, ε, ... to the
config of an existing out dir is fine: only the new cells run, and the table holds every stored cell.
An existing folder that is not a sweep store is refused unless ``force``.

Worst-case rows are not cells: :func:`merge` derives them from the stored flags every time the table
is built, and marks them ``complete`` only where every attack planned for the group (recorded in
``sweep.json``) has finished.

Relative paths in a config (``data_dir``, ``corruption_dir``, ``out``) are relative to the working
directory, like the same options of ``robench eval``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from robench.errors import BadInput
from robench.plan import Cell, planned_attacks, plan_cells, units
from robench.spec import CONFIG_KEYS, EvalSpec, load_spec
from robench.store import DiskStore, is_sweep_store, iter_parts, planned_from_meta, read_json

EXECUTORS = ("local", "ray")
SweepConfig = EvalSpec  # a sweep's config is an evaluation spec with an ``out`` folder
load_config = load_spec
__all__ = ["CONFIG_KEYS", "EXECUTORS", "SweepConfig", "SweepPlan", "fingerprint", "load_config", "merge", "plan_sweep",
           "run_sweep"]


@dataclasses.dataclass
class SweepPlan:
    """Everything a run needs, validated; nothing written yet."""

    config: EvalSpec
    out: Path
    cells: list
    data: Any  # robench.data.Dataset, first n images
    store: DiskStore

    @property
    def weights(self) -> dict[str, str]:
        return self.store.weights

    @property
    def done(self) -> set[str]:
        return self.store.done

    @property
    def pending(self) -> list[Cell]:
        return [c for c in self.cells if c.cell_id() not in self.store.done]

    def describe(self) -> str:
        pairs = len({(c.model, c.lam) for c in self.cells})
        seeds = len({c.seed for c in self.cells})
        done = sum(1 for c in self.cells if c.cell_id() in self.store.done)
        return (f"plan: {len(self.cells)} cells ({pairs} model/λ pair{'s' if pairs != 1 else ''}, {seeds} seed"
                f"{'s' if seeds != 1 else ''}, {self.data.name} n={len(self.data)}), {done} already done, "
                f"{len(self.cells) - done} to run; out {self.out}; batch {self.config.batch_size} on "
                f"{self.store.fingerprint['device']}{' with TF32' if self.config.tf32 else ''}")


def _weights(pairs: list[tuple[str, float | None]], num_classes: int) -> dict[str, str]:
    """Every (model, λ) has verified trained weights that fit the data; → zoo stem → weights sha256."""
    import model_zoo
    from model_zoo.checkpoint import zoo_stem
    from robench.models import ModelCache

    ModelCache("cpu").check_weights(pairs)
    shas = {}
    for m, lam in pairs:
        entry = model_zoo.load_entry(m, lam=lam)  # verifies sha256, safetensors and fit; BadInput otherwise
        if int(entry.card.num_classes) != num_classes:
            raise BadInput(f"{m} has {entry.card.num_classes} classes but the sweep's data has {num_classes}")
        shas[zoo_stem(m, lam)] = entry.card.weights_sha256
    return shas


def fingerprint(spec: EvalSpec, data) -> dict:
    """What every cell of a sweep folder shares: the data (name, n, sha256), the batch size, device kind
    and TF32 setting of a validated ``spec``, robench's code fingerprint and the library versions."""
    from robench.devices import device_kind
    from robench.provenance import code_fingerprint, library_versions

    return {"dataset": data.name, "n": len(data), "data_sha256": data.sha256, "batch_size": spec.batch_size,
            "device": device_kind(spec.device), "tf32": bool(spec.tf32), "code": code_fingerprint(),
            "versions": library_versions()}


def plan_sweep(config: EvalSpec, *, out: str | os.PathLike | None = None, executor: str = "local",
               force: bool = False) -> SweepPlan:
    """Validate the spec against the registries, the data, the zoo and the out dir; write nothing.

    With the ray executor the device is checked by the workers (the driver may have no GPU)."""
    from robench.data import load_dataset
    from robench.executors import check_corruption_dir

    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    out = out if out is not None else config.out
    if out is None:
        raise BadInput("no output folder: set out = \"results/<name>\" in the config or pass --out")
    spec = config.replace(out=os.fspath(out)).validate(check_device=executor == "local")
    if executor == "ray" and not re.fullmatch(r"cpu|cuda(:\d+)?", spec.device):
        raise BadInput(f"device {spec.device!r} cannot be used with the ray executor; valid choices: cpu, cuda")
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"out {out} exists and is not a folder")
    if out.is_dir() and not is_sweep_store(out) and {p.name for p in out.iterdir()} - {".lock", "cells"} and not force:
        raise BadInput(f"out {out} is a folder that is not a sweep store (no sweep.json) and not empty; "
                       "pass --force to write the sweep into it anyway, or choose another folder")
    data = load_dataset(spec.dataset, spec.data_dir, n=spec.n)
    cells = plan_cells(spec, n=len(data), dataset=data.name)
    corruption_files = {}
    if spec.corruption_dir is not None:
        corruption_files = check_corruption_dir(spec.corruption_dir, [c for c in cells if c.dataset == "cifar10c"])
    weights = _weights(list(dict.fromkeys((c.model, c.lam) for c in cells)), data.num_classes)
    store = DiskStore(out=out, fingerprint=fingerprint(spec, data), weights=weights, config=spec.to_dict(),
                      planned=planned_attacks(cells), corruption_files=corruption_files)
    store.check(cells)
    return SweepPlan(config=spec, out=out, cells=cells, data=data, store=store)


def merge(out: str | os.PathLike) -> pd.DataFrame:
    """Every finished cell of a sweep folder plus the derived worst-case rows → one tidy table, in
    the one row order of :func:`robench.aggregate.sort_key`; worst-case rows of groups whose planned
    attacks have not all finished are marked ``complete`` = False."""
    from robench.aggregate import table

    out = Path(out)
    if not out.is_dir():
        raise BadInput(f"sweep folder {out} does not exist")
    if not is_sweep_store(out):
        raise BadInput(f"{out} is not a sweep folder (no sweep.json)")
    meta = read_json(out / "sweep.json", "sweep file")
    records = [part["record"] for _, part in iter_parts(out)]
    if not records:
        raise BadInput(f"sweep folder {out} has no finished cells yet")
    models = (meta.get("config") or {}).get("models") or []
    return table(records, planned=planned_from_meta(meta), models=[str(m) for m in models])


def run_sweep(plan: SweepPlan, *, executor: str = "local", address: str | None = None,
              log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run the plan's pending cells, persisting each as it finishes; → the merged table (also written
    to ``<out>/results.parquet`` and ``.csv``)."""
    from robench.results import write_table

    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise BadInput("--address applies to the ray executor; add --executor ray")
    from robench.executors import ray_connect

    ray = ray_connect(address) if executor == "ray" else None  # before anything is written
    spec = plan.config
    plan.out.mkdir(parents=True, exist_ok=True)
    with plan.store.open() as store:
        todo = units(plan.pending)
        if executor == "local":
            from robench.executors import Inputs, run_local
            from robench.models import ModelCache
            from robench.provenance import provenance

            cache = ModelCache(spec.device)
            run_local(todo, cache, Inputs(plan.data, cache.device, spec.corruption_dir), store,
                      batch_size=spec.batch_size, context=provenance(cache.device, tf32=spec.tf32),
                      threads=spec.threads, tf32=spec.tf32, progress=False, log=log)
        else:
            from robench.executors import run_ray

            run_ray(todo, plan.data, store, ray, device=spec.device, batch_size=spec.batch_size,
                    corruption_dir=spec.corruption_dir, threads=spec.threads, tf32=spec.tf32, log=log)
        df = merge(plan.out)
        write_table(df, plan.out / "results")
    return df
