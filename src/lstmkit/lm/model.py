"""AWD-LSTM (Merity, Keskar & Socher 2017, arXiv 1708.02182): a 3-layer LSTM word language model
with every regularizer of the paper, each switchable for ablation.

    tokens (N, T)
      -> embedding dropout (dropoute_p, sec. 4.3)        -> (N, T, E)
      -> LockedDropout (dropouti_p, sec. 4.2)
      -> [LSTM with WeightDrop (wdrop_p, sec. 2)        -> (N, T, H_l)
          -> LockedDropout (dropouth_p between layers, dropout_p after the last)] x L
      -> decoder tied to the embedding (sec. 4.5)       -> logits (N, T, V)

``forward`` also returns the last layer's outputs before and after dropout, which the AR and TAR
penalties (sec. 4.6) need.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

from ..nn import LockedDropout, WeightDrop, embedding_dropout
from ..nn.adaptive import adaptive_nll, adaptive_target_logprob
from ..nn.linear_cross_entropy import linear_cross_entropy
from ..nn.mos import MixtureOfSoftmaxes

P = {"min": 0.0, "max": 1.0, "max_open": True}  # range of every *_p field


@dataclass
class AWDLSTMConfig:
    """Model hyper-parameters; defaults are the paper's WikiText-2 model."""

    vocab_size: int = field(default=33278, metadata={"min": 2})
    emb_size: int = field(default=400, metadata={"min": 1})
    hidden_size: int = field(default=1150, metadata={"min": 1})
    num_layers: int = field(default=3, metadata={"min": 1})
    dropout_p: float = field(default=0.4, metadata=P)     # on the last layer's output
    dropouth_p: float = field(default=0.2, metadata=P)    # between LSTM layers (0.25 on PTB)
    dropouti_p: float = field(default=0.65, metadata=P)   # on the embedded input
    dropoute_p: float = field(default=0.1, metadata=P)    # whole embedding rows
    wdrop_p: float = field(default=0.5, metadata=P)       # DropConnect on hidden-to-hidden weights
    dropout_scale: float = field(default=1.0, metadata={"min": 0.0})  # multiplies every *_p (ablation)
    tie_weights: bool = True
    init_range: float = field(default=0.1, metadata={"min": 0.0})
    # Output layer: the paper's full softmax, or an adaptive softmax (Grave et al. 2017,
    # nn.AdaptiveLogSoftmaxWithLoss; needs ids sorted by frequency, as Vocabulary.build does).
    # The adaptive softmax has its own weights, so tie_weights does not apply to it.
    # "mos": mixture of softmaxes (Yang et al. 2017, lstmkit.nn.mos), decoder tied to the embedding.
    softmax: str = field(default="full", metadata={"choices": ("full", "adaptive", "mos")})
    adaptive_cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    adaptive_div: float = field(default=4.0, metadata={"min": 1.0})
    mos_experts: int = field(default=15, metadata={"min": 1})      # K softmaxes (15 in the MoS paper)
    dropoutl_p: float = field(default=0.29, metadata=P)            # MoS latent dropout
    # Full softmax loss in row chunks with gradients computed on the fly (lstmkit.nn.linear_cross_entropy):
    # the (N*T, V) logits never exist at once. 0 = plain autograd over the whole logits.
    loss_chunk: int = field(default=1024, metadata={"min": 0})
    # Which full-softmax training loss: "chunked" (the fused chunks above: less memory traffic, faster
    # on CPU), "plain" (one cross-entropy over all logits: faster on GPUs), "auto" = chunked on CPU,
    # plain elsewhere. Same maths either way.
    loss_path: str = field(default="auto", metadata={"choices": ("auto", "chunked", "plain")})
    # LSTM weights (dropped weight_hh included) written into one flat buffer in cuDNN's layout before
    # each call, so cuDNN takes them without a copy: "auto" = on CUDA (lstmkit.nn.weight_drop).
    flat_weights: str = field(default="auto", metadata={"choices": ("auto", "always", "never")})

    def cross_check(self) -> tuple[str, str, str] | None:
        """A rule that joins fields, broken: ``(field, found, expected)``; else None."""
        k = self.adaptive_cutoffs
        if self.softmax == "adaptive" and (not k or any(b <= a for a, b in zip(k, k[1:])) or k[0] < 1):
            return "adaptive_cutoffs", f"found {k}", "one or more increasing positive word counts, e.g. [2000, 10000]"
        return None

    def p(self, name: str) -> float:
        """A dropout rate after ``dropout_scale`` (kept below 1)."""
        return min(getattr(self, name) * self.dropout_scale, 0.99)


