"""Toy inputs for the campaign's CPU dry run: a JPEG tarball in the layout of ../shared/data/cifar10-jpeg.tar.gz,
a stand-in for its converter with the same contract, a tiny wheel, a cuda-marked test file and a toy plan."""
from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from synthetic_cifar import PALETTE

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Same contract as ../shared/tools/cifar10_from_jpeg.py: reads ../data/cifar10-jpeg.tar.gz beside itself
# (train/<class>/<id>.jpg, test/<class>/<id>.jpg) and writes OUT_DIR/cifar-10-batches-py in the official
# layout (five training batches, test_batch, batches.meta); JPEGs sorted by name, the training images shuffled
# with default_rng(0), then the test images with the same generator; CLASSES and write_batch(path, x, y, name)
# at module level and main() only as a script (what robench.campaign.carried_data uses for the test split).
CONVERTER = r'''
import io, os, pickle, sys, tarfile
import numpy as np
from PIL import Image
CLASSES = %r
HERE = os.path.dirname(os.path.abspath(__file__))


def write_batch(path, x, y, name):
    data = np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": [int(v) for v in y]}, f, protocol=2)


def main():
    items = []
    with tarfile.open(os.path.join(HERE, "..", "data", "cifar10-jpeg.tar.gz"), "r:gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg"):
                part, cls, _ = m.name.split("/")[-3:]
                img = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"), dtype=np.uint8)
                items.append((m.name, part, img, CLASSES.index(cls)))
    items.sort(key=lambda t: t[0])
    out = os.path.join(sys.argv[1], "cifar-10-batches-py")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    train = [t for t in items if t[1] == "train"]
    xtr, ytr = np.stack([t[2] for t in train]), np.asarray([t[3] for t in train])
    p = rng.permutation(len(ytr))
    xtr, ytr = xtr[p], ytr[p]
    k = len(ytr) // 5
    for i in range(5):
        write_batch(os.path.join(out, f"data_batch_{i + 1}"), xtr[i * k:(i + 1) * k], ytr[i * k:(i + 1) * k],
                    f"training batch {i + 1} of 5")
    test = [t for t in items if t[1] == "test"]
    xte, yte = np.stack([t[2] for t in test]), np.asarray([t[3] for t in test])
    p = rng.permutation(len(yte))
    write_batch(os.path.join(out, "test_batch"), xte[p], yte[p], "testing batch 1 of 1")
    with open(os.path.join(out, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES]}, f, protocol=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
''' % (CLASSES,)


def jpeg_tarball(path: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """A gzip tar of JPEG colour images (class k is mostly colour k) in the shared tarball's layout."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for part, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                k = i % 10
                x = np.clip(PALETTE[k][None, None, :] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(x).save(buf, format="JPEG", quality=90)
                info = tarfile.TarInfo(f"{part}/{CLASSES[k]}/{i:04d}.jpg")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def converter(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONVERTER)
    return path


def tiny_wheel(folder: Path, name: str = "campaign_probe_pkg") -> Path:
    """A valid pure-Python wheel with one module whose VALUE is 42."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-0.1.dist-info"
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: robench-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}

    def digest(b: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()

    record = "".join(f"{n},{digest(b)},{len(b)}\n" for n, b in files.items()) + f"{dist}/RECORD,,\n"
    whl = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
        z.writestr(f"{dist}/RECORD", record)
    return whl


CUDA_TESTS = '''import pytest


@pytest.mark.cuda
def test_runs_under_the_cuda_marker():
    assert True


def test_not_selected_without_the_marker():
    raise AssertionError("-m cuda must deselect this")
'''

PLAN = '''name = "toy"
[data]
label = "synthetic JPEG colours"
[cuda_tests]
args = ["-q", "-p", "no:cacheprovider", "-m", "cuda", "{cuda_tests}"]
timeout_s = 60
[probe]
model = "resnet20"
train_batch = 4
steps = 1
warmup = 1
ks = [1, 2]
deep_ks = []
amp = false
eval_n = 8
eval_batch = 8
budget_s = 60
[estimates]
train_overhead_s = 1
eval_overhead_s = 1
margin_s = 2

[[jobs]]
name = "fam"
kind = "train"
priority = 1
recipe = "fast"
amp = false
epochs = 1
batch_size = 10
n_train = 20
replaces = true
[[jobs.packs]]
members = [{{model = ["resnet20", "inresnet20"], lam = 0.5, seed = 0}}, {{model = "lambda_inresnet20", seed = 0}}]

[[jobs]]
name = "study"
kind = "eval"
priority = 1
needs = ["fam"]
out = "results/toy_study"
checks = false
[jobs.spec]
models = ["resnet20"]
corruptions = ["gaussian_noise"]
severities = [1]
n = 20
batch_size = 20

[[jobs]]
name = "late"
kind = "train"
priority = 2
estimate_s = {late_estimate}
recipe = "fast"
amp = false
epochs = 1
batch_size = 10
n_train = 20
[[jobs.packs]]
members = [{{model = "inresnet20", lam = 0.5, seed = 1}}]
'''


def toy_plan(path: Path, cuda_tests: Path, late_estimate: float = 5000) -> Path:
    path.write_text(PLAN.format(cuda_tests=cuda_tests, late_estimate=late_estimate))
    return path
