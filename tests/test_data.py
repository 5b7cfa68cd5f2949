"""robench.data: the official CIFAR-10 python layout, ``n``, and batch augmentation.

Every data set here is a tiny synthetic one written by the test in the official layout; the real
CIFAR-10 is never read.
"""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from robench.cli import main
from robench.data import Dataset, augment, data_label, load_cifar, load_dataset
from robench.errors import BadInput
from synthetic_cifar import write_cifar10

SIZES = (3, 4, 2, 5, 3)  # images per data_batch_i: unequal, so file order is visible
N_TEST = 7


@pytest.fixture
def cifar(tmp_path):
    """A random CIFAR-10 in the official layout; returns (data_dir, train arrays, test arrays)."""
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (k, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, k)) for k in SIZES]
    test = (rng.integers(0, 256, (N_TEST, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, N_TEST))
    write_cifar10(tmp_path / "data", parts, test)
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return tmp_path / "data", train, test


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


# -- loading -------------------------------------------------------------------------------
def test_roundtrip_in_file_order(cifar):
    data_dir, (xtr, ytr), (xte, yte) = cifar
    train = load_cifar("cifar10", data_dir, "train")
    test = load_cifar("cifar10", data_dir, "test")
    assert train.images.dtype == torch.uint8 and train.images.shape == (sum(SIZES), 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert torch.equal(train.images, torch.from_numpy(xtr)) and torch.equal(train.labels, torch.from_numpy(ytr))
    assert torch.equal(test.images, torch.from_numpy(xte)) and torch.equal(test.labels, torch.from_numpy(yte))
    # the data fingerprint is the test batch file's sha256, for either split
    digest = hashlib.sha256((data_dir / "cifar-10-batches-py" / "test_batch").read_bytes()).hexdigest()
    assert train.sha256 == test.sha256 == digest
    assert (train.name, train.split, test.split, train.num_classes) == ("cifar10", "train", "test", 10)
    assert data_label(test).startswith("CIFAR-10, other copy (sha256 ")
    # the folder itself may be given, as well as its parent
    inner = load_cifar("cifar10", data_dir / "cifar-10-batches-py", "test")
    assert torch.equal(inner.images, test.images)
    # load_dataset: a data dir implies CIFAR-10 and the test split
    ds = load_dataset(data_dir=data_dir)
    assert ds.name == "cifar10" and torch.equal(ds.images, test.images)
    x, y = ds.as_float()
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0 and torch.equal((x * 255).round().byte(), ds.images)


def test_missing_folder(tmp_path):
    with pytest.raises(BadInput) as e:
        load_cifar("cifar10", tmp_path / "nowhere", "train")
    assert "cifar-10-batches-py" in _one_line(e) and "data_batch_1" in str(e.value)
    # the way out is the product's own command, never a script outside the repository
    assert "robench data fetch cifar10" in str(e.value) and "../shared" not in str(e.value)
    with pytest.raises(BadInput) as e:
        load_dataset("cifar10", tmp_path / "nowhere")
    assert "does not exist" in _one_line(e)
    with pytest.raises(BadInput, match="needs --data-dir .* `robench data fetch cifar100`"):
        load_dataset("cifar100")
    with pytest.raises(BadInput, match="cifar-10-batches-py/ with .*`robench data fetch cifar10`"):
        load_cifar("cifar10", None, "test")
    with pytest.raises(BadInput, match="valid choices: samples, cifar10, cifar100"):
        load_dataset("svhn", tmp_path)
    with pytest.raises(BadInput, match="valid choices: train, test"):
        load_cifar("cifar10", tmp_path, "val")


@pytest.mark.parametrize("name", ["data_batch_3", "test_batch"])
def test_missing_batch_file(cifar, name):
    data_dir = cifar[0]
    (data_dir / "cifar-10-batches-py" / name).unlink()
    # the test batch is the fingerprint, so even the train split needs it
    with pytest.raises(BadInput) as e:
        load_cifar("cifar10", data_dir, "train")
    assert name in _one_line(e)


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch"])
def test_truncated_batch_file(cifar, name):
    data_dir, path = cifar[0], cifar[0] / "cifar-10-batches-py" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadInput) as e:
        load_cifar("cifar10", data_dir, "train" if name.startswith("data") else "test")
    assert name in _one_line(e) and "truncated" in str(e.value)


def test_wrong_content_refused(cifar):
    import pickle

    folder = cifar[0] / "cifar-10-batches-py"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, f)
    with pytest.raises(BadInput, match="expected N×3072"):
        load_cifar("cifar10", cifar[0], "test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(BadInput, match="not a CIFAR batch file"):
        load_cifar("cifar10", cifar[0], "test")


# -- the CLI on bad data -----------------------------------------------------------------------
def _cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_train_bad_data_dir_subprocess(tmp_path):
    """The installed entry point (``python -m cli`` is the same ``cli:main``): exit 2, one line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "cli", "train", "--model", "resnet20", "--data-dir", str(tmp_path / "BADDIR"),
                        "--out", str(tmp_path / "zoo"), "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "cifar-10-batches-py" in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "run").exists()


def test_cli_train_truncated_and_missing(cifar, tmp_path, capsys):
    data_dir = cifar[0]
    batch = data_dir / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:1000])
    code, _, err = _cli(["train", "--model", "resnet20", "--data-dir", str(data_dir), "--out", str(tmp_path / "zoo"),
                         "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and "data_batch_4" in err
    batch.unlink()
    code, _, err = _cli(["train", "--model", "resnet20", "--data-dir", str(data_dir)], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and "data_batch_4" in err
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "run").exists()


# -- n ----------------------------------------------------------------------------------------
def test_first_n(cifar):
    data_dir, _, (xte, yte) = cifar
    test = load_cifar("cifar10", data_dir, "test")
    for n in (1, 3, N_TEST):
        ds = test.first(n)
        assert len(ds) == n and torch.equal(ds.images, torch.from_numpy(xte[:n]))
        assert torch.equal(ds.labels, torch.from_numpy(yte[:n])) and ds.sha256 == test.sha256
    assert test.first(None) is test
    assert torch.equal(load_dataset("cifar10", data_dir, n=2).images, torch.from_numpy(xte[:2]))
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(BadInput, match="positive whole number"):
            test.first(bad)
    with pytest.raises(BadInput) as e:
        load_dataset("cifar10", data_dir, n=N_TEST + 1)
    assert f"n={N_TEST + 1}" in _one_line(e) and f"({N_TEST} images)" in str(e.value)


# -- augmentation -----------------------------------------------------------------------------
def _candidates(img: np.ndarray, pad: int) -> list[tuple[int, int, bool, np.ndarray]]:
    """Every zero-padded crop of ``img`` and its mirror image: the only outputs augment may give."""
    c, h, w = img.shape
    p = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    out = []
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            crop = p[:, oy:oy + h, ox:ox + w]
            out += [(oy, ox, False, crop), (oy, ox, True, crop[:, :, ::-1])]
    return out


@pytest.mark.parametrize("pad", [4, 2])
def test_augment_is_a_padded_crop_or_flip_of_its_own_input(pad):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(48)
    out = augment(x, torch.Generator().manual_seed(1), pad=pad)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(y, torch.arange(48))  # labels are never touched: image i stays image i
    seen = set()
    for i in range(len(x)):
        matches = [(oy, ox, fl) for oy, ox, fl, c in _candidates(x[i].numpy(), pad) if np.array_equal(c, out[i].numpy())]
        assert len(matches) == 1, f"image {i} is not a padded crop / flip of input {i}"
        seen.add(matches[0])
    # it really augments: many different offsets, both with and without the flip, not the identity everywhere
    assert len(seen) > 20 and {fl for *_, fl in seen} == {False, True}
    assert len({oy for oy, _, _ in seen}) > pad and len({ox for _, ox, _ in seen}) > pad
    assert not torch.equal(out, x)


def test_augment_float_and_no_flip():
    x = torch.rand(8, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0), pad=0, flip=False)
    assert torch.equal(out, x)
    out = augment(x, torch.Generator().manual_seed(0), pad=4, flip=False)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for i in range(len(x)):
        assert any(not fl and np.array_equal(c, out[i].numpy()) for _, _, fl, c in _candidates(x[i].numpy(), 4))


def test_augment_seeded():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    a = augment(x, torch.Generator().manual_seed(7))
    b = augment(x, torch.Generator().manual_seed(7))
    c = augment(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the generator advances: two batches drawn in sequence differ
    g = torch.Generator().manual_seed(7)
    first, second = augment(x, g), augment(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_dataset_num_classes():
    ds = Dataset("cifar100", "test", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), "x")
    assert ds.num_classes == 100 and len(ds) == 2


def test_data_label_says_whether_the_test_split_is_the_official_one(cifar, monkeypatch):
    """Issue 24.2: tables said `cifar10` for a JPEG-recompressed copy whose test MD5 is not the official one."""
    from robench import data as data_mod
    from robench.data import label_for

    data_dir = cifar[0]
    ds = load_dataset("cifar10", data_dir)
    assert ds.official is False
    assert data_label(ds) == f"CIFAR-10, other copy (sha256 {ds.sha256[:8]})"
    # the same files with their test MD5 declared the published one → plain "CIFAR-10"
    md5 = hashlib.md5((data_dir / "cifar-10-batches-py" / "test_batch").read_bytes()).hexdigest()
    monkeypatch.setitem(data_mod.OFFICIAL_TEST_MD5, "cifar10", md5)
    assert data_label(load_dataset("cifar10", data_dir)) == "CIFAR-10"
    assert data_label(load_dataset("samples")) == "CIFAR-10 samples (foolbox, 20 PNG originals)"
    assert label_for("cifar10c", "ab12cd34ef", None) == "CIFAR-10-C (sha256 ab12cd34)"
