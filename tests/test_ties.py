"""Near-ties: float noise between CPUs and thread counts must not flip a discrete choice.

Each test builds candidates that are equal in exact arithmetic, perturbs the inputs by
noise of the size float32 model outputs differ by between machines, and checks that the
choice never moves. ``np.argmax`` on the same inputs picks by noise (checked in the test).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from egg.adapters.records import TokenGrid
from egg.baselines import choose_window
from egg.method.regions import extract_regions, first_argmax, first_argmax_2d, rank_by_mass
from egg.method.stopping import IterationStats, SpatialEntropyRule, ConfidenceRule


def test_first_argmax_takes_the_first_of_near_ties_and_never_nan():
    assert first_argmax([1.0, 1.0 + 1e-13, 0.5]) == 0
    assert int(np.argmax([1.0, 1.0 + 1e-13, 0.5])) == 1  # what the plain argmax does
    assert first_argmax([0.2, 1.0, 1.0 - 1e-3]) == 1  # a real difference still wins
    assert first_argmax([np.nan, 0.1, 0.1]) == 1
    assert first_argmax_2d(np.array([[0.0, 2.0], [2.0, 0.0]])) == (0, 1)
    with pytest.raises(ValueError):
        first_argmax([])


def _grid(shape=(24, 24), px=336):
    return TokenGrid(image_index=0, start=0, shape=shape, footprint=(0.0, 0.0, float(px), float(px)),
                     image_size=(px, px))


def _old_choice(m: np.ndarray, wc: int) -> int:
    """The plain argmax over window sums that choose_window used before near-ties."""
    S = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
    S[1:, 1:] = m.cumsum(0).cumsum(1)
    return int(np.argmax(S[wc:, wc:] - S[:-wc, wc:] - S[wc:, :-wc] + S[:-wc, :-wc]))


def test_choose_window_is_stable_under_float_noise_when_windows_tie():
    # a blob in a zero field: every 8 x 8-cell window that holds the blob has the same mass
    # in exact arithmetic. A last-bit difference (here 1e-13 of the mass, placed in a cell
    # that only the lower or only the upper windows hold) must not decide between them.
    rng = np.random.default_rng(0)
    base = np.zeros((24, 24))
    base[9:12, 13:15] = rng.random((3, 2)) + 0.5
    tiny = 1e-13 * base.sum()
    low, high = base.copy(), base.copy()
    low[15, 14] = tiny  # only in windows starting at row >= 8
    high[4, 14] = tiny  # only in windows starting at row <= 4
    assert _old_choice(low, 8) != _old_choice(high, 8)  # the old rule: noise decides
    grid = _grid()
    picks = {choose_window(m, grid, [112.0, 140.0])[0] for m in (base, low, high)}
    assert picks == {(98.0, 56.0, 210.0, 168.0)}  # the first tied window in row-major order


def test_region_ranking_is_stable_under_float_noise_when_masses_tie():
    g = np.zeros((24, 24))
    g[4:6, 4:6] = 1.0
    g[16:18, 18:20] = 1.0
    g[17, 19] += 1e-13  # the later blob is heavier by float noise only
    first = extract_regions(g, sigma=1.0)[0]
    assert first.box[1] < 10  # equal masses: the blob first in row-major order ranks first
    assert rank_by_mass(["a", "b", "c"], [1.0, 1.0 + 1e-12, 2.0]) == ["c", "a", "b"]
    assert rank_by_mass(["a", "b"], [1.0, 1.001]) == ["b", "a"]  # a real difference wins


def test_stopping_rules_ignore_changes_below_float_noise():
    h = [IterationStats(spatial_entropy=0.7), IterationStats(spatial_entropy=0.7 - 1e-12)]
    rule = SpatialEntropyRule(cap=4)
    assert rule.should_stop(h) and rule.best_index(h) == 1  # min_zooms=1 keeps the first zoom
    h.append(IterationStats(spatial_entropy=0.5))
    assert SpatialEntropyRule(cap=4, min_zooms=0).best_index(h) == 0
    p = [IterationStats(0.0, max_prob=0.4), IterationStats(0.0, max_prob=0.4 + 1e-12)]
    assert ConfidenceRule().should_stop(p) and ConfidenceRule().best_index(p) == 0


_RUN_TOKEN_INDEX_2 = """
import json, torch
torch.set_num_threads(1)
from egg import runs as ex
vlm = ex.load_vlm(None, "cpu")
df = ex.run(vlm, {"ti2": ("egg", {"token_index": 2})}, ["text"], 4, split="test", seed=0, path=None, progress=False)
print(json.dumps([torch.backends.cpu.get_cpu_capability(), df[["prediction", "boxes", "iterations"]].values.tolist()]))
"""


@pytest.mark.slow
def test_maps_past_a_one_token_answer_do_not_depend_on_the_cpus_kernels():
    """`token_index=2` differentiates the entropy after a one-token answer, about 1e-6 nats: before
    the objectives ran in float64 its boxes moved on 21 of 40 items of notebook 05 between AVX2
    and AVX-512 kernels (on all four of these). The same run with ATen's plain kernels (other
    rounding than any vectorised ones) must give the same answers, boxes and zoom counts."""
    import json
    import subprocess
    import sys

    import torch

    native = torch.backends.cpu.get_cpu_capability()
    if native == "DEFAULT":
        pytest.skip("this CPU has no vectorised kernels to compare with ATen's plain ones")

    def run(**env):
        out = subprocess.run([sys.executable, "-c", _RUN_TOKEN_INDEX_2], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    plain, vectorised = run(ATEN_CPU_CAPABILITY="default"), run()
    assert (plain[0], vectorised[0]) == ("DEFAULT", native)
    assert plain[1] == vectorised[1]
