"""Regression of robustness numbers: identical passes, a significant drop fails and names the cell,
noise-level changes pass; paired (McNemar) where per-example flags allow it."""
import numpy as np
import pytest

from robench.errors import BadInput
from robench.regress import regress
from robench.results import pack_flags, to_frame, wilson, write_table

E8 = 8 / 255


def rec(model, lam, kind, pert, flags, *, eps=None, sev=None, backend=None, scheme="damped", with_flags=True):
    flags = np.asarray(flags, dtype=bool)
    n, correct = len(flags), int(flags.sum())
    lo, hi = wilson(correct, n)
    return dict(model=model, scheme=scheme, lam=lam, dataset="samples", n=n, kind=kind, perturbation=pert,
                backend=backend, eps=eps, severity=sev, seed=0, correct=correct, accuracy=correct / n, ci_low=lo,
                ci_high=hi, data_sha256="d" * 64, weights_sha256="w" * 64,
                flags=pack_flags(flags) if with_flags else None)


def bits(n, correct, offset=0):
    f = np.zeros(n, dtype=bool)
    f[offset:offset + correct] = True
    return f


def table(resnet_clean=bits(200, 150), with_flags=True):
    kw = dict(with_flags=with_flags)
    return to_frame([
        rec("resnet20", 0.0, "clean", "none", resnet_clean, scheme="euler", **kw),
        rec("resnet20", 0.0, "attack", "pgd", bits(200, 40), eps=E8, backend="art", scheme="euler", **kw),
        rec("inresnet20", 0.5, "clean", "none", bits(200, 140), **kw),
        rec("inresnet20", 0.5, "attack", "pgd", bits(200, 60), eps=E8, backend="art", **kw),
        rec("inresnet20", 0.5, "corruption", "gaussian_noise", bits(200, 120), sev=3, **kw),
    ])


def run_cli(tmp_path, base, new, capsys, *extra):
    from robench.cli import main

    write_table(base, tmp_path / "base")
    write_table(new, tmp_path / "new")
    with pytest.raises(SystemExit) as e:
        main(["regress", "--baseline", str(tmp_path / "base.parquet"), str(tmp_path / "new.csv"), *extra])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_identical_tables_pass(tmp_path, capsys):
    code, out, err = run_cli(tmp_path, table(), table(), capsys)
    assert code == 0, err
    assert "5 matched cells, 0 significant regressions" in out and "REGRESSION" not in out


def test_significant_drop_fails_and_names_the_cell(tmp_path, capsys):
    code, out, err = run_cli(tmp_path, table(), table(resnet_clean=bits(200, 100)), capsys)
    assert code == 1
    assert "regression: resnet20 λ=0 clean seed=0 n=200 (samples)" in err
    line = next(l for l in out.splitlines() if "REGRESSION" in l)
    assert "resnet20 λ=0 clean" in line and "75.00%" in line and "50.00%" in line and "mcnemar" in line
    assert "1 significant regression " in out


def test_noise_level_change_passes(tmp_path, capsys):
    # 150 → 147 of 200 right, three examples flipped: p = 1/8 for McNemar, ≈0.33 for the z-test
    noisy = bits(200, 150)
    noisy[[3, 50, 99]] = False
    code, out, err = run_cli(tmp_path, table(), table(resnet_clean=noisy), capsys)
    assert code == 0, err
    assert "worse" in out and "REGRESSION" not in out


def test_paired_test_sees_what_unpaired_cannot():
    # 150 → 140: ten examples lost, none gained. McNemar: p = 2^-10 ≈ 0.001; two-proportion z: p ≈ 0.13
    drop = bits(200, 140)
    rep = regress(table(), table(resnet_clean=drop))
    cell = rep.diff[(rep.diff["model"] == "resnet20") & (rep.diff["kind"] == "clean")].iloc[0]
    assert cell["test"] == "mcnemar" and cell["worse"] == 10 and cell["better"] == 0
    assert cell["p_value"] == pytest.approx(2 ** -10) and not rep.ok
    rep = regress(table(with_flags=False), table(resnet_clean=drop, with_flags=False))
    cell = rep.diff[(rep.diff["model"] == "resnet20") & (rep.diff["kind"] == "clean")].iloc[0]
    assert cell["test"] == "z" and cell["p_value"] == pytest.approx(0.1314, abs=1e-3) and rep.ok
    # same accuracy, but 10 examples swapped each way: no regression
    swapped = bits(200, 150)
    swapped[:10] = False
    swapped[150:160] = True
    assert regress(table(), table(resnet_clean=swapped)).ok
    # different data (fingerprint) → the unpaired test, even with flags
    other = table(resnet_clean=drop)
    other["data_sha256"] = "e" * 64
    assert regress(table(), other).diff["test"].eq("z").all()


