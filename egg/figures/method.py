"""Pictures of the method: map overlay, elbow threshold, components, ranked boxes, crops,
and the zoom loop state by state with its spatial entropy (the paper's Figure 2).

>>> from egg.figures import method as viz
>>> g = egg.ground(vlm, item.image, item.question)
>>> fig = viz.method_figure(g, gt_boxes=item.boxes)      # Figure 2 for one question
>>> viz.save_figure(fig, "method_step_by_step")           # figures/…png + .pdf
>>> print(viz.describe(g, before=egg.answer(vlm, item.image, item.question), item=item))

Everything here reads a ``Grounding`` (``egg.ground``) and recomputes nothing that needs
the model: ``region_steps`` replays the region pipeline of ``egg.regions.extract_regions``
(smooth -> threshold -> components -> rank by raw mass) on a recorded map and keeps the
intermediate arrays so they can be drawn; it returns the same regions as
``extract_regions`` (checked by ``tests/test_explorer.py``).

Coordinates: maps are token grids (rows, cols); ``Iteration.map_boxes`` gives the box of
the original image each grid covers, so a crop's map is drawn over the crop's place in the
original. Boxes are original-image pixels (x0, y0, x1, y1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .base import save_figure  # noqa: F401  (old home: viz.save_figure)
from .draw import (BOX_COLOURS, EVIDENCE_COLOUR, MAP_CMAP, _clean_axes, _image, draw_boxes, draw_evidence,  # noqa: F401
                   overlay_map, plot_grid, show_image)
from ..method.regions import Region, extract_regions, get_threshold, smooth
from ..method.boxes import evidence_iou



# --------------------------------------------------------------------------- numbers


def replay_rule(trace, rule) -> tuple[int, int]:
    """Replay a stopping rule over a recorded trace: (the state after which it would have
    stopped, the state it would have answered from). Useful when a trace was computed with
    more iterations than a rule would run (e.g. to show every step)."""
    from ..method.stopping import IterationStats

    stats: list[IterationStats] = [it.stats() for it in trace]
    if not stats:
        raise ValueError("empty trace")
    for n in range(1, len(stats) + 1):
        if rule.should_stop(stats[:n]):
            return n - 1, int(rule.best_index(stats[:n]))
    return len(stats) - 1, int(rule.best_index(stats))


def _fmt(v: float, nd: int = 2) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.{nd}f}"


def describe(g, before: str | None = None, item=None) -> str:
    """One paragraph interpreting a Grounding, generated from its numbers (so it cannot
    contradict them): the answer change, the score against the item's answers, the IoU of
    the best box with the evidence, and where the zoom loop stopped."""
    parts = []
    if before is not None:
        if before.strip() == g.answer.strip():
            parts.append(f"The answer stayed {g.answer!r} with grounding")
        else:
            parts.append(f"The answer changed from {before!r} to {g.answer!r}")
    else:
        parts.append(f"The grounded answer is {g.answer!r}")
    s_after = None
    if item is not None:
        from .. import synthetic as bench

        fam = item.family
        ref = item.answers[0] if item.answers else ""
        s_after = bench.score(fam, g.answer, item)
        txt = f" (reference {ref!r}; score {_fmt(s_after)}"
        if before is not None:
            txt = f" (reference {ref!r}; score {_fmt(bench.score(fam, before, item))} -> {_fmt(s_after)}"
        parts[-1] += txt + ")"
    parts[-1] += "."
    if s_after is not None:
        parts.append(f"EGG got this item {'right' if s_after >= 0.5 else 'wrong'}.")
    if item is not None and item.boxes and g.boxes:
        parts.append(_where(g, item))
    n_zoom = len(g.trace) - 1
    if g.method == "egg":
        ses = ", ".join(_fmt(it.spatial_entropy) for it in g.trace)
        where = "the original image alone" if g.best_index == 0 else f"original + {len(g.crops)} crop(s) of state {g.best_index}"
        parts.append(f"The loop ran {n_zoom} zoom iteration(s) (spatial entropy by state: {ses}) "
                     f"and answered from {where}.")
    return " ".join(parts)


def _where(g, item) -> str:
    """What the first map and the boxes did: is the map's peak in the evidence, how large is
    the first box against the evidence, and does it hold the evidence's centre."""
    from ..method.boxes import box_area, box_center, grid_box_to_pixels, point_in_box
    from ..method.regions import first_argmax_2d

    it0 = g.trace[0]
    out = []
    if it0.maps:
        m = np.asarray(it0.maps[0], dtype=float)
        r, c = first_argmax_2d(m)
        peak = box_center(grid_box_to_pixels((c, r, c + 1, r + 1), m.shape, it0.map_boxes[0]))
        inside = any(point_in_box(peak, b) for b in item.boxes)
        out.append(f"The map's strongest cell is {'inside' if inside else 'outside'} the evidence")
    first = g.boxes[0]
    W, H = item.image.size
    ratio = box_area(first) / max(1.0, float(np.mean([box_area(b) for b in item.boxes])))
    holds = any(point_in_box(box_center(b), first) for b in item.boxes)
    out.append(f"the best box covers {100 * box_area(first) / (W * H):.0f}% of the image ({ratio:.0f}x the "
               f"evidence), {'holds' if holds else 'misses'} the evidence's centre and overlaps it with IoU "
               f"{_fmt(evidence_iou(g.boxes, item.boxes))}")
    return "; ".join(out) + "."


