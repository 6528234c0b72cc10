"""Scene-text reading (TextVQA): coloured signs, each carrying a word; name the colour, read the word."""
from __future__ import annotations

from PIL import ImageDraw

from ..core import COLOURS, WORDS, Item, background, canvas_size, evidence_side, pick, place, text_fit

METRIC = "vqa_accuracy"
FRAC = (0.001, 0.02)


def generate(rng) -> Item:
    w, h = canvas_size(rng)
    img = background(rng, w, h)
    d = ImageDraw.Draw(img)
    colours = pick(rng, list(COLOURS), int(rng.integers(3, 6)))
    taken, signs = [], []
    for c in colours:
        s = evidence_side(rng, w, h, FRAC)
        box = place(rng, w, h, int(s * 1.4), max(10, int(s * 0.7)), taken)
        word = pick(rng, WORDS)
        d.rectangle(box, fill=COLOURS[c])
        text_fit(d, box, word.upper(), fill=(255, 255, 255) if c not in ("yellow", "orange") else (0, 0, 0))
        signs.append((c, word, box))
    facts = [(f"what word is on the {c} sign ?", word, box) for c, word, box in signs]
    facts += [(f"where is the {c} sign ?", None, box) for c, _, box in signs]
    c, word, box = signs[0]
    return Item(img, f"what word is on the {c} sign ?", [word] * 10, [box], "text",
                meta={"key": c, "target": f"{c} sign"}, facts=facts)
