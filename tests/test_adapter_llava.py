"""The LLaVA adapter on the reference model (real LlavaForConditionalGeneration, random init)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from egg.adapters import EmbeddingCache, LlavaAdapter, VLMAdapter, adapter_class, adapter_for, register
from egg.adapters import _BY_CONFIG_CLASS, _BY_MODEL_TYPE
from egg.adapters.llava import processed_footprint


# --------------------------------------------------------------------------- registry


def test_adapter_for_picks_llava_from_config(ref_model, ref_processor):
    a = adapter_for(ref_model, ref_processor)
    assert type(a) is LlavaAdapter
    assert not any(p.requires_grad for p in ref_model.parameters())


def test_unknown_model_type_raises_and_register_plugs_in():
    from transformers import PretrainedConfig

    class ToyConfig(PretrainedConfig):
        model_type = "toy_vlm_for_tests"

    class Toy:
        config = ToyConfig()

    with pytest.raises(NotImplementedError, match="toy_vlm_for_tests"):
        adapter_class(Toy())

    class ToyAdapter(VLMAdapter):
        pass

    try:
        register(ToyAdapter, config_classes=(ToyConfig,))
        assert adapter_class(Toy()) is ToyAdapter
    finally:
        _BY_CONFIG_CLASS.pop(ToyConfig, None)
        _BY_MODEL_TYPE.pop("toy_vlm_for_tests", None)


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("n_crops", [0, 1, 2, 3])
def test_token_grids_with_appended_crops(adapter, ref_model, scene, question, n_crops):
    crops = [scene.crop((10 * i, 5 * i, 100 + 20 * i, 80 + 10 * i)) for i in range(n_crops)]
    prep = adapter.prepare([scene] + crops, question)
    ids = prep.input_ids[0]
    image_id = ref_model.config.image_token_id
    assert len(prep.grids) == 1 + n_crops
    assert prep.n_visual == 64 * (1 + n_crops) == int((ids == image_id).sum())
    starts = [g.start for g in prep.grids]
    assert starts == sorted(starts)
    for i, g in enumerate(prep.grids):
        assert g.image_index == i
        assert g.shape == (8, 8)
        pos = g.positions()
        assert pos.shape == (8, 8)
        assert bool((ids[torch.as_tensor(pos.ravel())] == image_id).all())
        assert np.array_equal(pos.ravel(), np.arange(g.start, g.start + 64))  # contiguous, row-major
        w, h = ([scene] + crops)[i].size
        assert g.image_size == (w, h)
        assert g.footprint == pytest.approx((0.0, 0.0, w, h))  # reference squashes: whole image
    # the question comes after every image
    last_visual = max(g.start + 63 for g in prep.grids)
    assert last_visual < prep.seq_len - 3
    # rows of the visual-embeddings tensor, in grid order
    assert np.array_equal(np.concatenate([prep.visual_rows(g).ravel() for g in prep.grids]), np.arange(prep.n_visual))


def test_visual_embeddings_match_model_and_cache_skips_seen_images(adapter, ref_model, scene, question):
    crop = scene.crop((0, 0, 120, 80))
    prep = adapter.prepare([scene, crop], question)
    cache = EmbeddingCache()
    n0 = adapter.counter.images_encoded
    v = adapter.visual_embeddings(prep, cache)
    assert v.shape == (128, ref_model.config.text_config.hidden_size)
    assert adapter.counter.images_encoded - n0 == 2
    with torch.no_grad():
        feats = ref_model.model.get_image_features(pixel_values=prep.inputs["pixel_values"], return_dict=True)
    ref = torch.cat(list(feats.pooler_output))
    torch.testing.assert_close(v, ref, rtol=1e-5, atol=1e-5)
    # the next state appends a new crop: only that one is encoded
    prep2 = adapter.prepare([scene, crop, scene.crop((50, 50, 200, 150))], question)
    n1 = adapter.counter.images_encoded
    v2 = adapter.visual_embeddings(prep2, cache)
    assert adapter.counter.images_encoded - n1 == 1
    torch.testing.assert_close(v2[:128], v)
    assert cache.hits >= 2


def test_a_prompts_pixels_and_the_calls_image_cache_are_held_once(adapter, scene, question):
    """The zoom loop prompts the original again at every state: the cache keeps its
    processed pixels, and once a prompt with crops is prepared the cache reads its rows of
    that prompt's tensor (a view), so that the two do not each hold a copy."""
    cache = EmbeddingCache()
    crop = scene.crop((0, 0, 120, 80))
    first = adapter.prepare([scene], question, cache=cache)
    both = adapter.prepare([scene, crop], question, cache=cache)
    again = adapter.prepare([scene], question, cache=cache)
    plain = adapter.prepare([scene, crop], question)
    assert torch.equal(both.inputs["pixel_values"], plain.inputs["pixel_values"])
    assert torch.equal(again.inputs["pixel_values"], first.inputs["pixel_values"])
    storage = lambda p: p.inputs["pixel_values"].untyped_storage().data_ptr()  # noqa: E731
    assert storage(again) == storage(both) != storage(first)
    assert cache.pixels.misses == 2 and cache.pixels.hits == 2  # each image processed once


