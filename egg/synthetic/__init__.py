"""The procedural evidence benchmark: seven families, one per benchmark of the paper.

>>> from egg import bench
>>> items = bench.load("text", split="test", n=10)
>>> bench.score("text", "cat", items[0])
"""
from __future__ import annotations

from importlib import import_module

from .core import GEOMETRIES, SPLITS, Box, Geometry, Item, geometry, geometry_for, rng_for

FAMILIES = {
    "text": "TextVQA",
    "vstar": "V* Bench",
    "doc": "DocVQA",
    "pope": "POPE",
    "info": "InfographicVQA",
    "gqa": "GQA",
    "rwqa": "RealWorldQA",
}
DETAIL_FAMILIES = ["text", "vstar", "doc", "pope", "info"]
CONTROL_FAMILY = "rwqa"


def families() -> list[str]:
    return list(FAMILIES)


def _module(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {families()}")
    return import_module(f".generators.{family}", __name__)


def item(family: str, split: str = "test", index: int = 0, seed: int = 0, geometry: str | Geometry = "v1") -> Item:
    """One item, deterministic in (family, split, index, seed, geometry); see `Geometry`."""
    from .core import geometry as _geometry

    geo = _geometry(geometry)
    it = _module(family).generate(rng_for(family, split, index, seed), geo)
    it.meta.update(split=split, index=int(index), seed=int(seed))
    if geo.name != "v1":  # v1 items keep the meta their stored records were written with
        it.meta["geometry"] = geo.name
    return it


def load(family: str, split: str = "test", n: int | None = None, seed: int = 0, start: int = 0,
         geometry: str | Geometry = "v1") -> list[Item]:
    """Items `start .. start+n-1` of a family's split (n=None: the default 300)."""
    n = 300 if n is None else n
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return [item(family, split, i, seed, geometry) for i in range(start, start + n)]


def metric_name(family: str) -> str:
    return _module(family).METRIC


def score(family: str, prediction: str, item: Item) -> float:
    """Per-item score in [0, 1] with the family's metric (POPE: per-item accuracy)."""
    from .. import metrics

    name = metric_name(family)
    return metrics.item_score("exact_match" if name == "pope" else name, prediction, item)


__all__ = ["Box", "Item", "SPLITS", "Geometry", "GEOMETRIES", "families", "geometry", "geometry_for", "item", "load", "score",
           "metric_name", "DETAIL_FAMILIES", "CONTROL_FAMILY", "FAMILIES"]
