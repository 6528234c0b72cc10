"""The EGG loop: map -> regions -> crops -> map over original + crops -> ... (docs/method.md sections 2-4).

>>> g = ground(vlm, image, "what word is on the red sign?")
>>> g.answer, g.boxes[0]        # answer from original + the chosen crops; best box first
>>> g.trace[0].maps[0]          # the entropy-gradient map over the original image
>>> g.plot()

State i of the loop is the prompt "original + the crops of iteration i" (state 0: the
original alone). At each state the entropy-gradient map is computed over the whole
prompt; regions are extracted in the grids of the *newest* images only (state 0: the
original; state i >= 1: the crops), ranked together by raw relevance mass (one backward
pass, one scale), and the top k become the next state's crops -- replacing the previous
ones; a region found in a crop is a further zoom (its box is composed back to original
pixels, and the crop is always cut from the original image at full resolution). The
stopping rule (``egg.stopping``) sees one ``IterationStats`` per state and picks the state
whose crops the answer uses (``best_index``; 0 = the original alone).

Cost: each state costs one vision encoding per *new* image (visual embeddings are cached
across iterations unless ``cache_visual=False``, which recomputes every image at every
state as the authors' release does), one forward and one backward pass (plus
``token_index - 1`` forward passes for the greedy prefix) -- except a final state whose
map the stopping rule cannot use, which is not mapped (see ``Iteration.maps``). The answer is generated once,
for the chosen state, unless ``answer_every=True`` (one generation per state, for
analysis). When the chosen state is the last mapped one, generation continues the key/value
cache of that state's relevance pass instead of running the prompt again (the same tokens;
only the last state's cache is kept, so memory holds one prompt's cache at most).

Documented fallbacks
--------------------
* Degenerate map (gradient zero or non-finite on every searched token, e.g. an objective
  that ignores the image): the loop stops at that state and never chooses it; its
  ``Iteration.degenerate`` is True and its proposal is the whole searched image
  (``extract_regions``' flat-map fallback). At state 0 this answers from the original
  alone, with the whole image as the box.
* Converged: when a state (>= 1) proposes exactly its own crops again, the next state
  would repeat it bit for bit; the loop stops there (every rule would choose the same
  crops). ``params["converged"]`` records it.
* Crops smaller than one patch of the vision tower's input (``adapter.min_crop_side``
  pixels of the original) are grown about their centre to that side (clipped to the
  image); ``clamp_aspect`` also rounds boxes outwards to whole pixels.
"""
from __future__ import annotations

import time
from typing import Sequence, Union

import numpy as np

from ..adapters import EmbeddingCache, VLMAdapter, as_adapter
from .boxes import Box
from ..images import check_question, load_image
from .objectives import Objective, objective_name
from .boxes import as_box, box_area, box_intersection, clamp_aspect, compose
from .regions import extract_regions, rank_by_mass, smooth
from .relevance import relevance
from . import checks
from .checks import choice
from .result import Grounding, Iteration
from .stopping import RULES, FixedRule, IterationStats, ResolutionRule, StoppingRule, make_rule, spatial_entropy


# --------------------------------------------------------------------------- helpers


def make_stopping(stopping: Union[str, StoppingRule] = "spatial-entropy", max_iterations: int = 4,
                  fixed_n: int | None = None, min_crop_area: float | None = None) -> StoppingRule:
    """A stopping rule from ``ground``'s arguments (a rule instance passes through).
    ``max_iterations`` caps every named rule; a fixed ``fixed_n`` above it is an error."""
    if isinstance(stopping, StoppingRule):
        return stopping
    choice("stopping", stopping, RULES)
    cap = checks.integer("max_iterations", max_iterations, lo=0)
    if stopping == "fixed":
        n = 1 if fixed_n is None else checks.integer("fixed_n", fixed_n, lo=0)
        if n > cap:
            raise ValueError(f"fixed_n={n} is above max_iterations={cap}, the cap on zoom iterations; "
                             f"pass max_iterations={n} as well")
        return FixedRule(n=n)
    if stopping == "resolution":
        kw = {} if min_crop_area is None else {"min_area": checks.number("min_crop_area", min_crop_area, lo=0)}
        return ResolutionRule(cap=cap, **kw)
    return make_rule(stopping, cap=cap)


