"""What every analysis table shares: model loading by (name, λ), per-example summaries with 95 %
intervals, and the provenance columns eval rows carry."""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from robench.errors import BadInput
# The one place the analyses take provenance from (the engine module is being split).
from robench.provenance import provenance  # noqa: F401  (re-exported)
from robench.results import wilson

Z95 = 1.959963984540054
# Columns before an analysis' own columns, and the provenance columns after them, in table order.
ID_COLUMNS = ("analysis", "model", "scheme", "lam", "origin", "dataset", "n", "seed")
RUN_COLUMNS = ("host", "device_name", "precision", "memory_format", "batch_size", "cuda_version", "cudnn_version",
               "pyautoattack_version")
PROVENANCE_COLUMNS = ("seconds", "device", "robench_version", "torch_version", "art_version", "foolbox_version",
                      "git_sha", "timestamp", "data_sha256", "weights_sha256", "card_sha256", "data_label", *RUN_COLUMNS)
STRING_COLUMNS = ("analysis", "model", "scheme", "origin", "dataset", "device", "robench_version", "torch_version",
                  "art_version", "foolbox_version", "git_sha", "timestamp", "data_sha256", "weights_sha256",
                  "card_sha256", "data_label", *(c for c in RUN_COLUMNS if c != "batch_size"))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A zoo model to analyse: its registered name and λ (None: learned / not applicable)."""

    name: str
    lam: float | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``resnet20``, ``inresnet20@0.5`` (a fixed λ), ``inresnet20@learned``, with a tag after it
        (``resnet20.s1``, ``inresnet20@0.5.s2``): :func:`robench.spec.parse_model_ref`'s spelling; or
        the path of a checkpoint (``PATH`` or ``PATH@LAM``)."""
        from fractions import Fraction

        from robench.spec import parse_lam, parse_model_ref

        text = str(text).strip()
        name, _, lam = text.partition("@")
        if not (os.sep in name or name.endswith((".safetensors", ".json")) or os.path.lexists(name)):
            ref = parse_model_ref(text)
            return cls(ref.model, ref.lam)
        if lam in ("", "learned", "none"):
            return cls(name, None)
        try:
            v = float(Fraction(lam)) if "/" in lam else float(lam)
        except (ValueError, ZeroDivisionError, OverflowError):
            raise BadInput(f"malformed λ {lam!r} in {text!r}; write NAME@LAM with LAM in [0, 1] or 'learned'") from None
        if not 0.0 <= v <= 1.0:
            raise BadInput(f"λ in {text!r} must be in [0, 1] or 'learned'")
        return cls(name, parse_lam(v))  # −0 → 0; more digits than checkpoint names hold: refused

    def label(self) -> str:
        return self.name if self.lam is None else f"{self.name} λ={self.lam:g}"


@dataclasses.dataclass(frozen=True)
class Loaded:
    model: torch.nn.Module
    meta: dict  # model, scheme, lam, origin, weights_sha256, card_sha256


def model_lam(model: torch.nn.Module, scheme: str) -> float:
    """λ column value: the fixed λ, 0 for forward Euler (ResNet), NaN where learned or not applicable."""
    lam = getattr(model, "lam", None)
    if lam is not None:
        return float(lam)
    return 0.0 if scheme == "euler" else math.nan


