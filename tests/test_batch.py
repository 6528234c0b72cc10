"""ground_batch: B questions per pass, each result the single call's."""
from __future__ import annotations

import numpy as np
import pytest

import egg
from egg import synthetic as bench


@pytest.fixture(scope="module")
def items():
    return [bench.item(f, "test", i, 3) for f in ("text", "vstar", "doc", "info", "gqa") for i in range(2)]


def _same(a, b):
    assert a.answer == b.answer
    assert a.boxes == b.boxes
    assert a.best_index == b.best_index and len(a.trace) == len(b.trace)
    for ia, ib in zip(a.trace, b.trace):
        assert ia.crops == ib.crops and len(ia.maps) == len(ib.maps)
        for ma, mb in zip(ia.maps, ib.maps):
            np.testing.assert_allclose(mb, ma, rtol=1e-4, atol=1e-6 * max(1e-12, float(np.max(np.abs(ma)))))
        assert ia.entropy == pytest.approx(ib.entropy, rel=1e-4, abs=1e-6, nan_ok=True)  # NaN: an unmapped state


@pytest.mark.parametrize("stopping, kw", [("spatial-entropy", {}), ("confidence", {"max_iterations": 3}),
                                          ("fixed", {"fixed_n": 2})])
def test_ground_batch_equals_single_calls(vlm, items, stopping, kw):
    ims, qs = [it.image for it in items], [it.question for it in items]
    single = [egg.ground(vlm, im, q, stopping=stopping, **kw) for im, q in zip(ims, qs)]
    batch = egg.ground_batch(vlm, ims, qs, batch_size=4, stopping=stopping, **kw)  # 4 + 4 + 2
    assert len(batch) == len(items)
    for a, b in zip(single, batch):
        _same(a, b)
        assert b.cost.backward == a.cost.backward  # costs counted as a single call's
        assert b.cost.images_encoded == a.cost.images_encoded


def test_items_in_a_batch_stop_on_their_own_rule(vlm, items):
    ims, qs = [it.image for it in items], [it.question for it in items]
    batch = egg.ground_batch(vlm, ims, qs, batch_size=len(items), stopping="confidence", max_iterations=3)
    lengths = {len(g.trace) for g in batch}
    assert len(lengths) > 1, f"every item took {lengths} states: the test needs items that stop at different states"
    single = [egg.ground(vlm, im, q, stopping="confidence", max_iterations=3) for im, q in zip(ims, qs)]
    assert [len(g.trace) for g in batch] == [len(g.trace) for g in single]


def test_ground_batch_checks_its_arguments(vlm, items):
    im, q = items[0].image, items[0].question
    with pytest.raises(ValueError, match="one question per image"):
        egg.ground_batch(vlm, [im, im], [q])
    with pytest.raises(TypeError, match="no option"):
        egg.ground_batch(vlm, [im], [q], sigmaa=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        egg.ground_batch(vlm, [im], [q], batch_size=0)
    assert egg.ground_batch(vlm, [], []) == []