# --------------------------------------------------------------------------- region steps


@dataclass
class RegionSteps:
    """The intermediate results of ``extract_regions`` on one map, for drawing.

    raw: the map (NaN/inf -> 0); smoothed: after the Gaussian; threshold: the value t
    (cells with smoothed > t are foreground); sorted_values: smoothed values ascending;
    cut_index: index in ``sorted_values`` of the threshold point (for the elbow: the
    point farthest from the chord); labels: component label per cell, 0 = background,
    1 = the best-ranked component, 2 = the next, ...; regions: every component as a
    ``Region`` (grid units), best first; k: how many are kept; fallback: True when
    thresholding found nothing (flat map) and ``extract_regions``' fallback region was used.
    """

    raw: np.ndarray
    smoothed: np.ndarray
    threshold: float
    threshold_name: str
    sorted_values: np.ndarray
    cut_index: int
    labels: np.ndarray
    regions: list[Region]
    k: int
    sigma: float
    fallback: bool = False
    masses_share: list[float] = field(default_factory=list)

    @property
    def kept(self) -> list[Region]:
        return self.regions[: self.k]


def region_steps(grid: np.ndarray, sigma: float = 1.5, threshold="elbow", k: int = 2,
                 connectivity: int = 8) -> RegionSteps:
    """Replay ``extract_regions(grid, sigma, threshold, k=None)`` keeping its intermediates."""
    raw = np.nan_to_num(np.asarray(grid, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    sm = smooth(raw, sigma)
    fn = get_threshold(threshold)
    t = float(fn(sm.ravel()))
    srt = np.sort(sm.ravel(), kind="stable")
    regions = extract_regions(raw, sigma=sigma, threshold=threshold, k=None, connectivity=connectivity)
    fg = sm > t
    flat = np.ptp(sm) <= 1e-9 * float(np.max(np.abs(sm))) if sm.size else True
    fallback = bool(flat or not fg.any())
    labels = np.zeros(raw.shape, dtype=int)
    for rank, r in enumerate(regions, start=1):
        if r.mask is not None:
            labels[r.mask & (labels == 0)] = rank
    # the threshold point: the first sorted value equal to t (the elbow is a sorted value)
    hits = np.flatnonzero(srt >= t)
    cut = int(hits[0]) if hits.size else len(srt) - 1
    total = float(raw.sum())
    share = [float(r.mass / total) if total > 0 else float("nan") for r in regions]
    name = threshold if isinstance(threshold, str) else getattr(threshold, "__name__", "custom")
    return RegionSteps(raw=raw, smoothed=sm, threshold=t, threshold_name=name, sorted_values=srt, cut_index=cut,
                       labels=labels, regions=regions, k=int(k), sigma=float(sigma), fallback=fallback,
                       masses_share=share)


def steps_for(g, state: int = 0, grid: int | None = None) -> RegionSteps:
    """``region_steps`` for one map of a Grounding's trace, with the Grounding's own sigma,
    threshold and k (``grid`` default: 0 for state 0, the first crop's grid otherwise)."""
    it = g.trace[state]
    if not it.maps:
        raise ValueError(f"state {state} has no map (the stopping rule did not need it)")
    gi = (0 if state == 0 else min(1, len(it.maps) - 1)) if grid is None else grid
    p = g.params
    return region_steps(it.maps[gi], sigma=float(p.get("sigma", 1.5)), threshold=p.get("threshold", "elbow"),
                        k=int(p.get("k", 2)))


def searched_grids(it) -> list[int]:
    """Indices of the maps a state searched for regions, as the loop recorded them
    (``Iteration.searched``); on a tiled model the original alone has several grids."""
    return [gi for gi in it.searched if gi < len(it.maps)]


def mass_shares(g, state: int = 0) -> list[float]:
    """Raw relevance mass of each region a state proposed, as a share of the total raw
    relevance of the maps it searched (the same shares as ``RegionSteps.masses_share``)."""
    it = g.trace[state]
    total = float(sum(np.nansum(np.asarray(it.maps[gi], dtype=np.float64)) for gi in searched_grids(it)
                      if gi < len(it.maps)))
    return [float(m / total) if total > 0 else float("nan") for m in it.masses]


def cell_aspect(g, state: int = 0, grid: int = 0) -> float:
    """Height / width of one token-grid cell in image pixels (1.0 when unknown)."""
    it = g.trace[state]
    if grid >= len(it.maps) or grid >= len(it.map_boxes):
        return 1.0
    rows, cols = np.asarray(it.maps[grid]).shape
    x0, y0, x1, y1 = it.map_boxes[grid]
    w, h = (x1 - x0) / cols, (y1 - y0) / rows
    return float(h / w) if w > 0 and h > 0 else 1.0


def plot_map(ax, g, image=None, state: int = 0, gt_boxes=None, boxes: bool = True, title: str | None = None,
             interpolation: str = "bilinear"):
    """Image with one state's maps overlaid (state 0: the original's map; later states:
    the crops' maps over their places) and that state's proposed boxes, ranked."""
    img = _image(g, image)
    show_image(ax, img)
    it = g.trace[state]
    for gi in searched_grids(it):
        overlay_map(ax, it.maps[gi], it.map_boxes[gi], interpolation=interpolation)
    if state > 0:
        draw_boxes(ax, it.crops, colours=["#ffffff"], lw=0.8)
    if boxes:
        draw_boxes(ax, it.boxes, labels=[f"#{i + 1}" for i in range(len(it.boxes))])
    if gt_boxes:
        draw_evidence(ax, gt_boxes)
    ax.set_title(title if title is not None else f"entropy-gradient map, state {state}")
    return ax


def plot_elbow(ax, steps: RegionSteps, title: str | None = None):
    """Sorted smoothed values, the chord from first to last point, the threshold point and
    level; cells above the threshold highlighted."""
    v = steps.sorted_values
    x = np.arange(v.size)
    above = v > steps.threshold
    ax.plot(x, v, "-", color="0.35", lw=1.0, zorder=1)
    ax.scatter(x[~above], v[~above], s=6, color="0.55", zorder=2, label="background")
    ax.scatter(x[above], v[above], s=8, color="#e65100", zorder=3, label="foreground (> t)")
    if steps.threshold_name == "elbow" and v.size > 1:
        ax.plot([0, v.size - 1], [v[0], v[-1]], ":", color="#1565c0", lw=1.0, label="chord")
        i = steps.cut_index
        # perpendicular from the elbow point to the chord (in the rescaled axes: |x - y|)
        xn = i / (v.size - 1)
        ax.plot([i, i], [v[i], v[0] + xn * (v[-1] - v[0])], "-", color="#1565c0", lw=0.8)
    ax.axhline(steps.threshold, color="#c62828", lw=0.9, ls="--", label=f"t = {steps.threshold:.3g}")
    ax.scatter([steps.cut_index], [v[steps.cut_index]], s=40, facecolor="none", edgecolor="#c62828", zorder=4)
    ax.set_xlabel("cells, sorted")
    ax.set_ylabel("smoothed relevance")
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.set_title(title if title is not None else f"{steps.threshold_name} threshold: {int(above.sum())}/{v.size} cells")
    ax.tick_params(labelsize=8)
    return ax


def plot_components(ax, steps: RegionSteps, title: str | None = None, aspect: float = 1.0):
    """Connected components of (smoothed > t) coloured by rank, with their grid boxes; the
    kept top-k solid, the rest dashed grey; labels give the share of raw relevance mass."""
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Rectangle

    rows, cols = steps.raw.shape
    ax.imshow(steps.smoothed, cmap="Greys_r", interpolation="nearest", alpha=0.6, aspect=aspect)
    rgba = np.zeros((rows, cols, 4))
    for rank in range(1, int(steps.labels.max()) + 1):
        c = to_rgba(BOX_COLOURS[(rank - 1) % len(BOX_COLOURS)] if rank <= steps.k else "#9e9e9e", 0.75)
        rgba[steps.labels == rank] = c
    ax.imshow(rgba, interpolation="nearest", aspect=aspect)
    for i, r in enumerate(steps.regions):
        c0, r0, c1, r1 = r.box
        kept = i < steps.k
        col = BOX_COLOURS[i % len(BOX_COLOURS)] if kept else "#616161"
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec=col,
                               lw=1.8 if kept else 0.8, ls="-" if kept else "--"))
        share = steps.masses_share[i] if i < len(steps.masses_share) else float("nan")
        ax.text(c0 - 0.45, r0 - 0.45, f"#{i + 1} {100 * share:.0f}%" if math.isfinite(share) else f"#{i + 1}",
                fontsize=8, va="top", ha="left", color="black",
                bbox=dict(boxstyle="square,pad=0.05", fc=col, ec="none", alpha=0.85))
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    _clean_axes(ax)
    n = len(steps.regions)
    extra = " (fallback)" if steps.fallback else ""
    ax.set_title(title if title is not None else f"{n} component(s){extra}, keep top {min(steps.k, n)}")
    return ax


