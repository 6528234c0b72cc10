"""What the paper's region and stopping defaults give on a *perfect* map of the evidence.

Issue #16 asks that EGG's first box cover at most 10x the evidence's area, that the spatial
entropy at state 0 be above 0 on half the items, and that the default rule zoom twice on 30%.
How far a model can get there is bounded by the regions code itself, before any model: a map
that holds exactly the evidence (each cell's share of it covered by an evidence box) or only
the evidence's peak cell still goes through the Gaussian (sigma 1.5 cells), the elbow
threshold and `clamp_aspect`. This module measures that floor on the model's own token grid
(no model pass: the adapter lays out the grid), so a target below it reads as out of reach by
training alone.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..adapters import as_adapter
from ..adapters.records import EmbeddingCache
from ..method.boxes import box_area, box_center, box_intersection, clamp_aspect, pixels_to_grid_box
from ..method.regions import extract_regions, smooth
from ..method.stopping import spatial_entropy
from ..method.batch import ground_batch
from ..method.zoom import answer_with_crops, propose_regions
from . import DETAIL_FAMILIES, core, families as all_families, load, score
from .checks import centred_crop, gap_recovered

#: the two perfect maps: each cell's covered share of the evidence, and its single best cell
IDEAL_MAPS = ("evidence", "peak")


def evidence_map(boxes, shape: tuple[int, int], footprint) -> np.ndarray:
    """Each cell's covered share (0-1) of a grid of `shape` (rows, cols) over the pixel box
    `footprint`, summed over `boxes`: the map of a model that attends to the evidence alone."""
    rows, cols = shape
    out = np.zeros(shape)
    for b in boxes:
        c0, r0, c1, r1 = pixels_to_grid_box(b, shape, footprint)
        wx = np.clip(np.minimum(np.arange(1, cols + 1), c1) - np.maximum(np.arange(cols), c0), 0, None)
        wy = np.clip(np.minimum(np.arange(1, rows + 1), r1) - np.maximum(np.arange(rows), r0), 0, None)
        out += wy[:, None] * wx[None, :]
    return out


def peak_map(m: np.ndarray) -> np.ndarray:
    """One cell, the first with the largest value of `m`: the sharpest map there is."""
    out = np.zeros_like(m)
    out[np.unravel_index(int(np.argmax(m)), m.shape)] = 1.0
    return out


def perfect_proposals(adapter, item, cache=None, **region_kw) -> tuple[np.ndarray, dict]:
    """The evidence map of `item` on the adapter's grid for its full view, and per perfect map
    (`IDEAL_MAPS`) that map with the boxes `propose_regions` makes of it (in image pixels)."""
    prep = adapter.prepare([item.image], item.question, cache=cache)
    grid = prep.grids[0]
    ev = evidence_map(item.boxes, grid.shape, grid.footprint)
    return ev, {name: (m, propose_regions(adapter, prep, [m], [], item.image.size, [0], **region_kw)[0])
                for name, m in zip(IDEAL_MAPS, (ev, peak_map(ev)))}


def ideal_regions(vlm, items, sigma: float = 1.5, threshold="elbow", k: int = 2,
                  max_ratio: float = 3.0) -> pd.DataFrame:
    """One row per item and perfect map: the evidence's cells, the first proposed box's area
    over the evidence's (as `checks.method_fields` measures EGG's) and the map's spatial
    entropy, with `egg.ground`'s defaults for the region arguments."""
    adapter = as_adapter(vlm)
    rows = []
    for it in items:
        ev, proposals = perfect_proposals(adapter, it, sigma=sigma, threshold=threshold, k=k, max_ratio=max_ratio)
        evidence_area = float(np.mean([box_area(b) for b in it.boxes]))
        for name, (m, boxes) in proposals.items():
            rows.append({"family": it.family, "ideal": name, "evidence_cells": float(ev.sum()),
                         "box_ratio": box_area(boxes[0]) / evidence_area,
                         "box_image_share": box_area(boxes[0]) / (it.image.size[0] * it.image.size[1]),
                         "spatial_entropy": spatial_entropy(smooth(m, sigma), threshold=threshold)})
    return pd.DataFrame(rows)


