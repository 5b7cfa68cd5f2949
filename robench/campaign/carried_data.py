"""The data a GPU window carries: the whole JPEG tarball, or its test split alone.

A window whose remaining tasks only evaluate needs the 10,000 test images, not the 50,000 training ones:
``cifar10-jpeg-test.tar.gz`` (the tarball's ``test/`` members, ≈ 3 MiB instead of ≈ 19 MiB) leaves that
much more of the 64 MiB a device call may send for the zoo's checkpoints.

:func:`unpack_test_split` writes ``cifar-10-batches-py/test_batch`` from it byte for byte as the carried
converter (``cifar10_from_jpeg.py``) writes it from the whole tarball: the same decoding and order
(JPEGs sorted by name), the same shuffle (``numpy.random.default_rng(0)``: the training permutation is
drawn first, then the test permutation) and the converter's own ``write_batch``. Nothing relies on that
silently: ``prepare`` checks the result against the CPU copy's test batch before carrying it, and the
window refuses a test batch whose sha256 is not the one ``prepare`` recorded.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import os
import tarfile
from pathlib import Path

from robench.errors import BadInput
from robench.fileio import atomic_write

TARBALL = "cifar10-jpeg.tar.gz"
TEST_TARBALL = "cifar10-jpeg-test.tar.gz"
SPLITS = ("train", "test")


def _part(name: str) -> str | None:
    """``train/cat/0001.jpg`` → ``train`` (the part a member belongs to), None for anything else."""
    head = Path(name).parts[:1]
    return head[0] if head and head[0] in SPLITS else None


def write_test_tarball(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """Copy the ``test/`` members of the JPEG tarball ``src`` into ``dst`` (gzip, reproducible bytes: no
    timestamp in the gzip header); → the JPEG count of each part of ``src``."""
    counts = {p: 0 for p in SPLITS}

    def write(tmp: str) -> None:
        with tarfile.open(src, "r:gz") as tin, open(tmp, "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tout:
            for m in tin:
                part = _part(m.name)
                if part is None:
                    continue
                if m.isfile() and m.name.endswith(".jpg"):
                    counts[part] += 1
                if part == "test" and (m.isdir() or m.isfile()):
                    tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
        if counts["test"] == 0:
            raise BadInput(f"{src} holds no test/<class>/<id>.jpg images")

    atomic_write(dst, write, what="test-split tarball")
    return counts


def _converter(path: Path):
    """The carried converter as a module (its functions; its ``main`` runs only as a script)."""
    spec = importlib.util.spec_from_file_location("robench_carried_converter", path)
    if spec is None or spec.loader is None:
        raise BadInput(f"cannot load the converter {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    missing = [f for f in ("CLASSES", "write_batch") if not hasattr(mod, f)]
    if missing:
        raise BadInput(f"the converter {path} has no {', '.join(missing)}: it cannot write the test split alone; "
                       "carry the whole tarball (robench campaign prepare --data full)")
    return mod


def unpack_test_split(tarball: str | os.PathLike, converter: str | os.PathLike, out_dir: str | os.PathLike, *,
                      n_train: int) -> Path:
    """Write ``out_dir/cifar-10-batches-py/test_batch`` from the test-only tarball (see the module docstring);
    ``n_train`` is the whole tarball's training image count (its permutation is drawn first). → the file."""
    import numpy as np
    from PIL import Image

    conv = _converter(Path(converter))
    items = []
    with tarfile.open(tarball, "r:gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg") and _part(m.name) == "test":
                cls = m.name.split("/")[-2]
                img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                items.append((m.name, np.asarray(img, dtype=np.uint8), conv.CLASSES.index(cls)))
    if not items:
        raise BadInput(f"{tarball} holds no test images")
    items.sort(key=lambda t: t[0])
    x, y = np.stack([t[1] for t in items]), np.asarray([t[2] for t in items])
    rng = np.random.default_rng(0)
    rng.permutation(n_train)  # the converter shuffles the training images first
    p = rng.permutation(len(y))
    out = Path(out_dir) / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    conv.write_batch(str(out / "test_batch"), x[p], y[p], "testing batch 1 of 1")
    return out / "test_batch"
