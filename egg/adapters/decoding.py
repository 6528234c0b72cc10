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

from .records import BatchOutput, EmbeddingCache, ForwardOutput, Prepared, detached_kv, kv_length, kv_rows


class _EarlyExit(Exception):
    """Raised by a forward hook to stop the decoder after layer L (layer truncation)."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def _in_chunks(forward, chunk: int):
    """``forward`` (a position-wise module's) applied to (B, L, ...) inputs ``run.chunk``
    positions at a time (``chunk`` to start with), each chunk checkpointed while a gradient
    is taken."""
    from torch.utils.checkpoint import checkpoint

    def run(x, *args, **kw):
        size = run.chunk
        if x.dim() < 3 or x.shape[1] <= size:
            return forward(x, *args, **kw)
        grad = torch.is_grad_enabled() and x.requires_grad
        parts = [checkpoint(forward, x[:, i:i + size], *args, use_reentrant=False, **kw) if grad
                 else forward(x[:, i:i + size], *args, **kw) for i in range(0, x.shape[1], size)]
        return torch.cat(parts, dim=1)

    run.chunk = int(chunk)
    return run


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
        keep_kv = bool(keep_kv) and (num_layers is None or int(num_layers) == n)
        hidden, att, out = self._run_decoder(embeds, self.decoder_inputs(prepared, visual_embeds), num_layers,
                                             attention_layer, keep_kv)
        kv = detached_kv(out, prepared.input_ids.shape[1]) if keep_kv and out is not None else None
        return ForwardOutput(logits=self.lm_head(hidden)[0], attention=att, kv=kv)

    def forward_batch(self, prepared: Sequence[Prepared], visual_embeds: Sequence[torch.Tensor],
                      num_layers: int | None = None, attention_layer: int | None = None,
                      keep_kv: bool = False) -> BatchOutput:
        """One decoder pass over several prompts: ``forward`` for each, in one pass.

        ``BatchOutput.logits[i]`` equals ``forward``'s logits for prompt i alone (within float
        tolerance); gradients flow to each ``visual_embeds[i]`` that requires grad, and only
        from its own row. ``attention_layer``: that layer's weights, (B, heads, L, L), row i
        valid on its first ``lengths[i]`` positions. ``keep_kv``: one key/value cache per
        prompt, as ``forward(..., keep_kv=True)`` keeps (None where the pass keeps none).

        The prompts are padded on the RIGHT: under causal attention no real token sees the
        padding, so no padding mask is needed and attention keeps its fastest (causal)
        kernel -- a left-padded, masked batch fell back to a slower one on the CPU and was
        slower than single prompts at 24 x 24 tokens."""
        n = self.num_layers
        if num_layers is not None and not (1 <= int(num_layers) <= n):
            raise ValueError(f"num_layers must be in [1, {n}], got {num_layers}")
        if attention_layer is not None and not (0 <= int(attention_layer) < n):
            raise ValueError(f"attention_layer must be in [0, {n - 1}], got {attention_layer}")
        if len(prepared) != len(visual_embeds) or not prepared:
            raise ValueError(f"forward_batch needs one visual embedding per prompt, got {len(prepared)} prompts "
                             f"and {len(visual_embeds)} embeddings")
        embeds = [self.inputs_embeds(p, v) for p, v in zip(prepared, visual_embeds)]
        kws = [self.decoder_inputs(p, v) for p, v in zip(prepared, visual_embeds)]
        batch, kw = pad_batch(embeds, kws, side="right", add_positions=True)
        lengths = [int(e.shape[1]) for e in embeds]
        if "attention_mask" in kw:  # every real token is kept; causal attention ignores the padding after it
            kw["attention_mask"] = torch.ones_like(kw["attention_mask"])
        full = num_layers is None or int(num_layers) == n
        keep = bool(keep_kv) and full
        hidden, att, out = self._run_decoder(batch, kw, num_layers, attention_layer, keep,
                                             last=[m - 1 for m in lengths])
        kvs = None
        if keep_kv:
            kv = detached_kv(out, max(lengths)) if keep and out is not None else None
            kvs = kv_rows(kv, lengths) if kv is not None else [None] * len(prepared)
        return BatchOutput(logits=self.lm_head(hidden), lengths=lengths, attention=att, kv=kvs)

    def _run_decoder(self, embeds: torch.Tensor, kw: dict, num_layers, attention_layer, keep_kv: bool,
                     last: Sequence[int] | None = None):
        """The decoder over ``embeds`` (B, L, hidden): the final-normed hidden state at each
        row's ``last`` position (default: the sequence's end), shape (B, hidden), the
        captured attention weights, and the decoder output (None when truncated)."""
        rows = torch.arange(embeds.shape[0], device=embeds.device)
        at = torch.full_like(rows, embeds.shape[1] - 1) if last is None else torch.tensor(list(last), device=rows.device)
        n = self.num_layers
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
        self.counter.forward += int(embeds.shape[0])  # one per sequence: a batch of B does B passes' work
        out = None
        try:
            with ctx, self.memory_saving():
                try:
                    out = self.language_model(inputs_embeds=embeds, use_cache=keep_kv, **kw)
                    hidden = out.last_hidden_state[rows, at]
                except _EarlyExit as stop:
                    hidden = self.final_norm(stop.hidden[rows, at])
        finally:
            for h in hooks:
                h.remove()
        att = captured.get("attention") if attention_layer is not None else None
        if attention_layer is not None and att is None:
            raise RuntimeError(f"layer {attention_layer} returned no attention weights")
        return hidden, att, out

    #: Positions a decoder MLP takes at a time in memory-saving mode (``memory_saving``).
    mlp_chunk: int = 256

    @property
    def saves_memory(self) -> bool:
        """True when the model was loaded with ``gradient_checkpointing=True``: the user
        asked to trade compute for memory."""
        return any(getattr(l, "gradient_checkpointing", False) for l in self.decoder_layers)

    @contextlib.contextmanager
    def memory_saving(self) -> Iterator[None]:
        """Memory-saving mode for one decoder pass or one ``generate`` (a no-op unless
        ``saves_memory``).

        1. When a gradient is being taken, mark the decoder layers (only the layer objects,
           not their dropout / attention submodules, which stay in eval mode) as training,
           so transformers' checkpointing wrapper recomputes their activations in the
           backward pass instead of storing them.
        2. Every decoder MLP runs over the sequence ``mlp_chunk`` positions at a time, each
           chunk checkpointed when a gradient is taken. An MLP acts on each position alone,
           so every output row is the same computation; its intermediates (three tensors of
           the MLP's width, 2.7-4x the hidden width) then exist for one chunk at a time. With
           layers checkpointed they were the peak: the backward's recompute of one layer
           (14.0 -> 9.9 MB for a relevance pass at 1164 tokens on ``egg cost``'s random
           24x24 model). The chunked forward is set on the MLP modules once and stays there,
           since the backward pass recomputes them after this context has closed."""
        if not self.saves_memory:
            yield
            return
        for i in range(self.num_layers):  # once per model; the backward's recompute runs them too
            m = self.mlp_module(i)
            if hasattr(m.forward, "chunk"):
                m.forward.chunk = int(self.mlp_chunk)
            else:
                m.forward = _in_chunks(m.forward, self.mlp_chunk)
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
            with torch.no_grad(), self.memory_saving():
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
            with torch.no_grad(), self.memory_saving():
                embeds = self.inputs_embeds(prepared, visual_embeds)
                del visual_embeds  # its rows are in `embeds` (and each image's in the cache): no third copy
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

    def generate_batch(self, prepared: Sequence[Prepared], max_new_tokens: int = 8,
                       visual_embeds: Sequence[torch.Tensor] | None = None,
                       caches: Sequence[EmbeddingCache | None] | None = None) -> list[list[int]]:
        """Greedy answer ids for several prompts in one left-padded ``generate`` call; each
        equals ``generate_ids`` of its prompt alone (EOS kept, padding after it dropped)."""
        prepared = list(prepared)
        if visual_embeds is None:
            caches = list(caches) if caches is not None else [None] * len(prepared)
            visual_embeds = [self.visual_embeddings(p, c) for p, c in zip(prepared, caches)]
        pad = self._pad_id()
        pad = 0 if pad is None else int(pad)
        with torch.no_grad(), self.memory_saving():
            embeds = [self.inputs_embeds(p, v) for p, v in zip(prepared, visual_embeds)]
            extra = [{"input_ids": p.input_ids, "attention_mask": p.attention_mask, **self.generation_inputs(p)}
                     for p in prepared]
            batch, kw = pad_batch(embeds, extra, fill={"input_ids": pad})  # generate wants left padding
            out = self.model.generate(inputs_embeds=batch, max_new_tokens=int(max_new_tokens), do_sample=False,
                                      num_beams=1, pad_token_id=pad, **kw)
        L = kw["input_ids"].shape[1]
        seqs = out[:, L:] if out.shape[1] > L and torch.equal(out[:, :L], kw["input_ids"]) else out
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        answers = []
        for row in seqs.tolist():
            ids = []
            for t in row:
                ids.append(int(t))
                if t in eos:
                    break
            answers.append(ids)
        self.counter.forward += len(prepared)
        self.counter.generated_tokens += sum(len(a) for a in answers)
        return answers

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


def pad_batch(embeds: Sequence[torch.Tensor], kws: Sequence[dict], side: str = "left", add_positions: bool = False,
              fill: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Per-prompt input embeddings (1, L_i, hidden) and decoder keyword arguments joined as
    one batch padded on ``side`` ("left" or "right").

    A keyword tensor whose last dimension is the prompt's length is padded (with
    ``fill[key]``, default 0: masked out, or not an image token) and stacked along its batch
    dimension (the one before last: (1, L) masks, (3, 1, L) M-RoPE positions); any other
    tensor is per-image data and is concatenated along dim 0 (``image_grid_thw``), as are
    lists of tensors element by element (deepstack features, whose rows follow the visual
    positions in batch order); anything else must agree and is taken once.
    ``add_positions``: give prompts without ``position_ids`` their own 0..L_i-1 (what a
    single prompt gets by default), so that padding does not shift them.
    """
    fill = fill or {}
    lengths = [int(e.shape[1]) for e in embeds]
    L = max(lengths)
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")

    def widths(n: int) -> tuple[int, int]:
        return (L - n, 0) if side == "left" else (0, L - n)

    batch = torch.cat([torch.nn.functional.pad(e, (0, 0, *widths(n))) for e, n in zip(embeds, lengths)], dim=0)
    kws = [dict(kw) for kw in kws]
    if add_positions and "position_ids" not in kws[0]:
        for kw, n in zip(kws, lengths):
            kw["position_ids"] = torch.arange(n, device=batch.device)[None]
    out: dict = {}
    for key in kws[0]:
        vals = [kw[key] for kw in kws]
        first = vals[0]
        if torch.is_tensor(first) and first.dim() >= 2 and first.shape[-1] == lengths[0]:
            padded = [torch.nn.functional.pad(v, widths(n), value=fill.get(key, 0)) for v, n in zip(vals, lengths)]
            out[key] = torch.cat(padded, dim=-2)
        elif torch.is_tensor(first):
            out[key] = torch.cat(vals, dim=0)
        elif isinstance(first, (list, tuple)) and first and all(torch.is_tensor(t) for t in first):
            out[key] = [torch.cat(parts, dim=0) for parts in zip(*vals)]
        else:
            out[key] = first
    return batch, out
