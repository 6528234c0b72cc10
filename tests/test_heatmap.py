"""Grounding.heatmap (the map at image pixels), egg.figures.overlay, and a short repr."""
from __future__ import annotations

import numpy as np
import pytest

import egg
from egg.figures import overlay


@pytest.fixture(scope="module")
def grounding(vlm, scene, question):
    return egg.ground(vlm, scene, question, stopping="fixed", fixed_n=1)


def test_heatmap_is_the_map_at_image_pixels(grounding, scene):
    h = grounding.heatmap()
    assert h.shape == (scene.size[1], scene.size[0])
    assert h.min() >= 0 and h.max() == pytest.approx(1.0)
    m = grounding.trace[0].maps[0]
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    x0, y0, x1, y1 = grounding.trace[0].map_boxes[0]
    cy, cx = int(y0 + (r + 0.5) * (y1 - y0) / m.shape[0]), int(x0 + (c + 0.5) * (x1 - x0) / m.shape[1])
    assert h[cy, cx] > 0.8  # the hottest cell stays hot at its pixels
    small = grounding.heatmap(size=(50, 40))
    assert small.shape == (40, 50)
    with pytest.raises(ValueError, match="no map"):
        grounding.heatmap(state=1)  # a fixed rule's last state is never mapped


def test_overlay_blends_and_checks_shapes(grounding, scene):
    img = overlay(scene, grounding.heatmap(), alpha=0.4)
    assert img.size == scene.size and img.mode == "RGB"
    assert np.asarray(img).astype(int).sum() != np.asarray(scene.convert("RGB")).astype(int).sum()
    assert np.array_equal(np.asarray(overlay(scene, grounding.heatmap(), alpha=0.0)), np.asarray(scene.convert("RGB")))
    with pytest.raises(ValueError, match="does not match"):
        overlay(scene, np.zeros((3, 3)))


def test_repr_is_short(grounding):
    r = repr(grounding)
    assert len(r) < 300 and "answer=" in r and "array" not in r
