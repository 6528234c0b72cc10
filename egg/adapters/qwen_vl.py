"""Qwen2.5-VL: transformers ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor``.

Dynamic resolution: the image processor resizes each image (aspect kept, both sides
rounded to a multiple of ``patch * merge`` and the area kept within [min_pixels,
max_pixels]; ``smart_resize``), cuts it into ``patch x patch`` patches (``image_grid_thw`` =
(1, h, w) patches), and the vision tower's merger joins each 2x2 block of patches into one
token: an image is an ``(h / 2) x (w / 2)`` grid of tokens, contiguous and row-major in the
sequence between ``<|vision_start|>`` and ``<|vision_end|>``. The resize squashes the whole
image (no crop, no pad), so a grid covers exactly its image.

Visual embeddings are the merger's output (``get_image_features(...).pooler_output``): what
the decoder receives at the ``<|image_pad|>`` positions. Crops are processed at their own
resolution, like any image.

Positions are multimodal rotary (M-RoPE): (temporal, height, width) ids computed from
``input_ids``, ``mm_token_type_ids`` and ``image_grid_thw`` by the model's own
``get_rope_index``; ``decoder_inputs`` passes them to the decoder, and ``generation_inputs``
hands ``generate`` what it needs to rebuild them.

Qwen3-VL (``Qwen3VLForConditionalGeneration``, ``Qwen3VLAdapter``): same layout and
positions, but the vision tower also produces "deepstack" features (one per entry of
``vision_config.deepstack_visual_indexes``) that the decoder ADDS to the hidden states at the
visual positions after each of its first K layers. What the decoder receives for a visual
token is therefore the merger output plus K deepstack vectors; the adapter's visual
embedding of a token is their concatenation, shape (n, hidden * (1 + K)), and the
relevance of a token is the L2 norm of the gradient over all of it. Generation runs the
model on the pixels (re-encoding the images) so that the deepstack injection is the
model's own.
"""
from __future__ import annotations

import math

import torch

from ..adapters.base import VLMAdapter
from ..adapters.records import Prepared, TokenGrid

#: Tokens per side of the nominal square input used for ``input_resolution`` (Qwen has no
#: fixed input size; 16 tokens x 28 px = 448 px for the released models).
NOMINAL_TOKENS_PER_SIDE = 16


