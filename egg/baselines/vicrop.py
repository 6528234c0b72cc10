"""ViCrop (Zhang et al., ICLR 2025, "MLLMs know where to look"): one crop from the model's
own attention or gradients, appended as a second image (docs/method.md section 5).

Maps (all over the original image's token grid):

* ``rel-att``: attention from the last prompt position to the image tokens at one decoder
  layer (default: the middle one), averaged over heads, divided by the same map for the
  generic prompt "Write a general description of the image." -- the division removes
  the attention every prompt pays to the same tokens (sinks, borders). Only the first
  ``layer + 1`` decoder layers are run.
* ``grad-att``: attention at that layer times relu(d loss / d attention), loss = log-prob
  of the argmax next token; averaged over heads.
* ``pure-grad``: d loss / d input pixels, L2 over colour channels, divided by the same
  for the generic prompt, kept only where a high-pass filter of the processed image is
  above its median (edges and texture, not flat areas), averaged per patch.

Crop choice (``choose_window``) -- this project's version of ViCrop's adaptive
multi-scale window: for each window size, slide a size x size pixel window over the map
(at grid-cell steps, via an integral image) and keep the position with the largest mass;
score that window by its *mass gain over chance*, (mass inside / total mass) - (window
area / map area), and keep the best-scoring size. The area term means a bigger window wins
only if it captures proportionally more relevance than it covers, so windows do not grow
just because they are bigger. (ViCrop's own release scores each size by how much its best
window stands out from the neighbouring windows, per unit area; the gain-over-chance score
is a related, scale-free criterion.) The crop is the size x size square centred on that
window, shifted inside the image.

Not reproduced: ViCrop's tiling of images above 1024 px into separately mapped tiles.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..adapters import EmbeddingCache, Prepared, VLMAdapter, as_adapter
from ..method.boxes import Box
from ..adapters.records import TokenGrid
from ..images import check_question, load_image
from ..method import checks
from ..method.objectives import argmax_log_prob, next_token_stats
from ..method.regions import TIE_RTOL, first_argmax_2d
from ..method.result import Grounding, Iteration
from ..method.zoom import cut, map_boxes

GENERIC_PROMPT = "Write a general description of the image."
#: ViCrop's window sizes, as multiples of the vision tower's input resolution.
DEFAULT_WINDOW_SCALES = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
_EPS = 1e-12


# --------------------------------------------------------------------------- maps


def _grid_values(vec: torch.Tensor, grid: TokenGrid) -> np.ndarray:
    """Values of a per-sequence-position vector at a grid's tokens, as (rows, cols)."""
    v = vec.detach().to(torch.float64).cpu().numpy()
    return v[grid.positions()]


def _last_attention(att: torch.Tensor, i: int, n: int, grid: TokenGrid) -> np.ndarray:
    """Row ``i`` of a batch's attention weights: from its last position (``n`` tokens),
    heads averaged, on ``grid``."""
    return _grid_values(att[i, :, n - 1, :n].mean(0), grid)


def _attention_maps(adapter: VLMAdapter, preps: list[Prepared], layer: int, caches: list) -> list[np.ndarray]:
    vis = adapter.visual_embeddings_batch(preps, caches)
    with torch.no_grad():
        out = adapter.forward_batch(preps, vis, num_layers=layer + 1, attention_layer=layer)
    return [_last_attention(out.attention, i, n, p.grids[0]) for i, (p, n) in enumerate(zip(preps, out.lengths))]


def _grad_attention_maps(adapter: VLMAdapter, preps: list[Prepared], layer: int, caches: list) -> list[tuple]:
    vis = [v.detach().requires_grad_(True) for v in adapter.visual_embeddings_batch(preps, caches)]
    with torch.enable_grad():
        out = adapter.forward_batch(preps, vis, attention_layer=layer)
        loss = sum(argmax_log_prob(out.logits[i]) for i in range(len(preps)))  # rows do not interact
        (g,) = torch.autograd.grad(loss, out.attention)
    adapter.counter.backward += len(preps)
    ga = out.attention.detach() * torch.relu(g)
    return [(_last_attention(ga, i, n, p.grids[0]), out.logits[i].detach())
            for i, (p, n) in enumerate(zip(preps, out.lengths))]


