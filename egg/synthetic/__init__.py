"""The procedural evidence benchmark: seven families, one per benchmark of the paper.

>>> from egg import bench
>>> items = bench.load("text", split="test", n=10)
>>> bench.score("text", "cat", items[0])
"""
from __future__ import annotations

import copy
import dataclasses
import zlib
from collections import OrderedDict
from importlib import import_module

from PIL import Image

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


#: Bytes of compressed pixels `load` keeps of the items it drew, the oldest dropped first (0: none).
#: Notebook 09 draws its 2100 items twice (the testbed, then the perfect maps) at about 31 ms each;
#: a kept one is restored in about 5 ms from about 60 KB (flat colours compress some 50x).
KEEP_BYTES = 256 * 2**20


class _Kept:
    """The items `load` drew, as (the item without its image, mode, size, zlib'd pixels) by key;
    past `KEEP_BYTES` (read at each put) the oldest are dropped."""

    def __init__(self):
        self.items: OrderedDict = OrderedDict()
        self.bytes = 0  # the compressed pixels held, so that a put trims in O(1)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key) -> Item | None:
        hit = self.items.get(key)
        if hit is None:
            return None
        self.items.move_to_end(key)
        bare, mode, size, pixels = hit
        return dataclasses.replace(copy.deepcopy(bare), image=Image.frombytes(mode, size, zlib.decompress(pixels)))

    def put(self, key, it: Item) -> None:
        if KEEP_BYTES <= 0:
            return
        img = it.image
        self.items[key] = entry = (copy.deepcopy(dataclasses.replace(it, image=None)), img.mode, img.size,
                                   zlib.compress(img.tobytes(), 1))
        self.bytes += len(entry[3])
        while len(self.items) > 1 and self.bytes > KEEP_BYTES:
            self.bytes -= len(self.items.popitem(last=False)[1][3])


_kept = _Kept()


def _kept_item(family: str, split: str, index: int, seed: int, geometry: str | Geometry) -> Item:
    """`item(...)`, drawn once per process while `KEEP_BYTES` holds it; each call gets its own copy."""
    from .core import geometry as _geometry

    key = (family, split, int(index), int(seed), _geometry(geometry))
    it = _kept.get(key)
    if it is None:
        it = item(family, split, index, seed, geometry)
        _kept.put(key, it)
    return it


def load(family: str, split: str = "test", n: int | None = None, seed: int = 0, start: int = 0,
         geometry: str | Geometry = "v1") -> list[Item]:
    """Items `start .. start+n-1` of a family's split (n=None: the default 300); items this process
    drew before come from `KEEP_BYTES`' store, the same pixels and facts."""
    n = 300 if n is None else n
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return [_kept_item(family, split, i, seed, geometry) for i in range(start, start + n)]


def metric_name(family: str) -> str:
    return _module(family).METRIC


def score(family: str, prediction: str, item: Item) -> float:
    """Per-item score in [0, 1] with the family's metric (POPE: per-item accuracy)."""
    from .. import metrics

    name = metric_name(family)
    return metrics.item_score("exact_match" if name == "pope" else name, prediction, item)


__all__ = ["Box", "Item", "SPLITS", "Geometry", "GEOMETRIES", "families", "geometry", "geometry_for", "item", "load", "score",
           "metric_name", "DETAIL_FAMILIES", "CONTROL_FAMILY", "FAMILIES"]
