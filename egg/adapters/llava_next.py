"""LLaVA-1.6 / LLaVA-NeXT: transformers ``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor``.

Token layout of one image (replayed from transformers' ``LlavaNextModel.pack_image_features``,
``get_anyres_image_grid_shape``, ``unpad_image`` and ``LlavaNextProcessor._get_number_of_features``):

1. the *base* grid: the whole image squashed to the vision tower's square input,
   ``(S / patch) x (S / patch)`` tokens, contiguous, row-major, no newline tokens;
2. the *high-resolution* grid: the image resized (aspect kept) into the best "anyres"
   canvas of ``image_grid_pinpoints`` and zero-padded to it, cut into S x S tiles, each tile
   encoded separately; the model stitches the tiles' token grids back into one canvas grid,
   removes the token rows / columns that only show the padding (``unpad_image``), and puts
   one ``image_newline`` token after every row. In the sequence: row 0, newline, row 1,
   newline, ... -> a grid with ``row_stride = cols + 1``.

The newline tokens are image placeholder tokens (they receive the learned ``image_newline``
embedding, which is part of the visual embeddings the decoder gets, so they do get a
gradient) but they belong to no grid: the maps leave them out.

The stitched canvas grid is kept as ONE grid (not one per tile) because that is the layout
the decoder sees: tiles are neighbours on it, and an object cut by a tile border stays one
connected component. Its footprint is the pixel box of the original image that the kept
(unpadded) token rows / columns cover; each tile is a ``S / patch``-cell block of it.
"""
from __future__ import annotations

import math

import torch

from ..adapters.base import Box, VLMAdapter
from ..adapters.records import TokenGrid
from .llava import _get


def _best_resolution(image_size_hw, pinpoints):
    from transformers.image_processing_utils import select_best_resolution

    return select_best_resolution(tuple(int(v) for v in image_size_hw), [list(p) for p in pinpoints])


def _patch_output_size(orig_hw, target_hw) -> tuple[int, int]:
    """(new_h, new_w) of the aspect-preserving resize into the anyres canvas
    (transformers.image_processing_utils.get_patch_output_size)."""
    oh, ow = orig_hw
    th, tw = target_hw
    sw, sh = tw / ow, th / oh
    if sw < sh:
        return min(math.ceil(oh * sw), th), tw
    return th, min(math.ceil(ow * sh), tw)


def anyres_layout(image_size: tuple[int, int], pinpoints, tile: int, tokens_per_tile: int) -> dict:
    """Geometry of one image's high-resolution grid.

    image_size: (width, height) of the original image; tile: the vision tower's input side
    in pixels; tokens_per_tile: tokens per tile side. Returns a dict with the canvas
    (height, width) in pixels, the tile arrangement, the kept token rows/cols range
    (after unpadding) and the footprint in original pixels.
    """
    W, H = int(image_size[0]), int(image_size[1])
    bh, bw = _best_resolution((H, W), pinpoints)
    n_rows_t, n_cols_t = bh // tile, bw // tile
    Hc, Wc = n_rows_t * tokens_per_tile, n_cols_t * tokens_per_tile
    # unpad_image (modeling): token rows / cols that show only the canvas padding are dropped
    r0, r1, c0, c1 = 0, Hc, 0, Wc
    if W / H > Wc / Hc:
        new_h = int(round(H * (Wc / W), 7))
        pad = (Hc - new_h) // 2
        r0, r1 = pad, Hc - pad
    else:
        new_w = int(round(W * (Hc / H), 7))
        pad = (Wc - new_w) // 2
        c0, c1 = pad, Wc - pad
    # image placement on the canvas (processor: resize keeping aspect, centre paste)
    nh, nw = _patch_output_size((H, W), (bh, bw))
    paste_x, paste_y = (bw - nw) // 2, (bh - nh) // 2
    cell = tile / tokens_per_tile
    sx, sy = nw / W, nh / H
    fp = ((c0 * cell - paste_x) / sx, (r0 * cell - paste_y) / sy, (c1 * cell - paste_x) / sx, (r1 * cell - paste_y) / sy)
    return {
        "canvas": (bh, bw), "tiles": (n_rows_t, n_cols_t), "rows": (r0, r1), "cols": (c0, c1),
        "shape": (r1 - r0, c1 - c0), "footprint": tuple(round(v, 6) for v in fp),
        "resized": (nh, nw), "paste": (paste_x, paste_y),
    }


