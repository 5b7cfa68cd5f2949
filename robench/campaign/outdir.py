"""The folder a GPU window returns (``$OUT``), within what comes back from the machine: at most
:data:`MAX_FILES` files of at most :data:`MAX_FILE_BYTES` each (:data:`MAX_TOTAL_BYTES` together), named in
letters, digits, ``.``, ``_`` and ``-``. The campaign writes only top-level files, each complete or not at
all: it is written under a folder too deep to come back and renamed into place, so a command killed at any
moment leaves only whole files.

Bundles are tar archives (gzip) of flat or relative names; :func:`write_bundle` splits one into parts
below :data:`PART_BYTES` and :func:`extract_bundle` refuses links, absolute paths, ``..`` and anything
but regular files.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Callable, Iterable

from robench.errors import BadInput
from robench.fileio import sha256_file

MAX_FILES = 8
MAX_FILE_BYTES = 16 << 20
MAX_TOTAL_BYTES = 64 << 20
PART_BYTES = 15 << 20  # a bundle part stays below this (headers and gzip framing fit in the last MiB)
FILE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_PARTIAL = Path(".partial") / "in" / "flight"  # three folders down: never comes back, even if left behind
FIXED = ("campaign.json", "campaign.log")       # always there; the other slots are for bundles


def out_problems(out: str | os.PathLike) -> list[str]:
    """Everything in ``out`` that would not come back, or would break the limits (empty: all good)."""
    out = Path(out)
    files = []
    problems = []
    for dirpath, dirs, names in os.walk(out):
        rel = Path(dirpath).relative_to(out)
        if rel.parts[:1] == (".partial",):
            continue
        for n in list(dirs) + names:
            if not FILE_NAME.match(n):
                problems.append(f"{rel / n}: name outside [A-Za-z0-9._-]")
        for n in names:
            p = Path(dirpath) / n
            if p.is_symlink() or not p.is_file():
                problems.append(f"{rel / n}: not a regular file")
                continue
            if len(rel.parts) > 2:
                problems.append(f"{rel / n}: more than 2 folders down")
            files.append(p)
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES} come back)")
    for p in files:
        if p.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{p.relative_to(out)}: {p.stat().st_size} bytes (at most {MAX_FILE_BYTES})")
    if sum(p.stat().st_size for p in files) > MAX_TOTAL_BYTES:
        problems.append(f"{sum(p.stat().st_size for p in files)} bytes in all (at most {MAX_TOTAL_BYTES})")
    return problems


class OutDir:
    """The returned folder: whole files only, within the limits, counted as they are written."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise BadInput(f"--out {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        leftovers = [p.name for p in self.path.iterdir() if p.name != ".partial"]
        if leftovers:
            raise BadInput(f"--out {self.path} is not empty ({', '.join(sorted(leftovers)[:3])}…); a window writes into "
                           "an empty folder (the GPU machine empties $OUT before each command)")

    def files(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_file())

    def free_slots(self) -> int:
        """Files that can still be added besides the fixed ones (campaign.json, campaign.log)."""
        used = len([f for f in self.files() if f not in FIXED])
        return MAX_FILES - len(FIXED) - used

    def free_bytes(self) -> int:
        return MAX_TOTAL_BYTES - sum((self.path / f).stat().st_size for f in self.files()) - 2 * (1 << 20)

    def write(self, name: str, produce: Callable[[Path], None]) -> dict:
        """Write ``name`` with ``produce(tmp_path)`` and rename it into place; → {name, sha256, bytes}."""
        if not FILE_NAME.match(name) or name.startswith(".partial"):
            raise ValueError(f"returned file name {name!r} is outside [A-Za-z0-9._-]")
        if name not in self.files() and name not in FIXED and self.free_slots() <= 0:
            raise BadInput(f"no file slot left in {self.path} for {name} (at most {MAX_FILES} files come back)")
        tmp_dir = self.path / _PARTIAL
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / name
        try:
            produce(tmp)
            size = tmp.stat().st_size
            if size > MAX_FILE_BYTES:
                raise BadInput(f"{name} would be {size} bytes; at most {MAX_FILE_BYTES} come back")
            digest = sha256_file(tmp)
            os.replace(tmp, self.path / name)
        finally:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(self.path / ".partial", ignore_errors=True)
        return {"name": name, "sha256": digest, "bytes": size}

    def write_text(self, name: str, text: str) -> dict:
        return self.write(name, lambda p: p.write_text(text, encoding="utf-8"))

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


def plan_parts(files: list[tuple[str, Path]], limit: int | None = None) -> list[list[tuple[str, Path]]]:
    """Split (arcname, path) pairs into parts whose summed size (+ tar headers) stays below ``limit``
    (default :data:`PART_BYTES`); a single file above it cannot come back (:class:`BadInput`)."""
    limit = PART_BYTES if limit is None else limit
    parts: list[list[tuple[str, Path]]] = [[]]
    size = 0
    for arc, p in files:
        n = p.stat().st_size + 1024
        if n > limit:
            raise BadInput(f"{p} ({p.stat().st_size} bytes) is larger than one returned file may be ({limit} bytes)")
        if size + n > limit and parts[-1]:
            parts.append([])
            size = 0
        parts[-1].append((arc, p))
        size += n
    return parts if parts[-1] else parts[:-1]


def bundle_names(base: str, n_parts: int) -> list[str]:
    return [f"{base}.tar.gz"] if n_parts == 1 else [f"{base}.{i}.tar.gz" for i in range(1, n_parts + 1)]


def write_bundle(out: OutDir, base: str, files: Iterable[tuple[str, Path]]) -> list[dict]:
    """``files`` as one or more gzip tar parts ``base[.i].tar.gz`` in ``out``; → their records."""
    parts = plan_parts(sorted(files))
    if len(parts) > out.free_slots():
        raise BadInput(f"{base} needs {len(parts)} returned files, {out.free_slots()} left")
    records = []
    for name, part in zip(bundle_names(base, len(parts)), parts):
        def produce(tmp: Path, part=part) -> None:
            with tarfile.open(tmp, "w:gz", compresslevel=3, format=tarfile.PAX_FORMAT) as tar:
                for arc, p in part:
                    info = tar.gettarinfo(str(p), arcname=arc)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    info.mode = 0o644
                    with open(p, "rb") as f:
                        tar.addfile(info, f)
        records.append(out.write(name, produce))
    return records


def files_under(folder: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``folder`` as (relative name, path)."""
    return sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def extract_bundle(paths: Iterable[Path], dest: Path, *, max_bytes: int = 1 << 30) -> list[str]:
    """Unpack bundle parts into ``dest`` (created); only regular files with relative names inside it.
    Anything else (a link, a device, ``..``, an absolute name, a name twice) is :class:`BadInput`."""
    dest.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    total = 0
    for path in paths:
        try:
            with tarfile.open(path, "r:gz") as tar:
                for m in tar:
                    rel = Path(m.name)
                    if not m.isfile() or rel.is_absolute() or ".." in rel.parts or m.name in names \
                            or not all(FILE_NAME.match(p) for p in rel.parts):
                        raise BadInput(f"{path}: member {m.name!r} is not a plain file with a safe relative name; "
                                       "refused")
                    total += m.size
                    if total > max_bytes:
                        raise BadInput(f"{path}: more than {max_bytes} bytes unpacked; refused")
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    with open(target, "wb") as f:
                        shutil.copyfileobj(src if src is not None else io.BytesIO(), f)
                    names.append(m.name)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise BadInput(f"{path} is not a readable bundle: {e}") from None
    return names
