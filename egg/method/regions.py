"""Regions from a relevance map (docs/method.md section 2).

Pipeline (``extract_regions``): smooth the token-grid map with a Gaussian, threshold the
smoothed values (elbow of the sorted values by default), take connected components,
score each by the *raw* relevance mass inside it, keep the top-k. Boxes and their geometry live in ``egg.method.boxes``.

Grid shapes are numpy shapes ``(rows, cols)``; a region's box is in grid cells,
``(c0, r0, c1, r1)`` with exclusive ends.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
from scipy import ndimage

from .boxes import Box

ThresholdFn = Callable[[np.ndarray], float]

# Relative tolerance under which a smoothed map counts as constant (gaussian filtering of
# a constant map can leave float noise of ~1e-16 relative).
_FLAT_RTOL = 1e-9

#: Near-tie tolerance of every discrete choice (argmax of a window, a peak, an elbow, a
#: component ranking), relative to the largest magnitude among the candidates. Candidates
#: that are equal in exact arithmetic (e.g. two windows that differ only by cells of zero
#: relevance) come out of float sums different in the last bits, and which last bits
#: depends on the CPU and the thread count. Counting everything within this tolerance of
#: the best as tied, and taking the first in a fixed order, makes such choices the same on
#: every machine. 1e-9 is far above float64 summation noise (~1e-16) and far below any
#: difference a map means.
TIE_RTOL = 1e-9


def tie_tolerance(values) -> float:
    """Absolute tolerance for comparing ``values``: ``TIE_RTOL`` times their largest magnitude."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return TIE_RTOL * float(np.max(np.abs(v))) if v.size else 0.0


def first_argmax(values) -> int:
    """Flat index of the maximum, counting values within ``tie_tolerance`` of it as tied.

    Ties go to the first index in row-major order, so float noise cannot flip the choice
    between candidates that are equal in exact arithmetic. NaN never wins.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("first_argmax of an empty array")
    v = np.where(np.isnan(v), -np.inf, v)
    best = float(np.max(v))
    if not np.isfinite(best):
        return int(np.argmax(v))
    return int(np.flatnonzero(v >= best - tie_tolerance(v))[0])


def first_argmax_2d(values: np.ndarray) -> tuple[int, int]:
    """``first_argmax`` as (row, col) of a 2-D array."""
    r, c = np.unravel_index(first_argmax(values), np.shape(values))
    return int(r), int(c)


# ----------------------------------------------------------------------------- smoothing


def _clean(grid: np.ndarray) -> np.ndarray:
    """Float64 copy with NaN/+-inf set to 0, so one bad token cannot poison a whole map."""
    return np.nan_to_num(np.asarray(grid, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def smooth(grid: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gaussian-smooth a relevance grid (sigma in grid cells; mode="nearest").

    Smoothing merges the speckled per-token gradients into blobs that connected
    components can pick up. NaN/inf are replaced by 0 first; ``sigma == 0`` returns a
    cleaned copy. Always returns a new float64 array.
    """
    if not (sigma >= 0) or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    g = _clean(grid)
    if sigma == 0 or g.size == 0:
        return g
    return ndimage.gaussian_filter(g, sigma=sigma, mode="nearest")


# ---------------------------------------------------------------------------- thresholds


