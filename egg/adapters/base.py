"""The adapter interface: the one place where a vision-language model's specifics live.

The method code (``relevance``, ``zoom``, ``baselines``) only talks to a ``VLMAdapter``;
it never looks at a model's class or name. An adapter knows how to

* build the model input for an image list and a question with the processor's own chat
  template (``prepare``): the original image first, then appended crops, then the
  question; and where each image's visual tokens sit in the sequence and how they lay out
  as 2-D grids (``TokenGrid``), including which pixels of the image each grid covers;
* encode images into the visual token embeddings the language decoder receives (after the
  vision tower and projector), one image at a time, so a cache can skip images it has
  already seen (``visual_embeddings`` with an ``EmbeddingCache``);
* run the language decoder from those embeddings (``forward``, in ``egg.adapters.decoding``),
  optionally truncated to its first L layers (then the final norm and the LM head),
  optionally capturing the attention weights of one layer or keeping the key/value cache;
* generate an answer (``generate``); map a box in grid cells back to pixels
  (``grid_box_to_pixels``).

Conventions: one prompt at a time (batch size 1); boxes are ``(x0, y0, x1, y1)`` in
pixels of the image named by ``TokenGrid.image_index``, x1/y1 exclusive; grid shapes are
``(rows, cols)``; image sizes are PIL ``(width, height)``.

Subclasses implement the abstract hooks of ``VLMAdapter`` (``encode``, ``layout``,
``patch_size``, ``input_resolution``) and override the defaulted ones where their
architecture differs; the rest is shared. Constructing an adapter freezes the model's parameters (``requires_grad_(False)``):
no method in this package ever needs a parameter gradient.
"""
from __future__ import annotations

import abc
import contextlib
from typing import Sequence

import torch

from ..method.boxes import Box, grid_box_to_pixels
from .decoding import Decoding
from .records import Cost, EmbeddingCache, Prepared, TokenGrid


# --------------------------------------------------------------------------- adapter