class LlavaNextAdapter(VLMAdapter):
    """Adapter for ``LlavaNextForConditionalGeneration`` (LLaVA-1.6 / NeXT, anyres tiling)."""

    model_types = ("llava_next",)

    @property
    def tile(self) -> int:
        """Side in pixels of one anyres tile (= the vision tower's input side)."""
        return int(self.model.config.vision_config.image_size)

    @property
    def tokens_per_tile(self) -> int:
        return self.tile // int(self.model.config.vision_config.patch_size)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def input_resolution(self) -> tuple[int, int]:
        return self.tile, self.tile

    def _check_processor(self):
        ip = self.processor.image_processor
        size = getattr(ip, "size", None)
        short = _get(size, "shortest_edge") or _get(size, "height")
        crop = getattr(ip, "crop_size", None)
        crop_side = _get(crop, "height") if getattr(ip, "do_center_crop", False) else short
        if int(short) != self.tile or int(crop_side or short) != self.tile:
            raise NotImplementedError(
                f"LLaVA-NeXT adapter expects the image processor's size and crop size to equal the vision "
                f"tower's input side {self.tile} (got size={size}, crop_size={crop})"
            )

    # ---- encoding ------------------------------------------------------------------------

    def image_inputs(self, inputs: dict, index: int) -> tuple[torch.Tensor, dict]:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        sizes = inputs["image_sizes"][index : index + 1]
        n = image_size_to_num_patches(sizes[0], self.model.config.image_grid_pinpoints, self.tile)
        # (tiles, C, S, S): base image first, then the canvas tiles row-major; the zero
        # patches added only to batch images with fewer tiles are dropped. The first pixel
        # tensor is the base image, whose grid is this image's first grid.
        return inputs["pixel_values"][index, :n], {"image_sizes": sizes}

    def encode(self, pixel_values: torch.Tensor, **image_inputs) -> torch.Tensor:
        cfg = self.model.config
        sizes = image_inputs["image_sizes"]
        out = self._core.get_image_features(
            pixel_values=pixel_values.to(self.dtype), image_sizes=sizes,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True,
        )
        feats = getattr(out, "pooler_output", out)
        if isinstance(feats, (list, tuple)):
            feats = torch.cat(list(feats), dim=0)
        return feats.reshape(-1, feats.shape[-1])

    # ---- layout ----------------------------------------------------------------------------

    def image_layout(self, image_size: tuple[int, int]) -> dict:
        """Base grid + high-res grid of one image: shapes, footprints, token count."""
        t = self.tokens_per_tile
        hi = anyres_layout(image_size, self.model.config.image_grid_pinpoints, self.tile, t)
        rows, cols = hi["shape"]
        n = t * t + rows * (cols + 1)
        return {"base": (t, t), "hi": hi, "n_tokens": n}

    def _base_footprint(self, image_size) -> Box:
        W, H = float(image_size[0]), float(image_size[1])
        return (0.0, 0.0, W, H)  # the base image is squashed to S x S

    def layout(self, inputs: dict, images: list) -> list[TokenGrid]:
        self._check_processor()
        ids = inputs["input_ids"][0]
        visual = (ids == self.image_token_id).nonzero().flatten().tolist()
        lays = [self.image_layout(tuple(int(v) for v in im.size)) for im in images]
        total = sum(l["n_tokens"] for l in lays)
        if total != len(visual):
            raise ValueError(f"prompt has {len(visual)} visual tokens, the anyres layout predicts {total}")
        grids, k = [], 0
        for i, (im, lay) in enumerate(zip(images, lays)):
            chunk = visual[k : k + lay["n_tokens"]]
            k += lay["n_tokens"]
            if chunk[-1] - chunk[0] != len(chunk) - 1:
                raise ValueError(f"image {i}: visual tokens are not contiguous in the sequence")
            size = tuple(int(v) for v in im.size)
            t = self.tokens_per_tile
            grids.append(TokenGrid(image_index=i, start=int(chunk[0]), shape=(t, t),
                                   footprint=self._base_footprint(size), image_size=size))
            rows, cols = lay["hi"]["shape"]
            grids.append(TokenGrid(image_index=i, start=int(chunk[0]) + t * t, shape=(rows, cols),
                                   footprint=lay["hi"]["footprint"], image_size=size, row_stride=cols + 1))
        return grids

    def _image_token_counts(self, grids, n_images, visual) -> list[int]:
        counts = [0] * n_images
        for g in grids:
            counts[g.image_index] += g.n_tokens + (g.shape[0] if g.row_stride else 0)  # + newlines
        if sum(counts) != int(visual.numel()):
            raise ValueError(f"token layout covers {sum(counts)} visual tokens but the prompt has {int(visual.numel())}")
        return counts

