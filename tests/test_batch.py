"""ground_batch: B questions per pass, each result the single call's."""
from __future__ import annotations

import numpy as np
import pytest

import egg
from egg import synthetic as bench
from egg.runs.store import read_lines


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
        for c in ("forward", "backward", "images_encoded", "generated_tokens"):  # counted as single calls
            assert getattr(b.cost, c) == getattr(a.cost, c), c


@pytest.mark.parametrize("variant", ["rel-att", "grad-att", "pure-grad"])
def test_vicrop_batch_equals_single_calls(vlm, items, variant):
    ims, qs = [it.image for it in items], [it.question for it in items]
    single = [egg.vicrop(vlm, im, q, variant=variant) for im, q in zip(ims, qs)]
    batch = egg.vicrop_batch(vlm, ims, qs, variant=variant, batch_size=4)
    for a, b in zip(single, batch):
        assert a.answer == b.answer and a.boxes == b.boxes
        np.testing.assert_allclose(b.trace[0].maps[0], a.trace[0].maps[0], rtol=1e-4,
                                   atol=1e-6 * max(1e-12, float(np.max(np.abs(a.trace[0].maps[0])))))
        for c in ("forward", "backward", "images_encoded", "generated_tokens"):
            assert getattr(b.cost, c) == getattr(a.cost, c), c


def test_shared_caches_encode_each_image_once_and_change_no_result(vlm, items):
    """A testbed runs EGG and every ViCrop variant on one item: with one cache per item shared by
    the calls, the later calls find the original's encoding (at least 4 fewer images encoded
    where no pixel gradient is needed), and every answer, box and map is the one of the calls run apart."""
    from egg.adapters import EmbeddingCache
    from egg.baselines import VARIANTS

    ims, qs = [it.image for it in items[:4]], [it.question for it in items[:4]]
    apart = [egg.ground_batch(vlm, ims, qs)] + [egg.vicrop_batch(vlm, ims, qs, variant=v) for v in VARIANTS]
    caches = [EmbeddingCache() for _ in ims]
    shared = [egg.ground_batch(vlm, ims, qs, caches=caches)] + [egg.vicrop_batch(vlm, ims, qs, variant=v, caches=caches)
                                                               for v in VARIANTS]
    for run_a, run_s in zip(apart, shared):
        for a, b in zip(run_a, run_s):
            _same(a, b)
    encoded = lambda runs: [sum(g.cost.images_encoded for g in run) for run in runs]
    assert encoded(shared)[0] == encoded(apart)[0]  # the first call encodes as before
    # rel-att and grad-att find the 4 originals encoded (and a crop, where an earlier call cut the
    # same); pure-grad needs its pixels' gradient twice
    e_s, e_a = encoded(shared), encoded(apart)
    assert e_s[1] <= e_a[1] - 4 and e_s[2] <= e_a[2] - 4 and e_s[3] == e_a[3], (e_s, e_a)
    with pytest.raises(ValueError, match="caches needs one entry per question: got 1 for 4"):
        egg.ground_batch(vlm, ims, qs, caches=caches[:1])


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


def test_batched_runs_write_the_single_calls_records_and_isolate_failures(vlm, tmp_path):
    """``runner.run(batch_size=...)``: the same records as one item at a time, in index order;
    an unreadable item and an item whose method raises inside a batch fail alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from egg.runs import runner
    from test_reliability import faulty_docvqa

    data = faulty_docvqa(tmp_path / "docvqa", 8)  # item 3 is not an image
    (f,) = list(data.rglob("*.parquet"))
    t = pq.read_table(f)
    qs = t.column("question").to_pylist()
    qs[5] = "what " * 600  # beyond the reference model's 512 positions: ground raises inside the batch
    pq.write_table(t.set_column(t.schema.get_field_index("question"), "question", pa.array(qs)), f)
    opts = {"max_iterations": 1, "max_new_tokens": 2}
    one = runner.run(vlm, "docvqa", method="egg", n=8, out=tmp_path / "one.jsonl", data=data, progress=False,
                     options=opts)
    many = runner.run(vlm, "docvqa", method="egg", n=8, out=tmp_path / "many.jsonl", data=data, progress=False,
                      options=opts, batch_size=3)
    assert list(many["index"]) == list(one["index"]) == [0, 1, 2, 4, 6, 7]
    for col in ("prediction", "score", "boxes", "iterations", "best_index", "forward", "backward", "images_encoded"):
        assert list(many[col]) == list(one[col]), col
    errors = {d["index"]: d["error"] for d in many.attrs["failures"]}
    assert sorted(errors) == [3, 5]
    assert "could not be read" in errors[3] and "context" in errors[5]
    assert len(read_lines(tmp_path / "many.jsonl")[0]) == 8