class LMOutput(NamedTuple):
    logits: torch.Tensor            # (N, T, V) raw next-word scores
    hidden: list                    # per layer (h, c), each (1, N, H_l)
    raw: torch.Tensor               # (N, T, H_L) last layer output before dropout (TAR)
    dropped: torch.Tensor           # (N, T, H_L) after LockedDropout (AR, and the decoder input)


class AWDLSTM(nn.Module):
    """The AWD-LSTM language model.

    Example:
        >>> cfg = AWDLSTMConfig(vocab_size=50, emb_size=8, hidden_size=16, num_layers=2)
        >>> out = AWDLSTM(cfg)(torch.randint(0, 50, (3, 5)))
        >>> out.logits.shape, out.raw.shape, len(out.hidden)
        (torch.Size([3, 5, 50]), torch.Size([3, 5, 8]), 2)
    """

    def __init__(self, config: AWDLSTMConfig):
        super().__init__()
        self.config = c = config
        self.encoder = nn.Embedding(c.vocab_size, c.emb_size)
        tie = c.tie_weights and c.softmax == "full"
        sizes = [c.emb_size] + [c.hidden_size] * (c.num_layers - 1) + [c.emb_size if tie else c.hidden_size]
        self.rnns = nn.ModuleList(
            WeightDrop(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True), c.p("wdrop_p"), c.flat_weights) for i in range(c.num_layers))
        self.lockdrop_i = LockedDropout(c.p("dropouti_p"))
        self.lockdrop_h = LockedDropout(c.p("dropouth_p"))
        self.lockdrop_o = LockedDropout(c.p("dropout_p"))
        if c.softmax == "adaptive":
            cutoffs = [k for k in c.adaptive_cutoffs if 0 < k < c.vocab_size]   # the head covers a small vocabulary
            if not cutoffs or c.cross_check():
                from ..errors import InputError
                raise InputError("model.adaptive_cutoffs", f"found {c.adaptive_cutoffs} for {c.vocab_size} words",
                                 f"increasing cutoffs with at least one below the vocabulary size {c.vocab_size}")
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(sizes[-1], c.vocab_size, cutoffs, c.adaptive_div, head_bias=True)
        elif c.softmax == "mos":
            self.decoder = nn.Linear(c.emb_size, c.vocab_size)
            if c.tie_weights:
                self.decoder.weight = self.encoder.weight
            self.mos = MixtureOfSoftmaxes(sizes[-1], self.decoder, c.mos_experts, c.p("dropoutl_p"))
        else:
            self.decoder = nn.Linear(sizes[-1], c.vocab_size)
            if tie:  # Inan et al. 2016; Press & Wolf 2016
                self.decoder.weight = self.encoder.weight
        self.reset_parameters()
        self.vocab = None  # set by loaders: the Vocabulary the ids refer to

    def reset_parameters(self) -> None:
        r = self.config.init_range
        nn.init.uniform_(self.encoder.weight, -r, r)
        if self.config.softmax in ("full", "mos"):
            nn.init.zeros_(self.decoder.bias)
            if self.decoder.weight is not self.encoder.weight:
                nn.init.uniform_(self.decoder.weight, -r, r)
        for rnn in self.rnns:  # uniform(-1/sqrt(H), 1/sqrt(H)), the LSTM default, kept explicit
            bound = 1.0 / rnn.module.hidden_size ** 0.5
            for w in rnn.module.parameters():
                nn.init.uniform_(w, -bound, bound)

    def init_hidden(self, n: int, device=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Zero state for ``n`` sequences: per layer (h, c), each (1, N, H_l)."""
        device = device or self.encoder.weight.device
        return [(torch.zeros(1, n, r.module.hidden_size, device=device),) * 2 for r in self.rnns]

    def features(self, tokens: torch.Tensor, hidden=None):
        """Everything but the decoder: returns ``(dropped, raw, hidden)`` (see :class:`LMOutput`)."""
        c = self.config
        x = embedding_dropout(self.encoder, tokens, c.p("dropoute_p"), self.training)  # (N, T, E)
        x = self.lockdrop_i(x)
        hidden = hidden if hidden is not None else self.init_hidden(tokens.size(0), tokens.device)
        new_hidden = []
        for i, rnn in enumerate(self.rnns):
            raw, h = rnn(x, hidden[i])  # (N, T, H_i)
            new_hidden.append(h)
            x = self.lockdrop_h(raw) if i < len(self.rnns) - 1 else self.lockdrop_o(raw)
        return x, raw, new_hidden

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Decoder: (..., E) -> (..., V) raw scores (logits; log-probabilities for the adaptive softmax
        and the mixture of softmaxes)."""
        if self.config.softmax == "mos":
            return self.mos.log_prob(h.reshape(-1, h.size(-1))).view(*h.shape[:-1], -1)
        if self.config.softmax == "adaptive":
            with torch.autocast(h.device.type, enabled=False):
                flat = h.reshape(-1, h.size(-1)).float()
                return self.adaptive.log_prob(flat).view(*h.shape[:-1], -1)
        return self.decoder(h)

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-word NLL (nats) of hidden outputs h (N, T, E) against targets (N, T), fp32."""
        if self.config.softmax == "mos":
            return -self.mos.target_logprob(h.reshape(-1, h.size(-1)), targets.reshape(-1)).mean()
        if self.config.softmax == "adaptive":   # linears under autocast, log-softmaxes and sums in fp32
            return adaptive_nll(self.adaptive, h.reshape(-1, h.size(-1)), targets.reshape(-1))
        if choose_loss_path(self.config, h.device) == "chunked":
            return linear_cross_entropy(h.reshape(-1, h.size(-1)), self.decoder.weight, self.decoder.bias,
                                        targets.reshape(-1), self.config.loss_chunk)
        return cross_entropy_chunked(self, h, targets, chunk=h.numel() if self.training else 4096)

    def target_logprob(self, h: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Per-token ``log p(target)`` (fp32), same shape as ``targets``: h (N, T, E), targets (N, T)."""
        flat, t = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        if self.config.softmax == "mos":
            return self.mos.target_logprob(flat, t).view(targets.shape)
        if self.config.softmax == "adaptive":
            return adaptive_target_logprob(self.adaptive, flat, t).view(targets.shape)
        out = [F.log_softmax(self.decoder(flat[i: i + chunk]).float(), -1).gather(1, t[i: i + chunk, None]).squeeze(1)
               for i in range(0, t.numel(), chunk)]
        return torch.cat(out).view(targets.shape)

    def forward(self, tokens: torch.Tensor, hidden=None) -> LMOutput:
        dropped, raw, hidden = self.features(tokens, hidden)
        return LMOutput(self.decode(dropped), hidden, raw, dropped)


def choose_loss_path(config: AWDLSTMConfig, device: torch.device) -> str:
    """``"chunked"`` or ``"plain"``: the full-softmax training loss ``config`` asks for on ``device``.

    >>> cfg = AWDLSTMConfig()
    >>> choose_loss_path(cfg, torch.device("cpu")), choose_loss_path(cfg, torch.device("cuda"))
    ('chunked', 'plain')
    >>> cfg.loss_chunk = 0; choose_loss_path(cfg, torch.device("cpu"))
    'plain'
    """
    if config.loss_chunk == 0 or config.loss_path == "plain":
        return "plain"
    if config.loss_path == "chunked":
        return "chunked"
    return "chunked" if device.type == "cpu" else "plain"


def detach_hidden(hidden):
    """Cut the graph between BPTT windows (truncated backpropagation)."""
    return [(h.detach(), c.detach()) for h, c in hidden]


def cross_entropy_chunked(model: AWDLSTM, h: torch.Tensor, targets: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Mean next-word cross-entropy of decoder(h) against ``targets``: h (N, T, E), targets (N, T).

    Computed in row chunks so the (N*T, V) logits never exist all at once at inference time.
    """
    h = h.reshape(-1, h.size(-1))
    t = targets.reshape(-1)
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.size(0), chunk):
        logits = model.decode(h[i: i + chunk]).float()
        total = total + F.cross_entropy(logits, t[i: i + chunk], reduction="sum")
    return total / max(1, t.numel())
