"""The CI regression (.ci/regression) is sweep configs + `robench regress`: its configs plan exactly the
committed baselines' cells and every shipped checkpoint; `--update` evaluates only new weights."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import model_zoo
from robench.plan import plan_cells
from robench.results import read_table, write_table
from robench.sweep import load_config

ROOT = Path(__file__).resolve().parents[1]


def _planned(set_name: str) -> set[tuple]:
    keys = set()
    for name in (f"regression_{set_name}.toml", f"regression_{set_name}_fixed_lam.toml"):
        spec = load_config(ROOT / "configs" / name).validate(check_device=False)
        for c in plan_cells(spec, n=spec.n or 20, dataset=spec.dataset_name):
            lam = 0.0 if c.lam is None and model_zoo.model_info(c.model).scheme == "euler" else c.lam
            keys.add((c.model, lam, c.kind, c.perturbation, None if c.eps is None else round(c.eps, 10),
                      c.severity, c.seed, c.n))
    return keys


def _table_keys(df: pd.DataFrame) -> set[tuple]:
    df = df[df["kind"] != "worst_case"]
    return {(m, None if pd.isna(lam) else float(lam), k, p, None if pd.isna(e) else round(float(e), 10),
             None if pd.isna(s) else int(s), int(seed), int(n))
            for m, lam, k, p, e, s, seed, n in zip(df["model"], df["lam"], df["kind"], df["perturbation"],
                                                   df["eps"], df["severity"], df["seed"], df["n"])}


@pytest.mark.parametrize("set_name", ["samples", "cifar1000"])
def test_regression_configs_plan_exactly_the_committed_baseline_cells(set_name):
    assert _planned(set_name) == _table_keys(read_table(ROOT / "results" / f"baseline_{set_name}.parquet"))


@pytest.mark.shipped_zoo
def test_regression_configs_cover_every_shipped_checkpoint():
    shipped = {(c.name, c.lam) for c in model_zoo.available(origin="shipped")}
    planned = {(m, None if lam == 0.0 and model_zoo.model_info(m).scheme == "euler" else lam)
               for m, lam, *_ in _planned("samples")}
    assert planned == shipped


def test_update_evaluates_only_weights_the_baseline_lacks(tmp_path, capsys):
    from engine_helpers import save_fitted

    from robench.cli import main

    save_fitted("resnet20")
    save_fitted("inresnet20", 0.5)
    cfg = tmp_path / "c.toml"
    cfg.write_text('models = ["resnet20", "inresnet20"]\nlams = [0.5]\nattacks = ["fgsm"]\neps = ["8/255"]\n'
                   'dataset = "samples"\nn = 4\n')
    base = tmp_path / "base"
    with pytest.raises(SystemExit) as e:  # the baseline holds resnet20 only, with a made-up timestamp
        main(["sweep", str(cfg), "--out", str(tmp_path / "full")])
    assert e.value.code == 0
    full = read_table(tmp_path / "full" / "results.parquet")
    old = full[full["model"] == "resnet20"].copy()
    old["timestamp"] = "kept"  # marks cells the update must keep as they are, not recompute
    write_table(old, base)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["regress", "--update", "--baseline", str(base) + ".parquet", "--config", str(cfg)])
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    assert "1 of 2 checkpoints lack cells" in out and "evaluating inresnet20 λ=0.5" in out
    new = read_table(str(base) + ".parquet")
    assert (new[new["model"] == "resnet20"]["timestamp"] == "kept").all()  # kept, not re-evaluated
    got = new[new["model"] == "inresnet20"].reset_index(drop=True)
    want = full[full["model"] == "inresnet20"].reset_index(drop=True)
    assert got["correct"].tolist() == want["correct"].tolist() and len(got) == 3  # clean, fgsm, worst case


def test_missing_baseline_and_refresh(tmp_path, capsys):
    from robench.cli import main
    from test_regress import table

    write_table(table(), tmp_path / "new")
    with pytest.raises(SystemExit) as e:
        main(["regress", "--baseline", str(tmp_path / "nope.parquet"), str(tmp_path / "new.parquet")])
    assert e.value.code == 2 and "nope.parquet does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["regress", "--refresh", "--baseline", str(tmp_path / "b.parquet"), str(tmp_path / "new.parquet")])
    assert e.value.code == 0
    pd.testing.assert_frame_equal(read_table(tmp_path / "b.parquet"), read_table(tmp_path / "new.parquet"))
