"""CTC prefix scores for one-pass joint CTC/attention beam search (Watanabe et al. 2017, "Hybrid
CTC/Attention Architecture for End-to-End Speech Recognition", Algorithm 2), vectorized over
hypotheses, candidate characters and time.

The prefix score ``psi(g) = log p_CTC(g... | x)`` is the probability that the listener's CTC head
reads a transcript *beginning* with ``g``. It can only fall as ``g`` grows, and
``psi(g + <eos>)`` is the probability of exactly ``g``. Beam search adds
``w * (psi(g + c) - psi(g))`` to each candidate's attention score, so a hypothesis that skips,
repeats or loops over a stretch of audio is penalized while it is being built, not only at the end.

Per hypothesis we keep the forward variables ``r_n[t]`` / ``r_b[t]`` (log-probability that the
frames up to ``t`` spell ``g`` ending in a non-blank / blank). Both recursions are linear in
probability space, so each is one ``logcumsumexp`` over time instead of a Python loop over frames:

    r_n(h)[t] = log sum_{s<=t} exp(phi[s-1] + x_c[s..t])     phi = r_b(g) (+ r_n(g) if c != last(g))
    r_b(h)[t] = log sum_{1<=s<=t} exp(r_n(h)[s-1] + x_blank[s..t])
"""
from __future__ import annotations

from typing import NamedTuple

import torch

NEG = -1e10   # "impossible" that still subtracts to a finite number


class CTCPrefixState(NamedTuple):
    r_n: torch.Tensor    # (R, S) float64
    r_b: torch.Tensor    # (R, S)
    psi: torch.Tensor    # (R,) prefix score of each hypothesis
    last: torch.Tensor   # (R,) last character, -1 for the empty prefix


class CTCPrefixScorer:
    """Prefix scores over the CTC log-probabilities of a batch of utterances.

    ``logp`` (N, S, C) log-softmax of the CTC head, ``lengths`` (N,) real frames, ``rows`` (R,)
    the utterance of each hypothesis row (beam search has ``beam`` rows per utterance),
    ``blank`` the blank id, ``eos`` the end-of-sentence id (scored as "the prefix is all").

    Example (one frame that surely says character 3):
        >>> logp = torch.full((1, 1, 5), -30.0); logp[0, 0, 3] = 0.0
        >>> sc = CTCPrefixScorer(logp, torch.tensor([1]), torch.tensor([0]), blank=0, eos=2)
        >>> s = sc.initial()
        >>> ext = sc.extension_scores(s)
        >>> round(float(ext[0, 3]), 3), float(ext[0, 2]) < -29   # "3..." is certain, "" is not
        (0.0, True)
    """

    def __init__(self, logp: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor, blank: int, eos: int):
        x = logp.double().clamp(min=-1e4)                                  # finite everywhere
        self.x = x.transpose(1, 2)[rows]                                   # (R, C, S)
        self.cum = self.x.cumsum(-1)                                       # x_c[0..t]
        self.cum_prev = torch.nn.functional.pad(self.cum, (1, 0))[..., :-1]   # x_c[0..t-1]
        s = x.size(1)
        self.lengths = lengths.to(x.device)[rows]
        self.valid = torch.arange(s, device=x.device)[None, :] < self.lengths[:, None]   # (R, S)
        self.blank, self.eos = blank, eos
        self.blank_cum = self.cum[:, blank]                                # (R, S)

    def initial(self) -> CTCPrefixState:
        """The empty prefix (only ``<sos>``): all blanks so far."""
        r = self.x.size(0)
        r_n = torch.full_like(self.blank_cum, float("-inf"))
        psi = torch.zeros(r, dtype=torch.float64, device=self.x.device)
        return CTCPrefixState(r_n, self.blank_cum.clone(), psi, torch.full((r,), -1, dtype=torch.long, device=self.x.device))

    def _phi_prev(self, state: CTCPrefixState, chars: torch.Tensor) -> torch.Tensor:
        """(R, K, S): ``phi[t-1]`` for extending each row by ``chars`` (R, K); ``phi[-1]`` = 0 only
        for the empty prefix (the new character may start at frame 0)."""
        both = torch.logaddexp(state.r_n, state.r_b)[:, None, :].expand(-1, chars.size(1), -1)
        same = chars == state.last[:, None]                                  # repeat needs a blank between
        phi = torch.where(same[..., None], state.r_b[:, None, :].expand_as(both), both)
        start = torch.where(state.last < 0, 0.0, float("-inf")).to(phi.dtype)
        start = start[:, None, None].expand(-1, chars.size(1), 1)
        return torch.cat([start, phi[..., :-1]], -1)

    def extension_scores(self, state: CTCPrefixState) -> torch.Tensor:
        """(R, C) ``psi(g + c)`` for every character ``c`` (``<eos>``: the probability of ``g``
        itself; blank: impossible). Values below ``NEG`` are clamped to it."""
        r, c, _ = self.x.shape
        chars = torch.arange(c, device=self.x.device)[None, :].expand(r, -1)
        terms = self._phi_prev(state, chars) + self.x
        psi = terms.masked_fill(~self.valid[:, None, :], float("-inf")).logsumexp(-1)   # (R, C)
        end = (self.lengths - 1).clamp(min=0)[:, None]
        whole = torch.logaddexp(state.r_n.gather(1, end), state.r_b.gather(1, end)).squeeze(1)
        psi[:, self.eos] = whole
        psi[:, self.blank] = float("-inf")
        return psi.clamp(min=NEG)

    def advance(self, state: CTCPrefixState, src: torch.Tensor, tok: torch.Tensor, ext: torch.Tensor) -> CTCPrefixState:
        """State of the hypotheses ``src[j] + tok[j]`` (rows of the new beam), ``ext`` from
        :meth:`extension_scores` of ``state``. Rows stay with their utterance."""
        prev = CTCPrefixState(*(t.index_select(0, src) for t in state))
        j = torch.arange(src.numel(), device=src.device)
        cum = self.cum[j, tok]                                               # (R, S) this row's character
        cum_prev = self.cum_prev[j, tok]
        phi_prev = self._phi_prev(prev, tok[:, None]).squeeze(1)            # (R, S)
        r_n = cum + torch.logcumsumexp(phi_prev - cum_prev, -1)
        b_terms = torch.nn.functional.pad((r_n - self.blank_cum)[:, :-1], (1, 0), value=float("-inf"))
        r_b = self.blank_cum + torch.logcumsumexp(b_terms, -1)
        psi = ext[src, tok]
        return CTCPrefixState(r_n, r_b, psi, tok.clone())