def ideal_answers(vlm, items) -> pd.DataFrame:
    """Per item, the answer's score from the full view (`base`), with the evidence boxes appended
    (`oracle`), and with the boxes each perfect map proposes appended (one column per
    `IDEAL_MAPS`): EGG's first zoom had its map been perfect, at the paper's defaults. Such a
    map has one component (spatial entropy 0), so the default rule stops after this zoom."""
    adapter = as_adapter(vlm)
    rows = []
    for it in items:
        cache = EmbeddingCache()  # the full view is encoded once for all four answers
        ask = lambda boxes: score(it.family, answer_with_crops(adapter, it.image, it.question, boxes, cache=cache), it)
        row = {"family": it.family, "base": ask([]),
               "oracle": ask([clamp_aspect(b, it.image.size, min_side=adapter.min_crop_side) for b in it.boxes])}
        _, proposals = perfect_proposals(adapter, it, cache=cache)
        row.update({name: ask(boxes) for name, (_, boxes) in proposals.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def first_zoom_reading(vlm, items) -> pd.DataFrame:
    """EGG's first zoom taken apart, per single-evidence item: the score of `ground`'s answer
    (`egg`), of the full view with its state-0 boxes appended (`boxes`), with only the first
    (`first`), with that box moved so the evidence is at its centre, same width and height
    (`centred`), and with the perfect map's boxes (`perfect`); and the first box's area over
    the evidence's (`ratio`), whether it holds the whole evidence (`holds`), and how far its
    centre is from the evidence's, in box sides (`offset`, the box's geometric-mean side).
    Where `centred` reads and `first` does not, the map found the evidence and the reader lost it."""
    adapter = as_adapter(vlm)
    rows = []
    for it in items:
        if len(it.boxes) != 1:
            continue
        ev = tuple(it.boxes[0])
        cache = EmbeddingCache()  # `ground`'s encodings of the full view serve the four answers too
        ask = lambda boxes: score(it.family, answer_with_crops(adapter, it.image, it.question, boxes, cache=cache), it)
        g = ground_batch(adapter, [it.image], [it.question], caches=[cache])[0]  # `ground` with this cache
        boxes = g.trace[0].boxes
        first = boxes[0]
        centred = clamp_aspect(centred_crop(ev, first[2] - first[0], first[3] - first[1]), it.image.size,
                               min_side=adapter.min_crop_side)
        side = float(np.sqrt(box_area(first)))
        rows.append({"family": it.family, "n_boxes": len(boxes), "egg": score(it.family, g.answer, it),
                     "boxes": ask(boxes), "first": ask([first]), "centred": ask([centred]),
                     "perfect": ask(perfect_proposals(adapter, it, cache=cache)[1]["evidence"][1]),
                     "ratio": box_area(first) / box_area(ev),
                     "holds": box_area(box_intersection(first, ev)) >= box_area(ev) * (1 - 1e-9),
                     "offset": float(np.hypot(*np.subtract(box_center(first), box_center(ev)))) / side})
    return pd.DataFrame(rows)


def answer_ceiling(vlm, families=None, n: int = 100, split: str = "test", seed: int = 0,
                   geometry: str | None = None, n_boot: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`ideal_answers` on the detail families' items: accuracy (%) per family, and per perfect
    map the share of the oracle gap it recovers pooled, with its 95% bootstrap interval
    (`checks.gap_recovered`, as EGG's is reported). What EGG at the paper's defaults could
    recover with a perfect map, on this model and geometry."""
    geometry = geometry or core.geometry_for(vlm)
    fams = [f for f in (families or DETAIL_FAMILIES) if f in DETAIL_FAMILIES]
    df = ideal_answers(vlm, [it for f in fams for it in load(f, split, n, seed, geometry=geometry)])
    table = (100 * df.groupby("family", sort=False)[["base", "oracle", *IDEAL_MAPS]].mean()).assign(
        n=df.groupby("family", sort=False).size())
    shares = [(m, len(df), *(100 * v for v in gap_recovered(df.rename(columns={m: "egg"}), n_boot, seed)))
              for m in IDEAL_MAPS]
    return table, pd.DataFrame(shares, columns=["ideal", "n", "gap_share", "lo", "hi"])


def region_floor(vlm, families=None, n: int = 100, split: str = "test", seed: int = 0,
                 geometry: str | None = None) -> pd.DataFrame:
    """Per family and perfect map: n, the evidence's median cells, the first box's median area
    ratio and the share of maps with spatial entropy above 0 (items drawn as `checks.measure`
    draws them)."""
    geometry = geometry or core.geometry_for(vlm)
    # one family's items at a time: 2100 canvases at once held some 6 GB
    items = (it for fam in (families or all_families()) for it in load(fam, split, n, seed, geometry=geometry))
    df = ideal_regions(vlm, items)
    return (df.assign(entropy_above_0=df.spatial_entropy > 0)
              .groupby(["family", "ideal"], sort=False)
              .agg(n=("box_ratio", "size"), evidence_cells=("evidence_cells", "median"),
                   box_ratio_median=("box_ratio", "median"),
                   box_image_share=("box_image_share", "median"), entropy_above_0=("entropy_above_0", "mean"))
              .reset_index())


def square_floor(sides=(1, 1.5, 2, 3, 4, 6), grid: tuple[int, int] = (24, 24), trials: int = 200,
                 seed: int = 0, sigma: float = 1.5, threshold="elbow") -> pd.DataFrame:
    """The first region's median area over a square evidence's, for squares of `sides` grid
    cells at random sub-cell positions on a perfect map: at which evidence size the defaults
    can give a box within 10x, whatever the benchmark."""
    rng = np.random.default_rng(seed)
    rows, cols = grid
    out = []
    for s in sides:
        ratios = []
        for _ in range(trials):
            x0, y0 = rng.uniform(1, cols - 1 - s), rng.uniform(1, rows - 1 - s)
            m = evidence_map([(x0, y0, x0 + s, y0 + s)], grid, (0, 0, cols, rows))
            c0, r0, c1, r1 = extract_regions(m, sigma=sigma, threshold=threshold, k=1)[0].box
            ratios.append((c1 - c0) * (r1 - r0) / s ** 2)
        out.append({"side_cells": s, "trials": trials, "box_ratio_median": float(np.median(ratios))})
    return pd.DataFrame(out)


__all__ = ["IDEAL_MAPS", "evidence_map", "peak_map", "perfect_proposals", "ideal_regions", "ideal_answers",
           "first_zoom_reading", "answer_ceiling", "region_floor", "square_floor"]
