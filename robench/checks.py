"""Gradient-masking and sanity checks as first-class results (AutoAttack's ``checks.py``, ART's
``loss_gradient_check`` and Carlini et al.'s checklist as anchors).

:func:`run_checks` takes a tidy results table and returns a tidy **checks table**: one row per
(model, λ, dataset, n, seed, check) with the columns of :data:`CHECKS_SCHEMA`. A check whose
``status`` is ``flag`` names the cells that triggered it in ``cells``; the leaderboard shows every
flagged check's word in its ``flags`` column. The checks (the ``check`` column holds these words):

- ``zero_gradient``: some examples' input gradient of the cross-entropy loss is exactly zero, NaN
  or Inf (``value`` = that fraction of the cell's n examples; flagged above ``grad_tolerance``, 0).
- ``nondeterministic``: two forward passes in eval mode over the same examples differ.
- ``single_step_stronger``: FGSM accuracy below PGD's or I-FGSM's at the same ε with disjoint
  Wilson intervals (an iterative attack should never be weaker than its one-step version).
- ``accuracy_rises_with_eps``: one attack's accuracy at a larger ε above its accuracy at a
  smaller ε with disjoint intervals.
- ``large_eps_survives``: PGD (20 steps of 2.5·ε/20, random start) at ε = 64/255 on the first 100
  examples leaves more than 1 % correct (``value``).
- ``black_box_stronger``: Square (score-based black box) below every white-box attack at the same
  ε with disjoint intervals.
- ``transfer_stronger``: PGD-20 examples (step 2.5·ε/20, random start) crafted on another model (``transfer_source``, default
  ``resnet20``) at the table's largest attack ε are classified worse by the model than the strongest
  white-box attack on the model itself, with disjoint intervals.

The three table checks (single step, rising ε, black box) read only the table
(:func:`table_checks`); the four model checks load the model (``model_zoo.load_entry`` or the
``models`` mapping for your own modules) and the data set the table names
(:func:`robench.data.load_dataset`).

``status``: ``pass``, ``flag``, ``skip`` (the check does not apply to this table: no FGSM and PGD at
a common ε, no Square cells, the model is the transfer source) or ``not_run`` (the check applies but
could not run: the model or the data set it needs is missing; ``detail`` says which). A check that
did not run is never counted as passed: the leaderboard and the report show it as "not run", and
``robench check``, which asks for the checks explicitly, refuses with one line naming what is
missing (``run_checks(require=True)``, :func:`preflight`) before any check runs.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from robench.errors import BadInput
from robench.results import format_eps, nan_to_none, wilson

CHECKS = ("zero_gradient", "nondeterministic", "single_step_stronger", "accuracy_rises_with_eps",
          "large_eps_survives", "black_box_stronger", "transfer_stronger")
TABLE_CHECKS = ("single_step_stronger", "accuracy_rises_with_eps", "black_box_stronger")
STATUSES = ("pass", "flag", "skip", "not_run")
STATUS_WORDS = {"pass": "passed", "flag": "flagged", "skip": "not applicable", "not_run": "not run"}
CHECKS_SCHEMA: dict[str, str] = {
    "model": "string",
    "lam": "float64",
    "dataset": "string",
    "n": "int64",
    "seed": "int64",
    "check": "string",
    "status": "string",       # pass | flag | skip (does not apply) | not_run (model or data missing)
    "value": "float64",       # the measured statistic (fraction, accuracy or max |Δlogit|)
    "threshold": "float64",   # flagged above (or, for the interval checks, NaN: disjoint intervals)
    "cells": "string",        # the cells that triggered the flag, e.g. "fgsm@8/255 < pgd@8/255"
    "detail": "string",       # one sentence: what was measured, or why the check was skipped
    "n_checked": "Int64",     # examples the check ran on (NA for table checks)
    "seconds": "float64",
}
GROUP = ("model", "lam", "dataset", "n", "seed")
ITERATIVE = ("pgd", "ifgsm", "pgd10")
BLACK_BOX = ("square",)
SANITY_EPS = 64 / 255


def _row(key: tuple, check: str, status: str, *, value: float = math.nan, threshold: float = math.nan,
         cells: str = "", detail: str = "", n_checked: int | None = None, seconds: float = 0.0) -> dict:
    model, lam, dataset, n, seed = key
    return {"model": model, "lam": math.nan if lam is None else float(lam), "dataset": dataset, "n": int(n),
            "seed": int(seed), "check": check, "status": status, "value": value, "threshold": threshold,
            "cells": cells, "detail": detail, "n_checked": n_checked, "seconds": seconds}


def to_checks_frame(rows: list[dict]) -> pd.DataFrame:
    """Check records → a DataFrame with exactly :data:`CHECKS_SCHEMA`'s columns and dtypes."""
    df = pd.DataFrame(rows, columns=list(CHECKS_SCHEMA))
    for col, dtype in CHECKS_SCHEMA.items():
        df[col] = pd.to_numeric(df[col]).astype(dtype) if dtype == "float64" else df[col].astype(dtype)
    return df