def plot_ranked_boxes(ax, g, image=None, state: int = 0, gt_boxes=None, title: str | None = None):
    """The proposed boxes of one state on the image (original pixels), ranked by raw mass;
    labels give each box's share of the map's raw relevance."""
    img = _image(g, image)
    show_image(ax, img)
    it = g.trace[state]
    labels = [f"#{i + 1}" + (f" {100 * sh:.0f}%" if math.isfinite(sh) else "") for i, sh in enumerate(mass_shares(g, state))]
    draw_boxes(ax, it.boxes, labels=labels)
    if gt_boxes:
        draw_evidence(ax, gt_boxes)
    ax.set_title(title if title is not None else f"ranked boxes (k = {g.params.get('k', len(it.boxes))})")
    return ax


def plot_crops(axes, image, boxes: Sequence, titles: Sequence[str] | None = None):
    """Each box cut from the image (what the model sees as an extra image), one per axis."""
    from ..images import load_image
    from ..method.zoom import cut

    img = load_image(image)
    crops = cut(img, boxes)
    axes = list(np.atleast_1d(axes))
    for i, ax in enumerate(axes):
        if i < len(crops):
            ax.imshow(crops[i])
            for s in ax.spines.values():
                s.set_edgecolor(BOX_COLOURS[i % len(BOX_COLOURS)])
                s.set_linewidth(2.5)
            t = titles[i] if titles is not None and i < len(titles) else f"crop #{i + 1} ({crops[i].size[0]}x{crops[i].size[1]} px)"
            ax.set_title(t)
        else:
            ax.axis("off")
        ax.set_xticks([])
        ax.set_yticks([])
    return axes


