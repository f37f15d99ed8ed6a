"""Dynamic evaluation (Krause et al. 2017, arXiv 1709.07432): adapt the weights to the test stream
as it is read, so recent text (a Wikipedia article's topic, names, style) raises the probability of
what follows.

The stream is read in segments of ``bptt`` tokens (batch-first rows, hidden state carried). Each
segment is **scored first** with the current weights - that loss is what is reported, so every token
is still predicted from the past only - and then used for one gradient step:

* ``"sgd"``: ``w <- w - lr * g + decay * (w0 - w)``
* ``"rms"`` (the paper's RMS-normalized rule, eq. 8-9 and its ``dynamiceval.py``):
  ``w <- w - lr * g / (rms + eps) + decay * r * (w0 - w)``, both terms computed from the same ``w``,
  where ``rms`` is the root mean square gradient of each weight measured on training data (windows
  of the segment length, as the paper does) before the test stream is read, and
  ``r = rms / mean_rms`` capped at ``1 / decay`` (``mean_rms``: the mean over parameter tensors of
  each tensor's mean ``rms``, as the original code computes it): weights whose gradients are usually
  small move less *and* are pulled back less.

``w0`` are the trained weights; the decay keeps the adapted model close to them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.device import Runtime
from ..errors import InputError
from .data import batchify
from .evaluate import n_windows, stream_windows
from .model import AWDLSTM, detach_hidden


@dataclass
class DynamicEvalConfig:
    method: str = field(default="rms", metadata={"choices": ("rms", "sgd")})
    lr: float = 2e-5            # rms: step on g / rms; sgd: step on g
    decay: float = 0.02         # pull toward the trained weights per segment (lambda in the paper)
    eps: float = 1e-3           # rms only
    bptt: int = 5               # segment length: one update per segment (the paper uses 5 on WT2)
    batch_size: int = 1         # rows of the stream, each adapted on jointly
    grad_batches: int = 100     # rms only: training windows used to measure the gradient scale (0 = all, the paper)
    grad_bptt: int = 0          # rms only: their length; 0 = the segment length ``bptt`` (the paper)
    grad_batch_size: int = 100  # rms only: rows of the training stream for the statistics (the paper's 100)

    def check(self) -> None:
        if self.method not in ("rms", "sgd"):
            raise InputError("dynamic_eval.method", f"found {self.method!r}", "'rms' or 'sgd'")
        for name in ("lr", "decay", "eps"):
            if getattr(self, name) < 0:
                raise InputError(f"dynamic_eval.{name}", f"found {getattr(self, name)}", "a value >= 0")
        for name in ("lr", "decay", "eps"):
            if not math.isfinite(getattr(self, name)):
                raise InputError(f"dynamic_eval.{name}", f"found {getattr(self, name)}", "a finite number")
        if self.decay >= 1:
            raise InputError("dynamic_eval.decay", f"found {self.decay}", "a value in [0, 1)")
        for name in ("bptt", "batch_size", "grad_batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"dynamic_eval.{name}", f"found {getattr(self, name)}", "an integer >= 1")
        for name in ("grad_batches", "grad_bptt"):
            if getattr(self, name) < 0:
                raise InputError(f"dynamic_eval.{name}", f"found {getattr(self, name)}", "an integer >= 0 (0 = paper default)")

    @property
    def stats_bptt(self) -> int:
        """Window length of the gradient statistics."""
        return self.grad_bptt or self.bptt


def gradient_rms(model: AWDLSTM, train: np.ndarray, n_batches: int = 100, bptt: int = 5, batch_size: int = 100,
                 runtime: Runtime | None = None) -> list[torch.Tensor]:
    """Root mean square gradient of every parameter over ``n_batches`` training windows of ``bptt``
    tokens (0 = the whole stream; eval mode, no dropout, hidden state carried, gradient of each
    window's mean loss) - the normalizer of the RMS variant. The paper uses its segment length (5)
    and 100 rows (:meth:`DynamicEvalConfig.stats_bptt`, ``grad_batch_size``)."""
    was = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    ms = [torch.zeros_like(p) for p in params]
    rows = batchify(train, batch_size).to(params[0].device)
    hidden, seen = None, 0
    for i in range(0, rows.size(1) - 1, bptt):
        if n_batches and seen == n_batches:
            break
        y = rows[:, i + 1: i + 1 + bptt]
        x = rows[:, i: i + y.size(1)]
        with runtime.autocast() if runtime else torch.autocast("cpu", enabled=False):
            h, _, hidden = model.features(x, hidden)
            loss = model.loss(h, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for m, g in zip(ms, grads):
            if g is not None:
                m.add_(g.float().pow(2))
        hidden = detach_hidden(hidden)
        seen += 1
    model.train(was)
    return [(m / max(seen, 1)).sqrt() for m in ms]


def dynamic_eval_loss(model: AWDLSTM, stream: np.ndarray, cfg: DynamicEvalConfig | None = None,
                      rms: list[torch.Tensor] | None = None, runtime: Runtime | None = None, cache=None) -> float:
    """Mean NLL per token (nats) of ``stream`` under dynamic evaluation; perplexity = exp(result).
    The model's weights are restored afterwards. ``rms`` (from :func:`gradient_rms`) is required for
    the rms method. ``cache`` (a :class:`lstmkit.lm.cache.NeuralCache`): the loss of dynamic
    evaluation + cache instead (see :func:`dynamic_eval_losses`)."""
    out = dynamic_eval_losses(model, stream, cfg, rms, runtime, cache)
    return out["dynamic_cache"] if cache is not None else out["dynamic"]


def dynamic_eval_losses(model: AWDLSTM, stream: np.ndarray, cfg: DynamicEvalConfig | None = None,
                        rms: list[torch.Tensor] | None = None, runtime: Runtime | None = None, cache=None,
                        progress: str | None = None) -> dict:
    """One pass of dynamic evaluation -> ``{"dynamic": NLL}``, plus ``"dynamic_cache"`` (the same
    adapted model's probabilities mixed with ``cache``) when a cache is given: the cache does not
    change the updates, so both come from the same pass."""
    cfg = cfg or DynamicEvalConfig()
    cfg.check()
    if cfg.method == "rms" and rms is None:
        raise InputError("dynamic_eval", "method 'rms' without gradient statistics",
                         "rms=gradient_rms(model, train_stream) (or method 'sgd')")
    was = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    w0 = [p.detach().clone() for p in params]
    if cfg.method == "rms":
        inv = [1.0 / (r + cfg.eps) for r in rms]
        mean_rms = torch.stack([r.float().mean() for r in rms]).mean()     # mean over tensors of their means
        cap = 1.0 / cfg.decay if cfg.decay > 0 else math.inf
        rate = [cfg.decay * torch.clamp(r / mean_rms, max=cap) for r in rms]  # decay x decrate, <= 1
    # the sums stay on the device (float64, the same additions as Python floats): a GPU is never
    # made to wait for the host inside the segment loop; the progress bar reads them every 25 segments
    total = torch.zeros((), dtype=torch.float64, device=params[0].device)
    total_cache, count = torch.zeros_like(total), 0
    from ..core.progress import Progress
    bar = Progress(n_windows(stream, cfg.batch_size, cfg.bptt), progress, "segments", "tokens/s") if progress else None
    try:
        for i, (h, y) in enumerate(stream_windows(model, stream, cfg.batch_size, cfg.bptt, runtime)):
            if bar is not None:
                bar.update(1, y.numel(), **({"nll": round(float(total) / count, 4)} if count and i % 25 == 0 else {}))
            logp = model.target_logprob(h, y)
            loss = -logp.mean()
            total.sub_(logp.detach().sum().double())   # scored before the update: a fair next-token loss
            if cache is not None:
                total_cache.sub_(cache(h.detach().float(), y, logp.detach()).sum().double())
            count += y.numel()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                live = [j for j, g in enumerate(grads) if g is not None]
                ps, gs, ws = [params[j] for j in live], [grads[j].float() for j in live], [w0[j] for j in live]
                # w <- w + decay (w0 - w) - lr g: both terms from the same w (g was taken there), as two
                # multi-tensor kernels over all parameters (lerp, then the gradient step) instead of
                # five elementwise passes per parameter
                if cfg.method == "rms":   # decay x decrate per weight; the step divided by rms + eps
                    torch._foreach_lerp_(ps, ws, [rate[j] for j in live])
                    torch._foreach_addcmul_(ps, gs, [inv[j] for j in live], value=-cfg.lr)
                else:
                    torch._foreach_lerp_(ps, ws, cfg.decay)
                    torch._foreach_add_(ps, gs, alpha=-cfg.lr)
    finally:
        with torch.no_grad():
            for p, w in zip(params, w0):
                p.copy_(w)
        model.train(was)
    out = {"dynamic": float(total) / max(count, 1)}
    if cache is not None:
        out["dynamic_cache"] = float(total_cache) / max(count, 1)
    return out