def _groups(table: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    missing = [c for c in (*GROUP, "kind", "perturbation", "eps", "correct") if c not in table.columns]
    if missing:
        raise BadInput(f"not a robench results table: missing columns {', '.join(missing)}")
    idx: dict[tuple, list[int]] = {}
    for i, t in enumerate(zip(table["model"], table["lam"], table["dataset"], table["n"], table["seed"])):
        m, lam, d, n, s = t
        idx.setdefault((str(m), nan_to_none(lam), str(d), int(n), int(s)), []).append(i)
    out = {k: table.iloc[v] for k, v in idx.items()}
    return dict(sorted(out.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] is None, kv[0][1] or 0.0,
                                                     str(kv[0][2]), kv[0][3], kv[0][4])))


def _attack_cells(g: pd.DataFrame) -> dict[tuple[str, float], tuple[float, float, float]]:
    """(attack, ε) → (accuracy, ci_low, ci_high) pooled over backends of the group's attack rows."""
    atk = g[g["kind"] == "attack"]
    out = {}
    for (pert, eps), c in atk.groupby(["perturbation", "eps"], sort=True):
        correct, total = int(c["correct"].sum()), int(c["n"].sum())
        lo, hi = wilson(correct, total)
        out[(str(pert), round(float(eps), 10))] = (correct / total, lo, hi)
    return out