def _union(boxes) -> tuple[float, float, float, float]:
    b = np.asarray(boxes, dtype=np.float64)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def plot_state(ax, g, state: int, image=None, gt_boxes=None, zoom: bool = True, answer_state: int | None = None):
    """One state of the zoom loop: its searched maps, its crops (white) and the boxes it
    proposes; zoomed to the crops for states >= 1; title with its spatial entropy.
    ``answer_state`` (default ``g.best_index``) is marked "(answer)"."""
    img = _image(g, image)
    it = g.trace[state]
    show_image(ax, img)
    if it.maps:
        for gi in searched_grids(it):
            overlay_map(ax, it.maps[gi], it.map_boxes[gi], interpolation="nearest")
    if state > 0 and it.crops:
        draw_boxes(ax, it.crops, colours=["#ffffff"], lw=1.0)
        if zoom:
            W, H = img.size
            x0, y0, x1, y1 = _union(it.crops)
            pad = 0.08 * max(x1 - x0, y1 - y0)
            ax.set_xlim(max(0.0, x0 - pad), min(float(W), x1 + pad))
            ax.set_ylim(min(float(H), y1 + pad), max(0.0, y0 - pad))
    if it.maps:
        draw_boxes(ax, it.boxes, labels=[f"#{i + 1}" for i in range(len(it.boxes))], lw=1.5)
    if gt_boxes:
        draw_evidence(ax, gt_boxes, label=False)
    chosen = " (answer)" if state == (g.best_index if answer_state is None else answer_state) else ""
    se = f"SE {_fmt(it.spatial_entropy)}" if it.maps else "not mapped"
    ax.set_title(f"state {state}{chosen}\n{se}")
    return ax


