"""The ipywidgets explorer, driven without a browser: set widget values, check that the
grounding, the map, the boxes and the picture follow.

Runs on the random-init reference model of conftest.py. That model's maps decay with the
token's position (the first rows of the grid dominate), so the settings that need several
components use the first decoder layer only, where the map has more structure.
"""
from __future__ import annotations

import datetime
import html
import io

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

pytest.importorskip("ipywidgets")

import egg  # noqa: E402
from egg.figures import method as viz  # noqa: E402
from egg.figures.explorer import Explorer  # noqa: E402


@pytest.fixture(scope="module")
def ex(vlm):
    # no zoom iteration and short answers by default: each redraw stays cheap
    return Explorer(vlm, family="text", index=0, iterations=0, max_new_tokens=2)


def _reset(ex, **values):
    """Back to item text[0] and known control values, with one redraw (``Explorer.set``)."""
    defaults = dict(family="text", index=0, objective="entropy", layer=ex.layer.max, sigma=1.5, threshold="elbow",
                    k=2, iterations=0, stopping="spatial-entropy")
    defaults.update(values)
    n = ex.updates
    ex.set(**defaults)
    assert ex.updates <= n + 1
    assert ex.item is not None and ex.image is ex.item.image
    if "question" not in values:
        assert ex.question.value == ex.item.question
    assert ex.error is None
    for name, v in defaults.items():
        assert getattr(ex, name).value == v


def test_initial_state(ex):
    item = egg.bench.item("text", "test", 0)
    assert ex.item is not None and ex.item.question == item.question
    assert ex.question.value == item.question
    assert ex.image.size == item.image.size
    g = ex.grounding
    assert isinstance(g, egg.Grounding) and g.question == item.question
    assert g.trace[0].maps and g.trace[0].maps[0].shape == (8, 8)
    assert ex.figure is not None and len(ex.figure.axes) >= 6
    assert ex.png.startswith(b"\x89PNG") and ex.view.value == ex.png
    assert ex.before is not None
    assert html.escape(g.answer) in ex.status.value and html.escape(ex.before) in ex.status.value


def test_answer_matches_ground_with_the_controls(ex, vlm):
    _reset(ex)
    assert ex.params()["num_layers"] is None  # layer slider at its max = the full, unmodified model
    g = egg.ground(vlm, ex.image, ex.question.value, **ex.params())
    assert ex.grounding.answer == g.answer
    assert ex.grounding.boxes == g.boxes
    assert ex.before == egg.answer(vlm, ex.image, ex.question.value, max_new_tokens=ex.max_new_tokens)


def test_sigma_changes_smoothed_map_not_raw(ex):
    _reset(ex)
    s1 = viz.steps_for(ex.grounding, 0)
    png1, n = ex.png, ex.updates
    ex.sigma.value = 3.0
    assert ex.updates == n + 1, "moving the sigma slider must redraw once"
    assert ex.grounding.params["sigma"] == 3.0
    s2 = viz.steps_for(ex.grounding, 0)
    np.testing.assert_allclose(s1.raw, s2.raw)  # the map itself does not depend on sigma
    assert not np.allclose(s1.smoothed, s2.smoothed)
    assert s2.smoothed.std() < s1.smoothed.std()  # wider Gaussian, flatter map
    assert ex.png != png1
    titles = [a.get_title() for a in ex.figure.axes]
    assert any("sigma = 3" in t for t in titles), titles


def test_k_changes_number_of_boxes(ex):
    # first decoder layer, no smoothing, top-10% threshold: several components
    _reset(ex, layer=1, sigma=0.0, threshold="top-percent", k=1)
    steps = viz.steps_for(ex.grounding, 0)
    assert len(steps.regions) >= 3, f"setup: want >= 3 components, got {len(steps.regions)}"
    assert len(ex.grounding.trace[0].boxes) == 1
    ex.k.value = 3
    assert ex.grounding.params["k"] == 3
    assert len(ex.grounding.trace[0].boxes) == 3
    # the state-0 boxes are the top-3 components, ranked by raw mass
    masses = ex.grounding.trace[0].masses
    assert masses == sorted(masses, reverse=True)
    np.testing.assert_allclose(masses, [r.mass for r in viz.steps_for(ex.grounding, 0).regions[:3]])


def test_threshold_changes_cut(ex):
    _reset(ex, layer=1)
    t_elbow = viz.steps_for(ex.grounding, 0)
    ex.threshold.value = "top-percent"
    t_top = viz.steps_for(ex.grounding, 0)
    assert ex.grounding.params["threshold"] == "top-percent"
    assert t_top.threshold_name == "top-percent"
    assert t_top.threshold != t_elbow.threshold
    # top-percent keeps at most ceil(10%) of the cells
    assert (t_top.smoothed > t_top.threshold).sum() <= int(np.ceil(0.1 * t_top.raw.size))


def test_objective_and_layer_change_the_map(ex):
    _reset(ex)
    m_entropy = ex.grounding.trace[0].maps[0]
    ex.objective.value = "log_max_prob"
    assert ex.grounding.params["objective"] == "log_max_prob"
    m_conf = ex.grounding.trace[0].maps[0]
    assert not np.allclose(m_entropy / m_entropy.max(), m_conf / m_conf.max())
    ex.set(objective="entropy", layer=1)
    assert ex.grounding.params["num_layers"] == 1 and ex.grounding.params["objective"] == "entropy"
    m_l1 = ex.grounding.trace[0].maps[0]
    assert not np.allclose(m_entropy / m_entropy.max(), m_l1 / m_l1.max())
    n = ex.updates
    ex.set(objective="entropy", layer=1)
    assert ex.updates == n, "setting the same values again must not recompute"


