"""The reference model's training data: examples rendered from the procedural benchmark's
train split, and the collator that turns them into LLaVA inputs.

What the examples are, and why (the mixture matters more than the model), is in the
docstring of ``egg.reference.train``; every number that shapes the mixture is a named
constant here or a field of ``TrainConfig``.
"""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .. import synthetic as bench
from ..synthetic.core import COLOURS, Item, rng_for
from ..method.boxes import box_area, box_contains, box_intersection, clamp_aspect, pixels_to_grid_box
from .build import IMAGE_TOKEN, ReferenceConfig, build_processor
from .detail import detail_box
from .probes import pack_colours, patch_colour_pixels, patch_colours, shape_targets  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # the config lives with the training loop, which imports this module
    from .config import TrainConfig

KINDS = {"full": 0.16, "window": 0.2, "evidence": 0.26, "random": 0.1, "two": 0.14, "locate": 0.14}
# Families whose items yield twice the examples: where a crop must not override the full view.
FAMILY_WEIGHT = {"rwqa": 2, "gqa": 2}
EXACT_P = 0.35  # share of evidence crops that are the exact box, as the oracle crops
READABLE_PX = 12.0  # smaller side, input pixels, below which a detail's answer is not taught (see above)
WINDOW_SCALE = (2.5, 12.0)  # window side / detail side
# pope's shapes are asked at the full view, where an object is 6-12x smaller than the canvas: its
# reading crops reach that scale, or the tower learns shapes only where they fill a crop (run 9
# answered "no" to every pope item). Other families' details are read in crops up to `read_scale`.
FULL_VIEW_READS = {"pope": 10.0}
ROWS, COLS = ["top", "middle", "bottom"], ["left", "middle", "right"]


class Packed:
    """Images kept zlib-compressed until a batch needs them: at 336 px a rendered training set
    would not fit in memory raw (flat synthetic colours compress about 20x)."""

    def __init__(self, images: np.ndarray):
        self.shape, self.blob = images.shape, zlib.compress(np.ascontiguousarray(images).tobytes(), 1)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.blob), dtype=np.uint8).reshape(self.shape)


@dataclass
class Example:
    images: np.ndarray | Packed  # (n, S, S, 3) uint8, already resized to the model input
    turns: list[tuple[str, str]]  # (question, answer), asked in one conversation about the images
    family: str
    kind: str
    enc: tuple[list[int], list[int], list[int]] | None = None  # Collator.encode, computed while rendering
    untrained: tuple[int, ...] = ()  # turns whose answer is not readable in any image: no loss
    looks: tuple[tuple[int, ...], ...] = ()  # per turn: visual tokens (all images, in order) on the named object
    colours: np.ndarray | None = None  # `pack_colours` of its images, computed while rendering
    views: tuple = ()  # the canvas box each image shows
    shapes: np.ndarray | None = None  # `shape_targets` of its views (rendered with `TrainConfig.shape_weight`)

    def colour_targets(self, patch: int) -> np.ndarray:
        """`patch_colours` of the images: unpacked from `colours` when rendering stored them (a
        quarter of a warm-up step's time on 2 cores at 336 px, spent once per image instead)."""
        if self.colours is None:
            return patch_colours(np.asarray(self.images), patch)
        return np.unpackbits(self.colours, axis=-1, count=len(COLOURS)).astype(np.float32)



# ---------------------------------------------------------------- crops and examples
def crop_around(box, image_size, rng, scale=(1.0, 5.0), exact_p: float = 0.0, square: bool = False, spread: float = 1.0):
    """A crop containing `box`, side = box side x log-uniform scale, random aspect (1 if `square`), and
    offset: anywhere (`spread` 1) or within `spread` x the room around the box of centring it (0: centred,
    shifted inside the image). With probability `exact_p` the box itself, made croppable as the oracle does."""
    W, H = image_size
    if exact_p and rng.random() < exact_p:
        return tuple(int(v) for v in clamp_aspect(box, (W, H)))
    bw, bh = box[2] - box[0], box[3] - box[1]
    side = max(bw, bh) * float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    aspect = 1.0 if square else float(np.exp(rng.uniform(np.log(0.6), np.log(1.66))))
    cw, ch = min(W, max(bw + 2, side * math.sqrt(aspect))), min(H, max(bh + 2, side / math.sqrt(aspect)))
    room = [(max(0, b1 - c), min(b0, n - c) + 1e-6, (b0 + b1 - c) / 2)  # where the crop's start can be; centred
            for b0, b1, c, n in ((box[0], box[2], cw, W), (box[1], box[3], ch, H))]
    x0, y0 = (lo + (hi - lo) * rng.random() if spread >= 1 else
              min(max(mid + spread * (hi - lo) * (rng.random() - 0.5), lo), hi) for lo, hi, mid in room)
    return int(x0), int(y0), int(min(W, x0 + cw)), int(min(H, y0 + ch))


