"""The evaluation engine: cells (model × perturbation × ε or severity × seed) → one tidy row each.

A cell is evaluated in batches with the model in eval mode and its inputs moved to the device
once. Every row keeps its per-example "still correct" flags (``flags``, packed hex), so the worst
case over attacks is the AND of the clean flags and every attack's flags, not a min of accuracies.

Determinism: clean rows are a pure forward pass; a corruption is applied once to the whole first-n
set with the cell's seed (so it does not depend on the batch size); an attack is built per batch
with a seed derived from (cell seed, batch index). Same seed → same table on CPU, apart from the
``seconds`` and ``timestamp`` columns.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from robench.errors import BadInput
from robench.results import KEY, pack_flags, to_frame, unpack_flags, wilson

CELL_KINDS = ("clean", "attack", "corruption")
DATASETS = ("samples", "cifar10", "cifar100", "cifar10c")
SEVERITIES = (1, 2, 3, 4, 5)
LAM_SCHEMES = ("damped", "lambda_damped")  # schemes whose λ can be fixed


# -- cells ----------------------------------------------------------------------------------
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

    def __post_init__(self) -> None:
        if self.kind not in CELL_KINDS:
            raise ValueError(f"cell kind must be one of {CELL_KINDS}, got {self.kind!r}")
        # frozen: normalise through object.__setattr__ so equal cells have equal keys
        object.__setattr__(self, "lam", None if self.lam is None else float(self.lam))
        object.__setattr__(self, "eps", None if self.eps is None else float(self.eps))
        object.__setattr__(self, "severity", None if self.severity is None else int(self.severity))
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    def key(self) -> tuple:
        """Stable identity: the values of :data:`robench.results.KEY` (in that order) plus ``params``."""
        return (*self.table_key(), self.params)

    def table_key(self) -> tuple:
        """The :data:`robench.results.KEY` values alone; equals :func:`row_key` of this cell's row."""
        return tuple(getattr(self, c) for c in KEY)

    def cell_id(self) -> str:
        """Short hex digest of :meth:`key`, usable as a file name."""
        return hashlib.sha256(repr(self.key()).encode()).hexdigest()[:16]

    def label(self) -> str:
        lam = "" if self.lam is None else f" λ={self.lam:g}"
        what = {"clean": "clean", "attack": f"{self.perturbation}[{self.backend}] ε={_fmt_eps(self.eps)}",
                "corruption": f"{self.perturbation} s{self.severity}"}[self.kind]
        return f"{self.model}{lam} {what} seed={self.seed}"


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def row_key(row: dict | pd.Series) -> tuple:
    """A table row's identity in the form of :meth:`Cell.table_key` (NaN/NA → None; a model without
    a fixed-λ scheme → lam None, so ResNet's lam=0.0 matches its cell)."""
    r = dict(row)
    vals = []
    for col in KEY:
        v = r.get(col)
        if _missing(v):
            v = None
        elif col == "lam":
            v = float(v) if str(r.get("scheme")) in LAM_SCHEMES else None
        elif col in ("eps",):
            v = float(v)
        elif col in ("severity", "seed", "n"):
            v = int(v)
        else:
            v = str(v)
        vals.append(v)
    return tuple(vals)


@functools.lru_cache(maxsize=None)
def model_scheme(name: str) -> str:
    """The scheme of a registered model ("euler", "damped", "lambda_damped", "lm")."""
    import model_zoo

    return model_zoo.create_model(name).scheme.value


def _as_lam(v: Any) -> float | None:
    if isinstance(v, str):
        from robench.cli.options import parse_lam

        return parse_lam(v)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise BadInput(f"λ must be a number in [0, 1] or 'learned', got {v!r}")
    return float(v)


