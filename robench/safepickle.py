"""Reading the CIFAR python batches without running code from them.

The official CIFAR-10/100 batch files are pickles (a dict of str, bytes, lists of ints and one uint8
numpy array). A plain ``pickle.load`` calls whatever the file names, so a planted batch file could run
any command. ``load_batch`` reads them with an unpickler that resolves only the handful of globals
such a file needs: numpy's array and dtype reconstruction for plain numeric dtypes (never object
arrays) and latin-1 ``bytes`` as Python 3 writes them in pickle protocols 0–2. Every other global is
refused before anything is called, with the one-line error ``<path> is not a CIFAR batch file: it
asks to load <module.name>, which robench never unpickles``.
"""
from __future__ import annotations

import builtins
import io
import os
import pickle
from pathlib import Path

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray, numeric as _numeric

from robench.errors import BadInput
from robench.fileio import read_regular

__all__ = ["load_batch", "loads_batch", "RefusedGlobal", "MAX_BATCH_BYTES"]
MAX_BATCH_BYTES = 1 << 30


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; ``qualname`` is ``module.name``."""

    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


def _plain_dtype(d: object) -> np.dtype:
    dt = d if isinstance(d, np.dtype) else None
    if dt is None or dt.hasobject:
        raise pickle.UnpicklingError(f"dtype {d!r} is not a plain numeric dtype")
    return dt


def _dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    # numpy pickles a dtype as dtype(str, False, True) followed by __setstate__; Python 2 wrote the str
    # as bytes and the flags as 0/1
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if not isinstance(spec, str) or spec[:1] in ("O", "V") or not isinstance(align, (bool, int)):
        raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric dtype")
    return _plain_dtype(np.dtype(spec, bool(align), bool(copy)))


def _reconstruct(subtype: object, shape: object, typecode: object) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays can be reconstructed")
    return _multiarray._reconstruct(np.ndarray, shape, typecode)


def _frombuffer(buf: object, dtype: object, shape: object, order: object) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)):
        raise pickle.UnpicklingError("array data must be bytes")
    return _numeric._frombuffer(buf, _plain_dtype(dtype), shape, order)


def _scalar(dtype: object, data: object) -> np.generic:
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("scalar data must be bytes")
    return _multiarray.scalar(_plain_dtype(dtype), data)


def _encode(text: object, encoding: object = "latin1") -> bytes:
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocols 0-2
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 bytes can be rebuilt")
    return text.encode("latin1")


_NUMPY = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED = {
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY},
    **{(m, "scalar"): _scalar for m in _NUMPY},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,  # only ever passed to _reconstruct, which checks it
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    **{(m, n): getattr(builtins, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "bytearray")},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise RefusedGlobal(f"{module}.{name}") from None


def _no_object_arrays(obj: object, depth: int = 0) -> None:
    if depth > 20:
        raise pickle.UnpicklingError("nested too deeply")
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not CIFAR data")
    if isinstance(obj, dict):
        for v in obj.values():
            _no_object_arrays(v, depth + 1)
    elif isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], (np.ndarray, dict, list, tuple)):
        for v in obj:
            _no_object_arrays(v, depth + 1)


def loads_batch(data: bytes, where: str = "data") -> object:
    """Unpickle CIFAR batch bytes with the allow-list (``where`` names the source in errors)."""
    return _load(io.BytesIO(data), where)


def load_batch(path: str | os.PathLike) -> object:
    """The object stored in CIFAR batch file ``path``, read without running any code it names.

    Strings written by Python 2 (the official files) come back as ``bytes``, as with
    ``pickle.load(f, encoding="bytes")``. Raises ``BadInput`` (one line) for a refused global and
    ``pickle.UnpicklingError``/``EOFError``/``ValueError``/... for a truncated or malformed file.
    """
    # a regular file of bounded size (CIFAR-100's train file is 155 MB): a FIFO or /dev/zero is refused
    return _load(io.BytesIO(read_regular(path, limit=MAX_BATCH_BYTES, what="CIFAR batch file")), str(Path(path)))


def _load(f, where: str) -> object:
    try:
        obj = _Unpickler(f, encoding="bytes").load()
    except RefusedGlobal as e:
        raise BadInput(f"{where} is not a CIFAR batch file: it asks to load {e.qualname}, "
                       "which robench never unpickles") from None
    _no_object_arrays(obj)
    return obj
