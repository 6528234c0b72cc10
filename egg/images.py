"""Input validation: images in any common form -> PIL RGB; questions -> clean text.

Everything the public API accepts passes through here first, so odd inputs fail early
with an error that names the problem (or are converted), never deep inside torch.

Image conversions (``load_image``):

* RGB: returned as a copy (the caller's object is never modified).
* With transparency (RGBA, LA, PA, P with a transparent colour): composited onto white,
  so transparent areas do not turn black.
* CMYK, YCbCr, HSV, P, L, 1: PIL's conversion to RGB.
* 16/32-bit integer and float greyscale (I;16, I;16B, I, F): rescaled to 8 bits (16-bit
  by its full range, 32-bit / float by the image's own min..max), then grey -> RGB.
* numpy arrays: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8 as is, other integer
  types by their dtype range, floats assumed in [0, 1] (clipped).

EXIF orientation is *not* applied: boxes of the usual benchmarks are given in the raw
pixel grid of the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_BACKGROUND = (255, 255, 255)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot convert an image of mode {mode!r} to RGB: {e}") from None


def _from_array(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0)
        a = np.rint(a * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) and a.dtype != np.uint8:
        info = np.iinfo(a.dtype)
        a = np.rint((a.astype(np.float64) - info.min) / (info.max - info.min) * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"unsupported image array dtype {a.dtype}")
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(a), mode)


def load_image(image) -> Image.Image:
    """Any accepted image form -> a new PIL image in RGB mode (see module docstring).

    Raises FileNotFoundError for a path that does not exist, ValueError for a file that is
    not a readable image, an empty (0-pixel) image, or an unsupported type.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {str(path)!r}")
        if path.is_dir():
            raise ValueError(f"image path is a directory, not an image file: {str(path)!r}")
        try:
            with Image.open(path) as im:
                im.load()
                img = _to_rgb(im)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"cannot read image file {str(path)!r}: {e}") from None
    elif isinstance(image, Image.Image):
        try:
            image.load()
        except (OSError, SyntaxError) as e:
            raise ValueError(f"cannot decode the given PIL image: {e}") from None
        img = _to_rgb(image)
    elif isinstance(image, np.ndarray):
        img = _to_rgb(_from_array(image))
    elif image is None:
        raise ValueError("image is None; pass a PIL image, a numpy array or a path to an image file")
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}; pass a PIL image, a numpy array or a path")
    w, h = img.size
    if w < 1 or h < 1:
        raise ValueError(f"image is empty: size {w}x{h}")
    return img


def check_question(question) -> str:
    """The question stripped of surrounding whitespace; ValueError if empty or not text."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    q = question.strip()
    if not q:
        raise ValueError("question is empty: ask something about the image")
    return q


__all__ = ["load_image", "check_question"]
