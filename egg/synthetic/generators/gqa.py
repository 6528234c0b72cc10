"""Compositional relations (GQA): where is one medium-sized object relative to another.

Objects are large enough to see at low resolution, so zooming should matter little: the
paper finds EGG about neutral on GQA. Both objects are evidence.
"""
from __future__ import annotations

from PIL import ImageDraw

from ..core import (COLOURS, GEOMETRIES, SHAPES, Geometry, Item, background, canvas_size, draw_shape, evidence_side,
                    pick, place)

METRIC = "exact_match"
FRAC = (0.01, 0.04)


def generate(rng, geo: Geometry = GEOMETRIES["v1"]) -> Item:
    """`geo` does not change this family: its objects are meant to be seen at the full view."""
    w, h = canvas_size(rng)
    img = background(rng, w, h)
    d = ImageDraw.Draw(img)
    taken, objs = [], []
    pairs = pick(rng, [(c, t) for c in COLOURS for t in SHAPES], int(rng.integers(3, 6)))
    for c, t in pairs:
        s = evidence_side(rng, w, h, FRAC)
        box = place(rng, w, h, s, s, taken, margin=10)
        draw_shape(d, t, box, COLOURS[c])
        objs.append((c, t, box))
    facts = [(f"where is the {c} {t} ?", None, b) for c, t, b in objs]
    (c1, t1, b1), (c2, t2, b2) = objs[0], objs[1]
    dx = (b1[0] + b1[2] - b2[0] - b2[2]) / 2
    dy = (b1[1] + b1[3] - b2[1] - b2[3]) / 2
    if abs(dx) >= abs(dy):
        rel, q = ("left" if dx < 0 else "right"), "to the left or right of"
    else:
        rel, q = ("above" if dy < 0 else "below"), "above or below"
    return Item(img, f"is the {c1} {t1} {q} the {c2} {t2} ?", [rel], [b1, b2], "gqa",
                meta={"key": [c1, c2], "target": f"{c1} {t1}"}, facts=facts)
