"""Property tests: plot, report and the leaderboard never raise on any table robench can write.

Issue 24.1: `robench plot` and `report` crashed on an ordinary λ study at n = 100 (`'yerr' must not
contain negative values`) because wilson(0, n) gave a lower bound of 3.5e-18. The tables here are
generated the way robench writes them (cells with per-example flags, worst cases derived by
``robench.aggregate.table``, written and read back as parquet or CSV), with 0 % and 100 % cells,
n = 1, trained-seed tags, learned and not-applicable λ, modules, several seeds, CIFAR-10-C cells,
and older tables without the ``data_label``/``params`` columns.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robench.aggregate import table
from robench.results import pack_flags, wilson, write_table

MODELS = [("resnet20", "euler", 0.0), ("resnet20.s1", "euler", 0.0), ("inresnet20", "damped", 0.5),
          ("inresnet20", "damped", None), ("inresnet20", "damped", 1.0), ("inresnet20.s2", "damped", None),
          ("lmresnet20", "lm", None), ("my net", "unknown", None), ("lambda_inresnet20", "lambda_damped", None)]
ATTACKS = {"fgsm": "{}", "pgd": '{"random_start":true,"step_size":0.00392156862745098,"steps":20}',
           "autoattack": '{"queries":5000,"steps":100,"target_classes":9}'}


@st.composite
def tables(draw):
    n = draw(st.sampled_from([1, 2, 7, 50, 100, 1000]))
    models = draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=4, unique=True))
    attacks = draw(st.lists(st.sampled_from(sorted(ATTACKS)), max_size=2, unique=True))
    eps = draw(st.lists(st.sampled_from([1 / 255, 8 / 255, 0.03]), min_size=1, max_size=2, unique=True))
    corruptions = draw(st.lists(st.sampled_from(["gaussian_noise", "snow"]), max_size=2, unique=True))
    severities = draw(st.lists(st.integers(1, 5), min_size=1, max_size=2, unique=True))
    seeds = draw(st.sampled_from([[0], [0, 1]]))
    with_clean = draw(st.booleans())
    new_columns = draw(st.booleans())
    cifar10c = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))

    def flags():
        k = draw(st.sampled_from(["zero", "all", "some"]))
        f = np.zeros(n, bool) if k == "zero" else np.ones(n, bool) if k == "all" else rng.random(n) < 0.5
        return f

    recs = []
    for model, scheme, lam in models:
        for seed in seeds:
            cells = ([("clean", "none", None, None, None)] if with_clean else [])
            cells += [("attack", a, e, None, "art") for a in attacks for e in eps]
            cells += [("corruption", c, None, s, None) for c in corruptions for s in severities]
            for kind, pert, e, sev, backend in cells:
                f = flags()
                lo, hi = wilson(int(f.sum()), n)
                rec = {"model": model, "scheme": scheme, "lam": np.nan if lam is None else lam,
                       "dataset": "cifar10c" if (kind == "corruption" and cifar10c) else "cifar10", "n": n,
                       "kind": kind, "perturbation": pert, "backend": backend, "norm": "linf" if kind == "attack" else None,
                       "eps": e, "severity": sev, "steps": {"fgsm": 1, "pgd": 20, "autoattack": 100}.get(pert),
                       "seed": seed, "correct": int(f.sum()), "accuracy": float(f.mean()), "ci_low": lo, "ci_high": hi,
                       "seconds": 0.5, "device": "cpu", "data_sha256": "b6c1f1e1" * 8, "weights_sha256": f"{model}{lam}",
                       "origin": "module" if scheme == "unknown" else "shipped", "flags": pack_flags(f)}
                if new_columns:
                    rec["data_label"] = "CIFAR-10, other copy (sha256 b6c1f1e1)"
                    rec["params"] = ATTACKS.get(pert) if kind == "attack" else None
                recs.append(rec)
    if not recs:  # a model with nothing at all is no table robench writes
        f = flags()
        lo, hi = wilson(int(f.sum()), n)
        model, scheme, lam = models[0]
        recs.append({"model": model, "scheme": scheme, "lam": np.nan if lam is None else lam, "dataset": "cifar10",
                     "n": n, "kind": "clean", "perturbation": "none", "seed": 0, "correct": int(f.sum()),
                     "accuracy": float(f.mean()), "ci_low": lo, "ci_high": hi, "flags": pack_flags(f)})
    df = table(recs)
    if not new_columns:
        df = df.drop(columns=["data_label", "params"])
    return df


def _write(df: pd.DataFrame, folder: Path, suffix: str) -> Path:
    write_table(df, folder / "t")
    return folder / f"t{suffix}"


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(df=tables(), suffix=st.sampled_from([".parquet", ".csv"]))
def test_plot_and_report_never_raise_on_a_table_robench_can_write(df, suffix):
    from robench.analysis.plots import plot_tables
    from robench.analysis.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = _write(df, tmp, suffix)
        plot_tables([path], tmp / "plots")
        page = write_report([path], tmp / "report", cards={}).read_text()
        assert '<table class="leaderboard">' in page and "NaN" not in page and "nan [" not in page


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(df=tables())
def test_leaderboard_is_in_percent_with_intervals_that_hold_the_value(df):
    from robench.leaderboard import leaderboard, metric_columns, seed_summary, to_markdown
    from robench.threat_model import threat_model, to_markdown as tm_markdown

    board = leaderboard(df, cards={})
    for c in metric_columns(board):
        lo, hi = (f"{c}_ci_low", f"{c}_ci_high") if c not in ("corruption_mean",) else ("corruption_ci_low", "corruption_ci_high")
        v = board[[c, lo, hi]].dropna()
        assert ((v[lo] <= v[c] + 1e-9) & (v[c] <= v[hi] + 1e-9) & (v[lo] >= 0) & (v[hi] <= 100)).all(), c
        if c != "corruption_mean":  # a mean of cells may sit outside the pooled interval; a cell never does
            assert (v[c] >= 0).all() and (v[c] <= 100).all()
    assert set(board["lam"]) <= {"0", "0.5", "1", "learned", "–"}
    ranked = board.dropna(subset=["rank"])
    assert (ranked["rank_value"].diff().dropna() <= 1e-9).all()  # best first
    assert len(board["rank_by"].unique()) == 1
    to_markdown(board, header=tm_markdown(threat_model(df)))
    seed_summary(board)