class Qwen2_5_VLAdapter(VLMAdapter):  # noqa: N801 - after the transformers class
    """Adapter for ``Qwen2_5_VLForConditionalGeneration`` (dynamic resolution, M-RoPE)."""

    model_types = ("qwen2_5_vl",)

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    @property
    def patch_size(self) -> int:
        """Processed pixels per token side: vision patch x spatial merge (28 for Qwen2.5-VL)."""
        return int(self.model.config.vision_config.patch_size) * self.merge_size

    @property
    def input_resolution(self) -> tuple[int, int]:
        """Nominal (no fixed input size): a square of NOMINAL_TOKENS_PER_SIDE tokens, kept
        within the processor's pixel budget."""
        ip = self.processor.image_processor
        side = NOMINAL_TOKENS_PER_SIDE * self.patch_size
        lo, hi = self._pixel_budget(ip)
        side = int(min(max(side, math.sqrt(lo)), math.sqrt(hi)))
        return side, side

    @staticmethod
    def _pixel_budget(ip) -> tuple[float, float]:
        size = getattr(ip, "size", None) or {}
        get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        lo = getattr(ip, "min_pixels", None) or get("shortest_edge") or 56 * 56
        hi = getattr(ip, "max_pixels", None) or get("longest_edge") or 28 * 28 * 1280
        return float(lo), float(hi)

    # ---- inputs -------------------------------------------------------------------------

    def _grid_thw(self, inputs: dict) -> torch.Tensor:
        return inputs["image_grid_thw"]

    def image_inputs(self, inputs: dict, index: int) -> tuple[torch.Tensor, dict]:
        thw = self._grid_thw(inputs)
        counts = thw.prod(-1).tolist()
        start = int(sum(counts[:index]))
        pix = inputs["pixel_values"][start : start + int(counts[index])]
        return pix, {"image_grid_thw": thw[index : index + 1]}

    def pixel_image(self, pixels: torch.Tensor, **image_inputs) -> torch.Tensor:
        """Undo the processor's patch flattening: rows are (t, h/m, w/m, m, m) patches of
        (C, temporal, p, p) values; the first temporal frame comes back as (1, C, H, W)."""
        t, h, w = (int(v) for v in image_inputs["image_grid_thw"][0])
        vc = self.model.config.vision_config
        p, m, tp = int(vc.patch_size), self.merge_size, int(vc.temporal_patch_size)
        x = pixels[: t * h * w].reshape(t, h // m, w // m, m, m, -1, tp, p, p)
        x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t * tp, -1, h * p, w * p)
        return x[:1]

    def encode(self, pixel_values: torch.Tensor, **image_inputs) -> torch.Tensor:
        out = self._core.get_image_features(pixel_values=pixel_values.to(self.dtype),
                                            image_grid_thw=image_inputs["image_grid_thw"], return_dict=True)
        feats = out.pooler_output
        if isinstance(feats, (list, tuple)):
            feats = torch.cat(list(feats), dim=0)
        return feats

    def _mm_token_type_ids(self, prepared: Prepared) -> torch.Tensor:
        ids = prepared.input_ids
        tt = prepared.inputs.get("mm_token_type_ids")
        if tt is None:
            tt = (ids == self.image_token_id).to(torch.long)
        elif tt.shape[1] < ids.shape[1]:  # the suffix (answer tokens) is text
            tt = torch.cat([tt, torch.zeros((1, ids.shape[1] - tt.shape[1]), dtype=tt.dtype, device=tt.device)], 1)
        return tt

    def position_ids(self, prepared: Prepared) -> torch.Tensor:
        """M-RoPE position ids (3, 1, seq_len) of the prompt + suffix, by the model's own
        ``get_rope_index``."""
        return self._rope_index(prepared)[0]

    def _rope_index(self, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        return self._core.get_rope_index(
            prepared.input_ids, mm_token_type_ids=self._mm_token_type_ids(prepared),
            image_grid_thw=self._grid_thw(prepared.inputs), attention_mask=prepared.attention_mask,
        )

    def generate_ids(self, prepared: Prepared, max_new_tokens: int = 8, visual_embeds=None, cache=None,
                     kv=None) -> list[int]:
        """As the base class. Continuing a kept cache, transformers takes the positions of
        the new tokens from the ``rope_deltas`` the model stored at its last prefill, which
        belong to whatever prompt ran before: they are set for this prompt first."""
        if kv is not None:
            self._core.rope_deltas = self._rope_index(prepared)[1]
        return super().generate_ids(prepared, max_new_tokens, visual_embeds, cache, kv=kv)

    def decoder_inputs(self, prepared: Prepared, visual_embeds: torch.Tensor | None = None) -> dict:
        return {"attention_mask": prepared.attention_mask, "position_ids": self.position_ids(prepared)}

    def generation_inputs(self, prepared: Prepared) -> dict:
        return {"image_grid_thw": self._grid_thw(prepared.inputs),
                "mm_token_type_ids": self._mm_token_type_ids(prepared)}

    # ---- layout ----------------------------------------------------------------------------

    def layout(self, inputs: dict, images: list) -> list[TokenGrid]:
        ids = inputs["input_ids"][0]
        visual = (ids == self.image_token_id).nonzero().flatten().tolist()
        thw = self._grid_thw(inputs).tolist()
        if len(thw) != len(images):
            raise ValueError(f"{len(images)} images but image_grid_thw has {len(thw)} rows")
        m = self.merge_size
        grids, k = [], 0
        for i, (im, (t, h, w)) in enumerate(zip(images, thw)):
            rows, cols = h // m, w // m
            n = t * rows * cols
            chunk = visual[k : k + n]
            k += n
            if len(chunk) != n or chunk[-1] - chunk[0] != n - 1:
                raise ValueError(f"image {i}: expected {n} contiguous visual tokens")
            size = tuple(int(v) for v in im.size)
            grids.append(TokenGrid(image_index=i, start=int(chunk[0]), shape=(rows, cols),
                                   footprint=(0.0, 0.0, float(size[0]), float(size[1])), image_size=size))
        if k != len(visual):
            raise ValueError(f"prompt has {len(visual)} visual tokens, image_grid_thw accounts for {k}")
        return grids

    def processed_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) the processor resizes an image of ``image_size`` to (smart_resize)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        lo, hi = self._pixel_budget(self.processor.image_processor)
        h, w = smart_resize(int(image_size[1]), int(image_size[0]), factor=self.patch_size,
                            min_pixels=int(lo), max_pixels=int(hi))
        return int(w), int(h)