def _pixel_gradients(adapter: VLMAdapter, preps: list[Prepared], caches: list) -> list[tuple]:
    """Per prompt: |d log p(argmax) / d pixels| (L2 over channels) of image 0, shape (H, W),
    the logits, and the processed image; one batched forward and one backward.

    Each image is encoded once for its gradient; its embeddings (detached) go into its
    cache, so that the answer does not encode the original again."""
    if any(len(p.images) != 1 for p in preps):
        raise ValueError("pure-grad maps a single image")
    leaves, embs, extras, pixs = [], [], [], []
    with torch.enable_grad():
        for p, cache in zip(preps, caches):
            pix, extra = adapter.image_inputs(p.inputs, 0)
            leaf = pix.detach().clone().requires_grad_(True)
            emb = adapter.encode(leaf, **extra)
            adapter.counter.images_encoded += 1
            if cache is not None:
                cache.put(EmbeddingCache.key(pix), emb.detach())
            leaves.append(leaf)
            embs.append(emb)
            extras.append(extra)
            pixs.append(pix)
        out = adapter.forward_batch(preps, embs)
        loss = sum(argmax_log_prob(out.logits[i]) for i in range(len(preps)))
        grads = torch.autograd.grad(loss, leaves)
    adapter.counter.backward += len(preps)
    res = []
    for i, (g, pix, extra) in enumerate(zip(grads, pixs, extras)):
        g = adapter.pixel_image(g, **extra)
        norm = torch.linalg.vector_norm(g[0].to(torch.float64), dim=0).cpu().numpy()
        res.append((norm, out.logits[i].detach(), adapter.pixel_image(pix.detach(), **extra)))
    return res


def high_pass_mask(pixels: torch.Tensor, resolution: int | None = None) -> np.ndarray:
    """Boolean (H, W) mask of the processed image's high-frequency areas.

    Image minus its Gaussian blur (sigma 0.8 px, a 3-tap kernel), L2 over channels, median
    filtered, then > its median. The median window is 7 px at a 336 px input (ViCrop's
    setting) and scales with the input size (odd, >= 1).
    """
    x = pixels.detach().to(torch.float64).cpu().numpy()
    x = x[0] if x.ndim == 4 else x  # (C, H, W)
    low = np.stack([ndimage.gaussian_filter(c, sigma=0.8, mode="nearest") for c in x])
    h = np.sqrt(((x - low) ** 2).sum(axis=0))
    side = resolution if resolution is not None else max(h.shape)
    km = max(1, int(round(7 * side / 336)))
    km += (km + 1) % 2  # odd
    h = ndimage.median_filter(h, size=km, mode="nearest")
    return h > np.median(h)


def _pool(values: np.ndarray, grid: TokenGrid, patch: int) -> np.ndarray:
    rows, cols = grid.shape
    v = values[: rows * patch, : cols * patch]
    return v.reshape(rows, patch, cols, patch).mean(axis=(1, 3))


# One signature for every variant, as captum's attribution methods share one, over a batch:
# (adapter, prepared prompts, images, layer, caches) -> per prompt (map over the original's
# grid, the full model's next-token logits or None when the variant does not compute them).
# A single call is a batch of one.


def rel_att_map(adapter: VLMAdapter, preps: list[Prepared], images: list, layer: int, caches: list) -> list[tuple]:
    """Attention to the image at ``layer``, divided by the generic prompt's (no backward pass);
    the prompts and their generic twins go through one truncated pass."""
    general = [adapter.prepare([im], GENERIC_PROMPT, cache=c) for im, c in zip(images, caches)]
    maps = _attention_maps(adapter, list(preps) + general, layer, list(caches) * 2)
    b = len(preps)
    return [(maps[i] / (maps[b + i] + _EPS), None) for i in range(b)]


