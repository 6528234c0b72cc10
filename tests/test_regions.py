"""Tests for egg.regions: thresholds, region extraction, degenerate maps, box maths."""
from __future__ import annotations

import math

import numpy as np
import pytest

from egg.method.regions import THRESHOLDS, Region, elbow_threshold, extract_regions, otsu_threshold, smooth, top_percent_threshold
from egg.method.boxes import box_area, clamp_aspect, compose, compose_chain, grid_box_to_pixels, iou, pixels_to_grid_box, point_in_box
from maps import blob


# ----------------------------------------------------------------------------- thresholds


def test_elbow_small_hand_computed():
    # normalised points: x = [0, 1/3, 2/3, 1], y = [0, 0, 0, 1]; |x - y| max at index 2
    assert elbow_threshold([0.0, 0.0, 0.0, 1.0]) == 0.0
    assert elbow_threshold([1.0, 0.0, 0.0, 0.0]) == 0.0  # order of input irrelevant


def test_elbow_on_known_curve_separates_the_tail():
    v = np.concatenate([np.linspace(0.0, 0.1, 90), np.linspace(0.5, 1.0, 10)])
    t = elbow_threshold(v)
    assert t == pytest.approx(0.1)
    assert int((v > t).sum()) == 10
    rng = np.random.default_rng(0)
    assert elbow_threshold(rng.permutation(v)) == pytest.approx(0.1)


def test_elbow_is_scale_and_offset_invariant():
    v = np.concatenate([np.linspace(0.0, 0.2, 50), np.linspace(0.6, 1.0, 7)])
    assert elbow_threshold(v * 1e-7 + 3.0) == pytest.approx(elbow_threshold(v) * 1e-7 + 3.0)
    assert elbow_threshold(v * 1e6) == pytest.approx(elbow_threshold(v) * 1e6)


def test_thresholds_ignore_nonfinite_and_handle_constant():
    v = [0.0, 0.0, np.nan, np.inf, 0.0, 1.0]
    assert elbow_threshold(v) == 0.0
    for fn in (elbow_threshold, otsu_threshold):
        assert fn([2.5, 2.5, 2.5]) == 2.5
        with pytest.raises(ValueError):
            fn([np.nan])


def test_otsu_bimodal():
    v = np.array([0.0, 0.1, 0.2, 0.9, 1.0])
    t = otsu_threshold(v)
    assert t == pytest.approx(0.2)
    assert list(v[v > t]) == [0.9, 1.0]


def test_top_percent():
    v = np.arange(100, dtype=float)
    t = top_percent_threshold(v, 10.0)
    assert t == 89.0 and int((v > t).sum()) == 10
    assert int((v > top_percent_threshold(v, 100.0)).sum()) == 100
    assert int((v > top_percent_threshold(v, 0.1)).sum()) == 1
    with pytest.raises(ValueError):
        top_percent_threshold(v, 0.0)


def test_threshold_registry():
    assert set(THRESHOLDS) == {"elbow", "otsu", "top-percent"}
    assert THRESHOLDS["elbow"] is elbow_threshold


# ------------------------------------------------------------------------------ smoothing


def test_smooth_cleans_and_copies():
    g = np.ones((5, 6))
    g[1, 1], g[2, 2], g[3, 3] = np.nan, np.inf, -np.inf
    s0 = smooth(g, 0)
    assert s0 is not g and np.isfinite(s0).all() and s0[1, 1] == 0 and s0[0, 0] == 1
    s = smooth(g, 1.5)
    assert np.isfinite(s).all() and s.shape == g.shape
    assert np.allclose(smooth(np.full((4, 7), 3.0), 1.5), 3.0)  # mode="nearest"
    with pytest.raises(ValueError):
        smooth(g, -1.0)


# ------------------------------------------------------------------------ extract_regions


def test_two_blobs_ranked_by_raw_mass():
    g = blob(5, 6, a=0.6) + blob(17, 15, a=1.0)
    regs = extract_regions(g)
    assert len(regs) == 2 and all(isinstance(r, Region) for r in regs)
    c0, r0, c1, r1 = regs[0].box
    assert c0 <= 17 < c1 and r0 <= 15 < r1  # stronger blob first
    c0, r0, c1, r1 = regs[1].box
    assert c0 <= 5 < c1 and r0 <= 6 < r1
    assert regs[0].mass > regs[1].mass
    for r in regs:
        assert r.mass == pytest.approx(float(g[r.mask].sum()))
    assert len(extract_regions(g, k=1)) == 1
    assert len(extract_regions(g, k=None)) == 2


