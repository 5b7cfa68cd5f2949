"""Sweeps: a TOML grid of cells, run resumably, locally or on Ray, merged into one tidy table.

Store layout (DECISION: one part file per cell, so a kill -9 at any moment is harmless)::

    <out>/sweep.json           fingerprint of the sweep: dataset, n, data sha256, weights sha256 of
                               every (model, λ) it has run, and the last config
    <out>/cells/<cell_id>.json one finished cell: its Cell, its key, the fingerprint it ran under,
                               and the record (a results.SCHEMA row with the per-example flags)
    <out>/results.parquet|.csv the merged table, written when the sweep finishes
    <out>/.lock                held (flock) while a sweep runs, so two sweeps never share an out dir

A part file is written to ``cells/.tmp-*`` first, flushed, fsync'd, then ``os.replace``'d onto its
final name (and the folder is fsync'd). A kill at any moment therefore loses at most the cells in
flight: a finished cell is either wholly there or not there, never torn and never twice (its name
is the cell id). Left-over ``.tmp-*`` files are ignored by every reader and removed by the next
sweep. Running the same command again skips finished cells.

A finished sweep is never silently mixed with a different one: re-using an out dir with another
dataset, n or data fingerprint, or after the zoo weights of a (model, λ) it already ran changed
(weights sha256), is :class:`BadInput`; so is a stored cell whose key or fingerprint disagrees with
the plan (e.g. the same cell with other attack parameters). Adding models, attacks, ε, ... to the
config of an existing out dir is fine: only the new cells run, and the table holds every stored cell.

Worst-case rows are not cells: :func:`merge` derives them from the stored flags
(:func:`robench.engine.worst_case_records`) every time the table is built.

Relative paths in a config (``data_dir``, ``corruption_dir``, ``out``) are relative to the working
directory, like the same options of ``robench eval``.

Fault injection for tests: ``ROBENCH_SWEEP_KILL=after:K`` makes the sweep SIGKILL itself right after
its K-th part file of this run is in place; ``ROBENCH_SWEEP_KILL=before_replace:K`` right before the
K-th ``os.replace`` (leaving a complete but uncommitted temp file).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from robench.errors import BadInput

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, when installed
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

CONFIG_KEYS = ("models", "lams", "attacks", "eps", "attack_params", "corruptions", "severities", "seeds", "n",
               "dataset", "data_dir", "corruption_dir", "backend", "batch_size", "device", "out")
EXECUTORS = ("local", "ray")
STORE_VERSION = 1
_KIND_ORDER = {"clean": 0, "attack": 1, "worst_case": 2, "corruption": 3}


# -- config ---------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepConfig:
    """A sweep's grid and run settings, as read from TOML (see ``configs/*.toml``)."""

    models: list[str]
    lams: list[float | None] = dataclasses.field(default_factory=lambda: [None])
    attacks: list[str] = dataclasses.field(default_factory=list)
    eps: list[float] = dataclasses.field(default_factory=lambda: [8 / 255])
    attack_params: dict[str, dict] = dataclasses.field(default_factory=dict)
    corruptions: list[str] = dataclasses.field(default_factory=list)
    severities: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4, 5])
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    n: int | None = None
    dataset: str | None = None
    data_dir: str | None = None
    corruption_dir: str | None = None
    backend: str | None = None
    batch_size: int = 256
    device: str = "cpu"
    out: str | None = None

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "SweepConfig":
        """Validate the shapes of a parsed config (names and values are checked by the plan)."""
        from robench.cli.options import parse_lam, parse_number

        unknown = sorted(set(raw) - set(CONFIG_KEYS))
        if unknown:
            raise BadInput(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                           f"valid keys: {', '.join(CONFIG_KEYS)}")
        if "models" not in raw:
            raise BadInput(f"{source}: missing key 'models' (a list of registered model names)")

        def as_list(key: str) -> list:
            v = raw[key]
            return list(v) if isinstance(v, list) else [v]

        def strings(key: str) -> list[str]:
            vals = as_list(key)
            bad = [v for v in vals if not isinstance(v, str) or not v]
            if bad:
                raise BadInput(f"{source}: {key} must be a list of names, got {bad[0]!r}")
            return vals

        def ints(key: str, lo: int) -> list[int]:
            vals = as_list(key)
            for v in vals:
                if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                    raise BadInput(f"{source}: {key} must hold whole numbers ≥ {lo}, got {v!r}")
            return vals

        def opt_str(key: str) -> str | None:
            v = raw.get(key)
            if v is not None and (not isinstance(v, str) or not v):
                raise BadInput(f"{source}: {key} must be a non-empty string, got {v!r}")
            return v

        kw: dict[str, Any] = {"models": strings("models")}
        if not kw["models"]:
            raise BadInput(f"{source}: models is empty; name at least one (see `robench zoo list`)")
        if "lams" in raw:
            kw["lams"] = [parse_lam(v) if isinstance(v, str) else _lam_number(v, source) for v in as_list("lams")]
        for key in ("attacks", "corruptions"):
            if key in raw:
                kw[key] = strings(key)
        if "eps" in raw:
            kw["eps"] = [parse_number(v, "ε (eps)") if isinstance(v, str) else _eps_number(v, source)
                         for v in as_list("eps")]
        if "attack_params" in raw:
            ap = raw["attack_params"]
            if not isinstance(ap, dict) or not all(isinstance(v, dict) for v in ap.values()):
                raise BadInput(f"{source}: attack_params must be a table of tables, e.g. [attack_params.pgd] steps = 20")
            kw["attack_params"] = {k: dict(v) for k, v in ap.items()}
        if "severities" in raw:
            kw["severities"] = ints("severities", 0)  # 1..5 is checked by the plan, with the valid choices
        if "seeds" in raw:
            kw["seeds"] = ints("seeds", 0)
        if "n" in raw:
            n = raw["n"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise BadInput(f"{source}: n must be a positive whole number, got {n!r}")
            kw["n"] = n
        if "batch_size" in raw:
            (kw["batch_size"],) = ints("batch_size", 1)
        for key in ("dataset", "data_dir", "corruption_dir", "backend", "device", "out"):
            if key in raw:
                kw[key] = opt_str(key)
        return cls(**kw)


def _lam_number(v: Any, source: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise BadInput(f"{source}: λ must be in [0, 1] or 'learned', got {v!r}")
    return float(v)


def _eps_number(v: Any, source: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise BadInput(f"{source}: ε must be a number ≥ 0 or a fraction string such as \"8/255\", got {v!r}")
    return float(v)


def load_config(path: str | os.PathLike) -> SweepConfig:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"sweep config {p} does not exist")
    if tomllib is None:
        raise BadInput("reading a sweep config needs Python ≥ 3.11 (tomllib) or the tomli package")
    try:
        raw = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"sweep config {p} is not valid TOML: {e}") from None
    return SweepConfig.from_dict(raw, source=str(p))


# -- plan -----------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepPlan:
    """Everything a run needs, validated; nothing written yet."""

    config: SweepConfig
    out: Path
    cells: list  # list[engine.Cell], plan order
    data: Any  # robench.data.Dataset, first n images
    weights: dict[str, str]  # zoo stem → weights sha256
    done: set[str]  # cell ids already stored (and consistent with the plan)

    @property
    def pending(self) -> list:
        return [c for c in self.cells if c.cell_id() not in self.done]

    def fingerprint(self) -> dict:
        return {"dataset": self.data.name, "n": len(self.data), "data_sha256": self.data.sha256}

    def describe(self) -> str:
        pairs = len({(c.model, c.lam) for c in self.cells})
        seeds = len({c.seed for c in self.cells})
        done = sum(1 for c in self.cells if c.cell_id() in self.done)
        return (f"plan: {len(self.cells)} cells ({pairs} model/λ pair{'s' if pairs != 1 else ''}, {seeds} seed"
                f"{'s' if seeds != 1 else ''}, {self.data.name} n={len(self.data)}), {done} already done, "
                f"{len(self.cells) - done} to run; out {self.out}")


def _stem(model: str, lam: float | None) -> str:
    from model_zoo.checkpoint import zoo_stem

    return zoo_stem(model, lam)


def check_weights(pairs: list[tuple[str, float | None]], num_classes: int) -> dict[str, str]:
    """Every (model, λ) has verified trained weights that fit the data; → zoo stem → weights sha256.

    Missing weights are reported together, each with the command that trains them.
    """
    import model_zoo
    from model_zoo.checkpoint import resolve

    missing = [(m, lam) for m, lam in pairs if resolve(m, lam=lam) is None]
    if missing:
        hints = ", ".join(f"`robench train --model {m}" + ("" if lam is None else f" --lam {lam:g}") + "`"
                          for m, lam in missing)
        raise BadInput(f"no trained weights for {', '.join(_stem(m, lam) for m, lam in missing)} in the zoo; "
                       f"train them with {hints}")
    shas = {}
    for m, lam in pairs:
        net = model_zoo.load(m, lam=lam)  # verifies sha256, safetensors and fit; raises BadInput otherwise
        if getattr(net, "num_classes", num_classes) != num_classes:
            raise BadInput(f"{m} has {net.num_classes} classes but the sweep's data has {num_classes}")
        shas[_stem(m, lam)] = net.card.weights_sha256
    return shas


def plan_sweep(config: SweepConfig, *, out: str | os.PathLike | None = None, executor: str = "local") -> SweepPlan:
    """Validate the config against the registries, the data, the zoo and the out dir; write nothing.

    With the ray executor the device is checked by the workers (the driver may have no GPU)."""
    from robench.data import load_dataset
    from robench.engine import plan_cells, resolve_device

    out = out if out is not None else config.out
    if out is None:
        raise BadInput("no output folder: set out = \"results/<name>\" in the config or pass --out")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"out {out} exists and is not a folder")
    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    if executor == "local":
        resolve_device(config.device)
    elif not re.fullmatch(r"cpu|cuda(:\d+)?", config.device):
        raise BadInput(f"device {config.device!r} cannot be used with the ray executor; valid choices: cpu, cuda")
    if config.corruption_dir is not None and not config.corruptions:
        raise BadInput("corruption_dir needs corruptions naming the corruptions to read")
    # names first (cheap), then the data (may be slow), then the plan at the data's real n
    cells = plan_cells(models=config.models, lams=config.lams, attacks=config.attacks, eps=config.eps,
                       corruptions=config.corruptions, severities=config.severities, seeds=config.seeds,
                       n=config.n or 1, dataset=config.dataset or ("cifar10" if config.data_dir else "samples"),
                       backend=config.backend, corruption_dir=config.corruption_dir,
                       attack_params=config.attack_params)
    data = load_dataset(config.dataset, config.data_dir, n=config.n)
    cells = plan_cells(models=config.models, lams=config.lams, attacks=config.attacks, eps=config.eps,
                       corruptions=config.corruptions, severities=config.severities, seeds=config.seeds,
                       n=len(data), dataset=data.name, backend=config.backend,
                       corruption_dir=config.corruption_dir, attack_params=config.attack_params)
    if config.corruption_dir is not None:
        from robench.engine import check_corruption_dir

        check_corruption_dir(config.corruption_dir, [c for c in cells if c.dataset == "cifar10c"])
    pairs = list(dict.fromkeys((c.model, c.lam) for c in cells))
    weights = check_weights(pairs, data.num_classes)
    plan = SweepPlan(config=config, out=out, cells=cells, data=data, weights=weights, done=set())
    plan.done = _check_store(plan)
    return plan


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{what} {path} is unreadable ({type(e).__name__}); delete it to redo it") from None
    if not isinstance(value, dict):
        raise BadInput(f"{what} {path} is not a JSON object; delete it to redo it")
    return value


