"""WeightDrop: DropConnect on the hidden-to-hidden weights of an LSTM (AWD-LSTM section 2).

The original code deleted the ``weight_hh`` parameter and re-assigned a dropped tensor before every
forward, which breaks ``flatten_parameters``, warns on every step on modern PyTorch and needs hacks.
Here the raw weights stay ordinary parameters of an ordinary ``nn.LSTM``; each forward draws one
mask per weight matrix, builds the list of weights the fused kernel expects with the dropped
``weight_hh`` in place of the raw one, and calls that kernel once over the whole sequence. The
gradient reaches the raw ``weight_hh_l*`` parameters through the dropout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightDrop(nn.Module):
    """Wrap an ``nn.LSTM`` (any layers, uni/bidirectional) with DropConnect of rate ``p`` on every
    hidden-to-hidden matrix. Same call signature as the LSTM; deterministic in eval.

    Example:
        >>> wd = WeightDrop(nn.LSTM(4, 5, batch_first=True), p=0.5)
        >>> out, (h, c) = wd(torch.randn(2, 7, 4)); out.shape
        torch.Size([2, 7, 5])
        >>> _ = wd.eval(); x = torch.randn(2, 7, 4)
        >>> bool((wd(x)[0] == wd(x)[0]).all())
        True
    """

    def __init__(self, module: nn.LSTM, p: float = 0.5):
        super().__init__()
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"WeightDrop wraps nn.LSTM, got {type(module).__name__}")
        if module.proj_size:
            raise ValueError("WeightDrop: LSTM with proj_size is not supported")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"WeightDrop: p={p}; expected 0 <= p < 1")
        self.module = module
        self.p = p

    def flat_weights(self) -> list[torch.Tensor]:
        """Weights in the fused kernel's order, ``weight_hh`` dropped in training."""
        drop = self.training and self.p > 0
        out = []
        for layer in self.module.all_weights:  # [w_ih, w_hh, (b_ih, b_hh)] per layer x direction
            w = list(layer)
            if drop:
                w[1] = F.dropout(w[1], self.p, training=True)
            out.extend(w)
        return out

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        m = self.module
        if hx is None:
            n = x.size(0) if m.batch_first else x.size(1)
            shape = (m.num_layers * (2 if m.bidirectional else 1), n, m.hidden_size)
            zeros = x.new_zeros(shape)
            hx = (zeros, zeros)
        out, h, c = torch.lstm(x, hx, self.flat_weights(), m.bias, m.num_layers, m.dropout if self.training else 0.0,
                               self.training, m.bidirectional, m.batch_first)
        return out, (h, c)

    def extra_repr(self) -> str:
        return f"p={self.p}"
