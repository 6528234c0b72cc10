"""Coarse spatial questions (RealWorldQA), the control: the evidence is a large region.

A model at low resolution can answer these; zooming should not help, and a method that
throws away the full view could hurt.
"""
from __future__ import annotations

from PIL import ImageDraw

from ..core import (COLOURS, GEOMETRIES, POSITIONS, Geometry, Item, background, canvas_size, mc_options, mc_question,
                    pick)

METRIC = "multiple_choice"


def generate(rng, geo: Geometry = GEOMETRIES["v1"]) -> Item:
    """`geo` does not change this family: its objects are meant to be seen at the full view."""
    w, h = canvas_size(rng)
    img = background(rng, w, h)
    d = ImageDraw.Draw(img)
    c, other = pick(rng, list(COLOURS), 2)
    side = pick(rng, POSITIONS)
    fw, fh = rng.uniform(0.25, 0.4), rng.uniform(0.25, 0.4)
    rw, rh = int(w * fw), int(h * fh)
    if side in ("left", "right"):
        x0 = int(w * rng.uniform(0.02, 0.1)) if side == "left" else w - rw - int(w * rng.uniform(0.02, 0.1))
        y0 = int((h - rh) * rng.uniform(0.2, 0.8))
    else:
        y0 = int(h * rng.uniform(0.02, 0.1)) if side == "top" else h - rh - int(h * rng.uniform(0.02, 0.1))
        x0 = int((w - rw) * rng.uniform(0.2, 0.8))
    box = (x0, y0, x0 + rw, y0 + rh)
    d.rectangle(box, fill=COLOURS[c])
    # a smaller distractor region of another colour near the centre
    s = int(min(w, h) * 0.12)
    cx, cy = int(w * rng.uniform(0.4, 0.6)), int(h * rng.uniform(0.4, 0.6))
    d.ellipse([cx - s, cy - s, cx + s, cy + s], fill=COLOURS[other])
    opts, letter = mc_options(rng, side, POSITIONS)
    q = mc_question(f"where is the large {c} region ?", opts)
    return Item(img, q, [letter], [box], "rwqa", options=opts, meta={"key": c, "truth": side, "target": f"large {c} region"},
                facts=[(f"where is the large {c} region ?", None, box)])
