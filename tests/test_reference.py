"""The reference VLM's pieces: tokenizer, processor, the training data path."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

import numpy as np
import torch

from egg import bench
from egg.reference import build
from egg.reference import data as D
from egg.reference import train as T
from egg.reference.detail import detail_box
from egg.reference.look import look_loss


def test_tokenizer_round_trips_numbers_and_words(ref_processor):
    tok = ref_processor.tokenizer
    ids = tok("what is the value of the red field ? 47", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(tok(" 47", add_special_tokens=False)["input_ids"]) == "47"
    assert tok.convert_ids_to_tokens(tok("zebra", add_special_tokens=False)["input_ids"]) == ["<unk>"]


def test_benchmark_vocabulary_is_covered(ref_processor):
    """An out-of-vocabulary word would reach the model as <unk>: no question, answer or training
    fact of either geometry has one."""
    tok = ref_processor.tokenizer
    for fam, geometry in [(f, g) for f in bench.families() for g in ("v1", "llava15")]:
        for it in bench.load(fam, "val", n=5, geometry=geometry):
            texts = [it.question, *it.answers, *it.options, *(f"{q} {a or ''}" for q, a, _ in it.facts)]
            for t in texts:
                ids = tok(t, add_special_tokens=False)["input_ids"]
                assert tok.unk_token_id not in ids, t


def test_training_pixels_equal_processor_pixels(ref_processor):
    """Training bypasses the processor for speed; it must feed exactly what the processor makes."""
    it = bench.item("doc", "val", 0)
    W, H = it.image.size
    crop = (10, 20, 300, 200)
    S = ref_processor.image_processor.size["height"]
    ims = np.stack([D._resize(it.image, (0, 0, W, H), S), D._resize(it.image, crop, S)])
    batch = D.Collator(ref_processor)([D.Example(ims, [(it.question, it.answers[0])], "doc", "evidence")])
    ref = ref_processor.image_processor([it.image, it.image.crop(crop)], return_tensors="pt")["pixel_values"]
    assert torch.allclose(batch["pixel_values"], ref, atol=1e-5)


def test_collator_prompt_matches_processor_and_masks_answers(ref_processor):
    col = D.Collator(ref_processor)
    it = bench.item("text", "val", 1)
    ims = np.stack([D._resize(it.image, (0, 0, *it.image.size), ref_processor.image_processor.size["height"])])
    batch = col([D.Example(ims, [(it.question, "k"), ("where is the red sign ?", "top left")], "text", "full")])
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it.question}]}]
    prompt = ref_processor.apply_chat_template(msgs, add_generation_prompt=True)
    ref_ids = ref_processor(images=[it.image], text=prompt, return_tensors="pt")["input_ids"][0]
    assert torch.equal(batch["input_ids"][0, : len(ref_ids)], ref_ids)
    supervised = ref_processor.tokenizer.decode([t for t in batch["labels"][0].tolist() if t != -100])
    assert supervised.split() == ["k", "</s>", "top", "left", "</s>"]


def test_examples_cover_every_kind_and_crop_contains_evidence():
    it = bench.item("text", "train", 5)
    rng = np.random.default_rng(0)
    exs = D.examples_for(it, rng, 60, 64)
    assert {e.kind for e in exs} == set(D.KINDS)
    for _ in range(50):
        b = it.boxes[0]
        c = D.crop_around(b, it.image.size, rng)
        assert c[0] <= b[0] and c[1] <= b[1] and c[2] >= b[2] and c[3] >= b[3]


def test_square_crops_are_square_and_hold_the_box():
    """Square reading crops (as notebook 09's crop3x is cut) still land anywhere around the box; with
    `spread` 0 they are centred on it, and shifted inside the image where its edge is in the way."""
    it = bench.item("info", "train", 4)
    b, rng = it.boxes[0], np.random.default_rng(0)
    crops = [D.crop_around(b, it.image.size, rng, (1.0, 4.0), square=True) for _ in range(60)]
    for c in crops:
        assert c[0] <= b[0] and c[1] <= b[1] and c[2] >= b[2] and c[3] >= b[3]
        assert abs((c[2] - c[0]) - (c[3] - c[1])) <= 1
    assert len({c[:2] for c in crops}) > 30  # offsets vary
    box = (300, 200, 340, 230)  # far from every edge of an 800 x 600 image: centred to a pixel
    for c in (D.crop_around(box, (800, 600), rng, (2.0, 4.0), square=True, spread=0.0) for _ in range(20)):
        assert abs((c[0] + c[2]) - 640) <= 2 and abs((c[1] + c[3]) - 430) <= 2 and c[2] - c[0] >= 80
    edge = D.crop_around((5, 200, 45, 240), (800, 600), rng, (4.0, 4.0), square=True, spread=0.0)
    assert edge[0] == 0 and edge[2] - edge[0] == 160  # shifted inside, its side kept
    near = [D.crop_around(box, (800, 600), rng, (3.0, 3.0), square=True, spread=0.25) for _ in range(40)]
    assert max(abs((c[0] + c[2]) / 2 - 320) for c in near) <= 0.25 * 80 / 2 + 1  # within a quarter of the room


def test_exact_crops_are_the_oracle_box():
    """Some evidence crops are the box itself, made croppable exactly as the oracle makes it."""
    from egg.method.boxes import clamp_aspect

    it = bench.item("doc", "train", 2)
    b, rng = it.boxes[0], np.random.default_rng(0)
    crops = {D.crop_around(b, it.image.size, rng, exact_p=0.5) for _ in range(40)}
    assert tuple(int(v) for v in clamp_aspect(b, it.image.size)) in crops and len(crops) > 2


def test_window_view_keeps_inner_facts_with_window_relative_positions():
    it = bench.item("text", "train", 3)
    q, a, b = next(f for f in it.facts if f[1] is not None)
    rng = np.random.default_rng(1)
    for _ in range(20):
        ims, turns, win = D.window_view(it, b, rng, 96)
        assert ims.shape == (1, 96, 96, 3)
        assert (q, a, [b]) in turns  # the fact the window was taken around is always inside it
        assert win[0] <= b[0] and win[1] <= b[1] and win[2] >= b[2] and win[3] >= b[3]
        where = {t[0]: t for t in turns}[q.replace("what letter is on", "where is")]
        assert where[1] in {f"{r} {c}" for r in D.ROWS for c in D.COLS} and where[2] is None


def test_unreadable_details_are_asked_but_not_taught(ref_processor):
    """A detail shown below READABLE_PX in every image carries no loss; positions always do."""
    box = (100, 100, 120, 110)  # 20 x 10 px on a 1000 px canvas: 1 px high in a 96 px full view
    full, tight = (0, 0, 1000, 1000), (95, 95, 125, 115)
    assert D.shown_side(box, full, 96) < 1 and D.shown_side(box, tight, 96) > 40
    assert D.shown_side(box, (105, 95, 125, 115), 96) == 0  # the view cuts the box
    turns = [("what is the value of the red field ?", "4", [box]), ("where is the red field ?", "top left", None)]
    assert D.untaught(turns, [full], 96, 6.0) == (0,)
    assert D.untaught(turns, [full, tight], 96, 6.0) == ()
    col = D.Collator(ref_processor)
    ids, labels, _ = col.encode(1, [(q, a) for q, a, _ in turns], untrained=(0,))
    taught = ref_processor.tokenizer.decode([t for t in labels if t != -100])
    assert taught.split() == ["top", "left", "</s>"] and len(ids) == len(labels)
    # in the mixture: every untaught turn is a detail too small in each of its example's images
    it = bench.item("doc", "train", 4)
    exs = D.examples_for(it, np.random.default_rng(0), 40, 96)
    assert any(e.untrained for e in exs) and any(not e.untrained for e in exs)
    assert all(not e.untrained for e in D.examples_for(it, np.random.default_rng(0), 40, 96, readable_px=0))


def test_a_two_ring_comparison_is_taught_only_where_both_shapes_are_readable():
    """vstar's "are the shapes the same ?" answers yes or no, but is read off two details: drawn
    for a token grid it is untaught in a full view alone (taught, every model said "yes"), and
    taught where a view shows both rings large enough."""
    it = next(i for i in bench.load("vstar", "train", 30, geometry="llava15") if i.multi_evidence)
    assert it.meta["compares"] and "compares" not in next(
        i for i in bench.load("vstar", "train", 30) if i.multi_evidence).meta  # v1 items unchanged
    exs = [e for e in D.examples_for(it, np.random.default_rng(0), 60, 336, readable_px=48.0)
           if e.turns[0][0] == it.question]
    alone = [e for e in exs if len(e.images) == 1]
    both = [e for e in exs if e.kind == "two"]
    assert alone and all(0 in e.untrained for e in alone)
    assert both and any(0 not in e.untrained for e in both)


def test_look_tokens_are_the_patches_under_the_box_in_every_view():
    full, crop = (0, 0, 960, 960), (100, 100, 220, 220)
    box = (130, 130, 160, 150)  # full view (x0.1): 13-16 x 13-15 px -> patch (1, 1) only
    assert D.look_tokens([box], [full], 96, 12) == (9,)
    # in the crop (x0.8): 24-48 x 24-40 px -> rows 2-3, cols 2-3, offset by the first image's 64
    assert D.look_tokens([box], [full, crop], 96, 12) == (9, 64 + 18, 64 + 19, 64 + 26, 64 + 27)
    assert D.look_tokens([(500, 500, 510, 510)], [crop], 96, 12) == ()  # outside the crop
    assert D.look_tokens([(0, 0, 960, 960)], [full], 96, 12) == tuple(range(64))


def test_examples_say_where_the_named_object_is(ref_processor):
    it = bench.item("text", "train", 5)
    exs = D.examples_for(it, np.random.default_rng(0), 40, 96)
    where = {q: b for q, _, b in it.facts}
    n_looks = 0
    for ex in exs:
        assert len(ex.looks) == len(ex.turns)
        for (q, a), toks in zip(ex.turns, ex.looks):
            assert toks  # the named object is in the full view, or in the window taken around it
            if ex.kind != "window":  # in the full view: the patch under the named object's centre
                b, (W, H) = where[q], it.image.size
                cx, cy = (b[0] + b[2]) / 2 * 8 / W, (b[1] + b[3]) / 2 * 8 / H
                assert int(cy) * 8 + int(cx) in toks
                n_looks += 1
    assert n_looks > 20
    # the collator's query is the position whose logits predict each answer's first token
    col = D.Collator(ref_processor)
    ex = next(e for e in exs if len(e.turns) >= 3)
    looked = [(a, toks) for (_, a), toks in zip(ex.turns, ex.looks)]
    batch = col([ex])
    qpos = batch["look_q"][:, 1]
    assert len(qpos) == len(looked) and bool((batch["labels"][0, qpos] == -100).all())
    first = [ref_processor.tokenizer(" " + a, add_special_tokens=False)["input_ids"][0] for a, _ in looked]
    assert batch["input_ids"][0, qpos + 1].tolist() == first
    assert batch["look_at"].shape == (len(looked), len(ex.images) * 64)
    assert [tuple(r.nonzero().flatten().tolist()) for r in batch["look_at"]] == [t for _, t in looked]


def test_look_loss_is_the_log_share_of_visual_attention_on_the_object():
    L, n_vis = 6, 4
    is_vis = torch.tensor([[False, True, True, True, True, False]])
    look_q, look_at = torch.tensor([[0, 5]]), torch.tensor([[True, False, False, False]])
    on_obj, spread = torch.zeros(1, 2, L, L), torch.zeros(1, 2, L, L)
    on_obj[0, :, 5, 1] = 0.5  # all visual attention on the object, the rest on text
    on_obj[0, :, 5, 5] = 0.5
    spread[0, :, 5, 1:5] = 0.25
    layers = lambda a: (torch.zeros_like(a), a, a)  # noqa: E731 - the first layer is never supervised
    assert look_loss(layers(on_obj), is_vis, look_q, look_at).item() < 1e-5
    assert abs(look_loss(layers(spread), is_vis, look_q, look_at).item() - np.log(n_vis)) < 1e-5
    mixed = on_obj.clone()
    mixed[0, 1] = spread[0, 1]  # head 1 looks elsewhere: only counted when supervised
    assert look_loss(layers(mixed), is_vis, look_q, look_at, heads=1).item() < 1e-5
    assert look_loss(layers(mixed), is_vis, look_q, look_at).item() > 0.5
    with pytest.raises(ValueError, match="2 layers or more"):  # a one-layer decoder has nothing to supervise
        look_loss((on_obj,), is_vis, look_q, look_at)


def test_the_attention_losss_rows_equal_eager_attentions_and_keep_the_fast_kernel(ref_cfg, ref_processor):
    """The trainer's attention loss reads a few rows of every layer's attention weights. It now
    records queries and keys under SDPA (``egg.reference.look``) instead of running eager
    attention: the rows, the loss and its gradient equal eager attention's, and the model's
    loss is the one of its plain SDPA pass."""
    from egg.reference.build import build_model
    from egg.reference.look import attention_rows, capturing, register

    it = bench.item("text", "train", 5)
    exs = D.examples_for(it, np.random.default_rng(0), 40, 96)
    two = [e for e in exs if len(e.turns) >= 2]
    batch = D.Collator(ref_processor)([e for e in two if len(e.images) == len(two[0].images)][:3])  # one count a batch
    assert len(batch["look_q"]) >= 3
    model = build_model(ref_cfg, ref_processor.tokenizer, seed=0)
    lm = model.model.language_model
    emb = model.get_input_embeddings()(batch["input_ids"]).detach()
    is_vis = batch["input_ids"] == model.config.image_token_id

    def loss_and_grad(impl):
        lm.set_attn_implementation(impl)
        x = emb.clone().requires_grad_(True)
        if impl == "eager":
            out = model(inputs_embeds=x, attention_mask=batch["attention_mask"], output_attentions=True)
            rows = [a[batch["look_q"][:, 0], :, batch["look_q"][:, 1]] for a in out.attentions]
            lf = look_loss(out.attentions, is_vis, batch["look_q"], batch["look_at"])
        else:
            with capturing() as captured:
                out = model(inputs_embeds=x)
            assert len(captured) == ref_cfg.text_layers
            rows = attention_rows(captured, batch["look_q"])
            lf = look_loss(rows, is_vis, batch["look_q"], batch["look_at"])
        return out.logits, rows, lf, torch.autograd.grad(lf, x)[0]

    e_logits, e_rows, e_loss, e_grad = loss_and_grad("eager")
    r_logits, r_rows, r_loss, r_grad = loss_and_grad(register())
    lm.set_attn_implementation("sdpa")
    s_logits = model(inputs_embeds=emb).logits
    for a, b in zip(e_rows, r_rows):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e_loss, r_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e_grad, r_grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(r_logits, s_logits, rtol=0, atol=0)  # the same SDPA pass
    assert float(e_loss.detach()) > 0 and float(e_grad.abs().sum()) > 0
    # the trainer's own step, as `train` sets it up for either setting of `look_rows`
    steps = {}
    for rows in (0, 1):
        lm.set_attn_implementation(register() if rows else "eager")
        steps[rows] = T.lm_step(model, batch, None, T.TrainConfig(look=3.0, look_rows=rows))
    lm.set_attn_implementation("sdpa")
    assert steps[0][1]["look"] == pytest.approx(steps[1][1]["look"], rel=1e-5) and steps[0][1]["look"] > 0
    torch.testing.assert_close(steps[0][0], steps[1][0], rtol=1e-5, atol=1e-6)


def test_position_probe_targets_are_each_tokens_row_and_column():
    g, dim = 8, 16
    aux = T.AuxHeads(dim, vocab=10, device="cpu", grid=g)
    cell = torch.arange(g * g)
    feats = torch.cat([torch.eye(g)[cell // g], torch.eye(g)[cell % g]], -1)[None].repeat(3, 1, 1)  # (3, 64, 16)
    with torch.no_grad():
        aux.where.weight.zero_()
        aux.where.bias.zero_()
        aux.where.weight[:g, :g] = 30 * torch.eye(g)  # row logits read the row one-hot
        aux.where.weight[g:, g:] = 30 * torch.eye(g)  # column logits read the column one-hot
    colour = torch.zeros(3, g * g, len(D.COLOURS))
    read = torch.full((3, 2), -100)
    assert aux.loss(feats, colour, read)[2].item() < 1e-6
    assert aux.loss(feats.flip(1), colour, read)[2].item() > 5  # tokens in the wrong places


def test_colour_targets_stored_while_rendering_equal_the_computed_ones(ref_processor):
    """Rendering stores each example's colour targets as bits; a batch of such examples must
    carry exactly the targets computed from its pixels."""
    S = ref_processor.image_processor.size["height"]
    exs = D.examples_for(bench.item("pope", "train", 0), np.random.default_rng(0), 6, S)
    col = D.Collator(ref_processor)
    plain = col(exs)
    for ex in exs:
        ex.colours = D.pack_colours(ex.images, col.patch)
    stored = col(exs)
    assert plain["colour_targets"].sum() > 0
    assert torch.equal(plain["colour_targets"], stored["colour_targets"])


RENDER_AFTER_THE_POOL_STARTED = '''
import torch
torch.set_num_threads(2)
(torch.randn(800, 800) @ torch.randn(800, 800)).sum()  # the parent's OpenMP pool is running
from egg.reference.config import TrainConfig, PRESETS
from egg.reference.build import ReferenceConfig
from egg.reference.data import render_dataset
from egg.reference.data import _render_chunk, render_jobs
p = dict(PRESETS["llava15"]); m = p.pop("model")
cfg = TrainConfig(**{**p, "items_per_family": 2, "workers": 2})
_render_chunk(render_jobs(cfg, ReferenceConfig(**m))[0])  # rendered in this process first, as a test may
assert torch.get_num_threads() == 2  # which leaves its threads alone
data, reads = render_dataset(cfg, ReferenceConfig(**m), print)
assert all(ex.colours is not None for ex in data + reads)
print("rendered", len(data))
'''


def test_rendering_workers_do_not_hang_in_the_parents_thread_pool():
    """Forked render workers compute colour targets with torch; entering the OpenMP pool their
    parent started hangs them (it did, at 0% CPU), unless they run on one thread. They did again
    when the parent had rendered a chunk itself first (a test did): its collator was inherited, and
    with it the sign that the worker's threads were set (stop 60)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", RENDER_AFTER_THE_POOL_STARTED], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "rendered" in out.stdout, out.stderr[-2000:]


def test_patch_colours_finds_a_red_patch():
    img = np.full((1, 64, 64, 3), 230, dtype=np.uint8)
    img[0, 8:16, 24:32] = (220, 30, 30)  # patch row 1, col 3
    lab = D.patch_colours(img, 8).reshape(8, 8, -1)
    red = list(D.COLOURS).index("red")
    assert lab[1, 3, red] == 1 and lab[:, :, red].sum() == 1 and lab.sum() == 1
    img[0, 0, 0] = (220, 30, 30)  # one red pixel: counted, but below the 2 that make a patch positive
    pixels = D.patch_colour_pixels(img, 8).reshape(8, 8, -1)
    assert pixels[1, 3, red] == 64 and pixels[0, 0, red] == 1 and pixels.sum() == 65
    assert D.patch_colours(img, 8).sum() == 1


def test_colour_weight_counts_a_present_colour_that_many_times():
    """At 24x24 a full view's colour targets are 0.5-2% present; `colour_weight` is BCE's pos_weight,
    so with weight w a miss on a present colour costs w times the plain loss's, and 1 is the plain loss."""
    import torch.nn.functional as F

    feats = torch.randn(2, 64, 16)
    colour = (torch.rand(2, 64, len(D.COLOURS)) < 0.02).float()
    read = torch.full((2, 2), -100)
    plain, weighted = T.AuxHeads(16, 10, "cpu"), T.AuxHeads(16, 10, "cpu", colour_weight=10.0)
    weighted.colour.load_state_dict(plain.colour.state_dict())
    logits = plain.colour(feats)
    pos = F.binary_cross_entropy_with_logits(logits, colour, weight=colour, reduction="sum")
    neg = F.binary_cross_entropy_with_logits(logits, colour, weight=1 - colour, reduction="sum")
    n = colour.numel()
    assert plain.loss(feats, colour, read)[0].item() == pytest.approx((pos + neg).item() / n, rel=1e-5)
    assert weighted.loss(feats, colour, read)[0].item() == pytest.approx((10 * pos + neg).item() / n, rel=1e-5)
    assert "colour_weight" in T.WARMUP_KEYS
    with pytest.raises(ValueError, match="colour_weight"):
        T.AuxHeads(16, 10, "cpu", colour_weight=0)



def test_standardise_projector_makes_the_decoder_see_standardised_features():
    """The projector's first layer, folded, maps the tower's features as the original layer maps
    their standardised values; so images that differ by 2% of a shared offset (run 11) reach
    the decoder as different as their features are spread."""
    from egg.reference.build import ReferenceConfig, build_model, build_processor, standardise_projector

    cfg = ReferenceConfig(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, text_hidden=32,
                          text_layers=1, position_init="sincos")
    model = build_model(cfg, build_processor(cfg).tokenizer)
    last_fc = [m for n, m in model.model.vision_tower.named_modules() if n.endswith("mlp.fc2")][-1]
    with torch.no_grad():  # a tower whose features share a large offset
        last_fc.bias.add_(300.0)
    pix = torch.randn(6, 3, 56, 56)
    feats = model.model.vision_tower(pix, output_hidden_states=True).hidden_states[-1][:, 1:].detach()
    lin = model.model.multi_modal_projector.linear_1
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    shift, spread = standardise_projector(model, pix)
    flat = feats.reshape(-1, feats.shape[-1])
    z = (flat - flat.mean(0)) / flat.std(0)
    with torch.no_grad():
        out = lin(flat)
    assert shift > 300 and torch.allclose(out, z @ w.T + b, atol=1e-3)
    assert abs(float(out.mean()) - float(b.mean())) < 0.5  # the offset no longer dominates


@pytest.mark.slow
def test_training_with_max_steps_is_reproducible(tmp_path):
    """A tiny run of the real training loop twice: same seed and step count, same weights;
    a third run without the position probe differs."""
    from safetensors.torch import load_file

    kw = dict(items_per_family=4, examples_per_item=2, batch_size=4, epochs=1, vision_steps=2, max_steps=3,
              eval_items=1, eval_every=1000, workers=1, threads=2)
    outs = [T.train(T.TrainConfig(out=str(tmp_path / f"run{i}"), position=p, **kw))
            for i, p in enumerate((0.5, 0.5, 0.0))]
    a, b, c = (load_file(str(o / "model.safetensors")) for o in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # without the row/column probe the vision tower is trained differently
    vision = [k for k in a if k.startswith("vision_tower.")]
    assert vision and any(not torch.equal(a[k], c[k]) for k in vision)
    log = (outs[0] / "training_log.json").read_text()
    assert json.loads((outs[0] / "config.json").read_text())["egg_geometry"] == "v1"  # bench.geometry_for
    assert '"steps": 3' in log and (tmp_path / "train_cache" / "train.log").is_file()


def test_a_run_ending_on_a_periodic_eval_logs_it_once_as_the_final_one(tmp_path):
    """The final eval is not run again at the step of the last periodic one (the record's evals,
    one per step, are what notebook 09 pivots by step)."""
    out = T.train(T.TrainConfig(out=str(tmp_path / "run"), items_per_family=4, examples_per_item=2, batch_size=4,
                                epochs=1, vision_steps=2, max_steps=2, eval_items=1, eval_every=2, workers=1, threads=2))
    record = json.loads((out / "training_log.json").read_text())
    assert [e["step"] for e in record["eval"]] == [2] and record["finished"]
    assert "final eval " in (tmp_path / "train_cache" / "train.log").read_text()


def test_packed_images_round_trip_and_cost_little_memory():
    it = bench.item("text", "train", 0, geometry="llava15")
    ims = np.stack([D._resize(it.image, (0, 0, *it.image.size), 336)] * 2)
    p = D.Packed(ims)
    assert len(p) == 2 and np.array_equal(np.asarray(p), ims)
    assert len(p.blob) < ims.nbytes / 5


def test_positions_as_tenths_tell_close_objects_apart():
    assert D.position_words((0, 0, 10, 10), (100, 100)) == "top left"
    assert D.position_words((0, 0, 10, 10), (100, 100), digits=True) == "0 0"
    assert D.position_words((30, 60, 40, 80), (100, 100), digits=True) == "3 7"
    assert D.position_words((95, 95, 100, 100), (100, 100), digits=True) == "9 9"


def test_training_command_line_takes_a_preset_and_overrides_it():
    c = T.config_from_args(["--preset", "llava15", "--max-steps", "10", "--model-json", '{"text_layers": 2}'])
    assert (c.geometry, c.look, c.max_steps) == ("llava15", 0.0, 10)
    assert c.model["image_size"] == 336 and c.model["patch_size"] == 14 and c.model["text_layers"] == 2
    # a flag given at its default value still overrides the preset
    assert T.config_from_args(["--preset", "llava15", "--look", "3.0"]).look == 3.0
    assert T.config_from_args([]) == T.TrainConfig()


def test_sincos_positions_start_each_patch_with_its_row_and_column():
    from egg.reference.build import ReferenceConfig, build_model, build_processor, sincos_positions

    t = sincos_positions(24, 64)
    assert t.shape == (577, 64) and torch.all(t[0] == 0)
    rows = t[1:].view(24, 24, 64)
    assert torch.allclose(rows[3, 0, :32], rows[3, 17, :32])  # same row: same first half
    assert torch.allclose(rows[0, 5, 32:], rows[20, 5, 32:])  # same column: same second half
    assert torch.cdist(t[1:], t[1:]).add(torch.eye(576) * 9).min() > 0.05  # every patch distinct
    cfg = ReferenceConfig(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, text_hidden=32,
                          text_layers=1, position_init="sincos")
    model = build_model(cfg, build_processor(cfg).tokenizer)
    pos = [m for n, m in model.model.vision_tower.named_modules() if n.endswith("embeddings")][0].position_embedding
    assert torch.equal(pos.weight.detach(), sincos_positions(4, 32))
    with pytest.raises(ValueError, match="position_init"):
        build_model(ReferenceConfig(position_init="learned"), build_processor(cfg).tokenizer)


@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """An uninterrupted tiny run, then one stopped (as by Ctrl-C) during its first evaluation, inside
    the reading stage, and resumed: it loses no step, evaluates where it stopped, and ends with the same
    weights and evaluations. The resumed run also reuses the first run's cached vision warm-up."""
    from safetensors.torch import load_file

    kw = dict(items_per_family=4, examples_per_item=2, batch_size=4, epochs=1, vision_steps=2, max_steps=4,
              eval_items=1, eval_every=2, workers=1, threads=2, freeze_vision=1, read_steps=3, read_full=0.25)
    full = T.train(T.TrainConfig(out=str(tmp_path / "a" / "ref"), **kw))
    evals = []
    real_eval = T.quick_eval

    def interrupted(*a, **k):
        evals.append(1)
        if len(evals) == 1:
            raise KeyboardInterrupt
        return real_eval(*a, **k)

    monkeypatch.setattr(T, "quick_eval", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.train(T.TrainConfig(out=str(tmp_path / "b" / "ref"), **kw))
    assert (tmp_path / "b" / "train_cache" / "resume.pt").is_file()
    monkeypatch.setattr(T, "quick_eval", real_eval)
    # --stop-step 2 of the same 4-step schedule: step 2's weights, as the interrupted run kept them, saved as finished
    stopped = T.train(T.TrainConfig(out=str(tmp_path / "c" / "ref"), stop_step=2, **kw))
    record = json.loads((stopped / "training_log.json").read_text())
    assert record["finished"] and record["steps"] == 2 and "stopped at step 2/4" in (stopped.parent / "train_cache" / "train.log").read_text()
    kept = torch.load(tmp_path / "b" / "train_cache" / "resume.pt", weights_only=False)
    assert kept["step"] == 2
    from transformers import LlavaForConditionalGeneration
    w = LlavaForConditionalGeneration.from_pretrained(stopped).state_dict()
    assert w.keys() == kept["model"].keys() and all(torch.equal(w[k], kept["model"][k]) for k in w)
    with pytest.raises(SystemExit, match="--stop-step 5: this run plans 4"):
        T.train(T.TrainConfig(out=str(tmp_path / "d" / "ref"), stop_step=5, **kw))
    resumed = T.train(T.TrainConfig(out=str(tmp_path / "b" / "ref"), resume=1, **kw))
    log = (tmp_path / "b" / "train_cache" / "train.log").read_text()
    assert "resumed from" in log and "at step 2/4" in log and "vision warm-up loaded" in log
    steps = lambda d: [e["step"] for e in json.loads((d / "training_log.json").read_text())["eval"]]
    assert steps(full) == steps(resumed) == [2, 4]
    # each process that trained says what it ran on, from which step
    ran_on = lambda d: json.loads((d / "training_log.json").read_text())["environment"]
    assert [e["from_step"] for e in ran_on(full)] == [0] and [e["from_step"] for e in ran_on(resumed)] == [0, 2]
    assert ran_on(resumed)[-1]["torch"] == torch.__version__ and ran_on(resumed)[-1]["cores"] == os.cpu_count()
    assert all(e["commit"] is None or len(e["commit"]) == 40 for e in ran_on(resumed))
    # interrupted inside it, full views among its crops: the stage's plan is rebuilt the same
    assert "reading stage: 3 steps" in log and "1 of each batch's 4 full-view conversations" in log
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # frozen in the decoder steps: the tower is the warm-up's, so the resumed model's equals its own cache
    warm = {k.split("vision_tower.", 1)[1]: v for k, v in
            torch.load(tmp_path / "b" / "train_cache" / "warmup.pt", weights_only=False)["model"].items()
            if "vision_tower." in k}
    tower = {k.split("vision_tower.", 1)[1]: v for k, v in b.items() if "vision_tower." in k}
    assert tower.keys() == warm.keys() and all(torch.equal(warm[k], tower[k]) for k in tower)
    assert not (tmp_path / "b" / "train_cache" / "resume.pt").exists()  # a finished run leaves no checkpoint


@pytest.mark.slow
def test_a_later_stage_continues_a_saved_model_on_the_full_view(tmp_path):
    """`init` starts from a finished model (no warm-up; its frozen tower stays as it was) and
    `full_steps` first trains on conversations about the full view alone, with the loss on where
    each answer attends; `train_only` changes only the parameters it names; `rewarm_steps` warms its
    tower up again first; a missing model or
    one of another shape is refused by name."""
    from safetensors.torch import load_file

    kw = dict(items_per_family=4, examples_per_item=2, batch_size=4, epochs=1, eval_items=1, workers=1, threads=2,
              freeze_vision=1)
    first = T.train(T.TrainConfig(out=str(tmp_path / "a" / "ref"), vision_steps=2, max_steps=2, **kw))
    later = T.train(T.TrainConfig(out=str(tmp_path / "b" / "ref"), init=str(first), aux=0, vision_steps=0, look=1.0,
                                  full_steps=3, max_steps=4, **kw))
    log = (tmp_path / "b" / "train_cache" / "train.log").read_text()
    assert "continuing" in log and "full-view stage: 3 steps" in log and "vision warm-up" not in log
    assert " bind text:" in log and " pope:" not in log.split(" bind ")[-1]
    record = json.loads((later / "training_log.json").read_text())
    assert record["continues"]["vision_steps"] == 2 and record["steps"] == 4
    ev = record["eval"][-1]
    assert set(ev["text"]) == {"base", "oracle", "locate", "by_kind", "kind_chance"}
    assert set(ev["pope"]) == {"base", "oracle", "locate"}  # pope names no object among others of its kind
    assert 0 < ev["text"]["kind_chance"] < 1
    a, b = load_file(str(first / "model.safetensors")), load_file(str(later / "model.safetensors"))
    tower = [k for k in a if "vision_tower." in k]
    assert tower and all(torch.equal(a[k], b[k]) for k in tower)
    assert any(not torch.equal(a[k], b[k]) for k in a if "language_model." in k)
    qk = T.train(T.TrainConfig(out=str(tmp_path / "d" / "ref"), init=str(first), aux=0, vision_steps=0, look=1.0,
                               max_steps=2, train_only=r"language_model.*self_attn\.(q|k)_proj", **kw))
    c = load_file(str(qk / "model.safetensors"))
    changed = {k for k in a if not torch.equal(a[k], c[k])}
    assert changed and all(re.search(r"self_attn\.(q|k)_proj", k) for k in changed)
    with pytest.raises(ValueError, match="matches no parameter name"):
        T.only_matching(torch.nn.Linear(2, 2), "nothing")
    # `rewarm_steps`: the saved tower warms up again (through the auxiliary heads), then stays frozen
    again = T.train(T.TrainConfig(out=str(tmp_path / "r" / "ref"), init=str(first), rewarm_steps=2, max_steps=1, **kw))
    assert "rewarm" in json.loads((again / "training_log.json").read_text())
    r = load_file(str(again / "model.safetensors"))
    assert not all(torch.equal(a[k], r[k]) for k in tower)
    with pytest.raises(ValueError, match="rewarm_steps=2 continues an --init model's tower"):
        T.train(T.TrainConfig(out=str(tmp_path / "c" / "ref"), rewarm_steps=2, **kw))
    with pytest.raises(SystemExit, match="no reference model saved there"):
        T.train(T.TrainConfig(out=str(tmp_path / "c" / "ref"), init=str(tmp_path / "nothing"), **kw))
    with pytest.raises(SystemExit, match="another shape"):
        T.train(T.TrainConfig(out=str(tmp_path / "c" / "ref"), init=str(first), model={"text_hidden": 64}, **kw))


@pytest.mark.slow
def test_a_new_decoder_starts_on_a_saved_models_tower_and_projector(tmp_path):
    """`init_vision` copies the tower and projector (no warm-up with `vision_steps` 0) into a model whose
    decoder may have another depth; a tower of another shape, or both `init` and `init_vision`, are refused."""
    from safetensors.torch import load_file

    kw = dict(items_per_family=4, examples_per_item=2, batch_size=4, epochs=1, eval_items=1, workers=1, threads=2,
              freeze_vision=1)
    first = T.train(T.TrainConfig(out=str(tmp_path / "a" / "ref"), vision_steps=2, max_steps=2, **kw))
    # lr 0: what the new model holds after its steps is what it started from
    new = T.train(T.TrainConfig(out=str(tmp_path / "b" / "ref"), init_vision=str(first), vision_steps=0, lr=0.0,
                                max_steps=2, model={"text_layers": 2}, **kw))
    log = (tmp_path / "b" / "train_cache" / "train.log").read_text()
    assert "a new decoder" in log and "vision warm-up" not in log and "standardised" not in log
    assert json.loads((new / "training_log.json").read_text())["vision_from"]["vision_steps"] == 2
    a, b = load_file(str(first / "model.safetensors")), load_file(str(new / "model.safetensors"))
    copied = [k for k in a if "vision_tower." in k or "multi_modal_projector." in k]
    assert copied and all(torch.equal(a[k], b[k]) for k in copied)
    assert any("layers.3." in k for k in a if "language_model." in k)  # the first model's 4 layers
    assert not any("layers.2." in k for k in b if "language_model." in k)  # the new one's two
    # with warm-up steps, the copied tower warms up further (full views among its crops) and the
    # projector is standardised again
    more = T.train(T.TrainConfig(out=str(tmp_path / "w" / "ref"), init_vision=str(first), vision_steps=2,
                                 warmup_full=0.5, max_steps=1, **kw))
    log = (tmp_path / "w" / "train_cache" / "train.log").read_text()
    assert "a new decoder" in log and "standardised" in log
    c = load_file(str(more / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in copied if "vision_tower." in k)
    with pytest.raises(SystemExit, match="another vision tower"):
        T.train(T.TrainConfig(out=str(tmp_path / "c" / "ref"), init_vision=str(first), model={"vision_hidden": 64},
                              **kw))
    with pytest.raises(SystemExit, match="give one of them"):
        T.train(T.TrainConfig(out=str(tmp_path / "c" / "ref"), init_vision=str(first), init=str(first), **kw))


def test_a_reading_stage_without_a_batch_of_crops_is_refused(tmp_path):
    """Fewer reading crops than a batch would make the stage's plan loop forever: refused by name."""
    cfg = T.TrainConfig(out=str(tmp_path / "ref"), items_per_family=1, examples_per_item=1, batch_size=64,
                        vision_steps=0, read_steps=1, max_steps=1, workers=1, threads=1)
    with pytest.raises(ValueError, match="read_steps needs batch_size=64 examples"):
        T.train(cfg)


def test_the_vision_warm_up_rate_decays_to_zero_only_when_asked():
    """A linear start over `vision_warmup` steps, then flat, or with `vision_decay` a cosine to 0;
    a cached warm-up is keyed on the choice."""
    flat = T.TrainConfig(vision_steps=1000, vision_warmup=100)
    cos = T.TrainConfig(vision_steps=1000, vision_warmup=100, vision_decay=1)
    assert T.vision_rate(flat, 0) == pytest.approx(0.01) and T.vision_rate(flat, 999) == 1.0
    assert T.vision_rate(cos, 99) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.099)))
    assert T.vision_rate(cos, 500) == pytest.approx(0.5) and T.vision_rate(cos, 1000) == pytest.approx(0.0)
    assert all(T.vision_rate(cos, s) >= T.vision_rate(cos, s + 1) for s in range(100, 1000))
    assert "vision_decay" in T.WARMUP_KEYS



def test_the_warm_up_mixes_in_full_views_only_when_asked(ref_cfg, ref_processor):
    """`warmup_full` puts that share of full views in each warm-up batch (colour and position
    targets, no reading target); without it the batches, and their random stream, are the crops'."""
    from egg.reference.build import build_model

    items = [bench.item(f, "train", i) for f in ("text", "doc") for i in range(3)]
    rng = np.random.default_rng(0)
    S = ref_cfg.image_size
    reads = [ex for it in items for ex in D.reading_crops(it, rng, 3, S)]
    full = [ex for it in items for ex in D.examples_for(it, rng, 8, S) if len(ex.images) == 1 and ex.kind == "full"]
    assert len(reads) >= 8 and len(full) >= 4

    class Recording(D.Collator):
        def __call__(self, batch):
            self.kinds.append([ex.kind for ex in batch])
            self.out.append(super().__call__(batch))
            return self.out[-1]

    def warm(share):
        col = Recording(ref_processor)
        col.kinds, col.out = [], []
        model = build_model(ref_cfg, ref_processor.tokenizer, seed=0)
        aux = T.AuxHeads(ref_cfg.text_hidden, len(ref_processor.tokenizer), "cpu")
        cfg = T.TrainConfig(vision_steps=3, batch_size=4, warmup_full=share)
        T.pretrain_vision(model, aux, reads, col, cfg, lambda _: None, full)
        return col

    half, none = warm(0.5), warm(0.0)
    assert all(k.count("full") == 4 and k.count("read") == 4 for k in half.kinds)
    assert all(set(k) == {"read"} and len(k) == 8 for k in none.kinds)
    assert all((b["read_targets"][4:] == -100).all() and b["colour_targets"][4:].sum() > 0 for b in half.out)
    # the crops drawn without full views are the ones a warm-up drew before the option existed
    old, plain = np.random.default_rng(T.TrainConfig().seed + 1), D.Collator(ref_processor)
    for b in none.out:
        drawn = [reads[i] for i in old.choice(len(reads), size=8, replace=False)]
        assert torch.equal(b["pixel_values"], plain(drawn)["pixel_values"])
    assert "warmup_full" in T.WARMUP_KEYS and "init_vision" in T.WARMUP_KEYS


def test_the_warm_up_teaches_pope_shapes_per_patch_only_with_shape_weight(ref_cfg, ref_processor, tmp_path):
    """With `shape_weight` the warm-up's loss includes the shape probe on the patches pope's objects
    cover (one answer per crop cannot say which of its objects is asked): its gradient reaches the
    tower, the curve records it, and it keys the warm-up's cache; without it nothing changes."""
    from egg.reference.build import build_model
    from egg.reference.probes import shape_targets

    rng, S, patch = np.random.default_rng(0), ref_cfg.image_size, ref_cfg.patch_size
    reads = []
    for it in [bench.item("pope", "train", i, 1, "llava15-large-pope") for i in range(6)]:
        for ex in D.reading_crops(it, rng, 3, S, max_scale=4.0, patch=patch):
            ex.shapes = shape_targets(it, ex.views, S, patch)
            reads.append(ex)
    assert len(reads) >= 8 and sum((ex.shapes >= 0).sum() for ex in reads) > 0

    def tower_after(weight):
        model = build_model(ref_cfg, ref_processor.tokenizer, seed=0)
        torch.manual_seed(0)
        aux = T.AuxHeads(ref_cfg.text_hidden, len(ref_processor.tokenizer), "cpu", shapes=weight > 0)
        cfg = T.TrainConfig(vision_steps=20, batch_size=4, shape_weight=weight)
        curve = T.pretrain_vision(model, aux, reads, D.Collator(ref_processor), cfg, lambda _: None)
        return [p.detach().clone() for p in model.model.vision_tower.parameters()], curve, model, aux

    (plain, c0, *_), (shaped, c1, model, aux) = tower_after(0.0), tower_after(1.0)
    assert "shape" not in c0[0] and c1[0]["shape"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(plain, shaped))
    runs = []
    # the second of each loads the first's; a shape weight, and its pooling, is a warm-up of its own
    for w, pool in [(0.0, "patch"), (0.0, "patch"), (1.0, "patch"), (1.0, "patch"), (1.0, "object"), (1.0, "object")]:
        T.cached_warmup(model, aux, tmp_path, T.TrainConfig(shape_weight=w, shape_pool=pool), ref_cfg,
                        lambda: runs.append((w, pool)) or [], lambda _: None)
    assert runs == [(0.0, "patch"), (1.0, "patch"), (1.0, "object")]
    with pytest.raises(ValueError, match="shape_pool must be one of"):  # before any rendering
        T.train(T.TrainConfig(out=str(tmp_path / "x" / "ref"), shape_weight=1.0, shape_pool="cell"))


def test_the_colour_probe_finds_the_colours_the_shipped_model_sees():
    """The committed 8x8 model's tower was trained on full views: a linear probe reads most key-colour
    patches there (measured 76% recall, 89% precision); a random tower gives the probe far less."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    from egg.api import REFERENCE_V1_DIR
    from egg.reference.build import ReferenceConfig, build_model
    from egg.reference.evaluation import colour_probe

    model = LlavaForConditionalGeneration.from_pretrained(REFERENCE_V1_DIR)
    processor = LlavaProcessor.from_pretrained(REFERENCE_V1_DIR)
    seen = colour_probe(model, processor, "v1", n=90, view="full", steps=500)
    assert seen["view"] == "full" and seen["n_images"] == 30 and seen["positive_patches"] > 100
    assert seen["recall"] > 0.6 and seen["precision"] > 0.7
    blind = colour_probe(build_model(ReferenceConfig(), processor.tokenizer, seed=0), processor, "v1", n=90,
                         view="full", steps=500)
    assert blind["recall"] < seen["recall"] - 0.2
    with pytest.raises(ValueError, match="view must be"):
        colour_probe(model, processor, "v1", view="window")


def test_the_tower_tokens_at_its_last_layer_are_what_the_projector_reads(ref_processor):
    """`colour_probe(layer=...)` reads `build.tower_tokens`: at the last layer, projected, they must be
    the decoder's visual tokens exactly, and a layer the tower does not have is refused by name."""
    from transformers import LlavaForConditionalGeneration

    from egg.api import REFERENCE_V1_DIR
    from egg.reference.evaluation import colour_probe

    model = LlavaForConditionalGeneration.from_pretrained(REFERENCE_V1_DIR)
    S = ref_processor.image_processor.size["height"]
    pixels = D.Collator(ref_processor).pixels(np.random.default_rng(0).integers(0, 256, (2, S, S, 3), dtype=np.uint8))
    depth = model.config.vision_config.num_hidden_layers
    with torch.no_grad():
        last = build.tower_tokens(model, pixels, depth)
        torch.testing.assert_close(model.model.multi_modal_projector(last), build.visual_tokens(model, pixels))
        assert not torch.allclose(build.tower_tokens(model, pixels, 0), last)
    for bad in (-1, depth + 1):
        with pytest.raises(ValueError, match=f"layer must be 0..{depth}"):
            colour_probe(model, ref_processor, "v1", layer=bad)
        with pytest.raises(ValueError, match=f"layer must be 0..{depth}"):
            build.tower_tokens(model, pixels, bad)


def test_the_reading_stage_mixes_in_full_views_only_when_asked():
    """`read_full` puts that share of each reading batch on the full-view conversations, drawn from
    their own stream: the crops' batches are those of a stage with that smaller batch size, and
    without it the stage is the plain one. A share that leaves no crop is refused by name."""
    one = np.zeros((1, 4, 4, 3), np.uint8)
    reads = [D.Example(one, [("q", "a")], "text", "read") for _ in range(40)]
    full = [D.Example(one, [("q", "a")], "text", "full") for _ in range(10)]
    cfg = T.TrainConfig(batch_size=8, read_steps=7, read_full=0.25)
    plan, n_full = T.reading_stage(reads, full, cfg, np.random.default_rng(3))
    assert n_full == 2 and len(plan) == 7
    plain = T.stage(reads, 7, 6, np.random.default_rng(3), "read_steps")
    for (pool, idx), (_, crops) in zip(plan, plain):
        assert len(idx) == 8 and list(idx[:6]) == list(crops)
        assert [pool[i].kind for i in idx] == ["read"] * 6 + ["full"] * 2
        assert len(set(idx[6:])) == 2  # no full view twice in one batch
    again, _ = T.reading_stage(reads, full, cfg, np.random.default_rng(3))
    assert all(list(a[1]) == list(b[1]) for a, b in zip(plan, again))
    none, n0 = T.reading_stage(reads, full, T.TrainConfig(batch_size=8, read_steps=7), np.random.default_rng(3))
    assert n0 == 0 and [list(i) for _, i in none] == [list(i) for _, i in T.stage(reads, 7, 8, np.random.default_rng(3), "x")]
    assert all(pool is reads for pool, _ in none)
    with pytest.raises(ValueError, match="read_full=1.0 leaves no reading crop"):
        T.reading_stage(reads, full, T.TrainConfig(batch_size=8, read_steps=7, read_full=1.0), np.random.default_rng(3))
    with pytest.raises(ValueError, match="read_full needs 2 full-view conversations"):
        T.reading_stage(reads, full[:1], cfg, np.random.default_rng(3))


def test_the_reading_stage_alternates_whole_batches_of_full_views_when_asked():
    """With `read_alternate`, `read_full` is the share of whole batches on the full views, spread
    evenly; the crops' batches are a plain stage's, and a share outside (0, 1) is refused by name."""
    one = np.zeros((1, 4, 4, 3), np.uint8)
    reads = [D.Example(one, [("q", "a")], "text", "read") for _ in range(40)]
    full = [D.Example(one, [("q", "a")], "text", "full") for _ in range(10)]
    cfg = T.TrainConfig(batch_size=4, read_steps=9, read_full=1 / 3, read_alternate=1)
    plan, n_full = T.reading_stage(reads, full, cfg, np.random.default_rng(3))
    assert n_full == 4 and len(plan) == 9
    assert [pool is not reads for pool, _ in plan] == [False, False, True] * 3
    assert all(len(idx) == 4 and len(set(idx)) == 4 for _, idx in plan)
    plain = T.stage(reads, 6, 4, np.random.default_rng(3), "x")
    assert [list(i) for pool, i in plan if pool is reads] == [list(i) for _, i in plain]
    half = T.reading_stage(reads, full, T.TrainConfig(batch_size=4, read_steps=4, read_full=0.5, read_alternate=1),
                           np.random.default_rng(3))[0]
    assert [pool is not reads for pool, _ in half] == [False, True, False, True]
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"read_alternate needs 0 < read_full < 1.*got {bad}"):
            T.reading_stage(reads, full, T.TrainConfig(batch_size=4, read_steps=4, read_full=bad, read_alternate=1),
                            np.random.default_rng(3))


