"""Variational (locked) dropout and embedding dropout, AWD-LSTM section 4.2 / 4.3.

Both follow Gal & Ghahramani (2016): a mask is drawn once per sequence and reused at every time
step, instead of a fresh mask per step as ``nn.Dropout`` would.
"""
from __future__ import annotations

import torch
from torch import nn


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared over time (AWD-LSTM section 4.2).

    Input and output (N, T, H). In training each of the N sequences gets its own (1, H) mask,
    kept units are scaled by 1/(1-p); in eval it is the identity.

    Example:
        >>> drop = LockedDropout(0.5).train()
        >>> y = drop(torch.ones(2, 7, 4)); y.shape
        torch.Size([2, 7, 4])
        >>> bool((y == y[:, :1]).all())   # same mask at every time step
        True
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"LockedDropout: p={p}; expected 0 <= p < 1")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)  # (N, 1, H)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def embedding_dropout(embed: nn.Embedding, tokens: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Look up ``tokens`` (N, T) in ``embed`` with whole words dropped (AWD-LSTM section 4.3).

    Each vocabulary row is zeroed with probability ``p`` for the whole batch (every occurrence of a
    dropped word vanishes), kept rows are scaled by 1/(1-p). The (V, E) weight is never copied: one
    random number is drawn per vocabulary row (V of them, as the paper's code draws its (V, 1) mask)
    and the mask is applied to the looked-up rows only. Returns (N, T, E).

    Example:
        >>> emb = nn.Embedding(10, 3)
        >>> x = embedding_dropout(emb, torch.tensor([[1, 1, 2]]), 0.5, training=True)
        >>> x.shape, bool((x[0, 0] == x[0, 1]).all())   # the same word is dropped or kept together
        (torch.Size([1, 3, 3]), True)
    """
    out = embed(tokens)
    if not training or p == 0.0:
        return out
    rows = torch.empty(embed.num_embeddings, 1, device=out.device).bernoulli_(1 - p) / (1 - p)  # (V, 1)
    return out * rows[tokens].to(out.dtype)  # (N, T, E)