def _finite_sorted(values: np.ndarray | Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("threshold needs at least one finite value")
    return np.sort(v, kind="stable")


def elbow_threshold(values: np.ndarray | Sequence[float]) -> float:
    """Elbow ("knee") of the ascending sorted values; callers keep ``values > t``.

    Sort ascending and view the values as points (i, v_i). Both axes are first rescaled
    to [0, 1] (index by n-1, value by (v - v_min) / (v_max - v_min)), so the result does
    not depend on the map's scale or on the number of cells; the chord then runs from
    (0, 0) to (1, 1) and the point farthest from it maximises |x - y|. The value at that
    point is returned (ties, within ``TIE_RTOL``: the lowest index). A relevance map is mostly background
    with a short bright tail, so the curve hugs the x axis and then shoots up: the elbow
    sits where the tail begins. Non-finite values are ignored; constant input (or a
    single value) returns that value, so nothing is strictly above it.
    """
    v = _finite_sorted(values)
    n = v.size
    lo, hi = v[0], v[-1]
    if not hi > lo:
        return float(lo)
    x = np.arange(n, dtype=np.float64) / (n - 1)
    y = (v - lo) / (hi - lo)
    return float(v[first_argmax(np.abs(x - y))])


def otsu_threshold(values: np.ndarray | Sequence[float]) -> float:
    """Otsu's threshold computed exactly over the sorted values (no histogram binning).

    Every split between two distinct sorted values is tried; the one with the largest
    between-class variance wins (ties: the lowest split). Returns the largest value of
    the lower class, so ``values > t`` is exactly the upper class. Exact rather than
    binned because token grids are small (hundreds of values) and binning would make the
    result depend on the bin count. Constant input returns that value.
    """
    v = _finite_sorted(values)
    n = v.size
    if n < 2 or not v[-1] > v[0]:
        return float(v[0])
    csum = np.cumsum(v)
    total = csum[-1]
    k = np.arange(1, n, dtype=np.float64)  # size of the lower class for split after i=k-1
    w0 = k / n
    w1 = 1.0 - w0
    mu0 = csum[:-1] / k
    mu1 = (total - csum[:-1]) / (n - k)
    between = w0 * w1 * (mu0 - mu1) ** 2
    valid = v[1:] > v[:-1]  # only split between distinct values
    between = np.where(valid, between, -np.inf)
    i = first_argmax(between)
    return float(v[i])


def top_percent_threshold(values: np.ndarray | Sequence[float], percent: float = 10.0) -> float:
    """Threshold keeping (about) the top ``percent`` % of values strictly above it.

    With n finite values and m = ceil(n * percent / 100) (at least 1), returns the
    (m+1)-th largest value, so at most m values are strictly above it (fewer when the
    threshold value is tied with values above the cut). If m >= n, returns a number just
    below the minimum so that every value is kept.
    """
    if not (0.0 < percent <= 100.0):
        raise ValueError(f"percent must be in (0, 100], got {percent!r}")
    v = _finite_sorted(values)
    n = v.size
    m = max(1, math.ceil(n * percent / 100.0 - 1e-12))
    if m >= n:
        return float(np.nextafter(v[0], -np.inf))
    return float(v[n - m - 1])


THRESHOLDS: dict[str, ThresholdFn] = {
    "elbow": elbow_threshold,
    "otsu": otsu_threshold,
    "top-percent": top_percent_threshold,
}


def get_threshold(threshold: Union[str, ThresholdFn]) -> ThresholdFn:
    """Resolve a threshold name (key of ``THRESHOLDS``) or pass a callable through."""
    if callable(threshold):
        return threshold
    try:
        return THRESHOLDS[threshold]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown threshold {threshold!r}; valid names: {sorted(THRESHOLDS)}"
        ) from None


# ------------------------------------------------------------------------------- regions


@dataclass
class Region:
    """One evidence region found in a grid.

    box: grid units, cells [c0, c1) x [r0, r1) as (c0, r0, c1, r1).
    mass: sum of the RAW (unsmoothed, NaN/inf -> 0) relevance over the component's
        cells; used for ranking because smoothing spreads mass into the background.
    mask: boolean grid-shaped mask of the component's cells (None if not kept).
    """

    box: Box
    mass: float
    mask: np.ndarray | None = None


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")


