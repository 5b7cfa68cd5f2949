"""Where finished cells go: in memory (``robench eval``) or one file per cell on disk (``robench sweep``).

Disk layout (one part file per cell, so a kill -9 at any moment is harmless)::

    <out>/sweep.json           fingerprint of the sweep: dataset, n, data sha256, batch size, device kind,
                               TF32, code fingerprint and library versions; weights sha256 of every
                               (model, λ) and sha256 of every CIFAR-10-C file it has read; the last
                               config, and the attacks planned for every worst-case group (so a merge
                               knows which are complete)
    <out>/cells/<cell_id>.json one finished cell: its Cell, its key, the fingerprint it ran under,
                               and the record (a results.SCHEMA row with the per-example flags)
    <out>/results.parquet|.csv the merged table, written when the sweep finishes
    <out>/.lock                held (flock) while a sweep runs, so two sweeps never share an out dir
                               (opened without following links or blocking: a planted link, FIFO
                               or device there is refused, never truncated or waited on)

A part file is written to ``cells/.tmp-*`` first, flushed, fsync'd, then ``os.replace``'d onto its
final name (and the folder is fsync'd). A kill at any moment therefore loses at most the cells in
flight: a finished cell is either wholly there or not there, never torn and never twice (its name
is the cell id). Left-over ``.tmp-*`` files are ignored by every reader and removed by the next
sweep. Every file is an ordinary 0644 file (less the umask). Every file is read as data: a part
file or ``sweep.json`` must be a regular JSON file of bounded size (a FIFO, a link to /dev/zero or an
over-deep document is one-line :class:`BadInput`), and a cell's record is checked against itself
(:func:`robench.results.validate_table`: correct = the count of its flags, accuracy = correct/n, …)
before it reaches a table.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from robench.errors import BadInput
from robench.fileio import MAX_JSON_BYTES, exclusive_lock, file_mode, open_new, read_json as _read_json_file
from robench.plan import Cell, row_key
from robench.results import run_key

STORE_VERSION = 2  # 2: batch size, device kind, TF32, code and library versions, CIFAR-10-C files in the fingerprint

# fingerprint key → what differs, in words (formatted with old, new and, for versions, diff)
_WHAT = {
    "batch_size": "cells run at batch size {old}, this run uses {new} (attack seeds are drawn per batch, so they are "
                  "other cells); use another out folder, or batch_size = {old}",
    "device": "cells run on {old}, this run is on {new} (kernels differ between device kinds); use another out folder",
    "tf32": "cells run with tf32 = {old}, this run has tf32 = {new}; use another out folder",
    "code": "cells computed by other robench code (code fingerprint {old:.12}…, now {new:.12}…); use another out "
            "folder, or resume with that code",
    "versions": "cells computed with other library versions ({diff}); use another out folder",
}


def _stem(cell: Cell) -> str:
    from model_zoo.checkpoint import zoo_stem

    return zoo_stem(cell.model, cell.lam)


class MemoryStore:
    """Finished cells of one ``evaluate`` call, in memory."""

    def __init__(self) -> None:
        self._records: dict[str, dict] = {}

    def put(self, cell: Cell, record: dict) -> None:
        _check_record(cell, record)
        self._records[cell.cell_id()] = record

    def records(self) -> list[dict]:
        return list(self._records.values())


def _check_record(cell: Cell, record: dict) -> None:
    """A record really is its cell: same table key, and run with the cell's batch size on its device kind."""
    if row_key(record) != cell.table_key():
        raise RuntimeError(f"{cell.label()}: the record's key {row_key(record)} is not the cell's {cell.table_key()}")
    if cell.batch_size is not None and run_key(record) != cell.run_key():
        raise RuntimeError(f"{cell.label()}: ran with (batch size, device) {run_key(record)}, planned {cell.run_key()}")


