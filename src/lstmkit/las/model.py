"""Listen, Attend and Spell (Chan et al. 2015, arXiv 1508.01211), character level, simplified:
no pyramid by default, dot-product key/value attention masked at padded frames.

    features (N, S, F), lengths (N,)
      Listener:  BiLSTM over packed frames [-> pBLSTM x P, each halving S] -> keys, values (N, S', A)
      Speller:   per output step i (LAS eq. 5-8)
                   s_i = LSTMCell2(LSTMCell1([embed(y_{i-1}); c_{i-1}]))
                   c_i, a_i = Attention(query(s_i), keys, values, mask)
                   logits_i = out([s_i; c_i])                                  -> (N, C)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.weight_drop import dropout_mask, run_lstm


@dataclass
class LASConfig:
    n_bands: int = field(default=40, metadata={"min": 1})
    vocab_size: int = field(default=31, metadata={"min": 4})
    listener_hidden: int = field(default=256, metadata={"min": 1})   # per direction
    pyramid_layers: int = field(default=0, metadata={"min": 0})      # pBLSTM layers, each halves time
    key_size: int = field(default=128, metadata={"min": 1})          # keys and values (A)
    value_direction: str = field(default="forward", metadata={"choices": ("forward", "both")})
    scaled_attention: bool = False   # divide energies by sqrt(A); the paper's plain dot product learns faster here
    embed_size: int = field(default=128, metadata={"min": 1})
    speller_hidden: int = field(default=256, metadata={"min": 1})
    tie_embeddings: bool = False
    dropout_p: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "max_open": True})
    char_dropout_p: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "max_open": True})  # training: previous char -> <pad>
    listener_dropout_p: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "max_open": True})  # on BiLSTM outputs
    location_channels: int = field(default=0, metadata={"min": 0})   # >0: location-aware energy (Chorowski et al. 2015)
    location_kernel: int = field(default=11, metadata={"min": 1})    # odd width of the conv over previous weights
    frontend_kernel: int = field(default=0, metadata={"min": 0})      # >0: Conv1d over time before the BiLSTM
    frontend_channels: int = field(default=128, metadata={"min": 1})
    decode_window: int = field(default=0, metadata={"min": 0})        # >0, eval only: attend within [peak-1, peak+W]
    ctc_weight: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "max_open": True})  # joint CTC on the listener

    def cross_check(self) -> tuple[str, str, str] | None:
        """A rule that joins fields (odd kernel widths), broken: ``(field, found, expected)``; else None."""
        if self.location_kernel % 2 == 0:
            return "location_kernel", f"found {self.location_kernel}", "an odd width (the window is centred)"
        if self.frontend_kernel > 0 and self.frontend_kernel % 2 == 0:
            return "frontend_kernel", f"found {self.frontend_kernel}", "0 (off) or an odd width"
        return None


def reverse_within_length(lengths: torch.Tensor, s: int) -> torch.Tensor:
    """(N, S) gather index that reverses each row's first ``length`` frames and keeps padding in place.

    >>> reverse_within_length(torch.tensor([3, 1]), 4).tolist()
    [[2, 1, 0, 3], [0, 1, 2, 3]]
    """
    t = torch.arange(s, device=lengths.device)[None, :]
    n = lengths[:, None]
    return torch.where(t < n, n - 1 - t, t)


class BiLSTM(nn.Module):
    """One bidirectional LSTM layer over a padded variable-length batch.

    Computes exactly what ``nn.LSTM(bidirectional=True)`` computes on a packed sequence (padded
    frames neither feed nor receive anything; their outputs are 0), but runs each direction as a
    plain unpacked ``nn.LSTM``: the backward direction reads each utterance reversed *within its
    length*, so its padding comes last. On CPU this takes the fused oneDNN kernel (bf16 under
    autocast) and avoids the packed path's per-frame slicing, whose backward costs O(frames^2)
    memory traffic - about 5x faster for 200-frame batches. On CUDA under autocast both directions
    run in the autocast dtype (:func:`lstmkit.nn.weight_drop.run_lstm`), not in the fp16 that CUDA
    autocast gives cuDNN RNNs.
    """

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.forward_lstm = nn.LSTM(input_size, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(input_size, hidden, batch_first=True)
        self._layouts: dict = {}     # cuDNN weight layouts, per device and dtype (see run_lstm)

    def _run(self, lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):   # in the autocast dtype, not fp16
            return run_lstm(lstm, x, None, lstm._flat_weights, self._layouts, True, 0.0, self.training)[0]
        return lstm(x)[0]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (N, S, D), lengths (N,) -> (N, S, 2H): [forward; backward], zero at padded frames."""
        n, s, _ = x.shape
        h = self.forward_lstm.hidden_size
        rev = reverse_within_length(lengths, s).unsqueeze(-1)
        fwd = self._run(self.forward_lstm, x)
        bwd = self._run(self.backward_lstm, x.gather(1, rev.expand(n, s, x.size(2))))
        bwd = bwd.gather(1, rev.expand(n, s, h))
        return torch.cat([fwd, bwd], -1) * frame_mask(lengths, s).unsqueeze(-1).to(fwd.dtype)


