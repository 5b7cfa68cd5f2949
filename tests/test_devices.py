"""Devices on a CPU-only machine: every command refuses a device it cannot use with one line before it
reads any data; the CUDA determinism settings; device-aware batch sizes and memory formats; the
provenance columns; and the hot loops' host reads (counted on CPU: the same code runs on a GPU, where
each read would stall the device)."""
from __future__ import annotations

import inspect
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.overrides import TorchFunctionMode

import model_zoo
import robench
from robench.devices import (default_batch_size, determinism, device_kind, memory_format, precision_name,
                             resolve_device)
from robench.errors import BadInput
from robench.results import SCHEMA, read_table, to_frame, wilson, write_table

sys.path.insert(0, str(Path(__file__).parent))
from engine_helpers import save_fitted  # noqa: E402
from synthetic_cifar import colour_images, write_cifar10  # noqa: E402

ROBENCH = Path(robench.__file__).resolve().parent
NEW_COLUMNS = ("host", "device_name", "precision", "memory_format", "batch_size", "cuda_version", "cudnn_version",
               "pyautoattack_version")


def _unusable_devices() -> list[str]:
    bad = ["gpu", "meta", "cuda:99", "tpu"]
    if not torch.cuda.is_available():
        bad.append("cuda")
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        bad.append("mps")
    return bad


@pytest.fixture
def env(tmp_path):
    torch.manual_seed(0)
    model_zoo.save(model_zoo.create_model("resnet20"), model_zoo.user_zoo() / "resnet20")
    rows = [dict(model="resnet20", scheme="euler", lam=0.0, dataset="samples", n=20, kind="clean", perturbation="none",
                 backend=None, eps=None, severity=None, seed=0, correct=15, accuracy=0.75,
                 ci_low=wilson(15, 20)[0], ci_high=wilson(15, 20)[1])]
    write_table(to_frame(rows), tmp_path / "table")
    return tmp_path