def table_checks(table: pd.DataFrame) -> pd.DataFrame:
    """The three checks that need only the table (single step, rising ε, black box); no model, no data."""
    rows = []
    for key, g in _groups(table).items():
        cells = _attack_cells(g)
        by_eps: dict[float, dict[str, tuple]] = {}
        for (att, eps), v in cells.items():
            by_eps.setdefault(eps, {})[att] = v

        hits = []
        for eps, atts in sorted(by_eps.items()):
            if "fgsm" in atts:
                for it in ITERATIVE:
                    if it in atts and atts["fgsm"][2] < atts[it][1]:
                        hits.append(f"fgsm@{format_eps(eps)} {100 * atts['fgsm'][0]:.1f}% < "
                                    f"{it}@{format_eps(eps)} {100 * atts[it][0]:.1f}%")
        pairs = any("fgsm" in a and any(i in a for i in ITERATIVE) for a in by_eps.values())
        rows.append(_row(key, "single_step_stronger", "flag" if hits else ("pass" if pairs else "skip"),
                         value=float(len(hits)), cells="; ".join(hits),
                         detail=("FGSM vs PGD/I-FGSM at the same ε, Wilson 95 % intervals" if pairs
                                 else "the table has no FGSM and PGD/I-FGSM cells at a common ε")))

        hits = []
        attacks = sorted({a for a, _ in cells})
        for att in attacks:
            series = sorted((eps, v) for (a, eps), v in cells.items() if a == att)
            for i, (e0, v0) in enumerate(series):
                for e1, v1 in series[i + 1:]:
                    if v1[1] > v0[2]:
                        hits.append(f"{att}@{format_eps(e1)} {100 * v1[0]:.1f}% > {att}@{format_eps(e0)} {100 * v0[0]:.1f}%")
        multi = any(sum(1 for (a, _e) in cells if a == att) > 1 for att in attacks)
        rows.append(_row(key, "accuracy_rises_with_eps", "flag" if hits else ("pass" if multi else "skip"),
                         value=float(len(hits)), cells="; ".join(hits),
                         detail=("each attack's accuracy over increasing ε, Wilson 95 % intervals" if multi
                                 else "no attack has cells at two ε")))

        hits, compared = [], False
        for eps, atts in sorted(by_eps.items()):
            white = {a: v for a, v in atts.items() if a not in BLACK_BOX}
            for bb in BLACK_BOX:
                if bb in atts and white:
                    compared = True
                    if all(atts[bb][2] < v[1] for v in white.values()):
                        best = min(white, key=lambda a: white[a][0])
                        hits.append(f"{bb}@{format_eps(eps)} {100 * atts[bb][0]:.1f}% < "
                                    f"{best}@{format_eps(eps)} {100 * white[best][0]:.1f}%")
        rows.append(_row(key, "black_box_stronger", "flag" if hits else ("pass" if compared else "skip"),
                         value=float(len(hits)), cells="; ".join(hits),
                         detail=("Square vs every white-box attack at the same ε, Wilson 95 % intervals" if compared
                                 else "the table has no square and white-box cells at a common ε")))
    return to_checks_frame(rows)


# -- model checks ------------------------------------------------------------------------------------

def _predict_batches(model, x, batch_size: int):
    import torch

    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def gradient_fraction(model, x, y, *, batch_size: int = 250) -> float:
    """Fraction of examples whose input gradient of the cross-entropy loss is all zero or non-finite
    (counted on the device, read once)."""
    import torch
    import torch.nn.functional as F

    bad = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(xb), y[i:i + batch_size], reduction="sum")
            (g,) = torch.autograd.grad(loss, xb)
        g = g.flatten(1)
        bad += ((g == 0).all(dim=1) | ~torch.isfinite(g).all(dim=1)).sum()
    return int(bad) / max(1, x.shape[0])


def forward_difference(model, x, *, batch_size: int = 250) -> tuple[float, int]:
    """Two eval-mode passes over x: (max |Δlogit|, number of examples whose prediction changed)."""
    a, b = _predict_batches(model, x, batch_size), _predict_batches(model, x, batch_size)
    diff = (a - b).abs()
    diff = float(diff.max()) if diff.numel() and bool(diff.isfinite().all()) else (0.0 if not diff.numel() else math.inf)
    return diff, int((a.argmax(1) != b.argmax(1)).sum())


def _accuracy(model, x, y, batch_size: int) -> tuple[int, int]:
    return int((_predict_batches(model, x, batch_size).argmax(1) == y).sum()), int(y.shape[0])


class _Models:
    """name/λ → module on the run's device: the caller's ``models`` mapping first (key (name, λ) or name),
    then the zoo (loaded onto the device, in its memory format, parameters frozen)."""

    def __init__(self, models: Mapping | None, device) -> None:
        self._given = dict(models or {})
        self._cache: dict[tuple, Any] = {}
        self._device = device

    def given(self, name: str, lam: float | None) -> bool:
        return (name, lam) in self._given or name in self._given

    def get(self, name: str, lam: float | None):
        return self.get_with_sha(name, lam)[0]

    def get_with_sha(self, name: str, lam: float | None):
        """(module, sha256 of its weights): the card's for a zoo entry, the parameters' for a module, the
        given one for a (module, weights sha256) pair (zoo weights loaded elsewhere, e.g. on a Ray worker)."""
        for k in ((name, lam), name):
            if k in self._given:
                from robench.models import module_sha256

                given = self._given[k]
                module, sha = given if isinstance(given, tuple) else (given, None)
                module = module.to(self._device).eval()
                return module, sha or module_sha256(module)
        key = (name, lam)
        if key not in self._cache:
            import model_zoo

            from robench.devices import memory_format

            info = model_zoo.model_info(name)
            entry = model_zoo.load_entry(name, lam=lam if info.takes_lam else None, map_location=str(self._device))
            model = entry.model.to(self._device, memory_format=memory_format(self._device)).eval()
            self._cache[key] = (model.requires_grad_(False), entry.card.weights_sha256)
        return self._cache[key]


