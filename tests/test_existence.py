"""The existence probe (egg.reference.existence): its reader learns the answer where the states hold
it and stays at chance where they do not; its states are the decoder's own."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from egg import synthetic as bench
from egg.reference.existence import COLOUR_NAMES, SHAPE_NAMES, fit_reader, parse_question, questions, visual_states


def _planted(n_images: int, plant: bool, seed: int):
    """States of n images (1 layer, 32 tokens, 24 dims) with two objects each; `plant`: each object's
    colour and shape written into one token, as a tower's output would hold them."""
    g = np.random.default_rng(seed)
    code_c = np.random.default_rng(99).normal(size=(len(COLOUR_NAMES), 24))
    code_s = np.random.default_rng(98).normal(size=(len(SHAPE_NAMES), 24))
    x = g.normal(scale=0.5, size=(n_images, 1, 32, 24))
    rows = []
    for i in range(n_images):
        objs = {(int(g.integers(6)), int(g.integers(5))) for _ in range(2)}
        for k, (c, s) in enumerate(objs):
            if plant:
                x[i, 0, k] += 2 * code_c[c] + 2 * code_s[s]
            rows.append((i, c, s, 1))
            absent = (c, (s + 1 + int(g.integers(4))) % 5)  # the object's colour, another shape
            if absent not in objs:
                rows.append((i, *absent, 0))
    return torch.tensor(x, dtype=torch.float16), np.array(rows)


@pytest.mark.parametrize("plant", [True, False])
def test_the_reader_answers_where_the_states_hold_the_answer_and_only_there(plant):
    xtr, rtr = _planted(200, plant, 0)
    xte, rte = _planted(100, plant, 1)
    r = fit_reader(xtr, rtr, xte, rte, epochs=8, images_per_batch=16, lr=5e-3)
    assert r.n_train == len(rtr) and r.n_test == len(rte) and r.curve[-1]["test_accuracy"] == r.test_accuracy
    assert len(r.correct) == len(rte) and round(100 * np.mean(r.correct), 1) == r.test_accuracy
    if plant:
        assert r.test_accuracy >= 85, r
        assert r.yes_on_positives - r.yes_on_negatives >= 70, r
    else:
        assert r.test_accuracy <= 70, r  # the negatives share the colour: only the shape can tell them apart
    colour_only = fit_reader(xtr, rtr, xte, rte, query="colour", epochs=8, lr=5e-3)
    assert colour_only.test_accuracy <= 75, colour_only  # every negative's colour is present


def test_pope_questions_parse_and_refuse_others():
    assert parse_question("is there a blue star in the image ?") == (COLOUR_NAMES.index("blue"), SHAPE_NAMES.index("star"))
    with pytest.raises(ValueError, match="not a pope question"):
        parse_question("what shape is in the blue region ?")
    items = bench.load("pope", "train", 3, 1, geometry="llava15")
    rows = questions(items, facts=True)
    n_facts = sum(a in ("yes", "no") and q.startswith("is there") for it in items for q, a, _ in it.facts)
    assert rows.shape == (n_facts, 4) and set(rows[:, 0]) == {0, 1, 2} and set(rows[:, 3]) == {0, 1}
    test = questions(items, facts=False)
    assert test.shape == (3, 4) and [bool(r[3]) for r in test] == [it.meta["label"] == "yes" for it in items]


def test_visual_states_are_the_decoders_own(vlm, scene):
    s = visual_states(vlm, scene)
    ad = vlm.adapter
    prep = ad.prepare([scene], "is there a red circle in the image ?")
    vis = ad.visual_embeddings(prep)
    layers = vlm.model.config.text_config.num_hidden_layers
    assert s.shape == (layers + 1, prep.n_visual, vis.shape[-1]) and s.dtype == torch.float16
    assert torch.allclose(s[0].float(), vis.half().float())
    # the image's tokens come first: another question leaves their states unchanged
    other = ad.prepare([scene], "is there a green cross in the image ?")
    with torch.no_grad():
        out = vlm.model(inputs_embeds=ad.inputs_embeds(other, ad.visual_embeddings(other)), output_hidden_states=True)
    assert torch.allclose(s[-1].float(), out.hidden_states[-1][0, other.visual_positions].half().float(), atol=1e-3)


