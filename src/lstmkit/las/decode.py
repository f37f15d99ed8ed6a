"""Free-running decoding for LAS. Greedy, batched: stops per utterance at ``<eos>`` and for the
batch when all have stopped or ``max_len`` is reached."""
from __future__ import annotations

from typing import Callable

import torch

from .ctc_prefix import CTCPrefixScorer
from .model import LAS, frame_mask


def done_check_every(device: torch.device) -> int:
    """Greedy decoding's steps between reads of "every utterance has stopped": each read is a host
    sync on a GPU, so there the batch runs up to 7 steps past the end (trimmed afterwards); on a CPU
    a read costs nothing and every step checks."""
    return 1 if device.type == "cpu" else 8


def length_caps(lengths: torch.Tensor, max_ratio: float, max_len: int | None, device) -> tuple[torch.Tensor, int]:
    """Per-utterance output cap (``max_ratio`` x frames, at least 10) and the number of steps to run
    (the longest cap, not above ``max_len``)."""
    caps = torch.clamp((max_ratio * lengths.float()).long(), min=10).to(device)
    longest = int(caps.max())
    return caps, min(max_len, longest) if max_len else longest


def decode_texts(model: LAS, vocab, features: torch.Tensor, lengths: torch.Tensor, beam: int = 1,
                 ctc_weight: float | None = None, lm_step: Callable | None = None, lm_weight: float = 0.0,
                 length_norm: float = 1.0, length_bonus: float = 0.0) -> list[str]:
    """Transcripts of a padded batch, as ``las decode`` and ``transcribe`` make them: batched beam
    search when ``beam`` > 1, an LM is fused or a CTC weight applies (``ctc_weight`` None: the
    model's ``decode_ctc_weight``), plain greedy decoding otherwise. The batch goes to the model's
    device."""
    dev = next(model.parameters()).device
    features, lengths = features.to(dev), lengths.to(dev)
    w = model_ctc_weight(model, ctc_weight)
    if beam > 1 or lm_step is not None or w:
        seqs = beam_search(model, features, lengths, vocab.sos, vocab.eos, beam=beam, length_norm=length_norm,
                           lm_step=lm_step, lm_weight=lm_weight, length_bonus=length_bonus, ctc_weight=w)
        return [vocab.decode(s) for s in seqs]
    ids, _ = greedy_decode(model, features, lengths, vocab.sos, vocab.eos, ctc_weight=0.0)
    return [vocab.decode(r.tolist()) for r in ids]


def model_ctc_weight(model: LAS, ctc_weight: float | None) -> float:
    """``ctc_weight`` if given, else the model's own decoding weight (0 for a model without one)."""
    return float(getattr(model, "decode_ctc_weight", 0.0)) if ctc_weight is None else float(ctc_weight)


def listen(model: LAS, features: torch.Tensor, lengths: torch.Tensor, listened=None, ctc_weight: float = 0.0):
    """-> keys, values, lengths, CTC log-probabilities (N, S', C) or None (``ctc_weight`` 0).

    ``listened`` = ``model.listener(features, lengths[, return_hidden=True])`` when the caller
    already has it (with the hidden states when ``ctc_weight`` > 0, else the listener runs again)."""
    if ctc_weight <= 0:
        keys, values, lens = (listened if listened is not None else model.listener(features, lengths))[:3]
        return keys, values, lens, None
    if getattr(model.listener, "ctc", None) is None:
        from ..errors import InputError
        raise InputError("ctc_weight", f"{ctc_weight} for a model without a CTC head",
                         "a model trained with model.ctc_weight > 0 (or ctc_weight 0)")
    if listened is None or len(listened) < 4:
        listened = model.listener(features, lengths, return_hidden=True)
    keys, values, lens, hidden = listened
    return keys, values, lens, model.listener.ctc(hidden).float().log_softmax(-1)


