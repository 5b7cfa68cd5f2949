"""Tidy result tables: one flat record per cell → DataFrame at the edge, parquet + CSV on disk.

Floats are floats and counts are ints, never strings. ``lam`` is NaN where λ is learned or does
not apply (LM-ResNet), 0.0 for ResNet (forward Euler is λ=0) and the fixed value otherwise.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from robench.errors import BadInput
from robench.fileio import file_mode

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
    "origin": "string",  # where the weights came from: shipped | user | file | module
    "card_sha256": "string",  # sha256 of the model card file (NA for a module)
    "attacks": "string",  # worst_case rows: the sorted '+'-joined attacks the row is the AND of
    "complete": "boolean",  # worst_case rows: every attack the plan has for the group (and clean) finished
    "flags": "string",
    # what ran the cell (robench.provenance; tables written before these existed read them as NA)
    "host": "string",
    "device_name": "string",  # GPU name, or CPU model with its instruction set ("AMD EPYC (AVX512)")
    "precision": "string",  # fp32 | tf32 (CUDA with --tf32)
    "memory_format": "string",  # channels_last | contiguous
    "batch_size": "Int64",
    "cuda_version": "string",  # NA off CUDA
    "cudnn_version": "string",  # NA off CUDA
    "pyautoattack_version": "string",
}
ORIGINS = ("shipped", "user", "file", "module")
# What identifies a cell (sweeps skip finished keys; regress matches on them).
KEY = ("model", "lam", "dataset", "kind", "perturbation", "backend", "eps", "severity", "seed", "n")
# What else a cell's numbers depend on (attack seeds are drawn per batch; kernels differ per device kind):
# a sweep store holds one of each, and regress matches on them (robench.regress).
RUN_KEY = ("batch_size", "device_kind")


def device_kind_of(device: Any) -> str:
    """The device kind (cpu, cuda, mps) of a ``device`` column value such as ``cuda:0 (NVIDIA H200)``;
    NA (a table from before robench ran on GPUs) is ``cpu``."""
    if device is None or device is pd.NA or (isinstance(device, float) and math.isnan(device)) or str(device) == "":
        return "cpu"
    return str(device).split(":", 1)[0].split(" ", 1)[0].strip().lower() or "cpu"


def run_key(row: Any) -> tuple:
    """(batch_size or None when the table predates the column, device kind) of a table row or record."""
    r = dict(row)
    b = r.get("batch_size")
    missing = b is None or b is pd.NA or (isinstance(b, float) and math.isnan(b))
    return (None if missing else int(b), device_kind_of(r.get("device")))


def format_eps(eps: float) -> str:
    """``8/255`` for whole 255ths, else ``%g``: the ε spelling of leaderboard columns and check cells."""
    k = float(eps) * 255.0
    if abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{float(eps):g}"


def nan_to_none(v: Any) -> Any:
    """NaN / pd.NA → None so that keys compare and hash."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


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
        elif dtype == "boolean":
            df[col] = df[col].map(_as_bool, na_action="ignore").astype("boolean")
        else:
            df[col] = df[col].astype(dtype)
    return df


def _as_bool(v):
    if isinstance(v, str):
        t = v.strip().lower()
        if t in ("true", "1"):
            return True
        if t in ("false", "0"):
            return False
        return pd.NA if t in ("", "nan", "<na>", "none") else v
    return v if isinstance(v, (bool, np.bool_)) else bool(v)


def table_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """The (parquet, CSV) pair a table stem ``out`` names (``x``, ``x.parquet`` or ``x.csv`` → x.*)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".parquet", ".csv") else out
    return stem.with_name(stem.name + ".parquet"), stem.with_name(stem.name + ".csv")


def check_out(out: str | os.PathLike, *, force: bool = False, what: str = "--out") -> None:
    """Fail now, not after hours of attacks, when the table ``out`` cannot or must not be written:
    not UTF-8, a directory, an unwritable folder, or an existing table without ``force``."""
    text = os.fspath(out)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{what} {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8; "
                       "use a path of valid UTF-8 characters") from None
    p = Path(text)
    if p.is_dir():
        raise BadInput(f"{what} {text} is a directory; give a file stem such as results/eval (writes .parquet and .csv)")
    existing = [str(q) for q in table_paths(p) if os.path.lexists(q)]
    if existing and not force:
        raise BadInput(f"{what}: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                       "pass --force to overwrite, or choose another name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise BadInput(f"{what} {text}: cannot create files under {parent}")


def write_table(df: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """Write ``out`` as parquet and CSV side by side (``x.parquet`` + ``x.csv``): both go to temporary
    files first and are renamed together, so a failure (a full disk) leaves neither new file half
    written and no half pair; it is one-line :class:`BadInput` naming the cause."""
    paths = table_paths(out)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    tmps: list[str] = []
    try:
        for path, writer in zip(paths, (lambda p: df.to_parquet(p, index=False),
                                        lambda p: df.to_csv(p, index=False))):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
            os.close(fd)
            tmps.append(tmp)
            writer(tmp)
            os.chmod(tmp, file_mode())  # mkstemp makes 0600; the result should be an ordinary file
        for tmp, path in zip(tmps, paths):
            os.replace(tmp, path)
    except OSError as e:
        raise BadInput(f"cannot write the table {paths[0]} / {paths[1].name}: {e.strerror or e}; nothing was written") \
            from None
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return list(paths)


def write_csv_stream(df: pd.DataFrame, stream) -> None:
    """The table as CSV on an open text stream (``--out -``)."""
    df.to_csv(stream, index=False)


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
