"""Tiny-object attributes (V* Bench): a small glyph inside a coloured ring, multiple choice.

One question in three needs two rings (do their glyphs match?).
"""
from __future__ import annotations

from PIL import ImageDraw

from ..core import (COLOURS, GEOMETRIES, SHAPES, Geometry, Item, background, canvas_size, detail_meta, draw_shape,
                    mc_options, mc_question, pick, place)

METRIC = "multiple_choice"
FRAC = (0.001, 0.015)
MULTI_P = 1 / 3


def draw_ring(d: ImageDraw.ImageDraw, box, colour: str, glyph: str, detail: float | None = None):
    """A coloured ring around a white disc holding a black shape; with `detail`, the shape's side
    is `detail` x the ring's and the ring is most of the disc. Returns the disc."""
    s = box[2] - box[0]
    d.ellipse(box, fill=COLOURS[colour])
    inner, shape = (0.18, 0.25) if detail is None else ((1 - 1.4 * detail) / 2, (1 - detail) / 2)
    m = s * inner
    disc = (box[0] + m, box[1] + m, box[2] - m, box[3] - m)
    d.ellipse(disc, fill=(255, 255, 255))
    m = s * shape
    draw_shape(d, glyph, (int(box[0] + m), int(box[1] + m), int(box[2] - m), int(box[3] - m)), (0, 0, 0))
    return disc


def generate(rng, geo: Geometry = GEOMETRIES["v1"]) -> Item:
    w, h = canvas_size(rng)
    img = background(rng, w, h)
    d = ImageDraw.Draw(img)
    colours = pick(rng, list(COLOURS), int(rng.integers(3, 6)))
    multi = rng.random() < MULTI_P
    same = rng.random() < 0.5
    taken, rings, details = [], [], []
    for i, c in enumerate(colours):
        s = geo.object_side(rng, w, h, FRAC)
        box = place(rng, w, h, s, s, taken)
        glyph = rings[0][1] if (multi and same and i == 1) else pick(rng, SHAPES)
        details.append((box, draw_ring(d, box, c, glyph, geo.detail)))
        rings.append((c, glyph, box))
    facts = [(f"what shape is in the {c} ring ?", g, b) for c, g, b in rings]
    facts += [(f"where is the {c} ring ?", None, b) for c, _, b in rings]
    if multi:
        (c1, g1, b1), (c2, g2, b2) = rings[0], rings[1]
        truth = "yes" if g1 == g2 else "no"
        opts = ["yes", "no"]
        q = mc_question(f"are the shapes in the {c1} and {c2} rings the same ?", opts)
        # drawn for a token grid, the yes/no is marked as read off both rings (`compares`): taught
        # only where both are readable, not from the prior at the full view (where every model said yes)
        meta = {"key": [c1, c2], "truth": truth, "target": f"{c1} ring", **({"compares": True} if geo.detail else {}),
                **detail_meta(geo, details)}
        return Item(img, q, ["A" if truth == "yes" else "B"], [b1, b2], "vstar", options=opts, meta=meta, facts=facts)
    c, g, b = rings[0]
    opts, letter = mc_options(rng, g, SHAPES)
    q = mc_question(f"what shape is in the {c} ring ?", opts)
    return Item(img, q, [letter], [b], "vstar", options=opts,
                meta={"key": c, "truth": g, "target": f"{c} ring", **detail_meta(geo, details)}, facts=facts)
