"""Fixtures for egg.stats (bootstrap intervals, McNemar)."""

import numpy as np
import pytest
from scipy.stats import binomtest

from egg.stats import bootstrap_ci, mcnemar, paired_bootstrap


def test_bootstrap_constant_sample_has_zero_width():
    assert bootstrap_ci([0.7] * 20) == pytest.approx((0.7, 0.7, 0.7))


def test_bootstrap_ci_brackets_mean_and_is_deterministic():
    x = np.random.default_rng(1).normal(0.0, 1.0, size=400)
    m, lo, hi = bootstrap_ci(x, seed=3)
    assert m == pytest.approx(x.mean())
    assert lo < m < hi
    # normal-theory half-width 1.96 * sd / sqrt(n), within 15%
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci(x, seed=3) == (m, lo, hi)
    assert bootstrap_ci(x, seed=4) != (m, lo, hi)


def test_bootstrap_edge_arguments():
    x = np.arange(10.0)
    assert bootstrap_ci(x, n_boot=1)[0] == pytest.approx(4.5)
    with pytest.raises(ValueError):
        bootstrap_ci(x, n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_paired_bootstrap_constant_shift():
    a = np.linspace(0, 1, 30)
    d, lo, hi = paired_bootstrap(a, a + 0.1)
    assert (d, lo, hi) == pytest.approx((0.1, 0.1, 0.1))


def test_paired_bootstrap_detects_improvement():
    a = np.array([0] * 50 + [1] * 50, dtype=float)
    b = a.copy()
    b[:10] = 1  # b fixes 10 of a's errors: mean(b - a) = 0.1
    d, lo, hi = paired_bootstrap(a, b, seed=0)
    assert d == pytest.approx(0.1)
    assert 0 < lo < 0.1 < hi
    # sign flips when the systems are swapped
    d2, lo2, hi2 = paired_bootstrap(b, a, seed=0)
    assert d2 == pytest.approx(-0.1)
    assert hi2 < 0


def test_paired_bootstrap_rejects_unpaired():
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0, 1], [1, 0])


def test_mcnemar_hand_computed():
    # b alone right on 8 items, a alone right on 1, 11 concordant items:
    # p = 2 * P(X <= 1 | n=9) = 2 * (1 + 9) / 512
    a = [0] * 8 + [1] + [1] * 6 + [0] * 5
    b = [1] * 8 + [0] + [1] * 6 + [0] * 5
    assert mcnemar(a, b) == pytest.approx(20 / 512)
    assert mcnemar(b, a) == pytest.approx(20 / 512)


def test_mcnemar_matches_scipy_binomtest():
    a = np.array([True] * 3 + [False] * 12 + [True] * 20)
    b = np.array([False] * 3 + [True] * 12 + [True] * 20)
    assert mcnemar(a, b) == pytest.approx(binomtest(3, 15, 0.5).pvalue)


def test_mcnemar_degenerate_cases():
    assert mcnemar([1, 0, 1], [1, 0, 1]) == 1.0  # no discordant pairs
    assert mcnemar([1, 0], [0, 1]) == 1.0  # balanced discordance
    with pytest.raises(ValueError):
        mcnemar([0.3, 1], [1, 0])
    with pytest.raises(ValueError):
        mcnemar([1, 0], [1])
