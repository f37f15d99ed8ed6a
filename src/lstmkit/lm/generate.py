"""The seed's inference API: ``TestLanguageModel.prediction`` and ``.generation``.

Both take a batch of id sequences (N, T), start from a zero hidden state and run the model in
eval mode. ``generation`` feeds the prompt once and then one token per step, carrying the LSTM
state (no re-reading of the prefix).
"""
from __future__ import annotations

import numpy as np
import torch

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
                   top_p: float | None = None, seed: int | None = None, beam: int = 1,
                   repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0) -> np.ndarray:
        """Continue each sequence by ``forward`` words: ``inp`` (N, T) -> int64 (N, forward).

        Greedy by default; ``temperature``, ``top_k`` or ``top_p`` switch to sampling (``seed``
        makes it reproducible); ``beam > 1`` keeps the ``beam`` most likely continuations of each
        sequence and returns the best after ``forward`` words. ``repetition_penalty`` (> 1 discourages
        words already in the sequence; CTRL, Keskar et al. 2019) and ``no_repeat_ngram_size`` (no
        n-gram twice) shape every mode.

        Example:
            >>> from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig
            >>> m = AWDLSTM(AWDLSTMConfig(vocab_size=30, emb_size=8, hidden_size=8, num_layers=1))
            >>> TestLanguageModel.generation(np.zeros((2, 3), dtype=np.int64), 5, m).shape
            (2, 5)
        """
        if beam == 1:
            steps = iter_generation(inp, forward, model, temperature, top_k, top_p, seed, repetition_penalty,
                                    no_repeat_ngram_size)
            return torch.stack(list(steps), 1).cpu().numpy().astype(np.int64)
        x = _check(inp, forward, model, temperature, top_k, top_p, beam, repetition_penalty, no_repeat_ngram_size)
        was = model.training
        model.eval()
        try:
            return _beam_generate(model, x, int(forward), int(beam), repetition_penalty, no_repeat_ngram_size)
        finally:
            model.train(was)


def generate(model, input_ids, max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, num_beams: int = 1, repetition_penalty: float = 1.0,
             no_repeat_ngram_size: int = 0, seed: int | None = None) -> np.ndarray:
    """:meth:`TestLanguageModel.generation` under the argument names of Hugging Face's ``generate``:
    ``input_ids`` (N, T) -> the (N, ``max_new_tokens``) new ids. Greedy (or beam search with
    ``num_beams`` > 1) unless ``do_sample``; ``temperature``, ``top_k`` and ``top_p`` apply to sampling.

    Example:
        >>> from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig
        >>> m = AWDLSTM(AWDLSTMConfig(vocab_size=30, emb_size=8, hidden_size=8, num_layers=1))
        >>> x = np.zeros((2, 3), dtype=np.int64)
        >>> bool((generate(m, x, max_new_tokens=4) == TestLanguageModel.generation(x, 4, m)).all())
        True
    """
    if do_sample and num_beams > 1:
        raise InputError("generate(do_sample, num_beams)", "sampling with beam search", "one of do_sample or num_beams > 1")
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else {}
    return TestLanguageModel.generation(input_ids, max_new_tokens, model, seed=seed, beam=num_beams,
                                        repetition_penalty=repetition_penalty,
                                        no_repeat_ngram_size=no_repeat_ngram_size, **sampling)


