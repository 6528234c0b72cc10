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
* run the language decoder from those embeddings (``forward``), optionally truncated to
  its first L layers (then the final norm and the LM head), optionally capturing the
  attention weights of one layer;
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
from typing import Iterator, Sequence

import torch

from ..method.boxes import Box, grid_box_to_pixels
from .records import Cost, EmbeddingCache, ForwardOutput, Prepared, TokenGrid


class _EarlyExit(Exception):
    """Raised by a forward hook to stop the decoder after layer L (layer truncation)."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


# --------------------------------------------------------------------------- adapter


class VLMAdapter(abc.ABC):
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

    def decoder_inputs(self, prepared: Prepared) -> dict:
        """Keyword arguments for the decoder besides ``inputs_embeds`` (models with
        multimodal rotary positions add their ``position_ids`` here)."""
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

    def inputs_embeds(self, prepared: Prepared, visual_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings of the whole sequence with the visual rows spliced in."""
        ids = prepared.input_ids
        emb = self.model.get_input_embeddings()(ids)
        mask = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        mask[0, prepared.visual_positions] = True
        return emb.masked_scatter(mask.unsqueeze(-1), visual_embeds.to(emb.dtype))

    # ---- decoder ----------------------------------------------------------------------

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Temporarily switch the language decoder to eager attention (which returns the
        attention weights), restoring the previous implementation afterwards."""
        cfg = self.language_model.config
        old = getattr(cfg, "_attn_implementation", None)
        if old == "eager":
            yield
            return
        self._set_text_attn("eager")
        try:
            yield
        finally:
            self._set_text_attn(old)

    def _set_text_attn(self, impl) -> None:
        self.language_model.set_attn_implementation(impl)

    def forward(
        self,
        prepared: Prepared,
        visual_embeds: torch.Tensor,
        num_layers: int | None = None,
        attention_layer: int | None = None,
    ) -> ForwardOutput:
        """Decoder pass from visual embeddings; logits at the last position.

        num_layers: run only the first L decoder layers, then the final norm and the LM
            head (None or the full depth = the unmodified model).
        attention_layer: also return that layer's attention weights (eager attention is
            switched on for the call).
        Gradients flow to ``visual_embeds`` when it requires grad (the caller decides).
        """
        n = self.num_layers
        if num_layers is not None and not (1 <= int(num_layers) <= n):
            raise ValueError(f"num_layers must be in [1, {n}], got {num_layers}")
        if attention_layer is not None and not (0 <= int(attention_layer) < n):
            raise ValueError(f"attention_layer must be in [0, {n - 1}], got {attention_layer}")
        embeds = self.inputs_embeds(prepared, visual_embeds)
        captured: dict = {}
        hooks = []

        def grab_attention(module, args, output):
            captured["attention"] = output[1] if isinstance(output, tuple) else None

        def stop_here(module, args, output):
            raise _EarlyExit(output[0] if isinstance(output, tuple) else output)

        stop_after = None
        if num_layers is not None and int(num_layers) < n:
            stop_after = int(num_layers) - 1
        if attention_layer is not None:
            hooks.append(self.attention_module(attention_layer).register_forward_hook(grab_attention))
        if stop_after is not None:
            hooks.append(self.decoder_layers[stop_after].register_forward_hook(stop_here))
        ctx = self.eager_attention() if attention_layer is not None else contextlib.nullcontext()
        self.counter.forward += 1
        try:
            with ctx, self._checkpointing():
                try:
                    out = self.language_model(inputs_embeds=embeds, use_cache=False, **self.decoder_inputs(prepared))
                    hidden = out.last_hidden_state[:, -1]
                except _EarlyExit as stop:
                    hidden = self.final_norm(stop.hidden[:, -1])
        finally:
            for h in hooks:
                h.remove()
        logits = self.lm_head(hidden)[0]
        att = captured.get("attention") if attention_layer is not None else None
        if attention_layer is not None and att is None:
            raise RuntimeError(f"layer {attention_layer} returned no attention weights")
        return ForwardOutput(logits=logits, attention=att)

    @contextlib.contextmanager
    def _checkpointing(self) -> Iterator[None]:
        """When the model's gradient checkpointing is on (``load_model(...,
        gradient_checkpointing=True)``) and a gradient is being taken, mark the decoder
        layers (only the layer objects, not their dropout / attention submodules, which stay
        in eval mode) as training, so transformers' checkpointing wrapper recomputes their
        activations in the backward pass instead of storing them."""
        layers = [l for l in self.decoder_layers if getattr(l, "gradient_checkpointing", False)]
        if not layers or not torch.is_grad_enabled():
            yield
            return
        old = [l.training for l in layers]
        for l in layers:
            l.training = True
        try:
            yield
        finally:
            for l, t in zip(layers, old):
                l.training = t

    def forward_from_embeddings(self, prepared: Prepared, visual_embeds: torch.Tensor,
                                num_layers: int | None = None) -> torch.Tensor:
        """Next-token logits at the last position, shape (vocab,)."""
        return self.forward(prepared, visual_embeds, num_layers=num_layers).logits

    def greedy_suffix(self, prepared: Prepared, n: int, visual_embeds: torch.Tensor) -> list[int]:
        """``n`` greedily decoded answer tokens (argmax, no stopping at EOS), without grad."""
        toks: list[int] = []
        with torch.no_grad():
            for _ in range(int(n)):
                logits = self.forward(prepared.with_suffix(toks), visual_embeds).logits
                toks.append(int(torch.argmax(logits)))
        return toks

    # ---- generation ---------------------------------------------------------------------

    def generate_ids(self, prepared: Prepared, max_new_tokens: int = 8,
                     visual_embeds: torch.Tensor | None = None,
                     cache: EmbeddingCache | None = None) -> list[int]:
        """Greedy answer token ids (stops at EOS), from cached visual embeddings."""
        if visual_embeds is None:
            visual_embeds = self.visual_embeddings(prepared, cache)
        ids = prepared.input_ids
        with torch.no_grad():
            embeds = self.inputs_embeds(prepared, visual_embeds)
            out = self.model.generate(
                input_ids=ids, inputs_embeds=embeds, attention_mask=prepared.attention_mask,
                max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1,
                pad_token_id=self._pad_id(), **self.generation_inputs(prepared),
            )
        seq = out[0]
        if seq.shape[0] >= ids.shape[1] and torch.equal(seq[: ids.shape[1]], ids[0]):
            seq = seq[ids.shape[1]:]
        new = [int(t) for t in seq.tolist()]
        self.counter.forward += 1
        self.counter.generated_tokens += len(new)
        return new

    def _pad_id(self):
        tok = self.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        return pad if pad is not None else getattr(tok, "eos_token_id", None)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def generate(self, prepared: Prepared, max_new_tokens: int = 8,
                 visual_embeds: torch.Tensor | None = None,
                 cache: EmbeddingCache | None = None) -> str:
        """Greedy answer text for a prepared prompt."""
        return self.decode(self.generate_ids(prepared, max_new_tokens, visual_embeds, cache))

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