def grad_att_map(adapter: VLMAdapter, preps: list[Prepared], images: list, layer: int, caches: list) -> list[tuple]:
    """Attention at ``layer`` times relu(d log p(argmax) / d attention), heads averaged."""
    return _grad_attention_maps(adapter, list(preps), layer, list(caches))


def pure_grad_map(adapter: VLMAdapter, preps: list[Prepared], images: list, layer: int, caches: list) -> list[tuple]:
    """|d log p(argmax) / d pixels| over the generic prompt's, on high-frequency areas, per patch."""
    general = [adapter.prepare([im], GENERIC_PROMPT, cache=c) for im, c in zip(images, caches)]
    mine = _pixel_gradients(adapter, list(preps), list(caches))
    theirs = _pixel_gradients(adapter, general, [None] * len(general))
    out = []
    for p, (ga, logits, pix), (gb, _, _) in zip(preps, mine, theirs):
        ratio = ga / (gb + _EPS) * high_pass_mask(pix, resolution=max(adapter.input_resolution))
        out.append((_pool(ratio, p.grids[0], adapter.patch_size), logits))
    return out


#: variant name -> its map function (the signature above).
VARIANTS = {"rel-att": rel_att_map, "grad-att": grad_att_map, "pure-grad": pure_grad_map}


def vicrop_map(vlm, image, question: str, variant: str = "rel-att", layer: int | None = None,
               cache: EmbeddingCache | None = None) -> tuple[np.ndarray, Prepared, dict]:
    """The ViCrop map of ``variant`` over the original image's token grid.

    Returns (map (rows, cols), the prepared prompt, info with the next-token entropy and
    max-prob where the variant computes the full model's logits).
    """
    adapter = as_adapter(vlm)
    if variant not in VARIANTS:
        raise ValueError(f"unknown ViCrop variant {variant!r}; valid: {list(VARIANTS)}")
    img = load_image(image)
    q = check_question(question)
    n = adapter.num_layers
    layer = n // 2 if layer is None else checks.integer("layer", layer, lo=0, hi=n - 1)
    prep = adapter.prepare([img], q, cache=cache)
    info: dict = {"layer": layer, "entropy": float("nan"), "max_prob": float("nan")}
    m, logits = VARIANTS[variant](adapter, [prep], [img], layer, [cache])[0]
    return _clean(m), prep, _info(info, logits)


def _clean(m) -> np.ndarray:
    return np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _info(info: dict, logits) -> dict:
    if logits is not None:
        info["entropy"], info["max_prob"], _ = next_token_stats(logits)
    return info


# --------------------------------------------------------------------------- crop choice


def window_sizes_for(adapter: VLMAdapter, image_size: tuple[int, int], window_sizes=None) -> list[float]:
    """Window sides in pixels. None: ViCrop's sizes (1.0 .. 2.0 x the model's input side);
    numbers <= 1 are fractions of the image's shorter side, larger numbers pixels."""
    short = float(min(image_size))
    if window_sizes is None:
        base = float(min(adapter.input_resolution))
        return [s * base for s in DEFAULT_WINDOW_SCALES]
    return [s * short if s <= 1 else s for s in check_window_sizes(window_sizes)]


def check_window_sizes(window_sizes) -> list[float]:
    """A non-empty sequence of finite positive numbers (None passes through as None)."""
    if window_sizes is None:
        return None
    if isinstance(window_sizes, (str, bytes)) or not hasattr(window_sizes, "__iter__"):
        raise ValueError(f"window_sizes must be a non-empty list of positive numbers, got {window_sizes!r}")
    sizes = list(window_sizes)
    if not sizes:
        raise ValueError("window_sizes is empty; pass None for ViCrop's sizes or a list of positive numbers "
                         "(<= 1: fractions of the image's shorter side; > 1: pixels)")
    return [checks.number("window size", v, lo=0, lo_open=True) for v in sizes]


