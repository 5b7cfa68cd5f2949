"""Paired statistics (robench.inference) and the paired comparison of two models (robench.compare)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import robench
from robench import inference
from robench.errors import BadInput
from robench.results import write_table

sys.path.insert(0, str(Path(__file__).parent))
from table_builders import first, flags_2x2, row, table  # noqa: E402

# ------------------------------------------------------------------------------------ the statistics


def test_mcnemar_exact_is_scipys_two_sided_binomial_test():
    for b in range(0, 31):
        for c in range(0, 31):
            want = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
            assert inference.mcnemar_exact(b, c) == pytest.approx(want, rel=1e-12, abs=1e-300), (b, c)


def test_paired_interval_matches_the_published_example_through_a_table_with_known_flags():
    # Cavo et al. (2012) in Fagerland, Lydersen & Laake (Stat Med 2014; book 2017, ch. 8): 59 both, 6 only
    # the first, 16 only the second, 80 neither; Newcombe square-and-add: -0.0621 (95 % CI -0.1186 to -0.0046)
    fa, fb = flags_2x2(59, 6, 16, 80)  # "the first" is B: B right alone on 6 images, A right alone on 16
    t = table([row("resnet20", fa), row("inresnet20", fb, scheme="damped", lam=math.nan)])
    out = robench.compare(t, a="resnet20", b="inresnet20")
    r = out.iloc[0]
    assert r["cell"] == "clean" and r["n"] == 161
    assert r["effect"] == pytest.approx(-10 / 161)
    assert round(r["ci_low"], 4) == -0.1186 and round(r["ci_high"], 4) == -0.0046
    assert r["p"] == pytest.approx(stats.binomtest(6, 22, 0.5).pvalue)
    assert (r["b_only"], r["a_only"], r["both"], r["neither"]) == (6, 16, 59, 80)


def test_paired_interval_hand_computed_with_zero_correlation_branch():
    # 1 both, 1 only B, 7 only A, 12 neither (n = 21). By hand: p_B = 2/21, p_A = 8/21, d = -6/21 = -0.285714.
    # Wilson 95 %: B [0.026519, 0.289141], A [0.207510, 0.591213]; ad - bc = 12 - 7 = 5 ≤ n/2 → φ = 0, so
    # L = d - sqrt((p_B - l_B)² + (u_A - p_A)²) = -0.285714 - sqrt(0.068719² + 0.210261²) = -0.506920
    # U = d + sqrt((p_A - l_A)² + (u_B - p_B)²) = -0.285714 + sqrt(0.173442² + 0.193903²) = -0.025559
    a, b = flags_2x2(1, 1, 7, 12)
    est, counts = inference.paired_flags(a, b)
    assert counts == {"both": 1, "b_only": 1, "a_only": 7, "neither": 12}
    assert est.effect == pytest.approx(-6 / 21)
    assert est.ci_low == pytest.approx(-0.506920, abs=2e-6) and est.ci_high == pytest.approx(-0.025559, abs=2e-6)
    assert est.p == pytest.approx(2 * stats.binom.cdf(1, 8, 0.5))


def test_paired_interval_is_far_narrower_than_two_independent_wilson_intervals():
    # the reason for pairing: 1000 images, B right on 30 more of them and nothing else differs
    a, b = first(500, 1000), first(530, 1000)
    est, _ = inference.paired_flags(a, b)
    assert est.ci_low > 0 and est.p < 1e-8  # 30 discordant pairs, all one way
    lo_a, hi_a = stats.binomtest(500, 1000).proportion_ci(method="wilson")
    lo_b, hi_b = stats.binomtest(530, 1000).proportion_ci(method="wilson")
    assert lo_b < hi_a  # the unpaired intervals overlap: they could not tell these two apart


def test_holm_hand_worked():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone: 0.06
    got = inference.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02])
    got = inference.holm([0.5, float("nan"), 0.2])  # NaN neither counts nor moves
    assert math.isnan(got[1]) and got[0] == pytest.approx(0.5) and got[2] == pytest.approx(0.4)


def _seeded_table(b_right: list[int], a_right: list[int], n: int = 400):
    rows = [row("resnet20" + ("" if s == 0 else f".s{s}"), first(k, n)) for s, k in enumerate(a_right)]
    rows += [row("inresnet20" + ("" if s == 0 else f".s{s}"), first(k, n), scheme="damped", lam=math.nan)
             for s, k in enumerate(b_right)]
    return table(rows)


def test_across_seed_interval_narrows_when_seeds_agree_and_widens_when_they_disagree():
    agree = robench.compare(_seeded_table([240, 240, 240], [200, 200, 200]), a="resnet20", b="inresnet20",
                            seeds="all").iloc[0]
    disagree = robench.compare(_seeded_table([180, 240, 300], [200, 200, 200]), a="resnet20", b="inresnet20",
                               seeds="all").iloc[0]
    for r in (agree, disagree):
        assert r["effect"] == pytest.approx(0.1) and r["n_seeds_a"] == 3 and r["n_seeds_b"] == 3
        assert r["models_b"] == "inresnet20,inresnet20.s1,inresnet20.s2"
    # agreeing seeds: only the paired image part is left (40 of 400 images differ: se = sqrt(.1·.9/399))
    assert agree["ci_high"] - agree["ci_low"] == pytest.approx(2 * 1.966 * math.sqrt(0.1 * 0.9 / 399), rel=0.01)
    assert agree["p"] < 1e-10
    # disagreeing seeds (45, 60, 75 %): the seed level dominates, with ~2 degrees of freedom
    assert disagree["ci_high"] - disagree["ci_low"] > 5 * (agree["ci_high"] - agree["ci_low"])
    assert disagree["ci_low"] < 0 < disagree["ci_high"] and disagree["p"] > 0.05 and disagree["df"] < 3


def test_the_default_compares_seed_zero_and_seeds_all_takes_every_variant():
    t = _seeded_table([240, 250], [200, 190])
    one = robench.compare(t, a="resnet20", b="inresnet20").iloc[0]
    assert one["models_a"] == "resnet20" and one["test"] == "mcnemar_exact" and one["effect"] == pytest.approx(0.1)
    both = robench.compare(t, a="resnet20", b="inresnet20", seeds="all").iloc[0]
    assert both["models_a"] == "resnet20,resnet20.s1" and both["effect"] == pytest.approx(0.125)


def test_spearman_permutation_p_is_scipys_exact_permutation_test():
    x = [0.21, 0.18, 0.15, 0.11, 0.10, 0.07]
    y = [0.013, 0.017, 0.021, 0.024, 0.019, 0.031]
    est = inference.spearman(x, y)

    def rho(u, v, axis=-1):  # Spearman without ties: Pearson of the ranks, vectorised for scipy
        ru, rv = stats.rankdata(u, axis=axis), stats.rankdata(v, axis=axis)
        ru, rv = ru - ru.mean(axis=axis, keepdims=True), rv - rv.mean(axis=axis, keepdims=True)
        return (ru * rv).sum(axis=axis) / np.sqrt((ru * ru).sum(axis=axis) * (rv * rv).sum(axis=axis))

    ref = stats.permutation_test((x, y), rho, permutation_type="pairings", n_resamples=np.inf,
                                 alternative="two-sided", vectorized=True)
    assert est.effect == pytest.approx(stats.spearmanr(x, y).statistic)
    assert est.p == pytest.approx(ref.pvalue)
    assert est.ci_low < est.effect < est.ci_high


# -------------------------------------------------------------------------------------- refusals


def _pair(**b_kw):
    f = first(50, 100)
    return table([row("resnet20", f, kind="attack", perturbation="pgd", eps=8 / 255, steps=20),
                  row("inresnet20", f, scheme="damped", lam=math.nan, kind="attack", perturbation="pgd", eps=8 / 255,
                      **{"steps": 20, **b_kw})])


@pytest.mark.parametrize("b_kw, words", [
    (dict(data="e" * 64), "different data"),
    (dict(seed=1), "different evaluation seeds"),
    (dict(steps=10), "protocol (steps)"),
    (dict(backend="foolbox"), "protocol (backend)"),
    (dict(dataset="cifar100"), "different data sets"),
])
def test_unpaired_cells_are_refused_with_one_line(b_kw, words):
    with pytest.raises(BadInput) as e:
        robench.compare(_pair(**b_kw), a="resnet20", b="inresnet20")
    msg = str(e.value)
    assert "pgd@8/255" in msg and words in msg and "\n" not in msg


def test_different_n_and_worst_cases_of_different_attacks_are_refused():
    t = table([row("resnet20", first(50, 100), kind="worst_case", perturbation="worst_case", eps=8 / 255,
                   attacks="fgsm+pgd", complete=True),
               row("inresnet20", first(50, 100), scheme="damped", lam=math.nan, kind="worst_case",
                   perturbation="worst_case", eps=8 / 255, attacks="fgsm+ifgsm+pgd", complete=True)])
    with pytest.raises(BadInput, match="worst cases of different attacks"):
        robench.compare(t, a="resnet20", b="inresnet20")
    t = table([row("resnet20", first(50, 100)), row("inresnet20", first(50, 90), scheme="damped", lam=math.nan)])
    with pytest.raises(BadInput, match=r"different n \(images\) \(100 vs 90\)"):
        robench.compare(t, a="resnet20", b="inresnet20")


def test_missing_flags_two_runs_of_a_cell_and_bad_model_choices_are_refused():
    t = _pair()
    t.loc[1, "flags"] = None
    with pytest.raises(BadInput, match="inresnet20 has no per-example flags"):
        robench.compare(t, a="resnet20", b="inresnet20")
    t = _pair()
    rerun = _pair().iloc[[0]].assign(flags=row("resnet20", first(49, 100))["flags"], correct=49)
    with pytest.raises(BadInput, match="appears twice with different results"):
        robench.compare([t, rerun], a="resnet20", b="inresnet20")
    assert len(robench.compare([t, _pair()], a="resnet20", b="inresnet20")) == 1  # the same run twice is fine
    with pytest.raises(BadInput, match="not in the tables; models there: inresnet20, resnet20"):
        robench.compare(t, a="resnet20", b="lmresnet20")
    t2 = table([*t.to_dict("records"), row("inresnet20", first(50, 100), scheme="damped", lam=0.5,
                                           kind="attack", perturbation="pgd", eps=8 / 255, steps=20)])
    with pytest.raises(BadInput, match=r"several λ in the tables \(0.5, learned\)"):
        robench.compare(t2, a="resnet20", b="inresnet20")
    assert robench.compare(t2, a="resnet20", b="inresnet20@0.5").iloc[0]["b"] == "inresnet20@0.5"


# ------------------------------------------------------------------------------------------ the CLI


def _cli(capsys, *argv):
    from robench.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_compare_prints_the_table_and_writes_it(tmp_path, capsys):
    write_table(_pair(), tmp_path / "t")
    code, out, err = _cli(capsys, "compare", tmp_path / "t.parquet", "--a", "resnet20", "--b", "inresnet20",
                          "-o", tmp_path / "cmp")
    assert code == 0, err
    assert "| pgd@8/255 | 50.0 | 50.0 | +0.00 |" in out and "one seed per model" in out.lower()
    assert (tmp_path / "cmp.parquet").exists() and (tmp_path / "cmp.csv").exists()


@pytest.mark.parametrize("args, words", [
    (["--a", "resnet20", "--b", "nope"], "'nope' is not in the tables"),
    (["--a", "resnet20", "--b", "inresnet20@0.5", "--lam", "0.5"], "give it once"),
    (["--a", "resnet20", "--b", "inresnet20", "--lam", "2"], "[0, 1]"),
    (["--a", "resnet20", "--b", "inresnet20", "--seeds", "3"], "--seeds"),
    (["--a", "resnet20", "--b", "inresnet20", "--alpha", "1.5"], "alpha"),
])
def test_cli_compare_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, words):
    write_table(_pair(data="e" * 64), tmp_path / "t")
    code, out, err = _cli(capsys, "compare", tmp_path / "t.parquet", *args, "-o", tmp_path / "cmp")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert words in err and "Traceback" not in err + out
    assert not (tmp_path / "cmp.parquet").exists()


def test_cli_compare_unpaired_cells_exit_2(tmp_path, capsys):
    write_table(_pair(data="e" * 64), tmp_path / "t")
    code, _, err = _cli(capsys, "compare", tmp_path / "t.parquet", "--a", "resnet20", "--b", "inresnet20")
    assert code == 2 and "different data" in err and len(err.strip().splitlines()) == 1


def test_a_model_with_one_seed_next_to_several_borrows_their_seed_variance():
    # B has three disagreeing seeds, A only its seed-0 checkpoint: A's training noise is unknown, so it is
    # taken to be B's (pooled), not zero: V = var_i(T_i)/n + σ²_B/3 + σ²_B/1
    t = _seeded_table([180, 240, 300], [200])
    r = robench.compare(t, a="resnet20", b="inresnet20", seeds="all").iloc[0]
    assert "borrows the pooled seed variance" in r["note"] and r["n_seeds_a"] == 1 and r["n_seeds_b"] == 3
    fb = np.stack([first(k, 400) for k in (180, 240, 300)])
    per_image = fb.mean(axis=0) - first(200, 400)
    sigma2_b = inference._seed_variance(fb)
    var = per_image.var(ddof=1) / 400 + sigma2_b / 3 + sigma2_b
    half = (r["ci_high"] - r["ci_low"]) / 2
    assert half == pytest.approx(stats.t.ppf(0.975, r["df"]) * math.sqrt(var), rel=1e-9)
    assert r["df"] == pytest.approx(2.0, abs=0.1)  # the borrowed part carries B's 2 degrees of freedom