def _model_label(name: str, lam: float | None) -> str:
    from robench.results import lam_text

    return name if lam is None else f"{name} λ={lam_text(lam)}"


def preflight(table: pd.DataFrame, *, models: Mapping[Any, Any] | None = None, device: str = "cpu",
              data_dir: str | None = None, transfer_source: str | None = "resnet20") -> None:
    """Load every model and data set the model checks of ``table`` need (and the transfer source);
    :class:`BadInput` naming everything missing, before any check runs."""
    from robench.data import load_dataset

    zoo = _Models(models, device)
    missing = []
    for dataset, n in dict.fromkeys((k[2], k[3]) for k in _groups(table)):
        try:
            load_dataset(dataset, data_dir if dataset != "samples" else None, n=n)
        except BadInput as e:
            missing.append(f"the {dataset} data ({' '.join(str(e).split())})")
    names = list(dict.fromkeys((k[0], k[1]) for k in _groups(table)))
    if transfer_source is not None and any(m != transfer_source for m, _ in names):
        names.append((transfer_source, None))
    for name, lam in dict.fromkeys(names):
        try:
            zoo.get(name, lam)
        except BadInput as e:
            what = "the transfer source " if (name, lam) == (transfer_source, None) else "the model "
            missing.append(f"{what}{_model_label(name, lam)} ({' '.join(str(e).split())})")
    if missing:
        raise BadInput("the model checks cannot run: missing " + "; ".join(missing)
                       + (" (pass --transfer-source none to skip the transfer check)"
                          if any("transfer source" in m for m in missing) else ""))


def _identity_problem(g: pd.DataFrame, key: tuple, zoo: "_Models", sha: str | None, data_sha: str | None) -> str | None:
    """Why the model or data found under the table's names is not what the table's rows ran on
    (weights or data sha256), or None. Checks of other weights or data would vouch for nothing."""
    name = key[0]
    origins = {str(v) for v in g["origin"] if nan_to_none(v) is not None} if "origin" in g.columns else set()
    if "module" in origins and not zoo.given(name, key[1]):
        return (f"the table's rows of {name} come from a module evaluated in Python (origin module); pass that "
                "module with models= to check it (the zoo's model of that name is another model)")
    want = {str(v) for v in g["weights_sha256"] if nan_to_none(v) is not None} if "weights_sha256" in g.columns else set()
    if want and sha is not None and sha not in want:
        return (f"the {name} found (weights sha256 {sha[:12]}…) is not the one the table's rows ran with "
                f"({', '.join(sorted(w[:12] + '…' for w in want))})")
    rows = g[g["dataset"] == key[2]]
    data = ({str(v) for v in rows["data_sha256"] if nan_to_none(v) is not None}
            if "data_sha256" in rows.columns else set())
    if data and data_sha is not None and data_sha not in data:
        return (f"the {key[2]} data found (sha256 {data_sha[:12]}…) is not the data the table's rows ran on "
                f"({', '.join(sorted(d[:12] + '…' for d in data))}); pass --data-dir with that data")
    return None


