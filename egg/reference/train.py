"""Train the reference VLM on the procedural benchmark's train split.

The mixture matters more than the model (see docs/method.md section 8): a model that only ever
reads answers off evidence crops learns to ignore the full image, and then its entropy
gradient over the full image is noise. So every item yields several examples:

- full image alone -> answer (readable when the evidence is large, uncertain otherwise);
- full image + a jittered, rescaled crop around the evidence -> answer;
- full image + a random crop that may miss the evidence -> answer;
- full image + two crops (both evidence boxes for multi-evidence items, else evidence + random);
- full image alone, "where is the {target} ?" -> a coarse position (meant as a locating signal;
  alone it did not teach where to look: small objects' positions were answered at chance, 13%
  of text items for 11% chance; with the attention supervision below and the position probe,
  28%);
- a window of the canvas around the evidence (2.5-12 x its side) as the only image, so the
  detail is readable in the first view when the window is small: the model learns to read a
  detail *where the named object is* in its first image, and an unreadable one still draws its
  gradient there.

Every question names an object (or two), and the position that predicts its answer is taught
where that object is: its attention in the decoder layers after the first, heads averaged, should
fall on the visual tokens that overlap the object's box, in any image (loss weight `look`).
Answers alone do not teach this in a CPU budget: the model learns to attend to objects of the
asked kind but not to the one whose colour the question names (measured on the previous model:
the answer's attention peaks on some sign for 95% of text items, on the named one for 25%), and
then the entropy gradient of a detail it cannot read has nothing to concentrate on. The saved
model is plain LLaVA; the supervision only shapes where it learnt to look. It shapes attention
directly, so attention-based baselines (ViCrop) profit from it more directly than EGG does.

A detail that no image of an example shows at READABLE_PX or more is asked but not taught: its
answer carries no loss. Taught, the only thing to learn there is the uniform guess, and a model
that has learnt to give it whatever it sees has an entropy gradient of zero (the maximum of the
entropy is a stationary point), so EGG's map of an unreadable detail would be noise.

Every kind with crops asks the item's own question half the time, so that a crop that does
not show the answer (the control's large region, a relation) is learnt to be ignored. Crops
range from the exact evidence box (squashed to the input square, as the oracle and
EGG's own boxes are) to a few times its size, so that a tight crop reads like training did.

Run with `python -m egg.reference.train` (or `make train-reference`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from .. import synthetic as bench
from ..synthetic.core import Item, rng_for
from ..synthetic.core import COLOURS
from ..method.boxes import box_area, box_contains, box_intersection, clamp_aspect, pixels_to_grid_box
from .build import IMAGE_TOKEN, ReferenceConfig, build_model, build_processor

KINDS = {"full": 0.16, "window": 0.2, "evidence": 0.26, "random": 0.1, "two": 0.14, "locate": 0.14}
# Families whose items yield twice the examples: where a crop must not override the full view.
FAMILY_WEIGHT = {"rwqa": 2, "gqa": 2}
EXACT_P = 0.35  # share of evidence crops that are the exact box, as the oracle crops
READABLE_PX = 12.0  # smaller side, input pixels, below which a detail's answer is not taught (see above)
WINDOW_SCALE = (2.5, 12.0)  # window side / detail side
ROWS, COLS = ["top", "middle", "bottom"], ["left", "middle", "right"]


@dataclass
class Example:
    images: np.ndarray  # (n, S, S, 3) uint8, already resized to the model input
    turns: list[tuple[str, str]]  # (question, answer), asked in one conversation about the images
    family: str
    kind: str
    enc: tuple[list[int], list[int], list[int]] | None = None  # Collator.encode, computed while rendering
    untrained: tuple[int, ...] = ()  # turns whose answer is not readable in any image: no loss
    looks: tuple[tuple[int, ...], ...] = ()  # per turn: visual tokens (all images, in order) on the named object


@dataclass
class TrainConfig:
    out: str = "data/reference"
    seed: int = 1  # seed 0 did not learn to bind in 3 CPU runs (README, "Why the model did not look")
    items_per_family: int = 1000
    examples_per_item: int = 4
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 150
    eval_every: int = 0  # > 0: a quick val eval every this many steps (0: only at the end)
    eval_items: int = 30
    threads: int = 2
    workers: int = 2
    max_minutes: float = 36.0  # of `threads` CPU cores: counted in CPU time, not wall time
    max_steps: int = 1400  # > 0: exactly this many decoder steps, no time budget (bit-reproducible);
    # 0: as many as `max_minutes` of CPU time allow
    device: str = "cpu"
    aux: int = 1
    vision_steps: int = 1500
    curriculum: float = 0.3
    readable_px: float = READABLE_PX  # 0: teach every answer, readable or not
    look: float = 3.0  # weight of the attention-on-the-named-object loss (0: none)
    look_heads: int = 0  # the first this many heads of each layer carry it (0: all)
    position: float = 0.1  # weight of the row/column probe on the visual tokens (0: none; the vision warm-up uses 1)
    window_max: float = WINDOW_SCALE[1]
    model: dict = field(default_factory=dict)


# ---------------------------------------------------------------- crops and examples
def crop_around(box, image_size, rng, scale=(1.0, 5.0), exact_p: float = 0.0) -> tuple[int, int, int, int]:
    """A crop containing `box`, side = box side x log-uniform scale, random offset and aspect;
    with probability `exact_p` the box itself, made croppable as the oracle makes it."""
    W, H = image_size
    if exact_p and rng.random() < exact_p:
        return tuple(int(v) for v in clamp_aspect(box, (W, H)))
    bw, bh = box[2] - box[0], box[3] - box[1]
    side = max(bw, bh) * float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.66))))
    cw, ch = max(bw + 2, side * math.sqrt(aspect)), max(bh + 2, side / math.sqrt(aspect))
    cw, ch = min(cw, W), min(ch, H)
    x0 = rng.uniform(max(0, box[2] - cw), min(box[0], W - cw) + 1e-6)
    y0 = rng.uniform(max(0, box[3] - ch), min(box[1], H - ch) + 1e-6)
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


def position_words(box, image_size) -> str:
    W, H = image_size
    cx, cy = (box[0] + box[2]) / 2 / W, (box[1] + box[3]) / 2 / H
    return f"{ROWS[min(2, int(cy * 3))]} {COLS[min(2, int(cx * 3))]}"


def _resize(img: Image.Image, box, size: int) -> np.ndarray:
    return np.asarray(img.crop(box).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.uint8)


def target_answer(item: Item) -> str:
    """What the reference model is taught to say: option text for multiple choice, else the answer."""
    return item.meta.get("truth") or item.answers[0] if item.options else item.answers[0]


def shown_side(box, view, size: int) -> float:
    """`box`'s smaller side in input pixels once `view` is resized to the input square; 0 if
    `view` does not contain it."""
    if not box_contains(view, box):
        return 0.0
    return min((box[2] - box[0]) * size / (view[2] - view[0]), (box[3] - box[1]) * size / (view[3] - view[1]))


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


def _is_read(answer) -> bool:
    """A fact that has to be read off the detail (a position or yes/no is seen at low resolution)."""
    return answer is not None and answer not in ("yes", "no")


def window_view(item: Item, box, rng: np.random.Generator, size: int, scale=WINDOW_SCALE):
    """A window of the canvas around `box` (`scale` x its side), resized to the model input, with
    the facts that lie inside it as (question, answer, boxes to read or None); positions are
    re-expressed relative to the window. Returns the image, the facts and the window."""
    img, W, H = item.image, *item.image.size
    win = crop_around(box, (W, H), rng, scale=scale)
    wx, wy, ww, wh = win[0], win[1], win[2] - win[0], win[3] - win[1]
    inside = [(q, a, b) for q, a, b in item.facts  # not yes/no: presence depends on the whole canvas
              if box_contains(win, b) and (a is None or _is_read(a))]
    turns = [(q, a if a is not None else position_words((b[0] - wx, b[1] - wy, b[2] - wx, b[3] - wy), (ww, wh)),
              [b] if _is_read(a) else None) for q, a, b in inside]
    return _resize(img, win, size)[None], turns, win


def examples_for(item: Item, rng: np.random.Generator, n: int, size: int, max_turns: int = 4,
                 readable_px: float = READABLE_PX, window_max: float = WINDOW_SCALE[1],
                 patch: int = 12) -> list[Example]:
    """`n` training conversations of random kinds from one rendered item.

    The first turn is the item's own question or another fact about the same image (the crop,
    if any, is taken around that fact's evidence); up to `max_turns - 1` further facts follow.
    Asking several questions whose answers differ only by which object is named is what forces
    the model to look at the image instead of answering from priors. Answers that must be read
    off a detail no image shows at `readable_px` are asked but not taught (`Example.untrained`).
    Each turn carries the visual tokens of the object it names (`Example.looks`).
    """
    img, W, H = item.image, *item.image.size
    full_view = (0, 0, W, H)
    full = _resize(img, full_view, size)
    # facts as (question, answer, boxes to read or None)
    facts = [(q, a if a is not None else position_words(b, (W, H)), [b] if _is_read(a) else None)
             for q, a, b in item.facts]
    where = {q: b for q, _, b in item.facts}
    named = {**{q: [b] for q, b in where.items()}, item.question: list(item.boxes)}
    reads = [f for f, (_, a, _) in zip(facts, item.facts) if a is not None]
    details = [f for f in facts if f[2] is not None]  # readable in a window on their own
    own = (item.question, target_answer(item), list(item.boxes) if _is_read(target_answer(item)) else None)
    kinds, probs = list(KINDS), np.array(list(KINDS.values()))
    out = []
    for kind in map(str, rng.choice(kinds, size=n, p=probs / probs.sum())):
        if kind == "window" and details:
            first = details[int(rng.integers(0, len(details)))]
            ims, turns, win = window_view(item, where[first[0]], rng, size, (WINDOW_SCALE[0], window_max))
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
        looks = tuple(look_tokens(named[q], views, size, patch) for q, _, _ in turns)
        out.append(Example(ims, [(q, a) for q, a, _ in turns], item.family, kind, untrained=skip, looks=looks))
    return out


def reading_crops(item: Item, rng: np.random.Generator, n: int, size: int) -> list[Example]:
    """Tight crops around evidence with what they read: the vision tower's warm-up task."""
    img, W, H = item.image, *item.image.size
    reads = [(q, a, b) for q, a, b in item.facts if _is_read(a)]
    out = []
    for k in rng.permutation(len(reads))[:n]:
        q, a, b = reads[k]
        ims = _resize(img, crop_around(b, (W, H), rng, scale=(1.0, 2.0), exact_p=EXACT_P), size)[None]
        out.append(Example(ims, [(q, a)], item.family, "read"))
    return out