class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Adapter for ``Qwen3VLForConditionalGeneration`` (dynamic resolution, M-RoPE, deepstack)."""

    model_types = ("qwen3_vl",)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def n_deepstack(self) -> int:
        return len(getattr(self.model.config.vision_config, "deepstack_visual_indexes", ()) or ())

    def encode(self, pixel_values: torch.Tensor, **image_inputs) -> torch.Tensor:
        out = self._core.get_image_features(pixel_values=pixel_values.to(self.dtype),
                                            image_grid_thw=image_inputs["image_grid_thw"], return_dict=True)
        main = torch.cat(list(out.pooler_output), dim=0)
        deep = [torch.cat(list(f), dim=0) for f in (out.deepstack_features or [])]
        return torch.cat([main] + deep, dim=-1)

    def inputs_embeds(self, prepared: Prepared, visual_embeds: torch.Tensor) -> torch.Tensor:
        return super().inputs_embeds(prepared, visual_embeds[:, : self.hidden_size])

    def decoder_inputs(self, prepared: Prepared, visual_embeds: torch.Tensor | None = None) -> dict:
        """Adds the deepstack features (the columns of ``visual_embeds`` after the first
        ``hidden_size``) and where they go, so the decoder injects them as the model does."""
        kw = super().decoder_inputs(prepared)
        if visual_embeds is not None and visual_embeds.shape[1] > self.hidden_size:
            mask = torch.zeros(prepared.input_ids.shape, dtype=torch.bool, device=prepared.input_ids.device)
            mask[0, prepared.visual_positions] = True
            kw["visual_pos_masks"] = mask
            kw["deepstack_visual_embeds"] = list(visual_embeds[:, self.hidden_size:].split(self.hidden_size, dim=-1))
        return kw

    def generate_batch(self, prepared, max_new_tokens: int = 8, visual_embeds=None, caches=None) -> list[list[int]]:
        """One prompt at a time: generation re-encodes the pixels (see ``generate_ids``), and
        batching pixel inputs of different layouts is not worth its complexity here."""
        return [self.generate_ids(p, max_new_tokens) for p in prepared]

    def generate_ids(self, prepared: Prepared, max_new_tokens: int = 8, visual_embeds=None, cache=None,
                     kv=None) -> list[int]:
        """Greedy answer ids from the pixels (the model injects its own deepstack features);
        ``visual_embeds`` / ``cache`` are not used: the images are encoded again. With a
        ``kv`` of this prompt (which already holds the deepstack injection) generation
        continues from it as in the base class."""
        if kv is not None:
            return super().generate_ids(prepared, max_new_tokens, visual_embeds, cache, kv=kv)
        kw = dict(prepared.inputs)
        if prepared.suffix:
            kw["input_ids"] = prepared.input_ids
            kw["attention_mask"] = prepared.attention_mask
            kw["mm_token_type_ids"] = self._mm_token_type_ids(prepared)
        ids = kw["input_ids"]
        with torch.no_grad(), self.memory_saving():
            out = self.model.generate(**kw, max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                                      pad_token_id=self._pad_id())
        new = [int(t) for t in out[0, ids.shape[1]:].tolist()]
        self.counter.images_encoded += len(prepared.images)
        self.counter.forward += 1
        self.counter.generated_tokens += len(new)
        return new
