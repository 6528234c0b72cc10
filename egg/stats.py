"""Uncertainty for benchmark comparisons: bootstrap CIs and McNemar's test.

All functions take per-item scores (one number per benchmark question) and are
deterministic given ``seed`` (numpy ``default_rng``), so reported intervals are
reproducible.  Intervals are 95% percentile-bootstrap intervals.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

__all__ = ["bootstrap_ci", "paired_bootstrap", "mcnemar"]

# Resample in blocks so memory stays bounded (n_boot x n indices) on large benchmarks.
_BLOCK_ELEMS = 2_000_000


def _as_1d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values")
    return arr


def _boot_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``x``."""
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    rng = np.random.default_rng(seed)
    n = x.size
    rows = max(1, _BLOCK_ELEMS // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def _ci(x: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    means = _boot_means(x, n_boot, seed)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


def bootstrap_ci(x, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the sample mean and its 95% percentile-bootstrap interval."""
    return _ci(_as_1d(x, "x"), n_boot, seed)


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean_diff, lo, hi) for mean(b - a) over paired per-item scores.

    Items are resampled jointly (the same questions for both systems), which is
    what makes the interval much tighter than comparing two independent CIs.
    An interval excluding 0 means b differs from a at roughly the 5% level.
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired: {a.size} vs {b.size} items")
    return _ci(b - a, n_boot, seed)


def _as_bool(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must hold correctness flags (bool or 0/1)")
        arr = arr.astype(bool)
    return arr


def mcnemar(a_correct, b_correct) -> float:
    """Exact two-sided McNemar p-value for paired correct/incorrect outcomes.

    Only discordant items matter: with n01 items that only b gets right and n10
    that only a gets right, under H0 n01 ~ Binomial(n01 + n10, 1/2); the p-value
    is min(1, 2 * P[X <= min(n01, n10)]).  No discordant items gives 1.0.
    """
    a = _as_bool(a_correct, "a_correct")
    b = _as_bool(b_correct, "b_correct")
    if a.shape != b.shape:
        raise ValueError(f"a_correct and b_correct must be paired: {a.size} vs {b.size}")
    n01 = int(np.sum(~a & b))
    n10 = int(np.sum(a & ~b))
    n = n01 + n10
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(n01, n10), n, 0.5)))
