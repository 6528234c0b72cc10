"""Form key-value lookup (DocVQA): a page of small text lines with coloured field tags and digit values.

One question in three compares two fields ("which is larger, the red or the blue field ?").
"""
from __future__ import annotations

from PIL import ImageDraw

from ..core import (COLOURS, GEOMETRIES, Geometry, Item, canvas_size, detail_meta, font, pick, place, scribble,
                    text_fit, union)

METRIC = "anls"
FRAC = (0.001, 0.015)
MULTI_P = 1 / 3


def generate(rng, geo: Geometry = GEOMETRIES["v1"]) -> Item:
    w, h = canvas_size(rng, aspect=(0.6, 1.1))
    img = _page(rng, w, h)
    d = ImageDraw.Draw(img)
    colours = pick(rng, list(COLOURS), int(rng.integers(3, 6)))
    values = [int(v) for v in rng.choice(range(1, 10), size=len(colours), replace=False)]
    taken, fields, details = [], [], []
    for c, v in zip(colours, values):
        s = geo.object_side(rng, w, h, FRAC)
        # v1: a narrow coloured tag beside the value; with a detail size, the tag is most of the
        # field and the digit's height is `detail` x the field's longer side, the side a crop's
        # scale is measured on (at the square-equivalent side, a 3x crop read 40% against 72-80%)
        fw, fh = int(s * 1.3), max(10, int(s * 0.75))
        tag_w, fill = (0.3, 0.9) if geo.detail is None else (0.6, geo.detail * fw / fh)
        box = place(rng, w, h, fw, fh, taken)
        tag = (box[0], box[1], box[0] + int(fw * tag_w), box[3])
        val = (tag[2], box[1], box[2], box[3])
        d.rectangle(box, fill=(255, 255, 255))
        d.rectangle(tag, fill=COLOURS[c])
        text_fit(d, val, str(v), fill=(0, 0, 0), fill_frac=fill)
        fields.append((c, v, union(tag, val)))
        details.append((union(tag, val), val))
    facts = [(f"what is the value of the {c} field ?", str(v), b) for c, v, b in fields]
    facts += [(f"where is the {c} field ?", None, b) for c, _, b in fields]
    if rng.random() < MULTI_P:
        (c1, v1, b1), (c2, v2, b2) = fields[0], fields[1]
        ans = c1 if v1 > v2 else c2
        return Item(img, f"which is larger , the {c1} or the {c2} field ?", [ans], [b1, b2], "doc",
                    meta={"key": [c1, c2], "values": [v1, v2], "target": f"{c1} field", **detail_meta(geo, details)},
                    facts=facts)
    c, v, b = fields[0]
    return Item(img, f"what is the value of the {c} field ?", [str(v)], [b], "doc",
                meta={"key": c, "target": f"{c} field", **detail_meta(geo, details)}, facts=facts)


def _page(rng, w: int, h: int):
    """White page covered in grey lines of small pseudo-text: dense distractors, like a scanned form."""
    from PIL import Image

    img = Image.new("RGB", (w, h), (250, 250, 248))
    d = ImageDraw.Draw(img)
    y = int(rng.integers(10, 30))
    while y < h - 20:
        size = int(rng.integers(9, 16))
        x = int(rng.integers(10, 60))
        while x < w - 60:
            word = scribble(rng)
            g = int(rng.integers(60, 140))
            d.text((x, y), word, fill=(g, g, g), font=font(size, bold=False))
            x += int(size * 0.6 * len(word)) + int(rng.integers(6, 20))
        y += size + int(rng.integers(6, 20))
    return img