def check_options(adapter: VLMAdapter, *, objective, token_index, num_layers, sigma, threshold, k, max_ratio,
                  max_new_tokens) -> dict:
    """``ground``'s map, region and answer options, checked before any model pass; returns
    them normalised (ints as int, numbers as float)."""
    from .objectives import OBJECTIVES
    from .regions import THRESHOLDS

    L = adapter.num_layers
    return dict(
        objective=choice("objective", objective, OBJECTIVES, allow_callable=True),
        token_index=checks.integer("token_index", token_index, lo=1),
        num_layers=None if num_layers is None else checks.integer("num_layers", num_layers, lo=1, hi=L),
        sigma=checks.number("sigma", sigma, lo=0),
        threshold=choice("threshold", threshold, THRESHOLDS, allow_callable=True),
        k=checks.integer("k", k, lo=1),
        max_ratio=checks.number("max_ratio", max_ratio, lo=1),
        max_new_tokens=checks.integer("max_new_tokens", max_new_tokens, lo=1),
    )


def _state_spatial_entropy(maps: Sequence[np.ndarray], sigma: float, threshold) -> float:
    """Spatial entropy of the searched maps: one map -> its value; several (one per crop)
    -> their mean weighted by each map's total raw relevance (plain mean if all zero)."""
    values = [spatial_entropy(smooth(m, sigma), threshold=threshold, smoothed=True) for m in maps]
    weights = np.array([float(np.nansum(np.abs(m))) for m in maps])
    if len(values) == 1:
        return float(values[0])
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        return float(np.mean(values))
    return float(np.dot(weights / weights.sum(), values))


def propose_regions(
    adapter: VLMAdapter,
    prepared,
    maps: Sequence[np.ndarray],
    crops: Sequence[Box],
    image_size: tuple[int, int],
    search: Sequence[int],
    *,
    sigma: float = 1.5,
    threshold="elbow",
    k: int = 2,
    max_ratio: float = 3.0,
) -> tuple[list[Box], list[float]]:
    """Top-k regions over the grids ``search`` (indices into ``prepared.grids``), as
    croppable boxes in ORIGINAL pixels, ranked by raw mass. Grids with an all-zero map
    propose nothing; if every searched map is zero the flat-map fallback (whole grid) of
    the first searched grid is used. A box that mostly lies inside a better-ranked one is
    the same region seen in another grid and is skipped."""
    cands: list[tuple[float, int, Box]] = []
    live = [gi for gi in search if np.any(np.asarray(maps[gi]) > 0)]
    for gi in live or list(search)[:1]:
        grid = prepared.grids[gi]
        for r in extract_regions(maps[gi], sigma=sigma, threshold=threshold, k=k):
            box = adapter.grid_box_to_pixels(grid, r.box)
            if grid.image_index > 0:
                box = compose(box, crops[grid.image_index - 1])
            box = clamp_aspect(box, image_size, max_ratio=max_ratio, min_side=adapter.min_crop_side)
            cands.append((float(r.mass), len(cands), box))
    cands = rank_by_mass(cands, [c[0] for c in cands])
    kept: list[tuple[float, int, Box]] = []
    for c in cands:  # grids that overlap (a base view and its tiles) find the same spot twice
        if all(_overlap(c[2], o[2]) < DUPLICATE_OVERLAP for o in kept):
            kept.append(c)
        if len(kept) == k:
            break
    return [c[2] for c in kept], [c[0] for c in kept]


#: Two proposed boxes are the same region when this fraction of the smaller one lies in the other.
DUPLICATE_OVERLAP = 0.8


