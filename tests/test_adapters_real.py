"""LLaVA-NeXT, Qwen2.5-VL and InternVL adapters on tiny random-init models of the real classes.

Every model here is a real transformers class (``LlavaNextForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``, ``InternVLForConditionalGeneration``) built from a
small config, with the real processor class (PIL image processors: no torchvision) and a
local tokenizer (the reference WordPiece vocabulary plus each family's special tokens).
Nothing is downloaded. Built once per session.

Qwen2.5-VL's and InternVL's processors also take a video processor, and every transformers
video processor needs torchvision; ``_no_video_processor`` lets the processor be built
without one (images only), for the construction call only.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

import egg
from egg.adapters import VLM, InternVLAdapter, LlavaNextAdapter, Qwen2_5_VLAdapter, Qwen3VLAdapter, adapter_class
from egg.method.boxes import pixels_to_grid_box
from egg.method.relevance import relevance
from egg.method.zoom import propose_regions

FAMILIES = ("llava_next", "qwen2_5_vl", "qwen3_vl", "internvl")
ADAPTERS = {"llava_next": LlavaNextAdapter, "qwen2_5_vl": Qwen2_5_VLAdapter, "qwen3_vl": Qwen3VLAdapter,
            "internvl": InternVLAdapter}
QWEN = ("qwen2_5_vl", "qwen3_vl")

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}IMAGE_PLACEHOLDER{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@contextlib.contextmanager
def _no_video_processor():
    from transformers.processing_utils import ProcessorMixin

    orig = ProcessorMixin.check_argument_for_proper_class

    def check(self, name, arg):
        if name == "video_processor" and arg is None:
            return None
        return orig(self, name, arg)

    ProcessorMixin.check_argument_for_proper_class = check
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = orig


def _tokenizer(extra_special=(), named=None):
    from transformers import PreTrainedTokenizerFast

    from egg.reference.build import IMAGE_TOKEN, build_tokenizer

    base = build_tokenizer()
    kw = {}
    if named:
        kw["extra_special_tokens"] = dict(named)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", padding_side="left", **kw,
    )
    specials = [IMAGE_TOKEN, "<|im_start|>", "<|im_end|>", *extra_special]
    tok.add_special_tokens({"additional_special_tokens": specials})
    return tok


def _text_cfg(tok, **kw):
    d = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    d.update(kw)
    return d


def _finish(model, tok):
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.eval()
    return model


def build_llava_next():
    """Tile 32 px, patch 8 -> 4x4 tokens per tile; canvases up to 96 px."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)

    from egg.reference.build import CHAT_TEMPLATE

    tok = _tokenizer()
    pins = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32], [64, 96], [96, 64]]
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=pins)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                              chat_template=CHAT_TEMPLATE, image_token="<image>", num_additional_image_tokens=1)
    torch.manual_seed(0)
    cfg = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                       image_size=32, patch_size=8, projection_dim=64),
        text_config=LlamaConfig(**_text_cfg(tok, num_key_value_heads=4)),
        image_token_id=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pins, vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=False,
    )
    return _finish(LlavaNextForConditionalGeneration(cfg), tok), proc


def _qwen_parts(processor_cls):
    """Tokenizer, processor (patch 8, 2x2 merge -> one token per 16 px; at most 192x192 px per
    image) and the special-token ids shared by Qwen2.5-VL and Qwen3-VL."""
    from transformers import Qwen2VLImageProcessorPil

    tok = _tokenizer(("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"))
    tpl = CHATML.replace("IMAGE_PLACEHOLDER", "<|vision_start|><|image_pad|><|vision_end|>")
    ip = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16 * 4,
                                  max_pixels=192 * 192)
    with _no_video_processor():
        proc = processor_cls(image_processor=ip, tokenizer=tok, chat_template=tpl)
    ids = {f"{k}_token_id": tok.convert_tokens_to_ids(f"<|{v}|>")
           for k, v in (("image", "image_pad"), ("video", "video_pad"), ("vision_start", "vision_start"))}
    torch.manual_seed(0)
    return tok, proc, ids