def test_the_decoder_is_taught_the_same_facts_at_the_full_view(ref_cfg, ref_processor):
    from egg.reference.build import build_model
    from egg.reference.existence import full_view_set
    from egg.reference.decoder import train_decoder

    items = bench.load("pope", "train", 4, 1, geometry="llava15")
    s = full_view_set(items, facts=True, size=ref_cfg.image_size)
    rows = questions(items, facts=True)
    assert s.images[1.0].shape == (4, ref_cfg.image_size, ref_cfg.image_size, 3)  # one view per item
    facts = [(q, a) for it in items for q, a, _ in it.facts if a in ("yes", "no") and q.startswith("is there")]
    assert list(zip(s.questions, s.answers)) == facts  # the items' own facts, in order
    assert s.shown().tolist() == rows[:, 0].tolist()  # every fact of an item shows that item's full view
    assert not (s.images[1.0][1] == s.images[1.0][0]).all()
    model = build_model(ref_cfg, ref_processor.tokenizer, seed=0)  # its own: training changes it
    test = full_view_set(bench.load("pope", "test", 3, 13, geometry="llava15"), facts=False, size=ref_cfg.image_size)
    r = train_decoder(model, ref_processor, s, test, steps=2, batch=4, eval_every=1, log=lambda m: None)
    assert r.n == {"pope": 3} and [c["step"] for c in r.curve] == [0, 1, 2] and len(r.correct[1.0]) == 3
    # train_only: the parameters it does not name stay as they were (where the decoder attends), the others move
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = train_decoder(model, ref_processor, s, test, steps=2, batch=4, lr=1e-2, eval_every=2, train_only="mlp",
                      log=lambda m: None)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".mlp." in n for n in moved) and r.settings["train_only"] == "mlp"
    with pytest.raises(ValueError, match="no_such_part"):
        train_decoder(model, ref_processor, s, test, steps=1, batch=4, train_only="no_such_part", log=lambda m: None)


def test_full_view_rehearsal_asks_what_training_teaches_at_the_full_view():
    """`taught_at_full_view`: where each object is and the control's own question, never a detail the
    full view does not show at the readable size (as `data.examples_for` leaves it untaught)."""
    from egg.reference.data import target_answer
    from egg.reference.existence import full_view_set, taught_at_full_view

    geo = "llava15-large-pope"
    text, rwqa = bench.item("text", "train", 0, 1, geo), bench.item("rwqa", "train", 0, 1, geo)
    asked = taught_at_full_view(text, 336, 64.0)
    taught = [(q, a) for q, a, _ in asked if a is not None]
    assert taught and all(q.startswith("where is") for q, _ in taught)  # the letter is not shown at 64 px
    assert len(taught) == len(text.facts) - sum(a is not None for _, a, _ in text.facts)
    assert len(asked) == len(text.facts) + 1 and asked[0] == (text.question, None, list(text.boxes))
    assert (text.question, text.answers[0], list(text.boxes)) in taught_at_full_view(text, 336, 1.0)  # 1 px: all read
    assert (rwqa.question, target_answer(rwqa), list(rwqa.boxes)) in taught_at_full_view(rwqa, 336, 64.0)
    ask = lambda it: taught_at_full_view(it, 56, 64.0)
    s = full_view_set(iter([text, rwqa]), ask, 56)
    assert s.images[1.0].shape == (2, 56, 56, 3) and set(s.families) == {"text", "rwqa"}
    assert s.shown().tolist() == sorted(s.shown().tolist()) and s.families[-1] == "rwqa"
    assert None not in s.answers and len(s.answers) == len(taught) + sum(a is not None for _, a, _ in ask(rwqa))
    # with a patch: the questions not taught there are asked to look alone, each at its object's tokens
    looked = full_view_set(iter([text, rwqa]), ask, 56, patch=14)  # a 4x4 grid
    assert looked.answers[0] is None and len(looked.looks) == len(looked.answers) == len(asked) + len(ask(rwqa))
    W, H = text.image.size
    x0, y0, x1, y1 = text.boxes[0]
    cells = {r * 4 + c for r in range(4) for c in range(4)
             if c < x1 * 4 / W and (c + 1) > x0 * 4 / W and r < y1 * 4 / H and (r + 1) > y0 * 4 / H}
    assert set(looked.looks[0]) == cells and 0 < len(cells) < 16


