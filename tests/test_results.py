import math
from pathlib import Path

import numpy as np
import pytest

from robench.results import SCHEMA, pack_flags, read_table, unpack_flags, wilson


@pytest.mark.parametrize("correct,n,low,high", [
    (5, 10, 0.2366, 0.7634),   # textbook values (e.g. Newcombe 1998, Brown–Cai–DasGupta 2001)
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),
    (1, 20, 0.0089, 0.2361),
])
def test_wilson_known_values(correct, n, low, high):
    lo, hi = wilson(correct, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_empty_is_nan():
    assert all(math.isnan(v) for v in wilson(0, 0))


@pytest.mark.parametrize("n", [1, 7, 8, 9, 20, 1000])
def test_flags_round_trip(n):
    flags = np.random.default_rng(n).random(n) < 0.5
    assert np.array_equal(unpack_flags(pack_flags(flags), n), flags)


def _is_results_table(path: Path) -> bool:
    import pyarrow.parquet as pq

    return "flags" in pq.read_schema(path).names  # eval/sweep tables, not the checks or analysis tables


OLD_TABLES = sorted(p for p in (Path(__file__).parent.parent / "results").glob("*.parquet") if _is_results_table(p))


@pytest.mark.parametrize("path", OLD_TABLES, ids=lambda p: p.name)
def test_committed_tables_without_the_new_columns_still_read(path):
    import pandas as pd

    raw = pd.read_parquet(path)
    df = read_table(path)
    assert list(df.columns) == list(SCHEMA) and len(df) == len(raw)
    for col in ("origin", "card_sha256", "attacks", "complete", "data_label", "params"):
        if col not in raw.columns:
            assert df[col].isna().all()
    assert str(df["complete"].dtype) == "boolean"


def test_git_sha_marks_uncommitted_changes(tmp_path):
    import subprocess

    from robench.provenance import git_sha

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "attack.py").write_text("STEPS = 20\n")
    git("add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    clean = git_sha(tmp_path)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "attack.py").write_text("STEPS = 2\n")
    git_sha.cache_clear()
    assert git_sha(tmp_path) == clean + "-dirty"
    git_sha.cache_clear()


def test_wilson_is_exact_at_the_edges_for_every_n_up_to_5000():
    """Issue 24.1: wilson(0, n) gave ci_low = 3.5e-18 (and n/n a ci_high below 1) for 358 values of
    n ≤ 2000, 50, 100, 200 and 1000 among them; matplotlib then refused the negative error bar."""
    for n in range(1, 5001):
        lo, hi = wilson(0, n)
        assert lo == 0.0 and 0.0 < hi < 1.0, n
        lo, hi = wilson(n, n)
        assert hi == 1.0 and 0.0 < lo < 1.0, n


def test_wilson_holds_the_estimate_inside_the_unit_interval():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=500, deadline=None)
    @given(st.integers(1, 100_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
    def check(kn):
        k, n = kn
        lo, hi = wilson(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
        assert (k / n - lo) >= 0 and (hi - k / n) >= 0

    check()


def test_lam_and_accuracy_have_one_notation():
    import math

    from robench.results import lam_text, pct

    assert [lam_text(0.0, "euler"), lam_text(0.5, "damped"), lam_text(math.nan, "damped"),
            lam_text(math.nan, "lambda_damped"), lam_text(math.nan, "lm"), lam_text(None, "unknown"),
            lam_text(1.0, "damped")] == ["0", "0.5", "learned", "learned", "–", "–", "1"]
    assert pct(0.869, 0.847, 0.889) == "86.9 [84.7, 88.9]" and pct(math.nan) == "–" and pct(0.0) == "0.0"


def test_a_huge_eps_is_spelt_as_a_number_not_an_overflow():
    """Found by the hostile-table property test: ε = 1e308 (finite, ≥ 0, so a valid table value) made
    the ε spelling compute round(inf) and raise OverflowError inside regress's cell description."""
    from robench.plan import fmt_eps
    from robench.results import format_eps

    assert format_eps(1e308) == "1e+308" and fmt_eps(1e308) == "1e+308"
    assert format_eps(8 / 255) == "8/255" and fmt_eps(8 / 255) == "8/255"
    from robench.threat_model import _fmt  # a hyper-parameter's value in the threat-model header

    assert _fmt(1e308) == "1e+308" and _fmt(float("inf")) == "inf" and _fmt(2 / 255) == "2/255"


def test_a_params_cell_that_is_not_json_is_refused_when_the_table_is_read(tmp_path):
    """Found by the hostile-table property test: `results merge` parsed a cell's `params` as JSON while
    building the worst case and raised JSONDecodeError; a table's params must be a JSON object."""
    import pytest

    from robench.errors import BadInput
    from robench.results import read_table, to_frame, wilson, write_table

    lo, hi = wilson(2, 4)
    row = dict(model="resnet20", scheme="euler", lam=0.0, dataset="samples", n=4, kind="attack", perturbation="pgd",
               backend="art", eps=8 / 255, seed=0, correct=2, accuracy=0.5, ci_low=lo, ci_high=hi, params="{steps: 20")
    write_table(to_frame([row]), tmp_path / "t")
    with pytest.raises(BadInput, match="line 2: params .* is not a JSON object"):
        read_table(tmp_path / "t.csv")
    write_table(to_frame([dict(row, params='{"steps": 20}')]), tmp_path / "ok")
    assert read_table(tmp_path / "ok.csv")["params"].tolist() == ['{"steps": 20}']