def test_the_reading_stage_weighs_pope_crops_only_when_asked(tmp_path):
    """`pope_read_weight` puts each pope reading crop that many times in the stage's pool (the others
    once), so pope's share of the crops' batches grows without rendering anything again; below 1 it
    is refused by name."""
    one = np.zeros((1, 4, 4, 3), np.uint8)
    reads = [D.Example(one, [("q", "a")], f, "read") for f in ["text"] * 30 + ["pope"] * 10]
    cfg = T.TrainConfig(batch_size=8, read_steps=50, pope_read_weight=4)
    plan, _ = T.reading_stage(reads, [], cfg, np.random.default_rng(3))
    pool = plan[0][0]
    assert len(pool) == 70 and sum(ex.family == "pope" for ex in pool) == 40
    assert {id(ex) for ex in pool} == {id(ex) for ex in reads}  # the same crops, not new ones
    drawn = [pool[i].family for p, idx in plan for i in idx]
    assert abs(drawn.count("pope") / len(drawn) - 4 / 7) < 0.05
    plain, _ = T.reading_stage(reads, [], T.TrainConfig(batch_size=8, read_steps=50), np.random.default_rng(3))
    assert plain[0][0] is reads
    with pytest.raises(ValueError, match="pope_read_weight=0 leaves pope's reading crops out"):
        T.reading_stage(reads, [], T.TrainConfig(batch_size=8, read_steps=5, pope_read_weight=0), np.random.default_rng(3))
    with pytest.raises(ValueError, match="pope_read_weight=0 leaves"):  # before any rendering
        T.train(T.TrainConfig(out=str(tmp_path / "x" / "ref"), pope_read_weight=0))
    assert not (tmp_path / "x").exists()  # refused before its work directory was made