class VLMAdapter(Decoding, abc.ABC):
    """Model-agnostic operations on a transformers VLM and its processor.

    Required hooks (abstract): ``encode``, ``layout``, ``patch_size``, ``input_resolution``.
    Hooks with defaults for the layout transformers VLMs share, overridden where an
    architecture differs: ``image_token_id``, ``language_model``, ``decoder_layers``,
    ``final_norm``, ``lm_head``, ``image_inputs``, ``pixel_image``, ``decoder_inputs``,
    ``generation_inputs``, ``attention_module``, ``grid_box_to_pixels``.

    Subclasses register themselves with ``egg.adapters.register`` for the config classes /
    ``model_type`` values they handle; ``egg.adapters.adapter_for(model, processor)``
    picks one.
    """

    #: model_type values (``model.config.model_type``) this adapter handles.
    model_types: tuple[str, ...] = ()

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.model.requires_grad_(False)
        self.counter = Cost()

    # ---- model parts --------------------------------------------------------------
    # Defaults for the layout every transformers *ForConditionalGeneration VLM shares
    # (LLaVA, LLaVA-NeXT, Qwen2.5/3-VL, InternVL): model.model holds the vision tower and
    # the decoder, model.lm_head the head. An architecture laid out otherwise overrides them.

    @property
    def _core(self) -> torch.nn.Module:
        return self.model.model

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        tid = getattr(cfg, "image_token_id", None)
        return int(tid if tid is not None else cfg.image_token_index)

    @property
    def language_model(self) -> torch.nn.Module:
        """The decoder stack (embeddings -> layers -> final norm), without the LM head."""
        return self._core.language_model

    @property
    def decoder_layers(self) -> torch.nn.ModuleList:
        return self.language_model.layers

    @property
    def final_norm(self) -> torch.nn.Module:
        return self.language_model.norm

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.lm_head

    @abc.abstractmethod
    def encode(self, pixel_values: torch.Tensor, **image_inputs) -> torch.Tensor:
        """Visual token embeddings of ONE image, shape (n_tokens, hidden); differentiable
        w.r.t. ``pixel_values`` (no ``no_grad`` here: callers choose)."""
        raise NotImplementedError

    @abc.abstractmethod
    def layout(self, inputs: dict, images: list) -> list[TokenGrid]:
        """The token grids of a processed prompt, in sequence order."""
        raise NotImplementedError

    def image_inputs(self, inputs: dict, index: int) -> tuple[torch.Tensor, dict]:
        """(pixel_values, extra kwargs for ``encode``) of image ``index`` of a prompt.

        When an image is several pixel tensors (tiles), the first one along dim 0 must be
        the image of its first grid (the whole-image grid): ViCrop's pure-grad map pools
        the gradient of that tensor onto that grid."""
        return inputs["pixel_values"][index : index + 1], {}

    def pixel_image(self, pixels: torch.Tensor, **image_inputs) -> torch.Tensor:
        """The first tensor from ``image_inputs`` (or its gradient) as a (1, C, H, W) image
        whose H x W is the first grid's rows x cols times ``patch_size``: what ViCrop's
        pure-grad pools. Models whose processors flatten patches override this."""
        return pixels[:1]

    def decoder_inputs(self, prepared: Prepared, visual_embeds: torch.Tensor | None = None) -> dict:
        """Keyword arguments for the decoder besides ``inputs_embeds`` (models with
        multimodal rotary positions add their ``position_ids`` here; models that inject
        visual features inside the decoder take them from ``visual_embeds``)."""
        return {"attention_mask": prepared.attention_mask}

    def generation_inputs(self, prepared: Prepared) -> dict:
        """Extra keyword arguments for ``model.generate`` besides ids, embeddings and mask
        (models whose positions depend on the image layout, e.g. M-RoPE, add what the
        model's own generation code needs to rebuild them)."""
        return {}

    def attention_module(self, layer: int) -> torch.nn.Module:
        """The self-attention module of decoder layer ``layer`` (its forward returns
        ``(output, weights)`` under eager attention)."""
        return self.decoder_layers[layer].self_attn

    def mlp_module(self, layer: int) -> torch.nn.Module:
        """The feed-forward block of decoder layer ``layer``: a module that acts on each
        position alone (memory-saving mode runs it over the sequence in chunks)."""
        return self.decoder_layers[layer].mlp

    @property
    @abc.abstractmethod
    def patch_size(self) -> int:
        """Side in processed pixels of one visual token."""
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def input_resolution(self) -> tuple[int, int]:
        """(width, height) of the processed image the vision tower sees."""
        raise NotImplementedError

    # ---- shared: devices, sizes ----------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    # ---- input building ---------------------------------------------------------------

    def messages(self, n_images: int, question: str) -> list[dict]:
        """Chat messages: all images first (original, then crops), then the question."""
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        return [{"role": "user", "content": content}]

    def prompt(self, n_images: int, question: str) -> str:
        return self.processor.apply_chat_template(self.messages(n_images, self.neutralise(question)),
                                                  add_generation_prompt=True)

    def neutralise(self, question: str) -> str:
        """The question with the tokenizer's special and added tokens (``<image>``,
        ``<|image_pad|>``, ``<IMG_CONTEXT>``, ...) broken by a space after their first
        character, so that text a user typed can never become a placeholder the processor
        expands into visual tokens. Other text is unchanged."""
        specials = getattr(self, "_specials", None)
        if specials is None:
            tok = self.tokenizer
            names = set(getattr(tok, "all_special_tokens", []) or [])
            try:
                names |= set(tok.get_added_vocab())
            except Exception:  # noqa: BLE001 - a tokenizer without added vocabulary
                pass
            for attr in ("image_token", "video_token", "boi_token", "eoi_token"):
                t = getattr(self.processor, attr, None)
                if isinstance(t, str):
                    names.add(t)
            specials = sorted((n for n in names if isinstance(n, str) and len(n) > 1 and not n.isspace()),
                              key=len, reverse=True)
            self._specials = specials
        for t in specials:
            if t in question:
                question = question.replace(t, t[0] + " " + t[1:])
        return question

    @property
    def max_positions(self) -> int | None:
        """The decoder's context length (``max_position_embeddings``), or None when unknown."""
        cfg = self.model.config
        text = getattr(cfg, "text_config", None) or getattr(cfg, "llm_config", None) or cfg
        n = getattr(text, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    def prepare(self, images: Sequence, question: str, cache: EmbeddingCache | None = None) -> Prepared:
        """Tokenise ``question`` with ``images`` (original first, then crops) for the model.

        cache: the call's ``EmbeddingCache``; its ``pixels`` keep the processor's output per
        image, so that an image prompted again (the original, at every state and for the
        answer) is not processed again."""
        pixels = cache.pixels if cache is not None else None
        images = list(images)
        if not images:
            raise ValueError("prepare needs at least one image")
        with (pixels.routing(self.processor) if pixels is not None else contextlib.nullcontext()):
            inputs = self.processor(images=images, text=self.prompt(len(images), question), return_tensors="pt")
        inputs = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in dict(inputs).items()}
        if "pixel_values" in inputs and torch.is_floating_point(inputs["pixel_values"]):
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError(f"expected a single prompt, got batch of {ids.shape[0]}")
        limit = self.max_positions
        if limit is not None and ids.shape[1] > limit:
            n_q = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
            raise ValueError(f"the prompt is {ids.shape[1]} tokens ({n_q} of them the question, the rest "
                             f"{len(images)} image(s) and the chat template), above the model's context of {limit} "
                             "positions; shorten the question or use fewer crops (k, max_iterations)")
        visual = (ids[0] == self.image_token_id).nonzero().flatten()
        grids = self.layout(inputs, images)
        counts = self._image_token_counts(grids, len(images), visual)
        prep = Prepared(images=images, question=question, inputs=inputs, grids=grids,
                        visual_positions=visual, image_token_counts=counts)
        for g in grids:  # validates that every grid sits on placeholder tokens
            prep.visual_rows(g)
        return prep

    def _image_token_counts(self, grids, n_images, visual) -> list[int]:
        counts = [0] * n_images
        for g in grids:
            counts[g.image_index] += g.n_tokens
        if sum(counts) != int(visual.numel()):
            # Models with extra per-image tokens (separators) override this.
            raise ValueError(
                f"token layout covers {sum(counts)} visual tokens but the prompt has {int(visual.numel())}"
            )
        return counts

    # ---- visual embeddings -------------------------------------------------------------

    def visual_embeddings(self, prepared: Prepared, cache: EmbeddingCache | None = None) -> torch.Tensor:
        """All images' visual token embeddings in sequence order, shape (n_visual, hidden).

        Computed without grad, one image at a time; with a ``cache``, images whose
        processed pixels were seen before are not re-encoded.
        """
        parts = []
        for i in range(len(prepared.images)):
            pix, extra = self.image_inputs(prepared.inputs, i)
            key = EmbeddingCache.key(pix) if cache is not None else None
            emb = cache.get(key) if cache is not None else None
            if emb is None:
                with torch.no_grad():
                    emb = self.encode(pix, **extra)
                self.counter.images_encoded += 1
                if cache is not None:
                    cache.put(key, emb)
            parts.append(emb)
        out = torch.cat(parts, dim=0)
        if out.shape[0] != prepared.n_visual:
            raise ValueError(f"encoded {out.shape[0]} visual tokens, prompt has {prepared.n_visual}")
        return out

    #: True when ``encode`` of several images' pixel tensors stacked along dim 0 returns
    #: each image's rows in order (fixed-resolution towers such as LLaVA's); the batched
    #: paths then encode all new images of a round in one vision pass.
    stacks_images: bool = False

    def visual_embeddings_batch(self, prepared: Sequence[Prepared],
                                caches: Sequence[EmbeddingCache | None]) -> list[torch.Tensor]:
        """``visual_embeddings`` of several prompts, each with its own cache; images not yet
        cached are encoded together (one vision pass per pixel shape) when the adapter
        ``stacks_images``, else one at a time."""
        prepared, caches = list(prepared), list(caches)
        if self.stacks_images and all(c is not None for c in caches):
            todo: dict = {}  # key -> (pixels, caches that need it)
            for p, c in zip(prepared, caches):
                for i in range(len(p.images)):
                    pix, extra = self.image_inputs(p.inputs, i)
                    key = EmbeddingCache.key(pix)
                    if not extra and c.get(key) is None:
                        todo.setdefault(key, (pix, []))[1].append(c)
            groups: dict = {}
            for key, (pix, cs) in todo.items():
                groups.setdefault(tuple(pix.shape), []).append((key, pix, cs))
            for group in groups.values():
                with torch.no_grad():
                    emb = self.encode(torch.cat([g[1] for g in group], dim=0))
                self.counter.images_encoded += len(group)
                for (key, _, cs), part in zip(group, emb.chunk(len(group), dim=0)):
                    for c in cs:
                        c.put(key, part)
        return [self.visual_embeddings(p, c) for p, c in zip(prepared, caches)]

    def inputs_embeds(self, prepared: Prepared, visual_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings of the whole sequence with the visual rows spliced in."""
        ids = prepared.input_ids
        emb = self.model.get_input_embeddings()(ids)
        mask = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        mask[0, prepared.visual_positions] = True
        return emb.masked_scatter(mask.unsqueeze(-1), visual_embeds.to(emb.dtype))

    # ---- geometry ----------------------------------------------------------------------

    def grid_box_to_pixels(self, grid: TokenGrid, box: Box) -> Box:
        """A box in grid cells (c0, r0, c1, r1) -> pixels of the grid's image, clipped to it
        (see ``grid_to_image_box``). Adapters whose grids are not a linear map of a pixel
        box (none yet) override this."""
        return grid_to_image_box(grid, box)

    @property
    def min_crop_side(self) -> int:
        """Smallest crop side (pixels) worth encoding: one patch of the processed input."""
        return int(self.patch_size)

    def describe(self) -> dict:
        """A JSON-able summary of the model the adapter wraps."""
        cfg = self.model.config
        return {
            "adapter": type(self).__name__,
            "model_type": getattr(cfg, "model_type", None),
            "name_or_path": getattr(cfg, "_name_or_path", None) or getattr(self.model, "name_or_path", None),
            "num_layers": self.num_layers,
            "patch_size": self.patch_size,
            "input_resolution": list(self.input_resolution),
        }


def grid_to_image_box(grid: TokenGrid, box: Box) -> Box:
    """A box in grid cells (c0, r0, c1, r1) -> pixels of the grid's image, clipped to it.

    Linear map onto ``grid.footprint`` (per-axis scale), then clipped to the image: cells
    on padding (outside the image) map to the image edge, so a box entirely on padding
    collapses to zero width/height at the edge.
    """
    x0, y0, x1, y1 = grid_box_to_pixels(box, grid.shape, grid.footprint)
    W, H = grid.image_size

    def clip(v: float, hi: float) -> float:
        return float(min(max(v, 0.0), hi))

    return (clip(x0, W), clip(y0, H), clip(x1, W), clip(y1, H))
