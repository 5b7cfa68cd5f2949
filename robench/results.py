"""Tidy result tables: one flat record per cell → DataFrame at the edge, parquet + CSV on disk.

Floats are floats and counts are ints, never strings. ``lam`` is NaN where λ is learned or does
not apply (LM-ResNet), 0.0 for ResNet (forward Euler is λ=0) and the fixed value otherwise.
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from robench.errors import BadInput
from robench.fileio import (atomic_write_group, check_regular, check_writable, read_regular, recover_group,
                            remove_stale_temps)
from robench.safetext import neutralise_frame, restore_frame, terminal_text

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
    "data_label": "string",  # "CIFAR-10" (official test split by checksum), "CIFAR-10, other copy (sha256 1a2b3c4d)", …
    "params": "string",  # attack rows: every hyper-parameter incl. defaults as canonical JSON; worst_case: {attack: params}
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
MAX_TABLE_BYTES = 2 << 30  # a table file larger than this is refused before it is read
MAX_N = 10 ** 9  # images per cell

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
    if math.isfinite(k) and abs(k - round(k)) < 1e-6:  # a huge ε (1e308·255 = inf) is spelt as a number
        return f"{int(round(k))}/255"
    return f"{float(eps):g}"


def nan_to_none(v: Any) -> Any:
    """NaN / pd.NA → None so that keys compare and hash."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def wilson(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95% by default) for ``correct`` successes out of ``n``.

    Exact at the edges: 0/n gives a lower bound of exactly 0 and n/n an upper bound of exactly 1
    (in floating point ``centre - half`` is a few 1e-18 off), and the interval always holds
    ``correct / n``, so ``accuracy - ci_low`` and ``ci_high - accuracy`` are never negative."""
    if n <= 0:
        return (math.nan, math.nan)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if correct <= 0 else min(p, max(0.0, centre - half))
    hi = 1.0 if correct >= n else max(p, min(1.0, centre + half))
    return (lo, hi)


def canonical_json(value: Any) -> str:
    """One spelling of a JSON value: sorted keys, no spaces (the ``params`` column)."""
    import json

    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


# -- the notation of every view (leaderboard, report, plots, command output) ---------------------
LEARNED = "learned"  # λ learned per block (damped and lambda-damped models without a fixed λ)
NOT_APPLICABLE = "–"  # λ does not apply (LM-ResNet, a user's module)


def lam_text(lam: Any, scheme: Any = None) -> str:
    """λ as every view writes it: ``0.5``; ``0`` for ResNet (forward Euler); ``learned`` where a damped
    model learns λ; ``–`` where λ does not apply (LM-ResNet, modules). Without ``scheme`` a missing λ
    reads as ``learned``."""
    from model_zoo.schemes import lam_schemes

    v = nan_to_none(lam)
    if v is not None:
        try:
            return f"{float(v):g}"
        except (TypeError, ValueError):
            return str(v)
    s = nan_to_none(scheme)
    if s is None or str(s) in lam_schemes():
        return LEARNED
    return NOT_APPLICABLE


def pct(value: Any, lo: Any = None, hi: Any = None, digits: int = 1) -> str:
    """An accuracy as every view writes it: percent with ``digits`` decimals, ``[lo, hi]`` when an
    interval is given; ``–`` for a missing value."""
    v = nan_to_none(value)
    if v is None:
        return NOT_APPLICABLE
    text = f"{100 * float(v):.{digits}f}"
    if nan_to_none(lo) is not None and nan_to_none(hi) is not None:
        text += f" [{100 * float(lo):.{digits}f}, {100 * float(hi):.{digits}f}]"
    return text


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


def check_out(out: str | os.PathLike, *, force: bool = False, what: str = "--out",
              inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Fail now, not after hours of attacks, when the table ``out`` cannot or must not be written:
    not UTF-8, a name too long, a directory, an unwritable folder, one of the command's ``inputs``,
    or an existing table without ``force``."""
    check_writable(out, what=what)
    paths = table_paths(out)
    for p in paths:
        check_writable(p, what=what)
    check_not_inputs(paths, inputs, what=what)
    existing = [str(q) for q in paths if os.path.lexists(q)]
    if existing and not force:
        raise BadInput(f"{what}: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                       "pass --force to overwrite, or choose another name")


def check_not_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike], *,
                     what: str = "output") -> None:
    """An output file must not be one of the files the command reads (it would replace its own input)."""
    def ident(p) -> tuple:
        try:
            st = os.stat(p)
            return ("inode", st.st_dev, st.st_ino)
        except OSError:
            return ("path", os.path.realpath(p))

    ins = {ident(p): str(p) for p in inputs}
    outs = [str(p) for p in outputs]
    for o in outs:
        if ident(o) in ins:
            raise BadInput(f"{what} {o} is also an input ({ins[ident(o)]}); write the output to another file")
    if len({ident(o) for o in outs}) < len(outs):
        raise BadInput(f"{what}: two outputs name the same file ({', '.join(outs)}); give each its own name")