# -- disk -----------------------------------------------------------------------------------
def jsonable(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, (tuple, list)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return v


def read_json(path: Path, what: str) -> dict:
    """A JSON object from a regular file of at most :data:`robench.fileio.MAX_JSON_BYTES` (a FIFO, a
    device, a link to /dev/zero, an over-deep or malformed document: one-line BadInput)."""
    try:
        value = _read_json_file(path, what=what, limit=MAX_JSON_BYTES)
    except BadInput as e:
        raise BadInput(f"{e}; delete it to redo it") from None
    if not isinstance(value, dict):
        raise BadInput(f"{what} {path} is not a JSON object; delete it to redo it")
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, value: dict) -> None:
    """Temp file in the same folder (created O_EXCL | O_NOFOLLOW), flush + fsync, mode 0644,
    ``os.replace``, fsync the folder. A full disk is one-line BadInput; nothing half-written stays."""
    tmp = path.parent / f".tmp-{os.getpid()}-{os.urandom(6).hex()}.json"
    try:
        fd = open_new(tmp)
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, sort_keys=True, allow_nan=False)
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror or e}; the cells finished so far are kept") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def iter_parts(out: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """(cell id, part) of every finished cell in ``out``, in file-name order; temp files are skipped."""
    cells_dir = Path(out) / "cells"
    check_cells_dir(Path(out))
    if not cells_dir.is_dir():
        return
    for path in sorted(cells_dir.glob("*.json")):
        if path.name.startswith(".tmp-"):
            continue
        part = read_json(path, "stored cell")
        if not isinstance(part.get("record"), dict) or part.get("cell_id") != path.stem:
            raise BadInput(f"stored cell {path} is not a robench part file; delete it to redo it")
        yield path.stem, part


def is_sweep_store(out: Path) -> bool:
    return os.path.lexists(out / "sweep.json")


def check_cells_dir(out: Path) -> None:
    """``<out>/cells`` must be a real folder (or absent): a planted link would send every cell file
    elsewhere."""
    cells = Path(out) / "cells"
    try:
        mode = os.lstat(cells).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise BadInput(f"{cells} is not a folder (a symbolic link or a file); robench does not follow links it did "
                       "not make: remove it")


def _mismatch(out: Path, key: str, old: Any, new: Any) -> str:
    """One line: the sweep in ``out`` was run with another ``key``; what differs and what to do."""
    what = _WHAT.get(key)
    if what is None:
        return (f"{out} holds a sweep with {key}={old!r}, but this config gives {key}={new!r}; use another out folder "
                "(or delete this one) instead of mixing the two")
    diff = ""
    if key == "versions" and isinstance(old, dict) and isinstance(new, dict):
        diff = ", ".join(f"{k} {old.get(k)} → {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
    text = what.format(old=str(old).lower() if isinstance(old, bool) else old,
                       new=str(new).lower() if isinstance(new, bool) else new, diff=diff)
    return f"{out} holds {text}"


def planned_from_meta(meta: dict) -> dict[tuple, set[str]]:
    """The worst-case groups recorded in a sweep.json → group → planned attack names."""
    out: dict[tuple, set[str]] = {}
    for g in meta.get("attack_groups", []):
        if isinstance(g, dict) and isinstance(g.get("group"), list) and isinstance(g.get("attacks"), list):
            out.setdefault(tuple(g["group"]), set()).update(map(str, g["attacks"]))
    return out


@dataclasses.dataclass
class DiskStore:
    """The part-file store of one out dir, held under an exclusive lock while a sweep writes to it.

    ``fingerprint``: dataset, n, data sha256, batch size, device kind, TF32, code fingerprint and library
    versions of the sweep; ``weights``: zoo stem → weights sha256 of every planned (model, λ);
    ``corruption_files``: CIFAR-10-C file name → sha256 of every file the plan reads (``labels.npy``
    included); ``config``: the spec as a dict; ``planned``: worst-case group → attacks."""

    out: Path
    fingerprint: dict
    weights: dict
    config: dict
    planned: dict
    corruption_files: dict = dataclasses.field(default_factory=dict)
    done: set = dataclasses.field(default_factory=set)

    @property
    def cells_dir(self) -> Path:
        return self.out / "cells"

    def check(self, cells: list[Cell]) -> set[str]:
        """Compare an existing out dir with the plan; → ids of the planned cells already finished."""
        meta_path = self.out / "sweep.json"
        if meta_path.exists():
            meta = read_json(meta_path, "sweep file")
            if meta.get("robench_sweep") != STORE_VERSION:
                raise BadInput(f"{self.out} holds a sweep written by another robench (store version "
                               f"{meta.get('robench_sweep')!r}, this one writes {STORE_VERSION}); use another out folder")
            for k, v in self.fingerprint.items():
                if meta.get(k) != v:
                    raise BadInput(_mismatch(self.out, k, meta.get(k), v))
            for stem, sha in self.weights.items():
                old = meta.get("weights", {}).get(stem)
                if old is not None and old != sha:
                    raise BadInput(f"the zoo weights of {stem} changed since {self.out} ran them (sha256 {old[:12]}… → "
                                   f"{sha[:12]}…); use another out folder, or delete that model's cells to redo them")
            for name, sha in self.corruption_files.items():
                old = meta.get("corruption_files", {}).get(name)
                if old is not None and old != sha:
                    raise BadInput(f"CIFAR-10-C {name} differs from the copy {self.out} read (sha256 {old[:12]}… → "
                                   f"{sha[:12]}…; corruption_dir is another copy); use another out folder")
        by_table_key = {c.table_key(): c for c in cells}
        planned = {c.cell_id(): c for c in cells}
        done = set()
        for cell_id, part in iter_parts(self.out):
            cell = planned.get(cell_id)
            if cell is None:
                # a cell from an earlier config: it stays in the table, but must not clash with a planned one
                other = by_table_key.get(tuple(tuple(v) if isinstance(v, list) else v for v in part.get("table_key", [])))
                if other is not None:
                    raise BadInput(f"{self.cells_dir / (cell_id + '.json')} holds {other.label()} run with other "
                                   f"settings ({part.get('key')}, now {repr(other.key())}); use another out folder")
                continue
            stored_fp = part.get("fingerprint", {})
            if part.get("key") != repr(cell.key()) or any(stored_fp.get(k) != v for k, v in self._cell_fingerprint(cell).items()):
                raise BadInput(f"stored cell {self.cells_dir / (cell_id + '.json')} does not match the plan "
                               f"({cell.label()}): its key or data/weights fingerprint differs; delete it to redo it")
            done.add(cell_id)
        self.done = done
        return done

    def _cell_fingerprint(self, cell: Cell) -> dict:
        """What one stored cell ran under: the sweep's fingerprint, its weights and, for a CIFAR-10-C
        cell, the sha256 of its file and of labels.npy."""
        fp = {**self.fingerprint, "weights_sha256": self.weights.get(_stem(cell))}
        if cell.dataset == "cifar10c":
            fp["corruption_sha256"] = self.corruption_files.get(f"{cell.perturbation}.npy")
            fp["labels_sha256"] = self.corruption_files.get("labels.npy")
        return fp

    @contextlib.contextmanager
    def open(self) -> Iterator["DiskStore"]:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"cannot create the sweep folder {self.out}: {e.strerror or e}") from None
        with exclusive_lock(self.out / ".lock", what="sweep lock",
                            busy=f"another sweep is writing to {self.out}; wait for it or use another out folder"):
            check_cells_dir(self.out)
            try:
                self.cells_dir.mkdir(exist_ok=True)
            except OSError as e:
                raise BadInput(f"cannot create {self.cells_dir}: {e.strerror or e}") from None
            for stale in self.cells_dir.glob(".tmp-*"):  # left by a killed run; never a finished cell
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink(missing_ok=True)
            self._write_meta()
            yield self

    def _write_meta(self) -> None:
        meta_path = self.out / "sweep.json"
        old = read_json(meta_path, "sweep file") if meta_path.exists() else {}
        planned = planned_from_meta(old)
        for g, attacks in self.planned.items():
            planned.setdefault(tuple(g), set()).update(attacks)
        meta = {"robench_sweep": STORE_VERSION, **self.fingerprint,
                "weights": {**old.get("weights", {}), **self.weights},
                "corruption_files": {**old.get("corruption_files", {}), **self.corruption_files},
                "config": jsonable(self.config),
                "attack_groups": [{"group": jsonable(list(g)), "attacks": sorted(a)} for g, a in planned.items()]}
        atomic_write_json(meta_path, meta)

    def put(self, cell: Cell, record: dict) -> None:
        """Persist one finished cell (after checking its record really is that cell)."""
        sha = self.weights.get(_stem(cell))
        _check_record(cell, record)
        if record.get("weights_sha256") not in (None, sha):
            raise BadInput(f"{cell.label()} ran with weights {str(record.get('weights_sha256'))[:12]}…, "
                           f"but the plan has {str(sha)[:12]}…; the zoo changed during the sweep")
        part = {"cell_id": cell.cell_id(), "key": repr(cell.key()), "table_key": jsonable(cell.table_key()),
                "cell": {k: jsonable(v) for k, v in dataclasses.asdict(cell).items()},
                "fingerprint": self._cell_fingerprint(cell),
                "record": {k: jsonable(v) for k, v in record.items()}}
        atomic_write_json(self.cells_dir / f"{cell.cell_id()}.json", part)
        self.done.add(cell.cell_id())
