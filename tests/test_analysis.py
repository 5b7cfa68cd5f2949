"""Landscape, stability and the reference noise protocol on models whose answers are known."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from robench.analysis import landscape as ls
from robench.analysis import stability as st
from robench.analysis.noise_protocol import noise_protocol, evaluate_file
from robench.errors import BadInput


def _scaled_orthogonal(dim: int, scale: float, seed: int) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    lin = nn.Linear(dim, dim, bias=True)
    with torch.no_grad():
        lin.weight.copy_((scale * q).float())
        lin.bias.normal_(generator=g)  # a bias shifts states but not their differences
    return lin


def test_lyapunov_of_known_linear_maps_equals_mean_log_scale():
    scales = [2.0, 0.5, 3.0, 0.25, 1.5]
    net = nn.Sequential(*[_scaled_orthogonal(16, a, i) for i, a in enumerate(scales)], nn.Identity()).eval()
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(0))
    delta = 1e-2 * torch.randn(7, 16, generator=torch.Generator().manual_seed(1))
    gains = st.block_gains(net, x, delta, taps=list(net))
    assert gains.shape == (7, len(scales))
    np.testing.assert_allclose(gains, np.tile(scales, (7, 1)), rtol=1e-4)
    np.testing.assert_allclose(st.lyapunov(gains), np.mean(np.log(scales)), rtol=1e-4, atol=1e-5)


def test_jacobian_norm_of_linear_model_is_its_largest_singular_value():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6)).eval()
    x = torch.rand(5, 3, 2, 2)
    sigma = torch.linalg.svdvals(model[1].weight.detach().double())[0].item()
    est = st.jacobian_norm(model, x, iters=60, seed=3)
    assert est.shape == (5,)
    np.testing.assert_allclose(est, sigma, rtol=1e-4)


def _tiny_resnet(scheme="damped", lam=0.5):
    from model_zoo.resnet import CifarResNet

    torch.manual_seed(0)
    return CifarResNet(layers=(2, 2, 2), stem_width=4, widths=(4, 8, 8), scheme=scheme, lam=lam).eval()


def test_landscape_at_t0_equals_the_clean_loss():
    model = _tiny_resnet()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g)
    vals = ls.per_example(model, x, y, directions=("grad_sign", "random"), points=5, n_random=2, batch_size=4)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none").double().numpy()
    for key in (("grad_sign", 0), ("random", 0), ("random", 1)):
        ts, loss, correct = vals[key]
        zero = int(np.flatnonzero(ts == 0.0)[0])
        np.testing.assert_allclose(loss[zero], clean, rtol=1e-5)
        assert np.isclose(ts, 8 / 255).any()  # the flatness point is always on the grid
    # the two random directions differ, and the gradient direction climbs at small t
    assert not np.allclose(vals[("random", 0)][1], vals[("random", 1)][1])
    ts, loss, _ = vals[("grad_sign", 0)]
    assert loss[np.isclose(ts, 8 / 255)].mean() > loss[ts == 0.0].mean()
    rows = ls.aggregate(vals)
    at0 = [r for r in rows if r["quantity"] == "loss" and r["t"] == 0.0 and r["direction"] == "grad_sign"]
    assert math.isclose(at0[0]["mean"], clean.mean(), rel_tol=1e-6)


def test_stability_rows_carry_the_damping_profile_and_one_gain_per_block():
    model = _tiny_resnet(scheme="lambda_damped", lam=None)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    vals = st.per_example(model, x, y, iters=3, batch_size=3)
    assert vals["gain_random"].shape == (4, len(model.blocks))
    rows = st.aggregate(model, vals)
    coefs = [(r["block"], r["mean"]) for r in rows if r["quantity"] == "coef"]
    assert coefs == [(d["block"], d["value"]) for d in model.damping()]
    assert {r["quantity"] for r in rows} >= {"gain", "lyapunov", "lyapunov_damped", "jacobian_norm", "grad_norm_l2"}


def test_bad_direction_is_bad_input():
    model = _tiny_resnet()
    with pytest.raises(BadInput, match="valid choices: grad_sign, pgd, random"):
        ls.per_example(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), directions=("uphill",))


class _Brightness(nn.Module):
    """Class 1 when the normalised red channel is positive on average, else class 0."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1)  # a parameter, so the model can be moved like a real one
        self.register_buffer("mean", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1))

    def forward(self, x):
        s = ((x - self.mean) / self.std)[:, 0].mean((1, 2))
        return torch.stack([-s, s], dim=1)


def _write_c10c(root, per: int, levels):
    imgs = np.concatenate([np.full((per, 32, 32, 3), round(v * 255), dtype=np.uint8) for v in levels])
    np.save(root / "gaussian_noise.npy", imgs)
    np.save(root / "labels.npy", np.ones(len(imgs), dtype=np.int64))


