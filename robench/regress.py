"""Regression of robustness numbers: does a new results table do significantly worse than a baseline?

Cells are matched on :data:`robench.results.KEY` (model, λ, dataset, kind, perturbation, backend,
ε, severity, seed, n) and on what they ran with (:data:`robench.results.RUN_KEY`): the batch size
(attack seeds are drawn per batch) and the device kind (cpu, cuda, mps; from the ``device`` column).
A table written before rows recorded their batch size (the column is NA) matches any batch size, and
one without a ``device`` column ran on the CPU; a cell at another batch size or on another device kind
is another cell (listed as missing and new, never compared). For every matched cell the decision is
one-sided (only "worse" counts) at α = 0.01:

- **exact McNemar** when both rows carry per-example flags for the same data (equal
  ``data_sha256`` and n): with b = examples right in the baseline and wrong now, c = the reverse,
  p = P(Binomial(b + c, ½) ≥ b) (``scipy.stats.binomtest(b, b + c, 0.5, alternative="greater")``).
  Pairing the same images removes the between-sample noise, so small real drops are caught.
- **two-proportion z-test** otherwise (pooled proportion, p = Φ̄(z) with z = (p₀ − p₁)/se).

A cell regresses when p < α. Identical counts never regress. Cells only in the new table are
listed as *new*. Cells only in the baseline are *missing* and fail the check (exit 1, listed) unless
``allow_missing`` (``--allow-missing``) accepts them. Worst-case rows are compared only when both
sides are the AND of the same attacks (the ``attacks`` column, or for older tables the attacks the
table holds for that cell) and neither is marked incomplete (``complete`` False); otherwise the
pair is listed as *not comparable* with the reason and not tested. A baseline with no cell in
common with the results is bad input (exit 2), as is a table holding the same cell twice.

This module is a pure function of tables (no evaluation): ``robench regress --update`` runs its
sweeps in :mod:`robench.baseline`, which uses :func:`stale_checkpoints` and :func:`updated_baseline`.

Refreshing a baseline on purpose (a deliberate change of models, attacks or data): CI's baselines
are ``results/baseline_samples.*`` and ``results/baseline_cifar1000.*``, written by
``bash .ci/regression --refresh`` (the same evaluation CI runs). Inspect the change by hand first
(``bash .ci/regression`` prints the regress report), then commit the new baseline files with a
message saying why the numbers moved. Never refresh a baseline to silence a regression you cannot
explain.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from robench.errors import BadInput
from robench.results import KEY, format_eps, run_key, unpack_flags
from robench.safetext import terminal_text

ALPHA = 0.01


def _none(v):
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)) and math.isnan(v):
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return round(float(v), 10)  # ε = 8/255 read back from CSV must match the parquet value
    return v


def _keys(df: pd.DataFrame, label: str) -> list[tuple]:
    """Per row: its :data:`KEY` values followed by (batch size or None, device kind)."""
    runs = [run_key(r) for r in df.to_dict("records")]
    keys = [tuple(_none(v) for v in t) + rk for t, rk in zip(zip(*(df[c] for c in KEY)), runs)]
    seen, dups = set(), []
    for k in keys:
        if k in seen:
            dups.append(k)
        seen.add(k)
    if dups:
        raise BadInput(f"the {label} table holds the same cell more than once ({describe(dups[0])}); "
                       "merge it without duplicates first")
    return keys


def _match(bkeys: list[tuple], rkeys: list[tuple]) -> dict[int, int]:
    """Baseline row → results row: equal KEY and device kind, and equal batch size where both tables
    record one (an NA batch size matches any, but only one: two candidates are BadInput)."""
    by_cell: dict[tuple, list[int]] = {}
    for j, k in enumerate(rkeys):
        by_cell.setdefault(k[:-2] + k[-1:], []).append(j)
    out = {}
    for i, k in enumerate(bkeys):
        batch = k[-2]
        cands = [j for j in by_cell.get(k[:-2] + k[-1:], []) if batch is None or rkeys[j][-2] in (None, batch)]
        if len(cands) > 1:
            sizes = ", ".join(str(rkeys[j][-2]) for j in cands)
            raise BadInput(f"the results hold {describe(k[:-2] + (None, k[-1]))} at batch sizes {sizes}, and the baseline "
                           "does not record its batch size; compare one batch size at a time")
        if cands:
            out[i] = cands[0]
    return out


def describe(key: tuple) -> str:
    """Human spelling of a cell key: ``inresnet20 λ=0.5 attack pgd/art ε=8/255 seed=0 n=1000 (samples)``."""
    k = dict(zip(KEY, key))
    parts = [str(k["model"]), "λ=learned/–" if k["lam"] is None else f"λ={k['lam']:g}", str(k["kind"])]
    if k["kind"] != "clean":
        parts.append(str(k["perturbation"]) + (f"/{k['backend']}" if k["backend"] not in (None, "", "-") else ""))
    if k["eps"] is not None:
        parts.append(f"ε={format_eps(k['eps'])}")
    if k["severity"] is not None:
        parts.append(f"severity={k['severity']}")
    parts += [f"seed={k['seed']}", f"n={k['n']}", f"({k['dataset']})"]
    if len(key) == len(KEY) + 2:  # (batch size, device kind) follow the KEY values
        batch, kind = key[len(KEY):]
        parts.append(f"[{kind}{'' if batch is None else f', batch {batch}'}]")
    return terminal_text(" ".join(parts))  # names from a table never rewrite the terminal


def _flags(row: pd.Series) -> np.ndarray | None:
    v = row.get("flags")
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or str(v) == "":
        return None
    try:
        f = unpack_flags(str(v), int(row["n"]))
    except ValueError:
        return None
    return f if len(f) == int(row["n"]) and int(f.sum()) == int(row["correct"]) else None


def compare_cell(base: pd.Series, new: pd.Series, *, alpha: float = ALPHA) -> dict:
    """Test one matched cell; returns test name, p-value, discordant counts and whether it regressed."""
    n0, n1 = int(base["n"]), int(new["n"])
    c0, c1 = int(base["correct"]), int(new["correct"])
    f0, f1 = _flags(base), _flags(new)
    d0, d1 = base.get("data_sha256"), new.get("data_sha256")
    # NA on either side: not known to be the same images (and NA == x is NA, no truth value)
    same_data = (f0 is not None and f1 is not None and n0 == n1 and not pd.isna(d0) and not pd.isna(d1)
                 and str(d0) == str(d1))
    if same_data:
        worse = int(np.sum(f0 & ~f1))
        better = int(np.sum(~f0 & f1))
        p = 1.0 if worse == 0 else float(stats.binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)
        test = "mcnemar"
    else:
        worse = better = None
        p0, p1 = c0 / n0, c1 / n1
        pooled = (c0 + c1) / (n0 + n1)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
        p = 1.0 if se == 0 or p1 >= p0 else float(stats.norm.sf((p0 - p1) / se))
        test = "z"
    return {"test": test, "p_value": p, "worse": worse, "better": better, "regressed": p < alpha}


@dataclasses.dataclass
class Report:
    """Outcome of :func:`regress`: the matched cells with their tests, and unmatched keys."""

    diff: pd.DataFrame  # one row per matched cell
    missing: list[tuple]  # keys only in the baseline
    new: list[tuple]  # keys only in the results
    alpha: float
    incomparable: list[tuple] = dataclasses.field(default_factory=list)  # (key, reason): worst cases not tested
    allow_missing: bool = False

    @property
    def regressions(self) -> pd.DataFrame:
        return self.diff[self.diff["status"] == "REGRESSION"] if not self.diff.empty else self.diff

    @property
    def ok(self) -> bool:
        """No significant regression, and no missing baseline cell unless ``allow_missing``."""
        return self.regressions.empty and (self.allow_missing or not self.missing)


def _worst_case_makeup(df: pd.DataFrame) -> list[tuple[str | None, bool | None]]:
    """Per row: (attacks, complete) of a worst-case row; (None, None) elsewhere."""
    from robench.leaderboard import worst_case_attacks

    complete = df["complete"] if "complete" in df.columns else [None] * len(df)
    return [(a, None if _none(c) is None else bool(c)) for a, c in zip(worst_case_attacks(df), complete)]


def regress(baseline: pd.DataFrame, results: pd.DataFrame, *, alpha: float = ALPHA,
            allow_missing: bool = False) -> Report:
    """Match cells by key and test each for a significant drop; see the module docstring."""
    if not 0.0 < alpha < 1.0:
        raise BadInput(f"alpha must be in (0, 1), got {alpha}")
    bkeys, rkeys = _keys(baseline, "baseline"), _keys(results, "results")
    pairs = _match(bkeys, rkeys)
    if not pairs:
        raise BadInput(f"the baseline has no cell in common with the results ({len(bkeys)} baseline cells, "
                       f"{len(rkeys)} result cells; cells match on {', '.join(KEY)}, batch size and device kind)")
    bmake, rmake = _worst_case_makeup(baseline), _worst_case_makeup(results)
    rows, incomparable = [], []
    for i, j in pairs.items():
        k = bkeys[i]
        b, r = baseline.iloc[i], results.iloc[j]
        if b["kind"] == "worst_case":
            (ba, bc), (ra, rc) = bmake[i], rmake[j]
            if ba != ra:
                incomparable.append((k, f"baseline is the AND of {ba or 'nothing'}, results of {ra or 'nothing'}"))
                continue
            if bc is False or rc is False:
                side = " and ".join(s for s, c in (("baseline", bc), ("results", rc)) if c is False)
                incomparable.append((k, f"the {side} worst case is incomplete"))
                continue
        t = compare_cell(b, r, alpha=alpha)
        acc0, acc1 = int(b["correct"]) / int(b["n"]), int(r["correct"]) / int(r["n"])
        status = "REGRESSION" if t["regressed"] else ("better" if acc1 > acc0 else ("worse" if acc1 < acc0 else "same"))
        rows.append({**dict(zip(KEY, k)), "cell": describe(k[:len(KEY)]), "baseline": acc0, "result": acc1,
                     "delta": acc1 - acc0, "test": t["test"], "p_value": t["p_value"], "worse": t["worse"],
                     "better": t["better"], "status": status})
    diff = pd.DataFrame(rows, columns=[*KEY, "cell", "baseline", "result", "delta", "test", "p_value", "worse",
                                       "better", "status"])
    matched = set(pairs.values())
    return Report(diff=diff, missing=[k for i, k in enumerate(bkeys) if i not in pairs],
                  new=[k for j, k in enumerate(rkeys) if j not in matched], alpha=alpha, incomparable=incomparable,
                  allow_missing=allow_missing)


def format_report(rep: Report, *, show_all: bool = True) -> str:
    """The diff table and the unmatched cells as text."""
    d = rep.diff if show_all else rep.diff[rep.diff["status"] != "same"]
    lines = []
    if not d.empty:
        w = max(len(c) for c in d["cell"])
        lines.append(f"{'cell':<{w}}  baseline  result   delta   test     p-value  status")
        for _, r in d.iterrows():
            lines.append(f"{r['cell']:<{w}}  {100 * r['baseline']:7.2f}%  {100 * r['result']:6.2f}%  "
                         f"{100 * r['delta']:+6.2f}  {r['test']:<7}  {r['p_value']:7.2g}  {r['status']}")
    missing_label = "missing (only in the baseline" + ("; accepted by --allow-missing)" if rep.allow_missing
                                                      else "; fails unless --allow-missing)")
    for label, keys in ((missing_label, rep.missing), ("new (only in the results)", rep.new)):
        if keys:
            lines.append(f"{label}: {len(keys)}")
            lines += [f"  {describe(k)}" for k in keys]
    if rep.incomparable:
        lines.append(f"not comparable (worst cases of different attacks or unfinished): {len(rep.incomparable)}")
        lines += [f"  {describe(k)}: {why}" for k, why in rep.incomparable]
    n_reg = len(rep.regressions)
    lines.append(f"{len(rep.diff)} matched cells, {n_reg} significant regression{'s' if n_reg != 1 else ''} "
                 f"(one-sided, α={rep.alpha:g}), {len(rep.missing)} missing, {len(rep.new)} new, "
                 f"{len(rep.incomparable)} not comparable")
    return "\n".join(lines)


def stale_checkpoints(baseline: pd.DataFrame, current: Mapping[tuple, str]) -> list[tuple]:
    """The checkpoints (keys of ``current``: e.g. (model, λ) → weights sha256) whose weights have no
    cell in ``baseline`` (new or retrained), in the order given."""
    known = {v for v in baseline["weights_sha256"] if _none(v) is not None} if "weights_sha256" in baseline else set()
    return [k for k, sha in current.items() if sha not in known]


def updated_baseline(baseline: pd.DataFrame, new: pd.DataFrame, current: set[str]) -> pd.DataFrame | None:
    """The baseline brought up to date: the new cells, plus the baseline's cells of weights still
    ``current`` (sha256s) that the new cells do not replace; None when nothing changes."""
    fresh = set(new["weights_sha256"]) if len(new) else set()
    keep = baseline[baseline["weights_sha256"].isin(current - fresh)]
    if new.empty and len(keep) == len(baseline):
        return None
    return pd.concat([keep, new], ignore_index=True).sort_values(["model", "lam"], kind="stable", ignore_index=True)