def build_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tok, proc, ids = _qwen_parts(Qwen2_5_VLProcessor)
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=32,
                           fullatt_block_indexes=[1], in_chans=3),
        text_config=_text_cfg(tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "mrope_section": [2, 3, 3]}),
        **ids,
    )
    return _finish(Qwen2_5_VLForConditionalGeneration(cfg), tok), proc


def build_qwen3_vl():
    """As Qwen2.5-VL, plus deepstack features from both vision blocks into decoder layers 0-1."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    tok, proc, ids = _qwen_parts(Qwen3VLProcessor)
    cfg = Qwen3VLConfig(
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0, 1]),
        text_config=_text_cfg(tok, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                 "mrope_section": [2, 3, 3]}),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        **ids,
    )
    return _finish(Qwen3VLForConditionalGeneration(cfg), tok), proc


def build_internvl():
    """Tile 64 px, patch 8, pixel shuffle 0.5 -> 4x4 tokens per tile; up to 4 tiles + thumbnail."""
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor

    tok = _tokenizer(named={"start_image_token": "<img>", "end_image_token": "</img>",
                            "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    tpl = CHATML.replace("IMAGE_PLACEHOLDER", "<IMG_CONTEXT>\n")
    ip = GotOcr2ImageProcessorPil(size={"height": 64, "width": 64}, crop_to_patches=True, min_patches=1, max_patches=4)
    with _no_video_processor():
        proc = InternVLProcessor(image_processor=ip, tokenizer=tok, chat_template=tpl, image_seq_length=16)
    torch.manual_seed(0)
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=[64, 64], patch_size=[8, 8]),
        text_config=dict(model_type="qwen2", **_text_cfg(tok)),
        image_token_id=tok.context_image_token_id, image_seq_length=16, downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    return _finish(InternVLForConditionalGeneration(cfg), tok), proc


def build_llava():
    """The reference architecture (plain LLaVA, 8 x 8 tokens per image), random init."""
    from egg.reference.build import ReferenceConfig, build_model, build_processor

    cfg = ReferenceConfig()
    proc = build_processor(cfg)
    return build_model(cfg, proc.tokenizer, seed=0), proc


BUILDERS = {"llava_next": build_llava_next, "qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": build_qwen3_vl,
            "internvl": build_internvl, "llava": build_llava}


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    model, proc = BUILDERS[request.param]()
    vlm = VLM.from_model(model, proc, source=f"random-init {request.param}")
    return request.param, vlm


@pytest.fixture(scope="session")
def image(scene) -> Image.Image:
    """Non-square, with a few coloured shapes (conftest's ``scene``)."""
    return scene


def _crops(img, n):
    boxes = [(10, 5, 130, 85), (100, 60, 230, 150), (30, 40, 90, 150)]
    return [img.crop(b) for b in boxes[:n]]


def _full_inputs(prep):
    """The processor's tensors extended by the prepared suffix (for the model's own forward)."""
    out = dict(prep.inputs)
    n = len(prep.suffix)
    if n:
        L = prep.inputs["input_ids"].shape[1]
        for k, v in prep.inputs.items():
            if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == L and k not in ("input_ids", "attention_mask"):
                out[k] = torch.cat([v, torch.zeros((1, n), dtype=v.dtype)], dim=1)
        out["input_ids"] = prep.input_ids
        out["attention_mask"] = prep.attention_mask
    return out


# --------------------------------------------------------------------------- registry


def test_adapter_picked_from_config_not_name(family):
    name, vlm = family
    assert type(vlm.adapter) is ADAPTERS[name]
    vlm.model.config._name_or_path = "llava-hf/llava-1.5-7b-hf"  # a misleading name changes nothing
    assert adapter_class(vlm.model) is ADAPTERS[name]
    assert not any(p.requires_grad for p in vlm.model.parameters())


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("n_crops", [0, 1, 2, 3])
def test_grids_cover_the_visual_tokens(family, image, n_crops):
    name, vlm = family
    a = vlm.adapter
    imgs = [image] + _crops(image, n_crops)
    prep = a.prepare(imgs, "what shape is red ?")
    ids = prep.input_ids[0]
    visual = set(prep.visual_positions.tolist())
    assert visual == set((ids == a.image_token_id).nonzero().flatten().tolist())
    seen = []
    for g in prep.grids:
        pos = g.positions()
        assert pos.shape == g.shape
        assert set(pos.ravel().tolist()) <= visual
        seen.extend(pos.ravel().tolist())
    assert len(seen) == len(set(seen))  # grids are disjoint
    # grouped by image; the first grid of each image covers the whole image
    idx = [g.image_index for g in prep.grids]
    assert idx == sorted(idx) and set(idx) == set(range(len(imgs)))
    for i, im in enumerate(imgs):
        gs = [g for g in prep.grids if g.image_index == i]
        assert gs[0].image_size == im.size
        W, H = im.size
        x0, y0, x1, y1 = gs[0].footprint
        assert x0 <= 0.15 * W and y0 <= 0.15 * H and x1 >= 0.85 * W and y1 >= 0.85 * H
        assert all(g.image_size == im.size for g in gs)
    left = visual - set(seen)
    if name == "llava_next":  # only the image-newline tokens are outside the grids: one per high-res row
        hi = [g for g in prep.grids if g.row_stride]
        assert len(hi) == len(imgs)
        assert left == {g.start + r * g.row_stride + g.shape[1] for g in hi for r in range(g.shape[0])}
    else:
        assert not left
    assert sum(prep.image_token_counts) == prep.n_visual
    if name == "internvl":
        assert len(prep.grids) > len(imgs)  # 240x160 is tiled: thumbnail + tiles
    vis = a.visual_embeddings(prep)
    hidden = vlm.model.config.text_config.hidden_size
    parts = 1 + (a.n_deepstack if name == "qwen3_vl" else 0)  # Qwen3-VL: merger output + deepstack
    assert vis.shape == (prep.n_visual, hidden * parts)


def test_forward_matches_the_model(family, image):
    name, vlm = family
    a = vlm.adapter
    prep = a.prepare([image] + _crops(image, 1), "what shape is red ?")
    vis = a.visual_embeddings(prep)
    for p in (prep, prep.with_suffix([7, 9, 11])):  # with a suffix: M-RoPE positions of answer tokens
        with torch.no_grad():
            ref = vlm.model(**_full_inputs(p)).logits[0, -1]
            got = a.forward_from_embeddings(p, vis)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        two = a.forward_from_embeddings(prep, vis, num_layers=1)
    assert two.shape == got.shape and not torch.allclose(two, got)


@pytest.mark.parametrize("n_crops", [0, 1])
def test_answer_from_the_relevance_pass_kv_cache_is_token_for_token_the_same(family, image, n_crops):
    """The answer continues the relevance forward's key/value cache (no second prefill) and
    equals plain generation: M-RoPE positions (Qwen) and deepstack features (Qwen3) included."""
    name, vlm = family
    a = vlm.adapter
    prep = a.prepare([image] + _crops(image, n_crops), "what shape is red ?")
    vis = a.visual_embeddings(prep)
    plain = a.generate_ids(prep, 6, vis)
    a.generate_ids(a.prepare([image.transpose(Image.Transpose.ROTATE_90)], "what ?"), 2)  # leaves other state
    res = relevance(a, prep, visual_embeds=vis, keep_kv=True)
    assert res.kv is not None
    before = a.counter.copy()
    assert a.generate_ids(prep, 6, kv=res.kv) == plain
    assert (a.counter - before).forward == 0  # no prefill ran
    assert relevance(a, prep, visual_embeds=vis, keep_kv=True, num_layers=1).kv is None  # truncated: no cache
    assert relevance(a, prep, visual_embeds=vis, keep_kv=True, token_index=2).kv is None  # prompt + prefix


def test_batched_passes_equal_single_prompts(family, image):
    """forward_batch / generate_batch over prompts of different lengths (left padding, M-RoPE
    positions, deepstack rows) give each prompt its single result, and a row's gradient
    reaches only its own visual embeddings."""
    name, vlm = family
    a = vlm.adapter
    other = image.transpose(Image.Transpose.ROTATE_90)
    preps = [a.prepare([image], "what shape is red ?"),
             a.prepare([other] + _crops(image, 1), "which shape is the largest one in the picture ?"),
             a.prepare([other], "what ?")]
    vis = [a.visual_embeddings(p) for p in preps]
    with torch.no_grad():
        single = torch.stack([a.forward(p, v).logits for p, v in zip(preps, vis)])
    leaves = [v.clone().requires_grad_(True) for v in vis]
    with torch.enable_grad():
        batch = a.forward_batch(preps, leaves).logits
        batch[1].sum().backward()
    torch.testing.assert_close(batch.detach(), single, rtol=1e-4, atol=1e-5)
    assert leaves[0].grad is None or not leaves[0].grad.any()
    assert leaves[1].grad is not None and leaves[1].grad.any()
    assert leaves[2].grad is None or not leaves[2].grad.any()
    assert a.generate_batch(preps, 6, vis) == [a.generate_ids(p, 6, v) for p, v in zip(preps, vis)]
    pairs = [(image, "what shape is red ?"), (other, "what ?")]
    got = egg.ground_batch(vlm, [p[0] for p in pairs], [p[1] for p in pairs], max_iterations=1)
    ref = [egg.ground(vlm, im, q, max_iterations=1) for im, q in pairs]
    assert [g.answer for g in got] == [g.answer for g in ref]
    assert [g.boxes for g in got] == [g.boxes for g in ref]
    for variant in ("rel-att", "grad-att", "pure-grad"):  # attention rows and pixel gradients, batched
        got = egg.vicrop_batch(vlm, [p[0] for p in pairs], [p[1] for p in pairs], variant=variant)
        ref = [egg.vicrop(vlm, im, q, variant=variant) for im, q in pairs]
        assert [(g.answer, g.boxes) for g in got] == [(g.answer, g.boxes) for g in ref], variant


def test_gradient_lives_on_the_visual_tokens(family, image):
    name, vlm = family
    a = vlm.adapter
    prep = a.prepare([image, image.crop((0, 0, 120, 100))], "what shape is red ?")
    res = relevance(a, prep, keep_gradient=True)
    g = res.gradient
    hidden = vlm.model.config.text_config.hidden_size
    assert g.shape[0] == prep.n_visual and g.shape[1] % hidden == 0
    norms = torch.linalg.vector_norm(g.double(), dim=-1)
    assert bool(torch.isfinite(norms).all()) and bool((norms > 0).all()) and not res.degenerate
    assert len(res.maps) == len(prep.grids)
    for m, grid in zip(res.maps, prep.grids):
        assert m.shape == grid.shape
        np.testing.assert_allclose(m, norms.numpy()[prep.visual_rows(grid)])
    # the whole-sequence view: d entropy / d (spliced) input embeddings; the visual rows of
    # the relevance gradient are exactly the visual positions' rows
    captured = {}
    orig = a.inputs_embeds

    def leaf_embeds(p, v):
        captured["e"] = orig(p, v).detach().requires_grad_(True)
        return captured["e"]

    vis = a.visual_embeddings(prep)
    a.inputs_embeds = leaf_embeds
    try:
        with torch.enable_grad():
            logits = a.forward(prep, vis).logits
            lp = torch.log_softmax(logits, -1)
            (ge,) = torch.autograd.grad(-(lp.exp() * lp).sum(), captured["e"])
    finally:
        del a.inputs_embeds
    torch.testing.assert_close(ge[0, prep.visual_positions].double(), g[:, :hidden].double(), rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", [(240, 160), (90, 210), (300, 70)])
def test_grid_box_pixel_round_trip_non_square(family, size):
    name, vlm = family
    a = vlm.adapter
    img = Image.new("RGB", size, (128, 128, 128))
    prep = a.prepare([img], "what shape ?")
    W, H = size
    for g in prep.grids:
        rows, cols = g.shape
        full = a.grid_box_to_pixels(g, (0, 0, cols, rows))
        fx0, fy0, fx1, fy1 = g.footprint
        assert full == pytest.approx((max(fx0, 0), max(fy0, 0), min(fx1, W), min(fy1, H)))
        inner = (cols // 4, rows // 4, max(cols // 4 + 1, 3 * cols // 4), max(rows // 4 + 1, 3 * rows // 4))
        px = a.grid_box_to_pixels(g, inner)
        if fx0 >= 0 and fy0 >= 0 and fx1 <= W and fy1 <= H:
            assert pixels_to_grid_box(px, g.shape, g.footprint) == pytest.approx(inner)
    if name in QWEN:  # the grid is the processed image in 2x2-merged patches
        pw, ph = a.processed_size(size)
        assert prep.grids[0].shape == (ph // a.patch_size, pw // a.patch_size)
    if name == "internvl":  # tiles partition the image, thumbnail first
        tiles = prep.grids[1:]
        cols, rows = a.tile_arrangement(size)
        assert len(tiles) == (cols * rows if cols * rows > 1 else 0)
        if tiles:
            area = sum((t.footprint[2] - t.footprint[0]) * (t.footprint[3] - t.footprint[1]) for t in tiles)
            assert area == pytest.approx(W * H)


def test_tile_pixels_show_their_footprint(family):
    """A four-colour image: each tile / grid's processed pixels have the colour mix its
    footprint predicts (checks the tile order and the footprints against the processor)."""
    name, vlm = family
    a = vlm.adapter
    W, H = 240, 120
    arr = np.zeros((H, W, 3), np.uint8)
    arr[: H // 2, : W // 2] = (255, 0, 0)
    arr[: H // 2, W // 2 :] = (0, 255, 0)
    arr[H // 2 :, : W // 2] = (0, 0, 255)
    arr[H // 2 :, W // 2 :] = (255, 255, 255)
    img = Image.fromarray(arr)
    prep = a.prepare([img], "what shape ?")
    if name == "internvl":
        pix = prep.inputs["pixel_values"]  # (tiles + thumbnail, 3, 64, 64), thumbnail last
        order = list(range(1, len(prep.grids))) + [0]
        grids = [prep.grids[i] for i in order]
        tensors = list(pix)
    elif name == "llava_next":
        pix = prep.inputs["pixel_values"][0]  # base, then canvas tiles row-major
        g = prep.grids[1]
        lay = a.image_layout(img.size)["hi"]
        nr, nc = lay["tiles"]
        canvas = torch.zeros(3, nr * 32, nc * 32)
        for t in range(nr * nc):
            r, c = divmod(t, nc)
            canvas[:, r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] = pix[1 + t]
        cell = 32 / a.tokens_per_tile
        r0, c0 = lay["rows"][0], lay["cols"][0]
        kept = canvas[:, int(r0 * cell) : int((r0 + g.shape[0]) * cell), int(c0 * cell) : int((c0 + g.shape[1]) * cell)]
        grids, tensors = [prep.grids[0], g], [pix[0], kept]
    else:
        return  # Qwen: one grid covering the whole (squashed) image; see the round-trip test
    ip = a.processor.image_processor
    mean = torch.tensor(ip.image_mean).view(3, 1, 1)
    std = torch.tensor(ip.image_std).view(3, 1, 1)
    for g, t in zip(grids, tensors):
        rgb = (t * std + mean).clamp(0, 1).mean(dim=(1, 2)).numpy()
        x0, y0, x1, y1 = (int(round(v)) for v in a.grid_box_to_pixels(g, (0, 0, g.shape[1], g.shape[0])))
        expect = arr[y0:y1, x0:x1].reshape(-1, 3).mean(0) / 255.0
        np.testing.assert_allclose(rgb, expect, atol=0.06)


# --------------------------------------------------------------------------- generation


def test_generate_matches_model_generate(family, image):
    name, vlm = family
    a = vlm.adapter
    prep = a.prepare([image, image.crop((20, 20, 150, 110))], "what shape is red ?")
    text = a.generate(prep, max_new_tokens=4)
    with torch.no_grad():
        out = vlm.model.generate(**prep.inputs, max_new_tokens=4, do_sample=False)
    expect = a.tokenizer.decode(out[0, prep.prompt_ids.shape[1]:], skip_special_tokens=True).strip()
    assert text == expect


def test_ground_and_vicrop_finish(family, image):
    name, vlm = family
    g = egg.ground(vlm, image, "what shape is red ?", stopping="fixed", fixed_n=1, max_new_tokens=2)
    assert g.boxes and isinstance(g.answer, str)
    for b in g.boxes:
        assert 0 <= b[0] < b[2] <= image.size[0] and 0 <= b[1] < b[3] <= image.size[1]
    for variant in ("rel-att", "grad-att"):
        v = egg.vicrop(vlm, image, "what shape is red ?", variant=variant, max_new_tokens=1)
        (b,) = v.boxes
        assert 0 <= b[0] < b[2] <= image.size[0] and 0 <= b[1] < b[3] <= image.size[1]
        m = v.trace[0].maps[0]
        assert m.shape == v.trace[0].maps[0].shape and np.isfinite(m).all()


def test_pure_grad_vicrop(family, image):
    """ViCrop's pure-grad pools the pixel gradient of the image's first pixel tensor onto
    its first grid: the adapters hand the whole-image tensor first (LLaVA-NeXT's base
    image, InternVL's thumbnail); Qwen's flattened patches are folded back into an image."""
    name, vlm = family
    a = vlm.adapter
    prep = a.prepare([image], "what shape is red ?")
    pix, extra = a.image_inputs(prep.inputs, 0)
    img = a.pixel_image(pix, **extra)
    assert img.dim() == 4 and img.shape[:2] == (1, 3) and tuple(img.shape[-2:]) == tuple(
        s * a.patch_size for s in prep.grids[0].shape)  # the first tensor is the first grid's image
    if name in QWEN:  # row 0 of the flattened patches is the top-left patch, channels first
        vc = a.model.config.vision_config
        p, tp = int(vc.patch_size), int(vc.temporal_patch_size)
        assert torch.equal(img[0, :, :p, :p], pix[0].reshape(3, tp, p, p)[:, 0])
        assert torch.equal(img[0, :, p:2 * p, :p], pix[2].reshape(3, tp, p, p)[:, 0])  # merge order: (row, col)
    v = egg.vicrop(vlm, image, "what shape is red ?", variant="pure-grad", max_new_tokens=1)
    assert len(v.boxes) == 1 and v.trace[0].maps[0].shape == prep.grids[0].shape


# --------------------------------------------------------------------------- planted signal


@contextlib.contextmanager
def _only_tokens(adapter, keep_positions: set, visual_positions: set, seq_len: int):
    """Zero the decoder input at every visual position except ``keep_positions`` (for
    sequences of ``seq_len``): the next-token entropy then depends on those tokens only."""
    drop = sorted(visual_positions - keep_positions)

    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        if hs.shape[1] != seq_len:
            return None
        mask = torch.ones(hs.shape[1], 1, dtype=hs.dtype)
        mask[drop] = 0
        hs = hs * mask
        if args:
            return (hs,) + tuple(args[1:]), kwargs
        return args, dict(kwargs, hidden_states=hs)

    h = adapter.decoder_layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        h.remove()


def test_planted_signal_is_found(family, image):
    name, vlm = family
    a = vlm.adapter
    prep = a.prepare([image], "what shape is red ?")
    # the largest grid of the original image; target = a 2x2 block in its lower-right part
    gi = max(range(len(prep.grids)), key=lambda i: prep.grids[i].n_tokens)
    grid = prep.grids[gi]
    rows, cols = grid.shape
    r0, c0 = max(0, rows - 3), max(0, cols - 3)
    target = (c0, r0, c0 + 2, r0 + 2)
    keep = set(grid.positions()[r0 : r0 + 2, c0 : c0 + 2].ravel().tolist())
    with _only_tokens(a, keep, set(prep.visual_positions.tolist()), prep.seq_len):
        res = relevance(a, prep)
        boxes, masses = propose_regions(a, prep, res.maps, [], image.size, list(range(len(prep.grids))), k=2)
    m = res.maps[gi]
    assert np.unravel_index(int(np.argmax(m)), m.shape) in {(r, c) for r in range(r0, r0 + 2) for c in range(c0, c0 + 2)}
    for j, other in enumerate(res.maps):
        if j != gi:
            assert not np.any(other > 0)
    tb = a.grid_box_to_pixels(grid, target)
    b = boxes[0]
    cx, cy = (tb[0] + tb[2]) / 2, (tb[1] + tb[3]) / 2
    assert b[0] <= cx <= b[2] and b[1] <= cy <= b[3]
    inter = max(0, min(b[2], tb[2]) - max(b[0], tb[0])) * max(0, min(b[3], tb[3]) - max(b[1], tb[1]))
    assert inter >= 0.9 * (tb[2] - tb[0]) * (tb[3] - tb[1])  # the chosen box covers the planted region


# --------------------------------------------------------------------------- loading


def test_load_model_picks_adapter_from_saved_config(family, tmp_path):
    """save_pretrained -> the config read back picks the adapter; a full load_model round
    trip where the processor can be reloaded without torchvision (LLaVA-NeXT)."""
    from transformers import AutoConfig

    name, vlm = family
    vlm.model.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)

    class Probe:
        config = cfg

    assert adapter_class(Probe()) is ADAPTERS[name]
    if name != "llava_next":
        return  # AutoProcessor would build the family's video processor, which needs torchvision
    vlm.processor.save_pretrained(tmp_path)
    loaded = egg.load_model(tmp_path, device="cpu", attn_implementation="eager", gradient_checkpointing=True)
    assert type(loaded.adapter) is LlavaNextAdapter
    img = Image.new("RGB", (150, 90), (10, 200, 30))
    p1 = loaded.adapter.prepare([img], "what shape ?")
    p2 = vlm.adapter.prepare([img], "what shape ?")
    r1, r2 = relevance(loaded, p1), relevance(vlm, p2)  # checkpointed backward == plain backward
    for x, y in zip(r1.maps, r2.maps):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-9)
    assert any(getattr(l, "gradient_checkpointing", False) for l in loaded.adapter.decoder_layers)
    assert not loaded.model.training


@pytest.mark.parametrize("name", FAMILIES + ("llava",))
def test_memory_saving_mode_gives_the_plain_models_maps_and_answers(name, image):
    """``gradient_checkpointing=True`` (memory-saving mode) recomputes the decoder layers in
    the backward pass and runs every decoder MLP over the sequence in chunks. Maps and
    answers equal the plain model's; the MLPs really ran in chunks, in the forward pass,
    the backward pass's recompute and generation; and the mode does not leak into a plain
    model's passes. On every real family and on the reference's plain LLaVA."""
    from egg.api import prepare_for_inference

    plain = VLM.from_model(*BUILDERS[name](), source=f"random-init {name}")
    model, proc = BUILDERS[name]()  # the same seeded weights
    saving = VLM.from_model(prepare_for_inference(model, gradient_checkpointing=True), proc, source="checkpointed")
    saving.adapter.mlp_chunk = 8
    assert saving.adapter.saves_memory and not plain.adapter.saves_memory
    seen = {"saving": [], "plain": []}
    hooks = [v.adapter.mlp_module(0).down_proj.register_forward_hook(
        lambda m, args, out, k=k: seen[k].append(args[0].shape[-2])) for k, v in (("saving", saving), ("plain", plain))]
    try:
        q = "what shape is red ?"
        p_s, p_p = saving.adapter.prepare([image] + _crops(image, 1), q), plain.adapter.prepare([image] + _crops(image, 1), q)
        r_s, r_p = relevance(saving, p_s), relevance(plain, p_p)
        for x, y in zip(r_s.maps, r_p.maps):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-9)
        chunked_relevance, seen["saving"] = seen["saving"], []
        assert saving.adapter.generate_ids(p_s, 3) == plain.adapter.generate_ids(p_p, 3)
    finally:
        for h in hooks:
            h.remove()
    n = p_s.input_ids.shape[1]
    assert n > 8 and max(chunked_relevance) <= 8 and len(chunked_relevance) > -(-n // 8)  # forward + recompute
    assert seen["saving"] and max(seen["saving"]) <= 8  # generation's prefill, then one token a step
    assert max(seen["plain"]) >= n  # the plain model runs its MLPs over the whole sequence


def test_load_model_offline_error_names_download_and_parameter(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for repo in ("egg-tests/not-cached-llava-v1.6", "egg-tests/not-cached-qwen2.5-vl", "egg-tests/not-cached-internvl3.5"):
        with pytest.raises(FileNotFoundError, match=r"download.*path_or_id"):
            egg.load_model(repo)


def test_mass_shares_read_the_searched_grids_on_a_tiled_model(image):
    """A tiled model (LLaVA-NeXT: a base view and tiles) gives the original several grids.
    The figures' mass shares must use the grids the loop searched (``Iteration.searched``),
    not "grid 0 at state 0, the rest later": that guess reported shares above 100 %."""
    from egg.figures.method import mass_shares, searched_grids

    model, proc = build_llava_next()
    vlm = VLM.from_model(model, proc, source="random-init llava_next")
    g = egg.ground(vlm, image, "what shape is red ?", stopping="fixed", fixed_n=2, max_new_tokens=1)
    prep = vlm.adapter.prepare([image] + [image.crop(tuple(int(v) for v in b)) for b in g.trace[1].crops],
                               "what shape is red ?")
    originals = [i for i, grid in enumerate(prep.grids) if grid.image_index == 0]
    assert len(originals) > 1  # base view + tiles
    assert searched_grids(g.trace[0]) == originals
    assert searched_grids(g.trace[1]) == [i for i in range(len(prep.grids)) if i not in originals]
    for state in (0, 1):
        shares = mass_shares(g, state)
        assert shares and all(0 <= s <= 1 for s in shares) and sum(shares) <= 1 + 1e-9


def test_placeholders_typed_in_a_question_are_neutralised(family, image):
    """Each family's own image placeholder in the question text must not become visual
    tokens (the processor would count them and fail); the question is still answered."""
    name, vlm = family
    placeholders = {"<image>", getattr(vlm.processor, "image_token", None), "<|vision_start|>", "<img>"} - {None}
    q = "what is " + " ".join(sorted(placeholders)) + " here ?"
    assert isinstance(egg.answer(vlm, image, q, max_new_tokens=1), str)
    prep = vlm.adapter.prepare([image], q)
    assert len(prep.grids) >= 1 and all(g.image_index == 0 for g in prep.grids)


def test_cached_image_processing_equals_the_processor(family, image):
    """The per-call image cache (the original processed once for every state) must give the
    processor's own inputs bit for bit, on every family, with crops appended."""
    from egg.adapters import EmbeddingCache

    name, vlm = family
    crops = _crops(image, 2)
    cache = EmbeddingCache()
    plain = vlm.adapter.prepare([image] + crops, "what shape is red ?")
    for _ in range(2):  # second time: the original comes from the cache
        cached = vlm.adapter.prepare([image] + crops, "what shape is red ?", cache=cache)
        assert set(plain.inputs) == set(cached.inputs)
        for k, v in plain.inputs.items():
            assert torch.equal(v, cached.inputs[k]) if torch.is_tensor(v) else v == cached.inputs[k], (name, k)
        assert [g.shape for g in plain.grids] == [g.shape for g in cached.grids]
    assert cache.pixels.hits >= 1 or name == "llava_next"
    alone = vlm.adapter.prepare([image], "what shape is red ?", cache=cache)
    assert torch.equal(alone.inputs["pixel_values"], vlm.adapter.prepare([image], "what ?").inputs["pixel_values"])
    if name in QWEN:  # (LLaVA-NeXT's tiles do not stack per image; InternVL's processor copies the pixels itself)
        # pixels are held once: the original's entry now reads its rows of the last prompt's tensor
        ptr = lambda p: p.inputs["pixel_values"].untyped_storage().data_ptr()  # noqa: E731
        assert ptr(alone) == ptr(cached) != ptr(plain)