_COLLATOR = None  # one per rendering process


def _render_chunk(args) -> tuple[list[Example], list[Example]]:
    global _COLLATOR
    family, split, start, n, seed, per_item, model, mix = args
    if _COLLATOR is None:
        _COLLATOR = Collator(build_processor(ReferenceConfig(**model)))
    size = model["image_size"]
    out, reads = [], []
    for i in range(start, start + n):
        item = bench.item(family, split, i, seed)
        rng = rng_for(family + "/train-mix", split, i, seed)
        out.extend(examples_for(item, rng, per_item * FAMILY_WEIGHT.get(family, 1), size, **mix))
        reads.extend(reading_crops(item, rng, 3, size))
    for ex in out:  # tokenising in the workers keeps the chat template off the training loop
        ex.enc = _COLLATOR.encode(len(ex.images), ex.turns, ex.untrained)
    return out, reads


def render_dataset(cfg: TrainConfig, model: ReferenceConfig, log) -> tuple[list[Example], list[Example]]:
    """Render all training items (parallel over `workers` processes); deterministic order."""
    chunk = 100
    mix = {"readable_px": cfg.readable_px, "window_max": cfg.window_max, "patch": model.patch_size}
    jobs = [(f, "train", s, min(chunk, cfg.items_per_family - s), cfg.seed, cfg.examples_per_item, model.to_dict(), mix)
            for f in bench.families() for s in range(0, cfg.items_per_family, chunk)]
    data: list[Example] = []
    reads: list[Example] = []
    t0 = time.time()
    with get_context("fork").Pool(cfg.workers) as pool:
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

    def __call__(self, batch: list[Example]):
        import torch

        enc = [ex.enc or self.encode(len(ex.images), ex.turns, ex.untrained) for ex in batch]
        L = max(len(x) for x, _, _ in enc)
        pad = self.tok.pad_token_id
        input_ids = torch.full((len(batch), L), pad, dtype=torch.long)
        lab = torch.full((len(batch), L), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), L), dtype=torch.long)
        # where each turn's answer should look: (example, query position) -> its visual tokens
        n_vis = max(len(ex.images) for ex in batch) * self.tokens_per_image
        look_at, look_q = [], []
        for i, (x, y, qs) in enumerate(enc):
            input_ids[i, : len(x)] = torch.tensor(x)
            lab[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
            for pos, toks in zip(qs, batch[i].looks):
                if toks:
                    row = torch.zeros(n_vis, dtype=torch.bool)
                    row[list(toks)] = True
                    look_q.append((i, pos))
                    look_at.append(row)
        raw = np.concatenate([ex.images for ex in batch])
        pix = raw.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        pix = (pix - self.mean) / self.std
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
                "pixel_values": torch.from_numpy(pix),
                "colour_targets": torch.from_numpy(patch_colours(raw, self.patch)),
                "read_targets": torch.from_numpy(read)}


