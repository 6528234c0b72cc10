"""`egg.reference.reading`: reading a detail against the crop's scale, on real items and towers."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from egg import bench
from egg.reference import decoder as D
from egg.reference import reading as R
from egg.reference.build import ReferenceConfig, build_model, build_processor
from egg.reference.data import Collator, _is_read

TINY = ReferenceConfig(image_size=56, patch_size=14, vision_hidden=16, vision_layers=1, vision_heads=2,
                       text_hidden=16, text_layers=1, text_heads=2, max_positions=256, position_init="sincos")


@pytest.fixture(scope="module")
def sets():
    fams = ("text", "vstar")
    return (R.training_set(fams, n=3, size=56, per_item=2),
            R.scale_set(fams, n=3, size=56, scales=(1.0, 3.0)))


def test_scale_set_crops_one_read_fact_per_item_at_every_scale(sets):
    _, test = sets
    assert set(test.images) == {1.0, 3.0} and test.families == ["text"] * 3 + ["vstar"] * 3
    assert all(v.shape == (6, 56, 56, 3) for v in test.images.values())
    for k, (fam, a) in enumerate(zip(test.families, test.answers)):
        it = bench.item(fam, "test", k % 3, 13, "llava15-large")
        assert a in [x for _, x, _ in it.facts if _is_read(x)]
        assert not np.array_equal(test.images[1.0][k], test.images[3.0][k])  # 3x shows more canvas
    # the detail, a third of its object's side, is shown up to three times smaller in the 3x crop
    # (less where the canvas's edge clips that crop, as it clips notebook 09's `crop3x`)
    ratio = test.detail_px[1.0] / test.detail_px[3.0]
    assert np.all((ratio > 1.5) & (ratio < 3.05))
    assert 0.25 * 56 < np.median(test.detail_px[1.0]) < 0.5 * 56


def test_training_set_draws_two_facts_per_item_in_random_crops(sets):
    train, _ = sets
    (images,) = train.images.values()
    assert images.shape == (12, 56, 56, 3) and len(train.answers) == 12
    assert R.training_set(("text",), n=3, size=56).answers == train.answers[:6]  # seeded per call


def test_tower_training_is_reproducible_and_scores_every_scale(sets):
    train, test = sets
    runs = [R.train_tower(TINY, train, test, steps=4, batch=4, eval_every=2, log=lambda m: None) for _ in range(2)]
    a, b = runs
    assert [c["step"] for c in a.curve] == [2, 4]
    assert a.curve == [{**c, "seconds": a.curve[i]["seconds"]} for i, c in enumerate(b.curve)]
    assert a.accuracy == b.accuracy and set(a.accuracy) == {1.0, 3.0}
    assert a.n == {"text": 3, "vstar": 3} and set(a.crowded) == set(a.detail_px) == {1.0, 3.0}
    assert all(v in (0.0, 33.3, 66.7, 100.0) for d in a.accuracy.values() for v in d.values())
    lines = R.table(a).splitlines()
    assert lines[0] == "| family | n | 1x | 3x |" and lines[2].startswith("| text | 3 | ")


def test_a_frozen_probe_fits_its_training_crops(sets):
    _, test = sets
    proc = build_processor(TINY)
    model = build_model(TINY, proc.tokenizer, 0).eval()
    r = R.frozen_probe(model, proc, test, test, steps=300)
    # fitted and scored on the same 12 crops of 6 items: a linear probe on 16 features separates them
    assert r.train_accuracy == 100.0 and set(r.accuracy) == {1.0, 3.0}
    assert r.accuracy == R.frozen_probe(model, proc, test, test, steps=300).accuracy
    located = R.frozen_probe(model, proc, test, test, steps=300, pool="detail")
    assert located.settings["pool"] == "detail" and located.train_accuracy == 100.0
    # pooled over the detail's tokens: the largest of each feature there, not over the whole crop
    from egg.reference.build import visual_tokens
    from egg.reference.data import Collator

    col, ims, mask = Collator(proc), test.images[3.0], test.detail_tokens[3.0]
    with torch.no_grad():
        v = visual_tokens(model, col.pixels(ims))
    pooled = R._pooled(model, col, ims, mask, batch=4)
    for k in range(len(ims)):
        assert torch.allclose(pooled[k], v[k][torch.from_numpy(mask[k])].amax(0), atol=1e-6)
    assert not torch.allclose(pooled, v.amax(1))
    with pytest.raises(ValueError, match="pool must be"):
        R.frozen_probe(model, proc, test, test, pool="mean")
    attended = R.frozen_probe(model, proc, test, test, steps=300, pool="attention")
    assert attended.settings["pool"] == "attention" and attended.train_accuracy == 100.0
    assert attended.accuracy == R.frozen_probe(model, proc, test, test, steps=300, pool="attention").accuracy


def test_the_attention_reader_finds_a_token_by_its_content():
    # the label is written on one token at a random place among 64 noise tokens: a max-pool of the
    # raw features cannot tell which, softmax attention keyed on the marker can
    g = torch.Generator().manual_seed(0)
    n, t, d = 512, 64, 8
    x = torch.randn(n, t, d, generator=g) * 0.3
    y = torch.randint(0, 2, (n,), generator=g)
    where = torch.randint(0, t, (n,), generator=g)
    x[torch.arange(n), where, 0] = 3.0  # the marker
    x[torch.arange(n), where, 1] = 2.0 * y - 1  # the label, at the marker only
    reader = R.fit_reader(x[:384], y[:384], 2, steps=400)
    with torch.no_grad():
        acc = (reader(x[384:]).argmax(1) == y[384:]).float().mean()
    assert acc > 0.95


def test_the_detail_tokens_are_the_patches_under_the_detail(sets):
    _, test = sets
    one, three = test.detail_tokens[1.0], test.detail_tokens[3.0]
    assert one.shape == (6, 16) and one.any(1).all() and three.any(1).all()
    assert (one.sum(1) >= three.sum(1)).all()  # a third of the crop's side at 1x, less at 3x


def test_the_command_line_writes_its_result(tmp_path, capsys):
    for what in ("frozen", "decoder"):
        with pytest.raises(SystemExit, match=f"{what}: name the saved model"):
            R.main([what, "--test-items", "1"])
    out = tmp_path / "r.json"
    R.main(["tower", "--size", "56", "--hidden", "16", "--train-items", "1", "--test-items", "1", "--steps", "2",
            "--layers", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["settings"]["steps"] == 2 and saved["n"] == {f: 1 for f in R.FAMILIES}
    assert "| text | 1 |" in capsys.readouterr().out
    # pope's reading facts are its shapes, asked of the object's region
    R.main(["tower", "--size", "56", "--hidden", "16", "--train-items", "1", "--test-items", "1", "--steps", "2",
            "--layers", "1", "--families", "pope", "--geometry", "llava15-large-pope", "--scales", "1,6", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["n"] == {"pope": 1} and saved["settings"]["families"] == "pope"
    assert set(saved["accuracy"]) == {"1.0", "6.0"} and "| pope | 1 | " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="'text,popo': give some of"):
        R.main(["tower", "--families", "text,popo"])


def test_the_frozen_probe_takes_the_saved_models_input_size(tmp_path, capsys):
    proc = build_processor(TINY)
    build_model(TINY, proc.tokenizer, 0).save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    out = tmp_path / "r.json"
    R.main(["frozen", str(tmp_path / "m"), "--pool", "detail", "--train-items", "1", "--test-items", "1",
            "--scales", "1,2,8", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["settings"]["pool"] == "detail" and saved["settings"]["model"] == str(tmp_path / "m")
    assert set(saved["accuracy"]) == {"1.0", "2.0", "8.0"} and set(saved["crowded"]) == {"1.0", "2.0", "8.0"}
    assert saved["n"] == {f: 1 for f in R.FAMILIES} and "| vstar | 1 |" in capsys.readouterr().out
    R.main(["frozen", str(tmp_path / "m"), "--pool", "attention", "--train-crops", "random", "--train-items", "1",
            "--test-items", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["settings"]["pool"] == "attention" and saved["settings"]["train_crops"] == "random"
    with pytest.raises(SystemExit, match="--pool detail needs --train-crops centred"):
        R.main(["frozen", str(tmp_path / "m"), "--pool", "detail", "--train-crops", "random", "--test-items", "1"])
    R.main(["decoder", str(tmp_path / "m"), "--train-items", "1", "--test-items", "1", "--steps", "2",
            "--eval-every", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert [c["step"] for c in saved["curve"]] == [0, 1, 2] and saved["settings"]["lr"] == 2e-4
    assert saved["settings"]["train_crops"] == "random"
    assert "step 2/2" in capsys.readouterr().out


def test_a_crop_is_crowded_where_it_shows_another_objects_detail():
    it = bench.item("info", "test", 0, 13, "llava15-large")
    (obj, det), *others = it.meta["details"]
    assert others, "an info item has several bars to read"
    W, H = it.image.size
    assert not R.crowded(it, obj, obj)  # its own detail does not count
    assert R.crowded(it, obj, (0, 0, W, H))
    assert R.crowded(it, obj, others[0][1]) and not R.crowded(it, others[0][0], others[0][1])
    # pope records no details: its objects are its "yes" existence facts, each its own detail
    it = bench.item("pope", "test", 0, 13, "llava15-large-pope")
    objs = [tuple(b) for q, a, b in it.facts if a == "yes" and q.startswith("is there")]
    assert len(objs) >= 3 and not it.meta.get("details")
    W, H = it.image.size
    assert not R.crowded(it, objs[0], objs[0]) and R.crowded(it, objs[0], (0, 0, W, H))
    assert R.crowded(it, objs[0], objs[1]) and not R.crowded(it, objs[1], objs[1])


def test_the_decoder_pass_is_the_models_own_forward(sets):
    _, test = sets
    proc = build_processor(TINY)
    model = build_model(TINY, proc.tokenizer, 0).eval()
    col = Collator(proc)
    enc = D._encoded(col, test)[:3]
    ims = test.images[3.0][:3]
    with torch.no_grad():
        feats = torch.cat([v for _, v in R._tokens(model, col, ims)])
        logits, lab = D._decoder_pass(model, col, feats, enc)
        for k, (ids, labels, _) in enumerate(enc):
            own = model(input_ids=torch.tensor([ids]), pixel_values=col.pixels(ims[k:k + 1])).logits[0, :-1]
            p = max(i for i, t in enumerate(ids) if t == model.config.image_token_id) + 1  # from here on
            assert torch.allclose(logits[k, : len(ids) - 1 - p], own[p:], atol=1e-5)
            assert lab[k, : len(ids) - 1 - p].tolist() == labels[p + 1:]
        # questions about the same image share its prefix pass: the same as each with its own copy
        image = [0, 1, 0]
        shared, _ = D._decoder_pass(model, col, feats[:2], enc, image)
        assert torch.allclose(shared, D._decoder_pass(model, col, feats[image], enc)[0], atol=1e-5)
        assert not torch.allclose(shared[2], logits[2], atol=1e-3)  # image 0 in place of its own
    assert (lab != -100).any(1).all()  # every prompt's answer is scored


def test_decoder_training_moves_only_the_decoder_and_is_reproducible(sets):
    train, test = sets
    proc = build_processor(TINY)
    runs, models = [], []
    for _ in range(2):
        model = build_model(TINY, proc.tokenizer, 0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        runs.append(D.train_decoder(model, proc, train, test, steps=4, batch=4, lr=1e-2, eval_every=2,
                                    log=lambda m: None))
        moved = {n.split(".")[1] if n.startswith("model.") else n.split(".")[0]
                 for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        models.append(moved)
    a, b = runs
    assert models[0] == {"language_model", "lm_head"}  # the tower and projector stay as saved
    assert [c["step"] for c in a.curve] == [0, 2, 4] and a.curve[0]["loss"] is None
    assert [c["accuracy"] for c in a.curve] == [c["accuracy"] for c in b.curve]
    assert set(a.accuracy) == {1.0, 3.0} and a.n == {"text": 3, "vstar": 3} and 0 <= a.train_accuracy <= 100
    # the last evaluation's answers, item by item, are what its accuracy averages
    assert a.correct == b.correct and all(len(ok) == 6 for ok in a.correct.values())
    assert a.accuracy[3.0]["text"] == pytest.approx(100 * np.mean(a.correct[3.0][:3]))
    # fitted on centred crops of several scales (`scale_set`): each crop with its own question
    centred = D.train_decoder(build_model(TINY, proc.tokenizer, 0), proc, test, test, steps=2, batch=4,
                              eval_every=2, log=lambda m: None)
    assert 0 <= centred.train_accuracy <= 100 and [c["step"] for c in centred.curve] == [0, 2]
    # with the projector: the tower's tokens are cached, and the projector learns too (LLaVA's stage 2);
    # a tower narrower than the decoder, so that tokens projected twice, or not at all, cannot pass
    narrow = dataclasses.replace(TINY, vision_hidden=8)
    model = build_model(narrow, proc.tokenizer, 0)
    col, ims = Collator(proc), test.images[3.0]
    with torch.no_grad():
        tower = torch.cat([v for _, v in R._tokens(model, col, ims, projector=False)])
        assert torch.allclose(model.model.multi_modal_projector(tower),
                              torch.cat([v for _, v in R._tokens(model, col, ims)]), atol=1e-6)
    vision = {n: p.detach().clone() for n, p in model.model.vision_tower.named_parameters()}
    proj = [p.detach().clone() for p in model.model.multi_modal_projector.parameters()]
    r = D.train_decoder(model, proc, train, test, steps=2, batch=4, lr=1e-2, eval_every=2, projector=True,
                        log=lambda m: None)
    assert r.settings["projector"] and r.curve[0]["accuracy"] == D.train_decoder(
        build_model(narrow, proc.tokenizer, 0), proc, train, test, steps=0, log=lambda m: None).curve[0]["accuracy"]
    assert all(torch.equal(p, vision[n]) for n, p in model.model.vision_tower.named_parameters())
    assert not any(torch.equal(p, q) for p, q in zip(model.model.multi_modal_projector.parameters(), proj))


def test_a_decoder_answer_counts_where_greedy_decoding_gives_it():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = "data/reference-llava15-detail"
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    proc = AutoProcessor.from_pretrained(path)
    test = R.scale_set(("text",), n=6, geometry="llava15", scales=(1.0, 3.0))
    col = Collator(proc)
    enc = D._encoded(col, test)
    agree = []
    for f, ims in test.images.items():
        feats = torch.cat([v for _, v in R._tokens(model, col, ims)])
        with torch.no_grad():
            logits, lab = D._decoder_pass(model, col, feats, enc)
        for k, a in enumerate(test.answers):
            ok = bool(((logits[k].argmax(-1) == lab[k]) | (lab[k] == -100)).all())
            prompt = col.encode(1, [(test.questions[k], "")])[0]
            with torch.no_grad():
                out = model.generate(input_ids=torch.tensor([prompt]), pixel_values=col.pixels(ims[k:k + 1]),
                                     max_new_tokens=8, do_sample=False)
            said = proc.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True).strip()
            agree.append(ok == (said == a))
            assert ok == (said == a), (f, k, said, a)
    assert len(agree) == 12


def test_joined_sets_keep_each_question_on_its_own_image(sets):
    """pope's full views (several facts each) beside reading crops (one each): one training set."""
    from egg.reference.existence import full_view_set

    crops, scales = sets
    views = full_view_set(bench.load("pope", "train", 2, 1, geometry="llava15"), facts=True, size=56)
    j = D.joined(views, crops)
    assert len(j.answers) == len(views.answers) + len(crops.answers) and j.families[-1] == crops.families[-1]
    shown = lambda s, k: next(iter(s.images.values()))[s.shown()[k]]
    before = [shown(views, k) for k in range(len(views.answers))] + [shown(crops, k) for k in range(len(crops.answers))]
    assert all((shown(j, k) == im).all() for k, im in enumerate(before))
    assert len(j.images[0.0]) == 2 + len(crops.answers)  # each view once
    with pytest.raises(ValueError, match="one scale each"):
        D.joined(views, scales)


def test_training_crops_can_ask_the_items_own_question():
    """With `own`, a crop of a vstar item's one ring asks the item's multiple-choice question (as the
    oracle asks it), in the same crops as without."""
    plain = R.training_set(("vstar",), n=6, size=56, per_item=1)
    own = R.training_set(("vstar",), n=6, size=56, per_item=1, own=True)
    items = [bench.item("vstar", "train", i, 1, "llava15-large") for i in range(6)]
    assert (own.images[0.0] == plain.images[0.0]).all()
    changed = [k for k, (q, p) in enumerate(zip(own.questions, plain.questions)) if q != p]
    assert changed and {own.questions[k] for k in changed} <= {it.question for it in items if it.options}