def run_checks(table: pd.DataFrame, *, models: Mapping[Any, Any] | None = None, device: str = "cpu",
               data_dir: str | None = None, transfer_source: str | None = "resnet20", sanity_n: int = 100,
               sanity_eps: float = SANITY_EPS, sanity_max_accuracy: float = 0.01, grad_tolerance: float = 0.0,
               batch_size: int | None = None, progress: Callable[[str], None] | None = None,
               require: bool = False, data: Mapping[tuple[str, int], Any] | None = None) -> pd.DataFrame:
    """Every check of this module for every (model, λ, dataset, n, seed) of ``table``; see the module doc.

    ``models``: your own modules by name (or by (name, λ)), each a module (its identity is its
    parameters' fingerprint, as ``robench.evaluate(model=...)`` records it) or a (module, weights
    sha256) pair for zoo weights loaded elsewhere; anything else is loaded from the zoo.
    ``data_dir``: the folder of the CIFAR data sets the table names (``samples`` needs none).
    ``transfer_source``: model name (zoo or ``models``) whose PGD examples are transferred; None skips.
    ``device``: where the models and data go (the run's device; checked first, BadInput when this machine
    lacks it); ``batch_size`` None: the device's default. The model checks run deterministically there
    (:func:`robench.devices.determinism`).
    ``progress``: called with one line per check and model (what ran, its status and seconds).
    ``require``: a model or data set that cannot be loaded is :class:`BadInput` (checked before any
    check runs) instead of ``not_run`` rows. ``data``: (dataset, n) → that data set's first n images
    (a :class:`robench.data.Dataset`) already in memory, e.g. shipped to a Ray worker; other data sets
    are read with ``load_dataset``. Returns a table with :data:`CHECKS_SCHEMA`'s columns.
    """
    from robench.devices import default_batch_size, determinism, resolve_device

    device = resolve_device(device)
    batch_size = default_batch_size(device, "analysis") if batch_size is None else int(batch_size)
    if not 0 < sanity_eps <= 1:
        raise BadInput(f"sanity_eps must be in (0, 1] in pixel units, got {sanity_eps!r}")
    if isinstance(sanity_n, bool) or not isinstance(sanity_n, int) or sanity_n < 1:
        raise BadInput(f"sanity_n must be a positive whole number, got {sanity_n!r}")
    if require:
        preflight(table, models=models, device=device, data_dir=data_dir, transfer_source=transfer_source)
    rows = table_checks(table).to_dict("records")
    zoo = _Models(models, device)
    data_cache: dict[tuple, Any] = {}
    transfer_cache: dict[tuple, Any] = {}
    with determinism(device):
        rows += _model_checks(table, zoo, data, data_dir, device, batch_size, data_cache, transfer_cache,
                              transfer_source, sanity_n, sanity_eps, sanity_max_accuracy, grad_tolerance, progress)
    return order_checks(to_checks_frame(rows))