def _check_store(plan: SweepPlan) -> set[str]:
    """Compare an existing out dir with the plan; → ids of the planned cells already finished."""
    meta_path = plan.out / "sweep.json"
    if meta_path.exists():
        meta = _read_json(meta_path, "sweep file")
        fp = plan.fingerprint()
        for k, v in fp.items():
            if meta.get(k) != v:
                raise BadInput(f"{plan.out} holds a sweep with {k}={meta.get(k)!r}, but this config gives {k}={v!r}; "
                               "use another out folder (or delete this one) instead of mixing the two")
        for stem, sha in plan.weights.items():
            old = meta.get("weights", {}).get(stem)
            if old is not None and old != sha:
                raise BadInput(f"the zoo weights of {stem} changed since {plan.out} ran them (sha256 {old[:12]}… → "
                               f"{sha[:12]}…); use another out folder, or delete that model's cells to redo them")
    by_table_key = {c.table_key(): c for c in plan.cells}
    planned = {c.cell_id(): c for c in plan.cells}
    done = set()
    for cell_id, part in iter_parts(plan.out):
        cell = planned.get(cell_id)
        if cell is None:
            # a cell from an earlier config: it stays in the table, but must not clash with a planned one
            other = by_table_key.get(tuple(_from_json(v) for v in part.get("table_key", [])))
            if other is not None:
                raise BadInput(f"{plan.out / 'cells' / (cell_id + '.json')} holds {other.label()} run with other "
                               f"settings ({part.get('key')}, now {repr(other.key())}); use another out folder")
            continue
        stored_fp = part.get("fingerprint", {})
        if part.get("key") != repr(cell.key()) or any(stored_fp.get(k) != v for k, v in plan.fingerprint().items()) \
                or stored_fp.get("weights_sha256") != plan.weights[_stem(cell.model, cell.lam)]:
            raise BadInput(f"stored cell {plan.out / 'cells' / (cell_id + '.json')} does not match the plan "
                           f"({cell.label()}): its key or data/weights fingerprint differs; delete it to redo it")
        done.add(cell_id)
    return done


