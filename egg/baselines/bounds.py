"""Bounds for the crop-and-append recipe: a random crop (lower) and the ground truth (upper).

Both answer exactly like EGG and ViCrop -- the original image first, then the crops as
extra images, then the question -- so differences come from *where* the crops are.

* ``oracle``: crops at the ground-truth evidence boxes (made croppable: aspect <= 3:1,
  at least one patch, inside the image -- the same ``clamp_aspect`` EGG uses).
* ``random_box``: crops of the same size as a reference (a box or list of boxes, e.g.
  EGG's own, or an area fraction) at uniformly random positions, seeded.
"""
from __future__ import annotations

import math
import time
from typing import Sequence, Union

import numpy as np

from ..adapters import EmbeddingCache, as_adapter
from ..adapters.base import Box
from ..images import check_question, load_image
from ..method import checks
from ..method.boxes import clamp_aspect
from ..method.result import Grounding, Iteration
from ..method.zoom import answer_with_crops


def _answer_grounding(adapter, img, q, boxes: list[Box], method: str, params: dict, max_new_tokens: int) -> Grounding:
    counter = adapter.counter
    c0, t0 = counter.copy(), time.perf_counter()
    ans = answer_with_crops(adapter, img, q, boxes, max_new_tokens, EmbeddingCache())
    area = min(((b[2] - b[0]) * (b[3] - b[1]) for b in boxes), default=float("inf"))
    it0 = Iteration(index=0, boxes=list(boxes), masses=[float("nan")] * len(boxes))
    it1 = Iteration(index=1, crops=list(boxes), answer=ans, min_crop_area=area)
    cost = counter.copy() - c0
    cost.wall_time = time.perf_counter() - t0
    it1.cost = cost.copy()
    params = dict(params, max_new_tokens=max_new_tokens, model=adapter.describe())
    return Grounding(answer=ans, boxes=list(boxes), trace=[it0, it1], cost=cost, best_index=1, method=method,
                     question=q, image_size=tuple(img.size), params=params, image=img)


def _as_boxes(boxes) -> list[Box]:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
        raise ValueError(f"boxes must be one (x0, y0, x1, y1) box or a non-empty list of them, got {boxes!r}")
    if not np.isfinite(arr).all():
        raise ValueError(f"boxes must be finite, got {boxes!r}")
    return [tuple(float(v) for v in b) for b in arr]  # type: ignore[misc]


def oracle(vlm, image, question: str, boxes, *, max_ratio: float = 3.0, max_new_tokens: int = 8) -> Grounding:
    """Answer with crops at the ground-truth ``boxes`` (pixels of ``image``) appended."""
    adapter = as_adapter(vlm)
    max_ratio = checks.number("max_ratio", max_ratio, lo=1)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, lo=1)
    img = load_image(image)
    q = check_question(question)
    crops = [clamp_aspect(b, img.size, max_ratio=max_ratio, min_side=adapter.min_crop_side) for b in _as_boxes(boxes)]
    return _answer_grounding(adapter, img, q, crops, "oracle", {"max_ratio": max_ratio}, max_new_tokens)


def random_box(
    vlm,
    image,
    question: str,
    size_like: Union[float, Box, Sequence[Box]] = 0.1,
    seed: int = 0,
    *,
    max_new_tokens: int = 8,
) -> Grounding:
    """Answer with crops at random positions (seeded: same seed, same boxes).

    size_like: a box or a list of boxes -> one random crop per box, each of that box's
        width and height (clipped to the image); or a float in (0, 1] -> one crop of that
        fraction of the image area, with the image's aspect ratio.
    """
    adapter = as_adapter(vlm)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, lo=1)
    seed = checks.integer("seed", seed, lo=0)
    img = load_image(image)
    q = check_question(question)
    W, H = img.size
    if isinstance(size_like, (int, float)) and not isinstance(size_like, bool):
        f = float(size_like)
        if not 0 < f <= 1:
            raise ValueError(f"an area fraction must be in (0, 1], got {f}")
        sizes = [(W * math.sqrt(f), H * math.sqrt(f))]
    else:
        sizes = [(b[2] - b[0], b[3] - b[1]) for b in _as_boxes(size_like)]
    rng = np.random.default_rng(seed)
    crops: list[Box] = []
    ms = adapter.min_crop_side
    for w, h in sizes:
        w = int(min(max(round(abs(w)), ms, 1), W))
        h = int(min(max(round(abs(h)), ms, 1), H))
        x0 = int(rng.integers(0, W - w + 1))
        y0 = int(rng.integers(0, H - h + 1))
        crops.append((float(x0), float(y0), float(x0 + w), float(y0 + h)))
    params = {"seed": int(seed), "sizes": [list(s) for s in sizes]}
    return _answer_grounding(adapter, img, q, crops, "random", params, max_new_tokens)


__all__ = ["oracle", "random_box"]
