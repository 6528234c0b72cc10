"""Boxes and their geometry: the one ``Box`` type, and how boxes move between frames.

``Box = (x0, y0, x1, y1)``; x is the column / horizontal axis, y the row / vertical axis;
``x1``/``y1`` are exclusive (a box of one cell at column c, row r is ``(c, r, c + 1, r + 1)``).
Grid shapes are numpy shapes ``(rows, cols)``; image sizes are PIL sizes ``(width, height)``.

Frames: grid cells -> pixels of the image the grid covers (``grid_box_to_pixels``),
widening to a sane aspect ratio inside the image (``clamp_aspect``), and crop pixels ->
pixels of the parent image (``compose``, ``compose_chain``), so that crops of crops,
resized or not, map back to the original (docs/method.md section 2.6).
"""
from __future__ import annotations

import math
from typing import Sequence

Box = tuple[float, float, float, float]


def as_box(b) -> Box:
    """Any 4-sequence of numbers as a ``Box`` of floats (JSON lists, numpy rows, int tuples)."""
    return tuple(float(v) for v in b)  # type: ignore[return-value]


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


def point_in_box(pt: tuple[float, float], box: Box, tolerance: float | tuple[float, float] = 0.0) -> bool:
    """Is the point (x, y) inside the box grown by ``tolerance`` on every side (a pair: by its
    first value left and right, its second above and below)?

    Points are continuous coordinates, so the test is closed on both ends
    (x0 - tol <= x <= x1 + tol), unlike cell membership.
    """
    x, y = pt
    x0, y0, x1, y1 = box
    tx, ty = tolerance if isinstance(tolerance, tuple) else (tolerance, tolerance)
    return (x0 - tx <= x <= x1 + tx) and (y0 - ty <= y <= y1 + ty)


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