def _check_int(v: Any, what: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise BadInput(f"{what} must be a whole number ≥ {lo}, got {v!r}")
    return int(v)


def plan_cells(*, models: Sequence[str], lams: Sequence[float | None] = (None,), attacks: Sequence[str] = (),
               eps: Sequence[float] = (8 / 255,), corruptions: Sequence[str] = (),
               severities: Sequence[int] = SEVERITIES, seeds: Sequence[int] = (0,), n: int, dataset: str,
               backend: str | None = None, include_clean: bool = True, corruption_dir: str | os.PathLike | None = None,
               attack_params: dict[str, dict] | None = None) -> list[Cell]:
    """Every cell of a grid, validated (unknown names → BadInput listing the choices), in a fixed order:
    per model, λ and seed: clean, then each attack × ε, then each corruption × severity.

    A fixed λ applies only to models whose scheme takes λ (damped / lambda_damped); other models get
    lam=None once. With ``corruption_dir`` the corruption cells read CIFAR-10-C (dataset "cifar10c").
    An attack's backend is resolved here (its default when ``backend`` is None), so keys match rows.
    """
    from model_zoo.registry import check_model_name

    models = list(dict.fromkeys(models))
    if not models:
        raise BadInput("no model given; name at least one (see `robench zoo list`)")
    for m in models:
        check_model_name(m)
    if dataset not in DATASETS[:3]:
        raise BadInput(f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS[:3])}")
    n = _check_int(n, "n", 1)
    lam_values = list(dict.fromkeys(_as_lam(v) for v in (lams or [None])))
    fixed = [v for v in lam_values if v is not None]
    takes_lam = [m for m in models if model_scheme(m) in LAM_SCHEMES]
    if fixed and not takes_lam:
        raise BadInput(f"λ={fixed[0]:g} does not apply to {', '.join(models)} (scheme "
                       f"{', '.join(sorted({model_scheme(m) for m in models}))}); a fixed λ applies to damped and "
                       "lambda_damped models such as inresnet20 or lambda_inresnet20")
    seeds = list(dict.fromkeys(_check_int(s, "seed", 0) for s in (seeds or [0])))
    attacks = list(dict.fromkeys(attacks or []))
    corruptions = list(dict.fromkeys(corruptions or []))
    attack_params = dict(attack_params or {})

    attack_specs: list[tuple[str, str, float, tuple]] = []
    if attacks:
        from robench.attacks import backends_for, list_attacks, make_attack

        valid = list_attacks()
        for a in attacks:
            if a not in valid:
                raise BadInput(f"unknown attack {a!r}; valid choices: {', '.join(valid)}")
        stray = sorted(set(attack_params) - set(attacks))
        if stray:
            raise BadInput(f"attack_params for {', '.join(stray)}, which is not among the attacks ({', '.join(attacks)})")
        eps_values = list(dict.fromkeys(float(e) for e in _checked_eps(eps)))
        for a in attacks:
            if backend is not None and backend not in backends_for(a):
                raise BadInput(f"unknown backend {backend!r} for attack {a}; valid choices: {', '.join(backends_for(a))}")
            params = tuple(sorted(dict(attack_params.get(a, {})).items()))
            for e in eps_values:
                # building the attack validates ε and overrides now, before any cell runs
                atk = make_attack(a, eps=e, backend=backend, seed=0, **dict(params))
                attack_specs.append((a, atk.backend, e, params))
    elif backend is not None:
        raise BadInput(f"backend {backend!r} given without an attack; add --attack")

    corruption_specs: list[tuple[str, int]] = []
    if corruptions:
        from robench.corruptions import CIFAR10C_NAMES, MISSING, list_corruptions

        # the published files hold every corruption; on-the-fly generation lacks a few (MISSING)
        valid = list(CIFAR10C_NAMES) if corruption_dir is not None else list_corruptions()
        for c in corruptions:
            if c not in valid:
                why = f"corruption {c!r} cannot be generated: {MISSING[c]} (read it from CIFAR-10-C with " \
                      f"--corruption-dir)" if c in MISSING and corruption_dir is None else f"unknown corruption {c!r}"
                raise BadInput(f"{why}; valid choices: {', '.join(valid)}")
        sev = list(dict.fromkeys(_checked_severity(s) for s in (severities or SEVERITIES)))
        corruption_specs = [(c, s) for c in corruptions for s in sev]
    c_dataset = "cifar10c" if corruption_dir is not None else dataset
    if corruption_dir is not None and dataset == "cifar100":
        raise BadInput("CIFAR-10-C (--corruption-dir) goes with cifar10 models and data, not cifar100")

    cells: list[Cell] = []
    for m in models:
        for lam in (lam_values if m in takes_lam else [None]):
            for seed in seeds:
                common = dict(model=m, lam=lam, seed=seed, n=n)
                if include_clean:
                    cells.append(Cell(kind="clean", perturbation="none", backend=None, eps=None, severity=None,
                                      dataset=dataset, **common))
                for a, b, e, params in attack_specs:
                    cells.append(Cell(kind="attack", perturbation=a, backend=b, eps=e, severity=None,
                                      dataset=dataset, params=params, **common))
                for c, s in corruption_specs:
                    cells.append(Cell(kind="corruption", perturbation=c, backend=None, eps=None, severity=s,
                                      dataset=c_dataset, **common))
    return cells


