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
                      "git_sha", "timestamp", "data_sha256", "weights_sha256", "card_sha256", *RUN_COLUMNS)
STRING_COLUMNS = ("analysis", "model", "scheme", "origin", "dataset", "device", "robench_version", "torch_version",
                  "art_version", "foolbox_version", "git_sha", "timestamp", "data_sha256", "weights_sha256",
                  "card_sha256", *(c for c in RUN_COLUMNS if c != "batch_size"))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A zoo model to analyse: its registered name and λ (None: learned / not applicable)."""

    name: str
    lam: float | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``resnet20`` or ``inresnet20@0.5`` (a fixed λ) or ``inresnet20@learned``."""
        from fractions import Fraction

        name, _, lam = str(text).strip().partition("@")
        if not name:
            raise BadInput(f"empty model name in {text!r}; write NAME or NAME@LAM such as inresnet20@0.5")
        if lam in ("", "learned", "none"):
            return cls(name, None)
        try:
            v = float(Fraction(lam)) if "/" in lam else float(lam)
        except (ValueError, ZeroDivisionError):
            raise BadInput(f"malformed λ {lam!r} in {text!r}; write NAME@LAM with LAM in [0, 1] or 'learned'") from None
        if not 0.0 <= v <= 1.0:
            raise BadInput(f"λ in {text!r} must be in [0, 1] or 'learned'")
        return cls(name, v)

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


def read_analysis(path: str | os.PathLike, analysis: str | None = None) -> pd.DataFrame:
    """Read a landscape or stability table (parquet or CSV); ``analysis`` checks which."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise BadInput(f"table {p} does not exist")
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype={c: "string" for c in STRING_COLUMNS})
    except Exception as e:  # pyarrow/pandas raise many types for a corrupt file; all mean "unreadable"
        raise BadInput(f"table {p} is unreadable: {type(e).__name__}") from None
    if "analysis" not in df.columns:
        raise BadInput(f"table {p} is not a landscape or stability table (no 'analysis' column)")
    if analysis is not None and not (df["analysis"] == analysis).all():
        raise BadInput(f"table {p} is not a {analysis} table")
    return df


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInput(f"seed must be an integer ≥ 0, got {seed!r}")
    return int(seed)


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

            def progress(k: int, label=spec.label()) -> None:
                done[0] += k
                say(f"{analysis} {label}: {done[0]}/{len(y)} images, {time.perf_counter() - t0:.0f} s")

            rows = compute(loaded.model, x, y, batch_size, progress)
            base = {"analysis": analysis, **loaded.meta, "dataset": ds.name, "n": len(y), "seed": int(seed),
                    "seconds": time.perf_counter() - t0, **context, "data_sha256": ds.sha256}
            records += [{**base, **row} for row in rows]
            if on_model is not None:
                on_model(records)
    return records
