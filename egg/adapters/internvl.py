"""InternVL3 / 3.5: transformers ``InternVLForConditionalGeneration`` + ``InternVLProcessor``.

Dynamic tiling (``GotOcr2ImageProcessor`` with ``crop_to_patches``): the image is squashed to
a canvas of ``cols x rows`` tiles of S x S pixels (the arrangement whose aspect ratio is
closest to the image's, ``get_optimal_tiled_canvas`` with min/max tiles), cut into tiles in
row-major order, and, when there is more than one tile, a thumbnail (the whole image
squashed to S x S) is appended. Each tile is encoded separately; pixel shuffle
(``downsample_ratio`` 0.5) merges 2x2 patch features, so each tile is an ``s x s`` grid,
``s = S / patch * downsample_ratio`` (16 for 448 px / patch 14), contiguous and row-major.
In the sequence: ``<img>`` tile 1 .. tile n, thumbnail ``</img>`` per image.

Grids: per image, the thumbnail first (it covers the whole image; an image with a single
tile has just that grid), then the tiles in row-major order, each with the footprint
``(c W / cols, r H / rows, (c + 1) W / cols, (r + 1) H / rows)``.
"""
from __future__ import annotations

import torch

from ..adapters.base import VLMAdapter
from ..adapters.records import TokenGrid
from .llava import _get


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


class InternVLAdapter(VLMAdapter):
    """Adapter for ``InternVLForConditionalGeneration`` (InternVL3 / 3.5, dynamic tiles)."""

    model_types = ("internvl",)

    @property
    def tile(self) -> int:
        return _pair(self.model.config.vision_config.image_size)[0]

    @property
    def tokens_per_tile(self) -> int:
        p = _pair(self.model.config.vision_config.patch_size)[0]
        return int(round(self.tile / p * float(self.model.config.downsample_ratio)))

    @property
    def patch_size(self) -> int:
        """Processed pixels per token side (patch / downsample_ratio: 28 for InternVL3.5)."""
        return self.tile // self.tokens_per_tile

    @property
    def input_resolution(self) -> tuple[int, int]:
        return self.tile, self.tile

    # ---- tiles ------------------------------------------------------------------------------

    def _tile_runs(self, inputs: dict) -> list[list[int]]:
        """Visual positions of each image (runs of context tokens; images are separated by
        the ``</img><img>`` tokens)."""
        ids = inputs["input_ids"][0]
        pos = (ids == self.image_token_id).nonzero().flatten().tolist()
        runs: list[list[int]] = []
        for p in pos:
            if runs and p == runs[-1][-1] + 1:
                runs[-1].append(p)
            else:
                runs.append([p])
        return runs

    def _tiles_per_image(self, inputs: dict) -> list[int]:
        per = self.tokens_per_tile ** 2
        out = []
        for r in self._tile_runs(inputs):
            if len(r) % per:
                raise ValueError(f"an image has {len(r)} visual tokens, not a multiple of {per} per tile")
            out.append(len(r) // per)
        return out

    def tile_arrangement(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(cols, rows) of the tile canvas the processor picks for an image of ``image_size``."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        ip = self.processor.image_processor
        size = getattr(ip, "size", None)
        th, tw = int(_get(size, "height") or self.tile), int(_get(size, "width") or self.tile)
        lo, hi = int(getattr(ip, "min_patches", 1)), int(getattr(ip, "max_patches", 12))
        cols, rows = get_optimal_tiled_canvas((int(image_size[1]), int(image_size[0])), (th, tw), lo, hi)
        return int(cols), int(rows)

    # ---- encoding ------------------------------------------------------------------------

    def image_inputs(self, inputs: dict, index: int) -> tuple[torch.Tensor, dict]:
        """(tiles, C, S, S) of image ``index`` with the thumbnail moved FIRST (like its grid:
        the first pixel tensor is the first grid's image); ``encode`` puts its tokens back
        last, where the sequence has them."""
        n = self._tiles_per_image(inputs)
        start = sum(n[:index])
        pix = inputs["pixel_values"][start : start + n[index]]
        if n[index] > 1:
            pix = torch.cat([pix[-1:], pix[:-1]], dim=0)
        return pix, {"thumbnail_first": n[index] > 1}

    def encode(self, pixel_values: torch.Tensor, thumbnail_first: bool = False, **image_inputs) -> torch.Tensor:
        cfg = self.model.config
        out = self._core.get_image_features(
            pixel_values=pixel_values.to(self.dtype), vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True,
        )
        feats = out.pooler_output  # (tiles, s*s, hidden)
        if thumbnail_first:
            feats = torch.cat([feats[1:], feats[:1]], dim=0)  # sequence order: tiles, thumbnail
        return feats.reshape(-1, feats.shape[-1])

    # ---- layout ----------------------------------------------------------------------------

    def layout(self, inputs: dict, images: list) -> list[TokenGrid]:
        runs = self._tile_runs(inputs)
        if len(runs) != len(images):
            raise ValueError(f"{len(images)} images but {len(runs)} runs of visual tokens in the prompt")
        s = self.tokens_per_tile
        per = s * s
        grids = []
        for i, (im, run) in enumerate(zip(images, runs)):
            size = tuple(int(v) for v in im.size)
            W, H = float(size[0]), float(size[1])
            n = len(run) // per
            whole = (0.0, 0.0, W, H)
            if n == 1:
                grids.append(TokenGrid(image_index=i, start=run[0], shape=(s, s), footprint=whole, image_size=size))
                continue
            cols, rows = self.tile_arrangement(size)
            if cols * rows + 1 != n:
                raise ValueError(f"image {i}: {n} tiles in the prompt, the processor geometry predicts "
                                 f"{cols}x{rows} + thumbnail")
            grids.append(TokenGrid(image_index=i, start=run[(n - 1) * per], shape=(s, s), footprint=whole,
                                   image_size=size))
            for t in range(n - 1):
                r, c = divmod(t, cols)
                fp = (c * W / cols, r * H / rows, (c + 1) * W / cols, (r + 1) * H / rows)
                grids.append(TokenGrid(image_index=i, start=run[t * per], shape=(s, s),
                                       footprint=tuple(round(v, 6) for v in fp), image_size=size))
        return grids