@pytest.mark.slow
def test_iterations_and_stopping(ex):
    _reset(ex, stopping="fixed", iterations=0)
    g0 = ex.grounding
    assert len(g0.trace) == 1 and g0.best_index == 0 and g0.crops == []
    assert g0.cost.backward == 1  # the original's map (its proposals are the evidence boxes)
    ex.iterations.value = 1
    g1 = ex.grounding
    assert len(g1.trace) == 2 and g1.best_index == 1
    assert g1.crops == g1.trace[0].boxes, "one fixed iteration answers with the original's proposals"
    assert g1.cost.backward == 1  # the last state's map is not needed by a fixed rule
    assert len(ex.figure.axes) >= 5  # crops + spatial-entropy panel
    ex.set(layer=1, iterations=2)  # the first layer's map does not converge at once
    g2 = ex.grounding
    assert g2.params["max_iterations"] == 2
    assert len(g2.trace) == 3 or (len(g2.trace) == 2 and g2.params["converged"])
    ex.stopping.value = "spatial-entropy"
    assert ex.grounding.params["stopping"] == "spatial-entropy"
    assert len(ex.grounding.trace) <= 3


@pytest.mark.slow
def test_item_picker_changes_image_and_question(ex):
    _reset(ex)
    img0, q0 = ex.image, ex.question.value
    ex.index.value = 3
    item = egg.bench.item("text", "test", 3)
    assert ex.item.meta["index"] == 3
    assert ex.question.value == item.question
    assert ex.grounding.question == item.question
    assert ex.image.size == item.image.size
    assert ex.image.size != img0.size or not np.array_equal(np.asarray(ex.image), np.asarray(img0))
    ex.family.value = "doc"
    assert ex.item.family == "doc" and ex.grounding.question == egg.bench.item("doc", "test", 3).question
    assert ex.question.value != q0 or ex.item.family == "doc"
    _reset(ex)
    assert ex.question.value == q0


def test_question_box(ex, vlm):
    _reset(ex)
    n = ex.updates
    ex.question.value = "what colour is the sign ?"
    assert ex.updates == n + 1
    assert ex.grounding.question == "what colour is the sign ?"
    assert ex.before == egg.answer(vlm, ex.image, "what colour is the sign ?", max_new_tokens=ex.max_new_tokens)
    good = ex.grounding
    ex.question.value = "   "
    assert ex.error and "empty" in ex.error
    assert ex.grounding is good  # an invalid input keeps the last result
    assert "empty" in ex.status.value
    _reset(ex)  # reloading the item restores its question
    assert ex.grounding.question == ex.item.question


def test_upload(ex, scene):
    _reset(ex)
    buf = io.BytesIO()
    scene.save(buf, format="PNG")
    data = buf.getvalue()
    ex.upload.value = ({"name": "scene.png", "type": "image/png", "size": len(data), "content": memoryview(data),
                        "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)},)
    assert ex.item is None
    assert ex.image.size == scene.size
    assert np.array_equal(np.asarray(ex.image), np.asarray(scene.convert("RGB")))
    assert ex.grounding.image_size == scene.size
    assert all(0 <= b[0] < b[2] <= scene.size[0] and 0 <= b[1] < b[3] <= scene.size[1] for b in ex.grounding.boxes)
    ex.use_item.click()
    assert ex.item is not None and ex.image.size == egg.bench.item("text", "test", 0).image.size


def test_region_steps_match_extract_regions(ex):
    from egg.method.regions import extract_regions

    _reset(ex, layer=1)
    m = ex.grounding.trace[0].maps[0]
    for sigma in (0.0, 1.5):
        for th in ("elbow", "otsu", "top-percent"):
            st = viz.region_steps(m, sigma=sigma, threshold=th, k=2)
            ref = extract_regions(m, sigma=sigma, threshold=th, k=None)
            assert [r.box for r in st.regions] == [r.box for r in ref]
            assert [r.mass for r in st.regions] == [r.mass for r in ref]
            # labels: rank i+1 exactly on region i's cells
            for i, r in enumerate(ref):
                assert np.array_equal(st.labels == i + 1, r.mask)
            assert st.sorted_values[st.cut_index] >= st.threshold


def test_repr_and_widget_tree(ex):
    import ipywidgets as w

    assert isinstance(ex.ui, w.VBox)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "Explorer(text[0]" in repr(ex)


def test_describe_says_whether_egg_was_right_and_what_map_and_box_did(vlm):
    """The example's paragraph is computed from the item and the trace, so it cannot flatter."""
    from egg import bench
    from egg.figures import method as viz
    from egg.method.boxes import point_in_box
    from egg.method.regions import first_argmax_2d

    item = bench.item("text", "test", 0)
    g = egg_ground(vlm, item)
    text = viz.describe(g, before="zzz", item=item)
    right = bench.score("text", g.answer, item) >= 0.5
    assert f"EGG got this item {'right' if right else 'wrong'}." in text
    m, (x0, y0, x1, y1) = g.trace[0].maps[0], g.trace[0].map_boxes[0]
    r, c = first_argmax_2d(m)
    peak = (x0 + (c + 0.5) * (x1 - x0) / m.shape[1], y0 + (r + 0.5) * (y1 - y0) / m.shape[0])
    assert ("inside the evidence" in text) == point_in_box(peak, item.boxes[0])
    assert "% of the image" in text and "x the evidence" in text


def egg_ground(vlm, item):
    import egg

    return egg.ground(vlm, item.image, item.question)
