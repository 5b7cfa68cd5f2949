"""Data: CIFAR-10/100 from the official python layout into uint8 tensors (no torchvision), Foolbox's
20 bundled CIFAR-10 test images as the ``samples`` data set, where fetched data lives
(``$ROBENCH_HOME/data``, see ``robench.fetch``), and batch augmentation on the device.

The batch files are pickles; they are read with an allow-list unpickler (``robench.safepickle``) that
never calls anything but numpy's plain-array reconstruction.

``n`` always means the first n images of the test split in file order, so runs are comparable
across tools.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from robench.errors import BadInput
from robench.datahome import (FOLDERS, data_home, default_corruption_dir, fetched_dir,  # noqa: F401
                              resolve_data_dir, robench_home)
from robench.fileio import sha256_file
from robench.safepickle import load_batch

DATASETS = ("samples", "cifar10", "cifar100")
# MD5 of the official test files, as published with the archives (torchvision's cifar.py lists the same):
# a copy whose test file hashes otherwise (re-encoded, re-ordered, re-packed) is "another copy".
OFFICIAL_TEST_MD5 = {"cifar10": "40351d587109b95175f43aff81a1287e", "cifar100": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "cifar10c": "CIFAR-10-C", "samples": "CIFAR-10 samples"}
_LAYOUT = {
    "cifar10": (FOLDERS["cifar10"], [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels"),
    "cifar100": (FOLDERS["cifar100"], ["train"], "test", b"fine_labels"),
}


@dataclasses.dataclass
class Dataset:
    """Images as uint8 N×3×32×32 (CPU), int64 labels, and where they came from."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    source: str
    sha256: str = ""
    official: bool | None = None  # the test file's MD5 is the published one (None: no published checksum)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return 100 if self.name == "cifar100" else 10

    def first(self, n: int | None) -> "Dataset":
        """The first ``n`` images in file order (all of them for None)."""
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BadInput(f"n must be a positive whole number, got {n!r}")
        if n > len(self):
            raise BadInput(f"n={n} is larger than the {self.name} {self.split} split ({len(self)} images)")
        return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n])

    def as_float(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels in [0, 1] as float32 on ``device`` and labels, moved once."""
        return self.images.to(device).float().div_(255.0), self.labels.to(device)


def _integers(value, what: str, path: Path, lo: int, hi: int) -> np.ndarray:
    """``value`` as int64 once every entry is an integer (not a bool, not a float, not text) in
    [lo, hi]: pixels outside 0–255 are not wrapped, float labels not truncated."""
    arr = np.asarray(value)
    if arr.dtype == object:  # a list of Python ints (the originals' labels): check each entry
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in arr.reshape(-1)):
            raise BadInput(f"{path} is not a CIFAR batch file: its {what} are not all whole numbers")
        try:
            arr = arr.astype(np.int64)
        except OverflowError:
            raise BadInput(f"{path} is not a CIFAR batch file: its {what} are outside {lo}–{hi}") from None
    if arr.dtype.kind not in "iu":
        raise BadInput(f"{path} is not a CIFAR batch file: its {what} are {arr.dtype} values, not whole numbers "
                       f"in {lo}–{hi}")
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise BadInput(f"{path} is not a CIFAR batch file: its {what} hold values outside {lo}–{hi} "
                       f"({int(arr.min())}…{int(arr.max())})")
    return arr


def _read_batch(path: Path, label_key: bytes, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file, read with the allow-list unpickler (no code from the file ever runs).

    Keys may be bytes (the Python 2 originals read as bytes) or str (a copy written by Python 3).
    Every pixel must be a whole number in 0–255 and every label one in 0…classes−1."""
    try:
        d = load_batch(path)
    except BadInput:  # a refused global: says which
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, OSError) as e:
        raise BadInput(f"{path} is truncated or not a CIFAR batch file ({type(e).__name__}); "
                       "re-create the data folder") from None
    if isinstance(d, dict):
        d = {k.encode("latin1") if isinstance(k, str) else k: v for k, v in d.items()}
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise BadInput(f"{path} is not a CIFAR batch file (missing 'data' or labels)")
    try:
        data = _integers(d[b"data"], "pixels", path, 0, 255).astype(np.uint8)
        labels = _integers(d[label_key], "labels", path, 0, num_classes - 1)
    except (TypeError, ValueError):
        raise BadInput(f"{path} is not a CIFAR batch file (data or labels are not numbers)") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or data.shape[0] != labels.shape[0]:
        raise BadInput(f"{path} has data of shape {data.shape} for {labels.shape} labels; expected N×3072")
    return data.reshape(-1, 3, 32, 32), labels


def _root_for(name: str, data_dir: str | os.PathLike) -> Path:
    folder = _LAYOUT[name][0]
    d = Path(data_dir)
    return d if d.name == folder else d / folder


