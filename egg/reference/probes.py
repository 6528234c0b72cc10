"""Linear probes on the visual tokens that the reference trainer adds to its loss (`TrainConfig.aux`),
and their per-patch targets. They are used only in training. The saved model is plain LLaVA."""
from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageDraw

from ..synthetic.core import COLOURS, SHAPES, draw_shape


SHAPE_POOLS = ("patch", "object")  # `AuxHeads.shape_loss`: each patch, or each shape's cells pooled


def check_shape_pool(pool: str) -> None:
    """Refuse a `shape_pool` that `AuxHeads.shape_loss` does not know (the trainer asks before rendering)."""
    if pool not in SHAPE_POOLS:
        raise ValueError(f"shape_pool must be one of {SHAPE_POOLS}, got {pool!r}")


class AuxHeads:
    """Linear probes on the visual tokens that give the vision tower a direct training signal.

    A tiny LLaVA trained from scratch on answers alone never learns to look (the loss sits at
    the answer prior); supervising "which key colour is in this patch" and "what does this
    crop read" makes the visual tokens informative, after which the decoder learns to use them.
    "Which row and column is this patch" keeps each token's place in its features: rotary attention
    gives the decoder relative positions in its scores but none in what it reads.
    """

    def __init__(self, dim: int, vocab: int, device, grid: int = 8, read_pool: str = "mean",
                 colour_weight: float = 1.0, shapes: bool = False, shape_pool: str = "patch"):
        import torch

        if read_pool not in ("mean", "max"):
            raise ValueError(f"read_pool must be 'mean' or 'max', got {read_pool!r}")
        check_shape_pool(shape_pool)
        if colour_weight <= 0:
            raise ValueError(f"colour_weight must be > 0, got {colour_weight!r}")
        self.colour = torch.nn.Linear(dim, len(COLOURS)).to(device)
        # > 1: a present colour counts that many absent ones (BCE's pos_weight); None keeps the plain loss
        self.pos_weight = torch.full((len(COLOURS),), float(colour_weight), device=device) if colour_weight != 1 else None
        self.read = torch.nn.Linear(dim, 2 * vocab).to(device)
        self.where = torch.nn.Linear(dim, 2 * grid).to(device)
        # "which shape covers this patch" (`shape_targets`), with `shapes`: `TrainConfig.shape_weight`
        self.shape = torch.nn.Linear(dim, len(SHAPES)).to(device) if shapes else None
        self.vocab, self.grid, self.read_pool, self.shape_pool = vocab, grid, read_pool, shape_pool
        self.heads = ("colour", "read", "where") + (("shape",) if shapes else ())

    def parameters(self):
        return [p for k in self.heads for p in getattr(self, k).parameters()]

    def state(self) -> dict:
        return {k: getattr(self, k).state_dict() for k in self.heads}

    def load_state(self, state: dict) -> None:
        for k, v in state.items():
            getattr(self, k).load_state_dict(v)

    def loss(self, feats, colour_targets, read_targets):
        """Colour, read and position losses; `feats` is (n_images, grid^2, dim)."""
        import torch
        import torch.nn.functional as F

        lc = F.binary_cross_entropy_with_logits(self.colour(feats), colour_targets, pos_weight=self.pos_weight)
        # max: at 24x24 a glyph covers 2-6% of a crop's tokens, and a mean drowns it
        pooled = feats.amax(1) if self.read_pool == "max" else feats.mean(1)
        logits = self.read(pooled).view(-1, 2, self.vocab)
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

    def shape_loss(self, feats, shape_targets):
        """Cross-entropy of the shape probe on the patches an object covers (`shape_targets`, -100 elsewhere);
        with `shape_pool` "object", on each image's cells of one shape pooled as the read head pools a crop
        (objects of the same shape pool together: their label is the same). Why: one cell's features read
        its object's shape no better than the majority class, their pool over the object's cells did on
        54% (CHANGELOG, stops 59-60)."""
        import torch
        import torch.nn.functional as F

        if not (shape_targets != -100).any():
            return feats.sum() * 0
        if self.shape_pool == "patch":
            return F.cross_entropy(self.shape(feats).reshape(-1, len(SHAPES)), shape_targets.reshape(-1).long(),
                                   ignore_index=-100)
        pooled, labels = [], []
        for k in range(len(SHAPES)):
            on = shape_targets == k  # (n_images, cells)
            has = on.any(1)
            if not has.any():
                continue
            f, m = feats[has], on[has].unsqueeze(-1)
            pooled.append(f.masked_fill(~m, float("-inf")).amax(1) if self.read_pool == "max"
                          else (f * m).sum(1) / m.sum(1))
            labels.append(torch.full((int(has.sum()),), k, device=feats.device))
        return F.cross_entropy(self.shape(torch.cat(pooled)), torch.cat(labels))


KEY_RGB = np.array(list(COLOURS.values()), dtype=np.int16)


def patch_colour_pixels(images: np.ndarray, patch: int, tol: int = 60) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, H/patch * W/patch, n_colours) int: pixels of each key colour in each patch."""
    import torch

    im = torch.from_numpy(np.require(images, requirements="W")).to(torch.int16)  # a read-only view is copied
    d = torch.stack([(im - k).abs().amax(-1) < tol for k in torch.from_numpy(KEY_RGB)], -1)  # (n, H, W, C)
    n, H, W, C = d.shape
    return d.reshape(n, H // patch, patch, W // patch, patch, C).sum((2, 4)).reshape(n, -1, C).numpy()


def patch_colours(images: np.ndarray, patch: int, tol: int = 60, min_pixels: int = 2) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, H/patch * W/patch, n_colours) float: key colour visible in each patch."""
    return (patch_colour_pixels(images, patch, tol) >= min_pixels).astype(np.float32)


def pack_colours(images: np.ndarray, patch: int) -> np.ndarray:
    """`patch_colours` as bits (n, patches, ceil(colours / 8)) uint8: what `Example.colours` keeps."""
    return np.packbits(patch_colours(images, patch) > 0, axis=-1)


# an existence fact that holds names an object drawn on the canvas: its colour, shape and box
OBJECT_FACT = re.compile(rf"is there an? (\w+) ({'|'.join(SHAPES)}) in the image \?")


def shape_targets(item, views, size: int, patch: int, cover: float = 0.25) -> np.ndarray:
    """(n_views, (size/patch)^2) int8: the index in SHAPES of the object covering at least `cover` of
    each patch once `views` (boxes of the item's canvas) are resized to the input square, -100 where
    none does. Why: the committed model answered pope's shapes near chance at the full view and
    zoomed, though a linear probe read 54% of them from its frozen tower (CHANGELOG, stop 59); a
    CLIP patch carries its object's category, this gives each of the tower's cells its object's shape.
    The objects are the item's "yes" existence facts, redrawn as a label mask."""
    mask = Image.new("L", item.image.size, 0)
    d = ImageDraw.Draw(mask)
    for q, a, box in item.facts:
        m = OBJECT_FACT.fullmatch(q)
        if a == "yes" and m:
            draw_shape(d, m.group(2), box, SHAPES.index(m.group(2)) + 1)
    g = size // patch
    out = np.full((len(views), g * g), -100, dtype=np.int8)
    for i, v in enumerate(views):
        lab = np.asarray(mask.crop(tuple(v)).resize((size, size), Image.NEAREST)).reshape(g, patch, g, patch)
        counts = np.stack([(lab == k + 1).mean((1, 3)) for k in range(len(SHAPES))], -1).reshape(g * g, -1)
        hit = counts.max(1) >= cover
        out[i, hit] = counts[hit].argmax(1)
    return out
