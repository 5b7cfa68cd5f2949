"""Tiny synthetic data sets for the data and training tests (never the real CIFAR-10)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

# Ten well-separated RGB colours: class k is "mostly colour k", so a small net can learn it in seconds.
PALETTE = np.array([[230, 25, 25], [25, 230, 25], [25, 25, 230], [230, 230, 25], [230, 25, 230],
                    [25, 230, 230], [240, 240, 240], [20, 20, 20], [240, 130, 20], [120, 60, 200]], dtype=np.float64)


def colour_images(n: int, seed: int, noise: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images N×3×32×32 uint8 whose class is its base colour, under heavy per-pixel noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    x = PALETTE[labels][:, :, None, None] + rng.normal(0.0, noise, size=(n, 3, 32, 32))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_cifar10(root: Path, train: list[tuple[np.ndarray, np.ndarray]], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write the official python layout under ``root/cifar-10-batches-py`` and return that folder.

    ``train`` holds five (images N×3×32×32 uint8, labels) parts, one per data_batch_i; as in the
    originals, each file is a pickled dict with b"data" N×3072 uint8 and b"labels" a list of ints.
    """
    assert len(train) == 5
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
             b"data": np.ascontiguousarray(images.reshape(len(images), 3072)), b"filenames": [b"x.png"] * len(labels)}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)

    for i, (x, y) in enumerate(train, start=1):
        dump(f"data_batch_{i}", x, y)
    dump("test_batch", *test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{k}".encode() for k in range(10)], b"num_vis": 3072,
                     b"num_cases_per_batch": len(train[0][1])}, f, protocol=2)
    return folder