def _layout_hint(name: str, data_dir) -> str:
    folder, train, test, _ = _LAYOUT[name]
    where = f"{Path(data_dir) / folder}/" if data_dir is not None else f"a folder {folder}/"
    return (f"{name} not found: expected {where} with {', '.join(train + [test])} (the official python "
            f"layout); `robench data fetch {name}` downloads and verifies it into {data_home()}, "
            f"or pass --data-dir with the folder holding an existing copy")


def load_cifar(name: str, data_dir: str | os.PathLike | None = None, split: str = "test") -> Dataset:
    """CIFAR-10 or CIFAR-100 from ``data_dir`` (the folder holding, or being, the official layout);
    None means the copy ``robench data fetch`` made under ``$ROBENCH_HOME/data``."""
    if name not in _LAYOUT:
        raise BadInput(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise BadInput(f"unknown split {split!r}; valid choices: train, test")
    folder, train_files, test_file, label_key = _LAYOUT[name]
    data_dir = resolve_data_dir(name, data_dir)
    if data_dir is None:
        raise BadInput(_layout_hint(name, None))
    root = _root_for(name, data_dir)
    files = train_files if split == "train" else [test_file]
    # the test batch is needed for either split: its sha256 is the data set's fingerprint
    if not all((root / f).is_file() for f in files + [test_file]):
        raise BadInput(_layout_hint(name, data_dir))
    parts = [_read_batch(root / f, label_key, 100 if name == "cifar100" else 10) for f in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return Dataset(name=name, split=split, images=images, labels=labels, source=str(root),
                   sha256=sha256_file(root / test_file),
                   official=_md5_file(root / test_file) == OFFICIAL_TEST_MD5[name])


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_samples() -> Dataset:
    """Foolbox's 20 bundled CIFAR-10 test images (exact PNGs) with their labels, in index order."""
    import foolbox
    from PIL import Image

    folder = Path(foolbox.__file__).resolve().parent / "data"
    images, labels, h = [], [], hashlib.sha256()
    for i in range(20):
        (path,) = folder.glob(f"cifar10_{i:02d}_*.png")
        img = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
        images.append(img.transpose(2, 0, 1))
        labels.append(int(path.stem.split("_")[-1]))
        h.update(path.read_bytes())
    return Dataset(name="samples", split="test", images=torch.from_numpy(np.stack(images)),
                   labels=torch.tensor(labels, dtype=torch.int64), source=f"foolbox {foolbox.__version__} samples",
                   sha256=h.hexdigest())


def load_dataset(dataset: str | None = None, data_dir: str | os.PathLike | None = None, *,
                 split: str = "test", n: int | None = None) -> Dataset:
    """The evaluation data: ``samples`` when neither is given; a data dir implies CIFAR-10 by default.

    A CIFAR data set named without ``data_dir`` is read from where ``robench data fetch`` put it
    (``resolve_data_dir``)."""
    if dataset is None:
        dataset = "cifar10" if data_dir is not None else "samples"
    if dataset not in DATASETS:
        raise BadInput(f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS)}")
    if dataset == "samples":
        if split != "test":
            raise BadInput("the samples data set has only a test split")
        ds = load_samples()
    else:
        data_dir = resolve_data_dir(dataset, data_dir)
        if data_dir is None:
            raise BadInput(f"dataset {dataset} needs --data-dir (the folder holding {_LAYOUT[dataset][0]}/) "
                           f"or a fetched copy: `robench data fetch {dataset}` puts one in {data_home()}")
        if not Path(data_dir).is_dir():
            raise BadInput(f"data dir {data_dir} does not exist; " + _layout_hint(dataset, data_dir))
        ds = load_cifar(dataset, data_dir, split)
    return ds.first(n)


def label_for(name: str, sha256: str | None, official: bool | None) -> str:
    """The data's identity as tables, cards and reports write it (the ``data_label`` column):
    ``CIFAR-10`` when the test split's checksum is the official one, ``CIFAR-10, other copy (sha256
    1a2b3c4d)`` otherwise (a re-encoded or re-packed copy gives other numbers), ``CIFAR-10-C (sha256
    …)`` for files without a published per-file checksum, ``CIFAR-10 samples (foolbox, 20 PNG
    originals)`` for the bundled images."""
    if name == "samples":
        return "CIFAR-10 samples (foolbox, 20 PNG originals)"
    title = _NAMES.get(name, str(name))
    short = f"sha256 {str(sha256)[:8]}" if sha256 else "no checksum"
    if official:
        return title
    if official is None:
        return f"{title} ({short})"
    return f"{title}, other copy ({short})"


def data_label(ds: Dataset) -> str:
    """Human label for cards, tables and reports: see :func:`label_for`."""
    return label_for(ds.name, ds.sha256, ds.official)


# -- augmentation ------------------------------------------------------------------------
PAD_MODES = ("zeros", "reflect")


def _reflect_index(n: int, pad: int, device) -> torch.Tensor:
    """Source index of each of the n + 2·pad padded positions under reflection without repeating the
    edge (numpy's ``mode="reflect"``: a b c d → c b | a b c d | c b)."""
    p = torch.arange(-pad, n + pad, device=device)
    return torch.where(p < 0, -p, torch.where(p >= n, 2 * (n - 1) - p, p))


def pad_images(x: torch.Tensor, pad: int, mode: str = "zeros") -> torch.Tensor:
    """N×C×H×W images padded by ``pad`` on each side: with zeros, or by reflection (the seed code's
    ``Reflect_Pad``: ``np.pad(img, 2, mode="reflect")``). Any dtype, on the images' device."""
    if mode not in PAD_MODES:
        raise BadInput(f"unknown padding {mode!r}; valid choices: {', '.join(PAD_MODES)}")
    if pad == 0:
        return x
    if mode == "zeros":
        return torch.nn.functional.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    if pad >= min(h, w):
        raise BadInput(f"reflect padding {pad} needs images larger than {pad} pixels, got {h}×{w}")
    return x[:, :, _reflect_index(h, pad, x.device)][:, :, :, _reflect_index(w, pad, x.device)]


def crop_flip(xpad: torch.Tensor, idx: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
              flip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
    """Images ``idx`` of the padded set ``xpad``, each cropped to ``size`` at its offsets (oy, ox) and
    mirrored where ``flip``: one gather on the device, no host synchronisation (CUDA-graph safe)."""
    h, w = size
    c = xpad.shape[1]
    dev = xpad.device
    ar_w = torch.arange(w, device=dev)
    cols = ox[:, None] + (ar_w if flip is None else torch.where(flip[:, None], w - 1 - ar_w, ar_w))
    rows = oy[:, None] + torch.arange(h, device=dev)
    return xpad[idx[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                rows[:, None, :, None], cols[:, None, None, :]]


@dataclasses.dataclass
class EpochDraws:
    """One epoch's random choices, in step order: position i of the epoch is image ``order[i]``,
    cropped at (``oy[i]``, ``ox[i]``) and mirrored where ``flip[i]``. Drawn on the CPU from the run's
    generator, so a seed gives the same epoch on every device; moved to the device once an epoch."""

    order: torch.Tensor
    oy: torch.Tensor
    ox: torch.Tensor
    flip: torch.Tensor

    def to(self, device) -> "EpochDraws":
        return EpochDraws(*(t.to(device) for t in (self.order, self.oy, self.ox, self.flip)))


def batch_sizes(n: int, batch_size: int, *, drop_last: bool) -> list[int]:
    """The sizes of an epoch's batches: full ones, then the short last one unless ``drop_last``."""
    sizes = [batch_size] * (n // batch_size)
    if not drop_last and n % batch_size:
        sizes.append(n % batch_size)
    return sizes


def epoch_draws(generator: torch.Generator, n: int, batch_size: int, *, pad: int, flip: bool = True,
                drop_last: bool = True) -> EpochDraws:
    """The permutation, then per batch the crop offsets and flips, drawn in the order :func:`augment`
    draws them batch by batch (the same numbers as a loop of ``augment`` calls on the same generator)."""
    order = torch.randperm(n, generator=generator)
    oys, oxs, flips = [], [], []
    for b in batch_sizes(n, batch_size, drop_last=drop_last):
        if pad > 0:
            oys.append(torch.randint(0, 2 * pad + 1, (b,), generator=generator))
            oxs.append(torch.randint(0, 2 * pad + 1, (b,), generator=generator))
        else:
            oys.append(torch.zeros(b, dtype=torch.int64))
            oxs.append(torch.zeros(b, dtype=torch.int64))
        flips.append(torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool))
    used = sum(len(f) for f in flips)
    return EpochDraws(order[:used], torch.cat(oys), torch.cat(oxs), torch.cat(flips))


def augment(x: torch.Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True,
            mode: str = "zeros") -> torch.Tensor:
    """Random crop after padding (zeros, or ``mode="reflect"``) and horizontal flip of a whole batch
    on its own device.

    The random draws come from ``generator`` (CPU) so the same seed gives the same batch on any
    device; shapes and dtype are preserved.
    """
    b, c, h, w = x.shape
    if pad > 0:
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    else:
        oy = ox = torch.zeros(b, dtype=torch.int64, device=x.device)
    mask = (torch.rand(b, generator=generator) < 0.5).to(x.device) if flip else None
    return crop_flip(pad_images(x, pad, mode), torch.arange(b, device=x.device), oy, ox, mask, (h, w))
