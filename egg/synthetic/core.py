"""Shared pieces of the procedural benchmark: the item record, seeding, canvases, fonts.

Every family draws *keys* that survive downsampling (a saturated colour, a big shape)
next to *values* that do not (a word, a digit, a small glyph). A model at low input
resolution can then find the named object but not read it: exactly the situation EGG
is built for.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]

SPLITS = {"train": 0, "val": 1, "test": 2}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 170, 40),
    "blue": (30, 70, 230),
    "yellow": (240, 210, 0),
    "purple": (150, 40, 190),
    "orange": (250, 130, 0),
}
SHAPES = ["circle", "square", "triangle", "star", "cross"]
# Letters a tiny vision tower can learn to read on a CPU (no "a": VQA normalisation drops articles).
GLYPHS = ["e", "h", "k", "m", "r", "s", "x", "z"]
LETTERS = ["A", "B", "C", "D"]
POSITIONS = ["left", "right", "top", "bottom"]


@dataclass
class Item:
    """One benchmark question with its ground-truth evidence."""

    image: Image.Image
    question: str
    answers: list[str]
    boxes: list[Box]
    family: str
    options: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    # Every other answerable fact about the same image, as (question, answer, box): used by
    # training to ask several questions per rendered image, never by evaluation.
    facts: list[tuple[str, str, Box]] = field(default_factory=list, repr=False)

    @property
    def multi_evidence(self) -> bool:
        return len(self.boxes) > 1

    @property
    def evidence_fraction(self) -> float:
        """Area of the evidence (union of boxes, assumed disjoint) over the image area."""
        w, h = self.image.size
        return sum((b[2] - b[0]) * (b[3] - b[1]) for b in self.boxes) / float(w * h)


def rng_for(family: str, split: str, index: int, seed: int) -> np.random.Generator:
    """Independent stream per (family, split, index, seed); splits never share a stream."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    fam = int(hashlib.sha256(family.encode()).hexdigest()[:8], 16)
    return np.random.default_rng([SPLITS[split], fam, int(index), int(seed)])


@cache
def font(size: int, bold: bool = True) -> ImageFont.FreeTypeFont:
    """DejaVu from matplotlib's bundled fonts: no system font files needed."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", name)
    return ImageFont.truetype(path, max(4, int(size)))


def canvas_size(rng: np.random.Generator, aspect: tuple[float, float] = (0.6, 1.8)) -> tuple[int, int]:
    """A high-resolution canvas, long side 768-1536 px, varied aspect ratio (w / h)."""
    long_side = int(rng.integers(768, 1537))
    a = float(np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]))))
    if a >= 1:
        return long_side, max(256, int(round(long_side / a)))
    return max(256, int(round(long_side * a))), long_side


def evidence_side(rng: np.random.Generator, w: int, h: int, frac: tuple[float, float]) -> int:
    """Side of a square with a log-uniform area fraction in `frac`."""
    f = float(np.exp(rng.uniform(np.log(frac[0]), np.log(frac[1]))))
    return max(12, int(round(math.sqrt(f * w * h))))


@dataclass(frozen=True)
class Geometry:
    """How large the named objects and their details are drawn, relative to a model's token grid.

    Real benchmarks put the named object (a sign, a form field, a bar) in a few token cells of
    the full view and its detail (the word, the digit) far below what those cells resolve. A
    benchmark drawn for a coarser grid cannot test the method: on the 8x8 reference model one
    smoothed blob covered a third of the map (docs/method.md section 8).

    - ``v1``: each family's own sizes (area fractions of the canvas), sized for an 8x8 grid.
    - ``llava15``: LLaVA-1.5's 24x24 grid. The named object covers 1-4 token cells in area at the
      full view (`object_cells`, log-uniform) and its detail is about `detail` x its side: 4-10
      input pixels at the full view (unreadable), 24-50 px in a crop 3x the object's side. At a
      quarter of its side (13-30 px at 3x), the 64-wide reference tower read a tight crop but not
      a 3x one (CHANGELOG, 2026-12-01).
    - ``llava15-large``: the same grid, the named object 3-4 cells a side (9-16 in area) and its
      detail 0.3 x its side (its glyph a median of 8-13 px at the full view, over 20 px in a crop 3x
      the object's side: `tests/test_bench.py`). The paper's region defaults cannot box an object
      of 1-2 cells a side tighter than 18-64x its area (`egg.synthetic.ideal.square_floor`); at 3-4
      cells a side they reach 5.6-9x.
    - ``llava15-large-d4``: ``llava15-large`` with the detail 0.4 x the object's side, as at
      ``llava15``: in a crop 3x the object's side the 64-wide tower read details of 50 px (``llava15``)
      and not of 39 px (``llava15-large``; CHANGELOG, stop 53).
    - ``llava15-large-pope``: ``llava15-large-d4`` with pope's objects 1.5x as large, 4.5-6 cells a
      side (48-83 px at the full view, where a real POPE object is seen): at 3-4 cells the pope
      question was answered from the prior, "yes" on 90% of items (CHANGELOG, stop 53). Twice as
      large, a canvas did not hold its 4-7 objects on 130 of 300 items.

    `pope_scale` multiplies the side of pope's objects, so that their shape is seen at the full view.
    """

    name: str
    object_cells: tuple[float, float] | None = None
    grid: int = 24
    detail: float | None = None
    pope_scale: float = 1

    def object_side(self, rng: np.random.Generator, w: int, h: int, frac: tuple[float, float] | None = None) -> int:
        """Canvas side of a named object: the family's `frac` (v1) or `object_cells` of the grid."""
        if self.object_cells is None:
            if frac is None:
                raise ValueError(f"geometry {self.name!r} sizes objects by the family's area fraction; pass frac")
            return evidence_side(rng, w, h, frac)
        lo, hi = self.object_cells
        cells = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return max(12, int(round(math.sqrt(cells * w * h) / self.grid)))


GEOMETRIES = {
    "v1": Geometry("v1"),
    "llava15": Geometry("llava15", object_cells=(1.0, 4.0), grid=24, detail=0.4, pope_scale=2),
    "llava15-large": Geometry("llava15-large", object_cells=(9.0, 16.0), grid=24, detail=0.3),
    "llava15-large-d4": Geometry("llava15-large-d4", object_cells=(9.0, 16.0), grid=24, detail=0.4),
    "llava15-large-pope": Geometry("llava15-large-pope", object_cells=(9.0, 16.0), grid=24, detail=0.4, pope_scale=1.5),
}


#: The config attribute a reference model records its training geometry in (``egg.reference.train``).
GEOMETRY_ATTR = "egg_geometry"


def geometry_for(vlm) -> Geometry:
    """The geometry a model's items are drawn in: the one it was trained on (its config's
    ``egg_geometry``), else ``v1``. So a 24x24 reference model is tested on the items sized for
    its grid without every caller naming it."""
    from ..adapters import as_adapter

    return geometry(getattr(as_adapter(vlm).model.config, GEOMETRY_ATTR, None) or "v1")


def geometry(name: str | Geometry) -> Geometry:
    """A `Geometry` by name (or itself); unknown names are an error listing the known ones."""
    if isinstance(name, Geometry):
        return name
    if name not in GEOMETRIES:
        raise ValueError(f"unknown benchmark geometry {name!r}; expected one of {sorted(GEOMETRIES)}")
    return GEOMETRIES[name]


def background(rng: np.random.Generator, w: int, h: int, pale: bool = True) -> Image.Image:
    """A pale textured background with grey clutter (lines, blobs, scribbles) as distractors."""
    base = rng.integers(200, 246, size=3) if pale else rng.integers(150, 200, size=3)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in base))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(15, 40))):
        g = int(rng.integers(90, 190))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        kind = rng.integers(0, 3)
        if kind == 0:
            d.line([x0, y0, x0 + int(rng.integers(-200, 200)), y0 + int(rng.integers(-200, 200))],
                   fill=(g, g, g), width=int(rng.integers(1, 4)))
        elif kind == 1:
            r = int(rng.integers(4, 30))
            d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=(g, g, g))
        else:
            d.text((x0, y0), scribble(rng), fill=(g, g, g), font=font(int(rng.integers(8, 20)), bold=False))
    return img