COMMANDS = {  # every command that takes --device; the data they name does not exist
    "eval": ["eval", "--model", "resnet20", "--data-dir", "/nonexistent/cifar", "--out", "{root}/out/e"],
    "sweep": ["sweep", "{root}/cfg.toml", "--out", "{root}/out/s"],
    "check": ["check", "{root}/table.parquet", "--data-dir", "/nonexistent/cifar", "-o", "{root}/out/c"],
    "landscape": ["landscape", "--model", "resnet20", "--data-dir", "/nonexistent/cifar", "--out", "{root}/out/l"],
    "stability": ["stability", "--model", "resnet20", "--data-dir", "/nonexistent/cifar", "--out", "{root}/out/t"],
    "noise-protocol": ["noise-protocol", "--model", "resnet20", "--corruption-dir", "/nonexistent/c10c",
                       "--out", "{root}/out/n"],
    "train": ["train", "--model", "resnet20", "--data-dir", "/nonexistent/cifar", "--out", "{root}/out/z",
              "--run-dir", "{root}/out/r"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("device", _unusable_devices())
def test_every_command_refuses_an_unusable_device_first(env, capsys, command, device):
    """`cuda` without a GPU, `gpu`, `meta`, `cuda:99`: one line naming the device and the valid choices,
    exit 2, before any data is read (the data folders here do not exist) and nothing written."""
    from robench.cli import main

    (env / "cfg.toml").write_text(f'models = ["resnet20"]\ndata_dir = "/nonexistent/cifar"\ndevice = "{device}"\n')
    args = [a.replace("{root}", str(env)) for a in COMMANDS[command]]
    if command != "sweep":
        args += ["--device", device]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert repr(device) in lines[0] and "valid choices: cpu" in lines[0], lines[0]
    assert "nonexistent" not in lines[0]  # the device is checked before the data
    assert not (env / "out").exists()


def test_resolve_device_names_and_hints():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    with pytest.raises(BadInput, match="did you mean cuda"):
        resolve_device("gpu")
    for bad in (None, "", 3):
        with pytest.raises(BadInput, match="valid choices: cpu"):
            resolve_device(bad)
    # the kind of a device name is known without having the device (a Ray driver plans for its workers)
    assert device_kind("cuda:3") == "cuda" and device_kind(torch.device("cuda")) == "cuda"
    with pytest.raises(BadInput, match="cannot run an evaluation"):
        device_kind("meta")


def test_cuda_determinism_settings_are_scoped(monkeypatch):
    """On CUDA: cuDNN deterministic without benchmark search, TF32 off unless asked, the cuBLAS workspace
    set; the caller's settings come back afterwards. (The flags are process state torch keeps without a
    GPU, so the scoping is tested here; tests/test_cuda.py checks the effect on a GPU.)"""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark, matmul.allow_tf32 = True, True
    try:
        with determinism(torch.device("cuda")):
            assert cudnn.deterministic and not cudnn.benchmark
            assert not cudnn.allow_tf32 and not matmul.allow_tf32
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert cudnn.benchmark and matmul.allow_tf32  # restored
        with determinism(torch.device("cuda"), tf32=True):
            assert cudnn.allow_tf32 and matmul.allow_tf32 and cudnn.deterministic
        with determinism("cpu"):  # nothing changes on a CPU
            assert cudnn.benchmark and matmul.allow_tf32
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = before


def test_the_cli_sets_the_cublas_workspace_before_any_command(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from robench.cli import cli

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    CliRunner().invoke(cli, ["zoo", "list"])
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"


def test_tf32_is_refused_off_cuda():
    with pytest.raises(BadInput, match="--tf32.*CUDA"):
        robench.EvalSpec(models=["resnet20"], tf32=True).validate()
    assert precision_name("cpu") == "fp32" and precision_name(torch.device("cuda"), tf32=True) == "tf32"


def test_batch_size_defaults_per_device_kind():
    """CPU keeps the batch sizes robench always used (256 for eval, so committed tables stay the same
    cells); CUDA takes large batches (a GPU is launch-bound at 256)."""
    spec = robench.EvalSpec(models=["resnet20"]).validate()
    assert spec.batch_size == 256
    assert robench.EvalSpec(models=["resnet20"], device="cuda").validate(check_device=False).batch_size == 1000
    assert robench.EvalSpec(models=["resnet20"], batch_size=64).validate().batch_size == 64
    assert default_batch_size("cpu", "analysis") == 250 and default_batch_size("cuda:0", "analysis") == 1000
    assert default_batch_size("cpu", "noise") == 500 and default_batch_size("cuda", "noise") == 2500


def test_memory_format_is_per_device_kind_and_recorded(env, monkeypatch):
    assert memory_format("cpu") == torch.channels_last == memory_format(torch.device("cuda"))
    save_fitted("resnet20")
    df = robench.evaluate(models=["resnet20"], n=4, progress=False)
    assert set(df["memory_format"]) == {"channels_last"}
    monkeypatch.setenv("ROBENCH_MEMORY_FORMAT", "contiguous")  # what the GPU probe flips to compare
    from robench.models import ModelCache

    net = ModelCache("cpu").get("resnet20", None).module
    conv = next(m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
    df = robench.evaluate(models=["resnet20"], n=4, progress=False)
    assert set(df["memory_format"]) == {"contiguous"}
    monkeypatch.setenv("ROBENCH_MEMORY_FORMAT", "nhwc")
    with pytest.raises(BadInput, match="ROBENCH_MEMORY_FORMAT='nhwc'; valid choices: channels_last, contiguous"):
        memory_format("cpu")


def test_rows_record_host_device_precision_batch_size(env):
    import socket

    from robench.machine import cpu_capability

    save_fitted("resnet20")
    df = robench.evaluate(models=["resnet20"], attacks=["fgsm"], n=6, batch_size=4, progress=False)
    assert list(SCHEMA)[-len(NEW_COLUMNS):] == list(NEW_COLUMNS)  # appended at the end of the schema
    for col in ("host", "device_name", "precision", "memory_format", "batch_size", "pyautoattack_version"):
        assert df[col].notna().all(), col
    assert set(df["host"]) == {socket.gethostname()}
    assert all(name.endswith(f"({cpu_capability()})") for name in df["device_name"])
    assert set(df["precision"]) == {"fp32"} and set(df["batch_size"]) == {4}
    assert df["cuda_version"].isna().all() and df["cudnn_version"].isna().all()  # NA off CUDA
    # the analyses carry the same columns
    land = robench.landscape(models=["resnet20"], n=3, points=3, directions=["grad_sign"], batch_size=2)
    assert set(land["batch_size"]) == {2} and set(land["precision"]) == {"fp32"} and land["host"].notna().all()


def test_tables_written_before_the_new_columns_read_with_na(tmp_path):
    old = pd.DataFrame([dict(model="resnet20", scheme="euler", lam=0.0, dataset="samples", n=20, kind="clean",
                             perturbation="none", backend=None, eps=None, severity=None, seed=0, correct=15,
                             accuracy=0.75, device="cpu")])
    old.to_csv(tmp_path / "old.csv", index=False)
    df = read_table(tmp_path / "old.csv")
    assert all(df[c].isna().all() for c in NEW_COLUMNS)
    assert str(df["batch_size"].dtype) == "Int64"
    root = Path(__file__).resolve().parent.parent
    base = read_table(root / "results" / "baseline_samples.parquet")  # the committed CI baseline
    assert base["batch_size"].isna().all() and len(base)


# -- host reads in the hot loops --------------------------------------------------------------------
HOST_READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero"}
LIBRARY_ADAPTERS = ("art_backend.py", "foolbox_backend.py", "pyautoattack_backend.py")


class HostReads(TorchFunctionMode):
    """Counts tensor → host reads made by robench's own code (library adapters excluded: ART computes on
    the host by design), by the robench function that made them."""

    def __init__(self) -> None:
        super().__init__()
        self.where: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            frame = inspect.currentframe().f_back
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back
            path = frame.f_code.co_filename if frame is not None else ""
            if path.startswith(str(ROBENCH)) and not path.endswith(LIBRARY_ADAPTERS):
                self.where.append(f"{Path(path).name}:{frame.f_code.co_name}:{name}")
        return func(*args, **(kwargs or {}))


def _reads(fn) -> list[str]:
    with HostReads() as mode:
        fn()
    return mode.where


def test_clean_and_attack_loops_read_the_host_once_per_cell_not_per_batch(env):
    """The eval hot loops: per-example flags, the finite-logits check and the ε-ball check stay on the
    device; the number of host reads does not grow with the number of batches."""
    from robench.executors import _correct, run_attack_group

    net = save_fitted("resnet20") and model_zoo.load("resnet20")
    from robench.data import load_samples

    x, y = load_samples().as_float()
    one = _reads(lambda: _correct(net, x, y, 20, "clean", lambda k: None))
    many = _reads(lambda: _correct(net, x, y, 2, "clean", lambda k: None))
    assert len(many) == len(one) <= 2, many  # one device → host copy (.cpu().numpy())
    for backend in ("foolbox", "art"):
        kw = dict(attack="pgd", eps=[2 / 255, 8 / 255], backend=backend, params={"steps": 2}, seed=0)
        one = _reads(lambda: run_attack_group(net, x, y, batch_size=20, **kw))
        many = _reads(lambda: run_attack_group(net, x, y, batch_size=4, **kw))
        assert len(many) == len(one), (backend, sorted(set(many) - set(one)))
        results = run_attack_group(net, x, y, batch_size=4, **kw)
        assert [r.flags.shape for r in results] == [(20,), (20,)]


def test_landscape_grid_is_read_once_per_direction_not_per_point(env):
    from robench.analysis.landscape import per_example

    net = save_fitted("resnet20") and model_zoo.load("resnet20")
    from robench.data import load_samples

    x, y = load_samples().as_float()
    kw = dict(directions=["grad_sign", "pgd", "random"], points=5, seed=0)
    one = _reads(lambda: per_example(net, x[:8], y[:8], batch_size=8, **kw))
    many = _reads(lambda: per_example(net, x[:8], y[:8], batch_size=2, **kw))
    assert len(many) == len(one), sorted(set(many) - set(one))
    a = per_example(net, x[:8], y[:8], batch_size=8, **kw)
    b = per_example(net, x[:8], y[:8], batch_size=2, **{**kw, "directions": ["grad_sign", "random"]})
    for key in b:  # batch-independent directions: same numbers whatever the batch size
        np.testing.assert_allclose(a[key][1], b[key][1], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a[key][2], b[key][2])


def test_training_steps_do_not_read_the_host(tmp_path):
    """Loss and accuracy are summed on the device and read once an epoch, whatever the number of steps."""
    from robench.data import Dataset
    from robench.train import train

    x, y = colour_images(64, seed=0)
    ds = Dataset("cifar10", "train", torch.from_numpy(x), torch.from_numpy(y), "synthetic", "0" * 64)

    def run(batch: int, tag: str):
        return lambda: train("resnet20", ds, ds, recipe="fast", epochs=1, batch_size=batch, run_dir=tmp_path / tag,
                             progress=False, log=lambda m: None)

    few = [w for w in _reads(run(64, "a")) if w.startswith("train.py:train:")]
    more = [w for w in _reads(run(8, "b")) if w.startswith("train.py:train:")]
    assert len(more) == len(few) <= 4, more


def test_checks_count_zero_gradients_on_the_device():
    from robench.checks import gradient_fraction

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(10, 3, 2, 2), torch.arange(10) % 3
    one = _reads(lambda: gradient_fraction(net, x, y, batch_size=10))
    many = _reads(lambda: gradient_fraction(net, x, y, batch_size=2))
    assert len(many) == len(one) == 1
    assert gradient_fraction(net, x, y, batch_size=3) == 0.0
    dead = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3))
    with torch.no_grad():
        dead[1].bias.fill_(-100.0)  # ReLU off everywhere: every input gradient is exactly zero
    assert gradient_fraction(dead, x, y, batch_size=3) == 1.0


def test_non_finite_logits_are_still_caught_with_their_images(env):
    from robench.executors import NonFiniteLogits, _correct

    class NaNAfter(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[x[:, 0, 0, 0] > 0.5] = math.nan
            return out

    x = torch.zeros(10, 3, 4, 4)
    x[7, 0, 0, 0] = 1.0
    with pytest.raises(NonFiniteLogits, match="images 6..8"):
        _correct(NaNAfter(), x, torch.zeros(10, dtype=torch.long), 3, "clean", lambda k: None)