def _from_json(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def iter_parts(out: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """(cell id, part) of every finished cell in ``out``, in file-name order; temp files are skipped."""
    cells_dir = Path(out) / "cells"
    if not cells_dir.is_dir():
        return
    for path in sorted(cells_dir.glob("*.json")):
        if path.name.startswith(".tmp-"):
            continue
        part = _read_json(path, "stored cell")
        if not isinstance(part.get("record"), dict) or part.get("cell_id") != path.stem:
            raise BadInput(f"stored cell {path} is not a robench part file; delete it to redo it")
        yield path.stem, part


# -- store ----------------------------------------------------------------------------------
def _jsonable(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fault(stage: str, count: int) -> None:
    """The ROBENCH_SWEEP_KILL fault-injection hook (see the module docstring)."""
    spec = os.environ.get("ROBENCH_SWEEP_KILL", "")
    m = re.fullmatch(r"(after|before_replace):(\d+)", spec)
    if m and m.group(1) == stage and int(m.group(2)) == count:
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_json(path: Path, value: dict, *, _count: int | None = None) -> None:
    """Temp file in the same folder, flush + fsync, ``os.replace``, fsync the folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        if _count is not None:
            _fault("before_replace", _count)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


class Store:
    """The part-file store of one out dir, held under an exclusive lock while a sweep writes to it."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan
        self.cells_dir = plan.out / "cells"
        self.written = 0

    @contextlib.contextmanager
    def open(self) -> Iterator["Store"]:
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        with open(self.plan.out / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BadInput(f"another sweep is writing to {self.plan.out}; wait for it or use another out folder") from None
            for stale in self.cells_dir.glob(".tmp-*"):  # left by a killed run; never a finished cell
                stale.unlink(missing_ok=True)
            self._write_meta()
            yield self

    def _write_meta(self) -> None:
        meta_path = self.plan.out / "sweep.json"
        old = _read_json(meta_path, "sweep file") if meta_path.exists() else {}
        meta = {"robench_sweep": STORE_VERSION, **self.plan.fingerprint(),
                "weights": {**old.get("weights", {}), **self.plan.weights},
                "config": {k: _jsonable(v) for k, v in dataclasses.asdict(self.plan.config).items()}}
        atomic_write_json(meta_path, meta)

    def put(self, cell, record: dict) -> None:
        """Persist one finished cell (after checking its record really is that cell)."""
        from robench.engine import row_key

        sha = self.plan.weights[_stem(cell.model, cell.lam)]
        if row_key(record) != cell.table_key():
            raise RuntimeError(f"{cell.label()}: the record's key {row_key(record)} is not the cell's {cell.table_key()}")
        if record.get("weights_sha256") not in (None, sha):
            raise BadInput(f"{cell.label()} ran with weights {str(record.get('weights_sha256'))[:12]}…, "
                           f"but the plan has {sha[:12]}…; the zoo changed during the sweep")
        part = {"cell_id": cell.cell_id(), "key": repr(cell.key()), "table_key": _jsonable(cell.table_key()),
                "cell": {k: _jsonable(v) for k, v in dataclasses.asdict(cell).items()},
                "fingerprint": {**self.plan.fingerprint(), "weights_sha256": sha},
                "record": {k: _jsonable(v) for k, v in record.items()}}
        self.written += 1
        atomic_write_json(self.cells_dir / f"{cell.cell_id()}.json", part, _count=self.written)
        self.plan.done.add(cell.cell_id())
        _fault("after", self.written)


# -- merge ----------------------------------------------------------------------------------
def _sort_key(r: dict) -> tuple:
    from robench.leaderboard import _natural

    def num(v):
        return (1, 0.0) if v is None or (isinstance(v, float) and math.isnan(v)) else (0, float(v))

    return (_natural(r["model"]), num(r.get("lam")), int(r["seed"]), int(r["n"]), _KIND_ORDER.get(r["kind"], 9),
            str(r["dataset"]), str(r["perturbation"]), str(r.get("backend") or ""), num(r.get("eps")),
            num(r.get("severity")))


def merge(out: str | os.PathLike) -> pd.DataFrame:
    """Every finished cell of a sweep folder plus the derived worst-case rows → one tidy table.

    Rows are in a fixed order (model, λ, seed, n, kind, perturbation, backend, ε, severity), so the
    table does not depend on the order in which cells finished.
    """
    from robench.engine import worst_case_records
    from robench.results import to_frame

    out = Path(out)
    if not out.is_dir():
        raise BadInput(f"sweep folder {out} does not exist")
    if not (out / "sweep.json").is_file():
        raise BadInput(f"{out} is not a sweep folder (no sweep.json)")
    records = [part["record"] for _, part in iter_parts(out)]
    if not records:
        raise BadInput(f"sweep folder {out} has no finished cells yet")
    rows = records + worst_case_records(records)
    return to_frame(sorted(rows, key=_sort_key))


# -- executors ------------------------------------------------------------------------------
def _run_order(cells: list) -> list:
    """Corruption cells last, grouped, so each corrupted set is made once and shared by every model."""
    return sorted(cells, key=lambda c: (c.kind == "corruption",
                                        (c.perturbation, c.severity, c.seed) if c.kind == "corruption" else (), 0))


def _run_local(plan: SweepPlan, store: Store, log: Callable[[str], None]) -> None:
    from robench.engine import Inputs, ModelCache, provenance, run_cell

    cache = ModelCache(plan.config.device)
    context = provenance(cache.device)
    inputs = Inputs(plan.data, cache.device, plan.config.corruption_dir)
    pending = _run_order(plan.pending)
    for i, cell in enumerate(pending, 1):
        record, _ = run_cell(cell, cache.get(cell.model, cell.lam), plan.data, batch_size=plan.config.batch_size,
                             device=cache.device, corruption_dir=plan.config.corruption_dir, progress=False,
                             context=context, inputs=inputs)
        store.put(cell, record)
        log(f"[{i}/{len(pending)}] {cell.label()}: {record['accuracy']:.3f} ({record['seconds']:.1f} s)")


_WORKER: dict = {}  # per Ray worker process: the ModelCache and Inputs of the current sweep


def _ray_cell(cell, data, batch_size: int, device: str, corruption_dir: str | None) -> dict:
    """Body of one Ray task: evaluate one cell in a worker, reusing the worker's cached models."""
    from robench.engine import Inputs, ModelCache, provenance, run_cell

    key = (data.sha256, len(data), device, corruption_dir)
    if _WORKER.get("key") != key:
        cache = ModelCache(device)
        _WORKER.update(key=key, cache=cache, inputs=Inputs(data, cache.device, corruption_dir),
                       context=provenance(cache.device))
    record, _ = run_cell(cell, _WORKER["cache"].get(cell.model, cell.lam), data, batch_size=batch_size,
                         device=_WORKER["cache"].device, corruption_dir=corruption_dir, progress=False,
                         context=_WORKER["context"], inputs=_WORKER["inputs"])
    return record


def _ray_connect(address: str | None):
    """Import Ray and join the cluster at ``address`` (a new local instance for None), unless a Ray
    session is already up in this process (e.g. one a test or a notebook started)."""
    try:
        import ray
    except ImportError:
        raise BadInput("the ray executor needs Ray: pip install 'robench[ray]' (or use --executor local)") from None
    if not ray.is_initialized():
        kwargs = {"log_to_driver": False} if address else {"log_to_driver": False, "include_dashboard": False}
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise BadInput(f"cannot reach a Ray cluster at {address or 'a new local instance'}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return ray


def _run_ray(plan: SweepPlan, store: Store, log: Callable[[str], None], ray) -> None:
    cuda = plan.config.device.startswith("cuda")
    env = {k: os.environ[k] for k in ("ROBENCH_HOME", "ROBENCH_PROGRESS") if k in os.environ}
    task = ray.remote(_ray_cell).options(num_cpus=1, num_gpus=1 if cuda else 0, max_retries=0,
                                         runtime_env={"env_vars": env} if env else None)
    # each GPU task sees its one device as cuda:0
    device = "cuda" if cuda else plan.config.device
    data_ref = ray.put(plan.data)
    pending = _run_order(plan.pending)
    futures = {task.remote(c, data_ref, plan.config.batch_size, device, plan.config.corruption_dir): c
               for c in pending}
    done = 0
    try:
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            cell = futures.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
                if isinstance(cause, BadInput):
                    raise BadInput(str(cause).splitlines()[0]) from None
                raise
            store.put(cell, record)
            done += 1
            log(f"[{done}/{len(pending)}] {cell.label()}: {record['accuracy']:.3f} ({record['seconds']:.1f} s)")
    finally:
        for f in futures:
            ray.cancel(f, force=True)


def run_sweep(plan: SweepPlan, *, executor: str = "local", address: str | None = None,
              log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run the plan's pending cells, persisting each as it finishes; → the merged table (also written
    to ``<out>/results.parquet`` and ``.csv``)."""
    from robench.results import write_table

    if executor not in EXECUTORS:
        raise BadInput(f"unknown executor {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise BadInput("--address applies to the ray executor; add --executor ray")
    ray = _ray_connect(address) if executor == "ray" else None  # before anything is written
    plan.out.mkdir(parents=True, exist_ok=True)
    store = Store(plan)
    with store.open():
        if executor == "local":
            _run_local(plan, store, log)
        else:
            _run_ray(plan, store, log, ray)
        df = merge(plan.out)
        write_table(df, plan.out / "results")
    return df