def test_forward_matches_model_and_layer_truncation(adapter, ref_model, scene, question):
    prep = adapter.prepare([scene], question)
    vis = adapter.visual_embeddings(prep)
    with torch.no_grad():
        out = ref_model(**prep.inputs, output_hidden_states=True)
        full = adapter.forward_from_embeddings(prep, vis)
        all_layers = adapter.forward_from_embeddings(prep, vis, num_layers=adapter.num_layers)
        two = adapter.forward_from_embeddings(prep, vis, num_layers=2)
    torch.testing.assert_close(full, out.logits[0, -1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(all_layers, full)
    lm = ref_model.model.language_model
    manual = ref_model.lm_head(lm.norm(out.hidden_states[2][0, -1]))
    torch.testing.assert_close(two, manual, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(two, full)
    with pytest.raises(ValueError):
        adapter.forward_from_embeddings(prep, vis, num_layers=0)


def test_attention_capture_restores_implementation(adapter, scene, question):
    prep = adapter.prepare([scene], question)
    vis = adapter.visual_embeddings(prep)
    before = adapter.language_model.config._attn_implementation
    with torch.no_grad():
        out = adapter.forward(prep, vis, attention_layer=1)
    att = out.attention
    assert att.shape[0] == 1 and att.shape[2] == att.shape[3] == prep.seq_len
    torch.testing.assert_close(att[0, :, -1].sum(-1), torch.ones(att.shape[1]), rtol=1e-4, atol=1e-4)
    assert adapter.language_model.config._attn_implementation == before


def test_generate_matches_model_generate(adapter, ref_model, ref_processor, scene, question):
    prep = adapter.prepare([scene, scene.crop((20, 20, 80, 70))], question)
    text = adapter.generate(prep, max_new_tokens=4)
    with torch.no_grad():
        out = ref_model.generate(**prep.inputs, max_new_tokens=4, do_sample=False)
    expect = ref_processor.tokenizer.decode(out[0, prep.prompt_ids.shape[1]:], skip_special_tokens=True).strip()
    assert text == expect


# --------------------------------------------------------------------------- geometry


def _clip_processor(**kw):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**kw)


def test_squash_grid_box_round_trip_non_square(adapter):
    from egg.method.boxes import pixels_to_grid_box

    prep = adapter.prepare([Image.new("RGB", (300, 120))], "what shape ?")
    g = prep.grids[0]
    fp = g.footprint
    assert fp == pytest.approx((0, 0, 300, 120))
    assert g.cell_size == pytest.approx((37.5, 15.0))
    box = adapter.grid_box_to_pixels(g, (2, 1, 5, 4))
    assert box == pytest.approx((75.0, 15.0, 187.5, 60.0))
    assert pixels_to_grid_box(box, g.shape, g.footprint) == pytest.approx((2, 1, 5, 4))


def test_center_crop_geometry_matches_processor():
    """llava-1.5-hf style: shortest edge -> 64, centre crop 64x64 of a 200x100 image.

    A bright stripe outside the kept centre must not reach the processed tensor; a stripe
    inside lands where the footprint says.
    """
    ip = _clip_processor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_center_crop=True,
                         do_normalize=False, do_rescale=True, resample=0)
    fp = processed_footprint((200, 100), ip)
    assert fp == pytest.approx((50.0, 0.0, 150.0, 100.0))
    for x0, x1, visible in [(160, 180, False), (90, 110, True)]:
        arr = np.zeros((100, 200, 3), np.uint8)
        arr[:, x0:x1] = 255
        pv = ip(Image.fromarray(arr), return_tensors="pt")["pixel_values"][0, 0].numpy()
        cols = np.flatnonzero(pv.mean(0) > 0.5)
        assert (cols.size > 0) == visible
        if visible:
            sx = 64 / (fp[2] - fp[0])
            assert cols.min() == pytest.approx((x0 - fp[0]) * sx, abs=1.0)
            assert cols.max() + 1 == pytest.approx((x1 - fp[0]) * sx, abs=1.0)
    # a grid box in the kept centre maps into the cropped area only
    from egg.adapters.records import TokenGrid
    from egg.adapters.base import grid_to_image_box

    g = TokenGrid(image_index=0, start=0, shape=(8, 8), footprint=fp, image_size=(200, 100))
    box = grid_to_image_box(g, (0, 0, 8, 8))
    assert box == pytest.approx((50.0, 0.0, 150.0, 100.0))


@pytest.mark.parametrize("size", [(201, 99), (97, 263), (64, 64), (1, 1), (20, 3000)])
def test_footprint_locates_a_dot(size):
    """A bright square inside the footprint appears in the processed tensor where predicted."""
    ip = _clip_processor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_center_crop=True,
                         do_normalize=False)
    W, H = size
    fp = processed_footprint(size, ip)
    sx, sy = 64 / (fp[2] - fp[0]), 64 / (fp[3] - fp[1])
    side = int(min(W, H, max(1, np.ceil(4 / min(sx, sy)))))  # >= 4 processed pixels
    x0 = int(np.clip(fp[0] + 0.3 * (fp[2] - fp[0]) - side / 2, 0, W - side))
    y0 = int(np.clip(fp[1] + 0.6 * (fp[3] - fp[1]) - side / 2, 0, H - side))
    arr = np.zeros((H, W, 3), np.uint8)
    arr[y0 : y0 + side, x0 : x0 + side] = 255
    pv = np.clip(ip(Image.fromarray(arr), return_tensors="pt")["pixel_values"][0, 0].numpy(), 0, None)
    assert pv.max() > 0
    rr, cc = np.mgrid[0:64, 0:64]
    cy, cx = (pv * rr).sum() / pv.sum() + 0.5, (pv * cc).sum() / pv.sum() + 0.5
    assert cx == pytest.approx((x0 + side / 2 - fp[0]) * sx, abs=1.0)
    assert cy == pytest.approx((y0 + side / 2 - fp[1]) * sy, abs=1.0)