@torch.no_grad()
def greedy_decode(model: LAS, features: torch.Tensor, lengths: torch.Tensor, sos: int, eos: int,
                  max_len: int | None = None, max_ratio: float = 1.0, listened=None, ctc_weight: float | None = None):
    """-> ids (N, L) (positions after ``<eos>`` hold ``eos``), attentions (N, L, S').
    ``ctc_weight`` None: the model's ``decode_ctc_weight`` (a model from ``load_las``: the run's).

    Each utterance stops at ``<eos>`` or after ``max_ratio`` x its own number of input frames
    (at least 10) characters, and none runs past ``max_len``: a model that loops on one utterance
    cannot fill the rest of the batch with a transcript longer than its audio allows.
    ``listened`` = ``model.listener(features, lengths)`` when the caller already has it.
    ``ctc_weight`` > 0: each step takes the argmax of ``(1 - w) * log p_att + w * CTC prefix
    gain`` (joint CTC/attention decoding with one hypothesis, see :func:`beam_search`).
    """
    was = model.training
    model.eval()
    ctc_weight = model_ctc_weight(model, ctc_weight)
    keys, values, lens, ctc_logp = listen(model, features, lengths, listened, ctc_weight)
    mask = frame_mask(lens, keys.size(1))
    sp = model.speller
    state = sp.init_state(keys, values, mask)
    n = features.size(0)
    rows = torch.arange(n, device=features.device)
    ctc = CTCPrefixScorer(ctc_logp, lens, rows, blank=0, eos=eos) if ctc_logp is not None else None
    ctc_state = ctc.initial() if ctc is not None else None
    caps, max_len = length_caps(lengths, max_ratio, max_len, features.device)
    prev = torch.full((n,), sos, dtype=torch.long, device=features.device)
    done = torch.zeros(n, dtype=torch.bool, device=features.device)
    ids, atts, all_done = [], [], []
    every = done_check_every(features.device)
    for t in range(max_len):
        logits, state, w = sp.step(prev, state, keys, values, mask)
        if ctc is not None:
            ext = ctc.extension_scores(ctc_state)
            joint = (1 - ctc_weight) * logits.float().log_softmax(-1) + ctc_weight * (ext - ctc_state.psi[:, None]).float()
            nxt = joint.argmax(-1)
            ctc_state = ctc.advance(ctc_state, rows, nxt, ext)
        else:
            nxt = logits.argmax(-1)
        nxt = nxt.masked_fill(done, eos)
        ids.append(nxt)
        atts.append(w)
        done |= (nxt == eos) | (t + 1 >= caps)
        prev = nxt
        all_done.append(done.all())
        if (t + 1) % every == 0 and bool(all_done[-1]):
            break
    if every > 1:           # cut the steps run past the first at which all had stopped (one read)
        flags = torch.stack(all_done).tolist()
        if True in flags:
            ids, atts = ids[: flags.index(True) + 1], atts[: flags.index(True) + 1]
    model.train(was)
    return torch.stack(ids, 1), torch.stack(atts, 1)