def _overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area."""
    small = min(box_area(a), box_area(b))
    return box_area(box_intersection(a, b)) / small if small > 0 else 0.0


def map_boxes(prepared, crops: Sequence[Box]) -> list[Box]:
    """For each grid, the original-image box its footprint covers."""
    out = []
    for g in prepared.grids:
        fp = g.footprint
        out.append(as_box(compose(fp, crops[g.image_index - 1]) if g.image_index > 0 else fp))
    return out


def cut(image, boxes: Sequence[Box], cache: EmbeddingCache | None = None) -> list:
    """Crops of ``image`` at integer-pixel ``boxes``; with the call's ``cache`` the same box
    gives the same crop object, whose processed pixels the cache then holds."""
    if cache is None:
        return [image.crop(tuple(int(round(v)) for v in b)) for b in boxes]
    return [cache.pixels.crop(image, tuple(int(round(v)) for v in b)) for b in boxes]


def answer_with_crops(adapter: VLMAdapter, image, question: str, crops: Sequence[Box],
                      max_new_tokens: int = 8, cache: EmbeddingCache | None = None) -> str:
    """Generate the answer from the original + crops (boxes in original pixels)."""
    prep = adapter.prepare([image] + cut(image, crops, cache), question, cache=cache)
    return adapter.generate(prep, max_new_tokens=max_new_tokens, cache=cache)


# --------------------------------------------------------------------------- the loop


def ground(
    vlm,
    image,
    question: str,
    *,
    objective: Union[str, Objective] = "entropy",
    token_index: int = 1,
    num_layers: int | None = None,
    sigma: float = 1.5,
    threshold="elbow",
    k: int = 2,
    max_ratio: float = 3.0,
    stopping: Union[str, StoppingRule] = "spatial-entropy",
    max_iterations: int = 4,
    fixed_n: int | None = None,
    min_crop_area: float | None = None,
    max_new_tokens: int = 8,
    answer_every: bool = False,
    cache_visual: bool = True,
) -> Grounding:
    """Entropy-Gradient Grounding: find the evidence for ``question`` and answer with it.

    vlm: a VLM (``egg.load_model``) or a VLMAdapter.
    image: PIL image, numpy array or path (converted to RGB, see ``egg.images``).
    objective, token_index, num_layers: the map (see ``egg.relevance.relevance``).
    sigma, threshold, k, max_ratio: regions (see ``egg.regions``); k crops per state.
    stopping: "spatial-entropy" (paper), "confidence", "fixed" (``fixed_n`` iterations,
        default 1), "resolution" (stop when a crop is below ``min_crop_area`` px; default
        the rule's), or a ``StoppingRule``; ``max_iterations`` caps the zoom iterations.
    max_new_tokens: answer length.
    answer_every: also generate the answer at every state (stored in the trace).
    cache_visual: reuse visual embeddings across states (False = re-encode every image
        every state, as the authors' release does; same result, more cost).
    Deterministic: the same call gives the same answer and boxes. Arguments are checked
    before the first model pass.

    The loop reads top to bottom here; one question's state is a ``Search``, which
    ``egg.ground_batch`` drives for several questions at once.
    """
    adapter = as_adapter(vlm)
    search = Search(adapter, image, question, objective=objective, token_index=token_index, num_layers=num_layers,
                    sigma=sigma, threshold=threshold, k=k, max_ratio=max_ratio, stopping=stopping,
                    max_iterations=max_iterations, fixed_n=fixed_n, min_crop_area=min_crop_area,
                    max_new_tokens=max_new_tokens, answer_every=answer_every, cache_visual=cache_visual)
    counter, o = adapter.counter, search.o
    total0, t_start = counter.copy(), time.perf_counter()
    while not search.done:
        c0, t0 = counter.copy(), time.perf_counter()
        prep = search.next_prompt()
        if prep is not None:  # the rule needs this state's map
            search.take(prep, relevance(adapter, prep, o["objective"], o["token_index"], o["num_layers"],
                                        cache=search.cache, keep_kv=not answer_every))
        cost = counter.copy() - c0
        cost.wall_time = time.perf_counter() - t0
        search.close_state(cost)
    prep, kept = search.answer_prompt()
    if prep is not None:
        c0, t0 = counter.copy(), time.perf_counter()
        ids = adapter.generate_ids(prep, o["max_new_tokens"], cache=search.cache, kv=kept)
        extra = counter.copy() - c0
        extra.wall_time = time.perf_counter() - t0
        search.set_answer(adapter.decode(ids), extra)
    cost = counter.copy() - total0
    cost.wall_time = time.perf_counter() - t_start
    return search.grounding(cost)


class Search:
    """One question's way through the EGG loop, one state at a time.

    ``ground`` drives one; ``ground_batch`` drives several at once, batching their model
    passes. The driver asks for the next state's prompt (``next_prompt``; None when the
    rule needs no map there), hands back its relevance (``take``) and the state's cost
    (``close_state``) until ``done``; then generates the answer for ``answer_prompt`` (if
    the chosen state has none yet) and builds the result (``grounding``)."""

    def __init__(self, adapter: VLMAdapter, image, question: str, *, objective, token_index, num_layers, sigma,
                 threshold, k, max_ratio, stopping, max_iterations, fixed_n, min_crop_area, max_new_tokens,
                 answer_every, cache_visual, cache: EmbeddingCache | None = None):
        self.adapter = adapter
        self.o = check_options(adapter, objective=objective, token_index=token_index, num_layers=num_layers,
                               sigma=sigma, threshold=threshold, k=k, max_ratio=max_ratio,
                               max_new_tokens=max_new_tokens)
        self.rule = make_stopping(stopping, max_iterations, fixed_n, min_crop_area)
        self.stopping_arg, self.max_iterations = stopping, max_iterations
        self.img = load_image(image)
        self.q = check_question(question)
        self.answer_every, self.cache_visual = answer_every, cache_visual
        # `cache`: one shared with other calls on the same image (their encodings are reused)
        self.cache = (cache if cache is not None else EmbeddingCache()) if cache_visual else None
        self.trace: list[Iteration] = []
        self.history: list[IterationStats] = []
        self.crops: list[Box] = []
        self.degenerate_stop = self.converged = self.done = False
        # (state, prompt) of the last prompted state; an earlier one, chosen for the answer, is prepared
        # again (its pixels are in `cache.pixels`; holding every state's prompt would hold them all)
        self._last_prompt: tuple[int, object] | None = None
        self.kv: dict[int, object] = {}  # state -> key/value cache of its relevance pass; the last mapped state only
        self._it: Iteration | None = None

    def next_prompt(self):
        """The prepared prompt of the next state if the rule needs its map, else None (the
        state is then recorded unmapped)."""
        state = len(self.trace)
        area = min(((b[2] - b[0]) * (b[3] - b[1]) for b in self.crops), default=float("inf"))
        self._it = Iteration(index=state, crops=list(self.crops))
        self._it.min_crop_area = area
        if not self.rule.needs_map(state, area):
            return None
        return self._prompt(state, self.crops)

    def _prompt(self, state: int, crops):
        """The state's prompt (the original and its crops)."""
        if self._last_prompt is None or self._last_prompt[0] != state:
            prep = self.adapter.prepare([self.img] + cut(self.img, crops, self.cache), self.q, cache=self.cache)
            self._last_prompt = (state, prep)
        return self._last_prompt[1]

    def take(self, prep, rel) -> None:
        """The state's map (a ``RelevanceResult`` over ``prep``): regions and statistics."""
        state, o = self._it.index, self.o
        it = _iteration(self.adapter, prep, rel, self.crops, state, o)
        it.min_crop_area = self._it.min_crop_area
        self._it = it
        self.kv = {state: rel.kv} if rel.kv is not None else {}

    def close_state(self, cost) -> None:
        """Record the state (with ``cost``, plus its own answer when ``answer_every``) and
        decide whether the loop goes on."""
        it, self._it = self._it, None
        if self.answer_every:
            counter = self.adapter.counter
            c0, t0 = counter.copy(), time.perf_counter()
            it.answer = self.adapter.generate(self._prompt(it.index, self.crops), self.o["max_new_tokens"],
                                              cache=self.cache)
            extra = counter.copy() - c0
            extra.wall_time = time.perf_counter() - t0
            cost = cost + extra
        it.cost = cost
        self.trace.append(it)
        mapped = bool(it.maps)
        if not mapped or it.degenerate:
            self.degenerate_stop, self.done = mapped, True
            if not mapped:
                self.history.append(it.stats())
            return
        self.history.append(it.stats())
        if self.rule.should_stop(self.history):
            self.done = True
        elif it.index > 0 and it.boxes == self.crops:
            self.converged = self.done = True  # the next state would repeat this one exactly
        else:
            self.crops = it.boxes

    @property
    def best(self) -> int:
        return self.rule.best_index(self.history) if self.history else 0

    def answer_prompt(self):
        """(prepared prompt, kept key/value cache or None) of the chosen state when it still
        needs its answer generated; (None, None) otherwise."""
        chosen = self.trace[self.best]
        if chosen.answer is not None:
            return None, None
        return self._prompt(self.best, chosen.crops), self.kv.get(self.best)

    def set_answer(self, answer: str, cost) -> None:
        chosen = self.trace[self.best]
        chosen.answer = answer
        chosen.cost = chosen.cost + cost

    def grounding(self, cost) -> Grounding:
        best, o, rule = self.best, self.o, self.rule
        chosen = self.trace[best]
        evidence = list(chosen.crops) if best > 0 else list(self.trace[0].boxes)
        params = dict(
            objective=objective_name(o["objective"]), token_index=o["token_index"], num_layers=o["num_layers"],
            sigma=o["sigma"], threshold=o["threshold"] if isinstance(o["threshold"], str)
            else getattr(o["threshold"], "__name__", "custom"),
            k=o["k"], max_ratio=o["max_ratio"], stopping=getattr(rule, "name", str(self.stopping_arg)),
            rule=repr(rule), max_iterations=self.max_iterations, max_new_tokens=o["max_new_tokens"],
            cache_visual=self.cache_visual, degenerate_stop=self.degenerate_stop, converged=self.converged,
            model=self.adapter.describe(),
        )
        return Grounding(answer=chosen.answer, boxes=evidence, trace=self.trace, cost=cost, best_index=best,
                         method="egg", question=self.q, image_size=tuple(self.img.size), params=params,
                         image=self.img)


def _iteration(adapter: VLMAdapter, prep, rel, crops: list[Box], state: int, o: dict) -> Iteration:
    """One mapped state from its map over original + crops: the regions of the newest
    images' grids (the original's at state 0, the crops' after) and the state's statistics."""
    search = [gi for gi, g in enumerate(prep.grids) if (g.image_index == 0) == (state == 0)]
    boxes, masses = propose_regions(adapter, prep, rel.maps, crops, prep.images[0].size, search, sigma=o["sigma"],
                                    threshold=o["threshold"], k=o["k"], max_ratio=o["max_ratio"])
    return Iteration(
        index=state, crops=list(crops), maps=rel.maps, map_boxes=map_boxes(prep, crops), boxes=boxes,
        masses=masses, searched=list(search),
        spatial_entropy=_state_spatial_entropy([rel.maps[gi] for gi in search], o["sigma"], o["threshold"]),
        entropy=rel.entropy, max_prob=rel.max_prob, token=rel.token,
        degenerate=not any(np.any(rel.maps[gi] > 0) for gi in search),
    )


__all__ = ["ground", "Search", "Grounding", "Iteration", "make_stopping", "propose_regions", "answer_with_crops", "cut"]