KEY_RGB = np.array(list(COLOURS.values()), dtype=np.int16)


def patch_colours(images: np.ndarray, patch: int, tol: int = 60, min_pixels: int = 2) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, H/patch * W/patch, n_colours) float: key colour visible in each patch."""
    import torch

    im = torch.from_numpy(images).to(torch.int16)
    d = torch.stack([(im - k).abs().amax(-1) < tol for k in torch.from_numpy(KEY_RGB)], -1)  # (n, H, W, C)
    n, H, W, C = d.shape
    d = d.reshape(n, H // patch, patch, W // patch, patch, C).sum((2, 4))
    return (d >= min_pixels).reshape(n, -1, C).float().numpy()


class AuxHeads:
    """Linear probes on the visual tokens that give the vision tower a direct training signal.

    A tiny LLaVA trained from scratch on answers alone never learns to look (the loss sits at
    the answer prior); supervising "which key colour is in this patch" and "what does this
    crop read" makes the visual tokens informative, after which the decoder learns to use them.
    "Which row and column is this patch" keeps each token's place in its features: rotary
    attention gives the decoder relative positions in its scores but none in what it reads, so a
    model taught to attend to the named object could otherwise not say where that object is.
    """

    def __init__(self, dim: int, vocab: int, device, grid: int = 8):
        import torch

        self.colour = torch.nn.Linear(dim, len(COLOURS)).to(device)
        self.read = torch.nn.Linear(dim, 2 * vocab).to(device)
        self.where = torch.nn.Linear(dim, 2 * grid).to(device)
        self.vocab, self.grid = vocab, grid

    def parameters(self):
        return [*self.colour.parameters(), *self.read.parameters(), *self.where.parameters()]

    def loss(self, feats, colour_targets, read_targets):
        """Colour, read and position losses; `feats` is (n_images, grid^2, dim)."""
        import torch
        import torch.nn.functional as F

        lc = F.binary_cross_entropy_with_logits(self.colour(feats), colour_targets)
        logits = self.read(feats.mean(1)).view(-1, 2, self.vocab)
        if (read_targets != -100).any():
            lr = F.cross_entropy(logits.reshape(-1, self.vocab), read_targets.reshape(-1), ignore_index=-100)
        else:
            lr = logits.sum() * 0
        g = self.grid
        cell = torch.arange(g * g, device=feats.device)
        where = self.where(feats).view(-1, g * g, 2, g)
        lp = (F.cross_entropy(where[:, :, 0].reshape(-1, g), (cell // g).repeat(len(feats)))
              + F.cross_entropy(where[:, :, 1].reshape(-1, g), (cell % g).repeat(len(feats)))) / 2
        return lc, lr, lp


def pretrain_vision(model, aux: AuxHeads, reads: list[Example], col, cfg, log) -> list[dict]:
    """Warm up the vision tower and projector on tight reading crops, through the auxiliary heads only."""
    import torch

    params = list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters())
    opt = torch.optim.AdamW(params + aux.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    rng = np.random.default_rng(cfg.seed + 1)
    curve, smooth = [], None
    bs = cfg.batch_size * 2
    for step in range(1, cfg.vision_steps + 1):
        idx = rng.choice(len(reads), size=bs, replace=False)
        batch = {k: v.to(cfg.device) for k, v in col([reads[i] for i in idx]).items()}
        feats = model.model.get_image_features(pixel_values=batch["pixel_values"], return_dict=True).pooler_output
        feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
        lc, lr, lp = aux.loss(feats, batch["colour_targets"], batch["read_targets"])
        opt.zero_grad(set_to_none=True)
        (lc + lr + (lp if cfg.position > 0 else 0)).backward()
        opt.step()
        sched.step()
        smooth = lr.item() if smooth is None else 0.95 * smooth + 0.05 * lr.item()
        if step % 20 == 0:
            curve.append({"step": step, "read": smooth, "colour": lc.item(), "where": lp.item()})
        if step % 100 == 0:
            log(f"vision warm-up step {step}/{cfg.vision_steps} read {smooth:.3f} colour {lc.item():.3f}")
    return curve


def lm_step(model, batch, aux: AuxHeads | None, cfg: TrainConfig):
    """LLaVA's own forward, unrolled so the visual tokens are available to the auxiliary heads;
    with `cfg.look` > 0 also the loss on where each answer's position attends (module docstring)."""
    import torch

    ids = batch["input_ids"]
    feats = model.model.get_image_features(pixel_values=batch["pixel_values"], return_dict=True).pooler_output
    feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
    emb = model.get_input_embeddings()(ids)
    is_vis = ids == model.config.image_token_id
    mask = is_vis.unsqueeze(-1).expand_as(emb)
    emb = emb.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(emb.dtype))
    want = cfg.look > 0 and len(batch["look_q"]) > 0
    out = model(inputs_embeds=emb, attention_mask=batch["attention_mask"], labels=batch["labels"],
                output_attentions=want)
    loss = out.loss
    parts = {"lm": loss.item()}
    if want:
        lf = look_loss(out.attentions, is_vis, batch["look_q"], batch["look_at"], cfg.look_heads)
        parts["look"] = lf.item()
        loss = loss + cfg.look * lf
    if aux is not None:
        lc, lr, lp = aux.loss(feats, batch["colour_targets"], batch["read_targets"])
        parts.update(colour=lc.item(), read=lr.item(), where=lp.item())
        loss = loss + lc + 0.5 * lr + cfg.position * lp
    return loss, parts