def test_pad_to_square_geometry_clips_to_image():
    from transformers import LlavaImageProcessorPil

    from egg.adapters.records import TokenGrid
    from egg.adapters.base import grid_to_image_box

    ip = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    fp = processed_footprint((200, 100), ip)
    assert fp == pytest.approx((0.0, -50.0, 200.0, 150.0))
    g = TokenGrid(image_index=0, start=0, shape=(8, 8), footprint=fp, image_size=(200, 100))
    assert grid_to_image_box(g, (0, 0, 8, 8)) == pytest.approx((0, 0, 200, 100))
    top_row = grid_to_image_box(g, (0, 0, 8, 1))  # all padding
    assert top_row[1] == top_row[3] == 0.0


def test_reference_adapter_with_center_crop_processor(ref_model, ref_processor, question):
    """The same model behind a llava-1.5-hf style processor: grids cover the centre only."""
    from transformers import LlavaProcessor

    S, P = ref_processor.image_processor.size["height"], ref_processor.patch_size
    ip = _clip_processor(size={"shortest_edge": S}, crop_size={"height": S, "width": S}, do_center_crop=True)
    proc = LlavaProcessor(image_processor=ip, tokenizer=ref_processor.tokenizer, patch_size=P,
                          vision_feature_select_strategy="default", chat_template=ref_processor.chat_template,
                          image_token="<image>", num_additional_image_tokens=1)
    a = adapter_for(ref_model, proc)
    img = Image.new("RGB", (200, 100), (200, 200, 200))
    prep = a.prepare([img, img.crop((0, 0, 50, 100))], question)
    assert prep.grids[0].footprint == pytest.approx((50, 0, 150, 100))
    assert prep.grids[1].footprint == pytest.approx((0, 25, 50, 75))
    assert a.grid_box_to_pixels(prep.grids[0], (0, 0, 4, 8)) == pytest.approx((50, 0, 100, 100))