def test_rank_uses_raw_not_smoothed_mass():
    # A: one tall spike (raw mass 3, high smoothed peak); B: broad 5x5 plateau (raw mass 5)
    g = np.zeros((24, 24))
    g[4, 4] = 3.0
    g[14:19, 14:19] = 0.2
    regs = extract_regions(g, sigma=1.0, threshold="top-percent", k=None)
    assert len(regs) == 2
    c0, r0, c1, r1 = regs[0].box
    assert c0 <= 16 < c1 and r0 <= 16 < r1
    assert regs[0].mass == pytest.approx(5.0) and regs[1].mass == pytest.approx(3.0)
    assert smooth(g, 1.0)[4, 4] > smooth(g, 1.0)[16, 16]  # the smoothed ranking would differ


def test_ties_are_deterministic_row_major():
    g = blob(18, 4) + blob(4, 18)  # equal blobs; (18, 4) starts first in row-major order
    a, b = extract_regions(g), extract_regions(g)
    assert [r.box for r in a] == [r.box for r in b]
    assert a[0].box[1] < a[1].box[1]


def test_connectivity():
    g = np.zeros((6, 6))
    g[1, 1] = g[2, 2] = 1.0
    r8 = extract_regions(g, sigma=0, connectivity=8, k=None)
    r4 = extract_regions(g, sigma=0, connectivity=4, k=None)
    assert [r.box for r in r8] == [(1.0, 1.0, 3.0, 3.0)]
    assert sorted(r.box for r in r4) == [(1.0, 1.0, 2.0, 2.0), (2.0, 2.0, 3.0, 3.0)]
    with pytest.raises(ValueError):
        extract_regions(g, connectivity=6)


def test_non_square_grid_boxes_are_col_row():
    g = np.zeros((10, 30))
    g[2:4, 20:25] = 1.0
    (r,) = extract_regions(g, sigma=0, k=1)
    assert r.box == (20.0, 2.0, 25.0, 4.0)


# -------------------------------------------------------------------- degenerate grids


@pytest.mark.parametrize(
    "grid",
    [np.zeros((4, 5)), np.full((4, 5), np.nan), np.full((4, 5), 7.0), np.full((4, 5), np.inf)],
    ids=["zeros", "nan", "constant", "inf"],
)
def test_flat_maps_fall_back_to_whole_grid(grid):
    for th in THRESHOLDS:
        regs = extract_regions(grid, threshold=th)
        assert len(regs) == 1
        assert regs[0].box == (0.0, 0.0, 5.0, 4.0)
        assert regs[0].mask is not None and regs[0].mask.all()
        assert math.isfinite(regs[0].mass)


def test_nothing_above_threshold_falls_back_to_padded_argmax():
    g = np.zeros((10, 10))
    g[4:6, 6:8] = 1.0  # 2x2 plateau at the max; top 1% threshold = 1.0 -> nothing above
    regs = extract_regions(g, sigma=0, threshold=lambda v: top_percent_threshold(v, 1.0))
    assert len(regs) == 1
    assert regs[0].box == (5.0, 3.0, 9.0, 7.0)  # plateau padded by max(1, ceil(0)) = 1
    assert regs[0].mass == pytest.approx(4.0)
    # a threshold that rejects everything, with smoothing: box around the smoothed argmax
    g2 = blob(3, 20)
    (r,) = extract_regions(g2, threshold=lambda v: float("inf"))
    c0, r0, c1, r1 = r.box
    assert c0 <= 3 < c1 and r0 <= 20 < r1 and (c1 - c0) <= 5 and (r1 - r0) <= 5


def test_partial_nan_does_not_crash():
    g = blob(10, 10)
    g[0, :] = np.nan
    g[5, 5] = np.inf
    regs = extract_regions(g)
    assert regs and all(math.isfinite(r.mass) for r in regs)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(0, 5\)"):
        extract_regions(np.zeros((0, 5)))
    with pytest.raises(ValueError):
        extract_regions(np.zeros(10))
    with pytest.raises(ValueError, match="elbow"):
        extract_regions(np.zeros((3, 3)), threshold="nope")
    with pytest.raises(ValueError):
        extract_regions(np.zeros((3, 3)), k=0)


def test_single_cell_grid():
    (r,) = extract_regions(np.array([[0.5]]))
    assert r.box == (0.0, 0.0, 1.0, 1.0) and r.mass == 0.5


# ------------------------------------------------------------------------- grid <-> pixels


def test_grid_box_to_pixels_non_square():
    grid_shape = (24, 32)  # rows, cols
    footprint = (10.0, 20.0, 650.0, 380.0)  # 640 x 360 -> 20 px per col, 15 px per row
    px = grid_box_to_pixels((2, 3, 5, 7), grid_shape, footprint)
    assert px == pytest.approx((50.0, 65.0, 110.0, 125.0))
    assert grid_box_to_pixels((0, 0, 32, 24), grid_shape, footprint) == pytest.approx(footprint)