def test_the_command_writes_the_readers_and_the_decoders_results(ref_dir, tmp_path):
    import json

    from egg.reference.existence import main

    out = tmp_path / "sub" / "existence.json"
    main([str(ref_dir), "--train-images", "3", "--test-items", "4", "--layers", "0,1", "--queries", "colour+shape,colour",
          "--epochs", "2", "--decoder-steps", "2", "--out", str(out)])
    d = json.loads(out.read_text())
    assert [(r["layer"], r["query"]) for r in d["results"]] == [(0, "colour+shape"), (0, "colour"), (1, "colour+shape"), (1, "colour")]
    assert all(r["n_test"] == 4 and len(r["correct"]) == 4 for r in d["results"])
    assert d["decoder"]["n"] == {"pope": 4} and d["decoder"]["settings"]["steps"] == 2
    # the decoder alone: no reader, and no states for one
    main([str(ref_dir), "--train-images", "3", "--test-items", "4", "--layers", "", "--decoder-steps", "1",
          "--decoder-images", "2", "--rehearse", "1", "--rehearse-full", "1", "--out", str(out),
          "--save", str(tmp_path / "taught")])
    d = json.loads(out.read_text())
    assert d["results"] == [] and d["decoder"]["settings"]["batch"] == 2 and len(d["decoder"]["correct"]["1.0"]) == 4
    # the taught model, saved, loads as any model does, on the same benchmark geometry
    from egg.api import load_model

    taught, before = (load_model(str(d), device="cpu") for d in (tmp_path / "taught", ref_dir))
    assert bench.geometry_for(taught) == bench.geometry_for(before)
    stage = json.loads((tmp_path / "taught" / "training_log.json").read_text())["decoder_stage"]
    assert stage["settings"]["rehearse"] == stage["settings"]["rehearse_full"] == 1 and stage["continues"] == str(ref_dir) and stage["result"] == d["decoder"]
    changed = [not torch.equal(p, q) for p, q in zip(taught.model.parameters(), before.model.parameters())]
    assert any(changed) and not all(changed)  # the decoder moved, the tower did not
    # continuing it: its training record's conversations rehearsed, with the attention loss
    main([str(tmp_path / "taught"), "--train-images", "2", "--test-items", "2", "--layers", "", "--decoder-steps", "2",
          "--decoder-images", "2", "--rehearse-mix", "1", "--mix-share", "1", "--decoder-look", "1", "--out", str(out)])
    settings = json.loads(out.read_text())["decoder"]["settings"]
    assert settings["mix"] > 0 and settings["mix_share"] == 1.0 and settings["look"] == 1.0
    with pytest.raises(SystemExit, match="--save .* --decoder-steps"):
        main([str(ref_dir), "--save", str(tmp_path / "x")])


def test_the_command_names_a_layer_the_decoder_does_not_have(ref_dir):
    from egg.reference.existence import main

    with pytest.raises(SystemExit, match="--layers '0,9'.*from 0 .* to 4"):
        main([str(ref_dir), "--layers", "0,9", "--train-images", "1", "--test-items", "1"])


def _eager(model, col, feats, enc, image, looks):
    """The look loss and the logits after the image of the whole prompts (eager attention, no cache), as
    training computes them; `looks` per prompt, per turn."""
    from egg.reference.look import look_loss

    ids, _, mask = col.pad(enc)
    emb = model.get_input_embeddings()(ids)
    is_vis = ids == model.config.image_token_id
    emb = emb.masked_scatter(is_vis[..., None].expand_as(emb), feats[torch.as_tensor(image)])
    had = model.model.language_model.config._attn_implementation
    model.model.language_model.set_attn_implementation("eager")
    out = model.model.language_model(inputs_embeds=emb, attention_mask=mask, output_attentions=True)
    model.model.language_model.set_attn_implementation(had)
    named = [(k, enc[k][2][t], v) for k, turns in enumerate(looks) for t, v in enumerate(turns) if v]
    look_at = torch.zeros((len(named), feats.shape[1]), dtype=torch.bool)
    for r, (_, _, v) in enumerate(named):
        look_at[r, list(v)] = True
    look_q = torch.tensor([(k, q) for k, q, _ in named])
    p = int(is_vis[0].nonzero().max()) + 1
    ok = torch.cat([mask[:, p + 1:].bool(), torch.zeros_like(mask[:, :1], dtype=torch.bool)], 1)
    return look_loss(out.attentions, is_vis, look_q, look_at), model.lm_head(out.last_hidden_state)[:, p:-1], ok


