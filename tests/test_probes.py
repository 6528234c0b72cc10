"""The reference trainer's per-patch shape probe: its targets, how rendering attaches them, its loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from egg import synthetic as bench
from egg.reference import data as D
from egg.reference import train as T
from egg.reference.build import build_processor
from egg.reference.probes import OBJECT_FACT, AuxHeads, shape_targets
from egg.synthetic.core import SHAPES

GEOMETRY = "llava15-large-pope"


def _objects(item):
    return [(OBJECT_FACT.fullmatch(q).group(2), b) for q, a, b in item.facts if a == "yes" and OBJECT_FACT.fullmatch(q)]


def test_shape_targets_give_each_objects_cells_its_shape_and_nothing_elsewhere():
    """At the full view, the cell under each object's centre holds that object's shape, every
    labelled cell lies inside some object's box, and a crop of one object is labelled with its shape."""
    item = bench.item("pope", "train", 0, 1, GEOMETRY)
    W, H = item.image.size
    objs = _objects(item)
    assert len(objs) >= 3
    full = shape_targets(item, [(0, 0, W, H)], 336, 14).reshape(24, 24)
    for shape, b in objs:
        assert full[int((b[1] + b[3]) / 2 * 24 / H), int((b[0] + b[2]) / 2 * 24 / W)] == SHAPES.index(shape)
    for r, c in zip(*np.nonzero(full >= 0)):
        x, y = (c + 0.5) * W / 24, (r + 0.5) * H / 24
        assert any(b[0] - W / 24 <= x <= b[2] + W / 24 and b[1] - H / 24 <= y <= b[3] + H / 24 for _, b in objs)
    assert (full < 0).mean() > 0.5  # the background is not taught
    shape, b = objs[0]
    crop = shape_targets(item, [b], 336, 14)[0]
    assert set(crop[crop >= 0].tolist()) == {SHAPES.index(shape)} and (crop >= 0).mean() > 0.2


def test_shape_weight_renders_pope_with_shape_targets_and_leaves_other_jobs_as_they_were():
    def jobs(extra):
        cfg = T.config_from_args(["--preset", "llava15", "--geometry", GEOMETRY, "--items-per-family", "2"] + extra)
        return cfg, D.render_jobs(cfg, T.ReferenceConfig(**cfg.model))

    _, plain = jobs([])
    cfg, shaped = jobs(["--shape-weight", "1"])
    assert [j for j in shaped if j[0] != "pope"] == [j for j in plain if j[0] != "pope"]
    assert all("shapes" not in j[7] for j in plain)
    pope = next(j for j in shaped if j[0] == "pope")
    assert pope[7]["shapes"] is True
    convs, crops = D._render_chunk(pope)
    assert convs and crops
    first = bench.item("pope", "train", 0, 1, GEOMETRY)  # the job's first item: its examples come first
    n_crops = min(3, sum(D._is_read(a) for _, a, _ in first.facts))  # `reading_crops`' count for it
    for ex in convs[: pope[5]] + crops[:n_crops]:
        assert np.array_equal(ex.shapes, shape_targets(first, ex.views, 336, 14))
    for ex in convs + crops:
        assert ex.shapes.shape == (len(ex.images), 576) and len(ex.views) == len(ex.images)
    assert sum((ex.shapes >= 0).sum() for ex in convs) > 0
    # without the flag the same job renders the same images and no targets
    plain_convs, _ = D._render_chunk(next(j for j in plain if j[0] == "pope"))
    assert all(ex.shapes is None for ex in plain_convs)
    assert all(np.array_equal(np.asarray(a.images), np.asarray(b.images)) for a, b in zip(plain_convs, convs))

    # the collator carries them, -100 for an example without; the probe's loss reaches its head
    col = D.Collator(build_processor(T.ReferenceConfig(**cfg.model)))
    batch = col([convs[0], plain_convs[0]])
    n0 = len(convs[0].images)
    assert torch.equal(batch["shape_targets"][:n0], torch.from_numpy(convs[0].shapes))
    assert (batch["shape_targets"][n0:] == -100).all()
    aux = AuxHeads(16, 10, "cpu", 24, shapes=True)
    feats = torch.randn(len(batch["shape_targets"]), 576, 16)
    loss = aux.shape_loss(feats, batch["shape_targets"])
    loss.backward()
    assert loss.item() > 0 and aux.shape.weight.grad.abs().sum() > 0
    assert set(aux.state()) == {"colour", "read", "where", "shape"}
    assert set(AuxHeads(16, 10, "cpu", 24).state()) == {"colour", "read", "where"}
    assert aux.shape_loss(feats, torch.full_like(batch["shape_targets"], -100)).item() == 0


def test_the_object_pooled_shape_probe_reads_each_shapes_cells_pooled():
    """With shape_pool "object", one prediction per image and shape present, on that shape's cells
    pooled by max: features that say the shape in one of its cells only are read there; per patch
    they are not."""
    torch = pytest.importorskip("torch")
    targets = torch.full((2, 6), -100, dtype=torch.int8)
    targets[0, :3], targets[0, 4], targets[1, 1:3] = 2, 0, 2  # image 0: a shape-2 object and a shape-0 one
    feats = torch.zeros(2, 6, 5)
    feats[0, 0, 2] = feats[1, 2, 2] = feats[0, 4, 0] = 6.0  # one cell of each says its shape
    pooled = AuxHeads(5, 10, "cpu", 24, read_pool="max", shapes=True, shape_pool="object")
    patch = AuxHeads(5, 10, "cpu", 24, shapes=True)
    for aux in (pooled, patch):
        with torch.no_grad():
            aux.shape.weight.copy_(torch.eye(5))
            aux.shape.bias.zero_()
    assert pooled.shape_loss(feats, targets).item() < 0.02  # log(1 + 4 exp(-6)) for each of the three
    assert patch.shape_loss(feats, targets).item() > 0.5  # the other cells of each object are at chance
    # the mean pools the same cells: one cell of two or three says it, less sure, still above a blank map's
    mean = AuxHeads(5, 10, "cpu", 24, read_pool="mean", shapes=True, shape_pool="object")
    mean.shape.load_state_dict(pooled.shape.state_dict())
    assert 0.1 < mean.shape_loss(feats, targets).item() < mean.shape_loss(feats * 0, targets).item()
    with pytest.raises(ValueError, match="shape_pool"):
        AuxHeads(5, 10, "cpu", shape_pool="cell")


def test_shape_weight_without_the_auxiliary_heads_is_refused_before_any_work(tmp_path):
    cfg = T.config_from_args(["--preset", "llava15", "--shape-weight", "1", "--aux", "0", "--out", str(tmp_path / "m")])
    with pytest.raises(ValueError, match="shape_weight=1.0 needs the auxiliary heads"):
        T.train(cfg)
    assert not (tmp_path / "train_cache").exists()