def test_the_reading_stage_draws_from_the_whole_mixture_only_with_read_mix():
    """The reading stage's other batches hold the single-image full views of the rendered set, or
    with `read_mix` every kind of conversation, crops appended to the full view too (read without
    them, runs 36-37 misread such a crop: CHANGELOG, stop 46)."""
    one, two = np.zeros((1, 4, 4, 3), np.uint8), np.zeros((2, 4, 4, 3), np.uint8)
    reads = [D.Example(one, [("q", "a")], "text", "read") for _ in range(40)]
    data = ([D.Example(one, [("q", "a")], "text", k) for k in ("full", "locate") for _ in range(6)]
            + [D.Example(two, [("q", "a")], "text", "evidence") for _ in range(8)])
    for mix, kinds in ((0, {"full", "locate"}), (1, {"full", "locate", "evidence"})):
        for alternate in (0, 1):
            cfg = T.TrainConfig(batch_size=4, read_steps=20, read_full=0.5, read_alternate=alternate, read_mix=mix)
            plan, _ = T.reading_stage(reads, data, cfg, np.random.default_rng(3))
            assert {pool[i].kind for pool, idx in plan for i in idx} - {"read"} == kinds


def test_the_answer_loss_weighs_tokens_as_transformers_does_or_examples_alike():
    """Token-averaged, `answer_loss` is the real LLaVA's own loss; per example, a one-answer
    example weighs as much as a long one, and an example with no labelled token counts for nothing."""
    from egg.reference.build import ReferenceConfig, build_model, build_processor

    torch.manual_seed(0)
    cfg = ReferenceConfig(image_size=32, patch_size=8, vision_hidden=16, vision_layers=1, text_hidden=16,
                          text_layers=1)
    model = build_model(cfg, build_processor(cfg).tokenizer).eval()
    ids = torch.randint(5, 40, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 3:11] = ids[0, 3:11]  # a long answer
    labels[1, 6:7] = ids[1, 6:7]  # a one-token answer
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    assert torch.allclose(T.answer_loss(out.logits, labels, per_example=False), out.loss, atol=1e-6)
    tok = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                            reduction="none")
    each = [tok[0, 2:10].mean(), tok[1, 5:6].mean()]
    assert torch.allclose(T.answer_loss(out.logits, labels), (each[0] + each[1]) / 2, atol=1e-6)
    assert not torch.allclose(T.answer_loss(out.logits, labels), out.loss, atol=1e-3)
    assert T.answer_loss(out.logits, torch.full_like(ids, -100)).item() == 0