def test_the_decoder_stage_attention_loss_is_trainings_over_the_cached_prefix(ref_cfg, ref_processor):
    """`_decoder_pass` runs the image's prefix once and the questions after it; its look loss must be
    the one training computes from eager attention over the whole prompt."""
    from egg.reference.build import build_model
    from egg.reference.data import Collator
    from egg.reference.decoder import _decoder_pass, _encoded, train_decoder
    from egg.reference.existence import full_view_set
    from egg.reference.look import register

    model = build_model(ref_cfg, ref_processor.tokenizer, seed=0)
    col, n_vis = Collator(ref_processor), (ref_cfg.image_size // ref_cfg.patch_size) ** 2
    s = full_view_set(bench.load("pope", "train", 2, 1, geometry="llava15"), True, ref_cfg.image_size, ref_cfg.patch_size)
    assert len(s.looks) == len(s.answers) and all(s.looks)  # every pope fact names an object
    enc, image = _encoded(col, s), s.shown()
    feats = torch.randn(2, n_vis, ref_cfg.text_hidden, generator=torch.Generator().manual_seed(0))
    model.model.language_model.set_attn_implementation(register(masked=True))
    logits, _, lf = _decoder_pass(model, col, feats, enc, image, [(v,) for v in s.looks])
    loss, whole, ok = _eager(model, col, feats, enc, image, [(v,) for v in s.looks])
    assert torch.allclose(lf, loss, atol=1e-5)  # and its logits are the whole prompt's
    assert torch.allclose(logits[ok[:, :logits.shape[1]]], whole[ok[:, :logits.shape[1]]], atol=1e-4)

    model.model.language_model.set_attn_implementation("eager")
    test = full_view_set(bench.load("pope", "test", 2, 13, geometry="llava15"), False, ref_cfg.image_size)
    r = train_decoder(model, ref_processor, s, test, steps=1, batch=2, look=3.0, log=lambda m: None)
    assert r.settings["look"] == 3.0 and r.curve[-1]["loss"] is not None
    assert model.model.language_model.config._attn_implementation == "eager"  # as it came
    with pytest.raises(ValueError, match="looks"):
        train_decoder(model, ref_processor, test, test, steps=1, look=3.0)


def test_the_decoder_stage_rehearses_trainings_conversations_with_crops_appended(ref_cfg, ref_processor, tmp_path):
    """`training_mixture` draws the conversations of the saved model's training record; `_mixture` groups
    them by image count, and a prompt of a full view and crops gets training's look loss over every view."""
    import json
    from dataclasses import asdict

    from egg.reference.build import build_model
    from egg.reference.config import TrainConfig
    from egg.reference.data import Collator
    from egg.reference.decoder import _decoder_pass, _mixture, train_decoder
    from egg.reference.existence import full_view_set, training_mixture
    from egg.reference.look import register

    with pytest.raises(SystemExit, match="training_log.json"):
        training_mixture(tmp_path, 1)
    (tmp_path / "training_log.json").write_text(json.dumps({"config": asdict(TrainConfig(model=ref_cfg.to_dict()))}))
    mix = training_mixture(tmp_path, 2, workers=1)
    tokens = (ref_cfg.image_size // ref_cfg.patch_size) ** 2
    assert {len(ex.images) for ex in mix} >= {1, 2} and all(ex.enc for ex in mix)
    two = [ex for ex in mix if len(ex.images) == 2 and any(t >= tokens for v in ex.looks for t in v)]
    assert two  # some turn looks at its object in the appended crop
    model = build_model(ref_cfg, ref_processor.tokenizer, seed=0)
    col = Collator(ref_processor)
    groups = _mixture(mix, lambda ims: torch.randn(len(ims), tokens, ref_cfg.text_hidden,
                                                   generator=torch.Generator().manual_seed(len(ims))))
    x, enc, looks = groups[2]
    assert x.shape[1] == 2 * tokens and len(enc) == len(looks) == sum(len(ex.images) == 2 for ex in mix)
    model.model.language_model.set_attn_implementation(register(masked=True))
    _, _, lf = _decoder_pass(model, col, x[:4], enc[:4], None, looks[:4])
    assert torch.allclose(lf, _eager(model, col, x[:4], enc[:4], np.arange(4), looks[:4])[0], atol=1e-5)

    s = full_view_set(bench.load("pope", "train", 2, 1, geometry="v1"), True, ref_cfg.image_size, ref_cfg.patch_size)
    test = full_view_set(bench.load("pope", "test", 2, 13, geometry="v1"), False, ref_cfg.image_size)
    r = train_decoder(model, ref_processor, s, test, steps=2, batch=4, look=3.0, mix=mix, mix_share=1.0,
                      log=lambda m: None)
    assert r.settings["mix"] == len(mix) and r.settings["mix_share"] == 1.0