def random_crop(image_size, rng) -> tuple[int, int, int, int]:
    W, H = image_size
    side = min(W, H) * float(np.exp(rng.uniform(np.log(0.05), np.log(0.5))))
    x0, y0 = rng.uniform(0, W - side), rng.uniform(0, H - side)
    return int(x0), int(y0), int(x0 + side), int(y0 + side)


def oracle_crop(box, image_size, context: float = 2.0) -> tuple[int, int, int, int]:
    """The ground-truth crop used as the upper bound: the box with `context` x its side, centred."""
    W, H = image_size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1]) * context
    x0, y0 = max(0, cx - side / 2), max(0, cy - side / 2)
    return int(x0), int(y0), int(min(W, x0 + side)), int(min(H, y0 + side))


def position_digits(geometry: str) -> bool:
    """Whether positions are taught as column and row tenths (finer geometries) or words (v1)."""
    return geometry != "v1"


def position_words(box, image_size, digits: bool = False) -> str:
    """Where `box` is: "top left" (3 x 3), or with `digits` its column and row tenths, "3 7",
    as grounding data states coordinates; fine enough to tell apart objects a few cells wide."""
    W, H = image_size
    cx, cy = (box[0] + box[2]) / 2 / W, (box[1] + box[3]) / 2 / H
    if digits:
        return f"{min(9, int(cx * 10))} {min(9, int(cy * 10))}"
    return f"{ROWS[min(2, int(cy * 3))]} {COLS[min(2, int(cx * 3))]}"


def _resize(img: Image.Image, box, size: int) -> np.ndarray:
    return np.asarray(img.crop(box).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.uint8)


def target_answer(item: Item) -> str:
    """What the reference model is taught to say: option text for multiple choice, else the answer."""
    return item.meta.get("truth") or item.answers[0] if item.options else item.answers[0]


def shown_side(box, view, size: int, side=min) -> float:
    """`box`'s smaller side (`side=max`: its longer one) in input pixels once `view` is resized to
    the input square; 0 if `view` does not contain it."""
    if not box_contains(view, box):
        return 0.0
    return side((box[2] - box[0]) * size / (view[2] - view[0]), (box[3] - box[1]) * size / (view[3] - view[1]))


def untaught(turns, views, size: int, readable_px: float) -> tuple[int, ...]:
    """Indices of the turns that ask to read a detail (`boxes` not None) that no view shows
    at `readable_px` or more; `turns` are (question, answer, boxes)."""
    return tuple(i for i, (_, _, boxes) in enumerate(turns) if boxes is not None and not all(
        any(shown_side(b, v, size) >= readable_px for v in views) for b in boxes))


def look_tokens(boxes, views, size: int, patch: int) -> tuple[int, ...]:
    """Indices of the visual tokens, over all `views` in order (each resized to the input square,
    (size/patch)^2 tokens), whose patch overlaps one of `boxes`."""
    g = size // patch
    out = set()
    for i, v in enumerate(views):
        for b in boxes:
            seen = box_intersection(b, v)
            if box_area(seen) == 0:
                continue
            c0, r0, c1, r1 = pixels_to_grid_box(seen, (g, g), v)
            out.update(i * g * g + r * g + c for r in range(int(r0), min(g, math.ceil(r1)))
                       for c in range(int(c0), min(g, math.ceil(c1))))
    return tuple(sorted(out))