def plot_spatial_entropy(ax, g, title: str | None = None, answer_state: int | None = None):
    """Spatial entropy per state; the answering state (default ``g.best_index``) starred."""
    xs = [it.index for it in g.trace]
    ys = [it.spatial_entropy for it in g.trace]
    ax.plot(xs, ys, "o-", color="#37474f", ms=4)
    b = g.best_index if answer_state is None else answer_state
    if b < len(ys) and math.isfinite(ys[b]):
        ax.plot([xs[b]], [ys[b]], "*", color="#c62828", ms=12, label="answered from")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xticks(xs)
    ax.set_xlabel("state (zoom iterations)")
    ax.set_ylabel("spatial entropy (nats)")
    ax.tick_params(labelsize=8)
    finite = [y for y in ys if math.isfinite(y)]
    top = max(finite) if finite else 1.0
    ax.set_ylim(-0.05 * max(top, 0.1), 1.15 * max(top, 0.1))
    ax.set_title(title if title is not None else "spatial entropy by state")
    return ax


def plot_iterations(g, image=None, gt_boxes=None, axes=None, zoom: bool = True, answer_state: int | None = None):
    """The per-iteration strip: one panel per state, then the spatial-entropy curve
    (``answer_state``: the state marked as answering, default ``g.best_index``)."""
    import matplotlib.pyplot as plt

    n = len(g.trace)
    if axes is None:
        fig, axes = plt.subplots(1, n + 1, figsize=(2.6 * (n + 1), 2.9), constrained_layout=True)
    axes = list(np.atleast_1d(axes))
    for s in range(n):
        plot_state(axes[s], g, s, image=image, gt_boxes=gt_boxes, zoom=zoom, answer_state=answer_state)
    plot_spatial_entropy(axes[n], g, answer_state=answer_state)
    return axes


# --------------------------------------------------------------------------- composite figures


def method_figure(g, image=None, gt_boxes=None, state: int = 0, figsize=None, answer_state: int | None = None):
    """The paper's Figure 2 for one question: (a) the image and the evidence, (b) the
    entropy-gradient map, (c) the smoothed map, (d) the elbow threshold on the sorted
    values, (e) connected components ranked by raw mass, (f) the ranked boxes; below,
    every state of the zoom loop with its spatial entropy. ``answer_state``: the state
    to mark as answering (default ``g.best_index``; e.g. ``replay_rule``'s choice when
    the trace was run for more iterations than the rule would)."""
    import matplotlib.pyplot as plt

    img = _image(g, image)
    steps = steps_for(g, state)
    n = len(g.trace)
    ncol_bottom = n + 1
    fig = plt.figure(figsize=figsize or (max(15.0, 2.6 * ncol_bottom), 6.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.05])
    ax = top.subplots(1, 6)
    show_image(ax[0], img, title=_wrap(f"(a) {g.question}"))
    if gt_boxes:
        draw_evidence(ax[0], gt_boxes)
    plot_map(ax[1], g, img, state=state, boxes=False, title="(b) entropy-gradient map", interpolation="nearest")
    asp = cell_aspect(g, state, 0 if state == 0 else 1)
    plot_grid(ax[2], steps.smoothed, title=f"(c) smoothed (sigma = {steps.sigma:g})", aspect=asp)
    plot_elbow(ax[3], steps, title=f"(d) {steps.threshold_name} threshold")
    plot_components(ax[4], steps, title=f"(e) components ({len(steps.regions)}), top {min(steps.k, len(steps.regions))}",
                    aspect=asp)
    plot_ranked_boxes(ax[5], g, img, state=state, gt_boxes=gt_boxes, title="(f) ranked boxes")
    bx = bottom.subplots(1, ncol_bottom)
    a_state = g.best_index if answer_state is None else int(answer_state)
    plot_iterations(g, img, gt_boxes=gt_boxes, axes=bx, answer_state=a_state)
    ans = g.trace[a_state].answer if g.trace[a_state].answer is not None else (g.answer if a_state == g.best_index else "?")
    bottom.suptitle(f"zoom loop, {n - 1} iteration(s): answer {ans!r} from state {a_state}", fontsize=9)
    return fig