def _model_checks(table, zoo, data, data_dir, device, batch_size, data_cache, transfer_cache, transfer_source,
                  sanity_n, sanity_eps, sanity_max_accuracy, grad_tolerance, progress) -> list[dict]:
    from robench.attacks import make_attack
    from robench.data import load_dataset
    from robench.devices import to_format

    rows: list[dict] = []
    groups = _groups(table)
    for i, (key, g) in enumerate(groups.items(), start=1):
        model_name, lam, dataset, n, seed = key
        label = f"[{i}/{len(groups)}] {_model_label(model_name, lam)} {dataset} n={n} seed={seed}"
        say = _Say(progress, label)
        try:
            model, sha = zoo.get_with_sha(model_name, lam)
            if (dataset, n) not in data_cache:
                ds = (data or {}).get((dataset, n))
                if ds is None:
                    ds = load_dataset(dataset, data_dir if dataset != "samples" else None, n=n)
                x, y = ds.as_float(device)
                data_cache[(dataset, n)] = (to_format(x), y, ds.sha256)
            x, y, data_sha = data_cache[(dataset, n)]
        except BadInput as e:
            why = f"cannot load the model or data: {e}"
            new = [_row(key, c, "not_run", detail=why) for c in CHECKS if c not in TABLE_CHECKS]
            rows += new
            for r in new:
                say(r)
            continue
        why = _identity_problem(g, key, zoo, sha, data_sha)
        if why is not None:  # other weights or data: the checks could not run on what the table measured
            new = [_row(key, c, "not_run", detail=why) for c in CHECKS if c not in TABLE_CHECKS]
            rows += new
            for r in new:
                say(r)
            continue
        s = time.perf_counter()
        frac = gradient_fraction(model, x, y, batch_size=batch_size)
        rows.append(say(_row(key, "zero_gradient", "flag" if frac > grad_tolerance else "pass", value=frac,
                             threshold=grad_tolerance, n_checked=int(y.shape[0]), seconds=time.perf_counter() - s,
                             cells=f"clean: {round(frac * y.shape[0])}/{y.shape[0]} examples"
                             if frac > grad_tolerance else "",
                             detail="fraction of examples whose input gradient of the loss is zero, NaN or Inf")))

        s = time.perf_counter()
        xs, ys = x[:sanity_n], y[:sanity_n]
        diff, changed = forward_difference(model, xs, batch_size=batch_size)
        nondet = not diff <= 1e-5
        rows.append(say(_row(key, "nondeterministic", "flag" if nondet else "pass", value=diff, threshold=1e-5,
                             n_checked=int(ys.shape[0]), seconds=time.perf_counter() - s,
                             cells=f"clean: max |Δlogit| {diff:.3g}, {changed} predictions changed" if nondet else "",
                             detail="two eval-mode forward passes over the first examples")))

        s = time.perf_counter()
        atk = make_attack("pgd", eps=sanity_eps, seed=seed, step_size=None)
        robust = atk.run(model, xs, ys).robust
        acc = float(robust.float().mean()) if robust.numel() else math.nan
        flagged = acc > sanity_max_accuracy
        rows.append(say(_row(key, "large_eps_survives", "flag" if flagged else "pass", value=acc,
                             threshold=sanity_max_accuracy, n_checked=int(ys.shape[0]),
                             seconds=time.perf_counter() - s,
                             cells=f"pgd@{format_eps(sanity_eps)}: {int(robust.sum())}/{robust.numel()} correct"
                             if flagged else "",
                             detail=f"PGD-20 (step 2.5·ε/20, random start) at ε={format_eps(sanity_eps)} on the "
                                    f"first {ys.shape[0]} examples")))

        rows.append(say(_transfer_row(key, g, model, x, y, zoo, transfer_source, transfer_cache, batch_size,
                                      device)))
    return rows


def order_checks(checks: pd.DataFrame) -> pd.DataFrame:
    """The one row order of a checks table: model, λ (learned last), dataset, n, seed, check."""
    order = {c: i for i, c in enumerate(CHECKS)}
    out = checks.assign(_c=checks["check"].map(order), _lam=checks["lam"].fillna(math.inf))
    out = out.sort_values(["model", "_lam", "dataset", "n", "seed", "_c"], kind="stable")
    return out.drop(columns=["_c", "_lam"]).reset_index(drop=True)


class _Say:
    """Progress of the model checks: one line per check and model as each finishes."""

    def __init__(self, progress: Callable[[str], None] | None, label: str) -> None:
        self.progress, self.label = progress, label

    def __call__(self, row: dict) -> dict:
        if self.progress is not None:
            status = STATUS_WORDS.get(row["status"], row["status"])
            why = f": {row['detail']}" if row["status"] == "not_run" else ""
            self.progress(f"checks {self.label}: {row['check']} {status} ({row['seconds']:.1f} s){why}")
        return row