def test_reference_protocol_normalises_per_file_and_pools_severities(tmp_path):
    # brightness per severity; the file mean is 0.2 (below CIFAR's 0.49): per-file normalisation makes
    # severities 4-5 "bright" (class 1, correct) while the fixed normalisation calls every image dark
    levels = (0.05, 0.1, 0.15, 0.3, 0.4)
    _write_c10c(tmp_path, 3, levels)
    rows = evaluate_file(_Brightness(), tmp_path, "gaussian_noise")
    pooled = {r["protocol"]: r for r in rows if r["severity"] is None}
    assert pooled["reference"]["total"] == 15 and pooled["reference"]["correct"] == 6
    assert pooled["standard"]["correct"] == 0
    ref = {r["severity"]: r["accuracy"] for r in rows if r["protocol"] == "reference" and r["severity"]}
    assert ref == {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 1.0}
    mean = np.mean([round(v * 255) / 255 for v in levels])
    assert pooled["reference"]["file_mean"].split(",")[0] == f"{mean:.6f}"
    # n evaluates the first n of each severity but keeps the whole file's statistics
    rows2 = evaluate_file(_Brightness(), tmp_path, "gaussian_noise", n=1)
    pooled2 = {r["protocol"]: r for r in rows2 if r["severity"] is None}
    assert pooled2["reference"]["total"] == 5 and pooled2["reference"]["correct"] == 2
    assert pooled2["reference"]["file_mean"] == pooled["reference"]["file_mean"]


def test_noise_protocol_missing_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="needs the clean CIFAR-10 test split"):
        noise_protocol(models=["resnet20"], corruption_dir=tmp_path, corruptions=["shot_noise"])


def test_landscape_and_stability_cli_write_tables_and_refuse_bad_input(tmp_path):
    import pandas as pd
    from click.testing import CliRunner

    from model_zoo import create_model
    from model_zoo.checkpoint import save
    from robench.cli import cli

    torch.manual_seed(0)
    save(create_model("resnet20"), tmp_path / "r20.safetensors", {"name": "resnet20"})
    ckpt = str(tmp_path / "r20.safetensors")
    runner = CliRunner()
    out = runner.invoke(cli, ["landscape", "--model", ckpt, "--n", "2", "--points", "5", "--out", str(tmp_path / "ls")])
    assert out.exit_code == 0, out.output
    df = pd.read_parquet(tmp_path / "ls.parquet")
    assert set(df["direction"]) == {"grad_sign", "pgd", "random"} and set(df["n"]) == {2}
    assert df["data_sha256"].notna().all() and df["weights_sha256"].notna().all() and set(df["origin"]) == {"file"}
    # issue 24.5: a progress line per direction of each batch, not one per model
    lines = [ln for ln in out.output.splitlines() if ln.startswith("landscape ")]
    assert [ln.split(": ", 1)[1].split(",")[0] for ln in lines] == ["0/2 images (grad_sign)", "1/2 images (pgd)",
                                                                    "2/2 images (random0)"]
    assert "ETA" in lines[0] and "ETA" not in lines[-1]
    assert set(df["data_label"]) == {"CIFAR-10 samples (foolbox, 20 PNG originals)"}
    out = runner.invoke(cli, ["stability", "--model", ckpt, "--n", "2", "--iters", "2", "--out", str(tmp_path / "st")])
    assert out.exit_code == 0, out.output
    lines = [ln.split(": ", 1)[1].split(",")[0] for ln in out.output.splitlines() if ln.startswith("stability ")]
    assert lines == ["1/2 images (gradients and gains)", "2/2 images (Jacobian norm)"]
    st_df = pd.read_parquet(tmp_path / "st.parquet")
    assert (st_df["quantity"] == "gain").sum() == 2 * 9  # two perturbations × nine blocks of ResNet-20
    seen = []
    st.stability(models=[ckpt, ckpt], n=2, iters=1, log=lambda s: None, on_model=lambda part: seen.append(len(part)))
    assert seen == [len(st_df), 2 * len(st_df)]  # the table so far after every model
    bad = runner.invoke(cli, ["landscape", "--model", ckpt, "--direction", "uphill", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "valid choices: grad_sign, pgd, random" in str(bad.exception)
    assert not (tmp_path / "x.parquet").exists()


def test_the_analyses_are_reachable_from_the_package():
    import robench

    assert robench.landscape is ls.landscape and robench.stability is st.stability


def test_noise_protocol_cli_writes_both_protocols(tmp_path):
    import pandas as pd
    from click.testing import CliRunner

    from model_zoo import create_model
    from model_zoo.checkpoint import save
    from robench.cli import cli

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic_cifar import write_cifar10

    save(create_model("resnet20"), tmp_path / "r20.safetensors", {"name": "resnet20"})
    _write_c10c(tmp_path, 2, (0.05, 0.1, 0.15, 0.3, 0.4))
    clean = (np.zeros((2, 3, 32, 32), dtype=np.uint8), np.ones(2, dtype=np.int64))  # the labels CIFAR-10-C repeats
    write_cifar10(tmp_path / "clean", [clean] * 5, clean)
    out = CliRunner().invoke(cli, ["noise-protocol", "--model", str(tmp_path / "r20.safetensors"), "--corruption-dir",
                                   str(tmp_path), "--data-dir", str(tmp_path / "clean"), "--corruption",
                                   "gaussian_noise", "--out", str(tmp_path / "np")])
    assert out.exit_code == 0, out.output
    df = pd.read_parquet(tmp_path / "np.parquet")
    assert len(df) == 2 * 6 and set(df["protocol"]) == {"standard", "reference"}
    pooled = df[df["severity"].isna()]
    assert list(pooled["total"]) == [10, 10] and (df["analysis"] == "noise_protocol").all()