def write_table(df: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """Write ``out`` as parquet and CSV side by side (``x.parquet`` + ``x.csv``) as one change: both
    are written to temporary files first and renamed after one commit point
    (:func:`robench.fileio.atomic_write_group`), so a failure (a full disk) or a kill leaves the old
    pair or the new pair, never a mixed or half-written one; a failure is one-line :class:`BadInput`.
    Text cells of the CSV that a spreadsheet would run as a formula are neutralised
    (:mod:`robench.safetext`)."""
    paths = table_paths(out)
    remove_stale_temps(paths[0].parent)
    csv = neutralise_frame(df)
    return atomic_write_group([(paths[0], lambda p: df.to_parquet(p, index=False)),
                               (paths[1], lambda p: csv.to_csv(p, index=False))], what="table")


def write_table_or_rescue(df: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """:func:`write_table`, and when that fails (a full disk after hours of evaluation) the table as
    CSV in the first place that takes it (the temporary folder, then ``$ROBENCH_HOME/rescued``), named
    in the one-line error, so the cells that ran are not lost."""
    import tempfile
    import time

    from robench.fileio import atomic_write, robench_home

    try:
        return write_table(df, out)
    except BadInput as e:
        name = f"{table_paths(out)[1].stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.csv"
        csv = neutralise_frame(df)
        for folder in (Path(tempfile.gettempdir()) / "robench-rescued", robench_home() / "rescued"):
            try:
                where = atomic_write(folder / name, lambda tmp: csv.to_csv(tmp, index=False), what="rescued table")
            except BadInput:
                continue
            raise BadInput(f"{e}; the table was saved to {where} instead (move it where it belongs)") from None
        raise BadInput(f"{e}; no other place took the table either, so it is lost") from None


def write_csv_stream(df: pd.DataFrame, stream) -> None:
    """The table as CSV on an open text stream (``--out -``)."""
    neutralise_frame(df).to_csv(stream, index=False)


def read_frame(path: str | os.PathLike, *, what: str, string_columns: Iterable[str] = (),
               limit: int = MAX_TABLE_BYTES, csv_na: dict | None = None) -> pd.DataFrame:
    """A parquet or CSV file as a raw DataFrame: a regular file of at most ``limit`` bytes (a FIFO,
    device or link to /dev/zero is refused without reading it), a half-finished write of its pair
    finished first, formula-neutralised CSV cells restored. Unreadable content is one-line BadInput."""
    p = Path(path)
    check_regular(p, what=what)
    if p.suffix not in (".parquet", ".csv"):
        raise BadInput(f"{what} {p}: unknown format {p.suffix!r}; valid choices: .parquet, .csv")
    recover_group(p)
    raw = read_regular(p, limit=limit, what=what)
    try:
        if p.suffix == ".parquet":
            df = pd.read_parquet(io.BytesIO(raw))
        else:
            # string columns stay strings: a flags hex such as "0000" would otherwise parse as 0
            kw = {} if csv_na is None else {"keep_default_na": False, "na_values": csv_na}
            df = restore_frame(pd.read_csv(io.BytesIO(raw), dtype={c: "string" for c in string_columns}, **kw))
    except Exception as e:  # pyarrow/pandas raise many types for a corrupt file; all mean "unreadable"
        first = str(e).splitlines()[0] if str(e) else ""
        raise BadInput(f"{what} {p} is unreadable: {type(e).__name__}: {terminal_text(first)[:200]}") from None
    if df.columns.duplicated().any():
        raise BadInput(f"{what} {p} has the column {df.columns[df.columns.duplicated()][0]!r} twice")
    return df


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a results table (parquet or CSV): the schema's key and accuracy columns must be there,
    and every value is checked against what it claims (:func:`validate_table`)."""
    p = Path(path)
    df = read_frame(p, what="results table", string_columns=[c for c, t in SCHEMA.items() if t == "string"])
    missing = [c for c in (*KEY, "correct", "accuracy") if c not in df.columns]
    if missing:
        raise BadInput(f"results table {p} is not a robench table: missing columns {', '.join(missing)}")
    line = (lambda i: f"line {i + 2}") if p.suffix == ".csv" else (lambda i: f"row {i + 1}")
    return validate_table(df, f"results table {p}", row_label=line)


# -- content validation ----------------------------------------------------------------------
def _missing_mask(s: pd.Series) -> np.ndarray:
    return np.array([v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) for v in s], dtype=bool) \
        if s.dtype == object else s.isna().to_numpy()


def number_text(v: Any) -> str:
    """A number as Python writes it (0.95, nan), whatever numpy scalar type holds it."""
    return repr(float(v))


def _show(v: Any) -> str:
    return terminal_text(repr(v) if isinstance(v, str) else v)[:80]


class TableChecker:
    """Column-by-column type checks of a table read from disk, with one-line errors naming the row."""

    def __init__(self, df: pd.DataFrame, where: str, row_label: Callable[[int], str]) -> None:
        self.df, self.where, self.row_label = df.reset_index(drop=True), where, row_label

    def fail(self, mask, col: str, why: Callable[[int], str]) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            more = int(mask.sum()) - 1
            raise BadInput(f"{self.where}: {self.row_label(i)}: {col} {why(i)}"
                           + (f" (and {more} more row{'s' if more != 1 else ''})" if more else "")
                           + "; the table was edited or is corrupt")

    def column(self, col: str) -> pd.Series:
        return self.df[col] if col in self.df.columns else pd.Series([pd.NA] * len(self.df), dtype=object)

    def text(self, col: str) -> pd.Series:
        s = self.column(col)
        miss = _missing_mask(s)
        if s.dtype == object or not pd.api.types.is_string_dtype(s.dtype):
            bad = ~miss & ~np.array([isinstance(v, str) for v in s], dtype=bool)
            self.fail(bad, col, lambda i: f"must be text, got {_show(s.iloc[i])}")
        return pd.Series([pd.NA if m else str(v) for v, m in zip(s, miss)], dtype="string")

    def number(self, col: str, *, integer: bool = False, required: bool = False) -> pd.Series:
        s = self.column(col)
        if s.dtype == bool or s.dtype == "boolean":
            self.fail(s.notna().to_numpy(), col, lambda i: f"must be a number, got {_show(s.iloc[i])}")
        if s.dtype == object:
            self.fail(np.array([isinstance(v, (bool, np.bool_)) for v in s], dtype=bool), col,
                      lambda i: f"must be a number, got {_show(s.iloc[i])}")
        miss = _missing_mask(s)
        num = pd.to_numeric(s.astype(object).where(~miss, None), errors="coerce").astype("float64")
        vals = num.to_numpy()
        self.fail(~miss & np.isnan(vals), col, lambda i: f"must be a number, got {_show(s.iloc[i])}")
        if required:
            self.fail(miss, col, lambda i: "is missing")
        if integer:
            finite = np.isfinite(vals)
            self.fail(~miss & (~finite | (np.where(finite, vals, 0) != np.round(np.where(finite, vals, 0)))
                               | (np.abs(np.where(finite, vals, 0)) > 2.0 ** 62)), col,
                      lambda i: f"must be a whole number, got {_show(s.iloc[i])}")
            if s.dtype.kind in "iu":  # exact for integers beyond 2**53
                return s.astype("Int64")
            return pd.Series([pd.NA if m else int(v) for v, m in zip(vals, miss)], dtype="Int64")
        return num

    def boolean(self, col: str) -> pd.Series:
        s = self.column(col)
        out = []
        for i, v in enumerate(s):
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                b = pd.NA
            elif isinstance(v, (bool, np.bool_)):
                b = bool(v)
            elif isinstance(v, str) and v.strip().lower() in ("true", "1", "false", "0", "", "nan", "<na>", "none"):
                t = v.strip().lower()
                b = True if t in ("true", "1") else False if t in ("false", "0") else pd.NA
            elif isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1):
                b = bool(v)
            else:
                self.fail(np.arange(len(s)) == i, col, lambda j: f"must be true or false, got {_show(s.iloc[j])}")
            out.append(b)
        return pd.Series(out, dtype="boolean")


def _json_object(text: str) -> bool:
    """Whether ``text`` is a JSON object (the ``params`` column: hyper-parameter name → value)."""
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _flags_ok(hexstr: str, n: int, correct: int) -> str | None:
    """Why the packed flags do not describe ``correct`` of ``n`` examples, or None."""
    want = 2 * ((n + 7) // 8)
    if len(hexstr) != want:
        return f"holds {len(hexstr)} hex digits, not the {want} of n={n} examples"
    try:
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(hexstr), dtype=np.uint8))
    except ValueError:
        return "is not hexadecimal"
    if bits[n:].any():
        return f"has bits set beyond n={n}"
    if int(bits[:n].sum()) != correct:
        return f"mark {int(bits[:n].sum())} examples robust, but correct = {correct}"
    return None


def validate_table(df: pd.DataFrame, where: str, *, row_label: Callable[[int], str] | None = None) -> pd.DataFrame:
    """Check every value of a results table against its type and what it claims, and return it with
    exactly :data:`SCHEMA`'s columns and dtypes. One-line :class:`BadInput` naming the row and column
    of the first problem: a value of the wrong type (``accuracy`` as text, ``lam`` = "learned"),
    n ≤ 0 or missing, ``correct`` outside [0, n], ``accuracy`` ≠ correct/n, an interval that is not
    the Wilson 95 % interval of correct/n, λ outside [0, 1], ε not a positive finite number on an
    attack or worst-case row, a severity outside 1–5, a negative seed or time, an unknown kind, or
    per-example flags whose length or count do not match n and correct. Names are kept as data."""
    chk = TableChecker(df, where, row_label or (lambda i: f"row {i + 1}"))
    out: dict[str, pd.Series] = {}
    for col, dtype in SCHEMA.items():
        if dtype == "string":
            out[col] = chk.text(col)
        elif dtype == "float64":
            out[col] = chk.number(col)
        elif dtype == "int64":
            out[col] = chk.number(col, integer=True, required=col in ("n", "seed", "correct"))
        elif dtype == "Int64":
            out[col] = chk.number(col, integer=True)
        else:
            out[col] = chk.boolean(col)
    t = out
    for col in ("model", "dataset", "kind", "perturbation"):
        chk.fail(t[col].isna().to_numpy() | (t[col].fillna("").str.len() == 0).to_numpy(), col, lambda i: "is missing")
    kind = t["kind"].fillna("")
    chk.fail(~kind.isin(KINDS).to_numpy(), "kind", lambda i: f"{_show(kind.iloc[i])} is not one of {', '.join(KINDS)}")
    params = t["params"]
    chk.fail(np.array([not (p is pd.NA or p == "" or _json_object(p)) for p in params], dtype=bool), "params",
             lambda i: f"{_show(params.iloc[i])} is not a JSON object of hyper-parameters")
    n = t["n"].astype("float64").to_numpy()
    correct = t["correct"].astype("float64").to_numpy()
    chk.fail((n < 1) | (n > MAX_N), "n", lambda i: f"must be a whole number in [1, {MAX_N:,}], got {int(n[i])}")
    chk.fail((correct < 0) | (correct > n), "correct",
             lambda i: f"{int(correct[i])} is outside [0, n] with n = {int(n[i])}")
    acc = t["accuracy"].to_numpy()
    chk.fail(np.isnan(acc) | (np.abs(acc - correct / n) > 1e-9), "accuracy",
             lambda i: f"{number_text(acc[i])} is not correct/n = {int(correct[i])}/{int(n[i])}")
    lo, hi = t["ci_low"].to_numpy(), t["ci_high"].to_numpy()
    for col, arr, side in (("ci_low", lo, 0), ("ci_high", hi, 1)):
        present = ~np.isnan(arr)
        if present.any():
            want = np.array([wilson(int(c), int(k))[side] if p else np.nan for c, k, p in zip(correct, n, present)])
            chk.fail(present & (np.abs(arr - want) > 1e-6), col,
                     lambda i, a=arr, w=want: f"{number_text(a[i])} is not the Wilson 95 % interval's "
                                              f"{w[i]:.6g} for {int(correct[i])}/{int(n[i])}")
    lam = t["lam"].to_numpy()
    chk.fail(~np.isnan(lam) & ~((lam >= 0) & (lam <= 1)), "lam",
             lambda i: f"{number_text(lam[i])} is outside [0, 1]")
    eps = t["eps"].to_numpy()
    chk.fail(~np.isnan(eps) & ~(np.isfinite(eps) & (eps >= 0)), "eps",
             lambda i: f"{number_text(eps[i])} is not a finite number ≥ 0")
    attacked = kind.isin(["attack", "worst_case"]).to_numpy()
    chk.fail(attacked & ~(eps > 0), "eps",
             lambda i: f"{number_text(eps[i])} on a {kind.iloc[i]} row must be a number > 0")
    sev = t["severity"].astype("float64").to_numpy()
    chk.fail(~np.isnan(sev) & ~np.isin(sev, [1, 2, 3, 4, 5]), "severity",
             lambda i: f"{number_text(sev[i])} is not one of 1–5")
    chk.fail((kind == "corruption").to_numpy() & np.isnan(sev), "severity", lambda i: "is missing on a corruption row")
    for col in ("seed", "steps"):
        v = t[col].astype("float64").to_numpy()
        chk.fail(v < 0, col, lambda i, v=v: f"{number_text(v[i])} is negative")
    sec = t["seconds"].to_numpy()
    chk.fail(~np.isnan(sec) & ~(np.isfinite(sec) & (sec >= 0)), "seconds",
             lambda i: f"{number_text(sec[i])} is not a time ≥ 0")
    flags = t["flags"]
    for i, f in enumerate(flags):
        if f is pd.NA or f == "":
            continue
        why = _flags_ok(f, int(n[i]), int(correct[i]))
        if why is not None:
            chk.fail(np.arange(len(flags)) == i, "flags", lambda _i, w=why: w)
    frame = pd.DataFrame(out)
    for col, dtype in SCHEMA.items():
        if dtype == "int64":  # a non-nullable column (added to the schema later, absent from older tables)
            chk.fail(frame[col].isna().to_numpy(), col, lambda i: "is missing")
        frame[col] = frame[col].astype(dtype)
    return frame


def records_of(df: pd.DataFrame) -> list[dict]:
    """A typed table's rows as dicts with None for missing values (pd.NA is not a value to compute with)."""
    return [{k: (None if v is pd.NA else v) for k, v in r.items()} for r in df.to_dict("records")]
