"""Neural (continuous) cache, the pointer of Grave et al. 2016 (arXiv 1612.04426) that AWD-LSTM
uses at test time (section 5; WikiText-2: window 3785, theta 0.6625, lambda 0.1279).

The model's last hidden states ``h_i`` are stored with the word that followed them, ``x_{i+1}``.
At position t the cache proposes the words it has seen, weighted by how similar their contexts
were, and is mixed with the model's own softmax::

    p_cache(w) = sum_{t-W <= i < t, x_{i+1} = w} softmax_i(theta * h_t . h_i)
    p(w)       = (1 - lambda) * p_model(w) + lambda * p_cache(w)

Only ``p(target)`` is needed for perplexity, so nothing of vocabulary size is built: one
(T x (W + T)) similarity matmul per window of T tokens, a mask for the causal window and a
comparison of the stored next words with the targets. No Python loop runs per token.
The hidden states do not depend on theta or lambda, so :func:`cache_grid` runs the model once
and scores a whole grid.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

from ..core.device import Runtime
from .evaluate import stream_windows
from .model import AWDLSTM


@torch.no_grad()
def stream_states(model: AWDLSTM, stream: np.ndarray, batch_size: int = 1, bptt: int = 70,
                  runtime: Runtime | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`lstmkit.lm.evaluate.stream_windows` plus the model's own probabilities: per window
    ``(h (N, T, H) fp32 last-layer outputs, targets (N, T), log p_model(target) (N, T) fp32)``."""
    for h, y in stream_windows(model, stream, batch_size, bptt, runtime):
        yield h.float(), y, model.target_logprob(h, y).float()


class NeuralCache:
    """The cache of every row of a batchified stream; call it window after window.

    ``cache(h (N, T, H), targets (N, T), logp_model (N, T)) -> log p(target) (N, T)`` with the
    mixture above. ``lam = 0`` gives back ``logp_model``; positions with an empty cache (the very
    first token) keep the model's probability.
    """

    def __init__(self, window: int = 3785, theta: float = 0.6625, lam: float = 0.1279):
        if window < 1 or not 0.0 <= lam <= 1.0 or theta < 0:
            from ..errors import InputError
            raise InputError("cache", f"window={window}, theta={theta}, lambda={lam}",
                             "window >= 1, theta >= 0, 0 <= lambda <= 1")
        self.window, self.theta, self.lam = window, theta, lam
        self.h: torch.Tensor | None = None     # (N, M, H) stored states, M <= window
        self.y: torch.Tensor | None = None     # (N, M) the word that followed each

    def cache_logprob(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``log p_cache(target)`` (N, T) (``-inf`` where the cache holds no such word, NaN where the
        cache is still empty), and store this window's states."""
        n, t, _ = h.shape
        keys = h if self.h is None else torch.cat([self.h, h], 1)                # (N, M + T, H)
        words = targets if self.y is None else torch.cat([self.y, targets], 1)  # (N, M + T)
        m = keys.size(1) - t
        q = torch.arange(m, m + t, device=h.device)[:, None]                     # absolute query positions
        k = torch.arange(keys.size(1), device=h.device)[None, :]
        allowed = (k < q) & (k >= q - self.window)                               # (T, M + T): strictly earlier, in window
        # the pointer logits theta * h_t . h_i in fp32: under autocast (bf16) the bmm would round them
        # to 8 significant bits, e.g. to steps of 0.25 between 32 and 64, up to ~13% off in exp(score)
        dt = torch.promote_types(keys.dtype, torch.float32)                      # fp32, or fp64 when given
        with torch.autocast(h.device.type, enabled=False):
            scores = torch.bmm(h.to(dt), keys.to(dt).transpose(1, 2)).mul_(self.theta)    # (N, T, M + T)
        scores.masked_fill_(~allowed, float("-inf"))
        logw = scores.log_softmax(-1)                                            # rows with no key: NaN
        hit = words[:, None, :] == targets[:, :, None]                           # (N, T, M + T)
        out = logw.masked_fill(~hit, float("-inf")).logsumexp(-1)
        out = torch.where(allowed.any(1)[None, :].expand(n, -1), out, torch.full_like(out, float("nan")))
        self.h, self.y = keys[:, -self.window:], words[:, -self.window:]
        return out

    def __call__(self, h: torch.Tensor, targets: torch.Tensor, logp_model: torch.Tensor) -> torch.Tensor:
        return mix(logp_model, self.cache_logprob(h, targets), self.lam)


def mix(logp_model: torch.Tensor, logp_cache: torch.Tensor, lam: float) -> torch.Tensor:
    """``log((1 - lam) p_model + lam p_cache)``; the model alone where the cache is empty (NaN)."""
    if lam <= 0:
        return logp_model
    a = logp_model + math.log1p(-lam) if lam < 1 else torch.full_like(logp_model, float("-inf"))
    mixed = torch.logaddexp(a, logp_cache + math.log(lam))
    return torch.where(torch.isnan(logp_cache), logp_model, mixed)


@torch.no_grad()
def cache_losses(model: AWDLSTM, stream: np.ndarray, window: int = 3785, theta: float = 0.6625, lam: float = 0.1279,
                 batch_size: int = 1, bptt: int = 70, runtime: Runtime | None = None) -> dict:
    """One pass over the stream -> ``{"loss": model alone, "cache_loss": model + cache}``, mean NLL
    per token (nats); perplexity = exp(value)."""
    cache = NeuralCache(window, theta, lam)
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)   # sums on the device: no host sync per window
    base, count = torch.zeros_like(total), 0
    for h, y, logp in stream_states(model, stream, batch_size, bptt, runtime):
        total.sub_(cache(h, y, logp).sum().double())
        base.sub_(logp.sum().double())
        count += y.numel()
    total, base = float(total), float(base)
    return {"loss": base / max(count, 1), "cache_loss": total / max(count, 1)}


def cache_loss(model: AWDLSTM, stream: np.ndarray, window: int = 3785, theta: float = 0.6625, lam: float = 0.1279,
               batch_size: int = 1, bptt: int = 70, runtime: Runtime | None = None) -> float:
    """Mean NLL per token (nats) of the stream under model + cache; perplexity = exp(result)."""
    return cache_losses(model, stream, window, theta, lam, batch_size, bptt, runtime)["cache_loss"]


@torch.no_grad()
def cache_grid(model: AWDLSTM, stream: np.ndarray, thetas: Sequence[float], lams: Sequence[float],
               window: int = 3785, batch_size: int = 1, bptt: int = 70, runtime: Runtime | None = None) -> list[dict]:
    """NLL for every (theta, lambda) pair, running the model once: ``[{"theta", "lambda", "loss"}]``."""
    windows = list(stream_states(model, stream, batch_size, bptt, runtime))
    count = sum(y.numel() for _, y, _ in windows)
    out = []
    for theta in thetas:
        cache = NeuralCache(window, theta, 0.0)
        parts = [(cache.cache_logprob(h, y), logp) for h, y, logp in windows]
        for lam in lams:
            total = -sum(float(mix(lp, lc, lam).sum()) for lc, lp in parts)
            out.append({"theta": float(theta), "lambda": float(lam), "loss": total / count})
    return out