def _mask_box(mask: np.ndarray) -> Box:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _fallback_region(raw: np.ndarray, sm: np.ndarray, sigma: float, connectivity: int) -> Region:
    """Region used when thresholding finds nothing.

    * Flat smoothed map (all zero, all NaN, constant): the whole grid -- there is no
      evidence of where to look, so nothing is excluded.
    * Otherwise: the connected plateau of cells equal to the smoothed maximum that
      contains the first argmax (row-major), its box padded by max(1, ceil(sigma)) cells
      on each side (clipped to the grid), so the crop has some context around the peak.
    """
    rows, cols = sm.shape
    peak = float(np.max(sm))
    if np.ptp(sm) <= _FLAT_RTOL * float(np.max(np.abs(sm))):
        mask = np.ones(sm.shape, dtype=bool)
        return Region((0.0, 0.0, float(cols), float(rows)), float(raw.sum()), mask)
    r, c = first_argmax_2d(sm)
    labels, _ = ndimage.label(sm >= peak - tie_tolerance(sm), structure=_structure(connectivity))
    c0, r0, c1, r1 = _mask_box(labels == labels[r, c])
    pad = max(1, math.ceil(sigma))
    c0, r0 = max(0, int(c0) - pad), max(0, int(r0) - pad)
    c1, r1 = min(cols, int(c1) + pad), min(rows, int(r1) + pad)
    mask = np.zeros(sm.shape, dtype=bool)
    mask[r0:r1, c0:c1] = True
    return Region((float(c0), float(r0), float(c1), float(r1)), float(raw[mask].sum()), mask)


def extract_regions(
    grid: np.ndarray,
    sigma: float = 1.5,
    threshold: Union[str, ThresholdFn] = "elbow",
    k: int | None = 2,
    connectivity: int = 8,
) -> list[Region]:
    """Top-k evidence regions of a 2-D relevance grid, best first.

    smooth -> threshold (cells with smoothed > t) -> connected components -> box per
    component -> rank by raw relevance mass (descending; ties: the component whose first
    cell comes first in row-major order) -> keep k (``k=None`` keeps all).

    Never returns an empty list: if the smoothed map is flat or nothing lies strictly
    above the threshold, a single fallback region is returned (see
    ``_fallback_region``: the whole grid for flat maps, else a padded box around the
    smoothed argmax). Raises ValueError for a non-2-D or zero-size grid.
    """
    g = np.asarray(grid)
    if g.ndim != 2:
        raise ValueError(f"grid must be 2-D, got shape {g.shape}")
    if g.size == 0:
        raise ValueError(f"grid has zero size: shape {g.shape}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1 or None, got {k!r}")
    structure = _structure(connectivity)
    fn = get_threshold(threshold)
    raw = _clean(g)
    sm = smooth(raw, sigma)

    if np.ptp(sm) <= _FLAT_RTOL * float(np.max(np.abs(sm))):
        return [_fallback_region(raw, sm, sigma, connectivity)]
    t = fn(sm.ravel())
    fg = sm > t + tie_tolerance(sm)  # a cell tied with the threshold value is not above it
    if not fg.any():
        return [_fallback_region(raw, sm, sigma, connectivity)]

    labels, n = ndimage.label(fg, structure=structure)
    regions = []
    for lab in range(1, n + 1):  # labels are numbered in row-major order of first cell
        m = labels == lab
        regions.append(Region(_mask_box(m), float(raw[m].sum()), m))
    out = rank_by_mass(regions, [r.mass for r in regions])
    return out if k is None else out[:k]


def rank_by_mass(items: Sequence, masses: Sequence[float]) -> list:
    """``items`` by descending mass; masses within ``tie_tolerance`` of each other keep
    their given order, so float noise cannot swap two equally heavy candidates."""
    m = np.asarray(masses, dtype=np.float64)
    tol = tie_tolerance(m)
    order: list[int] = []
    left = list(range(len(items)))
    while left:  # selection sort with a tolerant max: candidates are few (components, boxes)
        best = max(m[i] for i in left)
        pick = next(i for i in left if m[i] >= best - tol)
        order.append(pick)
        left.remove(pick)
    return [items[i] for i in order]
