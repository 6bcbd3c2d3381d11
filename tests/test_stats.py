from __future__ import annotations

import itertools

import numpy as np
import pytest

from patchfinder.stats import rate, wilson_interval


def test_interval_contains_the_estimate_and_stays_in_unit_range(rng):
    n = rng.integers(1, 500, size=200)
    k = rng.integers(0, n + 1)
    low, high = wilson_interval(k, n)
    assert np.all((low >= 0) & (low <= k / n + 1e-12) & (k / n <= high + 1e-12) & (high <= 1))


def test_interval_narrows_as_n_grows():
    widths = [np.subtract(*wilson_interval(n // 2, n)[::-1]) for n in (10, 100, 1000, 10000)]
    assert all(a > b for a, b in itertools.pairwise(widths))


def test_extreme_rates_keep_a_nonzero_width():
    low, high = wilson_interval(0, 5)
    assert low == 0 and high > 0.3  # 0 of 5 says little: the interval must say so
    low, high = wilson_interval(5, 5)
    assert high == pytest.approx(1) and low < 0.7


def test_coverage_is_close_to_nominal(rng):
    p, n = 0.3, 40
    k = rng.binomial(n, p, size=20000)
    low, high = wilson_interval(k, n)
    coverage = np.mean((low <= p) & (p <= high))
    assert 0.93 < coverage < 0.97


def test_invalid_counts_and_empty_n():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(6, 5)
    assert np.isnan(rate(0, 0).value) and "n=0" in str(rate(0, 0))
    assert "n=10" in str(rate(3, 10))
