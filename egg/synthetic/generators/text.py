"""Scene-text reading (TextVQA): coloured signs, each carrying a letter; name the colour, read the sign.

The alphabet is small (see `GLYPHS`) so that a vision tower trained on a CPU can learn to read
it once zoomed; at the full view a sign is a few pixels of colour and its letter is unreadable.
"""
from __future__ import annotations

from PIL import ImageDraw

from ..core import (COLOURS, GEOMETRIES, GLYPHS, Geometry, Item, background, canvas_size, detail_meta, pick, place,
                    text_fit)

METRIC = "vqa_accuracy"
FRAC = (0.002, 0.02)


def draw_sign(d: ImageDraw.ImageDraw, box, colour: str, glyph: str, detail: float | None = None):
    """A coloured frame (the key, visible from afar) around a white panel with a black letter;
    with `detail`, the panel is centred and the letter's height is `detail` x the sign's side.
    Returns the panel, where the letter is read."""
    d.rectangle(box, fill=COLOURS[colour])
    if detail is None:
        m = max(2, int((box[2] - box[0]) * 0.14))
        panel = (box[0] + m, box[1] + m, box[2] - m, box[3] - m)
        fill = 0.9
    else:
        side = min(box[2] - box[0], box[3] - box[1])
        p = max(3, round(side * detail / 0.8))
        cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        panel = (cx - p // 2, cy - p // 2, cx - p // 2 + p, cy - p // 2 + p)
        fill = 0.8
    d.rectangle(panel, fill=(255, 255, 255))
    text_fit(d, panel, glyph.upper(), fill=(0, 0, 0), fill_frac=fill)
    return panel


def generate(rng, geo: Geometry = GEOMETRIES["v1"]) -> Item:
    w, h = canvas_size(rng)
    img = background(rng, w, h)
    d = ImageDraw.Draw(img)
    colours = pick(rng, list(COLOURS), int(rng.integers(3, 6)))
    taken, signs, details = [], [], []
    for c in colours:
        s = geo.object_side(rng, w, h, FRAC)
        box = place(rng, w, h, s, int(s * 0.9), taken)
        glyph = pick(rng, GLYPHS)
        details.append((box, draw_sign(d, box, c, glyph, geo.detail)))
        signs.append((c, glyph, box))
    facts = [(f"what letter is on the {c} sign ?", g, box) for c, g, box in signs]
    facts += [(f"where is the {c} sign ?", None, box) for c, _, box in signs]
    c, g, box = signs[0]
    return Item(img, f"what letter is on the {c} sign ?", [g] * 10, [box], "text",
                meta={"key": c, "target": f"{c} sign", **detail_meta(geo, details)}, facts=facts)