class Listener(nn.Module):
    """BiLSTM encoder over variable-length input, optional pyramid, key/value projections.

    Keys see both directions. Values come from the forward direction only by default
    (``value_direction="forward"``): with bidirectional values the backward LSTM already carries
    the *next* character into the last frame before it, and a trained speller attends there
    (measured on the toy task: 60% of attention peaks one frame before the character's span,
    alignment accuracy 0.3-0.4 at CER 4%). Forward values describe the audio up to each frame, so
    the speller must look inside the character's own frames (alignment 0.95). ``"both"`` is the
    paper's choice, kept for ablation.

    Example:
        >>> lis = Listener(LASConfig(listener_hidden=16, key_size=8, pyramid_layers=1))
        >>> k, v, lens = lis(torch.randn(2, 11, 40), torch.tensor([11, 7]))
        >>> k.shape, lens.tolist()
        (torch.Size([2, 5, 8]), [5, 3])
    """

    def __init__(self, cfg: LASConfig):
        super().__init__()
        h = cfg.listener_hidden
        self.frontend = None
        if cfg.frontend_kernel > 0:   # local frame comparisons (e.g. where one held sound gives way to the next)
            if cfg.frontend_kernel % 2 == 0:
                raise ValueError(f"frontend_kernel must be odd, got {cfg.frontend_kernel}")
            self.frontend = nn.Conv1d(cfg.n_bands, cfg.frontend_channels, cfg.frontend_kernel,
                                      padding=cfg.frontend_kernel // 2)
        self.blstm = BiLSTM(cfg.frontend_channels if self.frontend is not None else cfg.n_bands, h)
        self.pyramid = nn.ModuleList(BiLSTM(4 * h, h) for _ in range(cfg.pyramid_layers))
        self.key = nn.Linear(2 * h, cfg.key_size)
        self.causal_values = cfg.value_direction == "forward"
        self.value = nn.Linear(h if self.causal_values else 2 * h, cfg.key_size)
        self.drop = nn.Dropout(cfg.listener_dropout_p)
        # joint CTC (Kim, Hori & Watanabe 2017): per-frame characters from the listener, blank = <pad>
        self.ctc = nn.Linear(2 * h, cfg.vocab_size) if cfg.ctc_weight > 0 else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, return_hidden: bool = False):
        """-> keys (N, S', A), values (N, S', A), lengths (N,) [, hidden (N, S', 2H)]."""
        if self.frontend is not None:                                # padding is zeroed on both sides
            m = frame_mask(lengths, x.size(1)).unsqueeze(-1).to(x.dtype)
            x = torch.relu(self.frontend((x * m).transpose(1, 2))).transpose(1, 2) * m.to(x.dtype)
        h = self.drop(self.blstm(x, lengths))                        # (N, S, 2H)
        for layer in self.pyramid:                                   # pBLSTM: concat frame pairs
            n, s, d = h.shape
            h = h[:, : s // 2 * 2].reshape(n, s // 2, 2 * d)         # (N, S/2, 4H)
            lengths = torch.clamp(lengths // 2, min=1)
            h = self.drop(layer(h, lengths))
        v = h[..., : h.size(-1) // 2] if self.causal_values else h   # forward half: audio up to each frame
        if return_hidden:
            return self.key(h), self.value(v), lengths, h
        return self.key(h), self.value(v), lengths


def frame_mask(lengths: torch.Tensor, s: int) -> torch.Tensor:
    """(N,) lengths -> (N, S) bool, True at real frames."""
    return torch.arange(s, device=lengths.device)[None, :] < lengths[:, None]


class Attention(nn.Module):
    """Masked dot-product attention: softmax over real frames only, context = weights x values.

    With ``location_channels`` > 0 the energy also sees where the previous step attended
    (location-aware attention, Chorowski et al. 2015, arXiv 1506.07503, eq. 5-9, in dot-product
    form): ``f = conv1d(previous weights)`` (N, S, C) and ``e_j = q . k_j + (U^T q) . f_j``, which
    lets the speller step from one character's frames to the next even when their keys look
    alike (doubled letters).

    Example:
        >>> att = Attention(8)
        >>> ctx, w = att(torch.randn(2, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8),
        ...              frame_mask(torch.tensor([5, 3]), 5))
        >>> ctx.shape, float(w[1, 3:].sum())
        (torch.Size([2, 8]), 0.0)
    """

    def __init__(self, key_size: int, scaled: bool = False, location_channels: int = 0, location_kernel: int = 11):
        super().__init__()
        self.scale = key_size ** -0.5 if scaled else 1.0
        self.location = None
        if location_channels > 0:
            if location_kernel % 2 == 0:
                raise ValueError(f"location_kernel must be odd, got {location_kernel}")
            self.location = nn.Conv1d(1, location_channels, location_kernel, padding=location_kernel // 2, bias=False)
            self.location_query = nn.Linear(key_size, location_channels, bias=False)   # U^T q

    def forward(self, query, keys, values, mask, previous=None):
        """query (N, A), keys/values (N, S, A), mask (N, S), previous weights (N, S) or None."""
        energy = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)                   # (N, S)
        if self.location is not None and previous is not None:
            f = self.location(previous.to(keys.dtype).unsqueeze(1))               # (N, C, S)
            energy = energy + torch.bmm(self.location_query(query).unsqueeze(1), f).squeeze(1)
        if self.scale != 1.0:                      # one kernel less a step (and in backward) for the paper's form
            energy = energy * self.scale
        energy = torch.where(mask, energy.float(), float("-inf"))                # one kernel, not ~mask + masked_fill
        weights = energy.softmax(-1)                                           # (N, S), 0 at padding
        context = torch.bmm(weights.unsqueeze(1).to(values.dtype), values).squeeze(1)  # (N, A)
        return context, weights


def lstm_cell(cell: nn.LSTMCell, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
    """One step of ``cell``: x (N, D), state (h, c) each (N, H) -> (h, c), both fp32.

    The gate nonlinearities and the cell state ``c = f * c + i * g`` are always fp32: CUDA autocast
    runs a plain ``nn.LSTMCell`` wholly in bf16 (CPU autocast does not), which rounds ``c`` to 8
    significant bits at every step, so updates smaller than half a bf16 unit of ``c`` vanish. On
    CUDA (fp32 weights) the whole cell runs in fp32 with autocast off: ``cell(x, state)`` itself,
    the fused kernel (two matrix products and one elementwise kernel, instead of about a dozen
    kernels for the split form below); a speller's products, one batch by a few hundred units, are
    too small for bf16 to pay on a GPU, where each step's time goes by kernel launches. Elsewhere
    under autocast (CPUs with bf16 units, where the products' arithmetic is what costs) the two
    matrix products follow autocast; without autocast this is ``cell(x, state)`` as well.
    """
    h, c = state
    dev = x.device.type
    autocast = torch.is_autocast_enabled(dev)
    if cell.weight_ih.dtype == torch.float32 and (dev == "cuda" or not autocast):
        with torch.autocast(dev, enabled=False) if autocast else contextlib.nullcontext():
            h, c = cell(x.float(), (h.float(), c.float()))
        return h, c
    w = cell.weight_ih.dtype if not autocast else None
    xi, hi = (x.to(w), h.to(w)) if w is not None else (x, h)
    gates = F.linear(xi, cell.weight_ih, cell.bias_ih).float() + F.linear(hi, cell.weight_hh, cell.bias_hh).float()
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c.float() + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class SpellerState(NamedTuple):
    h1: torch.Tensor
    c1: torch.Tensor
    h2: torch.Tensor
    c2: torch.Tensor
    context: torch.Tensor    # (N, A) context of the previous step
    weights: torch.Tensor    # (N, S) attention of the previous step (one-hot at frame 0 before the first)


class Speller(nn.Module):
    """Character decoder: embedding, two LSTMCells, attention, output from [state; context].

    ``step`` is one output step; greedy and beam search call it. It is ``embed``, ``recur`` (the
    recurrent part: cells and attention, -> state with ``s_i``, ``c_i``) and ``output``
    (``[s_i; c_i]`` -> logits).
    Only a model-fed previous character takes the output back into the recurrence, so teacher
    forcing (LAS.forward) runs ``recur`` per step and ``output`` once over all steps.
    """

    def __init__(self, cfg: LASConfig):
        super().__init__()
        a, e, h = cfg.key_size, cfg.embed_size, cfg.speller_hidden
        self.embed = nn.Embedding(cfg.vocab_size, e)
        self.cell1 = nn.LSTMCell(e + a, h)
        self.cell2 = nn.LSTMCell(h, h)
        self.query = nn.Linear(h, a)
        self.attention = Attention(a, cfg.scaled_attention, cfg.location_channels, cfg.location_kernel)
        self.proj = nn.Linear(h + a, e)
        self.out = nn.Linear(e, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.out.weight = self.embed.weight
        self.drop = nn.Dropout(cfg.dropout_p)
        self.window = cfg.decode_window

    def init_state(self, keys, values, mask) -> SpellerState:
        n = keys.size(0)
        z = keys.new_zeros(n, self.cell1.hidden_size, dtype=torch.float32)   # the cells' state is fp32 (lstm_cell)
        ctx, _ = self.attention(keys.new_zeros(n, keys.size(2)), keys, values, mask)  # mean of values
        first = torch.zeros(mask.shape, device=keys.device)
        first[:, 0] = 1.0
        return SpellerState(z, z, z, z, ctx, first)

    def step(self, prev: torch.Tensor, state: SpellerState, keys, values, mask):
        """prev (N,) previous characters -> logits (N, C), new state, attention (N, S)."""
        state, w = self.recur(self.embed(prev), state, keys, values, mask)
        return self.output(torch.cat([state.h2, state.context], -1)), state, w

    def output(self, features: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``[s_i; c_i]`` (..., H + A) -> logits (..., C), for one step or (N, L, H + A) at once.
        ``keep``: a dropout mask already scaled by 1/(1-p), used instead of drawing one."""
        features = self.drop(features) if keep is None else features * keep
        return self.out(torch.tanh(self.proj(features)))

    def recur(self, embedded: torch.Tensor, state: SpellerState, keys, values, mask):
        """embedded previous characters (N, E) -> new state (``s_i`` = h2, ``c_i`` = context), attention (N, S)."""
        x = torch.cat([embedded, state.context], -1)
        h1, c1 = lstm_cell(self.cell1, x, (state.h1, state.c1))
        h2, c2 = lstm_cell(self.cell2, self.drop(h1), (state.h2, state.c2))
        if self.window and not self.training:   # decoding: no jumps back, at most `window` frames ahead
            peak = state.weights.argmax(-1, keepdim=True)                               # (N, 1)
            t = torch.arange(mask.size(1), device=mask.device)[None, :]
            near = (t >= peak - 1) & (t <= peak + self.window)
            mask = mask & (near | ~(mask & near).any(-1, keepdim=True))               # never empty a row
        ctx, w = self.attention(self.query(h2), keys, values, mask, state.weights)
        return SpellerState(h1, c1, h2, c2, ctx, w), w


class LAS(nn.Module):
    """Listener + Speller.

    Example:
        >>> m = LAS(LASConfig(vocab_size=10, listener_hidden=16, key_size=8, embed_size=8, speller_hidden=16))
        >>> logits, att = m(torch.randn(2, 12, 40), torch.tensor([12, 9]), torch.ones(2, 4, dtype=torch.long))
        >>> logits.shape, att.shape
        (torch.Size([2, 4, 10]), torch.Size([2, 4, 12]))
    """

    def __init__(self, config: LASConfig):
        super().__init__()
        self.config = config
        self.listener = Listener(config)
        self.speller = Speller(config)
        # joint CTC/attention weight greedy_decode / beam_search use when not given one: load_las sets
        # the run's validation weight (train.val_ctc_weight), so the API decodes as the CLI does
        self.decode_ctc_weight = 0.0

    def forward(self, features, lengths, inputs, tf_rate: float = 1.0, generator: torch.Generator | None = None,
                listened=None):
        """Teacher-forced decoding: ``inputs`` (N, L) = <sos> + characters. With ``tf_rate`` < 1 each
        step feeds the model's own previous argmax instead, with probability 1 - tf_rate.
        ``listened`` = ``self.listener(features, lengths)`` when the caller already has it.

        Returns logits (N, L, C) and attention weights (N, L, S').

        The output layer runs once over all L steps, after the recurrence (fewer, larger kernels,
        forward and backward: on a GPU a speller step's time goes by its kernel launches). At
        ``tf_rate`` 1 the previous characters are also embedded at once. Below 1, each step's own
        guess is the argmax of the same logits (the same dropout mask, drawn for all steps before
        the loop), computed without autograd at that step.
        """
        keys, values, lens = listened if listened is not None else self.listener(features, lengths)
        mask = frame_mask(lens, keys.size(1))
        sp = self.speller
        state = sp.init_state(keys, values, mask)
        hide_p = self.config.char_dropout_p if self.training else 0.0   # hide the previous character: lean on audio
        n, length = inputs.shape
        embedded, keep = None, None
        if tf_rate >= 1.0:                  # every previous character is known now: embed them at once
            prev = inputs
            if hide_p > 0 and length > 1:   # one draw for all steps, step-major (L-1, N)
                hide = torch.rand((length - 1, n), generator=generator, device=inputs.device).t() < hide_p
                prev = torch.cat([inputs[:, :1], inputs[:, 1:].masked_fill(hide, 0)], 1)
            embedded = sp.embed(prev).unbind(1)   # its backward is one stack, not L zero-filled copies
        elif self.training and sp.drop.p > 0:     # the output layer's dropout mask, for the guesses and the loss
            d = sp.cell2.hidden_size + keys.size(2)
            keep = dropout_mask((n, length, d), sp.drop.p, keys.device)
        h2s, ctxs, atts = [], [], []
        prev = inputs[:, 0]
        for t in range(length):
            state, w = sp.recur(embedded[t] if embedded is not None else sp.embed(prev), state, keys, values, mask)
            h2s.append(state.h2)
            ctxs.append(state.context)
            atts.append(w)
            if embedded is None and t + 1 < length:   # feed its own guess with probability 1 - tf_rate
                with torch.no_grad():
                    joined = torch.cat([state.h2, state.context], -1)
                    guess = sp.output(joined, None if keep is None else keep[:, t]).argmax(-1)
                own = torch.rand(prev.shape, generator=generator, device=prev.device) >= tf_rate
                prev = torch.where(own, guess, inputs[:, t + 1])
                if hide_p > 0:
                    hide = torch.rand(prev.shape, generator=generator, device=prev.device) < hide_p
                    prev = prev.masked_fill(hide, 0)
        logits = sp.output(torch.cat([torch.stack(h2s, 1), torch.stack(ctxs, 1)], -1), keep)
        return logits, torch.stack(atts, 1)


def las_loss(model: LAS, features, lengths, inputs, targets, tf_rate: float = 1.0,
             generator: torch.Generator | None = None, pad: int = 0,
             norm: tuple[float, float] | None = None) -> torch.Tensor:
    """Training loss: attention cross-entropy per character, mixed with the listener's CTC loss
    when ``ctc_weight`` > 0: ``(1 - w) * CE + w * CTC`` (targets without ``<eos>``, blank = ``pad``;
    CTC per utterance divided by its length, then averaged).

    ``norm = (characters, utterances)`` divides the sums by these counts instead of this batch's
    own: a distributed rank holding part of a global batch passes the global counts / world size,
    so the ranks' averaged gradient is exactly the global batch's."""
    w = model.config.ctc_weight
    keys, values, lens, hidden = model.listener(features, lengths, return_hidden=True)
    logits, _ = model(features, lengths, inputs, tf_rate, generator, listened=(keys, values, lens))
    if norm is None:
        loss = sequence_loss(logits, targets, pad)
    else:
        loss = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=pad, reduction="sum") / norm[0]
    model.last_ce = loss.detach()            # the attention part alone, for logs and curves (like the dev loss)
    if w > 0:
        logp = model.listener.ctc(hidden).float().log_softmax(-1).transpose(0, 1)   # (S', N, C)
        n_chars = (targets != pad).sum(1) - 1                                       # drop <eos>
        per = F.ctc_loss(logp, targets, lens, n_chars, blank=pad, zero_infinity=True, reduction="none")
        per = per / n_chars.clamp(min=1)
        ctc = per.mean() if norm is None else per.sum() / norm[1]
        loss = (1 - w) * loss + w * ctc
    return loss


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """Mean cross-entropy per real (non-pad) target character."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=pad)
