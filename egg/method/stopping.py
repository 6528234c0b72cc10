"""Spatial entropy of a relevance map, and the zoom loop's stopping rules (docs/method.md section 4).

How the zoom loop uses a rule
-----------------------------
``history[i]`` holds the ``IterationStats`` of the state after ``i`` zoom iterations:

* ``history[0]``: the map computed over the original image alone (no crops yet);
  ``min_crop_area = inf``.
* ``history[i]`` (i >= 1): the map computed over original + the crops produced by zoom
  iteration i (crops cut using the map of state i-1); ``min_crop_area`` is the pixel area
  of the smallest of those crops (in pixels of the original image, or of the image it
  was cut from -- the loop must pick one and use it consistently with ``min_area``).

The loop::

    rule = make_rule("spatial-entropy")
    history = [stats_of(original_only)]
    while not rule.should_stop(history):
        crops = zoom(...)                       # regions of the latest map -> new crops
        history.append(stats_of(original + crops))
    keep = rule.best_index(history)             # 0 = answer from the original only;
                                                # i >= 1 = original + crops of iteration i

So ``len(history) - 1`` is the number of zoom iterations performed, ``should_stop`` is
called after every append (including the first, with ``len(history) == 1``), and
``best_index`` may point back before the last state (e.g. the state before a rise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
from scipy import ndimage

from .regions import ThresholdFn, get_threshold, smooth, tie_tolerance

# ------------------------------------------------------------------------ spatial entropy


#: Spatial entropies (nats) and probabilities closer than this are equal: a change below it
#: is float noise between machines, not a map that focused (see regions.TIE_RTOL).
TIE_ATOL = 1e-9


def _fell(before: float, after: float) -> bool:
    """Did the value fall by more than float noise? NaN never falls."""
    return after < before - TIE_ATOL


def spatial_entropy(
    grid_or_smoothed: np.ndarray,
    threshold: Union[str, ThresholdFn] = "elbow",
    smoothed: bool = True,
    sigma: float = 1.5,
    empty_value: float = 0.0,
) -> float:
    """Entropy (nats) of how the map's salient mass splits into connected components.

    S = the smoothed map (the input itself if ``smoothed``, else ``smooth(grid, sigma)``;
    NaN/inf -> 0 either way); B = relu(S - 2 mean(S)); t = threshold(B's positive values);
    components of (B > t) with 8-connectivity; p_i = mass of B in component i / mass of B
    in all components; H = -sum p_i log p_i.

    A focused map (one compact blob) gives 0, two equal blobs log 2, scattered noise many
    components and a high value -- so falling H means the zoom is homing in.

    Degenerate cases: if B has no positive value (flat map, or a diffuse map whose peak
    is below twice its mean -- dense uniform noise is such a map) there is no salient
    structure to split and ``empty_value`` (default 0.0) is returned. Caution: 0.0 reads
    as "focused" and makes ``SpatialEntropyRule`` stop; pass e.g. ``math.log(S.size)``
    to make a diffuse map read as maximally unfocused instead. If nothing is strictly
    above t (all positive B values equal), the components of (B > 0) are used instead.
    A zero-size map returns ``empty_value``.
    """
    fn = get_threshold(threshold)
    S = smooth(grid_or_smoothed, 0.0 if smoothed else sigma)
    if S.ndim != 2:
        raise ValueError(f"map must be 2-D, got shape {S.shape}")
    if S.size == 0:
        return float(empty_value)
    B = np.maximum(S - 2.0 * float(S.mean()), 0.0)
    pos = B[B > 0]
    if pos.size == 0:
        return float(empty_value)
    fg = B > fn(pos) + tie_tolerance(B)
    if not fg.any():
        fg = B > 0
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return 0.0
    masses = ndimage.sum_labels(B, labels, index=np.arange(1, n + 1))
    masses = masses[masses > 0]
    p = masses / masses.sum()
    return float(max(0.0, -np.sum(p * np.log(p))))


# ------------------------------------------------------------------------ stopping rules


@dataclass
class IterationStats:
    """What the loop records for one state (see module docstring for indexing).

    spatial_entropy: ``spatial_entropy`` of that state's map.
    max_prob: max next-token probability at the answer position (NaN = unknown,
        treated as the worst value by ``ConfidenceRule``).
    entropy: entropy of that next-token distribution (nats; informational).
    min_crop_area: pixel area of the smallest crop produced at this iteration;
        inf at iteration 0 (no crops).
    """

    spatial_entropy: float
    max_prob: float = float("nan")
    entropy: float = float("nan")
    min_crop_area: float = float("inf")


def _check_cap(cap: int) -> int:
    if int(cap) != cap or cap < 0:
        raise ValueError(f"cap must be an integer >= 0, got {cap!r}")
    return int(cap)


def _check_history(history: list[IterationStats]) -> int:
    """Number of zoom iterations done; history must hold at least the original state."""
    if len(history) == 0:
        raise ValueError("history must contain at least history[0] (the original image)")
    return len(history) - 1


class StoppingRule:
    """Interface: ``should_stop(history)`` after each append; ``best_index(history)``."""

    name = "base"
    cap: int

    def should_stop(self, history: list[IterationStats]) -> bool:
        raise NotImplementedError

    def best_index(self, history: list[IterationStats]) -> int:
        raise NotImplementedError

    def needs_map(self, state: int, min_crop_area: float) -> bool:
        """Does the rule need state ``state``'s map (one forward + backward pass) to decide
        whether to stop and which state to choose? A rule that stops there whatever the map
        says returns False, and the loop skips the pass. Default: every map is needed."""
        return True

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class SpatialEntropyRule(StoppingRule):
    """The paper's rule: refine while spatial entropy strictly decreases.

    Stops after the latest state when (a) its spatial entropy is not lower than the
    previous state's (a rise; a tie or NaN also counts, since it is no improvement),
    (b) it is zero (perfectly focused: nothing left to gain), or (c) ``cap`` zoom
    iterations have been done. ``best_index`` = the last state of the initial strictly
    decreasing run, i.e. the state before the rise (0 if the first zoom already rose).

    ``min_zooms`` (default 1) forces at least that many zoom iterations before any stop
    other than the cap, and the answer then uses at least that state's crops. The default
    follows the authors' release, which always appends the first map's crops and only then
    lets spatial entropy decide whether to refine further (inference_llava.py,
    ``run_refinement_loop``). ``min_zooms=0`` is the literal rule of docs/method.md section 4,
    under which an original-image map that is already one blob answers without crops.
    """

    name = "spatial-entropy"

    def __init__(self, cap: int = 4, min_zooms: int = 1):
        self.cap = _check_cap(cap)
        if int(min_zooms) != min_zooms or min_zooms < 0:
            raise ValueError(f"min_zooms must be an integer >= 0, got {min_zooms!r}")
        self.min_zooms = min(int(min_zooms), self.cap)

    def should_stop(self, history: list[IterationStats]) -> bool:
        n = _check_history(history)
        if n >= self.cap:
            return True
        if n < self.min_zooms:
            return False
        h = history[-1].spatial_entropy
        if h <= TIE_ATOL:
            return True
        return n >= 1 and not _fell(history[-2].spatial_entropy, h)

    def best_index(self, history: list[IterationStats]) -> int:
        n = _check_history(history)
        best = 0
        for i in range(1, n + 1):
            if _fell(history[i - 1].spatial_entropy, history[i].spatial_entropy):
                best = i
            else:
                break
        return max(best, min(self.min_zooms, n))


def _prob(s: IterationStats) -> float:
    p = s.max_prob
    return -math.inf if p is None or not math.isfinite(p) else float(p)


class ConfidenceRule(StoppingRule):
    """Stop when the max next-token probability stops (strictly) increasing, or at cap.

    ``best_index`` = the state with the highest ``max_prob`` (earliest on ties; NaN
    counts as -inf), which is the state before the plateau/drop when the loop stopped
    by this rule.
    """

    name = "confidence"

    def __init__(self, cap: int = 4):
        self.cap = _check_cap(cap)

    def should_stop(self, history: list[IterationStats]) -> bool:
        n = _check_history(history)
        if n >= self.cap:
            return True
        return n >= 1 and not _fell(-_prob(history[-2]), -_prob(history[-1]))

    def best_index(self, history: list[IterationStats]) -> int:
        _check_history(history)
        probs = np.array([_prob(s) for s in history])
        return int(np.flatnonzero(probs >= probs.max() - TIE_ATOL)[0])


class FixedRule(StoppingRule):
    """Exactly ``n`` zoom iterations; answer with the last state.

    History length is n + 1 when the loop stops; ``best_index`` = n. ``FixedRule(0)``
    computes only the map of the original image (history[0]) and answers from the
    original image alone (no crops = the base model). ``FixedRule(1)`` = one map, one
    set of crops, no re-grounding; each further n adds one re-grounding round.
    """

    name = "fixed"

    def __init__(self, n: int = 1):
        if int(n) != n or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        self.n = int(n)
        self.cap = self.n

    def should_stop(self, history: list[IterationStats]) -> bool:
        return _check_history(history) >= self.n

    def needs_map(self, state: int, min_crop_area: float) -> bool:
        """The last state's map is never read: the answer uses its crops whatever it shows."""
        return state == 0 or state < self.n

    def best_index(self, history: list[IterationStats]) -> int:
        return min(self.n, _check_history(history))


class ResolutionRule(StoppingRule):
    """Stop when a crop falls below ``min_area`` pixels, or at ``cap``.

    ``best_index`` = the last state, in the initial run, whose smallest crop is still
    >= ``min_area`` (history[0] has no crops, area inf, so it always qualifies). The
    default floor, 32 x 32 = 1024 px, is this project's choice (the paper gives none):
    below it a crop is upsampled > 10x to a 336 px encoder input and carries no detail
    the original lacked.
    """

    name = "resolution"

    def __init__(self, min_area: float = 1024.0, cap: int = 4):
        if not min_area >= 0:
            raise ValueError(f"min_area must be >= 0, got {min_area!r}")
        self.min_area = float(min_area)
        self.cap = _check_cap(cap)

    def _ok(self, s: IterationStats) -> bool:
        return s.min_crop_area >= self.min_area  # NaN -> not ok

    def should_stop(self, history: list[IterationStats]) -> bool:
        n = _check_history(history)
        return n >= self.cap or not self._ok(history[-1])

    def needs_map(self, state: int, min_crop_area: float) -> bool:
        """A state at the cap, or whose crops fall below the floor, ends the loop whatever its map."""
        return state == 0 or (state < self.cap and min_crop_area >= self.min_area)

    def best_index(self, history: list[IterationStats]) -> int:
        n = _check_history(history)
        best = 0
        for i in range(1, n + 1):
            if not self._ok(history[i]):
                break
            best = i
        return best


RULES: dict[str, type[StoppingRule]] = {
    "spatial-entropy": SpatialEntropyRule,
    "confidence": ConfidenceRule,
    "fixed": FixedRule,
    "resolution": ResolutionRule,
}


def make_rule(name: str = "spatial-entropy", **kw) -> StoppingRule:
    """Build a stopping rule by name; keyword arguments go to its constructor."""
    try:
        cls = RULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown stopping rule {name!r}; valid names: {sorted(RULES)}") from None
    return cls(**kw)
