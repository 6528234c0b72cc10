"""The entropy-gradient relevance map (docs/method.md section 1).

    visual token embeddings (a leaf, requires grad; all parameters frozen)
      -> decoder (optionally only its first L layers, then final norm + LM head)
      -> next-token logits at the answer position
      -> objective (entropy by default)
      -> d objective / d visual embeddings
      -> relevance of a token = L2 norm of its gradient over the hidden dimension
      -> one 2-D map per token grid.

>>> res = relevance(adapter, adapter.prepare([image], question))
>>> res.maps[0].shape          # (rows, cols) of the image's token grid
>>> res.entropy, res.max_prob   # of the differentiated next-token distribution

``token_index=n`` differentiates the n-th answer token: the first n-1 are decoded
greedily without grad (argmax, EOS included, no early stop) and appended to the prompt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
import torch

from ..adapters import EmbeddingCache, Prepared, VLMAdapter, as_adapter
from .objectives import Objective, get_objective, next_token_stats


@dataclass
class RelevanceResult:
    """Maps and the statistics of the differentiated next-token distribution.

    maps: one float64 array per ``prepared.grids`` entry, shape = that grid's (rows, cols).
    entropy: next-token entropy (nats) at the differentiated position.
    max_prob: max next-token probability there.
    token_id / token: its argmax token.
    objective: the objective's value.
    prefix: the greedily decoded tokens placed before it (token_index - 1 of them).
    degenerate: True when the gradient is zero or non-finite everywhere (e.g. an objective
        that ignores the image); the maps are then all zero (non-finite entries -> 0).
    gradient: the raw gradient w.r.t. the visual embeddings, (n_visual, hidden), only
        when asked for (``keep_gradient=True``).
    kv: the decoder's key/value cache of the prompt, only when asked for (``keep_kv=True``)
        and the pass was the full model over the prompt alone (``token_index=1``): the
        answer can then be generated without running the prompt again.
    """

    maps: list[np.ndarray]
    entropy: float
    max_prob: float
    token_id: int
    token: str
    objective: float
    prefix: list[int] = field(default_factory=list)
    degenerate: bool = False
    gradient: torch.Tensor | None = None
    kv: object | None = None


def relevance(
    vlm,
    prepared: Prepared,
    objective: Union[str, Objective] = "entropy",
    token_index: int = 1,
    num_layers: int | None = None,
    *,
    visual_embeds: torch.Tensor | None = None,
    cache: EmbeddingCache | None = None,
    keep_gradient: bool = False,
    keep_kv: bool = False,
) -> RelevanceResult:
    """Entropy-gradient relevance of every visual token of ``prepared``, as 2-D maps.

    vlm: a VLM or VLMAdapter.
    objective: a name of ``egg.objectives.OBJECTIVES`` or a callable logits -> scalar.
    token_index: 1 = the first answer token (the paper's default).
    num_layers: differentiate the model truncated to its first L decoder layers
        (None = all layers, the unmodified model).
    visual_embeds: precomputed visual embeddings (else computed, through ``cache``).
    keep_kv: keep the forward's key/value cache (``RelevanceResult.kv``).
    """
    adapter: VLMAdapter = as_adapter(vlm)
    fn = _checked(objective, token_index)
    if visual_embeds is None:
        visual_embeds = adapter.visual_embeddings(prepared, cache)
    base = visual_embeds.detach()
    prefix, prep = _prefixed(adapter, prepared, token_index, base)

    leaf = base.detach().requires_grad_(True)  # a new tensor on the same rows: the caller's stays as it was
    with torch.enable_grad():
        out = adapter.forward(prep, leaf, num_layers=num_layers, keep_kv=keep_kv and not prefix)
        value = _scalar(fn(out.logits))
        grad = _gradient(adapter, value, [leaf])[0]
    return _result(adapter, prepared, grad, out.logits, value, prefix, keep_gradient, out.kv)


def relevance_batch(
    vlm,
    prepared: Sequence[Prepared],
    objective: Union[str, Objective] = "entropy",
    token_index: int = 1,
    num_layers: int | None = None,
    *,
    visual_embeds: Sequence[torch.Tensor] | None = None,
    caches: Sequence[EmbeddingCache | None] | None = None,
    keep_kv: bool = False,
) -> list[RelevanceResult]:
    """``relevance`` of several prompts with one batched forward and one backward pass.

    The prompts are left-padded and masked (``VLMAdapter.forward_batch``); the gradient of
    the sum of the per-prompt objectives gives each prompt the gradient of its own, so every
    result equals ``relevance`` of that prompt alone within float tolerance. The greedy
    prefix of ``token_index > 1`` is decoded per prompt. ``keep_kv``: each result keeps its
    prompt's key/value cache, as ``relevance(..., keep_kv=True)`` does.
    """
    adapter: VLMAdapter = as_adapter(vlm)
    fn = _checked(objective, token_index)
    prepared = list(prepared)
    caches = list(caches) if caches is not None else [None] * len(prepared)
    if visual_embeds is None:
        visual_embeds = [adapter.visual_embeddings(p, c) for p, c in zip(prepared, caches)]
    bases = [v.detach() for v in visual_embeds]
    pairs = [_prefixed(adapter, p, token_index, b) for p, b in zip(prepared, bases)]
    prefixes, preps = [x for x, _ in pairs], [p for _, p in pairs]
    leaves = [b.detach().requires_grad_(True) for b in bases]  # as in `relevance`: no copy
    with torch.enable_grad():
        want = bool(keep_kv) and token_index == 1
        out = adapter.forward_batch(preps, leaves, num_layers=num_layers, keep_kv=want)
        logits, kvs = out.logits, out.kv if want else [None] * len(preps)
        values = [_scalar(fn(logits[i])) for i in range(len(preps))]
        grads = _gradient(adapter, sum((v for v in values if v.requires_grad), torch.zeros(())), leaves)
    return [_result(adapter, p, g, logits[i], values[i], x, False, kv)
            for i, (p, g, x, kv) in enumerate(zip(prepared, grads, prefixes, kvs))]


def _checked(objective, token_index) -> Objective:
    if int(token_index) != token_index or token_index < 1:
        raise ValueError(f"token_index must be an integer >= 1, got {token_index!r}")
    return get_objective(objective)


def _prefixed(adapter: VLMAdapter, prepared: Prepared, token_index: int, base: torch.Tensor):
    """(prefix, prompt): the greedy answer tokens before the differentiated one, appended."""
    prefix = adapter.greedy_suffix(prepared, token_index - 1, base) if token_index > 1 else []
    return prefix, (prepared.with_suffix(prefix) if prefix else prepared)


def _scalar(value: torch.Tensor) -> torch.Tensor:
    if value.dim() != 0:
        raise ValueError(f"objective must return a scalar, got shape {tuple(value.shape)}")
    return value


def _gradient(adapter: VLMAdapter, value: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """d value / d each leaf (zeros where the value does not depend on it); one backward."""
    if not value.requires_grad:  # the objective does not depend on the logits at all
        return [torch.zeros_like(l) for l in leaves]
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    adapter.counter.backward += len(leaves)  # one per sequence, as forward passes are counted
    return [torch.zeros_like(l) if g is None else g.detach() for l, g in zip(leaves, grads)]


def _result(adapter: VLMAdapter, prepared: Prepared, grad: torch.Tensor, logits: torch.Tensor, value: torch.Tensor,
            prefix: list[int], keep_gradient: bool, kv) -> RelevanceResult:
    """Maps (per-token gradient norms laid out on the grids) and next-token statistics."""
    norms = torch.linalg.vector_norm(grad.to(torch.float64), dim=-1).cpu().numpy()
    finite = np.isfinite(norms)
    degenerate = not bool(np.any(norms[finite] > 0))
    norms = np.where(finite, norms, 0.0)
    maps = [norms[prepared.visual_rows(g)].astype(np.float64) for g in prepared.grids]
    h, pmax, top = next_token_stats(logits.detach())
    val = float(value.detach())
    return RelevanceResult(
        maps=maps, entropy=h, max_prob=pmax, token_id=top, token=adapter.decode([top]),
        objective=val if math.isfinite(val) else float("nan"), prefix=prefix,
        degenerate=degenerate, gradient=grad if keep_gradient else None, kv=kv,
    )


def relevance_maps(
    vlm,
    prepared: Prepared,
    objective: Union[str, Objective] = "entropy",
    token_index: int = 1,
    num_layers: int | None = None,
    **kw,
) -> list[np.ndarray]:
    """Only the maps of ``relevance(...)``: one 2-D array per token grid."""
    return relevance(vlm, prepared, objective, token_index, num_layers, **kw).maps


__all__ = ["relevance", "relevance_batch", "relevance_maps", "RelevanceResult"]