def test_a_later_stage_loads_its_start_without_hub_kernels():
    """`--init` and `--init-vision` load the committed 24x24 model with hub kernels off. With them on
    (transformers' default where the `kernels` package is installed), `model.train()` on a GPU
    fetches a kernel from the Hub, and an offline GPU machine stopped there (stop 45)."""
    from pathlib import Path

    from transformers import LlavaForConditionalGeneration, PreTrainedModel

    from egg.reference.checkpoint import load_initial, no_hub_kernels

    path = Path(__file__).resolve().parents[1] / "data" / "reference-llava15-look"
    shape = json.loads((path / "training_log.json").read_text())["config"]["model"]
    model, record = load_initial(str(path), shape, "cpu")
    assert record["steps"] == 750 and record["config"]["geometry"] == "llava15"
    assert model.config.vision_config.image_size == 336 and model.config.vision_config.patch_size == 14
    if not hasattr(PreTrainedModel, "set_use_kernels"):
        assert no_hub_kernels() == {}  # a transformers without hub kernels gets no unknown keyword
        return
    assert no_hub_kernels() == {"use_kernels": False} and model.use_kernels is False
    try:
        import kernels  # noqa: F401
    except ImportError:
        return
    assert LlavaForConditionalGeneration.from_pretrained(path).use_kernels is True  # what it guards against


