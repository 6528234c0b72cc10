"""Scene-text reading (TextVQA): coloured signs, each carrying a letter; name the colour, read the sign.

The alphabet is small (see `GLYPHS`) so that a vision tower trained on a CPU can learn to read
it once zoomed; at the full view a sign is a few pixels of colour and its letter is unreadable.
"""
from __future__ import annotations

from PIL import ImageDraw

from ..core import COLOURS, GLYPHS, Item, background, canvas_size, evidence_side, pick, place, text_fit

METRIC = "vqa_accuracy"
FRAC = (0.002, 0.02)


def draw_sign(d: ImageDraw.ImageDraw, box, colour: str, glyph: str) -> None:
    """A coloured frame (the key, visible from afar) around a white panel with a black letter."""
    d.rectangle(box, fill=COLOURS[colour])
    m = max(2, int((box[2] - box[0]) * 0.14))
    panel = (box[0] + m, box[1] + m, box[2] - m, box[3] - m)
    d.rectangle(panel, fill=(255, 255, 255))
    text_fit(d, panel, glyph.upper(), fill=(0, 0, 0), fill_frac=0.9)


def generate(rng) -> Item:
    w, h = canvas_size(rng)
    img = background(rng, w, h)
    d = ImageDraw.Draw(img)
    colours = pick(rng, list(COLOURS), int(rng.integers(3, 6)))
    taken, signs = [], []
    for c in colours:
        s = evidence_side(rng, w, h, FRAC)
        box = place(rng, w, h, s, int(s * 0.9), taken)
        glyph = pick(rng, GLYPHS)
        draw_sign(d, box, c, glyph)
        signs.append((c, glyph, box))
    facts = [(f"what letter is on the {c} sign ?", g, box) for c, g, box in signs]
    facts += [(f"where is the {c} sign ?", None, box) for c, _, box in signs]
    c, g, box = signs[0]
    return Item(img, f"what letter is on the {c} sign ?", [g] * 10, [box], "text",
                meta={"key": c, "target": f"{c} sign"}, facts=facts)
