"""Free-running decoding for LAS. Greedy, batched: stops per utterance at ``<eos>`` and for the
batch when all have stopped or ``max_len`` is reached."""
from __future__ import annotations

import torch

from .model import LAS, frame_mask


@torch.no_grad()
def greedy_decode(model: LAS, features: torch.Tensor, lengths: torch.Tensor, sos: int, eos: int,
                  max_len: int | None = None, max_ratio: float = 1.0, listened=None):
    """-> ids (N, L) (positions after ``<eos>`` hold ``eos``), attentions (N, L, S').

    Each utterance stops at ``<eos>`` or after ``max_ratio`` x its own number of input frames
    (at least 10) characters, and none runs past ``max_len``: a model that loops on one utterance
    cannot fill the rest of the batch with a transcript longer than its audio allows.
    ``listened`` = ``model.listener(features, lengths)`` when the caller already has it.
    """
    was = model.training
    model.eval()
    keys, values, lens = listened if listened is not None else model.listener(features, lengths)
    mask = frame_mask(lens, keys.size(1))
    sp = model.speller
    state = sp.init_state(keys, values, mask)
    n = features.size(0)
    caps = torch.clamp((max_ratio * lengths.float()).long(), min=10).to(features.device)
    longest = int(caps.max())
    max_len = min(max_len, longest) if max_len else longest
    prev = torch.full((n,), sos, dtype=torch.long, device=features.device)
    done = torch.zeros(n, dtype=torch.bool, device=features.device)
    ids, atts = [], []
    for t in range(max_len):
        logits, state, w = sp.step(prev, state, keys, values, mask)
        nxt = logits.argmax(-1).masked_fill(done, eos)
        ids.append(nxt)
        atts.append(w)
        done |= (nxt == eos) | (t + 1 >= caps)
        prev = nxt
        if bool(done.all()):
            break
    model.train(was)
    return torch.stack(ids, 1), torch.stack(atts, 1)
