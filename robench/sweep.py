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
from robench.fileio import check_writable
from robench.plan import Cell, planned_attacks, plan_cells, units
from robench.progress import CellProgress
from robench.spec import CONFIG_KEYS, EvalSpec, load_spec
from robench.store import DiskStore, is_sweep_store, iter_parts, planned_from_meta, read_json

EXECUTORS = ("local", "ray")
SweepConfig = EvalSpec  # a sweep's config is an evaluation spec with an ``out`` folder
load_config = load_spec
__all__ = ["CONFIG_KEYS", "EXECUTORS", "SweepConfig", "SweepPlan", "estimate", "finished", "fingerprint", "load_config",
           "merge", "plan_sweep", "run_sweep", "sweep_checks"]


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

    With the ray executor the device is checked on the cluster (the driver may have no GPU), and
    ``threads`` (the CPUs each task reserves and its torch threads) defaults to 1, not to the
    driver's core count."""
    from robench.data import load_dataset
    from robench.executors import check_corruption_dir

    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    out = out if out is not None else config.out
    if out is None:
        raise BadInput("no output folder: set out = \"results/<name>\" in the config or pass --out")
    spec = config.replace(out=os.fspath(out)).validate(check_device=executor == "local")
    if executor == "ray" and config.threads is None:
        spec = spec.replace(threads=1)
    if executor == "ray" and not re.fullmatch(r"cpu|cuda(:\d+)?", spec.device):
        raise BadInput(f"device {spec.device!r} cannot be used with the ray executor; valid choices: cpu, cuda")
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"out {out} exists and is not a folder")
    check_writable(out, what="out", folder=True)
    if out.is_dir() and not is_sweep_store(out) and {p.name for p in out.iterdir()} - {".lock", "cells"} and not force:
        raise BadInput(f"out {out} is a folder that is not a sweep store (no sweep.json) and not empty; "
                       "pass --force to write the sweep into it anyway, or choose another folder")
    data = load_dataset(spec.dataset, spec.data_dir, n=spec.n)
    cells = plan_cells(spec, n=len(data), dataset=data.name)
    corruption_files = {}
    if spec.corruption_dir is not None:
        corruption_files = check_corruption_dir(spec.corruption_dir, [c for c in cells if c.dataset == "cifar10c"],
                                                data.labels)
    weights = _weights(list(dict.fromkeys((c.model, c.lam) for c in cells)), data.num_classes)
    store = DiskStore(out=out, fingerprint=fingerprint(spec, data), weights=weights, config=spec.to_dict(),
                      planned=planned_attacks(cells), corruption_files=corruption_files)
    store.check(cells)
    return SweepPlan(config=spec, out=out, cells=cells, data=data, store=store)


def estimate(plan: SweepPlan) -> tuple[float, str]:
    """Rough seconds the plan's pending cells will take, and how that was estimated: from the seconds
    of the cells already finished in the folder when there are any, else by timing a forward pass of
    each model here (:mod:`robench.progress`: attacks counted in forward+backward passes)."""
    from robench import progress

    pending = plan.pending
    if not pending:
        return 0.0, "nothing to run"
    done = {cid: part.get("record") or {} for cid, part in iter_parts(plan.out)} if plan.out.is_dir() else {}
    rate = progress.rate_from_records(plan.cells, done)
    if rate is not None:
        work = sum(progress.costs(pending))
        return rate * work, "fitted to the seconds of the cells already finished here"
    from robench.models import ModelCache

    cache = ModelCache(plan.config.device if plan.config.device else "cpu")
    per_image = progress.forward_seconds(cache, [(c.model, c.lam) for c in pending], threads=plan.config.threads)
    return (progress.estimate(pending, per_image),
            "a forward pass of each model timed here on 64 images; attacks counted as forward+backward passes")


