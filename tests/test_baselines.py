"""ViCrop (three maps, multi-scale window) and the random / oracle bounds."""
from __future__ import annotations

import numpy as np
import pytest

from egg.adapters.records import TokenGrid
from egg.baselines import VARIANTS, choose_window, oracle, random_box, vicrop, vicrop_map
from egg.baselines.vicrop import high_pass_mask, window_sizes_for


def _inside(box, size):
    W, H = size
    return 0 <= box[0] < box[2] <= W and 0 <= box[1] < box[3] <= H


@pytest.mark.parametrize("variant", VARIANTS)
def test_vicrop_variants_return_a_box_inside_the_image(vlm, scene, question, variant):
    g = vicrop(vlm, scene, question, variant=variant)
    assert g.method == f"vicrop:{variant}"
    assert len(g.boxes) == 1 and _inside(g.boxes[0], scene.size)
    assert isinstance(g.answer, str) and g.trace[1].answer == g.answer
    assert g.best_index == 1 and g.crops == g.boxes
    m = g.trace[0].maps[0]
    assert m.shape == (8, 8) and np.isfinite(m).all() and m.max() > 0
    assert g.params["layer"] == vlm.adapter.num_layers // 2
    if variant != "rel-att":
        assert g.cost.backward >= 1 and 0 < g.trace[0].max_prob <= 1
    again = vicrop(vlm, scene, question, variant=variant)
    assert again.boxes == g.boxes and again.answer == g.answer


def test_vicrop_layer_and_bad_variant(vlm, scene, question):
    a, _, info = vicrop_map(vlm, scene, question, "rel-att", layer=0)
    b, _, _ = vicrop_map(vlm, scene, question, "rel-att", layer=3)
    assert info["layer"] == 0 and not np.allclose(a, b)
    with pytest.raises(ValueError):
        vicrop(vlm, scene, question, variant="nope")
    with pytest.raises(ValueError):
        vicrop_map(vlm, scene, question, "grad-att", layer=99)


def _grid(size=(400, 200), shape=(8, 8)):
    return TokenGrid(image_index=0, start=0, shape=shape, footprint=(0.0, 0.0, *map(float, size)), image_size=size)


def test_choose_window_centres_on_mass_and_stays_inside():
    g = _grid()  # cells of 50 x 25 px
    m = np.zeros((8, 8))
    m[2, 5] = 1.0
    box, score, size = choose_window(m, g, [60.0, 120.0, 180.0])
    assert size == 60.0 and score > 0  # bigger windows add area, not mass
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert 250 <= cx <= 300 and 50 <= cy <= 75
    assert box[2] - box[0] == 60 and box[3] - box[1] == 60
    # mass spread over a large block: the bigger window wins
    m = np.zeros((8, 8))
    m[1:7, 2:6] = 1.0
    _, _, size = choose_window(m, g, [60.0, 200.0])
    assert size == 200.0
    # a hot corner: the window is shifted inside the image
    m = np.zeros((8, 8))
    m[7, 7] = 1.0
    box, _, _ = choose_window(m, g, [100.0])
    assert box == (300.0, 100.0, 400.0, 200.0)


def test_choose_window_zero_map_and_oversized_windows():
    g = _grid((50, 30))
    box, score, _ = choose_window(np.zeros((8, 8)), g, [64.0])
    assert box == (0.0, 0.0, 50.0, 30.0) and score == 0.0
    m = np.random.default_rng(0).random((8, 8))
    box, _, _ = choose_window(m, g, [500.0])
    assert box == (0.0, 0.0, 50.0, 30.0)


def test_window_sizes(adapter):
    S = adapter.input_resolution[0]  # ViCrop windows scale with the input side
    assert window_sizes_for(adapter, (1000, 500)) == pytest.approx([S * s for s in (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)])
    assert window_sizes_for(adapter, (1000, 500), [0.5, 100]) == [250.0, 100.0]
    with pytest.raises(ValueError):
        window_sizes_for(adapter, (10, 10), [0])


def test_high_pass_mask_marks_edges():
    import torch

    x = torch.zeros(1, 3, 64, 64)
    x[..., 20:40, 20:40] = 1.0
    mask = high_pass_mask(x)
    assert mask.shape == (64, 64) and mask[20, 20:40].any() and not mask[:10, :10].any()


def test_oracle_and_random_box(vlm, scene, question):
    gt = [(20, 20, 70, 60)]
    g = oracle(vlm, scene, question, gt)
    assert g.method == "oracle" and g.boxes == [(20.0, 20.0, 70.0, 60.0)] and isinstance(g.answer, str)
    g = oracle(vlm, scene, question, (200, 10, 202, 150))  # thin box: widened to aspect <= 3
    x0, y0, x1, y1 = g.boxes[0]
    assert (y1 - y0) <= 3 * (x1 - x0) and _inside(g.boxes[0], scene.size)
    r1 = random_box(vlm, scene, question, size_like=gt, seed=3)
    r2 = random_box(vlm, scene, question, size_like=gt, seed=3)
    r3 = random_box(vlm, scene, question, size_like=gt, seed=4)
    assert r1.boxes == r2.boxes and r1.boxes != r3.boxes
    b = r1.boxes[0]
    assert (b[2] - b[0], b[3] - b[1]) == (50.0, 40.0) and _inside(b, scene.size)
    f = random_box(vlm, scene, question, size_like=0.25, seed=0)
    b = f.boxes[0]
    assert (b[2] - b[0], b[3] - b[1]) == (120.0, 80.0)
    with pytest.raises(ValueError):
        random_box(vlm, scene, question, size_like=1.5)
    with pytest.raises(ValueError):
        oracle(vlm, scene, question, [])


def test_pure_grad_encodes_the_original_once_per_gradient(vlm, scene, question):
    """Two gradients (question, generic prompt) need two encodings of the original; the
    answer reuses the first one's embeddings and encodes only the crop."""
    g = vicrop(vlm, scene, question, variant="pure-grad")
    assert g.cost.images_encoded == 3 and g.cost.backward == 2
