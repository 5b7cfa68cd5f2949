"""Small file helpers shared by the zoo, the data loaders and the table writers.

They live in :mod:`model_zoo.fileio` (the leaf package, so the zoo needs nothing from robench);
these are the same functions. See that module for the rules they enforce (atomic writes that never
follow a planted link, group writes with one commit point, bounded reads, non-blocking locks).
"""
from __future__ import annotations

from model_zoo.fileio import (MAX_JSON_BYTES, atomic_write, atomic_write_group, atomic_write_text, check_regular,
                              check_writable, exclusive_lock, file_mode, open_new, output_lock, read_json,
                              read_regular, recover_group, regular_file_inside, remove_stale_temps, robench_home,
                              safe_component, sha256_file)

__all__ = ["MAX_JSON_BYTES", "atomic_write", "atomic_write_group", "atomic_write_text", "check_regular",
           "check_writable", "exclusive_lock", "file_mode", "open_new", "output_lock", "read_json", "read_regular",
           "recover_group", "regular_file_inside", "remove_stale_temps", "robench_home", "safe_component", "sha256_file"]