def test_missing_and_new_cells_are_listed(tmp_path, capsys):
    base = table()
    new = table().iloc[1:].copy()
    extra = to_frame([rec("lmresnet20", float("nan"), "clean", "none", bits(200, 150), scheme="lm")])
    import pandas as pd

    code, out, err = run_cli(tmp_path, base, pd.concat([new, extra], ignore_index=True), capsys)
    assert code == 1  # a baseline cell the results lack fails by default
    assert "missing (only in the baseline; fails unless --allow-missing): 1\n  resnet20 λ=0 clean seed=0 n=200 (samples)" in out
    assert "new (only in the results): 1\n  lmresnet20 λ=learned/– clean seed=0 n=200 (samples)" in out
    assert "1 baseline cells are not in the results" in err and "--allow-missing" in err
    code, out, err = run_cli(tmp_path, base, pd.concat([new, extra], ignore_index=True), capsys, "--allow-missing")
    assert code == 0, err
    assert "missing (only in the baseline; accepted by --allow-missing): 1" in out


def _worst(attacks_flags: dict, *, attacks_col=True, complete=True):
    """One model's attack cells and their worst case (the AND of the given attacks) at 8/255."""
    import pandas as pd

    rows = [rec("resnet20", 0.0, "clean", "none", bits(200, 180), scheme="euler")]
    wc = bits(200, 180)
    for name, f in attacks_flags.items():
        rows.append(rec("resnet20", 0.0, "attack", name, f, eps=E8, backend="art", scheme="euler"))
        wc = wc & f
    rows.append(rec("resnet20", 0.0, "worst_case", "worst_case", wc, eps=E8, scheme="euler"))
    df = to_frame(rows)
    if attacks_col:
        df["attacks"] = [("+".join(sorted(attacks_flags)) if k == "worst_case" else None) for k in df["kind"]]
        df["complete"] = pd.array([(complete if k == "worst_case" else None) for k in df["kind"]], dtype="boolean")
    return df


@pytest.mark.parametrize("attacks_col", [True, False])
def test_worst_cases_of_different_attacks_are_not_compared(tmp_path, capsys, attacks_col):
    fgsm, pgd = bits(200, 70), bits(200, 6)
    base = _worst({"fgsm": fgsm}, attacks_col=attacks_col)           # worst case of FGSM alone: 35 %
    new = _worst({"fgsm": fgsm, "pgd": pgd}, attacks_col=attacks_col)  # FGSM + PGD: 3 %
    rep = regress(base, new)
    assert rep.ok and rep.regressions.empty and "worst_case" not in set(rep.diff["kind"])
    assert len(rep.incomparable) == 1 and "baseline is the AND of fgsm, results of fgsm+pgd" in rep.incomparable[0][1]
    swapped = regress(new, base, allow_missing=True)
    assert "worst_case" not in set(swapped.diff["kind"]) and swapped.regressions.empty
    code, out, err = run_cli(tmp_path, base, new, capsys)
    assert code == 0 and "not comparable (worst cases of different attacks or unfinished): 1" in out


def test_incomplete_worst_case_is_not_compared_but_complete_ones_are():
    f, g = bits(200, 70), bits(200, 30)
    base = _worst({"fgsm": f, "pgd": g})
    rep = regress(base, _worst({"fgsm": f, "pgd": bits(200, 2)}, complete=False))
    assert "the results worst case is incomplete" in rep.incomparable[0][1]
    rep = regress(base, _worst({"fgsm": f, "pgd": bits(200, 2)}))
    assert rep.diff.set_index("kind").loc["worst_case", "status"] == "REGRESSION" and not rep.ok


def test_no_matching_cells_and_duplicates_are_bad_input(tmp_path, capsys):
    other = table()
    other["seed"] = 1  # the seed is part of the key (a table with n=100 but 150 correct is refused as corrupt)
    code, out, err = run_cli(tmp_path, table(), other, capsys)
    assert code == 2 and err.startswith("error: the baseline has no cell in common") and len(err.splitlines()) == 1
    import pandas as pd

    with pytest.raises(BadInput, match="same cell more than once"):
        regress(table(), pd.concat([table(), table().iloc[:1]], ignore_index=True))


def test_a_cell_without_a_data_checksum_on_one_side_is_compared_without_pairing():
    """Found by the hostile-table property test: a new table whose row has no data_sha256 (NA) made the
    pairing test `NA == sha` (no truth value) raise a TypeError; such cells are compared unpaired."""
    import pandas as pd

    from robench.regress import compare_cell
    from robench.results import pack_flags

    flags = [True, True, False, False]
    base = pd.Series({"n": 4, "correct": 2, "flags": pack_flags(flags), "data_sha256": "d" * 64})
    new = pd.Series({"n": 4, "correct": 2, "flags": pack_flags(flags), "data_sha256": pd.NA})
    out = compare_cell(base, new)
    assert out["test"] != "mcnemar" and not out["regressed"]
