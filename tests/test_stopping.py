"""Tests for egg.stopping: spatial entropy on hand-built maps, stopping rules on scripts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from egg.method.regions import THRESHOLDS, smooth
from egg.method.stopping import ConfidenceRule, FixedRule, IterationStats, ResolutionRule, SpatialEntropyRule, StoppingRule, make_rule, spatial_entropy
from maps import blob


def scattered_noise(seed: int = 0, n_side: int = 4) -> np.ndarray:
    """Sparse spikes on a jittered lattice: many separate weak peaks = an unfocused map."""
    rng = np.random.default_rng(seed)
    g = np.zeros((24, 24))
    step = 24 // n_side
    for i in range(n_side):
        for j in range(n_side):
            r = i * step + int(rng.integers(1, step - 1))
            c = j * step + int(rng.integers(1, step - 1))
            g[r, c] = rng.uniform(0.8, 1.0)
    return g


# ------------------------------------------------------------------------ spatial entropy


def test_one_blob_is_zero_two_equal_blobs_log2():
    for th in THRESHOLDS:
        assert spatial_entropy(smooth(blob(8, 9)), threshold=th) == pytest.approx(0.0, abs=1e-12)
        two = smooth(blob(5, 5) + blob(18, 18))
        assert spatial_entropy(two, threshold=th) == pytest.approx(math.log(2), abs=1e-9)
    three = smooth(blob(4, 4) + blob(19, 4) + blob(12, 19))
    assert spatial_entropy(three) == pytest.approx(math.log(3), abs=1e-6)


def test_ordering_one_blob_lt_two_blobs_lt_noise():
    one = spatial_entropy(blob(12, 12), smoothed=False)
    two = spatial_entropy(blob(5, 5) + blob(18, 18), smoothed=False)
    for seed in range(3):
        noise = spatial_entropy(scattered_noise(seed), smoothed=False)
        assert one < two < noise
        assert noise > math.log(4)


def test_unequal_blobs_between_zero_and_log2():
    h = spatial_entropy(blob(5, 5, a=1.0) + blob(18, 18, a=0.5), smoothed=False)
    assert 0.0 < h < math.log(2) - 0.05


def test_smoothed_flag_and_scale_invariance():
    g = blob(5, 5) + blob(18, 18, a=0.7) + scattered_noise(1) * 0.3
    assert spatial_entropy(g, smoothed=False, sigma=1.5) == pytest.approx(
        spatial_entropy(smooth(g, 1.5), smoothed=True)
    )
    assert spatial_entropy(g * 1e-6, smoothed=False) == pytest.approx(
        spatial_entropy(g, smoothed=False)
    )


def test_spatial_entropy_degenerate_maps():
    assert spatial_entropy(np.zeros((24, 24))) == 0.0
    assert spatial_entropy(np.full((24, 24), np.nan)) == 0.0
    assert spatial_entropy(np.full((24, 24), 5.0)) == 0.0
    # dense uniform noise: peak < 2 * mean, so B has no positive value -> empty_value
    dense = np.random.default_rng(0).uniform(0.5, 1.0, size=(24, 24))
    assert spatial_entropy(dense, smoothed=False) == 0.0
    assert spatial_entropy(dense, smoothed=False, empty_value=7.0) == 7.0
    # one hot cell (all positive B values equal after no smoothing): 0, via B > 0 fallback
    g = np.zeros((24, 24))
    g[3, 3] = 1.0
    assert spatial_entropy(g) == 0.0
    # two equal hot cells far apart: the B > 0 fallback still sees two components
    g[20, 20] = 1.0
    assert spatial_entropy(g) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="elbow"):
        spatial_entropy(g, threshold="bogus")


# ------------------------------------------------------------------------ stopping rules


def S(h: float = 1.0, p: float = float("nan"), area: float = float("inf")) -> IterationStats:
    return IterationStats(spatial_entropy=h, max_prob=p, entropy=0.0, min_crop_area=area)


def run_loop(rule: StoppingRule, script: list[IterationStats]) -> tuple[int, int]:
    """The documented loop: append, then ask should_stop; (zooms done, best index)."""
    history: list[IterationStats] = []
    for stats in script:
        history.append(stats)
        if rule.should_stop(history):
            return len(history) - 1, rule.best_index(history)
    raise AssertionError("script ran out before the rule stopped")


def test_spatial_entropy_rule_rise_at_step_2():
    script = [S(2.0), S(1.5), S(1.8), S(1.0), S(0.5), S(0.1)]
    assert run_loop(SpatialEntropyRule(cap=4), script) == (2, 1)


def test_spatial_entropy_rule_rise_at_step_1():
    # default (authors' release): the first crops are always used; literal rule keeps the original
    assert run_loop(SpatialEntropyRule(), [S(1.0), S(1.4), S(0.2)]) == (1, 1)
    assert run_loop(SpatialEntropyRule(min_zooms=0), [S(1.0), S(1.4), S(0.2)]) == (1, 0)


def test_spatial_entropy_rule_tie_is_no_improvement():
    assert run_loop(SpatialEntropyRule(), [S(2.0), S(1.0), S(1.0), S(0.5)]) == (2, 1)


def test_spatial_entropy_rule_zero_entropy_stops_and_keeps_it():
    assert run_loop(SpatialEntropyRule(), [S(2.0), S(1.0), S(0.0), S(0.5)]) == (2, 2)
    assert run_loop(SpatialEntropyRule(), [S(0.0), S(1.0)]) == (1, 1)
    assert run_loop(SpatialEntropyRule(min_zooms=0), [S(0.0), S(1.0)]) == (0, 0)


def test_spatial_entropy_rule_cap():
    script = [S(5.0 - i) for i in range(10)]
    assert run_loop(SpatialEntropyRule(cap=4), script) == (4, 4)
    assert run_loop(SpatialEntropyRule(cap=2), script) == (2, 2)
    assert run_loop(SpatialEntropyRule(cap=0), script) == (0, 0)


def test_spatial_entropy_rule_min_zooms():
    script = [S(0.0), S(0.7), S(0.5), S(0.9), S(0.1)]
    assert run_loop(SpatialEntropyRule(min_zooms=1), script) == (1, 1)
    assert run_loop(SpatialEntropyRule(min_zooms=0), script) == (0, 0)
    assert run_loop(SpatialEntropyRule(min_zooms=2), script) == (3, 2)
    assert run_loop(SpatialEntropyRule(min_zooms=1), [S(2.0), S(0.9), S(1.2)]) == (2, 1)


def test_spatial_entropy_best_index_on_overlong_history():
    rule = SpatialEntropyRule()
    assert rule.best_index([S(3.0), S(2.0), S(2.5), S(0.1)]) == 1
    assert rule.best_index([S(3.0)]) == 0


def test_confidence_rule_plateau_and_drop():
    assert run_loop(ConfidenceRule(), [S(p=0.3), S(p=0.5), S(p=0.6), S(p=0.55), S(p=0.9)]) == (3, 2)
    assert run_loop(ConfidenceRule(), [S(p=0.3), S(p=0.5), S(p=0.5), S(p=0.9)]) == (2, 1)
    assert run_loop(ConfidenceRule(), [S(p=0.6), S(p=0.4)]) == (1, 0)


def test_confidence_rule_cap_and_nan():
    script = [S(p=0.1 * (i + 1)) for i in range(9)]
    assert run_loop(ConfidenceRule(cap=4), script) == (4, 4)
    assert run_loop(ConfidenceRule(), [S(p=0.4), S(p=float("nan"))]) == (1, 0)
    assert ConfidenceRule().best_index([S(p=0.2), S(p=0.8), S(p=0.1), S(p=0.8)]) == 1


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_fixed_rule(n):
    script = [S(1.0 + i) for i in range(10)]  # entropies rise: must be ignored
    assert run_loop(FixedRule(n), script) == (n, n)
    assert make_rule("fixed", n=n).best_index([S()] * (n + 1)) == n


def test_resolution_rule_floor():
    inf = float("inf")
    script = [S(area=inf), S(area=5000), S(area=2000), S(area=500), S(area=3000)]
    assert run_loop(ResolutionRule(min_area=1000), script) == (3, 2)
    assert run_loop(ResolutionRule(min_area=10000), script) == (1, 0)
    assert run_loop(ResolutionRule(min_area=100, cap=2), script) == (2, 2)
    assert ResolutionRule(min_area=1000).best_index([S(area=inf)]) == 0


def test_make_rule_names_and_errors():
    assert isinstance(make_rule(), SpatialEntropyRule)
    assert isinstance(make_rule("spatial-entropy", cap=3), SpatialEntropyRule)
    assert make_rule("spatial-entropy", cap=3).cap == 3
    assert isinstance(make_rule("confidence"), ConfidenceRule)
    assert isinstance(make_rule("fixed", n=2), FixedRule)
    r = make_rule("resolution", min_area=64.0)
    assert isinstance(r, ResolutionRule) and r.min_area == 64.0
    with pytest.raises(ValueError, match="spatial-entropy"):
        make_rule("entropy")
    with pytest.raises(ValueError):
        SpatialEntropyRule(cap=-1)
    with pytest.raises(ValueError):
        FixedRule(-1)
    with pytest.raises(ValueError):
        SpatialEntropyRule().should_stop([])