def quickstart_figure(g, image=None, before: str | None = None, gt_boxes=None, max_crops: int = 3):
    """Before / after for one question: the image (with the evidence) and the base answer,
    the map with EGG's boxes and its answer, and the crops the answer used."""
    import matplotlib.pyplot as plt

    img = _image(g, image)
    boxes = list(g.crops) if g.crops else list(g.boxes)
    nc = max(1, min(max_crops, len(boxes)))
    fig, ax = plt.subplots(1, 2 + nc, figsize=(3.6 * (2 + nc), 3.8), layout="constrained",
                           gridspec_kw={"width_ratios": [1.4, 1.4] + [1.0] * nc})
    show_image(ax[0], img, title=_wrap(f"{g.question}\nbase answer: {before!r}" if before is not None else g.question))
    if gt_boxes:
        draw_evidence(ax[0], gt_boxes)
    plot_map(ax[1], g, img, state=0, boxes=False, title=f"map + EGG boxes\nEGG answer: {g.answer!r}")
    draw_boxes(ax[1], g.boxes, labels=[f"#{i + 1}" for i in range(len(g.boxes))])
    if gt_boxes:
        draw_evidence(ax[1], gt_boxes, label=False)
    used = "crops the answer used" if g.crops else "proposed crops (answer used the original)"
    plot_crops(ax[2:], img, boxes[:nc])
    fig.suptitle(used, x=0.99, ha="right", fontsize=8)
    return fig


def explorer_figure(g, image=None, gt_boxes=None, before: str | None = None, max_crops: int = 3):
    """The explorer's picture: map + boxes, smoothed map, threshold, components (top row);
    the crops the answer used and the spatial entropy per state (bottom row)."""
    import matplotlib.pyplot as plt

    img = _image(g, image)
    fig = plt.figure(figsize=(13.0, 6.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 0.9])
    ax = top.subplots(1, 4, gridspec_kw={"width_ratios": [1.5, 1, 1.2, 1]})
    after = f"EGG: {g.answer!r}" + (f"   base: {before!r}" if before is not None else "")
    plot_map(ax[0], g, img, state=0, boxes=False, title=_wrap(f"{g.question}\n{after}"))
    draw_boxes(ax[0], g.boxes, labels=[f"#{i + 1}" for i in range(len(g.boxes))])
    if gt_boxes:
        draw_evidence(ax[0], gt_boxes, label=False)
    if g.trace and g.trace[0].maps:
        steps = steps_for(g, 0)
        asp = cell_aspect(g, 0, 0)
        plot_grid(ax[1], steps.smoothed, title=f"smoothed (sigma = {steps.sigma:g})", aspect=asp)
        plot_elbow(ax[2], steps)
        plot_components(ax[3], steps, aspect=asp)
    boxes = list(g.crops) if g.crops else list(g.boxes)
    nc = max(1, min(max_crops, len(boxes)))
    bx = bottom.subplots(1, nc + 1, gridspec_kw={"width_ratios": [1.0] * nc + [1.3]})
    plot_crops(bx[:nc], img, boxes[:nc])
    plot_spatial_entropy(bx[nc], g)
    return fig


def _wrap(text: str, width: int = 42) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in str(text).split("\n"))


__all__ = ["evidence_iou", "replay_rule", "describe",
           "RegionSteps", "region_steps", "steps_for", "cell_aspect", "mass_shares", "searched_grids", "show_image", "overlay_map", "draw_boxes", "draw_evidence",
           "plot_grid", "plot_map", "plot_elbow", "plot_components", "plot_ranked_boxes", "plot_crops",
           "plot_state", "plot_spatial_entropy", "plot_iterations", "method_figure", "quickstart_figure",
           "explorer_figure"]
