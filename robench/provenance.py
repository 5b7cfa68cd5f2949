"""What a number was measured with: the columns shared by every row of one run (device, machine,
precision, library versions, git sha with "-dirty", time), computed where the unit runs (on a Ray
worker, on that worker), and the fingerprints of the code and libraries that compute it (a sweep
store is keyed by them; a Ray node is compared with its driver by them before it gets any work)."""
from __future__ import annotations

import datetime
import functools
import hashlib
import platform
import re
import socket
import subprocess
from pathlib import Path

import torch

from robench.devices import device_label, memory_format_name, precision_name, resolve_device

# distribution → the short name used in fingerprints and the <name>_version columns
LIBRARIES = {"robench": "robench", "torch": "torch", "numpy": "numpy", "adversarial-robustness-toolbox": "art",
             "foolbox": "foolbox", "pyautoattack": "pyautoattack"}
# distributions whose code runs inside a cell (forward passes, attacks, corruptions, weights, data):
# what a Ray node must share with its driver
NUMERIC_LIBRARIES = ("torch", "numpy", "scipy", "scikit-image", "pillow", "adversarial-robustness-toolbox",
                     "foolbox", "pyautoattack", "safetensors")


def dist_version(dist: str, missing: str = "unknown") -> str:
    """The installed version of the distribution ``dist``, or ``missing`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return missing


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


@functools.lru_cache(maxsize=4)
def code_fingerprint(root: Path | None = None) -> str:
    """sha256 of robench's and model_zoo's Python sources (relative path and bytes of every ``*.py``, in
    path order; under ``root``, default the folder holding this robench): equal exactly when the code
    that computes a number is equal, whether robench runs from a checkout (clean or not) or an installed
    copy. Weights and data have their own sha256."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    for package in ("robench", "model_zoo"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if "__pycache__" in rel:
                continue
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """The versions of the libraries that compute robench's numbers (short name → version)."""
    return {short: dist_version(dist) for dist, short in LIBRARIES.items()}


@functools.lru_cache(maxsize=1)
def numeric_library_versions() -> dict[str, str]:
    """python (major.minor.micro), robench and every distribution of :data:`NUMERIC_LIBRARIES` →
    version ("not installed" when absent). torch's version keeps its build suffix (``+cpu``,
    ``+cu124``)."""
    from robench import __version__

    out = {"python": platform.python_version(), "robench": __version__}
    for dist in NUMERIC_LIBRARIES:
        out[dist] = dist_version(dist, "not installed")
    return out


def device_name(device: str | torch.device) -> str:
    """What ran the numbers: the GPU's name, or the CPU model with the vector instruction set torch's
    kernels use (two CPUs of one model name differ in AVX2 / AVX512, and so in a few attacked examples)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple MPS"
    from robench.machine import cpu_capability, cpu_name

    return f"{cpu_name()} ({cpu_capability()})"


def provenance(device: str | torch.device, *, tf32: bool = False) -> dict:
    """Columns shared by every row of one run on ``device``: device and its name, host, precision
    (``fp32``, or ``tf32`` with ``--tf32`` on CUDA), memory format, CUDA and cuDNN versions (NA off
    CUDA), library versions, git sha and timestamp (UTC, ISO 8601). Call it where the cells run."""
    from robench import __version__

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    cudnn = torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None
    return {
        "device": device_label(dev),
        "robench_version": __version__,
        "torch_version": torch.__version__,
        "art_version": dist_version("adversarial-robustness-toolbox"),
        "foolbox_version": dist_version("foolbox"),
        "git_sha": git_sha(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "device_name": device_name(dev),
        "precision": precision_name(dev, tf32),
        "memory_format": memory_format_name(dev),
        "cuda_version": torch.version.cuda if cuda else None,
        "cudnn_version": None if cudnn is None else str(cudnn),
        "pyautoattack_version": dist_version("pyautoattack"),
    }