@torch.no_grad()
def beam_search(model: LAS, features: torch.Tensor, lengths: torch.Tensor, sos: int, eos: int, beam: int = 8,
                max_ratio: float = 1.0, length_norm: float = 1.0, max_len: int | None = None,
                lm_step: Callable | None = None, lm_weight: float = 0.0, length_bonus: float = 0.0,
                listened=None, ctc_weight: float | None = None) -> list[list[int]]:
    """Batched beam search over all N utterances at once (N x ``beam`` speller rows per step).
    ``ctc_weight`` None: the model's ``decode_ctc_weight`` (a model from ``load_las``: the run's).

    Each hypothesis scores ``sum log p_LAS + lm_weight * sum log p_LM + length_bonus * length``;
    a hypothesis that emits ``<eos>`` is set aside with that score divided by
    ``length ** length_norm`` (0 = no normalization, 1 = per-character mean) and leaves the beam,
    which refills from the next best candidates. An utterance stops at its length cap
    (``max_ratio`` x its frames, at least 10; live hypotheses then count as finished) or, when
    scores can only fall with length (no positive bonus or negative LM weight), as soon as its best finished
    hypothesis beats the best any live one could still reach. Stopping after ``beam`` finished
    hypotheses instead lets a few cheap early ``<eos>`` candidates end the search too soon.
    With ``beam=1`` and no LM this is exactly :func:`greedy_decode`.

    ``lm_step(prev (R,), lm_state or None) -> (log-probs (R, C), lm_state)`` adds shallow fusion
    with a character language model; its state must support ``index_select`` reordering through
    :func:`reorder_state` (tensors or nested lists/tuples of tensors with rows first).

    ``ctc_weight`` > 0 (a model trained with a CTC head, ``model.ctc_weight`` > 0) is one-pass joint
    CTC/attention decoding (Watanabe et al. 2017): every extension scores
    ``(1 - w) * log p_att(c) + w * (psi(g + c) - psi(g))``, ``psi`` the listener's CTC prefix score
    (:mod:`lstmkit.las.ctc_prefix`), so a finished hypothesis carries ``(1 - w) * attention +
    w * log p_CTC(y | x)``. CTC counts characters against the audio: hypotheses that skip, repeat
    or loop over a stretch of it (the attention decoder's typical errors) lose while they grow.
    ``listened`` may then be ``model.listener(features, lengths, return_hidden=True)``.

    Returns, per utterance, the best hypothesis's character ids without ``<sos>``/``<eos>``.
    """
    was = model.training
    model.eval()
    n, k, dev = features.size(0), beam, features.device
    ctc_weight = model_ctc_weight(model, ctc_weight)
    keys, values, lens, ctc_logp = listen(model, features, lengths, listened, ctc_weight)
    ctc = None
    rows = torch.arange(n, device=dev).repeat_interleave(k)                  # (N*k,) utterance of each row
    if ctc_logp is not None:
        ctc = CTCPrefixScorer(ctc_logp, lens, rows, blank=0, eos=eos)   # blank = <pad> (las_loss)
        ctc_state = ctc.initial()
    keys, values, lens = keys[rows], values[rows], lens[rows]
    mask = frame_mask(lens, keys.size(1))
    sp = model.speller
    state = sp.init_state(keys, values, mask)
    caps, longest = length_caps(lengths, max_ratio, max_len, dev)
    score = torch.full((n, k), float("-inf"), device=dev)
    score[:, 0] = 0.0                                                        # one live hypothesis to start
    prev = torch.full((n * k,), sos, dtype=torch.long, device=dev)
    history = torch.zeros(n * k, 0, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    lm_state = None
    monotone = lm_weight >= 0 and length_bonus <= 0   # both log-probs are <= 0: scores only fall with length
    for t in range(longest):
        logits, state, _ = sp.step(prev, state, keys, values, mask)
        logp = logits.float().log_softmax(-1)                                # (N*k, C)
        if lm_step is not None and lm_weight:
            lm_logp, lm_state = lm_step(prev, lm_state)
            logp = logp + lm_weight * lm_logp.float()
        if ctc is not None:
            ext = ctc.extension_scores(ctc_state)                            # (N*k, C)
            logp = (1 - ctc_weight) * logp + ctc_weight * (ext - ctc_state.psi[:, None]).float()
        c = logp.size(1)
        total = (score.view(-1, 1) + logp + length_bonus).view(n, k * c)
        top, idx = total.topk(k, dim=1)                                      # (N, k)
        src = (idx // c) + torch.arange(n, device=dev)[:, None] * k           # source row of each new beam
        tok = idx % c
        src, tok = src.view(-1), tok.view(-1)
        history = torch.cat([history[src], tok[:, None]], 1)
        is_eos = (tok == eos).view(n, k)
        at_cap = (t + 1 >= caps)
        alive = top.masked_fill(is_eos, float("-inf"))
        for i in torch.nonzero(is_eos.any(1) | at_cap).flatten().tolist():
            if done[i]:
                continue
            for j in range(k):
                s = float(top[i, j])
                if s > float("-inf") and (bool(is_eos[i, j]) or bool(at_cap[i])):
                    seq = history[i * k + j].tolist()
                    seq = seq[:-1] if seq[-1] == eos else seq
                    finished[i].append((s / (len(seq) + 1) ** length_norm, seq, s))
            done[i] = bool(at_cap[i])
        if monotone:   # stop a row once no live hypothesis can still beat its best finished one
            best_alive = alive.max(1).values / (caps.float() + 1) ** length_norm
            for i in torch.nonzero(~done).flatten().tolist():
                if finished[i] and max(finished[i])[0] >= float(best_alive[i]):
                    done[i] = True
        score = alive.masked_fill(done[:, None], float("-inf"))
        state = reorder_state(state, src)
        if lm_state is not None:
            lm_state = reorder_state(lm_state, src)
        if ctc is not None:
            ctc_state = ctc.advance(ctc_state, src, tok, ext)
        prev = tok
        if bool(done.all()):
            break
    model.train(was)
    return [max(f)[1] if f else [] for f in finished]


def reorder_state(state, index: torch.Tensor):
    """Select rows ``index`` of every tensor in a (nested) state; NamedTuples keep their type."""
    if isinstance(state, torch.Tensor):
        return state.index_select(0, index) if state.dim() and state.size(0) == index.numel() else state
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(reorder_state(s, index) for s in state))
    if isinstance(state, (list, tuple)):
        return type(state)(reorder_state(s, index) for s in state)
    return state
