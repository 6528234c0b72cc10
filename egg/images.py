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
* numpy arrays: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4). Integers of any dtype are read
  by value as 0..255 (values outside that range are an error that names it: rescale
  first, e.g. ``(a / 257).astype(np.uint8)`` for 16-bit data); floats must be in [0, 1]
  (a float array whose values go above 1.5 looks like 0..255 data and is an error; values
  slightly outside [0, 1] are clipped); bool as black / white.
* Size: an image above ``MAX_PIXELS`` pixels (default 25 megapixels, adjustable:
  ``egg.images.MAX_PIXELS = ...``) is downscaled to that many pixels with a warning, so a
  huge array cannot exhaust memory in the vision tower's preprocessing. Files above
  PIL's decompression-bomb limit raise egg's ValueError naming the file.

EXIF orientation is *not* applied: boxes of the usual benchmarks are given in the raw
pixel grid of the file.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_BACKGROUND = (255, 255, 255)
#: Images with more pixels than this are downscaled (with a warning) before use. Real VLMs
#: resize to at most a few megapixels anyway; 25 MP keeps a 5000 x 5000 scan intact.
MAX_PIXELS = 25_000_000


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
    if a.size == 0:
        raise ValueError(f"image array is empty: shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float64))
        lo, hi = float(f.min()), float(f.max())
        if hi > 1.5 or lo < -0.5:
            raise ValueError(f"float image array has values in [{lo:g}, {hi:g}]; egg reads float images as 0..1. "
                             "For 0..255 data pass it as uint8 (a.astype(np.uint8)) or divide by 255")
        a = np.rint(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) and a.dtype != np.uint8:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{a.dtype} image array has values in [{lo}, {hi}]; egg reads integer images by value "
                             "as 0..255. Rescale to 0..255 first (e.g. (a / 257).astype(np.uint8) for 16-bit data)")
        a = a.astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"unsupported image array dtype {a.dtype}; pass uint8 (0..255) or float (0..1)")
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(a), mode)


def load_image(image) -> Image.Image:
    """Any accepted image form -> a new PIL image in RGB mode (see module docstring).

    Raises FileNotFoundError for a path that does not exist, ValueError for a file that is
    not a readable image, an empty (0-pixel) image, or an unsupported type.
    """
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        if isinstance(text, str) and "://" in text:
            raise ValueError(f"image {text!r} is a URL; egg reads local files only. Download it first, then pass "
                             "the file path (or a PIL image)")
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {str(path)!r}")
        if path.is_dir():
            raise ValueError(f"image path is a directory, not an image file: {str(path)!r}")
        try:
            with Image.open(path) as im:
                im.load()
                img = _to_rgb(im)
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
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
    if w * h > MAX_PIXELS:
        scale = math.sqrt(MAX_PIXELS / float(w * h))
        nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
        warnings.warn(f"image of {w}x{h} pixels is above egg.images.MAX_PIXELS ({MAX_PIXELS}); downscaled to "
                      f"{nw}x{nh}. Boxes refer to the downscaled image; raise MAX_PIXELS to keep full size",
                      stacklevel=2)
        img = img.resize((nw, nh), Image.BILINEAR)
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