def test_a_rendered_training_set_is_kept_for_the_next_run_with_the_same_settings(tmp_path):
    """`cached_render` saves the rendered set and loads it back unchanged for the same jobs; other
    settings render (and save) another set, so a cache never stands in for different data."""
    from egg.reference.build import ReferenceConfig
    from egg.reference.checkpoint import cached_render

    lines = []
    cfg, model = T.TrainConfig(items_per_family=1, examples_per_item=1, workers=1), ReferenceConfig()
    data, reads = cached_render(cfg, model, tmp_path, lines.append)
    saved = list(tmp_path.glob("render-*.pkl"))
    assert len(saved) == 1 and not any("loaded" in m for m in lines)
    again, again_reads = cached_render(cfg, model, tmp_path, lines.append)
    assert "rendered set loaded from" in lines[-1]
    assert len(again) == len(data) > 0 and len(again_reads) == len(reads) > 0
    for a, b in zip(data + reads, again + again_reads):
        assert (a.turns, a.kind, a.enc, a.untrained, a.looks) == (b.turns, b.kind, b.enc, b.untrained, b.looks)
        assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    other = T.TrainConfig(items_per_family=1, examples_per_item=1, workers=1, seed=2)
    cached_render(other, model, tmp_path, lines.append)
    assert len(list(tmp_path.glob("render-*.pkl"))) == 2 and "loaded" not in lines[-1]


