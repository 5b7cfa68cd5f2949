"""Columns shared by every row of one run: device, library versions, git sha (with "-dirty"), time."""
from __future__ import annotations

import datetime
import functools
import re
import subprocess
from pathlib import Path

import torch

from robench.devices import device_label, resolve_device


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=4)
def git_sha(root: Path | None = None) -> str:
    """HEAD of the robench checkout (or of ``root``) when robench runs from a git repository, else
    "unknown"; with "-dirty" appended when tracked files have uncommitted changes (they may change
    the numbers)."""
    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    if not (root / ".git").exists():
        return "unknown"  # an installed copy: a git repo around site-packages says nothing about robench
    out = _git(root, "rev-parse", "HEAD")
    sha = out.stdout.strip() if out is not None else ""
    if out is None or out.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", sha):
        return "unknown"
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if status is None or status.returncode != 0 or status.stdout.strip():
        return sha + "-dirty"  # a status we cannot read is not evidence of a clean tree
    return sha


def provenance(device: str | torch.device) -> dict:
    """Columns shared by every row of one run: device, versions, git sha, timestamp (UTC, ISO 8601)."""
    from robench import __version__

    return {
        "device": device_label(resolve_device(device)),
        "robench_version": __version__,
        "torch_version": torch.__version__,
        "art_version": _dist_version("adversarial-robustness-toolbox"),
        "foolbox_version": _dist_version("foolbox"),
        "git_sha": git_sha(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