def finished(plan: SweepPlan) -> int:
    """How many of the plan's cells are stored in its folder now (after an interruption, say)."""
    ids = {cid for cid, _ in iter_parts(plan.out)} if plan.out.is_dir() else set()
    return sum(1 for c in plan.cells if c.cell_id() in ids)


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
    from robench.results import records_of, validate_table

    meta = read_json(out / "sweep.json", "sweep file")
    parts = list(iter_parts(out))
    if not parts:
        raise BadInput(f"sweep folder {out} has no finished cells yet")
    # every stored number is checked against the cell's own flags before it is published
    names = [str(out / "cells" / f"{cell_id}.json") for cell_id, _ in parts]
    checked = validate_table(pd.DataFrame([part["record"] for _, part in parts]), "sweep folder " + str(out),
                             row_label=lambda i: f"stored cell {names[i]}")
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    models = config.get("models") if isinstance(config.get("models"), list) else []
    return table(records_of(checked), planned=planned_from_meta(meta), models=[_model_column(str(m)) for m in models])


def _model_column(ref: str) -> str:
    """A config's model (``inresnet20@0.5.s2``) → its table model column (``inresnet20.s2``), for row order."""
    from robench.spec import parse_model_ref

    try:
        return parse_model_ref(ref).model
    except BadInput:  # a model no longer registered (or a module name): order it by its text
        return ref


def _ray_options(executor: str, address: str | None, ray_options) -> Any:
    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    if (address is not None or ray_options is not None) and executor != "ray":
        raise BadInput("--address applies to the ray executor; add --executor ray")
    if executor != "ray":
        return None
    from robench.ray_executor import RayOptions

    options = ray_options if ray_options is not None else RayOptions()
    return options if address is None else dataclasses.replace(options, address=address)


def run_sweep(plan: SweepPlan, *, executor: str = "local", address: str | None = None,
              log: Callable[[str], None] = print, ray_options=None) -> pd.DataFrame:
    """Run the plan's pending cells, persisting each as it finishes; → the merged table (also written
    to ``<out>/results.parquet`` and ``.csv``). ``ray_options``: a
    :class:`robench.ray_executor.RayOptions` (its address is replaced by ``address`` when given)."""
    from robench.results import write_table

    options = _ray_options(executor, address, ray_options)
    ray = None
    if options is not None:
        from robench.ray_executor import connect

        options = options.validate(plan.config.device)
        if plan.pending:
            ray = connect(options)  # before anything is written
    spec = plan.config
    with plan.store.open() as store:
        pending = plan.pending
        todo = units(pending)
        # the counter goes on from the cells already done; the ETA is fitted to this run's cells
        lines = CellProgress(len(plan.cells), len(plan.cells) - len(pending), pending, log)
        if executor == "local":
            from robench.executors import Inputs, run_local
            from robench.models import ModelCache
            from robench.provenance import provenance

            cache = ModelCache(spec.device)
            run_local(todo, cache, Inputs(plan.data, cache.device, spec.corruption_dir), store,
                      batch_size=spec.batch_size, context=provenance(cache.device, tf32=spec.tf32),
                      threads=spec.threads, tf32=spec.tf32, progress=False, log=log, on_unit=lines.on_unit,
                      on_cell=lines.on_cell)
        elif todo:
            from robench.ray_executor import run_ray

            run_ray(todo, plan.data, store, ray, spec=spec, options=options, log=log, on_cell=lines.on_cell)
        df = merge(plan.out)
        write_table(df, plan.out / "results")
    return df


def sweep_checks(df: pd.DataFrame, plan: SweepPlan, *, executor: str = "local", address: str | None = None,
                 ray_options=None, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The gradient-masking and sanity checks of a sweep's table (:func:`robench.checks.run_checks`)
    with the sweep's device, batch size and threads: in this process, or as tasks on the Ray
    cluster (:func:`robench.ray_executor.run_checks_on_ray`; same table)."""
    from robench.executors import torch_threads

    spec = plan.config
    options = _ray_options(executor, address, ray_options)
    if options is None:
        from robench.checks import run_checks

        with torch_threads(spec.threads):
            return run_checks(df, device=spec.device, data_dir=spec.data_dir, batch_size=spec.batch_size,
                              data={(plan.data.name, len(plan.data)): plan.data})
    from robench.ray_executor import connect, run_checks_on_ray

    options = options.validate(spec.device)
    return run_checks_on_ray(df, connect(options), spec=spec, data=plan.data, options=options, log=log)
