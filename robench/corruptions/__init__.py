"""CIFAR-10-C common corruptions (Hendrycks & Dietterich, ICLR 2019), generated on the fly, and a
loader for the published CIFAR-10-C ``.npy`` files.

``corrupt(name, x, severity, seed=...)`` takes float pixels B×3×32×32 in [0, 1] on any device and
returns the corrupted batch with the same shape, device and dtype, clipped to [0, 1]. Tables and
formulas are the CIFAR (32×32) ones of ``make_cifar_c.py``, not the ImageNet-C ones.

* Noise (``NOISE_CORRUPTIONS``): gaussian, shot, impulse and speckle noise are drawn in torch on the
  input's device from ``torch.Generator(device).manual_seed(seed)``.
* Everything else runs in numpy/scipy/Pillow/scikit-image on the CPU (converted at the edge) from
  ``numpy.random.default_rng(seed)``. Where the reference calls OpenCV or ImageMagick, the operation
  is re-implemented from its definition: defocus blur (cv2 disk kernel + filter2D), motion blur and
  snow (ImageMagick MotionBlurImage), elastic transform (cv2 affine warp). These match CIFAR-10-C in
  distribution, not bit for bit. glass_blur reproduces what the reference code actually does (its
  pixel "swap" on numpy views only copies), since that is how the published files were made.
* Severity is CIFAR-10-C's, not a monotone knob for every corruption: saturate washes colours out
  at 1–2 and boosts them at 3–5; glass_blur's error is ordered by shuffling passes (1–3: one,
  4–5: two); elastic_transform shrinks a random affine warp while growing a local elastic warp, so
  its plain pixel error falls with severity.

Determinism: the same batch, severity, seed and device give identical output. Random draws are made
for the whole batch in order (numpy ones in chunks of 1000 images from one generator), so an image's
corruption depends on its position in the batch: corrupt fixed batches (e.g. the first n images
in one call, or seed = base seed + batch index) for reproducible tables. Noise drawn on CUDA differs
from noise drawn on the CPU (different generators). The deterministic corruptions (blurs other than
glass/motion, brightness, contrast, saturate, pixelate, jpeg_compression) ignore the seed, as in
the reference.

Quantisation: the published files store ``uint8(clip(x)·255)``, i.e. truncated to the 8-bit grid.
``corrupt`` returns unquantised floats by default (the corruption itself, without the extra
round-down); ``quantize=True`` truncates to the 8-bit grid exactly like the saved files.

Not available (``MISSING``), and why:

* ``frost`` overlays crops of six frost photographs (frost1.png … frost6.jpg) that ship with the
  reference repository, not with any installed package.
* ``spatter`` builds severities 1–3 from OpenCV's Canny edges, 5×5 distance transform, histogram
  equalisation and saturating 8-bit filtering; without OpenCV it cannot be reproduced faithfully, and
  offering only severities 4–5 would break the 1–5 contract.

Both are still readable from the real data set with ``load_cifar10c``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from robench.corruptions.image import IMAGE
from robench.corruptions.noise import NOISE
from robench.data import Dataset, default_corruption_dir, fetched_dir
from robench.fileio import sha256_file
from robench.errors import BadInput, did_you_mean

__all__ = ["corrupt", "list_corruptions", "load_cifar10c", "corruptions_markdown", "NOISE_CORRUPTIONS", "MISSING",
           "CIFAR10C_NAMES"]

# The 19 corruptions of the published CIFAR-10-C, in the order of its release (file stems).
CIFAR10C_NAMES = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur",
    "snow", "frost", "fog", "spatter",
    "brightness", "contrast", "saturate", "elastic_transform", "pixelate", "jpeg_compression",
)
NOISE_CORRUPTIONS = tuple(NOISE)
MISSING: dict[str, str] = {
    "frost": "needs the frost photographs (frost1.png … frost6.jpg) of the reference repository, "
             "which no installed package ships",
    "spatter": "severities 1–3 are built from OpenCV's Canny, distanceTransform and equalizeHist; "
               "not reproducible faithfully without OpenCV",
}
_FUNCS = {**NOISE, **IMAGE}
_CHUNK = 1000  # images per numpy pass
assert set(_FUNCS) | set(MISSING) == set(CIFAR10C_NAMES)


def list_corruptions() -> list[str]:
    """Names ``corrupt`` accepts, in CIFAR-10-C order."""
    return [n for n in CIFAR10C_NAMES if n in _FUNCS]


def corruptions_markdown() -> str:
    """The corruption registry as a Markdown table (README): every CIFAR-10-C name, whether robench
    generates it and where, or why not."""
    lines = ["| corruption | generated | runs on | note |", "|---|---|---|---|"]
    for name in CIFAR10C_NAMES:
        if name in MISSING:
            lines.append(f"| {name} | no (`--corruption-dir` only) | – | {MISSING[name]} |")
        else:
            where = "torch, the input's device" if name in NOISE else "CPU (numpy/scipy/Pillow/scikit-image)"
            lines.append(f"| {name} | yes | {where} | |")
    return "\n".join(lines)


def _check_name(name: object) -> str:
    if isinstance(name, str) and name in _FUNCS:
        return name
    unavailable = "; ".join(f"{k} ({v})" for k, v in MISSING.items())
    if isinstance(name, str) and name in MISSING:
        raise BadInput(f"corruption {name!r} is not available: {MISSING[name]}; "
                       f"valid choices: {', '.join(list_corruptions())}")
    raise BadInput(f"unknown corruption {name!r}{did_you_mean(name, list_corruptions())}; "
                   f"valid choices: {', '.join(list_corruptions())}; "
                   f"unavailable: {unavailable}")


def _check_severity(severity: object) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise BadInput(f"severity must be 1–5 (a whole number), got {severity!r}")
    return int(severity)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 63:
        raise BadInput(f"seed must be a non-negative whole number, got {seed!r}")
    return int(seed)


def _check_images(x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise BadInput(f"images must be a float tensor B×3×32×32 in [0, 1], got {type(x).__name__}"
                       + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
        raise BadInput(f"images must be B×3×32×32 (CIFAR-10-C parameters are for 32×32 RGB), got {tuple(x.shape)}")
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
            raise BadInput("images must be pixels in [0, 1] (normalisation belongs inside the model)")
    return x


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Truncate to the 8-bit grid like ``np.uint8(x·255)`` in make_cifar_c.py (the 1e-4 keeps values
    already on the grid where they are despite floating-point error)."""
    return torch.floor(x * 255.0 + 1e-4).clamp_(0, 255) / 255.0


