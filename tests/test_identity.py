"""What a cell is: its table key plus the batch size and device kind it ran with; a sweep folder holds one
setting of everything that can change a number (batch size, device kind, TF32, code, library versions,
the CIFAR-10-C copy), and regress matches cells on it (tables from before these columns included)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import model_zoo
from robench.errors import BadInput
from robench.regress import regress
from robench.results import pack_flags, read_table, to_frame, wilson, write_table
from robench.sweep import load_config, merge, plan_sweep, run_sweep

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_cifar import write_cifar10  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = 'models = ["resnet20"]\ndataset = "samples"\nn = 4\nattacks = ["fgsm"]\neps = ["8/255"]\n'


@pytest.fixture
def zoo():
    torch.manual_seed(0)
    m = model_zoo.create_model("resnet20")
    m.train()
    m(torch.rand(8, 3, 32, 32))
    model_zoo.save(m.eval(), model_zoo.user_zoo() / "resnet20")


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return load_config(p)


def _quiet(msg):
    pass


def test_a_sweep_folder_refuses_another_batch_size_or_device_kind(zoo, cfg, tmp_path):
    out = tmp_path / "sweep"
    run_sweep(plan_sweep(cfg, out=out), log=_quiet)
    meta = json.loads((out / "sweep.json").read_text())
    assert (meta["batch_size"], meta["device"], meta["tf32"]) == (256, "cpu", False)
    assert plan_sweep(cfg, out=out).pending == []  # the same settings resume
    with pytest.raises(BadInput, match=r"holds cells run at batch size 256, this run uses 2 .*another out folder, "
                                       r"or batch_size = 256"):
        plan_sweep(cfg.replace(batch_size=2), out=out)
    # a Ray driver plans for its workers' device without having it
    with pytest.raises(BadInput, match="holds cells run on cpu, this run is on cuda"):
        plan_sweep(cfg.replace(device="cuda", batch_size=256), out=out, executor="ray")
    # batch size and device kind are in every cell's identity and row
    part = json.loads(next((out / "cells").glob("*.json")).read_text())
    assert part["key"].endswith("256, 'cpu')") and part["record"]["batch_size"] == 256
    assert set(merge(out)["batch_size"]) == {256}


def test_a_sweep_folder_refuses_other_code_or_library_versions(zoo, cfg, tmp_path, monkeypatch):
    """Issue 27.5: a resumed sweep (or a worker) on another commit was mixed into the same table."""
    import robench.provenance as prov

    out = tmp_path / "sweep"
    run_sweep(plan_sweep(cfg, out=out), log=_quiet)
    assert json.loads((out / "sweep.json").read_text())["code"] == prov.code_fingerprint()
    monkeypatch.setattr(prov, "code_fingerprint", lambda: "f" * 64)
    with pytest.raises(BadInput, match="cells computed by other robench code"):
        plan_sweep(cfg, out=out)
    monkeypatch.undo()
    real = prov.library_versions()
    monkeypatch.setattr(prov, "library_versions", lambda: {**real, "torch": "9.9.9"})
    with pytest.raises(BadInput, match=re.escape(f"library versions (torch {real['torch']} → 9.9.9)")):
        plan_sweep(cfg, out=out)


def test_code_fingerprint_changes_with_any_source_byte(tmp_path):
    import shutil

    from robench.provenance import code_fingerprint

    for pkg in ("robench", "model_zoo"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    assert code_fingerprint(tmp_path) == code_fingerprint()  # a copy of the same code (weights are not code)
    base = tmp_path / "robench" / "attacks" / "base.py"
    base.write_text(base.read_text() + " ")  # one byte
    code_fingerprint.cache_clear()
    assert code_fingerprint(tmp_path) != code_fingerprint()


def test_a_store_from_an_older_robench_is_refused(zoo, cfg, tmp_path):
    out = tmp_path / "sweep"
    run_sweep(plan_sweep(cfg, out=out), log=_quiet)
    meta = json.loads((out / "sweep.json").read_text())
    (out / "sweep.json").write_text(json.dumps({**meta, "robench_sweep": 1}))
    with pytest.raises(BadInput, match="store version 1"):
        plan_sweep(cfg, out=out)


def _cifar10c(root: Path, brighten: int = 0) -> None:
    """A miniature CIFAR-10-C (5 severities × the first 4 bundled samples, their labels), its pixels
    raised by ``brighten`` (another copy of the same images)."""
    from robench.data import load_samples

    s = load_samples()
    root.mkdir(parents=True)
    images = np.clip(s.images[:4].numpy().astype(np.int16) + brighten, 0, 255).astype(np.uint8)
    np.save(root / "gaussian_noise.npy", np.ascontiguousarray(np.concatenate([images] * 5).transpose(0, 2, 3, 1)))
    np.save(root / "labels.npy", np.concatenate([s.labels[:4].numpy()] * 5))


def test_two_cifar10c_copies_never_mix_in_one_sweep_folder(zoo, tmp_path):
    """Issue 25.4: two sweeps into one folder with different corruption_dir copies (here the second's
    images differ) gave severity 1 from one copy and severity 2 from the other, no flag."""
    from robench.data import load_samples

    s = load_samples()
    write_cifar10(tmp_path / "clean", [(s.images.numpy(), s.labels.numpy())] * 5, (s.images.numpy(), s.labels.numpy()))
    _cifar10c(tmp_path / "c10c_a")
    _cifar10c(tmp_path / "c10c_b", brighten=9)
    base = f'models = ["resnet20"]\ndata_dir = "{tmp_path / "clean"}"\nn = 4\ncorruptions = ["gaussian_noise"]\n'
    (tmp_path / "a.toml").write_text(base + f'severities = [1]\ncorruption_dir = "{tmp_path / "c10c_a"}"\n')
    (tmp_path / "b.toml").write_text(base + f'severities = [2]\ncorruption_dir = "{tmp_path / "c10c_b"}"\n')
    out = tmp_path / "sweep"
    run_sweep(plan_sweep(load_config(tmp_path / "a.toml"), out=out), log=_quiet)
    with pytest.raises(BadInput, match="CIFAR-10-C gaussian_noise.npy differs from the copy"):
        plan_sweep(load_config(tmp_path / "b.toml"), out=out)
    # the same files elsewhere are the same copy
    import shutil

    shutil.copytree(tmp_path / "c10c_a", tmp_path / "c10c_a2")
    (tmp_path / "a2.toml").write_text(base + f'severities = [2]\ncorruption_dir = "{tmp_path / "c10c_a2"}"\n')
    run_sweep(plan_sweep(load_config(tmp_path / "a2.toml"), out=out), log=_quiet)
    assert sorted(merge(out).query("kind == 'corruption'")["severity"]) == [1, 2]


# -- regress matching ---------------------------------------------------------------------------------
def _rec(flags, *, batch_size=None, device=None, kind="clean", pert="none", eps=None, backend=None):
    flags = np.asarray(flags, dtype=bool)
    n, correct = len(flags), int(flags.sum())
    lo, hi = wilson(correct, n)
    r = dict(model="resnet20", scheme="euler", lam=0.0, dataset="samples", n=n, kind=kind, perturbation=pert,
             backend=backend, eps=eps, severity=None, seed=0, correct=correct, accuracy=correct / n, ci_low=lo,
             ci_high=hi, data_sha256="d" * 64, flags=pack_flags(flags), batch_size=batch_size, device=device)
    return r


def test_regress_matches_batch_size_and_device_kind():
    f = np.arange(20) % 3 != 0
    old = to_frame([_rec(f, device="cpu"), _rec(f, kind="attack", pert="pgd", eps=8 / 255, backend="art")])
    new = to_frame([_rec(f, batch_size=256, device="cpu"),
                    _rec(f, batch_size=256, device="cpu", kind="attack", pert="pgd", eps=8 / 255, backend="art")])
    # a baseline without batch sizes (tables before the column) matches any; no device column = cpu
    rep = regress(old, new)
    assert len(rep.diff) == 2 and rep.ok and not rep.missing and not rep.new
    # with batch sizes on both sides they must agree: another batch size is another cell
    other = to_frame([_rec(f, batch_size=100, device="cpu"),
                      _rec(f, batch_size=256, device="cpu", kind="attack", pert="pgd", eps=8 / 255, backend="art")])
    rep = regress(new, other)
    assert len(rep.diff) == 1 and len(rep.missing) == 1 and len(rep.new) == 1 and not rep.ok
    from robench.regress import describe

    assert describe(rep.missing[0]).endswith("[cpu, batch 256]") and describe(rep.new[0]).endswith("[cpu, batch 100]")
    # another device kind is another cell, even for a baseline without batch sizes
    gpu = to_frame([_rec(f, batch_size=1000, device="cuda:0 (NVIDIA H200)")])
    with pytest.raises(BadInput, match="no cell in common.*batch size and device kind"):
        regress(old, gpu)
    # a baseline without batch size cannot choose between two batch sizes
    two = to_frame([_rec(f, batch_size=100, device="cpu"), _rec(f, batch_size=256, device="cpu")])
    with pytest.raises(BadInput, match="at batch sizes 100, 256"):
        regress(old, two)


@pytest.mark.shipped_zoo
def test_committed_baseline_matches_a_fresh_sweep_subset(tmp_path):
    """The CI baselines predate the batch_size column: a fresh sweep of some of their cells (which records
    batch size 256 and the CPU) matches them cell for cell (`bash .ci/regression` compares the rest)."""
    base = read_table(ROOT / "results" / "baseline_samples.parquet")
    assert base["batch_size"].isna().all() and set(base["device"]) == {"cpu"}
    cfg = tmp_path / "subset.toml"
    cfg.write_text('models = ["resnet20"]\nattacks = ["fgsm"]\neps = ["8/255"]\ndataset = "samples"\nseeds = [0]\n')
    df = run_sweep(plan_sweep(load_config(cfg), out=tmp_path / "sweep"), log=_quiet)
    assert set(df["batch_size"]) == {256}
    sub = base[(base["model"] == "resnet20") & base["perturbation"].isin(["none", "fgsm"])
               & ((base["eps"].isna()) | np.isclose(base["eps"].fillna(0), 8 / 255))]
    rep = regress(sub, df)
    assert not rep.missing and len(rep.diff) == len(sub) and rep.ok
    assert (rep.diff["status"] == "same").all()
