"""The seed's inference API: ``TestLanguageModel.prediction`` and ``.generation``.

Both take a batch of id sequences (N, T), start from a zero hidden state and run the model in
eval mode. ``generation`` feeds the prompt once and then one token per step, carrying the LSTM
state (no re-reading of the prefix).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError


def _as_ids(inp, model, where: str) -> torch.Tensor:
    if isinstance(inp, torch.Tensor):
        arr = inp.detach().cpu().numpy()
    elif isinstance(inp, np.ndarray):
        arr = inp
    elif isinstance(inp, (list, tuple)):
        try:
            arr = np.asarray(inp)
        except ValueError:
            raise InputError(where, "ragged nested list", "an (N, T) array of word ids") from None
    else:
        raise InputError(where, f"type {type(inp).__name__}", "a numpy array or torch tensor of ids, shape (N, T)")
    if arr.ndim != 2:
        raise InputError(where, f"shape {tuple(arr.shape)} (rank {arr.ndim})", "rank 2: (N, T) word ids")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(where, f"shape {tuple(arr.shape)}", "N >= 1 sequences of T >= 1 ids")
    if arr.dtype.kind not in "iu":
        raise InputError(where, f"dtype {arr.dtype}", "an integer dtype (word ids)")
    v = model.config.vocab_size
    if arr.min() < 0 or arr.max() >= v:
        bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
        raise InputError(where, f"id {bad} out of range", f"ids in [0, {v})")
    return torch.as_tensor(arr.astype(np.int64), device=next(model.parameters()).device)


def sample_next(logits: torch.Tensor, temperature: float | None = None, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick next ids from logits (N, V): argmax unless a sampling option is given (HF names)."""
    if temperature is None and top_k is None and top_p is None:
        return logits.argmax(-1)
    logits = logits.float() / (temperature or 1.0)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


class TestLanguageModel:
    """Inference entry points of the seed (static methods)."""

    @staticmethod
    @torch.no_grad()
    def prediction(inp, model) -> np.ndarray:
        """Raw next-word scores after each sequence: ``inp`` (N, T) ids -> float32 (N, V).

        Example:
            >>> from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig
            >>> m = AWDLSTM(AWDLSTMConfig(vocab_size=30, emb_size=8, hidden_size=8, num_layers=1))
            >>> TestLanguageModel.prediction(np.zeros((4, 6), dtype=np.int64), m).shape
            (4, 30)
        """
        x = _as_ids(inp, model, "prediction(inp)")
        was = model.training
        model.eval()
        dropped, _, _ = model.features(x)
        scores = model.decode(dropped[:, -1]).float()
        model.train(was)
        return scores.cpu().numpy().astype(np.float32)

    @staticmethod
    @torch.no_grad()
    def generation(inp, forward: int, model, temperature: float | None = None, top_k: int | None = None,
                   top_p: float | None = None, seed: int | None = None) -> np.ndarray:
        """Continue each sequence by ``forward`` words: ``inp`` (N, T) -> int64 (N, forward).

        Greedy by default; ``temperature``, ``top_k`` or ``top_p`` switch to sampling
        (``seed`` makes it reproducible).

        Example:
            >>> from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig
            >>> m = AWDLSTM(AWDLSTMConfig(vocab_size=30, emb_size=8, hidden_size=8, num_layers=1))
            >>> TestLanguageModel.generation(np.zeros((2, 3), dtype=np.int64), 5, m).shape
            (2, 5)
        """
        if isinstance(forward, bool) or not isinstance(forward, (int, np.integer)) or forward < 1:
            raise InputError("generation(forward)", f"found {forward!r}", "an integer >= 1")
        if temperature is not None and temperature <= 0:
            raise InputError("generation(temperature)", f"found {temperature!r}", "a value > 0")
        if top_k is not None and top_k < 1:
            raise InputError("generation(top_k)", f"found {top_k!r}", "an integer >= 1")
        if top_p is not None and not 0 < top_p <= 1:
            raise InputError("generation(top_p)", f"found {top_p!r}", "a value in (0, 1]")
        x = _as_ids(inp, model, "generation(inp)")
        gen = None
        if seed is not None:
            gen = torch.Generator(device=x.device).manual_seed(seed)
        was = model.training
        model.eval()
        dropped, _, hidden = model.features(x)
        out = []
        last = dropped[:, -1]
        for _ in range(int(forward)):
            nxt = sample_next(model.decode(last), temperature, top_k, top_p, gen)  # (N,)
            out.append(nxt)
            dropped, _, hidden = model.features(nxt[:, None], hidden)
            last = dropped[:, -1]
        model.train(was)
        return torch.stack(out, 1).cpu().numpy().astype(np.int64)
