"""Regions from a relevance map, and the box arithmetic of zooming (METHOD.md section 2).

Pipeline (``extract_regions``): smooth the token-grid map with a Gaussian, threshold the
smoothed values (elbow of the sorted values by default), take connected components,
score each by the *raw* relevance mass inside it, keep the top-k. The rest of the module
moves boxes between coordinate frames: grid cells -> pixels of the image the grid covers
(``grid_box_to_pixels``), widening to a sane aspect ratio inside the image
(``clamp_aspect``), and crop pixels -> pixels of the parent image (``compose``,
``compose_chain``) so that crops of crops, resized or not, map back to the original.

Conventions
-----------
* ``Box = (x0, y0, x1, y1)``; x is the column / horizontal axis, y the row / vertical
  axis; ``x1``/``y1`` are exclusive (a box of one cell at column c, row r is
  ``(c, r, c + 1, r + 1)``).
* Grid shapes are numpy shapes ``(rows, cols)``; image sizes are PIL sizes
  ``(width, height)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
from scipy import ndimage

Box = tuple[float, float, float, float]
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


# ----------------------------------------------------------------------------- box maths


def box_area(box: Box) -> float:
    """Area of a box; 0 for empty or inverted boxes."""
    x0, y0, x1, y1 = box
    return max(0.0, float(x1) - float(x0)) * max(0.0, float(y1) - float(y0))


def box_intersection(a: Box, b: Box) -> Box:
    """Intersection box (possibly empty: x1 <= x0 or y1 <= y0)."""
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def iou(a: Box, b: Box) -> float:
    """Intersection over union; 0 when the union is empty."""
    inter = box_area(box_intersection(a, b))
    union = box_area(a) + box_area(b) - inter
    return float(inter / union) if union > 0 else 0.0


def box_contains(outer: Box, inner: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


def evidence_iou(boxes: Sequence, gt_boxes: Sequence) -> float:
    """IoU of the best box (``boxes[0]``) with the ground-truth evidence box it overlaps most
    (NaN when either list is empty)."""
    if not boxes or not gt_boxes:
        return float("nan")
    return max(iou(tuple(boxes[0]), tuple(g)) for g in gt_boxes)


def point_in_box(pt: tuple[float, float], box: Box, tolerance: float = 0.0) -> bool:
    """Is the point (x, y) inside the box grown by ``tolerance`` on every side?

    Points are continuous coordinates, so the test is closed on both ends
    (x0 - tol <= x <= x1 + tol), unlike cell membership.
    """
    x, y = pt
    x0, y0, x1, y1 = box
    return (x0 - tolerance <= x <= x1 + tolerance) and (y0 - tolerance <= y <= y1 + tolerance)


def box_center(box: Box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)


def grid_box_to_pixels(box: Box, grid_shape: tuple[int, int], footprint: Box) -> Box:
    """Map a box in grid cells to pixels of the image region the grid covers.

    ``grid_shape`` is ``(rows, cols)``; ``footprint`` is (x0, y0, x1, y1) in pixels of
    the image the grid was computed on (e.g. the whole image, or the part of a padded /
    tiled input that the tokens cover). Each axis has its own scale (footprint width /
    cols, footprint height / rows), so non-square grids and footprints work. Returns
    float pixels (no rounding; ``clamp_aspect`` rounds).
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid_shape must be positive (rows, cols), got {grid_shape}")
    fx0, fy0, fx1, fy1 = (float(v) for v in footprint)
    sx, sy = (fx1 - fx0) / cols, (fy1 - fy0) / rows
    c0, r0, c1, r1 = box
    return (fx0 + c0 * sx, fy0 + r0 * sy, fx0 + c1 * sx, fy0 + r1 * sy)


def pixels_to_grid_box(box: Box, grid_shape: tuple[int, int], footprint: Box) -> Box:
    """Inverse of ``grid_box_to_pixels`` (float grid units, no rounding)."""
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    fx0, fy0, fx1, fy1 = (float(v) for v in footprint)
    if not (fx1 > fx0 and fy1 > fy0) or rows <= 0 or cols <= 0:
        raise ValueError(f"degenerate footprint {footprint} or grid_shape {grid_shape}")
    sx, sy = (fx1 - fx0) / cols, (fy1 - fy0) / rows
    x0, y0, x1, y1 = box
    return ((x0 - fx0) / sx, (y0 - fy0) / sy, (x1 - fx0) / sx, (y1 - fy0) / sy)


def _grow(lo: int, size: int, new: int) -> int:
    """New start when growing [lo, lo+size) to ``new`` cells about its centre."""
    return math.floor(lo - (new - size) / 2.0 + 0.5)


