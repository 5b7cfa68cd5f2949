"""What code computes a number: a fingerprint of robench's own source files and the versions of the
libraries that can change a result. Two processes with equal values run the same evaluation code
(a Ray worker is compared with its driver this way before it gets any work)."""
from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path

# distributions whose code runs inside a cell (forward passes, attacks, corruptions, weights, data)
NUMERIC_LIBRARIES = ("torch", "numpy", "scipy", "scikit-image", "pillow", "adversarial-robustness-toolbox",
                     "foolbox", "pyautoattack", "safetensors")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over the path and bytes of every Python source file of the robench and model_zoo
    packages, wherever they are installed (a checkout or site-packages; no git needed). The
    top-level ``cli.py`` shim computes nothing and is left out; weights and cards are not code:
    they are identified by their own sha256."""
    import model_zoo
    import robench

    h = hashlib.sha256()
    for pkg in (robench, model_zoo):
        root = Path(pkg.__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(f"{pkg.__name__}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """python (major.minor.micro), robench and every distribution of :data:`NUMERIC_LIBRARIES` →
    version ("not installed" when absent). torch's version keeps its build suffix (``+cpu``,
    ``+cu124``)."""
    from robench import __version__

    out = {"python": platform.python_version(), "robench": __version__}
    for dist in NUMERIC_LIBRARIES:
        out[dist] = _dist_version(dist)
    return out
