"""Infographic / chart value reading (InfographicVQA): coloured bars with small digit labels.

Bars are drawn to scale, so a glance gives the rough size but not the printed value; one
question in three compares two bars whose values differ by 1 or 2.
"""
from __future__ import annotations

from PIL import ImageDraw

from ..core import (COLOURS, GEOMETRIES, Geometry, Item, background, canvas_size, detail_meta, font, pick, scribble,
                    text_fit)

METRIC = "anls"
MULTI_P = 1 / 3


def generate(rng, geo: Geometry = GEOMETRIES["v1"]) -> Item:
    w, h = canvas_size(rng, aspect=(0.5, 1.4))
    img = background(rng, w, h)
    d = ImageDraw.Draw(img)
    n = int(rng.integers(4, 7))
    colours = pick(rng, list(COLOURS), n)
    values = [int(v) for v in rng.choice(range(1, 10), size=n, replace=False)]
    if rng.random() < MULTI_P:
        near = [v for v in range(1, 10) if 0 < abs(v - values[0]) <= 2]
        values[1] = int(rng.choice([v for v in near if v not in values[2:]] or near))
        multi = True
    else:
        multi = False
    # chart panel occupying a random part of the canvas
    pw, ph = int(w * rng.uniform(0.45, 0.8)), int(h * rng.uniform(0.3, 0.55))
    px, py = int(rng.integers(5, w - pw - 5)), int(rng.integers(5, h - ph - 5))
    d.rectangle([px, py, px + pw, py + ph], fill=(252, 252, 252), outline=(80, 80, 80))
    d.text((px + 8, py + 4), scribble(rng, 10), fill=(60, 60, 60), font=font(max(8, ph // 25)))
    slot = pw / n
    bw = slot * rng.uniform(0.45, 0.7)
    label_h = max(9, int(min(slot * 0.45, ph * 0.1)))
    base_y, top_y = py + ph - 6, py + ph * 0.2 + label_h
    bars, details = [], []
    order = rng.permutation(n)
    for i, k in enumerate(order):
        c, v = colours[k], values[k]
        x0 = px + i * slot + (slot - bw) / 2
        y0 = base_y - (base_y - top_y) * v / 10
        d.rectangle([x0, y0, x0 + bw, base_y], fill=COLOURS[c])
        if geo.detail is None:
            lw = int(min(slot * 0.95, label_h * 1.8))
            lx = int(x0 + bw / 2 - lw / 2)
            label = (lx, int(y0) - label_h - 2, lx + lw, int(y0) - 2)
            text_fit(d, label, str(v), fill=(0, 0, 0), fill_frac=0.95)
            # evidence: the label plus the top of its bar (what identifies the colour)
            ev = (min(label[0], int(x0)), label[1], max(label[2], int(x0 + bw)), int(y0) + max(4, label_h // 2))
        else:
            # the bar's top (its colour) and a value label `detail` x that object's side high
            s = geo.object_side(rng, w, h)
            lh = max(4, round(s * geo.detail))
            cx = int(x0 + bw / 2)
            label = (cx - lh, int(y0) - lh - 2, cx + lh, int(y0) - 2)
            text_fit(d, label, str(v), fill=(0, 0, 0), fill_frac=0.95)
            top = label[1] - max(1, (s - lh - 2) // 3)
            ev = (max(0, cx - s // 2), max(0, top), min(w, cx - s // 2 + s), min(h, top + s))  # a bar near the edge: inside the canvas
        bars.append((c, v, ev))
        details.append((ev, label))
    by_colour = {c: (v, b) for c, v, b in bars}
    facts = [(f"what is the value of the {c} bar ?", str(v), b) for c, v, b in bars]
    facts += [(f"where is the {c} bar ?", None, b) for c, _, b in bars]
    if multi:
        c1, c2 = colours[0], colours[1]
        (v1, b1), (v2, b2) = by_colour[c1], by_colour[c2]
        ans = c1 if v1 > v2 else c2
        return Item(img, f"which is larger , the {c1} or the {c2} bar ?", [ans], [b1, b2], "info",
                    meta={"key": [c1, c2], "values": [v1, v2], "target": f"{c1} bar", **detail_meta(geo, details)},
                    facts=facts)
    c = colours[0]
    v, b = by_colour[c]
    return Item(img, f"what is the value of the {c} bar ?", [str(v)], [b], "info",
                meta={"key": c, "target": f"{c} bar", **detail_meta(geo, details)}, facts=facts)
