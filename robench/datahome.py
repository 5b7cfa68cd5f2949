"""Where fetched data lives: ``$ROBENCH_HOME/data`` and the official folder names in it.

Kept free of torch so ``robench data`` starts fast; ``robench.data`` re-exports every name.
"""
from __future__ import annotations

import os
from pathlib import Path

from model_zoo.fileio import robench_home
from robench.errors import BadInput

CIFAR10C_FOLDER = "CIFAR-10-C"
FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "cifar10c": CIFAR10C_FOLDER}


# -- where fetched data lives ---------------------------------------------------------------
def data_home() -> Path:
    """``$ROBENCH_HOME/data``: where ``robench data fetch`` puts the data sets by default."""
    return robench_home() / "data"


def fetched_dir(name: str) -> Path:
    """The folder ``robench data fetch <name>`` creates by default (it may not exist)."""
    if name not in FOLDERS:
        raise BadInput(f"unknown data set {name!r}; valid choices: {', '.join(FOLDERS)}")
    return data_home() / FOLDERS[name]


def resolve_data_dir(dataset: str | None, data_dir: str | os.PathLike | None) -> Path | None:
    """The folder to read ``dataset`` from: ``data_dir`` when given, else the fetched copy under
    ``$ROBENCH_HOME/data`` when it exists, else None (also for ``samples`` and for no data set at all)."""
    if data_dir is not None:
        return Path(data_dir)
    if dataset in ("cifar10", "cifar100"):
        folder = fetched_dir(dataset)
        if folder.is_dir():
            return folder
    return None


def default_corruption_dir() -> Path | None:
    """The fetched CIFAR-10-C folder (``$ROBENCH_HOME/data/CIFAR-10-C``) when it holds labels.npy, else None."""
    folder = fetched_dir("cifar10c")
    return folder if (folder / "labels.npy").is_file() else None
