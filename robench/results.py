"""Tidy result tables: one flat record per cell → DataFrame at the edge, parquet + CSV on disk.

Floats are floats and counts are ints, never strings. ``lam`` is NaN where λ is learned or does
not apply (LM-ResNet), 0.0 for ResNet (forward Euler is λ=0) and the fixed value otherwise.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from robench.errors import BadInput
from robench.fileio import atomic_write

KINDS = ("clean", "attack", "corruption", "worst_case")

# column → pandas dtype; the order is the table's column order
SCHEMA: dict[str, str] = {
    "model": "string",
    "scheme": "string",
    "lam": "float64",
    "dataset": "string",
    "n": "int64",
    "kind": "string",
    "perturbation": "string",
    "backend": "string",
    "norm": "string",
    "eps": "float64",
    "severity": "Int64",
    "steps": "Int64",
    "seed": "int64",
    "correct": "int64",
    "accuracy": "float64",
    "ci_low": "float64",
    "ci_high": "float64",
    "seconds": "float64",
    "device": "string",
    "robench_version": "string",
    "torch_version": "string",
    "art_version": "string",
    "foolbox_version": "string",
    "git_sha": "string",
    "timestamp": "string",
    "data_sha256": "string",
    "weights_sha256": "string",
    "flags": "string",
}
# What identifies a cell (sweeps skip finished keys; regress matches on them).
KEY = ("model", "lam", "dataset", "kind", "perturbation", "backend", "eps", "severity", "seed", "n")


def wilson(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95% by default) for ``correct`` successes out of ``n``."""
    if n <= 0:
        return (math.nan, math.nan)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pack_flags(flags: np.ndarray) -> str:
    """Per-example robust flags (bool[n]) as a hex string, so a table row can carry them."""
    return np.packbits(np.asarray(flags, dtype=bool)).tobytes().hex()


def unpack_flags(hexstr: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexstr), dtype=np.uint8))[:n].astype(bool)


def to_frame(records: Iterable[dict]) -> pd.DataFrame:
    """Flat records → a DataFrame with exactly :data:`SCHEMA`'s columns and dtypes."""
    df = pd.DataFrame(list(records))
    for col in SCHEMA:
        if col not in df.columns:
            df[col] = pd.NA
    df = df[list(SCHEMA)]
    for col, dtype in SCHEMA.items():
        if dtype in ("float64",):
            df[col] = pd.to_numeric(df[col], errors="raise").astype("float64")
        else:
            df[col] = df[col].astype(dtype)
    return df


def write_table(df: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """Write ``out`` as parquet and CSV side by side (``x.parquet`` + ``x.csv``), each atomically."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".parquet", ".csv") else out
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, writer in ((".parquet", lambda p: df.to_parquet(p, index=False)),
                           (".csv", lambda p: df.to_csv(p, index=False))):
        written.append(atomic_write(stem.with_name(stem.name + suffix), writer))
    return written


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results table (parquet or CSV) and check it has the schema's key and accuracy columns."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"results table {p} does not exist")
    try:
        if p.suffix == ".parquet":
            df = pd.read_parquet(p)
        elif p.suffix == ".csv":
            # string columns stay strings: a flags hex such as "0000" would otherwise parse as 0
            df = pd.read_csv(p, dtype={c: "string" for c, t in SCHEMA.items() if t == "string"})
        else:
            raise BadInput(f"results table {p}: unknown format {p.suffix!r}; valid choices: .parquet, .csv")
    except BadInput:
        raise
    except Exception as e:  # pyarrow/pandas raise many types for a corrupt file; all mean "unreadable"
        raise BadInput(f"results table {p} is unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    missing = [c for c in (*KEY, "correct", "accuracy") if c not in df.columns]
    if missing:
        raise BadInput(f"results table {p} is not a robench table: missing columns {', '.join(missing)}")
    return to_frame(df.to_dict("records"))
