"""The decoder side of an adapter: passes from visual embeddings (full or truncated to L
layers, with attention weights or the key/value cache when asked) and greedy generation.

A mixin of ``VLMAdapter``: it relies on the adapter's model-part hooks (``language_model``,
``decoder_layers``, ``final_norm``, ``lm_head``, ``attention_module``, ``decoder_inputs``,
``generation_inputs``) and its input building (``inputs_embeds``, ``visual_embeddings``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from .records import EmbeddingCache, ForwardOutput, Prepared, detached_kv, kv_length


class _EarlyExit(Exception):
    """Raised by a forward hook to stop the decoder after layer L (layer truncation)."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


class Decoding:
    """Decoder passes and generation, shared by every adapter."""

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
        keep_kv: bool = False,
    ) -> ForwardOutput:
        """Decoder pass from visual embeddings; logits at the last position.

        num_layers: run only the first L decoder layers, then the final norm and the LM
            head (None or the full depth = the unmodified model).
        attention_layer: also return that layer's attention weights (eager attention is
            switched on for the call).
        keep_kv: also return the key/value cache of the sequence (``ForwardOutput.kv``), so
            that generation from this prompt skips its prefill; only a full-depth pass has
            one (None otherwise, or when gradient checkpointing switches the cache off).
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
        keep_kv = bool(keep_kv) and stop_after is None
        self.counter.forward += 1
        kv = None
        try:
            with ctx, self._checkpointing():
                try:
                    out = self.language_model(inputs_embeds=embeds, use_cache=keep_kv, **self.decoder_inputs(prepared))
                    hidden = out.last_hidden_state[:, -1]
                    if keep_kv:
                        kv = detached_kv(out, prepared.input_ids.shape[1])
                except _EarlyExit as stop:
                    hidden = self.final_norm(stop.hidden[:, -1])
        finally:
            for h in hooks:
                h.remove()
        logits = self.lm_head(hidden)[0]
        att = captured.get("attention") if attention_layer is not None else None
        if attention_layer is not None and att is None:
            raise RuntimeError(f"layer {attention_layer} returned no attention weights")
        return ForwardOutput(logits=logits, attention=att, kv=kv)

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
                     cache: EmbeddingCache | None = None, kv=None) -> list[int]:
        """Greedy answer token ids (stops at EOS), from cached visual embeddings.

        kv: the key/value cache of a full-depth forward over exactly this prompt
        (``forward(..., keep_kv=True).kv``). Generation then continues from it: only the
        prompt's last token is run again (so that ``generate`` applies its own logits
        processors to the first answer token), and the answer is the same token for token.
        The cache is consumed."""
        ids = prepared.input_ids
        if kv is not None and kv_length(kv) == ids.shape[1]:
            kv.crop(-1)  # negative: remove from the end (transformers 4.x and 5.x alike)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids, attention_mask=prepared.attention_mask, max_new_tokens=int(max_new_tokens),
                    do_sample=False, num_beams=1, pad_token_id=self._pad_id(),
                    **{self._cache_argument(): kv}, **self.generation_inputs(prepared),
                )
            reused = True
        else:
            reused = False
            if visual_embeds is None:
                visual_embeds = self.visual_embeddings(prepared, cache)
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
        self.counter.forward += 0 if reused else 1  # a continued cache runs no prefill
        self.counter.generated_tokens += len(new)
        return new

    def _cache_argument(self) -> str:
        """``generate``'s name for a key/value cache: ``cache`` since transformers 5.2x,
        ``past_key_values`` before."""
        import inspect

        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _pad_id(self):
        tok = self.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        return pad if pad is not None else getattr(tok, "eos_token_id", None)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def generate(self, prepared: Prepared, max_new_tokens: int = 8,
                 visual_embeds: torch.Tensor | None = None,
                 cache: EmbeddingCache | None = None, kv=None) -> str:
        """Greedy answer text for a prepared prompt (``kv``: see ``generate_ids``)."""
        return self.decode(self.generate_ids(prepared, max_new_tokens, visual_embeds, cache, kv=kv))
