"""Cell records → the tidy table: worst-case rows (AND of per-example flags) and ONE row order,
used by ``robench eval`` and by ``robench sweep`` / ``results merge`` alike."""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from model_zoo.registry import natural_key
from robench.plan import missing
from robench.results import canonical_json, pack_flags, to_frame, unpack_flags, wilson

KIND_ORDER = {"clean": 0, "attack": 1, "worst_case": 2, "corruption": 3}
SHARED = ("model", "scheme", "lam", "dataset", "n", "eps", "seed", "device", "robench_version", "torch_version",
          "art_version", "foolbox_version", "git_sha", "timestamp", "data_sha256", "weights_sha256", "origin",
          "card_sha256", "host", "device_name", "precision", "memory_format", "batch_size", "cuda_version",
          "cudnn_version", "pyautoattack_version")


def norm_value(v: Any) -> Any:
    if missing(v):
        return None
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def worst_case_records(records: Iterable[Mapping], planned: Mapping[tuple, Iterable[str]] | None = None) -> list[dict]:
    """Per (model, lam, dataset, n, seed, eps) with at least one attack row carrying flags: the AND of
    the clean flags (if that clean row is present) and every attack's flags, as a ``worst_case`` row.

    ``attacks`` names the attacks the row is the AND of (sorted, '+'-joined). ``complete`` is True
    only when the clean row is there and every attack ``planned`` has for that group is among them
    (``planned``: group → attack names, keys as :func:`group_key`); without ``planned`` the attacks
    present are taken as the plan."""
    records = [dict(r) for r in records]
    clean = {group_key(r)[:-1]: r for r in records if r.get("kind") == "clean" and _given(r.get("flags"))}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("kind") == "attack" and _given(r.get("flags")):
            groups.setdefault(group_key(r), []).append(r)
    planned = {tuple(k): set(v) for k, v in (planned or {}).items()}
    out = []
    for key, rows in groups.items():
        n = int(rows[0]["n"])
        members = rows + ([clean[key[:-1]]] if key[:-1] in clean else [])
        flags = np.ones(n, dtype=bool)
        for r in members:
            flags &= unpack_flags(r["flags"], n)
        correct = int(flags.sum())
        lo, hi = wilson(correct, n)
        names = sorted({str(r["perturbation"]) for r in rows})
        want = planned.get(key, set(names))
        norms = sorted({str(r["norm"]) for r in rows if not missing(r.get("norm"))})
        params = {str(r["perturbation"]): json.loads(r["params"]) for r in rows if _given(r.get("params"))}
        out.append({
            **{c: rows[0].get(c) for c in SHARED}, "kind": "worst_case", "perturbation": "worst_case",
            "backend": None, "norm": "+".join(norms) if norms else None, "severity": None, "steps": None,
            "correct": correct, "accuracy": correct / n, "ci_low": lo, "ci_high": hi,
            "seconds": float(sum(float(r.get("seconds") or 0.0) for r in members)), "flags": pack_flags(flags),
            "attacks": "+".join(names), "complete": key[:-1] in clean and want <= set(names),
            "data_label": rows[0].get("data_label"), "params": canonical_json(params) if params else None,
        })
    return out


def _given(value) -> bool:
    """Whether a text cell holds something (an empty string, as a CSV may hold, is nothing)."""
    return not missing(value) and str(value) != ""


def group_key(record: Mapping) -> tuple:
    """The worst-case group of an attack row: (model, λ, dataset, n, seed, ε), λ as the plan has it
    (None where it is learned or does not apply), so keys match :meth:`robench.plan.Cell.group`."""
    from robench.plan import row_key
    from robench.results import KEY

    k = dict(zip(KEY, row_key(record)))
    return (k["model"], k["lam"], k["dataset"], k["n"], k["seed"], k["eps"])


def sort_key(models: Sequence[str] = ()) -> Any:
    """The one row order: model (in the given order, then natural order), λ (numbers ascending,
    learned last), seed, n, kind (clean, attack, worst_case, corruption), dataset, perturbation,
    backend, ε, severity."""
    rank = {m: i for i, m in enumerate(dict.fromkeys(models))}

    def num(v):
        return (1, 0.0) if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else (0, float(v))

    def key(r: Mapping) -> tuple:
        m = str(r["model"])
        return ((0, rank[m], ()) if m in rank else (1, 0, natural_key(m)), num(norm_value(r.get("lam"))),
                int(r["seed"]), int(r["n"]), KIND_ORDER.get(str(r["kind"]), 9), str(r["dataset"]),
                str(r["perturbation"]), str(norm_value(r.get("backend")) or ""), num(norm_value(r.get("eps"))),
                num(norm_value(r.get("severity"))))

    return key


def table(records: Iterable[Mapping], *, planned: Mapping[tuple, Iterable[str]] | None = None,
          models: Sequence[str] = ()) -> pd.DataFrame:
    """Cell records → the tidy table: the records plus their worst-case rows, in :func:`sort_key` order."""
    records = [dict(r) for r in records]
    rows = records + worst_case_records(records, planned)
    return to_frame(sorted(rows, key=sort_key(models)))