def _checked_eps(eps: Iterable[Any]) -> list[float]:
    out = []
    for e in eps:
        if isinstance(e, str):
            from robench.cli.options import parse_number

            e = parse_number(e, "ε (--eps)")
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e < 0:
            raise BadInput(f"ε (--eps) must be a finite number ≥ 0 in pixel units such as 8/255, got {e!r}")
        out.append(float(e))
    if not out:
        raise BadInput("no ε given for the attacks; e.g. --eps 8/255")
    return out


def _checked_severity(s: Any) -> int:
    try:
        v = int(s) if not isinstance(s, bool) and float(s) == int(float(s)) else None
    except (TypeError, ValueError):
        v = None
    if v not in SEVERITIES:
        raise BadInput(f"severity must be one of {', '.join(map(str, SEVERITIES))}, got {s!r}")
    return v


# -- device, models, inputs -----------------------------------------------------------------
def resolve_device(device: str | torch.device) -> torch.device:
    """A usable torch device, or BadInput naming the ones this machine has."""
    valid = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise BadInput(f"unknown device {device!r}; valid choices: {', '.join(valid)}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available() or (dev.index is not None and dev.index >= torch.cuda.device_count()):
            raise BadInput(f"device {device!r} is not available here; valid choices: {', '.join(valid)}")
        return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    if dev.type != "cpu" and not (dev.type == "mps" and torch.backends.mps.is_available()):
        raise BadInput(f"device {device!r} is not available here; valid choices: {', '.join(valid)}")
    return dev


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


class ModelCache:
    """Loads each (model, λ) once from the zoo (sha256-verified), in eval mode on the device."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)
        self._models: dict[tuple[str, float | None], torch.nn.Module] = {}

    def get(self, model: str, lam: float | None) -> torch.nn.Module:
        key = (model, None if lam is None else float(lam))
        if key not in self._models:
            import model_zoo

            net = model_zoo.load(model, lam=key[1], map_location="cpu")
            # attacks need gradients w.r.t. the input only
            net.to(self.device).eval().requires_grad_(False)
            self._models[key] = net
        return self._models[key]

    def __contains__(self, key: tuple) -> bool:
        return key in self._models


class Inputs:
    """Evaluation inputs on the device: the clean set (moved once) and the latest corrupted set.

    ``evaluate`` runs corruption cells grouped by (corruption, severity, seed), so one slot suffices
    to corrupt each set once for all models.
    """

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
            self._clean = self.data.as_float(self.device)
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
            ds = load_cifar10c(self.corruption_dir, cell.perturbation, cell.severity, n=cell.n)
            x, y = ds.as_float(self.device)
            value = (x, y, ds.sha256)
        else:
            from robench.corruptions import corrupt

            x0, y = self.clean(cell.n)
            x = corrupt(cell.perturbation, x0, cell.severity, seed=cell.seed)
            value = (x.to(self.device), y, self.data.sha256)
        self._slot = (key, value)
        return value


# -- provenance -----------------------------------------------------------------------------
def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """HEAD of the robench checkout when robench runs from a git repository, else "unknown"."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return "unknown"  # an installed copy: a git repo around site-packages says nothing about robench
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else "unknown"


def provenance(device: str | torch.device) -> dict:
    """Columns shared by every row of one run: device, versions, git sha, timestamp (UTC, ISO 8601)."""
    from robench import __version__

    return {
        "device": device_label(resolve_device(device)),
        "robench_version": __version__,
        "torch_version": torch.__version__,
        "art_version": _dist_version("adversarial-robustness-toolbox"),
        "foolbox_version": _dist_version("foolbox"),
        "git_sha": git_sha(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# -- running one cell -----------------------------------------------------------------------
def progress_enabled(progress: bool) -> bool:
    return bool(progress) and os.environ.get("ROBENCH_PROGRESS", "1") != "0"


def batch_seed(seed: int, batch_index: int) -> int:
    """The attack seed of one batch: a pure function of (cell seed, batch index)."""
    return int(np.random.SeedSequence([int(seed), int(batch_index)]).generate_state(1)[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, bar) -> np.ndarray:
    out = torch.empty(len(y), dtype=torch.bool, device=y.device)
    for i in range(0, len(y), batch_size):
        out[i:i + batch_size] = model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
        bar.update(min(batch_size, len(y) - i))
    return out.cpu().numpy()


def _model_lam(model: torch.nn.Module, scheme: str) -> float:
    lam = getattr(model, "lam", None)
    if lam is not None:
        return float(lam)
    return 0.0 if scheme == "euler" else math.nan  # forward Euler is λ=0; learned/LM: not one number


def run_cell(cell: Cell, model: torch.nn.Module, data, *, batch_size: int = 256, device: str | torch.device = "cpu",
             corruption_dir: str | os.PathLike | None = None, progress: bool = False, context: dict | None = None,
             inputs: Inputs | None = None) -> tuple[dict, np.ndarray]:
    """Evaluate one cell → (record with :data:`robench.results.SCHEMA`'s columns, bool[n] flags).

    ``data`` is the clean Dataset (the cell uses its first ``cell.n`` images); ``inputs`` lets several
    cells share inputs already on the device. Deterministic given ``cell.seed``.
    """
    from tqdm import tqdm

    dev = resolve_device(device)
    batch_size = _check_int(batch_size, "batch size", 1)
    scheme = getattr(getattr(model, "scheme", None), "value", None) or getattr(getattr(model, "card", None), "scheme", "unknown")
    if cell.lam is not None and getattr(model, "lam", None) != cell.lam:
        raise BadInput(f"cell asks for λ={cell.lam:g} but the model has λ={getattr(model, 'lam', None)}")
    if inputs is None:
        inputs = Inputs(data, dev, corruption_dir)
    context = context if context is not None else provenance(dev)
    norm = steps = None
    backend = cell.backend
    data_sha = data.sha256

    bar = tqdm(total=cell.n, desc=cell.label(), unit="img", leave=False, file=sys.stderr,
               disable=not progress_enabled(progress))
    _sync(dev)
    t0 = time.perf_counter()
    try:
        if cell.kind == "clean":
            x, y = inputs.clean(cell.n)
            flags = _correct(model, x, y, batch_size, bar)
        elif cell.kind == "corruption":
            x, y, data_sha = inputs.corrupted(cell)
            flags = _correct(model, x, y, batch_size, bar)
        else:
            from robench.attacks import make_attack

            x, y = inputs.clean(cell.n)
            parts = []
            for b, i in enumerate(range(0, cell.n, batch_size)):
                atk = make_attack(cell.perturbation, eps=cell.eps, backend=cell.backend, seed=batch_seed(cell.seed, b),
                                  **dict(cell.params))
                out = atk.run(model, x[i:i + batch_size], y[i:i + batch_size])
                parts.append(torch.as_tensor(out.robust).reshape(-1).bool().cpu().numpy())
                bar.update(len(parts[-1]))
            flags = np.concatenate(parts)
            norm, steps, backend = atk.norm, atk.steps, atk.backend
        _sync(dev)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if flags.shape != (cell.n,):
        raise RuntimeError(f"{cell.label()}: got {flags.shape[0]} flags for n={cell.n}")

    correct = int(flags.sum())
    lo, hi = wilson(correct, cell.n)
    card = getattr(model, "card", None)
    record = {
        "model": cell.model, "scheme": scheme, "lam": _model_lam(model, scheme), "dataset": cell.dataset, "n": cell.n,
        "kind": cell.kind, "perturbation": cell.perturbation, "backend": backend, "norm": norm, "eps": cell.eps,
        "severity": cell.severity, "steps": None if steps is None else int(steps), "seed": cell.seed,
        "correct": correct, "accuracy": correct / cell.n, "ci_low": lo, "ci_high": hi, "seconds": seconds,
        **context,
        "data_sha256": data_sha, "weights_sha256": getattr(card, "weights_sha256", None) or None,
        "flags": pack_flags(flags),
    }
    return record, flags


# -- worst case -----------------------------------------------------------------------------
def _norm_value(v: Any) -> Any:
    if _missing(v):
        return None
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def worst_case_records(records: Iterable[dict]) -> list[dict]:
    """Per (model, lam, dataset, n, seed, eps) with at least one attack row carrying flags: the AND of
    the clean flags (if that clean row is present) and every attack's flags, as a ``worst_case`` row.

    An example counts as robust only if every attack failed on it (and it was classified correctly),
    which is what a min over accuracies would overstate.
    """
    records = [dict(r) for r in records]
    group_of = lambda r: tuple(_norm_value(r.get(c)) for c in ("model", "lam", "dataset", "n", "seed"))  # noqa: E731
    clean = {group_of(r): r for r in records if r.get("kind") == "clean" and not _missing(r.get("flags"))}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("kind") == "attack" and not _missing(r.get("flags")):
            groups.setdefault((*group_of(r), _norm_value(r.get("eps"))), []).append(r)
    out = []
    for key, rows in groups.items():
        n = int(rows[0]["n"])
        members = rows + ([clean[key[:-1]]] if key[:-1] in clean else [])
        flags = np.ones(n, dtype=bool)
        for r in members:
            flags &= unpack_flags(r["flags"], n)
        correct = int(flags.sum())
        lo, hi = wilson(correct, n)
        first = rows[0]
        norms = sorted({str(r["norm"]) for r in rows if not _missing(r.get("norm"))})
        shared = {c: first.get(c) for c in ("model", "scheme", "lam", "dataset", "n", "eps", "seed", "device",
                                             "robench_version", "torch_version", "art_version", "foolbox_version",
                                             "git_sha", "timestamp", "data_sha256", "weights_sha256")}
        out.append({
            **shared, "kind": "worst_case", "perturbation": "worst_case", "backend": None,
            "norm": "+".join(norms) if norms else None, "severity": None, "steps": None,
            "correct": correct, "accuracy": correct / n, "ci_low": lo, "ci_high": hi,
            "seconds": float(sum(float(r.get("seconds") or 0.0) for r in members)), "flags": pack_flags(flags),
        })
    return out


# -- the whole evaluation -------------------------------------------------------------------
def _order(records: list[dict], worst: list[dict]) -> list[dict]:
    """Cell rows in plan order, each worst_case row right after the last attack row of its group."""
    pos: dict[tuple, int] = {}
    for i, r in enumerate(records):
        if r["kind"] == "attack":
            pos[tuple(_norm_value(r.get(c)) for c in ("model", "lam", "dataset", "n", "seed", "eps"))] = i
    keyed = [(float(i), r) for i, r in enumerate(records)]
    keyed += [(pos[tuple(_norm_value(w.get(c)) for c in ("model", "lam", "dataset", "n", "seed", "eps"))] + 0.5, w)
              for w in worst]
    return [r for _, r in sorted(keyed, key=lambda t: t[0])]


def evaluate(*, models: Sequence[str], lams: Sequence[float | None] = (None,), attacks: Sequence[str] = (),
             eps: Sequence[float] = (8 / 255,), corruptions: Sequence[str] = (), severities: Sequence[int] = SEVERITIES,
             seeds: Sequence[int] = (0,), dataset: str | None = None, data_dir: str | os.PathLike | None = None,
             n: int | None = None, batch_size: int = 256, device: str = "cpu", backend: str | None = None,
             corruption_dir: str | os.PathLike | None = None, progress: bool = True,
             attack_params: dict[str, dict] | None = None, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Evaluate zoo models on clean data, attacks and corruptions → a tidy table (one row per cell,
    plus a ``worst_case`` row per (model, λ, seed, ε) when attacks ran).

    Without ``dataset``/``data_dir`` this uses the 20 bundled ``samples`` images (n=20). Every input —
    names, λ, ε, severities, n, data, weights of every (model, λ) — is validated before any cell runs.
    """
    dev = resolve_device(device)
    batch_size = _check_int(batch_size, "batch size", 1)
    if n is not None:
        n = _check_int(n, "n", 1)
    from robench.data import load_dataset

    data = load_dataset(dataset, data_dir, n=n)
    cells = plan_cells(models=models, lams=lams, attacks=attacks, eps=eps, corruptions=corruptions,
                       severities=severities, seeds=seeds, n=len(data), dataset=data.name, backend=backend,
                       corruption_dir=corruption_dir, attack_params=attack_params)
    if corruption_dir is not None:
        check_corruption_dir(corruption_dir, [c for c in cells if c.dataset == "cifar10c"])
    cache = ModelCache(dev)
    for c in cells:  # load (and so verify) every model before the first cell runs
        net = cache.get(c.model, c.lam)
        if getattr(net, "num_classes", data.num_classes) != data.num_classes:
            raise BadInput(f"{c.model} has {net.num_classes} classes but {data.name} has {data.num_classes}; "
                           f"valid datasets for it: {'cifar100' if net.num_classes == 100 else 'samples, cifar10'}")
    context = provenance(dev)
    if log is not None:
        from robench.data import data_label

        log(f"evaluating {len(cells)} cells on {data_label(data)}, n={len(data)}, device {context['device']}")

    inputs = Inputs(data, dev, corruption_dir)
    # corruption cells last, grouped so each corrupted set is made once and shared by every model
    order = sorted(range(len(cells)), key=lambda i: (cells[i].kind == "corruption",
                                                    (cells[i].perturbation, cells[i].severity, cells[i].seed)
                                                    if cells[i].kind == "corruption" else (), i))
    from tqdm import tqdm

    records: list[dict | None] = [None] * len(cells)
    with tqdm(total=len(cells), unit="cell", file=sys.stderr, disable=not progress_enabled(progress)) as bar:
        for i in order:
            cell = cells[i]
            bar.set_description(cell.label())
            records[i], _ = run_cell(cell, cache.get(cell.model, cell.lam), data, batch_size=batch_size, device=dev,
                                     corruption_dir=corruption_dir, progress=progress, context=context, inputs=inputs)
            bar.update(1)
    done = [r for r in records if r is not None]
    return to_frame(_order(done, worst_case_records(done)))


def check_corruption_dir(corruption_dir: str | os.PathLike, cells: list[Cell]) -> None:
    """Fail before any cell runs when CIFAR-10-C is missing or too small for n."""
    from robench.corruptions import load_cifar10c

    for name in dict.fromkeys(c.perturbation for c in cells):
        # every severity is a fifth of the same file, so one read per corruption checks them all
        load_cifar10c(corruption_dir, name, 1, n=cells[0].n)




def _fmt_eps(eps: float | None) -> str:
    if eps is None or _missing(eps):
        return "-"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:.4g}"


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The short human table: model, lam, kind, perturbation, eps, severity, n, accuracy, CI."""
    def lam(row) -> str:
        if not _missing(row["lam"]):
            return f"{row['lam']:g}"
        return "learned" if str(row["scheme"]) in LAM_SCHEMES else "-"

    return pd.DataFrame({
        "model": df["model"].astype(str),
        "lam": [lam(r) for _, r in df.iterrows()],
        "kind": df["kind"].astype(str),
        "perturbation": df["perturbation"].astype(str),
        "eps": [_fmt_eps(e) for e in df["eps"]],
        "severity": ["-" if _missing(s) else str(int(s)) for s in df["severity"]],
        "n": df["n"].astype(int),
        "accuracy": [f"{a:.3f}" for a in df["accuracy"]],
        "CI95": [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(df["ci_low"], df["ci_high"])],
    })