def clamp_aspect(
    box: Box,
    image_size: tuple[int, int],
    max_ratio: float = 3.0,
    min_side: float = 1.0,
) -> Box:
    """Make a pixel box croppable: integer edges, min side, aspect <= max_ratio, inside.

    Steps: (1) round outwards to integer pixels (floor x0/y0, ceil x1/y1) so the box
    still covers the input, and clip it to the image (what lies outside cannot be
    cropped and must not drive the widening); (2) grow each side to at least
    ceil(min_side) pixels about its centre; (3) widen the short side about the centre to ceil(long / max_ratio);
    (4) cap each side at the image size; (5) shift the box inside the image (shift, not
    clip, so it keeps its size whenever that size fits).

    ``image_size`` is PIL's ``(width, height)``. Returns integer-valued floats (a
    ``Box``), ready for ``PIL.Image.crop`` after ``int()``. The ratio bound holds unless
    the image itself is too narrow on the short axis (e.g. a 2000 px tall box in a
    20 px wide image): then that side spans the whole image and the ratio can exceed
    ``max_ratio`` -- the long side is never shrunk, so evidence is never cut away.
    """
    W, H = int(image_size[0]), int(image_size[1])
    if W < 1 or H < 1:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    if not max_ratio >= 1.0:
        raise ValueError(f"max_ratio must be >= 1, got {max_ratio!r}")
    if not all(math.isfinite(float(v)) for v in box):
        raise ValueError(f"box has non-finite coordinates: {box}")
    x0f, x1f = sorted((float(box[0]), float(box[2])))
    y0f, y1f = sorted((float(box[1]), float(box[3])))
    eps = 1e-9
    x0, x1 = max(math.floor(x0f + eps), 0), min(math.ceil(x1f - eps), W)
    y0, y1 = max(math.floor(y0f + eps), 0), min(math.ceil(y1f - eps), H)
    w, h = max(x1 - x0, 0), max(y1 - y0, 0)

    ms = max(1, math.ceil(float(min_side) - eps))
    if w < ms:
        x0, w = _grow(x0, w, ms), ms
    if h < ms:
        y0, h = _grow(y0, h, ms), ms
    if w > max_ratio * h:
        nh = math.ceil(w / max_ratio - eps)
        y0, h = _grow(y0, h, nh), nh
    elif h > max_ratio * w:
        nw = math.ceil(h / max_ratio - eps)
        x0, w = _grow(x0, w, nw), nw

    if w > W:
        x0, w = _grow(x0, w, W), W
    if h > H:
        y0, h = _grow(y0, h, H), H
    x0 = min(max(x0, 0), W - w)
    y0 = min(max(y0, 0), H - h)
    return (float(x0), float(y0), float(x0 + w), float(y0 + h))


def compose(
    box_in_crop: Box,
    crop_box: Box,
    crop_size: tuple[int, int] | None = None,
) -> Box:
    """Map a box in pixels of a crop back to the image that crop was cut from.

    ``crop_box`` is where the crop was cut, in the parent's pixels; ``crop_size`` is the
    crop image's (width, height) as the box was measured on it -- differs from the
    crop_box size when the crop was resized (None = not resized). Per-axis scale
    (crop_box width / crop width, height likewise). Float output, no rounding.
    """
    cx0, cy0, cx1, cy1 = (float(v) for v in crop_box)
    cw, ch = cx1 - cx0, cy1 - cy0
    if crop_size is None:
        sx = sy = 1.0
    else:
        wpx, hpx = float(crop_size[0]), float(crop_size[1])
        if not (wpx > 0 and hpx > 0):
            raise ValueError(f"crop_size must be positive (width, height), got {crop_size}")
        sx, sy = cw / wpx, ch / hpx
    x0, y0, x1, y1 = (float(v) for v in box_in_crop)
    return (cx0 + x0 * sx, cy0 + y0 * sy, cx0 + x1 * sx, cy0 + y1 * sy)


def compose_chain(
    box: Box,
    chain: Sequence[tuple[Box, tuple[int, int] | None]],
) -> Box:
    """Map a box in the innermost crop's pixels back to the original image.

    ``chain`` lists the crops from the outside in: ``chain[0] = (crop_box, crop_size)``
    was cut from the original image, ``chain[1]`` from chain[0]'s crop image, ...; ``box``
    is in pixels of the last crop image. An empty chain returns the box unchanged.
    """
    out = tuple(float(v) for v in box)
    for crop_box, crop_size in reversed(list(chain)):
        out = compose(out, crop_box, crop_size)
    return out  # type: ignore[return-value]
