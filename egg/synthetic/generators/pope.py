"""Object existence (POPE): "is there a {colour} {shape} ?" over scattered small objects.

Half the questions are positives. Negatives come in POPE's three kinds: random (an absent
pair drawn at random), popular (an absent pair using the most frequent colour in the image)
and adversarial (colour and shape both present in the image, but never together). A
negative's evidence box is its most confusable object (same colour), which a model must
inspect to say no. The training facts ask about every object ("yes") and, per colour on the
canvas, about one absent shape of that colour ("no"), so that a model trained on them cannot
answer from the prior. Drawn for a token grid (`Geometry.detail`), an object spans 4-16 cells,
so that its shape is seen at the full view, its training facts ask "no" exactly as often as "yes"
(run 9, taught about twice as many, answered "no" to every item), and they also ask what shape
an object of a colour seen once is: a tower warmed up on colours and reading crops alone never told the
shapes apart, and its model answered "no" to every pope question (CHANGELOG, 2026-12-01).
"""
from __future__ import annotations

from collections import Counter

from PIL import ImageDraw

from ..core import COLOURS, GEOMETRIES, SHAPES, Geometry, Item, background, canvas_size, draw_shape, pick, place

METRIC = "pope"
FRAC = (0.001, 0.012)
NEGATIVES = ("random", "popular", "adversarial")


def generate(rng, geo: Geometry = GEOMETRIES["v1"]) -> Item:
    w, h = canvas_size(rng)
    img = background(rng, w, h)
    d = ImageDraw.Draw(img)
    taken, objs = [], []
    for _ in range(int(rng.integers(4, 8))):
        s = int(round(geo.object_side(rng, w, h, FRAC) * geo.pope_scale))
        try:
            box = place(rng, w, h, s, s, taken)
        except RuntimeError:
            if len(objs) < 3:  # large objects (`pope_scale`) on a narrow canvas: fewer of them, never under 3
                raise
            break
        c, t = pick(rng, list(COLOURS)), pick(rng, SHAPES)
        draw_shape(d, t, box, COLOURS[c])
        objs.append((c, t, box))
    present = {(c, t) for c, t, _ in objs}
    facts = [(f"is there a {c} {t} in the image ?", "yes", b) for c, t, b in objs]
    facts += [(f"where is the {c} {t} ?", None, b) for c, t, b in objs]
    absent = [(c, t) for c in COLOURS for t in SHAPES if (c, t) not in present]
    if geo.detail is None:
        # training facts that answer "no": per colour present, one of its absent shapes, at the first
        # object of that colour (chosen without the rng, so the item itself does not change)
        first = {c: b for c, _, b in reversed(objs)}
        for i, (c, b) in enumerate(first.items()):
            shapes = [t for t in SHAPES if (c, t) in absent]
            if shapes:
                facts.append((f"is there a {c} {shapes[(i + len(objs)) % len(shapes)]} in the image ?", "no", b))
    else:
        # as many "no" facts as "yes" ones, each at an object that shares its colour or its shape
        # (the adversarial negatives); a model then has to see the shape to answer
        for i, (c, t, b) in enumerate(objs):
            shapes = [s for s in SHAPES if (c, s) in absent]
            colours = [k for k in COLOURS if (k, t) in absent]
            if i % 2 and colours:
                facts.append((f"is there a {colours[i % len(colours)]} {t} in the image ?", "no", b))
            elif shapes:
                facts.append((f"is there a {c} {shapes[i % len(shapes)]} in the image ?", "no", b))
        seen = Counter(c for c, _, _ in objs)
        facts += [(f"what shape is in the {c} region ?", t, b) for c, t, b in objs if seen[c] == 1]
    if rng.random() < 0.5 or not absent:
        c, t, box = objs[int(rng.integers(0, len(objs)))]
        return Item(img, f"is there a {c} {t} in the image ?", ["yes"], [box], "pope",
                    meta={"label": "yes", "negative": None, "key": c, "target": f"{c} {t}"}, facts=facts)
    kind = NEGATIVES[int(rng.integers(0, 3))]
    colours_here = Counter(c for c, _, _ in objs)
    shapes_here = {t for _, t, _ in objs}
    pool = absent
    if kind == "popular":
        top = colours_here.most_common(1)[0][0]
        pool = [p for p in absent if p[0] == top] or absent
    elif kind == "adversarial":
        pool = [p for p in absent if p[0] in colours_here and p[1] in shapes_here] or absent
    c, t = pool[int(rng.integers(0, len(pool)))]
    confusable = [b for oc, _, b in objs if oc == c] or [b for _, ot, b in objs if ot == t] or [objs[0][2]]
    return Item(img, f"is there a {c} {t} in the image ?", ["no"], [confusable[0]], "pope",
                meta={"label": "no", "negative": kind, "key": c}, facts=facts)