@torch.no_grad()
def corrupt(name: str, x: torch.Tensor, severity: int, *, seed: int = 0, quantize: bool = False) -> torch.Tensor:
    """Apply CIFAR-10-C corruption ``name`` at ``severity`` (1–5) to a batch of [0, 1] pixels.

    Returns a new tensor with the shape, device and dtype of ``x``, clipped to [0, 1]. ``seed`` fixes
    every random choice; ``quantize=True`` also truncates to the 8-bit grid of the published files.
    """
    name = _check_name(name)
    severity = _check_severity(severity)
    seed = _check_seed(seed)
    x = _check_images(x).detach()
    if x.shape[0] == 0:
        return x.clone()
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    if name in NOISE:
        g = torch.Generator(device=x.device)
        g.manual_seed(seed)
        out = NOISE[name](x.to(work), severity, g)
    else:
        # Chunks bound the float64 working copies (elastic_transform needs ~40 of them); the one
        # generator runs on across chunks, so the result still depends only on (x, seed).
        rng = np.random.default_rng(seed)
        out = torch.empty(x.shape, dtype=work, device=x.device)
        for i in range(0, x.shape[0], _CHUNK):
            arr = x[i:i + _CHUNK].to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
            res = IMAGE[name](arr, severity, rng)
            out[i:i + _CHUNK] = torch.from_numpy(np.ascontiguousarray(res.transpose(0, 3, 1, 2)))
    out = out.clamp(0.0, 1.0)
    if quantize:
        out = quantize_8bit(out)
    return out.to(x.dtype)


# -- the published data set -----------------------------------------------------------------------

def _layout(root: Path) -> str:
    return (f"expected {root}/<corruption>.npy (N×32×32×3 uint8: 5 severities × N/5 images, severity s in "
            f"rows (s-1)·N/5 … s·N/5) and {root}/labels.npy (N labels), as in the CIFAR-10-C release")


def _load_npy(path: Path, root: Path) -> np.ndarray:
    if not os.path.lexists(path):
        raise BadInput(f"CIFAR-10-C file {path} not found; " + _layout(root))
    from robench.fileio import check_regular

    check_regular(path, what="CIFAR-10-C file")  # a FIFO or a device is refused, never opened for reading
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise BadInput(f"{path} is not a readable .npy array ({type(e).__name__}: {e}); " + _layout(root)) from None


def _match_labels(lab: np.ndarray, labels, root: Path, severity: int) -> None:
    clean = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(-1)
    if len(clean) < len(lab):
        raise BadInput(f"the clean test split has {len(clean)} labels, fewer than the {len(lab)} CIFAR-10-C images read")
    wrong = np.flatnonzero(lab != clean[:len(lab)])
    if wrong.size:
        i = int(wrong[0])
        raise BadInput(f"{root / 'labels.npy'} does not match the clean CIFAR-10 test labels: severity {severity} "
                       f"image {i} is labelled {int(lab[i])}, the test split says {int(clean[i])} ({wrong.size} of "
                       f"{len(lab)} differ); the labels file is reordered or not CIFAR-10-C's")


