"""``robench campaign prepare DIR``: the git-ignored folder a GPU window carries besides the repository.

    DIR/data/cifar10-jpeg.tar.gz      the data (the converter reads it from ../data beside itself)
    DIR/tools/cifar10_from_jpeg.py    the converter to the official python layout
    DIR/wheels/*.whl, DIR/wheels/src  ART, Foolbox and their small dependencies; pyautoattack's sources
    DIR/manifest.json                 sha256 of each file, the checkout's git sha and code fingerprint, and
                                      the sha256 of the local test batch the checkpoints will be verified on
    DIR/state/                        what ``robench campaign ingest`` keeps for the next window

Nothing here is committed: DIR must be ignored by git (``/.carry/`` is in ``.gitignore``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from robench.campaign.outdir import files_under
from robench.campaign.state import code_fingerprint, now, repo_root
from robench.errors import BadInput
from robench.fileio import atomic_write_text, sha256_file

TRAVEL_LIMIT = 64 << 20


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def travelling_bytes(root: Path, carried: list[Path]) -> int | None:
    """Bytes of what a device call sends: tracked and untracked-not-ignored files, plus ``carried``."""
    out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if out is None or out.returncode != 0:
        return None
    total = 0
    for name in out.stdout.decode("utf-8", "surrogateescape").split("\0"):
        p = root / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total + sum(p.stat().st_size for c in carried if c.exists() for _, p in files_under(c))


def _copy(src: Path, dst: Path) -> None:
    if dst.is_file() and sha256_file(dst) == sha256_file(src):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def prepare(dest: str | os.PathLike, *, tarball: str | os.PathLike, converter: str | os.PathLike,
            wheels_script: str | os.PathLike | None = None, wheels_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
            log: Callable[[str], None] = print) -> dict:
    """Build ``dest`` (see the module docstring); → the manifest written. ``wheels_script`` runs
    ``gpu_wheels.sh``-style (``bash SCRIPT DIR``); ``wheels_dir`` copies a folder of wheels instead;
    neither: no wheels. ``data_dir``: the CPU copy whose test batch ingest will verify against."""
    root = Path(root) if root is not None else repo_root()
    dest = Path(dest)
    dest_abs = dest.resolve()
    tarball, converter = Path(tarball), Path(converter)
    for p, what in ((tarball, "--tarball"), (converter, "--converter")):
        if not p.is_file():
            raise BadInput(f"{what} {p} does not exist")
    if wheels_script is not None and wheels_dir is not None:
        raise BadInput("give --wheels-script or --wheels, not both")
    if wheels_script is not None and not Path(wheels_script).is_file():
        raise BadInput(f"--wheels-script {wheels_script} does not exist")
    if wheels_dir is not None and not Path(wheels_dir).is_dir():
        raise BadInput(f"--wheels {wheels_dir} is not a folder")
    expected = None
    if data_dir is not None:
        test = Path(data_dir) / "cifar-10-batches-py" / "test_batch"
        if not test.is_file():
            raise BadInput(f"--data-dir {data_dir} holds no cifar-10-batches-py/test_batch")
        expected = sha256_file(test)
    try:
        dest_abs.relative_to(root.resolve())
    except ValueError:
        raise BadInput(f"{dest} is outside the repository {root}; only the repository travels to the GPU machine") \
            from None
    dest.mkdir(parents=True, exist_ok=True)
    ignored = _git(root, "check-ignore", "-q", str(dest_abs))
    if ignored is not None and ignored.returncode == 1:
        raise BadInput(f"{dest} is not ignored by git; add /{dest_abs.relative_to(root.resolve())}/ to .gitignore or "
                       ".git/info/exclude (data and wheels are never committed)")
    _copy(tarball, dest / "data" / "cifar10-jpeg.tar.gz")
    _copy(converter, dest / "tools" / "cifar10_from_jpeg.py")
    wheels = dest / "wheels"
    if wheels_script is not None or wheels_dir is not None:
        tmp = dest / "wheels.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if wheels_script is not None:
            done = subprocess.run(["bash", str(wheels_script), str(tmp)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BadInput(f"{wheels_script} failed (exit {done.returncode}): "
                               f"{' '.join((done.stderr or done.stdout).split()[-30:])}")
        else:
            shutil.copytree(wheels_dir, tmp)
        shutil.rmtree(wheels, ignore_errors=True)
        os.replace(tmp, wheels)
    git = _git(root, "rev-parse", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    manifest = {"created": now(), "git_sha": git.stdout.decode().strip() if git is not None and git.returncode == 0
                else None, "dirty": bool(dirty is not None and dirty.stdout.strip()),
                "code_fingerprint": code_fingerprint(root),
                "data": {"test_batch_sha256": expected, "from": None if data_dir is None else str(data_dir)},
                "files": {n: sha256_file(p) for n, p in files_under(dest)
                          if n.split("/")[0] in ("data", "tools", "wheels")}}
    atomic_write_text(dest / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    size = travelling_bytes(root, [dest])
    mib = lambda b: f"{b / (1 << 20):.1f} MiB"  # noqa: E731
    log(f"prepared {dest}: {len(manifest['files'])} files, {mib(sum(p.stat().st_size for _, p in files_under(dest)))}"
        + ("" if size is None else f"; a device call sends {mib(size)} of at most {mib(TRAVEL_LIMIT)}"))
    if size is not None and size > TRAVEL_LIMIT:
        log(f"WARNING: {mib(size)} is more than a device call may send; drop run folders from {dest / 'state'} or "
            "carry fewer wheels")
    return manifest