def scribble(rng: np.random.Generator, n: int | None = None) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    n = int(rng.integers(3, 9)) if n is None else n
    return "".join(letters[i] for i in rng.integers(0, 26, size=n))


def place(rng: np.random.Generator, w: int, h: int, bw: int, bh: int, taken: list[Box],
          margin: int = 6, tries: int = 200) -> Box:
    """A box of size bw x bh inside the canvas that does not overlap `taken` (with margin)."""
    bw, bh = min(bw, w - 2), min(bh, h - 2)
    for _ in range(tries):
        x0 = int(rng.integers(1, max(2, w - bw - 1)))
        y0 = int(rng.integers(1, max(2, h - bh - 1)))
        box = (x0, y0, x0 + bw, y0 + bh)
        if all(not overlaps(box, t, margin) for t in taken):
            taken.append(box)
            return box
    raise RuntimeError("could not place a box without overlap; the canvas is too crowded")


def overlaps(a: Box, b: Box, margin: int = 0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def detail_meta(geo: Geometry, details) -> dict:
    """`Item.meta`'s "details": (object box, where its letter, shape or digit is drawn) for each
    object to read, as the generator drew them; only at a geometry with a detail size, where
    training looks at the detail rather than the object (`egg.reference.detail`)."""
    return {"details": [(tuple(o), tuple(d)) for o, d in details]} if geo.detail is not None else {}


def union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def text_fit(d: ImageDraw.ImageDraw, box: Box, text: str, fill, fill_frac: float = 0.8) -> None:
    """Draw `text` centred in `box`, as large as fits `fill_frac` of it."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    size = max(4, int(bh * fill_frac))
    while size > 4:
        l, t, r, b = d.textbbox((0, 0), text, font=font(size))
        if r - l <= bw * fill_frac and b - t <= bh * fill_frac:
            break
        size -= 1
    f = font(size)
    l, t, r, b = d.textbbox((0, 0), text, font=f)
    x = box[0] + (bw - (r - l)) / 2 - l
    y = box[1] + (bh - (b - t)) / 2 - t
    d.text((x, y), text, fill=fill, font=f)


def draw_shape(d: ImageDraw.ImageDraw, shape: str, box: Box, fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 2
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "star":
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.42
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(pts, fill=fill)
    elif shape == "cross":
        t = r * 0.33
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def pick(rng: np.random.Generator, seq, k: int | None = None):
    if k is None:
        return seq[int(rng.integers(0, len(seq)))]
    return [seq[i] for i in rng.choice(len(seq), size=k, replace=False)]


def mc_options(rng: np.random.Generator, correct: str, pool: list[str], n: int = 4) -> tuple[list[str], str]:
    """Shuffled options containing `correct`; returns (options, letter of the correct one)."""
    others = [p for p in pool if p != correct]
    opts = [correct] + pick(rng, others, min(n - 1, len(others)))
    order = rng.permutation(len(opts))
    opts = [opts[i] for i in order]
    return opts, LETTERS[opts.index(correct)]


def mc_question(stem: str, options: list[str]) -> str:
    opts = " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{stem} {opts}"
