"""Shallow fusion (Gulcehre et al. 2015; Chorowski & Jaitly 2016): a character-level AWD-LSTM
trained by ``lm/`` (``data.unit = "char"``) scores every beam-search extension next to the speller,

    score = log p_LAS(y) + lm_weight * log p_LM(y) (+ length_bonus per character).

The two models have their own vocabularies; :class:`CharLMFusion` maps the recognizer's characters
onto the LM's: ``<sos>`` is fed to the LM as its line end ``<eos>`` (a transcript starts where a line
starts), the recognizer's ``<eos>`` is scored by the LM's ``<eos>``, characters the LM never saw by
its ``<unk>``.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from ..lm.model import AWDLSTM
from .data import CharVocabulary


class CharLMFusion:
    """``lm_step`` for :func:`lstmkit.las.decode.beam_search`.

    ``fusion(prev (R,) recognizer ids, state or None) -> (log p_LM over the recognizer's characters
    (R, C), state)``; the state is the LM's hidden state with rows first, so beam search can reorder it.
    """

    def __init__(self, lm: AWDLSTM, vocab: CharVocabulary, where: str = "--lm"):
        lv = getattr(lm, "vocab", None)
        if lv is None or getattr(lv, "unit", "word") != "char":
            raise InputError(where, "a word-level language model",
                             "a character-level LM run (trained with data.unit = \"char\")")
        eos = lv.stoi[lv.eos]
        unk = lv.stoi.get(lv.unk) if lv.unk else None
        missing = [c for c in vocab.itos[3:] if c not in lv.stoi]
        if missing and unk is None:
            raise InputError(where, f"characters {''.join(missing)!r} are not in the LM's vocabulary (and it has no <unk>)",
                             "an LM trained on text with the recognizer's characters")
        out = [eos, eos, eos] + [lv.stoi.get(c, unk) for c in vocab.itos[3:]]
        self.lm = lm.eval()
        dev = next(lm.parameters()).device
        self.out_map = torch.tensor(out, dtype=torch.long, device=dev)      # recognizer id -> LM id
        self.in_map = self.out_map.clone()                                    # <sos> enters as the LM's <eos>
        self.blocked = torch.tensor([vocab.pad, vocab.sos], device=dev)      # never emitted

    @torch.no_grad()
    def __call__(self, prev: torch.Tensor, state):
        x = self.in_map[prev][:, None]                                        # (R, 1)
        hidden = None if state is None else [(h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous())
                                              for h, c in state]
        dropped, _, hidden = self.lm.features(x, hidden)
        logp = self.lm.decode(dropped[:, 0]).float().log_softmax(-1)          # (R, V_lm)
        scores = logp[:, self.out_map]
        scores[:, self.blocked] = float("-inf")
        return scores, [(h.transpose(0, 1), c.transpose(0, 1)) for h, c in hidden]   # rows first
