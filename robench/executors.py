"""Run cells: inputs on the device, one unit (a clean or corruption cell, or an attack at every ε) →
records, and the local executor that feeds a store (models come from :mod:`robench.models`; the Ray
executor, :mod:`robench.ray_executor`, runs the same pieces as tasks on a cluster).

A cell is evaluated in batches with the model in eval mode and its inputs moved to the device once.
The batch loops never wait for the device: flags (and the finite-logits and ε-ball checks) are
gathered on the device and read once per cell. Every record keeps its per-example "still correct"
flags (``flags``, packed hex) and the batch size it ran with (attack seeds are drawn per batch). Determinism: clean
rows are a pure forward pass; a corruption is applied once to the whole first-n set with the cell's
seed (so it does not depend on the batch size); an attack is built per batch with a seed derived
from (cell seed, batch index). Same seed → same table on one machine, apart from ``seconds`` and
``timestamp``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from robench.devices import determinism, sync
from robench.errors import BadInput, NonFiniteLogits
from robench.models import LoadedModel, ModelCache, memory_format, to_format
from robench.plan import Cell, Unit
from robench.data import data_label, label_for
from robench.results import canonical_json, pack_flags, wilson

Log = Callable[[str], None]


# -- inputs ---------------------------------------------------------------------------------
class Inputs:
    """Evaluation inputs on the device: the clean set (moved once) and the latest corrupted set.
    Corruption units run grouped by (corruption, severity, seed), so one slot suffices to corrupt
    each set once for all models."""

    def __init__(self, data, device: str | torch.device, corruption_dir: str | os.PathLike | None = None) -> None:
        self.data = data
        self.device = torch.device(device)
        self.corruption_dir = corruption_dir
        self._clean: tuple[torch.Tensor, torch.Tensor] | None = None
        self._slot: tuple[tuple, tuple] | None = None

    def clean(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n > len(self.data):
            raise BadInput(f"n={n} is larger than the {self.data.name} {self.data.split} split ({len(self.data)} images)")
        if self._clean is None:
            x, y = self.data.as_float(self.device)
            self._clean = (to_format(x), y)
        x, y = self._clean
        return x[:n], y[:n]

    def corrupted(self, cell: Cell) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(images, labels, data sha256) of a corruption cell; synthetic or read from CIFAR-10-C."""
        key = (cell.dataset, cell.perturbation, cell.severity, cell.seed, cell.n)
        if self._slot is not None and self._slot[0] == key:
            return self._slot[1]
        self._slot = None  # free the previous set before making the next
        if cell.dataset == "cifar10c":
            from robench.corruptions import load_cifar10c

            if self.corruption_dir is None:
                raise BadInput("a cifar10c cell needs corruption_dir (--corruption-dir) holding CIFAR-10-C")
            ds = load_cifar10c(self.corruption_dir, cell.perturbation, cell.severity, n=cell.n, labels=self.data.labels)
            x, y = ds.as_float(self.device)
            value = (to_format(x), y, ds.sha256)
        else:
            from robench.corruptions import corrupt

            x0, y = self.clean(cell.n)
            x = corrupt(cell.perturbation, x0, cell.severity, seed=cell.seed)
            value = (to_format(x.to(self.device)), y, self.data.sha256)
        self._slot = (key, value)
        return value


def check_corruption_dir(corruption_dir: str | os.PathLike, cells: list[Cell], labels=None) -> dict[str, str]:
    """Fail before any cell runs when CIFAR-10-C is missing, too small for n, or (given the clean test
    ``labels``) labelled otherwise than the clean test split at any planned severity; → the identity of
    the copy the cells read: file name → sha256 of each corruption file and of ``labels.npy``."""
    from pathlib import Path

    from robench.corruptions import check_cifar10c_labels, load_cifar10c
    from robench.fileio import sha256_file

    files: dict[str, str] = {}
    for name in dict.fromkeys(c.perturbation for c in cells):
        # every severity is a fifth of the same file, so one read per corruption checks them all
        ds = load_cifar10c(corruption_dir, name, 1, n=cells[0].n, labels=labels)
        files[f"{name}.npy"] = ds.sha256
        files.setdefault("labels.npy", sha256_file(Path(ds.source) / "labels.npy"))
    if labels is not None and cells:
        check_cifar10c_labels(corruption_dir, labels, sorted({c.severity for c in cells}), cells[0].n)
    return files


# -- running --------------------------------------------------------------------------------
def progress_enabled(progress: bool) -> bool:
    """Bars only on a terminal, and never when ROBENCH_PROGRESS=0 or TQDM_DISABLE is set."""
    return (bool(progress) and os.environ.get("ROBENCH_PROGRESS", "1") != "0"
            and os.environ.get("TQDM_DISABLE", "") in ("", "0") and sys.stderr.isatty())


def batch_seed(seed: int, batch_index: int) -> int:
    """The attack seed of one batch: a pure function of (cell seed, batch index)."""
    return int(np.random.SeedSequence([int(seed), int(batch_index)]).generate_state(1)[0])


