"""Mixture of softmaxes (Yang, Dai, Salakhutdinov & Cohen 2017, arXiv 1711.03953): the "softmax
bottleneck" limits a single softmax over ``h . w`` to rank-E log-probability matrices; a mixture of
K softmaxes over K context vectors is not limited that way::

    prior   pi_k = softmax_k(W_pi h)                       (M, K)
    latent  h_k  = tanh(W_k h)                             (M, K, E), dropped (rate p)
    p(w)         = sum_k pi_k softmax(decoder(h_k))_w      (M, V)

The decoder (E -> V) is an ordinary ``nn.Linear`` that the caller may tie to its embedding.
Everything after the linear layers is fp32 and in log space (``logsumexp`` over experts). The
(M, K, V) expert log-probabilities are the memory cost; :meth:`target_logprob` computes them in row
chunks and, in training, recomputes each chunk in the backward pass (activation checkpointing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class MixtureOfSoftmaxes(nn.Module):
    """``log_prob(h (M, H)) -> (M, V)``; ``target_logprob(h (M, H), targets (M,)) -> (M,)``.

    Example:
        >>> mos = MixtureOfSoftmaxes(6, nn.Linear(4, 10), n_experts=3)
        >>> lp = mos.log_prob(torch.randn(5, 6)); lp.shape, bool(torch.allclose(lp.exp().sum(1), torch.ones(5)))
        (torch.Size([5, 10]), True)
    """

    def __init__(self, in_size: int, decoder: nn.Linear, n_experts: int = 15, dropout: float = 0.0):
        super().__init__()
        self.n_experts, self.dropout = n_experts, dropout
        self.prior = nn.Linear(in_size, n_experts, bias=False)
        self.latent = nn.Linear(in_size, n_experts * decoder.in_features)
        self.decoder = decoder

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        m = h.size(0)
        latent = torch.tanh(self.latent(h)).view(m, self.n_experts, -1)
        latent = F.dropout(latent, self.dropout, self.training)
        expert = self.decoder(latent).float().log_softmax(-1)                  # (M, K, V)
        prior = self.prior(h).float().log_softmax(-1)                           # (M, K)
        return torch.logsumexp(expert + prior[..., None], dim=1)

    def _chunk(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.log_prob(h).gather(1, targets[:, None]).squeeze(1)

    def target_logprob(self, h: torch.Tensor, targets: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        out = []
        for i in range(0, h.size(0), chunk):
            hc, tc = h[i: i + chunk], targets[i: i + chunk]
            if torch.is_grad_enabled() and h.requires_grad:
                out.append(checkpoint(self._chunk, hc, tc, use_reentrant=False, preserve_rng_state=True))
            else:
                out.append(self._chunk(hc, tc))
        return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)
