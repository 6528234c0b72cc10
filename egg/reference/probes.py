"""Linear probes on the visual tokens that the reference trainer adds to its loss (`TrainConfig.aux`).
They are used only in training. The saved model is plain LLaVA."""
from __future__ import annotations

from ..synthetic.core import COLOURS


class AuxHeads:
    """Linear probes on the visual tokens that give the vision tower a direct training signal.

    A tiny LLaVA trained from scratch on answers alone never learns to look (the loss sits at
    the answer prior); supervising "which key colour is in this patch" and "what does this
    crop read" makes the visual tokens informative, after which the decoder learns to use them.
    "Which row and column is this patch" keeps each token's place in its features: rotary attention
    gives the decoder relative positions in its scores but none in what it reads.
    """

    def __init__(self, dim: int, vocab: int, device, grid: int = 8, read_pool: str = "mean",
                 colour_weight: float = 1.0):
        import torch

        if read_pool not in ("mean", "max"):
            raise ValueError(f"read_pool must be 'mean' or 'max', got {read_pool!r}")
        if colour_weight <= 0:
            raise ValueError(f"colour_weight must be > 0, got {colour_weight!r}")
        self.colour = torch.nn.Linear(dim, len(COLOURS)).to(device)
        # > 1: a present colour counts that many absent ones (BCE's pos_weight); None keeps the plain loss
        self.pos_weight = torch.full((len(COLOURS),), float(colour_weight), device=device) if colour_weight != 1 else None
        self.read = torch.nn.Linear(dim, 2 * vocab).to(device)
        self.where = torch.nn.Linear(dim, 2 * grid).to(device)
        self.vocab, self.grid, self.read_pool = vocab, grid, read_pool

    def parameters(self):
        return [*self.colour.parameters(), *self.read.parameters(), *self.where.parameters()]

    def state(self) -> dict:
        return {k: getattr(self, k).state_dict() for k in ("colour", "read", "where")}

    def load_state(self, state: dict) -> None:
        for k, v in state.items():
            getattr(self, k).load_state_dict(v)

    def loss(self, feats, colour_targets, read_targets):
        """Colour, read and position losses; `feats` is (n_images, grid^2, dim)."""
        import torch
        import torch.nn.functional as F

        lc = F.binary_cross_entropy_with_logits(self.colour(feats), colour_targets, pos_weight=self.pos_weight)
        # max: at 24x24 a glyph covers 2-6% of a crop's tokens, and a mean drowns it
        pooled = feats.amax(1) if self.read_pool == "max" else feats.mean(1)
        logits = self.read(pooled).view(-1, 2, self.vocab)
        if (read_targets != -100).any():
            lr = F.cross_entropy(logits.reshape(-1, self.vocab), read_targets.reshape(-1), ignore_index=-100)
        else:
            lr = logits.sum() * 0
        g = self.grid
        cell = torch.arange(g * g, device=feats.device)
        where = self.where(feats).view(-1, g * g, 2, g)
        lp = (F.cross_entropy(where[:, :, 0].reshape(-1, g), (cell // g).repeat(len(feats)))
              + F.cross_entropy(where[:, :, 1].reshape(-1, g), (cell % g).repeat(len(feats)))) / 2
        return lc, lr, lp