@torch.inference_mode()
def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, what: str,
             on_batch: Callable[[int], None], num_classes: int = 0) -> np.ndarray:
    """Per-example correctness of the model on (x, y) in batches; the flags and a per-batch "all logits
    finite" flag stay on the device and are read once at the end (the logits' shape, host metadata, is
    checked on every batch)."""
    from robench.attacks.base import _check_logits

    out = torch.empty(len(y), dtype=torch.bool, device=y.device)
    starts = range(0, len(y), batch_size)
    finite = torch.ones(len(starts), dtype=torch.bool, device=y.device)
    for b, i in enumerate(starts):
        logits = model(x[i:i + batch_size])
        _check_logits(logits, len(y[i:i + batch_size]), num_classes, what)  # every batch, not only the first
        finite[b] = torch.isfinite(logits).all()
        out[i:i + batch_size] = logits.argmax(1) == y[i:i + batch_size]
        on_batch(min(batch_size, len(y) - i))
    host = torch.cat([out, finite]).cpu().numpy()  # the one host read of the cell
    if not host[len(y):].all():
        i = starts[int(np.flatnonzero(~host[len(y):])[0])]
        raise NonFiniteLogits(f"{what}: the model returned non-finite logits (NaN or Inf) on images "
                              f"{i}..{min(i + batch_size, len(y)) - 1}; the cell is stopped (check the weights)")
    return host[:len(y)]


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """One ε of an attack group: per-example robust flags and what the attack was."""

    eps: float
    flags: np.ndarray
    norm: str
    steps: int | None
    backend: str
    seconds: float
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # every hyper-parameter, defaults included


def run_attack_group(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str,
                     eps: Sequence[float], backend: str | None, params: Mapping[str, Any], seed: int,
                     batch_size: int, on_batch: Callable[[int], None] = lambda k: None,
                     first_batch: int = 0) -> list[AttackResult]:
    """Run one attack (fixed backend, hyper-parameters and seed) on (x, y) at every ε → one result
    per ε, in the order given. Batch b of every ε uses the seed ``batch_seed(seed, b)``, counting
    from ``first_batch``: images ``first_batch * batch_size`` onwards of a larger set, run alone,
    get exactly the flags they get in the whole run (the Ray executor splits attacks this way).

    A fixed-ε attack (gradient or score-based) searches once per ε. A minimal-norm or decision-based
    attack searches once per batch and is projected into and scored at every ε (Foolbox's way); its
    ``seconds`` are the shared search split evenly over the ε values."""
    from robench.attacks import make_attack
    from robench.attacks.base import check_bound, no_excess

    eps = [float(e) for e in eps]
    device = x.device
    probe = make_attack(attack, eps=max(eps), backend=backend, seed=0, **dict(params))
    num_classes = probe.prepare(model, x, y)  # checks the whole set once (one host read)
    rounds = [eps] if probe.kind.minimal else [[e] for e in eps]  # ε values searched together
    results = []
    for group in rounds:
        sync(device)
        t0 = time.perf_counter()
        flags = [torch.empty(len(y), dtype=torch.bool, device=device) for _ in group]
        excess = no_excess(device)
        for b, i in enumerate(range(0, len(y), batch_size), start=first_batch):
            atk = make_attack(attack, eps=max(group), backend=backend, seed=batch_seed(seed, b), **dict(params))
            outs, worst = atk.run_batch(model, x[i:i + batch_size], y[i:i + batch_size], group,
                                        num_classes=num_classes)
            excess = torch.maximum(excess, worst)
            for k, out in enumerate(outs):
                flags[k][i:i + batch_size] = out.robust.reshape(-1)
            on_batch(min(batch_size, len(y) - i) * len(group))
        check_bound(excess, probe)  # read once per ε group
        host = [f.cpu().numpy() for f in flags]
        sync(device)
        seconds = (time.perf_counter() - t0) / len(group)
        for e, f in zip(group, host):
            results.append(AttackResult(eps=e, flags=f, norm=probe.norm, steps=probe.steps,
                                        backend=probe.backend, seconds=seconds, params=dict(probe.params)))
    order = {e: i for i, e in enumerate(eps)}
    return sorted(results, key=lambda r: order[r.eps])


def _record(cell: Cell, loaded: LoadedModel, flags: np.ndarray, *, seconds: float, context: dict, data_sha: str,
            batch_size: int, data_label: str | None = None, norm: str | None = None, steps: int | None = None,
            backend: str | None = None, params: Mapping[str, Any] | None = None) -> dict:
    if flags.shape != (cell.n,):
        raise RuntimeError(f"{cell.label()}: got {flags.shape[0]} flags for n={cell.n}")
    correct = int(flags.sum())
    lo, hi = wilson(correct, cell.n)
    return {
        "model": cell.model, "scheme": loaded.scheme, "lam": loaded.lam, "dataset": cell.dataset, "n": cell.n,
        "kind": cell.kind, "perturbation": cell.perturbation, "backend": backend, "norm": norm, "eps": cell.eps,
        "severity": cell.severity, "steps": None if steps is None else int(steps), "seed": cell.seed,
        "correct": correct, "accuracy": correct / cell.n, "ci_low": lo, "ci_high": hi, "seconds": seconds,
        **context, "data_sha256": data_sha, "weights_sha256": loaded.weights_sha256, "origin": loaded.origin,
        "card_sha256": loaded.card_sha256, "flags": pack_flags(flags), "data_label": data_label,
        "params": None if params is None else canonical_json(dict(params)), "batch_size": int(batch_size),
    }


