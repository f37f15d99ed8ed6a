"""Free-running decoding for LAS. Greedy, batched: stops per utterance at ``<eos>`` and for the
batch when all have stopped or ``max_len`` is reached."""
from __future__ import annotations

import torch

from .model import LAS, frame_mask


@torch.no_grad()
def greedy_decode(model: LAS, features: torch.Tensor, lengths: torch.Tensor, sos: int, eos: int,
                  max_len: int | None = None, max_ratio: float = 1.0):
    """-> ids (N, L) (positions after ``<eos>`` hold ``eos``), attentions (N, L, S').

    ``max_len`` defaults to ``max_ratio`` x the longest input (frames), at least 10.
    """
    was = model.training
    model.eval()
    keys, values, lens = model.listener(features, lengths)
    mask = frame_mask(lens, keys.size(1))
    sp = model.speller
    state = sp.init_state(keys, values, mask)
    n = features.size(0)
    max_len = max_len or max(10, int(max_ratio * int(lengths.max())))
    prev = torch.full((n,), sos, dtype=torch.long, device=features.device)
    done = torch.zeros(n, dtype=torch.bool, device=features.device)
    ids, atts = [], []
    for _ in range(max_len):
        logits, state, w = sp.step(prev, state, keys, values, mask)
        nxt = logits.argmax(-1).masked_fill(done, eos)
        ids.append(nxt)
        atts.append(w)
        done |= nxt == eos
        prev = nxt
        if bool(done.all()):
            break
    model.train(was)
    return torch.stack(ids, 1), torch.stack(atts, 1)
