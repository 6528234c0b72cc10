"""LLaVA-1.5 style models: transformers ``LlavaForConditionalGeneration``.

Covers llava-hf/llava-1.5-*-hf and this project's reference model (same classes). One
image = one grid of (H / patch) x (W / patch) visual tokens, contiguous in the sequence,
row-major; the image processor decides which pixels the grid covers (``processed_footprint``):

* "squash" (the reference model): resize to (height, width) ignoring aspect, no crop ->
  the grid covers the whole image, each axis with its own scale;
* "shortest edge + centre crop" (CLIPImageProcessor of llava-1.5-hf): resize so the short
  side is ``shortest_edge``, cut the centre ``crop_size`` -> the grid covers only the
  central part of a non-square image;
* "pad to square" (LlavaImageProcessor with ``do_pad``): pad the short side with the
  mean colour first -> the grid reaches outside the image; boxes are clipped back to it.
"""
from __future__ import annotations

import torch

from ..adapters.base import Box, VLMAdapter
from ..adapters.records import TokenGrid


def _get(size, key):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def processed_footprint(image_size: tuple[int, int], image_processor, covered: tuple[int, int] | None = None) -> Box:
    """Pixel box of the original image that the processed tensor's ``covered`` region shows.

    Replays the geometry of transformers' CLIP / LLaVA image processors (pad to square ->
    resize -> centre crop). ``covered`` = (width, height) in processed pixels of the part
    the token grid covers, starting at the processed tensor's top-left (default: the whole
    processed tensor). Float box; may extend outside the image where the processor pads.
    """
    W, H = float(image_size[0]), float(image_size[1])
    ip = image_processor
    # 1. pad to square (image centred on a square canvas)
    ox = oy = 0.0
    cw, ch = W, H
    if getattr(ip, "do_pad", False) and hasattr(ip, "pad_to_square"):
        m = max(image_size)
        ox = float((m - image_size[0]) // 2)
        oy = float((m - image_size[1]) // 2)
        cw = ch = float(m)
    # 2. resize
    size = getattr(ip, "size", None)
    if getattr(ip, "do_resize", True) and size is not None:
        short, long_ = _get(size, "shortest_edge"), _get(size, "longest_edge")
        h, w = _get(size, "height"), _get(size, "width")
        if short and not long_:
            s_side, l_side = (cw, ch) if cw <= ch else (ch, cw)
            new_short, new_long = int(short), int(int(short) * l_side / s_side)
            rw, rh = (new_short, new_long) if cw <= ch else (new_long, new_short)
        elif h and w:
            rw, rh = int(w), int(h)
        else:
            raise NotImplementedError(f"image processor resize rule {size} is not supported by the LLaVA adapter")
    else:
        rw, rh = int(round(cw)), int(round(ch))
    sx, sy = rw / cw, rh / ch
    # 3. centre crop (top-left of the crop in resized pixels; negative = zero padding)
    left = top = 0
    if getattr(ip, "do_center_crop", False):
        crop = getattr(ip, "crop_size", None)
        th, tw = int(_get(crop, "height")), int(_get(crop, "width"))
        top, left = (rh - th) // 2, (rw - tw) // 2
        pw, ph = tw, th
    else:
        pw, ph = rw, rh
    if covered is None:
        covered = (pw, ph)
    x0 = left / sx - ox
    y0 = top / sy - oy
    x1 = (left + covered[0]) / sx - ox
    y1 = (top + covered[1]) / sy - oy
    return tuple(round(v, 6) for v in (x0, y0, x1, y1))  # drop float noise (949.0000000000001)


class LlavaAdapter(VLMAdapter):
    """Adapter for ``LlavaForConditionalGeneration`` (LLaVA-1.5, the reference model)."""

    model_types = ("llava",)

    @property
    def patch_size(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def input_resolution(self) -> tuple[int, int]:
        ip = self.processor.image_processor
        if getattr(ip, "do_center_crop", False):
            crop = ip.crop_size
            return int(_get(crop, "width")), int(_get(crop, "height"))
        size = ip.size
        if _get(size, "height") and _get(size, "width"):
            return int(_get(size, "width")), int(_get(size, "height"))
        s = int(self.model.config.vision_config.image_size)
        return s, s

    # ---- encoding ------------------------------------------------------------------------

    stacks_images = True  # a fixed-resolution tower: stacked pixels give each image's rows in order

    def encode(self, pixel_values: torch.Tensor, **image_inputs) -> torch.Tensor:
        cfg = self.model.config
        out = self._core.get_image_features(
            pixel_values=pixel_values.to(self.dtype),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            return_dict=True,
        )
        feats = getattr(out, "pooler_output", out)
        if isinstance(feats, (list, tuple)):
            feats = torch.cat(list(feats), dim=0)
        if feats.dim() == 3:
            feats = feats.reshape(-1, feats.shape[-1])
        return feats

    # ---- layout ----------------------------------------------------------------------------

    def layout(self, inputs: dict, images: list) -> list[TokenGrid]:
        ids = inputs["input_ids"][0]
        visual = (ids == self.image_token_id).nonzero().flatten().tolist()
        pix = inputs["pixel_values"]
        ph, pw = int(pix.shape[-2]), int(pix.shape[-1])
        p = self.patch_size
        rows, cols = ph // p, pw // p
        n = rows * cols
        if len(visual) != n * len(images):
            raise ValueError(
                f"prompt has {len(visual)} visual tokens for {len(images)} images of {rows}x{cols} tokens "
                f"({pw}x{ph} input, patch {p})"
            )
        grids = []
        for i in range(len(images)):
            # Images follow each other in prompt order; each one's tokens are contiguous
            # (consecutive images may touch when the separator between them tokenises to
            # nothing, so runs are cut by count, not by gaps).
            chunk = visual[i * n : (i + 1) * n]
            if chunk[-1] - chunk[0] != n - 1:
                raise ValueError(f"image {i}: visual tokens are not contiguous in the sequence")
            size = tuple(int(v) for v in images[i].size)
            fp = processed_footprint(size, self.processor.image_processor, covered=(cols * p, rows * p))
            grids.append(TokenGrid(image_index=i, start=int(chunk[0]), shape=(rows, cols), footprint=fp,
                                   image_size=size))
        return grids

