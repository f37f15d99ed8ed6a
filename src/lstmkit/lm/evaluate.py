"""Evaluation of the word language model.

* :func:`stream_loss` - the paper's protocol: the split as one continuous stream cut into
  ``batch_size`` rows, hidden state carried across windows; ``exp`` of it is the perplexity.
* :func:`draw_contexts` / :func:`fixed_context_nll` - the seed's prediction metric: mean
  ``-log softmax(prediction(ctx))[target]`` over (20-word context, next word) pairs, each scored
  from a zero state.
* :func:`generation_nll` - how likely the model itself finds a generated continuation.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..core.device import Runtime
from .data import batchify
from .model import AWDLSTM, detach_hidden


def n_windows(stream: np.ndarray, batch_size: int, bptt: int) -> int:
    """How many windows :func:`stream_windows` yields for this stream (for progress reports).

    >>> n_windows(np.arange(101), 10, 3)
    3
    """
    return -(-max(len(stream) // max(batch_size, 1) - 1, 0) // bptt)


def stream_windows(model: AWDLSTM, stream: np.ndarray, batch_size: int = 10, bptt: int = 70,
                   runtime: Runtime | None = None, dist=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Walk a continuous stream in eval mode, ``bptt`` tokens at a time, carrying the hidden state:
    per window yield ``(h (N, T, H) last-layer outputs, targets (N, T))``, each yield inside the
    runtime's autocast (the caller's work on the window runs under it too). The carried state is
    detached between windows and gradients follow the caller's mode (its callers that only score
    run under ``torch.no_grad``), so dynamic evaluation can backpropagate through each window, and
    whatever it changes in the model applies from the next window on.

    ``dist`` (a :class:`lstmkit.core.distributed.Dist`): this rank walks its share of the rows."""
    was = model.training
    model.eval()
    rows = batchify(stream, batch_size).to(next(model.parameters()).device)
    if dist is not None and dist.enabled:
        rows = rows[np.array_split(np.arange(rows.size(0)), dist.world)[dist.rank]]
    hidden = None
    try:
        for i in range(0, rows.size(1) - 1 if rows.size(0) else 0, bptt):
            y = rows[:, i + 1: i + 1 + bptt]
            x = rows[:, i: i + y.size(1)]
            with runtime.autocast() if runtime else torch.autocast("cpu", enabled=False):
                h, _, hidden = model.features(x, hidden)
                yield h, y
            hidden = detach_hidden(hidden)
    finally:
        model.train(was)


@torch.no_grad()
def stream_loss(model: AWDLSTM, stream: np.ndarray, batch_size: int = 10, bptt: int = 70,
                runtime: Runtime | None = None, dist=None, progress: str | None = None) -> float:
    """Mean NLL per token (nats) over a continuous stream; perplexity = exp(result).
    ``dist`` (a :class:`lstmkit.core.distributed.Dist`): each rank scores a share of the rows and
    the sums are all-reduced, so every rank returns the same value. ``progress``: show progress
    under this name (a bar on a terminal, status lines otherwise)."""
    from ..core.progress import Progress
    total, count = 0.0, 0       # the sum stays on the device (float64): no host sync per window on a GPU
    n = n_windows(stream, batch_size, bptt)
    bar = Progress(n, progress, "windows", "tokens/s") if progress else None
    for i, (h, y) in enumerate(stream_windows(model, stream, batch_size, bptt, runtime, dist)):
        total = total + model.loss(h, y).double() * y.numel()
        count += y.numel()
        if bar is not None:
            bar.update(1, y.numel(), **({"nll": round(float(total) / count, 4)} if i % 25 == 0 or i == n - 1 else {}))
    total = float(total)
    if bar is not None:
        bar.close()
    if dist is not None and dist.enabled:
        from ..core.distributed import all_sum
        total, count = all_sum([total, count], dist)
    return total / max(count, 1)


def draw_contexts(stream: np.ndarray, n: int, context: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random (context (n, context), target (n,)) pairs from a token stream, reproducible."""
    stream = np.asarray(stream)
    if stream.size <= context:
        from ..errors import InputError
        raise InputError("stream", f"{stream.size} tokens", f"more than the context length {context}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, stream.size - context, size=n)
    idx = starts[:, None] + np.arange(context)[None, :]
    return stream[idx].astype(np.int64), stream[starts + context].astype(np.int64)


def nll_of_scores(scores: np.ndarray | torch.Tensor, targets: np.ndarray) -> float:
    """Mean ``-log_softmax(scores)[target]``; scores (N, V), targets (N,)."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    return float(F.cross_entropy(s, t))


def fixed_context_nll(model: AWDLSTM, contexts: np.ndarray, targets: np.ndarray, batch: int = 256) -> float:
    """The seed's prediction NLL: each context scored from a zero state by ``prediction``."""
    from .generate import TestLanguageModel
    total = 0.0
    for i in range(0, len(contexts), batch):
        scores = TestLanguageModel.prediction(contexts[i: i + batch], model)
        total += nll_of_scores(scores, targets[i: i + batch]) * len(scores)
    return total / len(contexts)


@torch.no_grad()
def generation_nll(model: AWDLSTM, prompts: np.ndarray, continuations: np.ndarray) -> float:
    """Mean NLL per token of ``continuations`` (N, K) given ``prompts`` (N, T) under ``model``."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    seq = torch.as_tensor(np.concatenate([prompts, continuations], axis=1), dtype=torch.long, device=dev)
    out = model(seq[:, :-1])
    k = continuations.shape[1]
    logp = F.log_softmax(out.logits[:, -k:].float(), dim=-1)
    nll = -logp.gather(-1, seq[:, -k:].unsqueeze(-1)).mean()
    model.train(was_training)
    return float(nll)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