def _transfer_row(key, g, model, x, y, zoo: _Models, source, cache: dict, batch_size: int, device) -> dict:
    import torch

    from robench.attacks import make_attack

    model_name, lam, dataset, n, seed = key
    if source is None:
        return _row(key, "transfer_stronger", "skip", detail="no transfer source")
    cells = {k: v for k, v in _attack_cells(g).items() if k[0] not in BLACK_BOX}
    linf = [e for (a, e) in cells if a in ("fgsm", "ifgsm", "pgd", "pgd10", "apgd_ce", "autoattack", "autoattack_art",
                                           "autoattack_lite")]
    if not linf:
        return _row(key, "transfer_stronger", "skip", detail="the table has no L∞ white-box attack cell to compare with")
    eps = max(linf)
    white = {a: v for (a, e), v in cells.items() if e == eps}
    best = min(white, key=lambda a: white[a][0])
    if model_name == source:
        return _row(key, "transfer_stronger", "skip", detail=f"the model is the transfer source {source}")
    s = time.perf_counter()
    ck = (source, dataset, n, seed, eps)
    if ck not in cache:
        try:
            src = zoo.get(source, None)
        except BadInput as e:
            return _row(key, "transfer_stronger", "not_run", detail=f"cannot load the transfer source {source}: {e}")
        cache[ck] = _transfer_examples(src, x, y, eps=eps, seed=seed, batch_size=batch_size)
    correct, total = _accuracy(model, cache[ck], y, batch_size)
    acc = correct / total
    lo, hi = wilson(correct, total)
    flagged = hi < white[best][1]
    return _row(key, "transfer_stronger", "flag" if flagged else "pass", value=acc, n_checked=total,
                seconds=time.perf_counter() - s,
                cells=(f"transfer pgd@{format_eps(eps)} from {source} {100 * acc:.1f}% < {best}@{format_eps(eps)} "
                       f"{100 * white[best][0]:.1f}%") if flagged else "",
                detail=f"PGD examples crafted on {source} at ε={format_eps(eps)} vs the strongest white-box "
                       f"attack on the model ({best}, {100 * white[best][0]:.1f}%), Wilson 95 % intervals")


def _transfer_examples(src, x, y, *, eps: float, seed: int, batch_size: int):
    """PGD-20 (step 2.5·ε/20, random start) examples crafted on ``src``, in batches seeded like eval's
    (``batch_seed(seed, b)``), on x's device; the whole set is checked once and the ε-ball bound read once."""
    import torch

    from robench.attacks import make_attack
    from robench.attacks.base import check_bound, no_excess
    from robench.executors import batch_seed

    probe = make_attack("pgd", eps=eps, seed=seed, step_size=None)
    num_classes = probe.prepare(src, x, y)
    out = torch.empty_like(x)
    excess = no_excess(x.device)
    for b, i in enumerate(range(0, x.shape[0], batch_size)):
        atk = make_attack("pgd", eps=eps, seed=batch_seed(seed, b), step_size=None)
        (res,), worst = atk.run_batch(src, x[i:i + batch_size], y[i:i + batch_size], [eps], num_classes=num_classes,
                                      score=False)
        out[i:i + batch_size] = res.x_adv
        excess = torch.maximum(excess, worst)
    check_bound(excess, probe)
    return out


def flag_words(checks: pd.DataFrame) -> dict[tuple, list[str]]:
    """(model, λ, dataset) → ``word(cells)`` for each flagged check (the leaderboard's ``flags``)."""
    out: dict[tuple, list[str]] = {}
    if checks is None or checks.empty:
        return out
    order = {c: i for i, c in enumerate(CHECKS)}
    flagged = checks[checks["status"] == "flag"]
    for _, r in flagged.sort_values("check", key=lambda s: s.map(order), kind="stable").iterrows():
        k = (r["model"], nan_to_none(r["lam"]), r["dataset"])
        cells = "" if pd.isna(r["cells"]) or not r["cells"] else f"({r['cells']})"
        word = f"{r['check']}{cells}"
        if word not in out.setdefault(k, []):
            out[k].append(word)
    return out