@pytest.mark.parametrize("geometry", ["llava15", "llava15-large"])
def test_the_detail_box_holds_every_dark_pixel_of_its_object(geometry):
    """`detail_box` is where the generators drew the letter, shape or digit: every dark pixel inside
    an object's box lies in it; at a geometry with no detail size, or for pope, there is none."""
    for fam in ("text", "vstar", "doc", "info"):
        n = 0
        for it in bench.load(fam, "train", 4, 3, geometry=geometry):
            a = np.asarray(it.image).astype(int)
            for _, ans, b in it.facts:
                if ans is None:
                    continue
                d = detail_box(it, b)
                x0, y0, x1, y1 = map(int, b)
                ys, xs = np.nonzero(a[y0:y1, x0:x1].sum(-1) < 120)
                assert len(xs) > 0
                assert ((xs + x0 >= d[0] - 1) & (xs + x0 <= d[2] + 1) & (ys + y0 >= d[1] - 1) & (ys + y0 <= d[3] + 1)).all()
                assert (d[2] - d[0]) * (d[3] - d[1]) < 0.5 * (x1 - x0) * (y1 - y0)
                n += 1
        assert n >= 8
    v1 = bench.item("text", "train", 0, 3)
    assert detail_box(v1, v1.boxes[0]) is None
    pope = bench.item("pope", "train", 0, 3, geometry)
    assert detail_box(pope, pope.boxes[0]) is None