def test_grid_pixel_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(50):
        rows, cols = rng.integers(1, 40, size=2)
        fx0, fy0 = rng.uniform(0, 100, size=2)
        fw, fh = rng.uniform(5, 2000, size=2)
        fp = (fx0, fy0, fx0 + fw, fy0 + fh)
        c0, c1 = sorted(rng.uniform(0, cols, size=2))
        r0, r1 = sorted(rng.uniform(0, rows, size=2))
        box = (c0, r0, c1, r1)
        back = pixels_to_grid_box(grid_box_to_pixels(box, (rows, cols), fp), (rows, cols), fp)
        assert back == pytest.approx(box)


def test_extract_then_map_to_pixels_contains_evidence():
    g = np.zeros((24, 24))
    g[7, 19] = 1.0  # token at col 19, row 7 of a 336x336 image: pixel centre (273, 105)
    (r,) = extract_regions(g, k=1)
    px = clamp_aspect(grid_box_to_pixels(r.box, g.shape, (0, 0, 336, 336)), (336, 336))
    assert point_in_box((19.5 * 14, 7.5 * 14), px)
    assert not point_in_box((5 * 14, 20 * 14), px)


# ---------------------------------------------------------------------------- clamp_aspect


def _check_clamped(out, image_size, max_ratio=3.0):
    W, H = image_size
    x0, y0, x1, y1 = out
    assert all(float(v).is_integer() for v in out)
    assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
    return x1 - x0, y1 - y0


def test_clamp_box_at_corner_keeps_size_by_shifting():
    out = clamp_aspect((90, 98, 100, 100), (100, 100))  # 10 x 2 at bottom-right corner
    w, h = _check_clamped(out, (100, 100))
    assert (w, h) == (10, 4) and max(w, h) / min(w, h) <= 3
    assert out == (90.0, 96.0, 100.0, 100.0)  # covers the input box
    out = clamp_aspect((0, 0, 1, 1), (100, 100), min_side=10)
    assert out == (0.0, 0.0, 10.0, 10.0)
    # widening pushes it past the right edge: shifted back in, not clipped (keeps 7 x 20)
    out = clamp_aspect((95, 40, 100, 60), (100, 100))
    assert out == (93.0, 40.0, 100.0, 60.0)
    # the input itself is clipped first: the part outside the image is not content
    assert clamp_aspect((90, 40, 110, 60), (100, 100)) == (90.0, 40.0, 100.0, 60.0)


def test_clamp_box_larger_than_image():
    assert clamp_aspect((-50, -50, 500, 300), (200, 100)) == (0.0, 0.0, 200.0, 100.0)
    # clipped to the image first, then widened: 200 wide -> at least 67 tall
    assert clamp_aspect((-10, 20, 400, 30), (200, 100)) == (0.0, 0.0, 200.0, 67.0)
    assert clamp_aspect((500, 500, 600, 600), (200, 100)) == (199.0, 99.0, 200.0, 100.0)


def test_clamp_one_pixel_and_empty_boxes():
    assert clamp_aspect((5.2, 5.2, 5.3, 5.3), (50, 50)) == (5.0, 5.0, 6.0, 6.0)
    assert clamp_aspect((5, 5, 5, 5), (50, 50)) == (5.0, 5.0, 6.0, 6.0)
    assert clamp_aspect((0, 0, 1, 1), (1, 1)) == (0.0, 0.0, 1.0, 1.0)
    assert clamp_aspect((49.5, 49.5, 50, 50), (50, 50)) == (49.0, 49.0, 50.0, 50.0)
    w, h = _check_clamped(clamp_aspect((10, 10, 11, 11), (50, 50), min_side=4), (50, 50))
    assert (w, h) == (4, 4)


def test_clamp_extreme_images_20x3000():
    # tall narrow image (W=20, H=3000): a tall box can only be as wide as the image
    out = clamp_aspect((5, 100, 15, 2100), (20, 3000))
    assert out == (0.0, 100.0, 20.0, 2100.0)  # long side never shrunk
    # a wide box in it can be fixed
    out = clamp_aspect((0, 10, 20, 12), (20, 3000))
    w, h = _check_clamped(out, (20, 3000))
    assert (w, h) == (20, 7) and out[1] <= 10 and out[3] >= 12
    # wide short image (W=3000, H=20)
    out = clamp_aspect((100, 5, 2100, 15), (3000, 20))
    assert out == (100.0, 0.0, 2100.0, 20.0)
    out = clamp_aspect((2990, 0, 3000, 1), (3000, 20))
    w, h = _check_clamped(out, (3000, 20))
    assert max(w, h) <= 3 * min(w, h) and out[2] == 3000


