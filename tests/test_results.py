import math

import numpy as np
import pytest

from robench.results import pack_flags, unpack_flags, wilson


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