def look_loss(attentions, is_vis, look_q, look_at, heads: int | None = None):
    """-log of the share of the visual attention that falls on the named object's tokens, from the
    position predicting each answer, averaged over the first `heads` heads (all if None) of the
    layers after the first (which cannot yet know the question). Every example in a batch has
    the same number of images."""
    import torch

    b, q = look_q[:, 0], look_q[:, 1]
    vis = is_vis[b]  # (n, L)
    shares = []
    for att in attentions[1:]:
        a = att[b, : heads or None, q].mean(1)  # (n, L): heads averaged
        a_vis = a[vis].view(len(b), -1)  # (n, n_visual), in token order
        shares.append((a_vis * look_at).sum(-1) / a_vis.sum(-1).clamp_min(1e-9))
    return -torch.log(torch.stack(shares).mean(0).clamp_min(1e-6)).mean()


# ---------------------------------------------------------------- evaluation during training
def quick_eval(model, processor, n: int, seed: int, size: int) -> dict:
    """Val accuracy per family: full image alone, and with the oracle crop(s) appended."""
    import torch

    from ..synthetic import score

    col = Collator(processor)
    res = {}
    model.eval()
    for fam in bench.families():
        base, orc = [], []
        for it in bench.load(fam, "val", n, seed):
            W, H = it.image.size
            full = _resize(it.image, (0, 0, W, H), size)
            for crops, acc in (([], base), ([oracle_crop(b, (W, H)) for b in it.boxes], orc)):
                ims = np.stack([full] + [_resize(it.image, c, size) for c in crops])
                batch = col([Example(ims, [(it.question, "")], fam, "eval")])
                ids = batch["input_ids"].to(model.device)
                with torch.no_grad():
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                         pixel_values=batch["pixel_values"].to(model.device), do_sample=False)
                pred = processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
                acc.append(score(fam, pred, it))
        res[fam] = {"base": float(np.mean(base)), "oracle": float(np.mean(orc))}
    model.train()
    return res


