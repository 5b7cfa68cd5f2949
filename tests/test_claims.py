"""The seed papers' claims as tested verdicts (robench.claims), the README paragraph and committed
table generated from them, the report's Claims section and `robench claims`."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from robench.results import wilson
import pytest

from robench import readme_tables
from robench.claims import CLAIMS, evaluate_claims, summarise
from robench.errors import BadInput
from robench.results import write_table

sys.path.insert(0, str(Path(__file__).parent))
from table_builders import first, row, stability_tables, table  # noqa: E402
from test_compare import _cli  # noqa: E402  (the same CLI runner)

N = 400
EPS = 8 / 255


def _eval_rows(model: str, right: dict[str, int], *, scheme="euler", lam=0.0) -> list[dict]:
    """Cells clean, pgd@8/255 and gaussian_noise@3 with the first k of N images right."""
    kw = dict(scheme=scheme, lam=lam)
    return [row(model, first(right["clean"], N), **kw),
            row(model, first(right["pgd"], N), kind="attack", perturbation="pgd", eps=EPS, steps=20, **kw),
            row(model, first(right["noise"], N), kind="corruption", perturbation="gaussian_noise", severity=3, **kw)]


def _two_models(b: dict[str, int], *, seeds: int = 1, spread: int = 0) -> pd.DataFrame:
    a = {"clean": 300, "pgd": 40, "noise": 200}
    rows = []
    for s in range(seeds):
        tag = "" if s == 0 else f".s{s}"
        jitter = (s - (seeds - 1) / 2) * spread
        rows += _eval_rows("resnet20" + tag, {k: int(v + jitter) for k, v in a.items()})
        rows += _eval_rows("inresnet20" + tag, {k: int(v + jitter) for k, v in b.items()}, scheme="damped",
                           lam=math.nan)
    return table(rows)


def _summary(rows: pd.DataFrame, claim: str) -> pd.Series:
    s = summarise(rows)
    return s[s["claim"] == claim].iloc[0]


def test_one_seed_gives_a_checkpoint_verdict_but_no_architecture_verdict():
    rows = evaluate_claims(_two_models({"clean": 300, "pgd": 80, "noise": 260}))
    for claim in ("attacks", "noise"):
        r = rows[rows["claim"] == claim].iloc[0]
        assert r["verdict_checkpoints"] == "supported" and r["verdict"] == "inconclusive"
        assert "one training run per model" in r["missing"] and r["n_seeds"] == 1 and r["n"] == N
        assert r["models"] == "resnet20,inresnet20" and r["comparison"] == "inresnet20 − resnet20"
        s = _summary(rows, claim)
        assert s["verdict"] == "inconclusive" and s["verdict_checkpoints"] == "supported"


def test_seeds_that_agree_support_the_claim_and_a_worse_model_contradicts_it():
    rows = evaluate_claims(_two_models({"clean": 300, "pgd": 80, "noise": 260}, seeds=3, spread=2))
    r = rows[rows["claim"] == "attacks"].iloc[0]
    assert r["n_seeds"] == 3 and r["verdict"] == "supported" and r["missing"] == ""
    assert r["effect"] == pytest.approx(0.1) and r["ci_low"] > 0
    rows = evaluate_claims(_two_models({"clean": 300, "pgd": 10, "noise": 150}, seeds=3, spread=2))
    assert _summary(rows, "attacks")["verdict"] == "contradicted"
    assert _summary(rows, "noise")["verdict"] == "contradicted"


def test_seeds_that_disagree_leave_the_claim_inconclusive():
    # the same mean gain (+10 points) but seeds ±60 images apart: training noise swamps it
    rows = evaluate_claims(_two_models({"clean": 300, "pgd": 80, "noise": 260}, seeds=3, spread=60))
    r = rows[rows["claim"] == "attacks"].iloc[0]
    assert r["verdict"] == "inconclusive" and r["ci_low"] < 0 < r["ci_high"]


def test_missing_evidence_is_inconclusive_and_says_what_is_missing():
    rows = evaluate_claims(_two_models({"clean": 300, "pgd": 80, "noise": 260}))
    s = summarise(rows).set_index("claim")
    assert list(s.index) == [c.id for c in CLAIMS]
    assert s.loc["flatness", "verdict"] == "inconclusive" and "no landscape table" in s.loc["flatness", "missing"]
    assert "no stability table" in s.loc["stability", "missing"]
    assert "no LM-ResNet" in s.loc["lm_clean", "missing"]
    assert "no fixed-λ In-ResNet" in s.loc["lambda_trend", "missing"]
    assert (s["rows"].loc[["flatness", "stability", "lm_clean"]] == 0).all()


def _lambda_path(acc: list[int]) -> list[dict]:
    rows = []
    for lam, k in zip((0.0, 0.25, 0.5, 0.75, 1.0), acc):
        model, scheme = ("resnet20", "euler") if lam == 0 else ("inresnet20", "damped")
        rows.append(row(model, first(k, N), scheme=scheme, lam=lam, kind="attack", perturbation="pgd", eps=EPS,
                        steps=20))
    return rows


@pytest.mark.parametrize("acc, word", [
    ([80, 120, 160, 200, 240], "supported"),      # rises at every step
    ([80, 200, 80, 200, 80], "contradicted"),     # significant steps both ways
    ([80, 160, 240, 160, 240], "contradicted"),   # a rising slope with a significant step down
    ([100, 102, 101, 103, 100], "inconclusive"),  # flat
])
def test_lambda_trend_verdicts_on_known_paths(acc, word):
    rows = evaluate_claims(table(_lambda_path(acc)))
    r = rows[rows["claim"] == "lambda_trend"].iloc[0]
    assert r["verdict_checkpoints"] == word, r["detail"]
    assert r["cell"] == "pgd@8/255" and r["n_models"] == 5
    # the slope is the least-squares slope of accuracy on λ
    lam = [0, 0.25, 0.5, 0.75, 1]
    slope = sum((x - 0.5) * (k / N) for x, k in zip(lam, acc)) / sum((x - 0.5) ** 2 for x in lam)
    assert r["effect"] == pytest.approx(slope)


def test_lambda_trend_without_lambda_one_is_missing_evidence():
    rows = evaluate_claims(table(_lambda_path([80, 120, 160, 200, 240])[:4]))
    r = rows[rows["claim"] == "lambda_trend"].iloc[0]
    assert r["verdict"] == "inconclusive" and "λ = 1" in r["missing"]


def test_association_across_models_needs_no_seeds_and_uses_the_exact_permutation_test():
    ev, st = stability_tables([0.20, 0.18, 0.15, 0.11, 0.10, 0.07], [10, 14, 18, 22, 26, 30])
    rows = evaluate_claims([ev, st])
    r = rows[rows["claim"] == "stability_robustness"].iloc[0]
    assert r["effect"] == pytest.approx(-1.0) and r["p"] == pytest.approx(2 / 720)  # 2 of 6! orderings as extreme
    assert r["ci_high"] < 0 and r["n_models"] == 6 and r["verdict"] == "supported"
    # the stability claim itself: every damped model is below ResNet-20 beyond the intervals
    s = rows[rows["claim"] == "stability"]
    assert len(s) == 5 and (s["verdict_checkpoints"] == "supported").all() and (s["verdict"] == "inconclusive").all()


def test_association_leaves_out_models_whose_checkpoints_differ_between_tables():
    ev, st = stability_tables([0.20, 0.18, 0.15, 0.11, 0.10, 0.07], [10, 14, 18, 22, 26, 30], weights_differ=True)
    r = evaluate_claims([ev, st]).query("claim == 'stability_robustness'").iloc[0]
    assert r["verdict"] == "inconclusive" and "other checkpoints" in r["missing"]


def test_claims_read_tables_only(monkeypatch):
    import model_zoo
    import robench.engine

    def boom(*a, **k):
        raise AssertionError("a view must not load or evaluate a model")

    monkeypatch.setattr(model_zoo, "load_entry", boom)
    monkeypatch.setattr(model_zoo, "load", boom)
    monkeypatch.setattr(robench.engine, "evaluate", boom)
    ev, st = stability_tables([0.20, 0.18, 0.15, 0.11, 0.10, 0.07], [10, 14, 18, 22, 26, 30])
    assert len(evaluate_claims([ev, st])) > 0


# -------------------------------------------------------------------- committed table and README


def test_committed_claims_table_is_the_one_the_committed_tables_give():
    fresh = readme_tables.claims_rows()
    committed = pd.read_parquet(readme_tables.README.parent / (readme_tables.CLAIMS_TABLE + ".parquet"))
    pd.testing.assert_frame_equal(committed, fresh, check_exact=True), \
        "stale: run robench claims … -o results/lambda_study_depth20_claims (see README)"
    # one seed in the committed tables: no claim about architectures can be decided, and the rows say so
    needs = fresh[fresh["claim"].isin([c.id for c in CLAIMS if c.needs_seeds]) & fresh["p"].notna()]
    assert (needs["n_seeds"] == 1).all() and (needs["verdict"] == "inconclusive").all()


def test_readme_claims_paragraph_is_generated_and_goes_stale_when_the_tables_change(tmp_path, monkeypatch):
    text = readme_tables.README.read_text(encoding="utf-8")
    assert "<!-- robench:claims -->" in text and readme_tables.stale() == []
    assert "one training run per model (seed 0)" in text
    # a changed table (here: one model's PGD cell loses 30 correct images) makes the paragraph stale
    root = tmp_path / "repo"
    (root / "results").mkdir(parents=True)
    for p in readme_tables.CLAIMS_SOURCES:
        df = pd.read_parquet(readme_tables.README.parent / p)
        if p.endswith("depth20.parquet"):
            i = df.index[(df["model"] == "inresnet20") & df["lam"].isna() & (df["kind"] == "worst_case")][-1]
            df.loc[i, "flags"] = row("x", first(0, int(df.loc[i, "n"])))["flags"]
            df.loc[i, "correct"], df.loc[i, "accuracy"] = 0, 0.0
            df.loc[i, "ci_low"], df.loc[i, "ci_high"] = wilson(0, int(df.loc[i, "n"]))  # a consistent row
        df.to_parquet(root / p)
    (root / "README.md").write_text(text, encoding="utf-8")
    monkeypatch.setattr(readme_tables, "README", root / "README.md")
    assert readme_tables.stale(root / "README.md") == ["claims"]


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_claims_prints_verdicts_and_writes_the_table(tmp_path, capsys):
    write_table(_two_models({"clean": 300, "pgd": 80, "noise": 260}), tmp_path / "ev")
    code, out, err = _cli(capsys, "claims", tmp_path / "ev.parquet", "-o", tmp_path / "claims", "--all")
    assert code == 0, err
    assert "| **inconclusive** | supported |" in out and "Rule: Holm-adjusted" in out
    back = pd.read_parquet(tmp_path / "claims.parquet")
    assert list(back["claim"].unique()) == [c.id for c in CLAIMS]
    code, out, err = _cli(capsys, "claims", tmp_path / "ev.parquet", "-o", tmp_path / "claims")
    assert code == 2 and "already exist" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "none.parquet", "does not exist"),
    (lambda p: (p / "bad.csv").write_text("a,b\n1,2\n") and p / "bad.csv", "not a robench table"),
])
def test_cli_claims_bad_input_exit_2_one_line(tmp_path, capsys, make, words):
    code, out, err = _cli(capsys, "claims", make(tmp_path), "-o", tmp_path / "out")
    assert code == 2 and err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err and not (tmp_path / "out.parquet").exists()


def test_bad_alpha_is_bad_input():
    with pytest.raises(BadInput, match="alpha"):
        evaluate_claims(table([row("resnet20", first(10, 20))]), alpha=0)
