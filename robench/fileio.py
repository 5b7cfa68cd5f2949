"""Small file helpers shared by the zoo, the data loaders and the table writers.

They live in :mod:`model_zoo.fileio` (the leaf package, so the zoo needs nothing from robench);
these are the same functions.
"""
from __future__ import annotations

from model_zoo.fileio import atomic_write, atomic_write_text, file_mode, regular_file_inside, robench_home, sha256_file

__all__ = ["atomic_write", "atomic_write_text", "file_mode", "regular_file_inside", "robench_home", "sha256_file"]
