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
    for col in ("origin", "card_sha256", "attacks", "complete"):
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