def choose_window(m: np.ndarray, grid: TokenGrid, sizes: Sequence[float]) -> tuple[Box, float, float]:
    """(crop box in the grid's image pixels, score, chosen size); see the module docstring.

    A map with no positive mass gives the whole image (nothing to zoom on), score 0.
    """
    W, H = grid.image_size
    m = np.clip(np.nan_to_num(np.asarray(m, dtype=np.float64)), 0.0, None)
    rows, cols = m.shape
    total = float(m.sum())
    if not total > 0:
        return (0.0, 0.0, float(W), float(H)), 0.0, float(max(W, H))
    S = np.zeros((rows + 1, cols + 1))
    S[1:, 1:] = m.cumsum(0).cumsum(1)
    cw, ch = grid.cell_size
    best = None
    for size in sizes:
        wc = int(min(max(round(size / cw), 1), cols))
        hc = int(min(max(round(size / ch), 1), rows))
        sums = S[hc:, wc:] - S[:-hc, wc:] - S[hc:, :-wc] + S[:-hc, :-wc]
        # windows that differ only by zero-relevance cells tie exactly; first_argmax keeps
        # float noise from choosing between them
        r0, c0 = first_argmax_2d(sums)
        score = float(sums[r0, c0]) / total - (wc * hc) / float(rows * cols)
        if best is None or score > best[0] + TIE_RTOL:
            best = (score, size, (c0, r0, c0 + wc, r0 + hc))
    score, size, (c0, r0, c1, r1) = best
    fx0, fy0, _, _ = grid.footprint
    cx = fx0 + (c0 + c1) / 2.0 * cw
    cy = fy0 + (r0 + r1) / 2.0 * ch
    sw, sh = min(float(size), float(W)), min(float(size), float(H))
    sw, sh = max(1.0, round(sw)), max(1.0, round(sh))
    x0 = min(max(round(cx - sw / 2.0), 0.0), W - sw)
    y0 = min(max(round(cy - sh / 2.0), 0.0), H - sh)
    return (float(x0), float(y0), float(x0 + sw), float(y0 + sh)), score, float(size)


# --------------------------------------------------------------------------- the baseline


def vicrop(
    vlm,
    image,
    question: str,
    variant: str = "rel-att",
    layer: int | None = None,
    window_sizes: Sequence[float] | None = None,
    max_new_tokens: int = 8,
) -> Grounding:
    """ViCrop: one crop chosen from the model's attention / gradients, answered as a second image.

    variant: "rel-att", "grad-att" or "pure-grad" (module docstring).
    layer: decoder layer of the attention (default: the middle one, ``num_layers // 2``;
        ViCrop uses 14 of LLaVA-1.5's 32).
    window_sizes: see ``window_sizes_for``.
    Returns a Grounding whose trace has state 0 (the map, proposing the crop) and state 1
    (original + crop, with the answer); ``best_index`` is 1. (A batch of one of
    ``vicrop_batch``.)
    """
    return vicrop_batch(vlm, [image], [question], variant=variant, layer=layer, window_sizes=window_sizes,
                        max_new_tokens=max_new_tokens)[0]