def _check(inp, forward, model, temperature, top_k, top_p, beam=1, repetition_penalty=1.0, no_repeat_ngram_size=0):
    if isinstance(forward, bool) or not isinstance(forward, (int, np.integer)) or forward < 1:
        raise InputError("generation(forward)", f"found {forward!r}", "an integer >= 1")
    if temperature is not None and temperature <= 0:
        raise InputError("generation(temperature)", f"found {temperature!r}", "a value > 0")
    if top_k is not None and top_k < 1:
        raise InputError("generation(top_k)", f"found {top_k!r}", "an integer >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError("generation(top_p)", f"found {top_p!r}", "a value in (0, 1]")
    if isinstance(beam, bool) or not isinstance(beam, (int, np.integer)) or beam < 1:
        raise InputError("generation(beam)", f"found {beam!r}", "an integer >= 1")
    if beam > 1 and (temperature is not None or top_k is not None or top_p is not None):
        raise InputError("generation(beam)", f"beam={beam} with sampling options", "beam search or sampling, not both")
    if repetition_penalty <= 0:
        raise InputError("generation(repetition_penalty)", f"found {repetition_penalty!r}", "a value > 0 (1 = off)")
    if no_repeat_ngram_size < 0:
        raise InputError("generation(no_repeat_ngram_size)", f"found {no_repeat_ngram_size!r}", "an integer >= 0 (0 = off)")
    return _as_ids(inp, model, "generation(inp)")


def shape_scores(scores: torch.Tensor, history: torch.Tensor, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0) -> torch.Tensor:
    """Apply the repetition penalty and n-gram ban to next-word scores (R, V) given the sequences
    so far (R, L), all rows at once."""
    if repetition_penalty != 1.0:
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, history, True)
        penalized = torch.where(scores > 0, scores / repetition_penalty, scores * repetition_penalty)
        scores = torch.where(seen, penalized, scores)
    n = no_repeat_ngram_size
    if n >= 1 and history.size(1) >= n - 1:
        if n == 1:
            banned = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, history, True)
        else:
            grams = history.unfold(1, n, 1) if history.size(1) >= n else history.new_zeros(history.size(0), 0, n)
            match = (grams[:, :, :-1] == history[:, None, history.size(1) - n + 1:]).all(-1)   # (R, L-n+1)
            hits = torch.zeros(scores.shape, dtype=torch.long, device=scores.device)
            banned = hits.scatter_add_(1, grams[:, :, -1], match.long()) > 0           # words that would repeat an n-gram
        scores = scores.masked_fill(banned, float("-inf"))
    return scores


@torch.no_grad()
def iter_generation(inp, forward: int, model, temperature=None, top_k=None, top_p=None, seed=None,
                    repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0):
    """Greedy or sampled continuation one step at a time: yields the next ids (N,) ``forward``
    times (what ``lstmkit lm generate`` prints as it goes). Feeds the prompt once and then one word
    per step, carrying the LSTM state."""
    x = _check(inp, forward, model, temperature, top_k, top_p, 1, repetition_penalty, no_repeat_ngram_size)
    gen = torch.Generator(device=x.device).manual_seed(seed) if seed is not None else None
    was = model.training
    model.eval()
    try:
        dropped, _, hidden = model.features(x)
        history, last = x, dropped[:, -1]
        for k in range(int(forward)):
            scores = shape_scores(model.decode(last).float(), history, repetition_penalty, no_repeat_ngram_size)
            nxt = sample_next(scores, temperature, top_k, top_p, gen)                  # (N,)
            yield nxt
            if k + 1 == int(forward):       # the last word needs no state after it
                break
            history = torch.cat([history, nxt[:, None]], 1)
            dropped, _, hidden = model.features(nxt[:, None], hidden)
            last = dropped[:, -1]
    finally:
        model.train(was)


def _beam_generate(model, x: torch.Tensor, forward: int, k: int, repetition_penalty: float, ngram: int) -> np.ndarray:
    """Beam search over N prompts x k beams at once; the best of each prompt's k after ``forward`` words."""
    n = x.size(0)
    dropped, _, hidden = model.features(x)
    rows = torch.arange(n, device=x.device).repeat_interleave(k)
    hidden = [(h[:, rows], c[:, rows]) for h, c in hidden]
    last, history = dropped[rows, -1], x[rows]
    score = torch.full((n, k), float("-inf"), device=x.device)
    score[:, 0] = 0.0
    for step in range(forward):
        logp = shape_scores(model.decode(last).float(), history, repetition_penalty, ngram).log_softmax(-1)
        v = logp.size(1)
        top, idx = (score.view(-1, 1) + logp).view(n, k * v).topk(k, dim=1)
        src = (idx // v + torch.arange(n, device=x.device)[:, None] * k).view(-1)
        tok = (idx % v).view(-1)
        history = torch.cat([history[src], tok[:, None]], 1)
        score = top
        if step + 1 == forward:             # the last word needs no state after it
            break
        hidden = [(h[:, src], c[:, src]) for h, c in hidden]
        dropped, _, hidden = model.features(tok[:, None], hidden)
        last = dropped[:, -1]
    best = score.argmax(1) + torch.arange(n, device=x.device) * k
    return history[best, x.size(1):].cpu().numpy().astype(np.int64)
