"""The records adapters hand to the method: where visual tokens sit (``TokenGrid``), a
prepared prompt (``Prepared``), what a call cost (``Cost``), a decoder pass's output
(``ForwardOutput``), and the cache of visual embeddings (``EmbeddingCache``)."""
from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import torch

from ..method.boxes import Box


@dataclass(frozen=True)
class TokenGrid:
    """Where one 2-D grid of visual tokens sits in the sequence, and what it covers.

    image_index: which image of the prompt (0 = the original, 1.. = appended crops).
    start: sequence position of the grid's first (top-left) token.
    shape: (rows, cols) of the grid.
    footprint: (x0, y0, x1, y1), the pixel box of image ``image_index`` that the grid's
        tokens cover (float; may reach outside the image when the processor pads, and
        covers only the kept part when it centre-crops).
    image_size: (width, height) of that image.
    row_stride: sequence distance between the first tokens of consecutive rows (``cols``
        for LLaVA; ``cols + 1`` for models that put a newline token after each row).
    """

    image_index: int
    start: int
    shape: tuple[int, int]
    footprint: Box
    image_size: tuple[int, int]
    row_stride: int | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.shape[0] * self.shape[1])

    def positions(self) -> np.ndarray:
        """Sequence positions of the grid's tokens, shape (rows, cols)."""
        rows, cols = self.shape
        stride = cols if self.row_stride is None else self.row_stride
        return self.start + np.arange(rows)[:, None] * stride + np.arange(cols)[None, :]

    @property
    def cell_size(self) -> tuple[float, float]:
        """(width, height) in pixels of the image covered by one grid cell."""
        x0, y0, x1, y1 = self.footprint
        return ((x1 - x0) / self.shape[1], (y1 - y0) / self.shape[0])


@dataclass
class Prepared:
    """A model input for one prompt: images + question, tokenised, with its token layout.

    images: the PIL images in prompt order (original first, then crops).
    question: the question text.
    inputs: the processor's output tensors (input_ids, attention_mask, pixel_values, ...).
    grids: the visual token grids, grouped by image in prompt order (one per image for
        LLaVA). When an image has several grids (tiles), its first grid is the one that
        covers the whole image (LLaVA-NeXT's base grid, InternVL's thumbnail); the rest follow.
    visual_positions: sorted sequence positions of every visual placeholder token; row j
        of the visual-embeddings tensor goes to position ``visual_positions[j]``.
    image_token_counts: number of visual placeholder tokens of each image.
    suffix: token ids appended after the prompt (greedily decoded answer tokens, used to
        differentiate a later answer token: ``relevance(token_index=n)``).
    """

    images: list
    question: str
    inputs: dict
    grids: list[TokenGrid]
    visual_positions: torch.Tensor
    image_token_counts: list[int]
    suffix: list[int] = field(default_factory=list)

    @property
    def prompt_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt ids followed by the suffix, shape (1, seq_len)."""
        ids = self.inputs["input_ids"]
        if not self.suffix:
            return ids
        extra = torch.tensor([self.suffix], dtype=ids.dtype, device=ids.device)
        return torch.cat([ids, extra], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        mask = self.inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(self.inputs["input_ids"])
        if not self.suffix:
            return mask
        return torch.cat([mask, torch.ones((1, len(self.suffix)), dtype=mask.dtype, device=mask.device)], dim=1)

    @property
    def seq_len(self) -> int:
        return int(self.inputs["input_ids"].shape[1]) + len(self.suffix)

    @property
    def n_visual(self) -> int:
        return int(self.visual_positions.numel())

    def with_suffix(self, token_ids: Sequence[int]) -> "Prepared":
        """A copy with ``token_ids`` appended after the prompt (replacing any suffix)."""
        return replace(self, suffix=[int(t) for t in token_ids])

    def visual_rows(self, grid: TokenGrid) -> np.ndarray:
        """Rows of the visual-embeddings tensor holding ``grid``'s tokens, shape (rows, cols)."""
        pos = self.visual_positions.cpu().numpy()
        want = grid.positions()
        rows = np.searchsorted(pos, want)
        if np.any(rows >= pos.size) or np.any(pos[np.minimum(rows, pos.size - 1)] != want):
            raise ValueError(f"grid {grid} does not sit on visual placeholder tokens")
        return rows


