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
from ..method.zoom import answer_with_crops, map_boxes

GENERIC_PROMPT = "Write a general description of the image."
#: ViCrop's window sizes, as multiples of the vision tower's input resolution.
DEFAULT_WINDOW_SCALES = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
_EPS = 1e-12


# --------------------------------------------------------------------------- maps


def _grid_values(vec: torch.Tensor, grid: TokenGrid) -> np.ndarray:
    """Values of a per-sequence-position vector at a grid's tokens, as (rows, cols)."""
    v = vec.detach().to(torch.float64).cpu().numpy()
    return v[grid.positions()]


def _attention_map(adapter: VLMAdapter, prep: Prepared, layer: int, cache) -> np.ndarray:
    vis = adapter.visual_embeddings(prep, cache)
    with torch.no_grad():
        out = adapter.forward(prep, vis, num_layers=layer + 1, attention_layer=layer)
    att = out.attention[0, :, -1, :].mean(0)  # heads averaged, from the last position
    return _grid_values(att, prep.grids[0])


def _grad_attention_map(adapter: VLMAdapter, prep: Prepared, layer: int, cache) -> tuple[np.ndarray, torch.Tensor]:
    vis = adapter.visual_embeddings(prep, cache).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = adapter.forward(prep, vis, attention_layer=layer)
        loss = argmax_log_prob(out.logits)
        (g,) = torch.autograd.grad(loss, out.attention)
    adapter.counter.backward += 1
    ga = (out.attention.detach() * torch.relu(g))[0, :, -1, :].mean(0)
    return _grid_values(ga, prep.grids[0]), out.logits.detach()


def _pixel_gradient(adapter: VLMAdapter, prep: Prepared, cache: EmbeddingCache | None = None,
                    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """|d log p(argmax) / d pixels| (L2 over channels) of image 0, shape (H, W).

    The image is encoded once for this gradient; its embeddings (detached) go into
    ``cache``, so that the answer does not encode the original again."""
    if len(prep.images) != 1:
        raise ValueError("pure-grad maps a single image")
    pix, extra = adapter.image_inputs(prep.inputs, 0)
    leaf = pix.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        emb = adapter.encode(leaf, **extra)
        adapter.counter.images_encoded += 1
        if cache is not None:
            cache.put(EmbeddingCache.key(pix), emb.detach())
        logits = adapter.forward_from_embeddings(prep, emb)
        loss = argmax_log_prob(logits)
        (g,) = torch.autograd.grad(loss, leaf)
    adapter.counter.backward += 1
    g = adapter.pixel_image(g, **extra)
    norm = torch.linalg.vector_norm(g[0].to(torch.float64), dim=0).cpu().numpy()
    return norm, logits.detach(), adapter.pixel_image(pix.detach(), **extra)


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


# One signature for every variant, as captum's attribution methods share one:
# (adapter, prepared prompt, image, layer, cache) -> (map over the original's grid, the
# full model's next-token logits or None when the variant does not compute them).


def rel_att_map(adapter: VLMAdapter, prep: Prepared, image, layer: int, cache) -> tuple[np.ndarray, None]:
    """Attention to the image at ``layer``, divided by the generic prompt's (no backward pass)."""
    general = adapter.prepare([image], GENERIC_PROMPT, cache=cache)
    a = _attention_map(adapter, prep, layer, cache)
    b = _attention_map(adapter, general, layer, cache)
    return a / (b + _EPS), None


def grad_att_map(adapter: VLMAdapter, prep: Prepared, image, layer: int, cache) -> tuple[np.ndarray, torch.Tensor]:
    """Attention at ``layer`` times relu(d log p(argmax) / d attention), heads averaged."""
    return _grad_attention_map(adapter, prep, layer, cache)


def pure_grad_map(adapter: VLMAdapter, prep: Prepared, image, layer: int, cache) -> tuple[np.ndarray, torch.Tensor]:
    """|d log p(argmax) / d pixels| over the generic prompt's, on high-frequency areas, per patch."""
    general = adapter.prepare([image], GENERIC_PROMPT, cache=cache)
    ga, logits, pix = _pixel_gradient(adapter, prep, cache)
    gb, _, _ = _pixel_gradient(adapter, general)
    ratio = ga / (gb + _EPS) * high_pass_mask(pix, resolution=max(adapter.input_resolution))
    return _pool(ratio, prep.grids[0], adapter.patch_size), logits


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
    m, logits = VARIANTS[variant](adapter, prep, img, layer, cache)
    if logits is not None:
        info["entropy"], info["max_prob"], _ = next_token_stats(logits)
    m = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return m, prep, info


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
    (original + crop, with the answer); ``best_index`` is 1.
    """
    adapter = as_adapter(vlm)
    checks.choice("variant", variant, VARIANTS)
    if layer is not None:
        layer = checks.integer("layer", layer, lo=0, hi=adapter.num_layers - 1)
    check_window_sizes(window_sizes)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, lo=1)
    img = load_image(image)
    q = check_question(question)
    counter = adapter.counter
    c_start, t_start = counter.copy(), time.perf_counter()
    cache = EmbeddingCache()
    m, prep, info = vicrop_map(adapter, img, q, variant, layer, cache=cache)
    grid = prep.grids[0]
    sizes = window_sizes_for(adapter, img.size, window_sizes)
    box, score, size = choose_window(m, grid, sizes)
    it0 = Iteration(index=0, maps=[m], map_boxes=map_boxes(prep, []), boxes=[box], masses=[score], searched=[0],
                    entropy=info["entropy"], max_prob=info["max_prob"])
    it0.cost = counter.copy() - c_start
    it0.cost.wall_time = time.perf_counter() - t_start
    c1, t1 = counter.copy(), time.perf_counter()
    ans = answer_with_crops(adapter, img, q, [box], max_new_tokens, cache)
    it1 = Iteration(index=1, crops=[box], answer=ans, min_crop_area=(box[2] - box[0]) * (box[3] - box[1]))
    it1.cost = counter.copy() - c1
    it1.cost.wall_time = time.perf_counter() - t1
    cost = counter.copy() - c_start
    cost.wall_time = time.perf_counter() - t_start
    params = dict(variant=variant, layer=info["layer"], window_sizes=[float(s) for s in sizes],
                  window_size=size, max_new_tokens=max_new_tokens, model=adapter.describe())
    return Grounding(answer=ans, boxes=[box], trace=[it0, it1], cost=cost, best_index=1,
                     method=f"vicrop:{variant}", question=q, image_size=tuple(img.size), params=params, image=img)


__all__ = ["vicrop", "vicrop_map", "rel_att_map", "grad_att_map", "pure_grad_map", "choose_window", "high_pass_mask", "window_sizes_for", "GENERIC_PROMPT", "VARIANTS"]