def load_model(spec: ModelSpec, device: torch.device) -> Loaded:
    """The zoo model on ``device`` in its memory format, eval mode, parameters frozen."""
    import model_zoo

    from robench.devices import memory_format

    entry = model_zoo.load_entry(spec.name, lam=spec.lam, map_location=str(device))
    model = entry.model.to(device, memory_format=memory_format(device)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    scheme = str(entry.card.scheme)
    return Loaded(model, {"model": spec.name, "scheme": scheme, "lam": model_lam(model, scheme), "origin": entry.origin,
                          "weights_sha256": entry.card.weights_sha256 or None, "card_sha256": entry.card_sha256})


def load_inputs(dataset: str | None, data_dir: str | os.PathLike | None, n: int | None, device: torch.device):
    from robench.data import load_dataset
    from robench.devices import to_format

    ds = load_dataset(dataset, data_dir, n=n)
    x, y = ds.as_float(device)
    return ds, to_format(x), y


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95 % interval over examples (NaN interval for one example)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(v.mean())
    if v.size < 2:
        return (m, math.nan, math.nan)
    half = Z95 * float(v.std(ddof=1)) / math.sqrt(v.size)
    return (m, m - half, m + half)


def rate_interval(flags: np.ndarray) -> tuple[float, float, float]:
    """Fraction of True with its Wilson 95 % interval."""
    f = np.asarray(flags, dtype=bool).reshape(-1)
    lo, hi = wilson(int(f.sum()), int(f.size))
    return (float(f.mean()) if f.size else math.nan, lo, hi)


def check_positive(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise BadInput(f"{what} must be a positive whole number, got {v!r}")
    return int(v)


def specs_of(models: Sequence[str | ModelSpec]) -> list[ModelSpec]:
    out = [m if isinstance(m, ModelSpec) else ModelSpec.parse(m) for m in models]
    if not out:
        raise BadInput("give at least one model (NAME or NAME@LAM, see `robench zoo list`)")
    return out


def finish(records: list[dict], columns: Sequence[str]) -> pd.DataFrame:
    """Records → DataFrame with ID columns, the analysis' own ``columns``, then provenance, typed."""
    order = [*ID_COLUMNS, *columns, *PROVENANCE_COLUMNS]
    df = pd.DataFrame(records)
    for c in order:
        if c not in df.columns:
            df[c] = pd.NA
    df = df[order]
    for c in STRING_COLUMNS:
        df[c] = df[c].astype("string")
    for c in ("n", "seed"):
        df[c] = df[c].astype("int64")
    df["batch_size"] = df["batch_size"].astype("Int64")
    return df


ANALYSES = ("landscape", "stability", "noise_protocol")
_OWN = {  # per analysis: column → ("text", allowed values or None) | ("int", min) | ("float", None)
    "landscape": {"direction": ("text", ("grad_sign", "pgd", "random", "grad_sign×random")), "index": ("int", 0),
                  "t": ("float", None), "t2": ("float", None),
                  "quantity": ("text", ("loss", "accuracy", "loss_increase")), "mean": ("float", None),
                  "ci_low": ("float", None), "ci_high": ("float", None)},
    "stability": {"quantity": ("text", ("coef", "gain", "log_gain", "lyapunov", "lyapunov_damped", "jacobian_norm",
                                        "grad_norm_l2", "grad_norm_l1")),
                  "direction": ("text", ("random", "adversarial")), "block": ("int", 0), "stage": ("int", 0),
                  "coef": ("text", ("lam", "k")), "mean": ("float", None), "ci_low": ("float", None),
                  "ci_high": ("float", None)},
    "noise_protocol": {"corruption": ("text", None), "protocol": ("text", ("standard", "reference")),
                       "severity": ("int", 1), "correct": ("int", 0), "total": ("int", 1), "accuracy": ("float", None),
                       "ci_low": ("float", None), "ci_high": ("float", None), "file_mean": ("text", None),
                       "file_std": ("text", None)},
}
# columns that may not hold a missing value (every column of _OWN must exist)
_REQUIRED = {"landscape": ("direction", "index", "t", "quantity"), "stability": ("quantity",),
             "noise_protocol": ("corruption", "protocol", "correct", "total", "accuracy")}


def validate_analysis(df: pd.DataFrame, where: str, row_label: Callable[[int], str] | None = None) -> pd.DataFrame:
    """Check a landscape / stability / noise-protocol table value by value (types, known names,
    n ≥ 1, λ in [0, 1], finite grid points, ci_low ≤ mean ≤ ci_high, accuracies in [0, 1],
    correct ≤ total and accuracy = correct/total) and return it typed; one-line BadInput otherwise."""
    from robench.results import TableChecker, number_text

    if "analysis" not in df.columns:
        raise BadInput(f"{where} is not a landscape or stability table (no 'analysis' column)")
    chk = TableChecker(df, where, row_label or (lambda i: f"row {i + 1}"))
    kinds = chk.text("analysis")
    chk.fail(~kinds.isin(ANALYSES).to_numpy(), "analysis",
             lambda i: f"{kinds.iloc[i]!r} is not one of {', '.join(ANALYSES)}")
    analysis = str(kinds.iloc[0]) if len(kinds) else "landscape"
    chk.fail((kinds != analysis).to_numpy(), "analysis", lambda i: f"{kinds.iloc[i]!r} differs from row 1's "
                                                                   f"{analysis!r}; one table holds one analysis")
    missing = [c for c in (*ID_COLUMNS, *_OWN[analysis]) if c not in df.columns]
    if missing:
        raise BadInput(f"{where} is not a {analysis} table: missing columns {', '.join(missing)}")
    out = df.reset_index(drop=True).copy()
    for c in (set(STRING_COLUMNS) - {"analysis"}) & set(out.columns):
        out[c] = chk.text(c)
    out["analysis"] = kinds
    for c in ("model", "dataset"):
        chk.fail(out[c].isna().to_numpy() | (out[c].fillna("") == "").to_numpy(), c, lambda i: "is missing")
    out["lam"] = lam = chk.number("lam")
    chk.fail(~np.isnan(lam.to_numpy()) & ~((lam >= 0) & (lam <= 1)).to_numpy(), "lam",
             lambda i: f"{number_text(lam.iloc[i])} is outside [0, 1]")
    out["n"] = chk.number("n", integer=True, required=True).astype("int64")
    out["seed"] = chk.number("seed", integer=True, required=True).astype("int64")
    chk.fail((out["n"] < 1).to_numpy(), "n", lambda i: f"must be ≥ 1, got {out['n'].iloc[i]}")
    chk.fail((out["seed"] < 0).to_numpy(), "seed", lambda i: f"must be ≥ 0, got {out['seed'].iloc[i]}")
    if "seconds" in out.columns:
        out["seconds"] = chk.number("seconds")
    for c, (kind, spec) in _OWN[analysis].items():
        if c not in out.columns:
            continue
        if kind == "text":
            v = out[c] = chk.text(c)
            if c in _REQUIRED[analysis]:
                chk.fail(v.isna().to_numpy(), c, lambda i: "is missing")
            if spec is not None:
                chk.fail(v.notna().to_numpy() & ~v.isin(spec).fillna(False).to_numpy(), c,
                         lambda i, v=v, spec=spec: f"{v.iloc[i]!r} is not one of {', '.join(spec)}")
        elif kind == "int":
            v = out[c] = chk.number(c, integer=True, required=c in _REQUIRED[analysis])
            chk.fail(v.notna().to_numpy() & (v.fillna(spec) < spec).to_numpy(), c,
                     lambda i, v=v, spec=spec: f"must be ≥ {spec}, got {v.iloc[i]}")
        else:
            out[c] = chk.number(c)
    if analysis == "landscape":
        out["index"] = out["index"].astype("int64")
    for c in ("t", "t2"):
        if c in out.columns:
            v = out[c].to_numpy()
            chk.fail(~np.isnan(v) & ~np.isfinite(v) if c == "t2" else ~np.isfinite(v), c,
                     lambda i, v=v: f"{number_text(v[i])} is not a finite number")
    if {"mean", "ci_low", "ci_high"} <= set(out.columns):
        m, lo, hi = (out[c].to_numpy() for c in ("mean", "ci_low", "ci_high"))
        chk.fail(np.isinf(m) | np.isinf(lo) | np.isinf(hi), "mean", lambda i: "or its interval is infinite")
        both = ~np.isnan(m) & ~np.isnan(lo) & ~np.isnan(hi)
        chk.fail(both & ~((lo <= m + 1e-9) & (m <= hi + 1e-9)), "ci_low/ci_high",
                 lambda i: f"[{number_text(lo[i])}, {number_text(hi[i])}] does not contain the mean {number_text(m[i])}")
        if "quantity" in out.columns:
            is_acc = (out["quantity"] == "accuracy").fillna(False).to_numpy()
            chk.fail(is_acc & ~np.isnan(m) & ~((m >= 0) & (m <= 1)), "mean",
                     lambda i: f"{number_text(m[i])} is an accuracy outside [0, 1]")
    if analysis == "noise_protocol":
        out["correct"], out["total"] = out["correct"].astype("int64"), out["total"].astype("int64")
        c, t, a = (out[k].astype("float64").to_numpy() for k in ("correct", "total", "accuracy"))
        chk.fail(np.isnan(c) | np.isnan(t) | (c > t), "correct",
                 lambda i: f"{number_text(c[i])} is outside [0, total={number_text(t[i])}]")
        chk.fail(np.isnan(a) | (np.abs(a - c / t) > 1e-9), "accuracy",
                 lambda i: f"{number_text(a[i])} is not correct/total")
    return out


def read_analysis(path: str | os.PathLike, analysis: str | None = None) -> pd.DataFrame:
    """Read a landscape, stability or noise-protocol table (parquet or CSV), every value checked
    (:func:`validate_analysis`); ``analysis`` checks which."""
    from pathlib import Path

    from robench.results import read_frame

    p = Path(path)
    df = read_frame(p, what="table", string_columns=(*STRING_COLUMNS, "direction", "quantity", "coef", "corruption",
                                                     "protocol", "file_mean", "file_std"))
    line = (lambda i: f"line {i + 2}") if p.suffix == ".csv" else (lambda i: f"row {i + 1}")
    df = validate_analysis(df, f"table {p}", line)
    if analysis is not None and not (df["analysis"] == analysis).all():
        raise BadInput(f"table {p} is not a {analysis} table")
    return df


def check_seed(seed) -> int:
    from robench.spec import SEED_MAX

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise BadInput(f"seed must be an integer in [0, {SEED_MAX}], got {seed!r}")
    return int(seed)


def progress_line(analysis: str, label: str, done: float, total: int, seconds: float, what: str = "") -> str:
    """``landscape resnet20: 83/250 images (pgd), 40 s, ETA 80 s``: one line of an analysis' progress."""
    from robench.progress import duration

    eta = f", ETA {duration(seconds / done * (total - done))}" if 0 < done < total else ""
    return (f"{analysis} {label}: {int(done + 1e-9)}/{total} images{f' ({what})' if what else ''}, "
            f"{duration(seconds)}{eta}")


def check_count(v, what: str, hi: int) -> int:
    """A positive whole number of at most ``hi`` (grid points, iterations, directions): every loop
    the analyses run has a bound."""
    v = check_positive(v, what)
    if v > hi:
        raise BadInput(f"{what} must be a whole number in [1, {hi:,}], got {v:,}")
    return v


def check_pixels(v, what: str) -> float:
    """An L∞ distance in pixel units, in (0, 1] (``16`` gets "did you mean 16/255?")."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) or v <= 0:
        raise BadInput(f"{what} must be a number in (0, 1] in pixel units such as 8/255, got {v!r}")
    if v > 1:
        hint = f"; did you mean {v:g}/255?" if float(v).is_integer() and v <= 255 else ""
        raise BadInput(f"{what} must be in (0, 1] in pixel units such as 8/255, got {v:g}{hint}")
    return float(v)


def analysis_batch_size(batch_size, device: torch.device, job: str = "analysis") -> int:
    """``batch_size`` checked, or the device's default for the job (:func:`robench.devices.default_batch_size`)."""
    from robench.devices import default_batch_size

    return default_batch_size(device, job) if batch_size is None else check_positive(batch_size, "batch size")


def run_models(analysis: str, specs: Sequence[ModelSpec], compute: Callable, *, dataset, data_dir, n, seed: int,
               device, batch_size: int | None, log: Callable[[str], None] | None,
               on_model: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Resolve the device, load the data once, then per model: ``compute(model, x, y, batch_size, on_batch)
    -> rows``; each row gets the ID and provenance columns (the batch size among them) and the model's
    wall seconds. Runs under :func:`robench.devices.determinism`. Progress goes to ``log`` after every
    batch; ``on_model`` gets the records so far after every model (the CLI writes them, so a kill loses
    at most the model in flight)."""
    from robench.data import data_label
    from robench.devices import determinism, resolve_device

    dev = resolve_device(device)
    batch_size = analysis_batch_size(batch_size, dev)
    ds, x, y = load_inputs(dataset, data_dir, n, dev)
    context = {**provenance(dev), "batch_size": batch_size}
    say = log or (lambda s: print(s, file=sys.stderr))
    records = []
    with determinism(dev):
        for spec in specs:
            loaded = load_model(spec, dev)
            t0 = time.perf_counter()
            done = [0]

            def progress(k: float, what: str = "", label=spec.label()) -> None:
                done[0] += k
                say(progress_line(analysis, label, done[0], len(y), time.perf_counter() - t0, what))

            rows = compute(loaded.model, x, y, batch_size, progress)
            base = {"analysis": analysis, **loaded.meta, "dataset": ds.name, "n": len(y), "seed": int(seed),
                    "seconds": time.perf_counter() - t0, **context, "data_sha256": ds.sha256,
                    "data_label": data_label(ds)}
            records += [{**base, **row} for row in rows]
            if on_model is not None:
                on_model(records)
    return records