def test_a_turn_looks_at_the_detail_where_it_is_readable_and_at_the_object_elsewhere():
    """`look_views`: in a view that shows the object at `readable_px` the target is the detail's
    tokens, in one that shows it small the object's."""
    box, det = (100, 100, 200, 200), (140, 140, 160, 160)
    full, crop = (0, 0, 1000, 1000), (50, 50, 250, 250)  # the object 33 px and 168 px wide at 336 px
    looks = D.look_views([box], [det], [full, crop], 336, 14, readable_px=48)
    g = 24 * 24
    assert set(t for t in looks if t < g) == set(D.look_tokens([box], [full], 336, 14))
    assert set(t - g for t in looks if t >= g) == set(D.look_tokens([det], [crop], 336, 14))
    assert len([t for t in looks if t >= g]) < len(D.look_tokens([box], [crop], 336, 14))


# --------------------------------------------------------------------------- recipes

def _trained_with(cfg, committed: dict, stop_step: int = 0) -> None:
    """`cfg` has the settings of a committed training log's `committed` config: only the paths
    and the resume flag differ, and a setting added after it was trained is at its default (the
    behaviour it was trained with), `stop_step` excepted: the step it was saved at."""
    ours = json.loads(json.dumps(vars(cfg)))  # tuples as the log's lists
    paths = {"out", "init", "resume", "max_minutes"}  # max_minutes: unused with max_steps
    later = set(ours) - set(committed)
    default = {**json.loads(json.dumps(vars(T.TrainConfig()))), "stop_step": stop_step}
    assert later <= {"look_detail", "read_min_scale", "read_square", "read_spread", "pope_readable_px", "read_own",
                     "read_pair", "read_full", "read_alternate", "read_mix", "lm_per_example", "stop_step", "pope_weight",
                     "shape_weight", "shape_pool", "rewarm_steps",
                     "pope_read_weight"}
    assert all(ours[k] == default[k] for k in later)  # logs since stop 57 hold stop_step itself
    assert ({k: v for k, v in ours.items() if k not in paths | later}
            == {k: v for k, v in committed.items() if k not in paths})


@pytest.mark.parametrize("name", ["llava15-detail", "llava15-large", "llava15-centred", "llava15-large-d4",
                                  "llava15-large-pope"])
def test_a_recipe_is_how_its_committed_24x24_model_was_trained(name):
    """Its last stage's settings are those in the committed model's training log, and each stage
    continues the one before."""
    from egg.reference import recipes
    r = recipes.recipe(name)
    stages = recipes.stage_configs(r, "w")
    assert [c.init for _, c in stages] == [r.start] + [c.out for _, c in stages[:-1]]
    _trained_with(stages[-1][1], json.loads((Path(__file__).parents[1] / r.out / "training_log.json").read_text())["config"])
    with pytest.raises(SystemExit, match="llava15-detail"):
        recipes.recipe("llava15-details")


def test_the_from_scratch_recipe_is_how_runs_23_and_24_were_trained():
    """`llava15-look` trains run 23 from scratch, then run 24 from it: their settings are those in
    `data/reference-llava15-look`'s log (run 24's, and run 23's under `continues`). Run 24 was saved
    at step 750 of its 1000-step schedule, unfinished (stopped for time); `--stop-step` replays that."""
    from egg.reference import recipes
    r = recipes.recipe("llava15-look")
    (_, first), (_, second) = recipes.stage_configs(r, "w")
    record = json.loads((Path(__file__).parents[1] / r.out / "training_log.json").read_text())
    assert r.start == first.init == "" and second.init == first.out
    assert record["steps"] == 750 and not record["finished"] and record["config"]["max_steps"] == 1000
    _trained_with(first, record["continues"])
    _trained_with(second, record["config"], stop_step=record["steps"])
    assert recipes.RECIPES["llava15-detail"].start == r.out  # the recipes continue it


@pytest.mark.slow
def test_a_recipe_trains_its_stages_in_turn_and_reruns_only_an_unfinished_one(tmp_path, capsys):
    from egg.reference import recipes
    tiny = ("--items-per-family", "4", "--examples-per-item", "2", "--batch-size", "4", "--epochs", "1",
            "--eval-items", "1", "--eval-every", "1000", "--workers", "1", "--threads", "2")
    start = T.train(T.config_from_args([*tiny, "--vision-steps", "2", "--max-steps", "2", "--out", str(tmp_path / "s")]))
    r = recipes.Recipe(start=str(start), out=str(tmp_path / "final"), common=tiny,
                       stages=(("a", ("--max-steps", "2")), ("b", ("--max-steps", "3"))))
    out = recipes.run(r, tmp_path / "work")
    record = json.loads((out / "training_log.json").read_text())
    assert record["finished"] and record["steps"] == 3 and record["config"]["init"] == str(tmp_path / "work" / "a")
    # a decoder stage after them: b's record, and the stage's own settings
    taught = recipes.run(dataclasses.replace(r, out=str(tmp_path / "taught"), stages=r.stages + (
        ("c", ("--layers", "", "--train-images", "2", "--test-items", "2", "--decoder-steps", "1"), "decoder"),)),
        tmp_path / "work")
    told = json.loads((taught / "training_log.json").read_text())
    assert told["config"] == {**record["config"], "geometry": told["config"]["geometry"]} and told["finished"]
    assert told["decoder_stage"]["settings"]["decoder_steps"] == 1
    assert told["decoder_stage"]["continues"] == str(tmp_path / "work" / "b")
    with pytest.raises(ValueError, match="kind 'tower'"):
        recipes.stage_configs(dataclasses.replace(r, stages=(("x", (), "tower"),)), tmp_path / "w")
    a_weights = (tmp_path / "work" / "a" / "model.safetensors").stat().st_mtime_ns
    # stage b interrupted: its log says unfinished; a rerun trains b alone and gives the same weights
    log = tmp_path / "work" / "b" / "training_log.json"
    log.write_text(json.dumps({**json.loads(log.read_text()), "finished": False}))
    before = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    recipes.run(r, tmp_path / "work")
    printed = capsys.readouterr().out
    assert "[1/2] a: finished, kept" in printed and "[2/2] b: training" in printed
    assert (tmp_path / "work" / "a" / "model.safetensors").stat().st_mtime_ns == a_weights
    assert (out / "model.safetensors").read_bytes() == before
    assert recipes.run(r, tmp_path / "work", tmp_path / "elsewhere", stop_after="a") == tmp_path / "work" / "a"
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(SystemExit, match="no saved model"):
        recipes.run(recipes.Recipe(start=str(tmp_path / "none"), out="x", common=(), stages=()), tmp_path / "w2")