# ---------------------------------------------------------------- training loop
def train(cfg: TrainConfig) -> Path:
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    work = out.parent / "train_cache"  # data/train_cache for the default output
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "train.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    mcfg = ReferenceConfig(**cfg.model)
    processor = build_processor(mcfg)
    model = build_model(mcfg, processor.tokenizer, seed=cfg.seed).to(cfg.device)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, config {mcfg.to_dict()}")
    t_start, cpu_start = time.time(), cpu_seconds()
    data, reads = render_dataset(cfg, mcfg, log)
    col = Collator(processor)
    aux = (AuxHeads(mcfg.text_hidden, len(processor.tokenizer), cfg.device, mcfg.image_size // mcfg.patch_size)
           if cfg.aux else None)
    params = list(model.parameters()) + (aux.parameters() if aux else [])
    record = {"config": {**cfg.__dict__, "model": mcfg.to_dict()}, "loss": [], "eval": []}
    if aux is not None and cfg.vision_steps:
        record["vision_warmup"] = pretrain_vision(model, aux, reads, col, cfg, log)
    rng = np.random.default_rng(cfg.seed)
    # Curriculum: first single-question conversations whose answer is readable (in an appended
    # crop or a small window), then the full mixture.
    first = [Example(ex.images, ex.turns[:1], ex.family, ex.kind, looks=ex.looks[:1]) for ex in data
             if ex.kind in ("evidence", "two", "window") and 0 not in ex.untrained]
    plan = [(first, idx) for idx in batches(first, cfg.batch_size, rng)][: int(cfg.curriculum * len(data) / cfg.batch_size)]
    for _ in range(cfg.epochs):
        plan += [(data, idx) for idx in batches(data, cfg.batch_size, rng)]
    if cfg.max_steps > 0:
        plan = plan[: cfg.max_steps]
    total = len(plan)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    # The budget is CPU time (max_minutes on `threads` cores): a run sharing the machine with
    # other jobs gets the same amount of computation, only later.
    budget = max(60.0, cfg.max_minutes * 60 * cfg.threads - (cpu_seconds() - cpu_start))
    t_train, cpu_train = time.time(), cpu_seconds()

    def progress(s: int) -> float:
        """Fraction of training done, by steps or by the CPU-time budget, whichever is further
        (by steps alone with max_steps, so that the schedule does not depend on the machine)."""
        if cfg.max_steps > 0:
            return min(1.0, s / total)
        return min(1.0, max(s / total, (cpu_seconds() - cpu_train) / budget))

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * progress(s))))
    log(f"{total} steps planned, {budget / 60:.1f} CPU-min left for them")
    if cfg.look > 0:  # attention weights are returned by eager attention only (not saved in the config)
        model.model.language_model.set_attn_implementation("eager")
    smooth = None
    model.train()
    step = 0
    for step, (pool, idx) in enumerate(plan, start=1):
        batch = col([pool[i] for i in idx])
        batch = {k: v.to(cfg.device) for k, v in batch.items()}
        loss, parts = lm_step(model, batch, aux, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        smooth = dict(parts) if smooth is None else {k: 0.95 * smooth[k] + 0.05 * v for k, v in parts.items()}
        if step % 20 == 0:
            record["loss"].append({"step": step, **{k: float(v) for k, v in smooth.items()},
                                   "lr": sched.get_last_lr()[0], "phase": "read" if pool is first else "mix"})
        if step % 100 == 0:
            log(f"step {step}/{total} " + " ".join(f"{k} {v:.3f}" for k, v in smooth.items())
                + f" {(time.time() - t_train) / step:.2f}s/step lr {sched.get_last_lr()[0]:.2e}")
        if cfg.eval_every and step % cfg.eval_every == 0:
            ev = quick_eval(model, processor, cfg.eval_items, cfg.seed, mcfg.image_size)
            record["eval"].append({"step": step, **ev})
            log("eval " + " ".join(f"{f}:{v['base']:.2f}/{v['oracle']:.2f}" for f, v in ev.items()))
            save(model, processor, out, record)
        if progress(step) >= 1.0 and step < total:
            log(f"CPU-time budget of {cfg.max_minutes} min x {cfg.threads} cores reached at step {step}/{total}; stopping")
            break
    ev = quick_eval(model, processor, cfg.eval_items, cfg.seed, mcfg.image_size)
    record["eval"].append({"step": step, **ev})
    log("final eval " + " ".join(f"{f}:{v['base']:.2f}/{v['oracle']:.2f}" for f, v in ev.items()))
    record["steps"] = step
    record["minutes"] = (time.time() - t_start) / 60
    record["cpu_minutes"] = (cpu_seconds() - cpu_start) / 60
    save(model, processor, out, record)
    log(f"saved to {out} after {record['minutes']:.1f} min")
    return out


def cpu_seconds() -> float:
    """CPU time used by this process and its finished children (the rendering pool)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def save(model, processor, out: Path, record: dict) -> None:
    """Write atomically-ish: a finished directory is never left half-written."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "training_log.json").write_text(json.dumps(record, indent=1))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig()
    for k, v in d.__dict__.items():
        if isinstance(v, (int, float, str)):
            ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    ap.add_argument("--model-json", default="{}", help="ReferenceConfig overrides as JSON")
    a = ap.parse_args(argv)
    kw = {k: getattr(a, k) for k in d.__dict__ if k != "model"}
    train(TrainConfig(**kw, model=json.loads(a.model_json)))


if __name__ == "__main__":
    main()
