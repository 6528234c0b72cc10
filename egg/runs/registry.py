"""The one method registry: every method the runs, the CLI and the cost benchmark call,
by name, with its options and their defaults."""
from __future__ import annotations

import hashlib
import inspect
import math
from typing import Callable, Mapping


from ..adapters import Cost, as_adapter
from ..method.checks import with_defaults
from ..method.result import jsonable


FE_FORWARD = 1.0
FE_BACKWARD = 2.0

#: (name, lower, upper) bounds on the evidence fraction (gt area / image area).
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 0.003),
    ("medium", 0.003, 0.01),
    ("large", 0.01, math.inf),
)
#: |delta| below this many points counts as "about neutral" on the control family (C1).
NEUTRAL_BAND = 2.0
N_BOOT = 2000
BOOT_SEED = 0

VICROP_METHODS = ["vicrop-rel-att", "vicrop-grad-att", "vicrop-pure-grad"]
MAIN_METHODS = ["base", *VICROP_METHODS, "egg", "random", "oracle"]
NEEDS_BOXES = ("random", "oracle")  # bounds built from ground-truth boxes: skipped where an item has none





def _counter(vlm) -> Cost:
    return as_adapter(vlm).counter


def _base(vlm, item, *, max_new_tokens: int = 8):
    """The model's own answer from the original image alone, as a Grounding (no boxes)."""
    import time

    from ..api import answer
    from ..method.result import Grounding

    c0, t0 = _counter(vlm).copy(), time.perf_counter()
    ans = answer(vlm, item.image, item.question, max_new_tokens=max_new_tokens)
    cost = _counter(vlm).copy() - c0
    cost.wall_time = time.perf_counter() - t0
    return Grounding(answer=ans, boxes=[], trace=[], cost=cost, best_index=0, method="base",
                     question=item.question, image_size=tuple(item.image.size),
                     params={"max_new_tokens": max_new_tokens})


def _egg(vlm, item, **opts):
    from ..method.zoom import ground

    return ground(vlm, item.image, item.question, **opts)


def _egg_batch(vlm, items, **opts):
    from ..method.batch import ground_batch

    return ground_batch(vlm, [it.image for it in items], [it.question for it in items], batch_size=len(items),
                        **opts)


def _make_vicrop(variant: str):
    def _vicrop(vlm, item, *, layer=None, window_sizes=None, max_new_tokens: int = 8):
        from ..baselines import vicrop

        return vicrop(vlm, item.image, item.question, variant=variant, layer=layer,
                      window_sizes=window_sizes, max_new_tokens=max_new_tokens)

    _vicrop.__name__ = f"vicrop_{variant.replace('-', '_')}"
    _vicrop.__doc__ = f"ViCrop ({variant}): one crop from the model's map, appended as a second image."
    return _vicrop


def _make_vicrop_batch(variant: str):
    def _vicrop_batch(vlm, items, *, layer=None, window_sizes=None, max_new_tokens: int = 8):
        from ..baselines.vicrop import vicrop_batch

        return vicrop_batch(vlm, [it.image for it in items], [it.question for it in items], variant=variant,
                            layer=layer, window_sizes=window_sizes, max_new_tokens=max_new_tokens,
                            batch_size=len(items))

    return _vicrop_batch


def item_seed(item, offset: int = 0) -> int:
    """A per-item seed from (family, split, index, seed) (+ ``offset``), stable across runs."""
    m = item.meta
    s = f"{item.family}/{m.get('split')}/{m.get('index')}/{m.get('seed')}/{int(offset)}"
    return int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)


def _random(vlm, item, *, seed_offset: int = 0, max_new_tokens: int = 8):
    """Crops of the ground-truth boxes' sizes at random positions, seeded per item."""
    from ..baselines import random_box

    return random_box(vlm, item.image, item.question, size_like=list(item.boxes),
                      seed=item_seed(item, seed_offset), max_new_tokens=max_new_tokens)


def _oracle(vlm, item, *, max_ratio: float = 3.0, max_new_tokens: int = 8):
    from ..baselines import oracle

    return oracle(vlm, item.image, item.question, list(item.boxes), max_ratio=max_ratio,
                  max_new_tokens=max_new_tokens)


#: name -> callable(vlm, item, **options) -> Grounding.
METHODS: dict[str, Callable] = {
    "base": _base,
    "vicrop-rel-att": _make_vicrop("rel-att"),
    "vicrop-grad-att": _make_vicrop("grad-att"),
    "vicrop-pure-grad": _make_vicrop("pure-grad"),
    "egg": _egg,
    "random": _random,
    "oracle": _oracle,
}


#: name -> callable(vlm, items, **options) -> one Grounding per item, equal to METHODS[name]'s.
BATCHED: dict[str, Callable] = {"egg": _egg_batch,
                                 **{f"vicrop-{v}": _make_vicrop_batch(v) for v in ("rel-att", "grad-att", "pure-grad")}}


def _method_function(method: str):
    """The function whose keyword options a method takes (egg: ``egg.ground``'s)."""
    fn = METHODS[method]
    if inspect.unwrap(fn) is _egg:
        from ..method.zoom import ground

        fn = ground
    return fn


def effective_options(method: str, options: Mapping | None = None) -> dict:
    """The method's full options: its defaults updated with ``options`` (unknown names raise),
    so {} and {"k": 2} for "egg" are the same configuration (and the same record key)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    out = with_defaults(_method_function(method), dict(options or {}), f"method {method!r}")
    return {k: jsonable(v) for k, v in sorted(out.items())}


