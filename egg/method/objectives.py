"""Objectives: next-token logits -> a scalar to differentiate (docs/method.md section 1.3).

Every objective takes logits of shape (vocab,) or (batch, vocab) and returns a scalar
tensor (summed over the batch), computed in float64 (float32 on Apple's MPS, which has none).
Why: a model sure of its next token (p = 1 - 1e-7) has log p of its top token below float32's
resolution at a logit of 20 (2e-6), so that token's entropy gradient, as large as all the others'
together, was rounding noise: a map taken past a one-token answer (`token_index=2`) moved its
boxes on 21 of 40 items between a CPU's AVX2 and AVX-512 kernels (CHANGELOG, stop 63).
``entropy`` and ``nucleus_entropy`` are lower when the model is more decided, ``log_max_prob``
and ``kl_to_uniform`` higher. Only the gradient's magnitude per visual token enters the map, so
the sign convention does not change it.

>>> OBJECTIVES["entropy"](logits)
>>> get_objective("nucleus-entropy")  # names use '-' or '_'
"""
from __future__ import annotations

import functools
from typing import Callable, Union

import torch

Objective = Callable[[torch.Tensor], torch.Tensor]


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() not in (1, 2):
        raise ValueError(f"logits must be (vocab,) or (batch, vocab), got shape {tuple(logits.shape)}")
    x = logits.to(torch.float32 if logits.device.type == "mps" else torch.float64)
    return torch.log_softmax(x, dim=-1)


def next_token_stats(logits: torch.Tensor) -> tuple[float, float, int]:
    """(entropy in nats, max probability, argmax token id) of one next-token distribution,
    without grad: what every method records about the distribution it looked at."""
    with torch.no_grad():
        lp = _log_probs(logits).reshape(-1)
        top = int(torch.argmax(lp))
        return float(-(lp.exp() * lp).sum()), float(lp[top].exp()), top


def argmax_log_prob(logits: torch.Tensor) -> torch.Tensor:
    """log p of the most likely next token, in the graph (ViCrop's loss)."""
    lp = _log_probs(logits).reshape(-1)
    return lp[int(torch.argmax(lp.detach()))]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum p log p of the next-token distribution (nats). The paper's objective."""
    lp = _log_probs(logits)
    return -(lp.exp() * lp).sum(-1).sum()


def log_max_prob(logits: torch.Tensor) -> torch.Tensor:
    """log max_v p(v): the model's confidence in its top token."""
    return _log_probs(logits).max(-1).values.sum()


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(p || uniform) = log V - H(p). Same gradient as entropy up to sign: included as
    the paper's ablation; the map it gives equals the entropy map."""
    lp = _log_probs(logits)
    v = lp.shape[-1]
    return ((lp.exp() * lp).sum(-1) + torch.log(torch.tensor(float(v), dtype=lp.dtype, device=lp.device))).sum()


def nucleus_entropy(logits: torch.Tensor, p: float = 0.9) -> torch.Tensor:
    """Entropy of the distribution restricted to its top-p nucleus and renormalised.

    The nucleus is the smallest set of most likely tokens whose mass reaches ``p`` (at
    least one token); its membership is chosen without grad, the entropy inside it is
    differentiated.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    lp = _log_probs(logits)
    squeeze = lp.dim() == 1
    lp2 = lp.unsqueeze(0) if squeeze else lp
    with torch.no_grad():
        probs, order = lp2.exp().sort(dim=-1, descending=True)
        before = probs.cumsum(-1) - probs  # mass strictly before each token in the ranking
        keep_sorted = before < p
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    masked = lp2.masked_fill(~keep, float("-inf"))
    lq = torch.log_softmax(masked, dim=-1).masked_fill(~keep, 0.0)  # 0 * -inf would give NaN grads
    h = -(lq.exp() * lq * keep).sum(-1)
    return h.sum()


OBJECTIVES: dict[str, Objective] = {
    "entropy": entropy,
    "log_max_prob": log_max_prob,
    "kl_to_uniform": kl_to_uniform,
    "nucleus_entropy": nucleus_entropy,
}


def get_objective(objective: Union[str, Objective], **kw) -> Objective:
    """Resolve an objective name (``-`` or ``_``) or pass a callable through.

    Keyword arguments bind parameters, e.g. ``get_objective("nucleus_entropy", p=0.8)``.
    """
    if callable(objective):
        return functools.partial(objective, **kw) if kw else objective
    name = str(objective).replace("-", "_")
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid names: {sorted(OBJECTIVES)}")
    fn = OBJECTIVES[name]
    return functools.partial(fn, **kw) if kw else fn


def objective_name(objective: Union[str, Objective]) -> str:
    if isinstance(objective, str):
        return objective.replace("-", "_")
    f = objective.func if isinstance(objective, functools.partial) else objective
    return getattr(f, "__name__", type(f).__name__)


__all__ = ["OBJECTIVES", "entropy", "log_max_prob", "kl_to_uniform", "nucleus_entropy",
           "get_objective", "objective_name", "Objective"]
