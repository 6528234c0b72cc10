"""Where an object's detail (the letter, shape or digit to read) lies inside its box, as the
benchmark's generators draw it at a geometry with a detail size."""
from __future__ import annotations


def detail_box(family: str, box, detail: float | None):
    """Where the detail of an object drawn with `detail` (`Geometry.detail`) lies inside its box `box`:
    the sign's white panel, the ring's white disc, the field's value, the bar's label (as the
    generators draw them); None for other families or geometries. Why: binding models look at the
    named colour, and in a crop the letter is beside it (CHANGELOG, stop 45)."""
    if detail is None:
        return None
    x0, y0, x1, y1 = box
    if family == "text":
        p = max(3, round(min(x1 - x0, y1 - y0) * detail / 0.8))
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        return (cx - p // 2, cy - p // 2, cx - p // 2 + p, cy - p // 2 + p)
    if family == "vstar":
        m = (x1 - x0) * (1 - 1.4 * detail) / 2
        return (x0 + m, y0 + m, x1 - m, y1 - m)
    if family == "doc":
        return (x0 + int((x1 - x0) * 0.6), y0, x1, y1)
    if family == "info":
        s = x1 - x0
        lh = max(4, round(s * detail))
        cx, top = x0 + s // 2, y0 + max(1, (s - lh - 2) // 3)
        return (cx - lh, top, cx + lh, top + lh)
    return None
