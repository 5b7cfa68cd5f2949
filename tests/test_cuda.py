"""Every path a GPU user takes, on CUDA, compared with the same path on the CPU (run on the GPU machine:
``python -m pytest -q -m cuda tests/test_cuda.py``; skipped without a GPU).

Stated tolerances. Clean flags, corruptions read from files and the noise protocol: identical (a forward
pass in fp32 on a model whose logit margins are ≥ 5). Attacks: the robust count within 3 of the CPU's
(on 8 or 20 of the bundled samples; ART draws its random starts from numpy on both devices, Foolbox and
the generated noise corruptions from the device's generator, and CUDA's kernels round differently).
Landscape and stability: means within 1e-2 absolute (losses, log-gains: a gradient sign can flip where
the gradient is ~0) and 2 % relative (norms). Training: the per-epoch loss within 2 % of the CPU run
(same initial weights and batches). On CUDA itself: two runs give identical tables (cuDNN deterministic,
no TF32 unless asked).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import model_zoo
import robench
from robench.attacks import backends_for, list_attacks
from robench.results import unpack_flags

sys.path.insert(0, str(Path(__file__).parent))
from engine_helpers import save_fitted  # noqa: E402
from synthetic_cifar import colour_images, write_cifar10  # noqa: E402

pytestmark = pytest.mark.cuda

MARGIN = 5.0  # logit margin of the fitted model: at ε = 1/255 gradient attacks leave a few of 20 correct
EPS = {"linf": "1/255", "l2": "0.1"}
BUDGET = {"ifgsm": {"steps": 5}, "pgd": {"steps": 5}, "pgd10": {"steps": 5}, "pgd_l2": {"steps": 5},
          "apgd_ce": {"steps": 10}, "cw_l2": {"steps": 10, "binary_search_steps": 2}, "deepfool": {"steps": 10},
          "square": {"queries": 50}, "hsj": {"steps": 2, "max_evals": 50, "init_evals": 10},
          "autoattack": {"steps": 3, "queries": 10, "target_classes": 3},
          "autoattack_art": {"steps": 3, "queries": 10, "target_classes": 3},
          "autoattack_lite": {"steps": 3, "queries": 10}}
VOLATILE = ["seconds", "timestamp"]


@pytest.fixture
def fitted():
    save_fitted("resnet20", margin=MARGIN)
    return model_zoo.load("resnet20")


def _flags(row) -> np.ndarray:
    return unpack_flags(row["flags"], int(row["n"]))


def _eval(device: str, **kw) -> pd.DataFrame:
    return robench.evaluate(models=["resnet20"], device=device, progress=False, **kw)


def test_load_entry_puts_the_module_on_the_gpu(fitted):
    net = model_zoo.load_entry("resnet20", map_location="cuda").model
    assert {p.device.type for p in net.parameters()} == {"cuda"}
    assert {b.device.type for b in net.buffers()} == {"cuda"}


def test_model_cache_runs_channels_last_on_cuda(fitted):
    from robench.models import ModelCache

    net = ModelCache("cuda").get("resnet20", None).module
    conv = next(m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("attack,backend", [(a, b) for a in list_attacks() for b in backends_for(a)])
def test_every_attack_on_every_backend_matches_the_cpu(fitted, attack, backend):
    from robench.attacks import make_attack

    norm = make_attack(attack, eps=0.01).norm
    kw = dict(attacks=[attack], backend=backend, eps=[EPS[norm]], attack_params={attack: BUDGET.get(attack, {})}, n=8)
    cpu, gpu = _eval("cpu", **kw), _eval("cuda", **kw)
    for kind in ("clean", "attack"):
        c, g = cpu[cpu["kind"] == kind].iloc[0], gpu[gpu["kind"] == kind].iloc[0]
        if kind == "clean":
            np.testing.assert_array_equal(_flags(c), _flags(g))
        else:
            assert abs(int(c["correct"]) - int(g["correct"])) <= 3, (attack, backend, c["correct"], g["correct"])
            assert g["backend"] == backend


def test_rows_record_the_gpu(fitted):
    df = _eval("cuda", attacks=["fgsm"], eps=["1/255"])
    dev = torch.device("cuda", torch.cuda.current_device())
    assert set(df["device"]) == {f"{dev} ({torch.cuda.get_device_name(dev)})"}
    assert set(df["device_name"]) == {torch.cuda.get_device_name(dev)}
    assert set(df["cuda_version"]) == {torch.version.cuda}
    assert set(df["cudnn_version"]) == {str(torch.backends.cudnn.version())}
    assert set(df["precision"]) == {"fp32"} and set(df["memory_format"]) == {"channels_last"}
    assert set(df["batch_size"]) == {1000}  # the CUDA default


def test_cuda_eval_is_deterministic_and_tf32_only_when_asked(fitted):
    kw = dict(attacks=["pgd", "fgsm"], backend="foolbox", eps=["1/255"], attack_params={"pgd": {"steps": 5}},
              corruptions=["gaussian_noise"], severities=[3])
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    a, b = _eval("cuda", **kw), _eval("cuda", **kw)
    pd.testing.assert_frame_equal(a.drop(columns=VOLATILE), b.drop(columns=VOLATILE))
    t = _eval("cuda", tf32=True, **kw)
    assert set(t["precision"]) == {"tf32"}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (matmul, conv)  # restored


def test_eval_and_sweep_cli_on_cuda_run_their_checks(fitted, tmp_path, capsys):
    """Every GPU `robench eval` and `sweep` used to end in a traceback: the end-of-run checks built their
    models on the CPU and put the data on the GPU."""
    from robench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "resnet20", "--attack", "pgd", "--param", "pgd.steps=3", "--eps", "1/255",
              "--device", "cuda", "--out", str(tmp_path / "e")])
    assert e.value.code == 0, capsys.readouterr().err
    checks = pd.read_parquet(tmp_path / "e_checks.parquet")
    assert set(checks["status"]) <= {"pass", "flag", "skip"} and (checks["status"] != "skip").any()
    (tmp_path / "s.toml").write_text('models = ["resnet20"]\ndataset = "samples"\nattacks = ["fgsm"]\n'
                                     'eps = ["1/255"]\ndevice = "cuda"\n')
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "s")])
    assert e.value.code == 0, capsys.readouterr().err
    assert (tmp_path / "s" / "checks.parquet").is_file()
    # the folder holds CUDA cells: resuming it on the CPU is refused with one line
    (tmp_path / "c.toml").write_text((tmp_path / "s.toml").read_text().replace('"cuda"', '"cpu"') + "batch_size = 1000\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(tmp_path / "c.toml"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "holds cells run on cuda, this run is on cpu" in err


def test_checks_on_cuda_match_the_cpu(fitted, tmp_path, capsys):
    from robench.checks import run_checks
    from robench.cli import main

    table = _eval("cpu", attacks=["fgsm", "pgd"], eps=["1/255", "2/255"], attack_params={"pgd": {"steps": 3}})
    cpu = run_checks(table, device="cpu", transfer_source=None)
    gpu = run_checks(table, device="cuda", transfer_source=None)
    assert list(cpu["check"]) == list(gpu["check"]) and list(cpu["status"]) == list(gpu["status"])
    z = lambda df: float(df.loc[df["check"] == "zero_gradient", "value"].iloc[0])  # noqa: E731
    assert z(cpu) == z(gpu)
    from robench.results import write_table

    write_table(table, tmp_path / "t")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["check", str(tmp_path / "t.parquet"), "--device", "cuda", "--transfer-source", "none"])
    assert e.value.code == 0, capsys.readouterr().err


def test_landscape_and_stability_on_cuda_match_the_cpu(fitted):
    kw = dict(models=["resnet20"], n=8, seed=0)
    land = {d: robench.landscape(points=5, directions=["grad_sign", "random"], device=d, **kw) for d in ("cpu", "cuda")}
    c, g = land["cpu"], land["cuda"]
    assert list(c["quantity"]) == list(g["quantity"])
    np.testing.assert_allclose(c["mean"].to_numpy(float), g["mean"].to_numpy(float), atol=1e-2, rtol=0)
    stab = {d: robench.stability(iters=3, device=d, **kw) for d in ("cpu", "cuda")}
    c, g = stab["cpu"], stab["cuda"]
    assert list(c["quantity"]) == list(g["quantity"])
    for q in ("log_gain", "lyapunov"):
        m = c["quantity"] == q
        np.testing.assert_allclose(c.loc[m, "mean"].to_numpy(float), g.loc[m, "mean"].to_numpy(float), atol=1e-2)
    for q in ("jacobian_norm", "grad_norm_l2", "grad_norm_l1"):
        m = c["quantity"] == q
        np.testing.assert_allclose(c.loc[m, "mean"].to_numpy(float), g.loc[m, "mean"].to_numpy(float), rtol=0.02)
    assert set(g["device_name"]) == {torch.cuda.get_device_name()}


def _cifar10c(root: Path) -> None:
    from robench.data import load_samples

    s = load_samples()
    root.mkdir(parents=True)
    for name in ("gaussian_noise", "impulse_noise"):
        np.save(root / f"{name}.npy", np.ascontiguousarray(np.concatenate([s.images[:4].numpy()] * 5)
                                                           .transpose(0, 2, 3, 1)))
    np.save(root / "labels.npy", np.concatenate([s.labels[:4].numpy()] * 5))


def test_corruptions_and_the_noise_protocol_on_cuda(fitted, tmp_path):
    from robench.analysis.noise_protocol import noise_protocol
    from robench.data import load_samples

    _cifar10c(tmp_path / "c10c")
    s = load_samples()
    write_cifar10(tmp_path / "clean", [(s.images.numpy(), s.labels.numpy())] * 5, (s.images.numpy(), s.labels.numpy()))
    kw = dict(corruptions=["gaussian_noise"], severities=[1, 5], n=4, corruption_dir=tmp_path / "c10c",
              data_dir=tmp_path / "clean")
    cpu, gpu = _eval("cpu", **kw), _eval("cuda", **kw)  # read from files: identical
    pd.testing.assert_series_equal(cpu["flags"], gpu["flags"])
    gen = {d: _eval(d, corruptions=["gaussian_noise", "fog"], severities=[3]) for d in ("cpu", "cuda")}
    for c, g in zip(gen["cpu"]["correct"], gen["cuda"]["correct"]):  # generated: the device's noise
        assert abs(int(c) - int(g)) <= 3
    files = ["gaussian_noise", "impulse_noise"]
    n_cpu = noise_protocol(models=["resnet20"], corruption_dir=tmp_path / "c10c", corruptions=files, device="cpu")
    n_gpu = noise_protocol(models=["resnet20"], corruption_dir=tmp_path / "c10c", corruptions=files, device="cuda")
    assert list(n_cpu["correct"]) == list(n_gpu["correct"])


def test_training_on_cuda_follows_the_cpu_run(tmp_path):
    from robench.data import Dataset
    from robench.train import train

    x, y = colour_images(128, seed=0)
    ds = Dataset("cifar10", "train", torch.from_numpy(x), torch.from_numpy(y), "synthetic", "0" * 64)
    runs = {d: train("resnet20", ds, ds, recipe="fast", epochs=2, batch_size=32, device=d, run_dir=tmp_path / d,
                     progress=False, log=lambda m: None) for d in ("cpu", "cuda")}
    for c, g in zip(runs["cpu"]["history"], runs["cuda"]["history"]):
        assert abs(c["loss"] - g["loss"]) <= 0.02 * abs(c["loss"]), (c, g)
    assert next(runs["cuda"]["model"].parameters()).is_cuda


def test_train_cli_on_cuda_records_tf32(tmp_path, capsys):
    from robench.cli import main

    x, y = colour_images(64, seed=1)
    write_cifar10(tmp_path / "data", [(x, y)] * 5, (x, y))
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "resnet20", "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--batch-size",
              "32", "--device", "cuda", "--tf32", "--out", str(tmp_path / "zoo"), "--run-dir", str(tmp_path / "run")])
    assert e.value.code == 0, capsys.readouterr().err
    import json

    card = json.loads((tmp_path / "zoo" / "resnet20.json").read_text())
    assert card["training"]["precision"] == "tf32" and card["training"]["device"].startswith("cuda:")


def test_autoattack_on_cuda_is_the_reference_on_cuda(fitted):
    """The cross-check of tests/test_attacks.py on the GPU: same flags as pyautoattack called directly."""
    from pyautoattack import AutoAttack

    from robench.data import load_samples
    from robench.executors import batch_seed, run_attack_group
    from robench.models import ModelCache

    net = ModelCache("cuda").get("resnet20", None).module
    x, y = load_samples().as_float("cuda")
    budget = BUDGET["autoattack"]
    (res,) = run_attack_group(net, x, y, attack="autoattack", eps=[1 / 255], backend=None, params=budget, seed=0,
                              batch_size=20)
    aa = AutoAttack(net, norm="Linf", eps=1 / 255, version="standard", seed=batch_seed(0, 0), device=x.device)
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = budget["steps"]
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = budget["target_classes"]
    aa.square.n_queries = budget["queries"]
    _, y_adv = aa.run_standard_evaluation(x.contiguous(), y, batch_size=20)  # the reference needs NCHW-contiguous
    np.testing.assert_array_equal(res.flags, (y_adv == y).cpu().numpy())


def test_hot_loops_synchronise_once_per_cell_on_cuda(fitted):
    """The clean loop and the landscape grid wait for the GPU once, whatever the number of batches."""
    from robench.analysis.landscape import per_example
    from robench.data import load_samples
    from robench.executors import _correct
    from robench.models import ModelCache

    net = ModelCache("cuda").get("resnet20", None).module
    x, y = load_samples().as_float("cuda")

    def syncs(fn) -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in seen)

    one = syncs(lambda: _correct(net, x, y, 20, "clean", lambda k: None))
    many = syncs(lambda: _correct(net, x, y, 2, "clean", lambda k: None))
    assert many == one <= 1
    kw = dict(directions=["grad_sign", "random"], points=5, seed=0)
    assert syncs(lambda: per_example(net, x, y, batch_size=2, **kw)) == syncs(lambda: per_example(net, x, y,
                                                                                                   batch_size=20, **kw))