def run_unit(unit: Unit, loaded: LoadedModel, inputs: Inputs, *, batch_size: int, context: dict,
             progress: bool = False) -> list[tuple[Cell, dict]]:
    """Evaluate one unit → (cell, record with :data:`robench.results.SCHEMA`'s columns) per cell.
    A module the caller gave (origin ``module``) that raises is one-line BadInput naming the cell."""
    if loaded.origin != "module":
        return _run_unit(unit, loaded, inputs, batch_size=batch_size, context=context, progress=progress)
    try:
        return _run_unit(unit, loaded, inputs, batch_size=batch_size, context=context, progress=progress)
    except BadInput:
        raise
    except Exception as e:  # arbitrary user code: any failure means "this module cannot be evaluated here"
        raise BadInput(f"model {unit.cells[0].model!r} failed during {unit.label()}: {type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]}") from None


def _run_unit(unit: Unit, loaded: LoadedModel, inputs: Inputs, *, batch_size: int, context: dict,
              progress: bool = False) -> list[tuple[Cell, dict]]:
    from tqdm import tqdm

    first = unit.cells[0]
    dev = inputs.device
    bar = tqdm(total=first.n * len(unit.cells), desc=unit.label(), unit="img", leave=False, file=sys.stderr,
               disable=not progress_enabled(progress))
    try:
        if first.kind == "attack":
            x, y = inputs.clean(first.n)
            results = run_attack_group(loaded.module, x, y, attack=first.perturbation, eps=[c.eps for c in unit.cells],
                                       backend=first.backend, params=dict(first.params), seed=first.seed,
                                       batch_size=batch_size, on_batch=bar.update)
            return [(c, _record(c, loaded, r.flags, seconds=r.seconds, context=context, data_sha=inputs.data.sha256,
                                batch_size=batch_size, data_label=data_label(inputs.data), norm=r.norm, steps=r.steps,
                                backend=r.backend, params=r.params))
                    for c, r in zip(unit.cells, results)]
        sync(dev)
        t0 = time.perf_counter()
        if first.kind == "clean":
            x, y = inputs.clean(first.n)
            data_sha = inputs.data.sha256
        else:
            x, y, data_sha = inputs.corrupted(first)
        flags = _correct(loaded.module, x, y, batch_size, first.label(), bar.update, inputs.data.num_classes)
        sync(dev)
        label = label_for("cifar10c", data_sha, None) if first.dataset == "cifar10c" else data_label(inputs.data)
        return [(first, _record(first, loaded, flags, seconds=time.perf_counter() - t0, context=context,
                                data_sha=data_sha, batch_size=batch_size, data_label=label))]
    finally:
        bar.close()


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` CPU threads (restored afterwards)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _done_line(i: int, total: int, cell: Cell, record: dict) -> str:
    return f"[{i}/{total}] {cell.label()}: {record['accuracy']:.3f} ({record['seconds']:.1f} s)"


def run_local(units: list[Unit], cache: ModelCache, inputs: Inputs, store, *, batch_size: int, context: dict,
              threads: int | None = None, tf32: bool = False, progress: bool = False, log: Log | None = None,
              on_unit: Callable[[Unit], None] | None = None,
              on_cell: Callable[[Cell, dict], None] | None = None) -> None:
    """Run units in this process, in order, putting each finished cell into ``store``; deterministically
    on CUDA (:func:`robench.devices.determinism`, TF32 only with ``tf32``). Progress: ``on_unit`` is
    called as a unit starts and ``on_cell`` after each cell is stored (e.g.
    :class:`robench.progress.CellProgress`); without ``on_cell``, ``log`` gets a line per cell when
    no progress bar is shown."""
    from tqdm import tqdm

    total = sum(len(u.cells) for u in units)
    done = 0
    with torch_threads(threads), determinism(inputs.device, tf32=tf32), \
            tqdm(total=total, unit="cell", file=sys.stderr, disable=not progress_enabled(progress)) as bar:
        for unit in units:
            bar.set_description(unit.label())
            if on_unit is not None:
                on_unit(unit)
            first = unit.cells[0]
            for cell, record in run_unit(unit, cache.get(first.model, first.lam), inputs, batch_size=batch_size,
                                         context=context, progress=progress):
                store.put(cell, record)
                done += 1
                bar.update(1)
                if on_cell is not None:
                    on_cell(cell, record)
                elif log is not None and not progress_enabled(progress):
                    log(_done_line(done, total, cell, record))


__all__ = ["AttackResult", "Inputs", "LoadedModel", "ModelCache", "batch_seed", "memory_format", "run_attack_group",
           "run_local", "run_unit"]