def test_reading_crops_can_start_above_the_tight_crop():
    """`min_scale` draws the reading crops from that many times the object's side on, so the detail
    covers fewer patches than in the tight crop (run 41's decoder did not read it at 3x)."""
    items = [bench.item(f, "train", i, 1, "llava15-large") for f in ("text", "info") for i in range(3)]
    tokens = {}
    for lo, hi in ((1.0, 1.0), (3.0, 3.0)):
        rng = np.random.default_rng(0)
        exs = [ex for it in items for ex in D.reading_crops(it, rng, 2, 336, hi, detail=0.3, min_scale=lo)]
        tokens[lo] = [len(ex.looks[0]) for ex in exs]
    assert len(tokens[1.0]) == len(tokens[3.0]) == 12
    assert all(t3 < t1 for t1, t3 in zip(tokens[1.0], tokens[3.0]))
    with pytest.raises(ValueError, match="min_scale <= max_scale"):
        D.reading_crops(items[0], np.random.default_rng(0), 1, 336, 2.0, min_scale=3.0)


def test_pope_readable_px_teaches_pope_shapes_at_the_full_view_only():
    """`--pope-readable-px` changes pope's render jobs alone, and there the shapes are then taught
    at the full view, where `--readable-px 64` leaves them untaught on objects of 48-83 px."""
    argv = ["--preset", "llava15", "--geometry", "llava15-large-pope", "--readable-px", "64"]
    def readable(extra):
        cfg = T.config_from_args(argv + extra)
        return {j[0]: j[7]["readable_px"] for j in D.render_jobs(cfg, T.ReferenceConfig(**cfg.model))}

    plain = readable([])
    assert set(plain.values()) == {64.0}
    assert readable(["--pope-readable-px", "40"]) == {**plain, "pope": 40.0}
    untaught = {}
    for px in (64.0, 40.0):
        n = 0
        for i in range(6):
            it = bench.item("pope", "train", i, 1, "llava15-large-pope")
            for ex in D.examples_for(it, np.random.default_rng(i), 8, 336, readable_px=px, patch=14):
                n += sum(ex.turns[k][0].startswith("what shape") for k in ex.untrained if len(ex.images) == 1)
        untaught[px] = n
    assert untaught[64.0] > 0 and untaught[40.0] == 0, untaught


def test_pope_weight_multiplies_pope_examples_alone():
    """`--pope-weight` renders pope's items with that many times the examples; every other job,
    and so every recipe's rendered set at the default 1, is unchanged."""
    def jobs(extra):
        cfg = T.config_from_args(["--preset", "llava15", "--examples-per-item", "3"] + extra)
        return D.render_jobs(cfg, T.ReferenceConfig(**cfg.model))

    plain, weighted = jobs([]), jobs(["--pope-weight", "4"])
    assert {j[5] for j in plain} == {3}
    assert [j[5] for j in weighted] == [12 if j[0] == "pope" else 3 for j in plain]
    assert [j[:5] + j[6:] for j in weighted] == [j[:5] + j[6:] for j in plain]
    with pytest.raises(ValueError, match="pope_weight=0"):
        jobs(["--pope-weight", "0"])


def test_read_own_asks_a_multiple_choice_item_its_own_question_on_its_evidence():
    """With `--read-own 1`, a reading crop of a single-evidence vstar item's ring asks the item's
    multiple-choice question (taught its option text); the other rings' crops, and every crop
    without the flag, ask the fact. The crops themselves are the same."""
    cfg = T.config_from_args(["--preset", "llava15", "--read-own", "1"])
    assert {j[-1][3] for j in D.render_jobs(cfg, T.ReferenceConfig(**cfg.model))} == {True}
    asked = {True: [], False: []}
    for i in range(12):
        it = bench.item("vstar", "train", i, 1, "llava15-large-d4")
        for own in (True, False):
            exs = D.reading_crops(it, np.random.default_rng(i), 3, 336, 4.0, own=own)
            asked[own] += [(it, ex.turns[0], np.asarray(ex.images).tobytes()) for ex in exs]
    assert [x[2] for x in asked[True]] == [x[2] for x in asked[False]]
    mc = [(it, t) for it, t, _ in asked[True] if t[0] == it.question]
    assert mc and all(not it.multi_evidence and t[1] == it.meta["truth"] for it, t in mc)
    assert len(mc) == sum(t[0] == f"what shape is in the {it.meta['key']} ring ?" for it, t, _ in asked[False]
                          if not it.multi_evidence)
    assert not any(t[0] == it.question for it, t, _ in asked[False])


def test_read_square_and_spread_cut_the_reading_stage_crops():
    """`--read-square 1 --read-spread S` reach the reading crops the training set renders: each is
    the crop `crop_around` cuts with them, drawn from the same generator."""
    cfg = T.config_from_args(["--preset", "llava15", "--read-square", "1", "--read-spread", "0.25"])
    cut = D.render_jobs(cfg, T.ReferenceConfig(**cfg.model))[0][-1][2]
    assert cut == {"square": True, "spread": 0.25}
    it = bench.item("doc", "train", 1, 1, "llava15")
    exs = D.reading_crops(it, np.random.default_rng(3), 2, 336, 4.0, min_scale=2.0, cut=cut)
    rng = np.random.default_rng(3)
    reads = [(q, a, b) for q, a, b in it.facts if D._is_read(a)]
    for ex, k in zip(exs, rng.permutation(len(reads))[:2]):
        crop = D.crop_around(reads[k][2], it.image.size, rng, (2.0, 4.0), 0.0, square=True, spread=0.25)
        assert abs((crop[2] - crop[0]) - (crop[3] - crop[1])) <= 1
        assert np.array_equal(np.asarray(ex.images)[0], D._resize(it.image, crop, 336))


def test_read_pair_sets_the_reading_crop_beside_the_full_view_and_another_objects_crop():
    """`--read-pair 1`: every reading crop comes as EGG appends crops, the full view first, then the
    evidence's crop and one around another object in random order, looking at the detail; 0 renders
    exactly what it did before the option existed."""
    cfg = T.config_from_args(["--preset", "llava15", "--read-pair", "0.5"])
    assert D.render_jobs(cfg, T.ReferenceConfig(**cfg.model))[0][-1][-1] == 0.5
    items = [bench.item(f, "train", i, 1, "llava15-large") for f in ("text", "doc") for i in range(3)]
    plain = [ex for it in items for ex in D.reading_crops(it, np.random.default_rng(5), 2, 336, 4.0, detail=0.3)]
    off = [ex for it in items for ex in D.reading_crops(it, np.random.default_rng(5), 2, 336, 4.0, detail=0.3,
                                                        pair=0.0)]
    assert all(np.array_equal(np.asarray(a.images), np.asarray(b.images)) for a, b in zip(plain, off))
    paired = [ex for it in items for ex in D.reading_crops(it, np.random.default_rng(5), 2, 336, 4.0, detail=0.3,
                                                           pair=1.0)]
    assert len(paired) == len(plain) and {ex.kind for ex in paired} == {"read_pair"}
    g = 24 * 24
    for it, ex, p in zip([it for it in items for _ in range(2)], paired, plain):
        ims = np.asarray(ex.images)
        assert ims.shape == (3, 336, 336, 3) and ex.turns == p.turns
        assert np.array_equal(ims[0], D._resize(it.image, (0, 0, *it.image.size), 336))
        assert not np.array_equal(ims[1], ims[2])
        assert {t // g for t in ex.looks[0]} & {1, 2}  # the detail is looked at in its crop
    for ex, p in list(zip(paired, plain))[::2]:  # each item's first crop is drawn before the pairing
        ims = np.asarray(ex.images)
        assert any(np.array_equal(ims[k], np.asarray(p.images)[0]) for k in (1, 2))