def summaries(checks: pd.DataFrame) -> dict[tuple, str]:
    """(model, λ, dataset) → ``"4 passed, 0 flagged, 1 not applicable, 2 not run"`` (the leaderboard's
    ``checks``; zero counts of "not applicable" and "not run" are left out); ``; model checks not
    run`` is added where only the table checks ran. A check that did not run is never a pass."""
    out: dict[tuple, str] = {}
    if checks is None or checks.empty:
        return out
    keys = [(m, nan_to_none(lam), d) for m, lam, d in zip(checks["model"], checks["lam"], checks["dataset"])]
    for key, idx in pd.Series(range(len(keys))).groupby(pd.Series([str(k) for k in keys]), sort=False):
        rows = checks.iloc[idx.to_numpy()]
        st = rows["status"].value_counts()
        parts = [f"{int(st.get('pass', 0))} passed", f"{int(st.get('flag', 0))} flagged"]
        parts += [f"{int(st[s])} {STATUS_WORDS[s]}" for s in ("skip", "not_run") if int(st.get(s, 0))]
        text = ", ".join(parts)
        if set(rows["check"]) <= set(TABLE_CHECKS):
            text += "; model checks not run"
        out[keys[idx.iloc[0]]] = text
    return out


def read_checks(path) -> pd.DataFrame:
    """Read a checks table (parquet or CSV) written by :func:`write_checks`, every value checked
    (known check and status words, n ≥ 1, seed ≥ 0, λ in [0, 1], numbers where numbers belong)."""
    from pathlib import Path

    from robench.results import TableChecker, number_text, read_frame

    p = Path(path)
    df = read_frame(p, what="checks table", string_columns=[c for c, t in CHECKS_SCHEMA.items() if t == "string"],
                    csv_na={c: [""] for c, t in CHECKS_SCHEMA.items() if t != "string"})
    missing = [c for c in CHECKS_SCHEMA if c not in df.columns]
    if missing:
        raise BadInput(f"{p} is not a robench checks table: missing columns {', '.join(missing)}")
    chk = TableChecker(df, f"checks table {p}", (lambda i: f"line {i + 2}") if p.suffix == ".csv"
                       else (lambda i: f"row {i + 1}"))
    out = {}
    for col, dtype in CHECKS_SCHEMA.items():
        out[col] = (chk.text(col) if dtype == "string"
                    else chk.number(col, integer=dtype != "float64", required=col in ("n", "seed")))
    for col, valid in (("check", CHECKS), ("status", STATUSES)):
        v = out[col]
        chk.fail(~v.isin(valid).fillna(False).to_numpy(), col,
                 lambda i, v=v, valid=valid: f"{v.iloc[i]!r} is not one of {', '.join(valid)}")
    for col in ("model", "dataset"):
        chk.fail(out[col].isna().to_numpy() | (out[col].fillna("") == "").to_numpy(), col, lambda i: "is missing")
    lam = out["lam"].to_numpy()
    chk.fail(~np.isnan(lam) & ~((lam >= 0) & (lam <= 1)), "lam",
             lambda i: f"{number_text(lam[i])} is outside [0, 1]")
    chk.fail((out["n"] < 1).to_numpy(), "n", lambda i: f"must be ≥ 1, got {out['n'].iloc[i]}")
    chk.fail((out["seed"] < 0).to_numpy(), "seed", lambda i: f"must be ≥ 0, got {out['seed'].iloc[i]}")
    checks = to_checks_frame(pd.DataFrame(out).to_dict("records"))
    # tables written before `not_run` existed said "skip" for a check whose model or data was missing
    legacy = (checks["status"] == "skip") & checks["detail"].fillna("").str.startswith("cannot load")
    checks.loc[legacy, "status"] = "not_run"
    return checks


def write_checks(checks: pd.DataFrame, out) -> list:
    """Write the checks table as ``out.parquet`` and ``out.csv`` (each atomically)."""
    from robench.results import write_table

    return write_table(checks, out)