def check_cifar10c_labels(corruption_dir: str | os.PathLike, labels, severities, n: int) -> None:
    """The first ``n`` labels of every severity in CIFAR-10-C's ``labels.npy`` equal the clean test
    ``labels`` (read once, without the image files)."""
    root = Path(corruption_dir)
    if not os.path.lexists(root / "labels.npy") and (root / "CIFAR-10-C").is_dir():
        root = root / "CIFAR-10-C"
    file = _load_npy(root / "labels.npy", root)
    per = file.shape[0] // 5 if file.ndim == 1 else 0
    for s in severities:
        s = _check_severity(s)
        _match_labels(np.array(file[(s - 1) * per:(s - 1) * per + min(n, per)], dtype=np.int64), labels, root, s)


def load_cifar10c(corruption_dir: str | os.PathLike | None, name: str, severity: int, n: int | None = None, *,
                  labels: "torch.Tensor | np.ndarray | None" = None) -> Dataset:
    """The first ``n`` images (all for None) of corruption ``name`` at ``severity`` from the published
    CIFAR-10-C files in ``corruption_dir`` (the CIFAR-10-C folder, or a folder holding it); None
    means the copy ``robench data fetch cifar10c`` made (``robench.data.default_corruption_dir()``).

    ``labels``: the clean CIFAR-10 test labels (in file order). CIFAR-10-C's ``labels.npy`` repeats them
    once per severity; the rows read must equal them, so a reordered or edited ``labels.npy`` is refused
    instead of scoring the wrong classes. The data set's ``sha256`` covers the image file and
    ``labels.npy`` together.

    Every one of the 19 released corruptions can be read, including those ``corrupt`` cannot make.
    """
    if not isinstance(name, str) or name not in CIFAR10C_NAMES:
        raise BadInput(f"unknown CIFAR-10-C corruption {name!r}{did_you_mean(name, CIFAR10C_NAMES)}; "
                       f"valid choices: {', '.join(CIFAR10C_NAMES)}")
    severity = _check_severity(severity)
    if corruption_dir is None:
        corruption_dir = default_corruption_dir()
        if corruption_dir is None:
            raise BadInput(f"no CIFAR-10-C folder given and none fetched: `robench data fetch cifar10c` downloads "
                           f"and verifies it into {fetched_dir('cifar10c')}, or pass --corruption-dir with the "
                           f"folder holding an existing copy (<corruption>.npy, labels.npy)")
    root = Path(corruption_dir)
    if not root.is_dir():
        raise BadInput(f"CIFAR-10-C folder {root} does not exist; " + _layout(root))
    if not (root / f"{name}.npy").is_file() and (root / "CIFAR-10-C").is_dir():
        root = root / "CIFAR-10-C"
    path = root / f"{name}.npy"
    images = _load_npy(path, root)
    labels_file = _load_npy(root / "labels.npy", root)
    total = images.shape[0] if images.ndim else 0
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or total == 0 or total % 5:
        raise BadInput(f"{path} holds a {images.dtype} array of shape {images.shape}; " + _layout(root))
    if labels_file.shape != (total,) or not np.issubdtype(labels_file.dtype, np.integer):
        raise BadInput(f"{root / 'labels.npy'} holds a {labels_file.dtype} array of shape {labels_file.shape}, "
                       f"not {total} integer labels; " + _layout(root))
    per = total // 5
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise BadInput(f"n must be a positive whole number, got {n!r}")
    if n is not None and n > per:
        raise BadInput(f"n={n} is larger than CIFAR-10-C {name}-{severity} ({per} images)")
    count = per if n is None else int(n)
    start = (severity - 1) * per
    rows = slice(start, start + count)
    lab = np.array(labels_file[rows], dtype=np.int64)  # a writable copy: the labels file is memory-mapped read-only
    if lab.size and (lab.min() < 0 or lab.max() > 9):
        raise BadInput(f"{root / 'labels.npy'} holds labels outside 0–9; " + _layout(root))
    if labels is not None:
        _match_labels(lab, labels, root, severity)
    img = torch.from_numpy(np.ascontiguousarray(images[rows].transpose(0, 3, 1, 2)))
    digest = hashlib.sha256(f"{sha256_file(path)}:{sha256_file(root / 'labels.npy')}".encode()).hexdigest()
    return Dataset(name="cifar10c", split=f"{name}-{severity}", images=img, labels=torch.from_numpy(lab),
                   source=str(root), sha256=digest)