def test_clamp_random_properties():
    rng = np.random.default_rng(2)
    for _ in range(400):
        W, H = (int(v) for v in rng.integers(1, 400, size=2))
        x0, x1 = sorted(rng.uniform(-20, W + 20, size=2))
        y0, y1 = sorted(rng.uniform(-20, H + 20, size=2))
        out = clamp_aspect((x0, y0, x1, y1), (W, H))
        w, h = _check_clamped(out, (W, H))
        # covers the part of the input inside the image
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if ix1 > ix0 and iy1 > iy0:
            assert out[0] <= ix0 and out[1] <= iy0 and out[2] >= ix1 and out[3] >= iy1
        # ratio holds whenever the image can accommodate it
        long_side = max(w, h)
        if math.ceil(long_side / 3) <= min(W, H):
            assert long_side <= 3 * min(w, h)


def test_clamp_rejects_bad_input():
    with pytest.raises(ValueError):
        clamp_aspect((0, 0, 1, 1), (0, 10))
    with pytest.raises(ValueError):
        clamp_aspect((0, 0, np.nan, 1), (10, 10))
    with pytest.raises(ValueError):
        clamp_aspect((0, 0, 1, 1), (10, 10), max_ratio=0.5)


# --------------------------------------------------------------------------------- compose


def test_compose_unscaled_and_resized():
    assert compose((1, 2, 3, 4), (100, 50, 300, 150)) == pytest.approx((101, 52, 103, 54))
    # 200x100 crop resized to 400x400: x scale 0.5, y scale 0.25
    assert compose((40, 80, 120, 160), (100, 50, 300, 150), (400, 400)) == pytest.approx(
        (120, 70, 160, 90)
    )
    assert compose((3, 4, 50, 60), (0, 0, 640, 480), (640, 480)) == pytest.approx((3, 4, 50, 60))


def test_compose_chain_crops_of_crops_equals_direct():
    crop1, size1 = (200.0, 100.0, 600.0, 400.0), (336, 336)  # cut from a 1000x800 original
    crop2, size2 = (30.0, 60.0, 130.0, 160.0), (224, 224)  # cut from crop1's 336x336 image
    crop3, size3 = (10.0, 10.0, 110.0, 60.0), None  # unscaled crop of crop2's image
    box = (5.0, 7.0, 40.0, 30.0)  # in pixels of crop3's image

    # direct: each level is x -> origin + x * (cut width / image width)
    sx1, sy1 = 400 / 336, 300 / 336
    sx2, sy2 = 100 / 224, 100 / 224

    def direct(x, y):
        x2, y2 = crop3[0] + x, crop3[1] + y  # crop2-image pixels
        x1, y1 = crop2[0] + x2 * sx2, crop2[1] + y2 * sy2  # crop1-image pixels
        return crop1[0] + x1 * sx1, crop1[1] + y1 * sy1

    want = (*direct(box[0], box[1]), *direct(box[2], box[3]))
    chain = [(crop1, size1), (crop2, size2), (crop3, size3)]
    assert compose_chain(box, chain) == pytest.approx(want)
    stepwise = compose(compose(compose(box, crop3, size3), crop2, size2), crop1, size1)
    assert stepwise == pytest.approx(want)
    assert compose_chain(box, []) == box


def test_compose_finds_point_back():
    # an evidence point in the original, pushed forward through two resized crops
    pt = (412.0, 233.0)
    crop1, size1 = (300.0, 150.0, 500.0, 350.0), (336, 336)
    crop2, size2 = (100.0, 100.0, 200.0, 200.0), (336, 336)
    p1 = ((pt[0] - crop1[0]) * size1[0] / 200, (pt[1] - crop1[1]) * size1[1] / 200)
    p2 = ((p1[0] - crop2[0]) * size2[0] / 100, (p1[1] - crop2[1]) * size2[1] / 100)
    small = (p2[0] - 2, p2[1] - 2, p2[0] + 2, p2[1] + 2)
    back = compose_chain(small, [(crop1, size1), (crop2, size2)])
    assert point_in_box(pt, back)
    assert box_area(back) < 1.0  # 4x4 px at ~ 9.5x zoom


# --------------------------------------------------------------------------- box helpers


def test_box_helpers():
    assert box_area((0, 0, 4, 5)) == 20 and box_area((4, 0, 0, 5)) == 0
    assert iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert iou((0, 0, 2, 2), (3, 3, 4, 4)) == 0.0
    assert iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert point_in_box((2, 2), (0, 0, 2, 2))
    assert not point_in_box((2.5, 1), (0, 0, 2, 2))
    assert point_in_box((2.5, 1), (0, 0, 2, 2), tolerance=0.5)
    assert point_in_box((2.5, 1), (0, 0, 2, 2), tolerance=(0.5, 0.0))  # grown left and right only
    assert not point_in_box((1, 2.5), (0, 0, 2, 2), tolerance=(0.5, 0.0))