def vicrop_batch(vlm, images: Sequence, questions: Sequence[str], variant: str = "rel-att", layer: int | None = None,
                 window_sizes: Sequence[float] | None = None, max_new_tokens: int = 8,
                 batch_size: int = 8, caches: Sequence[EmbeddingCache] | None = None) -> list[Grounding]:
    """``vicrop`` for each (image, question) pair, ``batch_size`` questions per model pass
    (maps in one batched pass per prompt set, answers in one padded ``generate``). Each
    result equals ``vicrop``'s; its ``cost`` counts the passes it took part in, as a single
    call would, and its share of the time. `caches`: as ``egg.ground_batch``'s (a shared
    cache's encodings are not run, nor counted, again)."""
    adapter = as_adapter(vlm)
    checks.choice("variant", variant, VARIANTS)
    if layer is not None:
        layer = checks.integer("layer", layer, lo=0, hi=adapter.num_layers - 1)
    check_window_sizes(window_sizes)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, lo=1)
    b = checks.integer("batch_size", batch_size, lo=1)
    images, questions = list(images), list(questions)
    if len(images) != len(questions):
        raise ValueError(f"vicrop_batch needs one question per image, got {len(images)} images and "
                         f"{len(questions)} questions")
    caches = [c if c is not None else EmbeddingCache() for c in checks.one_per("caches", caches, len(images))]
    imgs, qs = [load_image(im) for im in images], [check_question(q) for q in questions]
    layer = adapter.num_layers // 2 if layer is None else layer
    out: list[Grounding] = []
    for k in range(0, len(imgs), b):
        out += _vicrop_chunk(adapter, imgs[k:k + b], qs[k:k + b], variant, layer, window_sizes, max_new_tokens,
                             caches[k:k + b])
    return out


def _vicrop_chunk(adapter: VLMAdapter, imgs: list, qs: list[str], variant: str, layer: int, window_sizes,
                  max_new_tokens: int, caches: list[EmbeddingCache]) -> list[Grounding]:
    counter = adapter.counter
    c0, t0 = counter.copy(), time.perf_counter()
    preps = [adapter.prepare([im], q, cache=c) for im, q, c in zip(imgs, qs, caches)]
    results = VARIANTS[variant](adapter, preps, imgs, layer, caches)
    states = []
    for im, prep, (m, logits) in zip(imgs, preps, results):
        m, info = _clean(m), _info({"layer": layer, "entropy": float("nan"), "max_prob": float("nan")}, logits)
        sizes = window_sizes_for(adapter, im.size, window_sizes)
        box, score, size = choose_window(m, prep.grids[0], sizes)
        it0 = Iteration(index=0, maps=[m], map_boxes=map_boxes(prep, []), boxes=[box], masses=[score],
                        searched=[0], entropy=info["entropy"], max_prob=info["max_prob"])
        states.append((it0, box, sizes, size))
    mapped = counter.copy() - c0
    mapped.wall_time = time.perf_counter() - t0
    c1, t1 = counter.copy(), time.perf_counter()
    answer_preps = [adapter.prepare([im] + cut(im, [st[1]], c), q, cache=c)
                    for im, q, c, st in zip(imgs, qs, caches, states)]
    ids = adapter.generate_batch(answer_preps, max_new_tokens, caches=caches)
    answered = counter.copy() - c1
    answered.wall_time = time.perf_counter() - t1
    out = []
    for im, q, (it0, box, sizes, size), a, c_map, c_ans in zip(imgs, qs, states, ids, mapped.split(len(imgs)),
                                                               answered.split(len(imgs))):
        c_ans.generated_tokens = len(a)
        it0.cost = c_map
        it1 = Iteration(index=1, crops=[box], answer=adapter.decode(a), min_crop_area=(box[2] - box[0]) * (box[3] - box[1]),
                        cost=c_ans)
        params = dict(variant=variant, layer=layer, window_sizes=[float(s) for s in sizes], window_size=size,
                      max_new_tokens=max_new_tokens, model=adapter.describe())
        out.append(Grounding(answer=it1.answer, boxes=[box], trace=[it0, it1], cost=c_map + c_ans, best_index=1,
                             method=f"vicrop:{variant}", question=q, image_size=tuple(im.size), params=params,
                             image=im))
    return out


__all__ = ["vicrop", "vicrop_batch", "vicrop_map", "rel_att_map", "grad_att_map", "pure_grad_map", "choose_window", "high_pass_mask", "window_sizes_for", "GENERIC_PROMPT", "VARIANTS"]