@dataclass
class Cost:
    """Work counters. ``forward``: full-sequence decoder passes, one per sequence (a batched
    pass over B prompts counts B; a generate's prefill counts, unless it continued the
    key/value cache of a kept pass); ``backward``: backward passes; ``images_encoded``: images run through the
    vision tower; ``generated_tokens``: tokens decoded by ``generate``; ``wall_time``: s."""

    forward: int = 0
    backward: int = 0
    images_encoded: int = 0
    generated_tokens: int = 0
    wall_time: float = 0.0

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(**{k: getattr(self, k) - getattr(other, k) for k in asdict(self)})

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})

    def copy(self) -> "Cost":
        return Cost(**asdict(self))

    def split(self, n: int) -> list["Cost"]:
        """A batch's cost as ``n`` per-question costs: counters count sequences (a batched pass
        over n prompts counts n), so an even split is what each question's single call would
        have counted, remainders going to the first ones; time is split evenly."""
        part = lambda v, i: v // n + (1 if i < v % n else 0)
        return [Cost(forward=part(self.forward, i), backward=part(self.backward, i),
                     images_encoded=part(self.images_encoded, i), generated_tokens=part(self.generated_tokens, i),
                     wall_time=self.wall_time / n) for i in range(n)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Cost":
        return cls(**{k: d[k] for k in asdict(cls()) if k in d})


@dataclass
class ForwardOutput:
    """Next-token logits at the last position, shape (vocab,); and, when asked for, the
    attention weights of one decoder layer, shape (1, heads, seq, seq) (in the graph), and
    the decoder's key/value cache of the whole sequence (detached), which ``generate`` can
    continue from instead of running the prompt again."""

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    kv: object | None = None


@dataclass
class BatchOutput:
    """``forward_batch``'s result: next-token logits per prompt (B, vocab), each prompt's
    length (its rows in ``attention`` beyond that are padding), and when asked for the
    attention weights of one layer (B, heads, L, L) and one key/value cache per prompt."""

    logits: torch.Tensor
    lengths: list
    attention: torch.Tensor | None = None
    kv: list | None = None


class EmbeddingCache:
    """Visual embeddings per image, keyed by the processed pixels (LRU, ``maxsize`` images).

    The authors' release recomputes every image's embeddings at every zoom iteration; with
    a cache shared across iterations only the newly appended crops are encoded. Entries
    are detached tensors; keys are a hash of the pixel tensor's bytes, so two different
    PIL objects with equal pixels share an entry.
    """

    def __init__(self, maxsize: int = 64):
        self.maxsize = int(maxsize)
        self._data: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.pixels = ImageCache()  # the processor's output per image, for the same call
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(pixels: torch.Tensor) -> str:
        arr = pixels.detach().to("cpu").contiguous()
        if arr.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw bits
            arr = arr.view(torch.int16)
        h = hashlib.sha1(arr.numpy().tobytes())
        return f"{tuple(pixels.shape)}:{pixels.dtype}:{h.hexdigest()}"

    def get(self, key: str) -> torch.Tensor | None:
        out = self._data.get(key)
        if out is not None:
            self._data.move_to_end(key)
            self.hits += 1
        else:
            self.misses += 1
        return out

    def put(self, key: str, value: torch.Tensor) -> None:
        self._data[key] = value.detach()
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


class ImageCache:
    """The image processor's output per image object, for one ``ground`` / ``vicrop`` call.

    Every state of the zoom loop, and the answer, prompt the model with the original image
    again; with this cache the processor resizes and normalises it once. Keys are object
    identities (the cache keeps the images alive, so an id cannot be reused), plus the
    processor's keyword arguments. Images are processed one at a time and the outputs
    concatenated along the first axis, which equals processing them together for every
    processor whose outputs are per-image rows (LLaVA, Qwen-VL, InternVL); where they are
    not (LLaVA-NeXT pads the tiles of a batch to one count), ``merge`` returns None and the
    caller processes the batch as usual.
    """

    def __init__(self):
        self._data: dict[tuple, tuple] = {}
        self._crops: dict[tuple, tuple] = {}
        self.hits = 0
        self.misses = 0

    def crop(self, image, box: tuple[int, int, int, int]):
        """``image.crop(box)``, the same object for the same image and box (so its processed
        pixels are found again)."""
        k = (id(image), tuple(box))
        hit = self._crops.get(k)
        if hit is None:
            hit = (image, image.crop(box))
            self._crops[k] = hit
        return hit[1]

    @contextlib.contextmanager
    def routing(self, processor) -> Iterator[None]:
        """Route ``processor``'s image processing through this cache for one call."""
        ip = getattr(processor, "image_processor", None)
        if ip is None:
            yield
            return
        cache = self

        class _Cached:
            def __call__(self, images, **kw):
                flat = images if isinstance(images, (list, tuple)) else [images]
                if any(isinstance(x, (list, tuple)) for x in flat):
                    return ip(images, **kw)
                out = cache.process(ip, flat, **kw)
                return ip(images, **kw) if out is None else out

            def __getattr__(self, name):
                return getattr(ip, name)

        processor.image_processor = _Cached()
        try:
            yield
        finally:
            processor.image_processor = ip

    def process(self, image_processor, images, **kwargs):
        """The processor's output for ``images``, or None when it cannot be assembled per image."""
        key_kw = repr(sorted(kwargs.items()))
        parts = []
        for im in images:
            k = (id(im), key_kw)
            hit = self._data.get(k)
            if hit is None:
                hit = (im, image_processor([im], **kwargs))
                self._data[k] = hit
                self.misses += 1
            else:
                self.hits += 1
            parts.append(hit[1])
        merged = merge_features(parts)
        if merged is not None and len(parts) > 1:
            self._share(images, key_kw, parts, merged)
        return merged

    def _share(self, images, key_kw: str, parts: Sequence, merged) -> None:
        """Point each image's entry at its own rows of ``merged`` (views), so that the
        prompt and this cache hold the pixels once between them, not twice: the zoom loop's
        prompt at state n holds the original and n crops, and at 24x24 tokens their copies
        were a quarter of ``ground``'s peak memory on the random model of ``egg cost``."""
        from transformers.feature_extraction_utils import BatchFeature

        at = {k: 0 for k, v in merged.items() if torch.is_tensor(v)}
        for im, part in zip(images, parts):
            rows = {}
            for k, v in part.items():
                if k in at:
                    rows[k] = merged[k][at[k]:at[k] + v.shape[0]]
                    at[k] += v.shape[0]
                else:
                    rows[k] = v
            self._data[(id(im), key_kw)] = (im, BatchFeature(data=rows))


def merge_features(parts: Sequence) -> "dict | None":
    """Per-image processor outputs joined as one batch's, or None if they do not stack."""
    from transformers.feature_extraction_utils import BatchFeature

    if not parts:
        return None
    keys = list(parts[0].keys())
    if any(list(p.keys()) != keys for p in parts):
        return None
    out = {}
    for k in keys:
        vals = [p[k] for p in parts]
        if all(torch.is_tensor(v) for v in vals):
            if any(v.shape[1:] != vals[0].shape[1:] for v in vals):
                return None
            out[k] = torch.cat(vals, dim=0) if len(vals) > 1 else vals[0]  # one image: no copy
        elif all(isinstance(v, list) for v in vals):
            out[k] = [x for v in vals for x in v]
        else:
            return None
    return BatchFeature(data=out)


def detached_kv(out, length: int):
    """The key/value cache of a decoder output, detached from the autograd graph (the
    relevance pass takes a gradient through it), or None when the decoder kept none or
    not one of the whole ``length``-token sequence."""
    kv = getattr(out, "cache", None)
    if kv is None:
        kv = getattr(out, "past_key_values", None)
    if kv is None or kv_length(kv) != length:
        return None
    for layer in getattr(kv, "layers", ()):  # transformers 5.x: one object per layer
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if torch.is_tensor(t):
                setattr(layer, name, t.detach())
    for name in ("key_cache", "value_cache"):  # transformers 4.x: lists of tensors
        ts = getattr(kv, name, None)
        if isinstance(ts, list):
            ts[:] = [t.detach() for t in ts]
    return kv


def kv_length(kv) -> int:
    """Tokens held by a key/value cache (0 when it cannot say)."""
    try:
        return int(kv.get_seq_length())
    except Exception:  # noqa: BLE001 - a cache type without the method
        return 0


def kv_rows(kv, lengths: Sequence[int]) -> list:
    """A right-padded batch's key/value cache as one cache per prompt (its first
    ``lengths[i]`` positions): what each prompt's own pass would have kept, since under
    causal attention no real token sees the padding after it."""
    from transformers import DynamicCache

    layers = getattr(kv, "layers", None)
    pairs = ([(l.keys, l.values) for l in layers] if layers is not None
             else list(zip(kv.key_cache, kv.value_cache)))
    out = []
    for i, n in enumerate(lengths):
        c = DynamicCache()
        for li, (k, v) in enumerate(pairs):
            c.update(k[i:i + 1, :, :int(n)].detach(), v[i:i + 1, :, :int(n)].detach(), li)
        out.append(c)
    return out
