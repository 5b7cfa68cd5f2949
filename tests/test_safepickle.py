"""CIFAR batch files never run code: the allow-list unpickler of robench.safepickle.

The batches here are written by the tests (a Python 2 style stream byte by byte, as the official files
are, and Python 3 pickles with str or bytes keys); the real CIFAR-10 is read only when the shared copy
happens to be on this machine.
"""
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robench.cli import main
from robench.data import load_cifar
from robench.errors import BadInput
from robench.safepickle import load_batch, loads_batch
from synthetic_cifar import write_cifar10


def _s(x: bytes) -> bytes:
    """SHORT_BINSTRING / BINSTRING: a Python 2 str."""
    return b"U" + bytes([len(x)]) + x if len(x) < 256 else b"T" + struct.pack("<i", len(x)) + x


def py2_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """The byte stream Python 2's cPickle.dump(d, f, 2) writes for an official CIFAR-10 batch."""
    n = len(labels)
    raw = np.ascontiguousarray(images.reshape(n, 3072), dtype=np.uint8).tobytes()
    out = bytearray(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
    out += _s(b"batch_label") + _s(b"testing batch 1 of 1")
    out += _s(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    out += _s(b"data") + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _s(b"b") + b"\x87R"
    out += b"(K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", 3072) + b"\x86"
    out += b"cnumpy\ndtype\n" + _s(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + _s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89" + _s(raw) + b"tb"
    out += _s(b"filenames") + b"](" + b"".join(_s(f"{i:05d}.png".encode()) for i in range(n)) + b"e"
    out += b"u."  # SETITEMS, STOP
    return bytes(out)


def _folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 2)) for _ in range(5)]
    test = (rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 3))
    return write_cifar10(tmp_path / "data", parts, test)


class _System:
    """Unpickles as os.system(cmd): what a planted batch file does."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_reduce_payload_never_runs(tmp_path, protocol, capsys):
    folder = _folder(tmp_path)
    marker = tmp_path / "PWNED"
    payload = {b"data": _System(f"touch {marker}"), b"labels": [0]}
    (folder / "test_batch").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(BadInput) as e:
        load_cifar("cifar10", folder.parent, "test")
    msg = str(e.value)
    assert "\n" not in msg and "test_batch is not a CIFAR batch file: it asks to load posix.system" in msg
    assert "which robench never unpickles" in msg
    assert not marker.exists()
    # the same through the CLI: one line, exit 2, nothing ran
    with pytest.raises(SystemExit) as ex:
        main(["train", "--model", "resnet20", "--data-dir", str(folder.parent), "--out", str(tmp_path / "zoo"),
              "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.count("\n") == 1 and "asks to load posix.system" in err
    assert not marker.exists() and not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("obj, refused", [
    (lambda: {b"data": eval, b"labels": []}, "(builtins|__builtin__).eval"),
    (lambda: {b"data": np.ma.masked_array(np.zeros((1, 3072), np.uint8)), b"labels": [0]}, "numpy.ma.core._mareconstruct"),
    (lambda: {b"data": Path("x"), b"labels": [0]}, "pathlib."),
])
def test_other_globals_refused(tmp_path, obj, refused):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(obj(), protocol=2))
    with pytest.raises(BadInput, match=f"asks to load {refused}"):
        load_batch(path)


def test_object_arrays_refused():
    for protocol in (2, 5):
        data = pickle.dumps({b"data": np.array([1, "a"], dtype=object), b"labels": [0]}, protocol=protocol)
        with pytest.raises(pickle.UnpicklingError):
            loads_batch(data)


def test_python2_official_stream_loads(tmp_path):
    """The originals: Python 2 str keys (bytes here), numpy.core names, dtype flags as 0/1."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    labels = [3, 1, 4, 1]
    stream = py2_batch(images, labels)
    # the stream is the one plain pickle reads as the official loader does
    ref = pickle.loads(stream, encoding="bytes")
    got = loads_batch(stream)
    assert set(got) == {b"batch_label", b"labels", b"data", b"filenames"} == set(ref)
    assert got[b"data"].dtype == np.uint8 and np.array_equal(got[b"data"], images.reshape(4, 3072))
    assert got[b"labels"] == labels and got[b"filenames"][0] == b"00000.png"
    # and in a data folder, as test_batch
    folder = _folder(tmp_path)
    (folder / "test_batch").write_bytes(stream)
    ds = load_cifar("cifar10", folder.parent, "test")
    assert torch.equal(ds.images, torch.from_numpy(images)) and ds.labels.tolist() == labels


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("str_keys", [False, True])
def test_python3_copies_load(tmp_path, protocol, str_keys):
    """Copies re-written by Python 3: bytes keys (read with encoding='bytes') or str keys (latin-1)."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    keys = ("data", "labels") if str_keys else (b"data", b"labels")
    d = {keys[0]: images, keys[1]: [np.int64(7), 2, 9]}
    folder = _folder(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps(d, protocol=protocol))
    ds = load_cifar("cifar10", folder.parent, "test")
    assert ds.labels.tolist() == [7, 2, 9] and torch.equal(ds.images.reshape(3, 3072), torch.from_numpy(images))


@pytest.mark.skipif(not Path("/work/data/cifar-10-batches-py/test_batch").is_file(), reason="no local CIFAR-10 copy")
def test_shared_copy_still_loads():
    ds = load_cifar("cifar10", "/work/data", "test")
    assert len(ds) == 10000 and ds.images.dtype == torch.uint8 and set(ds.labels.unique().tolist()) == set(range(10))