def look_views(boxes, details, views, size: int, patch: int, readable_px: float) -> tuple[int, ...]:
    """`look_tokens` view by view: on the detail (`details`, one per box or None) in a view that shows
    its object at `readable_px` or more, else on the object."""
    g, out = (size // patch) ** 2, []
    for i, v in enumerate(views):
        here = [d if d is not None and shown_side(b, v, size) >= readable_px else b for b, d in zip(boxes, details)]
        out += [i * g + t for t in look_tokens(here, [v], size, patch)]
    return tuple(out)


def _is_read(answer) -> bool:
    """A fact that has to be read off the detail (a position or yes/no is seen at low resolution)."""
    return answer is not None and answer not in ("yes", "no")


def window_view(item: Item, box, rng: np.random.Generator, size: int, scale=WINDOW_SCALE, digits: bool = False):
    """A window of the canvas around `box` (`scale` x its side), resized to the model input, with
    the facts that lie inside it as (question, answer, boxes to read or None); positions are
    re-expressed relative to the window. Returns the image, the facts and the window."""
    img, W, H = item.image, *item.image.size
    win = crop_around(box, (W, H), rng, scale=scale)
    wx, wy, ww, wh = win[0], win[1], win[2] - win[0], win[3] - win[1]
    inside = [(q, a, b) for q, a, b in item.facts  # not yes/no: presence depends on the whole canvas
              if box_contains(win, b) and (a is None or _is_read(a))]
    turns = [(q, a if a is not None else position_words((b[0] - wx, b[1] - wy, b[2] - wx, b[3] - wy), (ww, wh), digits),
              [b] if _is_read(a) else None) for q, a, b in inside]
    return _resize(img, win, size)[None], turns, win


def item_turns(item: Item, digits: bool = False):
    """An item's own question and its facts as (question, answer, boxes to read or None): a position
    in words (`position_words`), an answer read off a detail with the boxes it is read from."""
    W, H = item.image.size
    facts = [(q, a if a is not None else position_words(b, (W, H), digits), [b] if _is_read(a) else None)
             for q, a, b in item.facts]
    read_own = _is_read(target_answer(item)) or item.meta.get("compares", False)  # a yes/no comparing details
    return (item.question, target_answer(item), list(item.boxes) if read_own else None), facts


def examples_for(item: Item, rng: np.random.Generator, n: int, size: int, max_turns: int = 4,
                 readable_px: float = READABLE_PX, window_max: float = WINDOW_SCALE[1],
                 patch: int = 12, digits: bool = False, looks: bool = True, detail: float | None = None) -> list[Example]:
    """`n` training conversations of random kinds from one rendered item.

    The first turn is the item's own question or another fact about the same image (the crop,
    if any, is taken around that fact's evidence); up to `max_turns - 1` further facts follow.
    Asking several questions whose answers differ only by which object is named is what forces
    the model to look at the image instead of answering from priors. Answers that must be read
    off a detail no image shows at `readable_px` are asked but not taught (`Example.untrained`).
    Each turn carries the visual tokens of the object it names (`Example.looks`, if `looks`).
    Positions are words, or column and row tenths with `digits` (`position_words`).
    """
    img, W, H = item.image, *item.image.size
    full_view = (0, 0, W, H)
    full = _resize(img, full_view, size)
    own, facts = item_turns(item, digits)
    where = {q: b for q, _, b in item.facts}
    named = {**{q: [b] for q, b in where.items()}, item.question: list(item.boxes)}
    reads = [f for f, (_, a, _) in zip(facts, item.facts) if a is not None]
    details = [f for f in facts if f[2] is not None]  # readable in a window on their own
    kinds, probs = list(KINDS), np.array(list(KINDS.values()))
    out = []
    for kind in map(str, rng.choice(kinds, size=n, p=probs / probs.sum())):
        if kind == "window" and details:
            first = details[int(rng.integers(0, len(details)))]
            ims, turns, win = window_view(item, where[first[0]], rng, size, (WINDOW_SCALE[0], window_max), digits)
            rest = [t for t in turns if t[0] != first[0]]
            turns = [first] + [rest[i] for i in rng.permutation(len(rest))][: max_turns - 1]
            views = [win]
        else:
            if kind == "locate":
                pool = [f for f in facts if f not in reads] or facts
                first = pool[int(rng.integers(0, len(pool)))]
                boxes = [where[first[0]]]
            elif rng.random() < 0.5 or not reads:
                first, boxes = own, item.boxes
            else:
                first = reads[int(rng.integers(0, len(reads)))]
                boxes = [where[first[0]]]
            crops = []
            if kind == "evidence":
                crops = [crop_around(boxes[int(rng.integers(0, len(boxes)))], (W, H), rng, exact_p=EXACT_P)]
            elif kind == "random":
                crops = [random_crop((W, H), rng)]
            elif kind == "two":
                crops = [crop_around(b, (W, H), rng, exact_p=EXACT_P) for b in boxes[:2]]
                if len(crops) < 2:
                    crops.append(random_crop((W, H), rng))
                crops = [crops[i] for i in rng.permutation(2)]
            others = [facts[i] for i in rng.permutation(len(facts)) if facts[i][0] != first[0]][: max_turns - 1]
            turns = [first] + others
            views = [full_view] + crops
            ims = np.stack([full] + [_resize(img, c, size) for c in crops])
            kind = "full" if kind == "window" else kind
        skip = untaught(turns, views, size, readable_px) if readable_px > 0 else ()
        # a turn that reads a detail looks at it where it is readable (with `detail`; else at the object)
        turn_looks = tuple(look_views(named[q], [detail_box(item, b) if rb is not None and detail is not None else None
                                                 for b in named[q]], views, size, patch, readable_px)
                           for q, _, rb in turns) if looks else ()
        out.append(Example(ims, [(q, a) for q, a, _ in turns], item.family, kind, untrained=skip, looks=turn_looks,
                           views=tuple(views)))
    return out


def full_views(data: list[Example]) -> list[Example]:
    """The full view alone, every turn: where the named object is, and what it reads when readable."""
    return [ex for ex in data if len(ex.images) == 1 and ex.kind in ("full", "locate")]


def own_question(item: Item, q: str, a: str, box, own: bool = True) -> tuple[str, str]:
    """A reading fact's question and answer, or with `own`, the item's own multiple-choice question and
    taught answer where `box` is its one evidence box (`reading_crops(own=True)`)."""
    if own and item.options and [tuple(x) for x in item.boxes] == [tuple(box)]:
        return item.question, target_answer(item)
    return q, a


def reading_crops(item: Item, rng: np.random.Generator, n: int, size: int, max_scale: float = 2.0,
                  detail: float | None = None, patch: int = 14, min_scale: float = 1.0, cut: dict | None = None,
                  own: bool = False, pair: float = 0.0):
    """Crops around evidence, `min_scale` to `max_scale` x its side (`cut`: `crop_around`'s square and spread),
    with what they read: the vision tower's warm-up task; with `detail`, each looks at its detail (`detail_box`).
    With `own`, a crop of a multiple-choice item's one evidence box asks the item's own question instead of the
    fact: run 46 read vstar's fact off the tight crop beside the full view on 43 of 48 items, and answered the
    same question with its options on 13 (CHANGELOG, stop 54). With `pair`, that share of them come
    as EGG asks: the full view, then the crop and one as wide around another object (a random crop
    where there is none), in random order (kind "read_pair")."""
    if not 1.0 <= min_scale <= max_scale:
        raise ValueError(f"reading crops need 1 <= min_scale <= max_scale, got {min_scale} and {max_scale}")
    img, W, H = item.image, *item.image.size
    reads = [(q, a, b) for q, a, b in item.facts if _is_read(a)]
    out = []
    for k in rng.permutation(len(reads))[:n]:
        q, a, b = reads[k]
        q, a = own_question(item, q, a, b, own)
        crop = crop_around(b, (W, H), rng, (min_scale, max_scale), EXACT_P if min_scale == 1 else 0.0, **(cut or {}))
        d = detail_box(item, b) if detail is not None else None
        views, kind = [crop], "read"
        if pair and rng.random() < pair:  # consumes nothing without `pair`: earlier recipes render as before
            others = [o for o, _ in item.meta.get("details", []) if tuple(o) != tuple(b)]
            other = (crop_around(others[int(rng.integers(len(others)))], (W, H), rng, (min_scale, max_scale),
                                 **(cut or {})) if others else random_crop((W, H), rng))
            views, kind = [(0, 0, W, H)] + [(crop, other)[i] for i in rng.permutation(2)], "read_pair"
        looks = (look_tokens([d], views, size, patch),) if d is not None else ()
        out.append(Example(np.stack([_resize(img, v, size) for v in views]), [(q, a)], item.family, kind, looks=looks,
                           views=tuple(views)))
    return out


_COLLATORS: dict = {}  # one per rendering process and model (a forked worker does not use its parent's)


def _one_thread() -> None:
    """A forked rendering worker must not enter the OpenMP pool its parent started (it hangs there,
    in the colour targets' torch ops): one thread, as torch's DataLoader workers run."""
    import torch

    torch.set_num_threads(1)


def _render_chunk(args) -> tuple[list[Example], list[Example]]:
    family, split, start, n, seed, per_item, model, mix, geometry, (read_min, read_scale, cut, own, pair) = args
    key = (os.getpid(), json.dumps(model, sort_keys=True))
    if key not in _COLLATORS:
        _COLLATORS[key] = Collator(build_processor(ReferenceConfig(**model)))
    col = _COLLATORS[key]
    size, mix = model["image_size"], dict(mix)
    shapes = mix.pop("shapes", False)  # present (True) only where `TrainConfig.shape_weight` asks for it
    out, reads = [], []
    for i in range(start, start + n):
        item = bench.item(family, split, i, seed, geometry)
        rng = rng_for(family + "/train-mix", split, i, seed)
        convs = examples_for(item, rng, per_item * FAMILY_WEIGHT.get(family, 1), size, **mix)
        crops = reading_crops(item, rng, 3, size, max(read_scale, FULL_VIEW_READS.get(family, 0)),
                              mix["detail"], model["patch_size"], read_min, cut, own, pair)
        for ex in convs + crops if shapes else ():
            ex.shapes = shape_targets(item, ex.views, size, model["patch_size"])
        out.extend(convs)
        reads.extend(crops)
    for ex in out + reads:  # tokenising in the workers keeps the chat template off the training loop
        ex.enc = col.encode(len(ex.images), ex.turns, ex.untrained)
        ex.colours = pack_colours(ex.images, model["patch_size"])
        if size > 128:
            ex.images = Packed(ex.images)
    return out, reads


def render_jobs(cfg: TrainConfig, model: ReferenceConfig) -> list[tuple]:
    """What `render_dataset` renders, chunk by chunk: every setting its result depends on."""
    chunk, cut = 100, {"square": bool(cfg.read_square), "spread": cfg.read_spread}
    mix = {"readable_px": cfg.readable_px, "window_max": cfg.window_max, "patch": model.patch_size,
           "digits": position_digits(cfg.geometry), "looks": cfg.look > 0,
           "detail": bench.GEOMETRIES[cfg.geometry].detail if cfg.look_detail else None}
    mixes = {f: {**mix, "readable_px": cfg.pope_readable_px} if f == "pope" and cfg.pope_readable_px > 0 else mix
             for f in bench.families()}
    if cfg.shape_weight > 0:  # only then: a default run's jobs, and so its render cache keys, are unchanged
        mixes["pope"] = {**mixes["pope"], "shapes": True}
    if cfg.pope_weight < 1:
        raise ValueError(f"pope_weight={cfg.pope_weight} renders no pope example: give 1 (the default) or more")
    per_item = {f: cfg.examples_per_item * (cfg.pope_weight if f == "pope" else 1) for f in bench.families()}
    return [(f, "train", s, min(chunk, cfg.items_per_family - s), cfg.seed, per_item[f], model.to_dict(),
             mixes[f], cfg.geometry, (cfg.read_min_scale, cfg.read_scale, cut, bool(cfg.read_own), cfg.read_pair))
            for f in bench.families() for s in range(0, cfg.items_per_family, chunk)]


def render_dataset(cfg: TrainConfig, model: ReferenceConfig, log) -> tuple[list[Example], list[Example]]:
    """Render all training items (parallel over `workers` processes); deterministic order."""
    jobs = render_jobs(cfg, model)
    data: list[Example] = []
    reads: list[Example] = []
    t0 = time.time()
    with get_context("fork").Pool(cfg.workers, initializer=_one_thread) as pool:
        for k, (part, rd) in enumerate(pool.imap(_render_chunk, jobs)):
            data.extend(part)
            reads.extend(rd)
            if (k + 1) % 14 == 0 or k + 1 == len(jobs):
                log(f"rendered {k + 1}/{len(jobs)} chunks, {len(data)} examples, {time.time() - t0:.0f}s")
    return data, reads


# ---------------------------------------------------------------- batching
def batches(data: list[Example], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of examples with the same number of images: no padding to 3 images."""
    groups: dict[int, list[int]] = {}
    for i, ex in enumerate(data):
        groups.setdefault(len(ex.images), []).append(i)
    out = []
    for n in sorted(groups):
        idx = rng.permutation(groups[n])
        out.extend(idx[k:k + size] for k in range(0, len(idx) - size + 1, size))
    return [out[i] for i in rng.permutation(len(out))]


class Collator:
    """Turns conversations into LLaVA inputs, exactly as LlavaProcessor would (same prompt, same pixels).

    Prompt text comes from the processor's own chat template, rendered turn by turn so that only
    the assistant's answers (and their end-of-sequence tokens) carry a loss.
    """

    def __init__(self, processor):
        self.processor = processor
        self.tok = processor.tokenizer
        ip = processor.image_processor
        self.mean = np.array(ip.image_mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = np.array(ip.image_std, dtype=np.float32).reshape(1, 3, 1, 1)
        self.patch = processor.patch_size
        self.tokens_per_image = (ip.size["height"] // self.patch) * (ip.size["width"] // self.patch)

    def pixels(self, images: np.ndarray):
        """(n, S, S, 3) uint8 images at the input size -> the processor's normalised pixel tensor."""
        import torch

        pix = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return torch.from_numpy((pix - self.mean) / self.std)

    def _ids(self, text: str) -> list[int]:
        text = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * self.tokens_per_image)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode(self, n_images: int, turns: list[tuple[str, str]], untrained=()) -> tuple[list[int], list[int], list[int]]:
        """Token ids, labels and, per turn, the position whose logits predict its answer; an empty
        last answer leaves a generation prompt; the answers of the turns in `untrained` carry no loss."""
        msgs, done, ids, labels, queries = [], "", [], [], []
        render = self.processor.apply_chat_template
        for i, (q, a) in enumerate(turns):
            content = ([{"type": "image"}] * n_images if i == 0 else []) + [{"type": "text", "text": q}]
            msgs.append({"role": "user", "content": content})
            prompt = render(msgs, add_generation_prompt=True)
            part = self._ids(prompt[len(done):])
            ids += part
            labels += [-100] * len(part)
            queries.append(len(ids) - 1)
            if not a:
                break
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
            done = render(msgs)
            part = self._ids(done[len(prompt):])
            ids += part
            labels += [-100] * len(part) if i in untrained else part
        return ids, labels, queries

    def pad(self, enc):
        """Encodings (ids, labels, ...) -> right-padded input_ids, labels and attention mask."""
        import torch

        L = max(len(e[0]) for e in enc)
        input_ids = torch.full((len(enc), L), self.tok.pad_token_id, dtype=torch.long)
        lab = torch.full((len(enc), L), -100, dtype=torch.long)
        mask = torch.zeros((len(enc), L), dtype=torch.long)
        for i, (x, y, *_) in enumerate(enc):
            input_ids[i, : len(x)], lab[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        return input_ids, lab, mask

    def __call__(self, batch: list[Example]):
        import torch

        enc = [ex.enc or self.encode(len(ex.images), ex.turns, ex.untrained) for ex in batch]
        input_ids, lab, mask = self.pad(enc)
        # where each turn's answer should look: (example, query position) -> its visual tokens
        n_vis = max(len(ex.images) for ex in batch) * self.tokens_per_image
        look_at, look_q = [], []
        for i, (_, _, qs) in enumerate(enc):
            for pos, toks in zip(qs, batch[i].looks):
                if toks:
                    row = torch.zeros(n_vis, dtype=torch.bool)
                    row[list(toks)] = True
                    look_q.append((i, pos))
                    look_at.append(row)
        raw = np.concatenate([np.asarray(ex.images) for ex in batch])
        # auxiliary targets for the vision tower (training only; the saved model is plain LLaVA):
        # which key colours each patch shows, and what the evidence crop reads (first turn's answer).
        read = np.full((len(raw), 2), -100, dtype=np.int64)
        k = 0
        for ex in batch:
            if ex.kind in ("evidence", "read", "window") and 0 not in ex.untrained:
                toks = self._ids(" " + ex.turns[0][1])[:2]
                read[k + (ex.kind == "evidence"), : len(toks)] = toks
            k += len(ex.images)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": lab,
                "look_q": torch.tensor(look_q, dtype=torch.long).reshape(-1, 2),
                "look_at": torch.stack(look_at) if look_at else torch.zeros((0, n_vis), dtype=torch.bool),
                "pixel_values": self.pixels(raw),
                "colour_targets": torch.from_numpy(np.concatenate([ex.colour_targets(self.patch) for ex in batch])),
                "shape_targets": torch.from_numpy(np.concatenate([
                    ex.shapes if ex.shapes is not None else np.full((len(ex.images), self.tokens_per_image), -100, np.int8)
                    for ex in batch])),
                "read_targets": torch.from_numpy(read)}
