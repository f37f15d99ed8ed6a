"""WeightDrop: DropConnect on the hidden-to-hidden weights of an LSTM (AWD-LSTM section 2).

The original code deleted the ``weight_hh`` parameter and re-assigned a dropped tensor before every
forward, which breaks ``flatten_parameters``, warns on every step on modern PyTorch and needs hacks.
Here the raw weights stay ordinary parameters of an ordinary ``nn.LSTM``; each forward draws one
mask per weight matrix, builds the list of weights the fused kernel expects with the dropped
``weight_hh`` in place of the raw one, and calls that kernel once over the whole sequence. The
gradient reaches the raw ``weight_hh_l*`` parameters through the dropout.

On CUDA the weights are written, dropped ``weight_hh`` included and already in the autocast dtype,
into one flat buffer laid out as cuDNN expects (:class:`FlatLayout`), so cuDNN takes them without
the per-call copy (and warning) it makes for separate tensors, and autocast has nothing to recast.
On CPU the oneDNN kernel takes the list as it is.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


def dropout_mask(shape, p: float, device: torch.device | str | None = None) -> torch.Tensor:
    """fp32 mask of ``shape``: 0 with probability ``p``, else 1/(1-p); drawn as ``uniform[0, 1) >= p``
    (see :func:`drop_connect`).

    >>> sorted(set(dropout_mask((2, 4), 0.5).flatten().tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    """
    return torch.rand(shape, device=device, dtype=torch.float32).ge_(p).div_(1.0 - p)


def drop_connect(w: torch.Tensor, p: float) -> torch.Tensor:
    """``w`` with each element zeroed with probability ``p`` and the rest scaled by 1/(1-p)
    (DropConnect, Wan et al. 2013; what ``F.dropout(w, p, training=True)`` computes).

    The mask is drawn as ``uniform[0, 1) >= p``: on a CPU this is 3.2x faster than ``F.dropout``
    (whose ``bernoulli_`` measured ~3x slower than ``rand`` for the same count) for an AWD-LSTM
    ``weight_hh`` of 4,600 x 1,150, forward and backward, and one form on every device keeps CPU and
    GPU runs drawing the same way. Differentiable in ``w``.

    >>> w = torch.ones(2, 4)
    >>> sorted(set(drop_connect(w, 0.5).flatten().tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    """
    return w * dropout_mask(w.shape, p, w.device).to(w.dtype)


class FlatLayout(NamedTuple):
    """Where each weight (in the kernel's order) starts in a flat buffer of ``total`` elements."""

    offsets: tuple[int, ...]
    total: int

    @classmethod
    def packed(cls, weights: list[torch.Tensor]) -> "FlatLayout":
        """One weight after another, no gaps (what cuDNN uses for LSTMs without projections).

        >>> FlatLayout.packed([torch.zeros(2, 3), torch.zeros(4)])
        FlatLayout(offsets=(0, 6), total=10)
        """
        offsets, n = [], 0
        for w in weights:
            offsets.append(n)
            n += w.numel()
        return cls(tuple(offsets), n)

    @classmethod
    def of_views(cls, views: list[torch.Tensor]) -> "FlatLayout":
        """The layout of tensors that are views into one storage (as after ``flatten_parameters``)."""
        storage = views[0].untyped_storage()
        if any(v.untyped_storage().data_ptr() != storage.data_ptr() or not v.is_contiguous() for v in views):
            raise ValueError("FlatLayout.of_views: the tensors are not contiguous views of one storage")
        return cls(tuple(v.storage_offset() for v in views), storage.nbytes() // views[0].element_size())

    def build(self, weights: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Copy ``weights`` (cast to ``dtype``) into one new buffer; return views shaped like them.

        Differentiable: the gradient of each view reaches its source weight. Gaps are zeros.

        >>> w = [torch.ones(2, 2, requires_grad=True), torch.full((3,), 2.0, requires_grad=True)]
        >>> views = FlatLayout((3, 0), 7).build(w)
        >>> views[0].untyped_storage().data_ptr() == views[1].untyped_storage().data_ptr()
        True
        >>> views[1].storage_offset(), views[0].storage_offset()
        (0, 3)
        """
        dtype = dtype or weights[0].dtype
        order = sorted(range(len(weights)), key=lambda i: self.offsets[i])
        pieces, pos = [], 0
        for i in order:
            if self.offsets[i] < pos:
                raise ValueError(f"FlatLayout: weight {i} overlaps the one before it")
            if self.offsets[i] > pos:
                pieces.append(weights[0].new_zeros(self.offsets[i] - pos, dtype=dtype))
            pieces.append(weights[i].reshape(-1).to(dtype))
            pos = self.offsets[i] + weights[i].numel()
        if pos > self.total:
            raise ValueError(f"FlatLayout: weights need {pos} elements, the buffer has {self.total}")
        if pos < self.total:
            pieces.append(weights[0].new_zeros(self.total - pos, dtype=dtype))
        buf = torch.cat(pieces)
        return [buf[o: o + w.numel()].view(w.shape) for o, w in zip(self.offsets, weights)]


def cudnn_layout(module: nn.LSTM, dtype: torch.dtype) -> FlatLayout:
    """The layout cuDNN expects for ``module``'s weights in ``dtype`` (asked of cuDNN itself)."""
    copies = [w.detach().to(dtype).clone() for w in module._flat_weights]
    with torch.no_grad():   # makes `copies` views of a new flat buffer, in cuDNN's layout
        torch._cudnn_rnn_flatten_weight(copies, 4 if module.bias else 2, module.input_size, 2,  # 2 = LSTM
                                        module.hidden_size, module.proj_size, module.num_layers,
                                        module.batch_first, module.bidirectional)
    return FlatLayout.of_views(copies)


def run_lstm(module: nn.LSTM, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None,
             weights: list[torch.Tensor], layouts: dict, flat: bool, dropout: float, training: bool):
    """One fused-kernel call of ``module``'s LSTM over ``x`` with ``weights`` (in the order of
    ``module._flat_weights``: the module's own, or with a dropped ``weight_hh``). Returns
    ``(out, (h, c))`` like ``nn.LSTM``; ``hx`` None starts from zeros.

    - ``flat``: the weights are written into one buffer laid out as cuDNN expects (the layout is
      asked of cuDNN once per device and dtype and kept in ``layouts``), so cuDNN takes them
      without copying; on a CPU the layout is the packed one.
    - Under autocast on CUDA the kernel gets input, state and weights already in the autocast
      dtype, with autocast off: CUDA autocast's own rule for cuDNN RNNs casts them to fp16 whatever
      dtype autocast was given (PyTorch's ``aten/src/ATen/cudnn/AutocastRNN.cpp``), i.e. bf16
      autocast would train the LSTMs in fp16 with no loss scaling. CPU autocast is left as it is.
    - ``dropout`` between layers applies when ``training``. The kernel runs in training mode also
      when the call will be differentiated in eval mode (dynamic evaluation): cuDNN's backward
      refuses a forward run in inference mode.
    """
    if hx is None:
        n = x.size(0) if module.batch_first else x.size(1)
        shape = (module.num_layers * (2 if module.bidirectional else 1), n, module.hidden_size)
        zeros = x.new_zeros(shape)
        hx = (zeros, zeros)
    grad = torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights))
    args = (module.bias, module.num_layers, dropout if training else 0.0, training or grad, module.bidirectional,
            module.batch_first)
    dev = x.device.type
    autocast = dev == "cuda" and torch.is_autocast_enabled(dev)
    if not flat and not autocast:
        out, h, c = torch.lstm(x, hx, weights, *args)
        return out, (h, c)
    dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weights[0].dtype
    if flat:
        key = (str(x.device), dt)
        if key not in layouts:
            layouts[key] = cudnn_layout(module, dt) if dev == "cuda" else FlatLayout.packed(module._flat_weights)
        weights = layouts[key].build(weights, dt)
    else:
        weights = [w.to(dt) for w in weights]
    with torch.autocast(dev, enabled=False):       # everything is already in `dt`
        out, h, c = torch.lstm(x.to(dt), (hx[0].to(dt), hx[1].to(dt)), weights, *args)
    return out, (h.to(hx[0].dtype), c.to(hx[1].dtype))


class WeightDrop(nn.Module):
    """Wrap an ``nn.LSTM`` (any layers, uni/bidirectional) with DropConnect of rate ``p`` on every
    hidden-to-hidden matrix. Same call signature as the LSTM; deterministic in eval.

    ``flat``: write the weights into one flat buffer before the kernel call - ``"auto"`` does so on
    CUDA only (where cuDNN would otherwise copy them itself), ``"always"`` / ``"never"`` force it.

    Example:
        >>> wd = WeightDrop(nn.LSTM(4, 5, batch_first=True), p=0.5)
        >>> out, (h, c) = wd(torch.randn(2, 7, 4)); out.shape
        torch.Size([2, 7, 5])
        >>> _ = wd.eval(); x = torch.randn(2, 7, 4)
        >>> bool((wd(x)[0] == wd(x)[0]).all())
        True
    """

    def __init__(self, module: nn.LSTM, p: float = 0.5, flat: str = "auto"):
        super().__init__()
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"WeightDrop wraps nn.LSTM, got {type(module).__name__}")
        if module.proj_size:
            raise ValueError("WeightDrop: LSTM with proj_size is not supported")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"WeightDrop: p={p}; expected 0 <= p < 1")
        if flat not in ("auto", "always", "never"):
            raise ValueError(f"WeightDrop: flat={flat!r}; expected 'auto', 'always' or 'never'")
        self.module = module
        self.p = p
        self.flat = flat
        self._layouts: dict = {}    # (device, dtype) -> FlatLayout, found on first use

    def flat_weights(self) -> list[torch.Tensor]:
        """Weights in the fused kernel's order, ``weight_hh`` dropped in training."""
        drop = self.training and self.p > 0
        out = []
        for layer in self.module.all_weights:  # [w_ih, w_hh, (b_ih, b_hh)] per layer x direction
            w = list(layer)
            if drop:
                w[1] = drop_connect(w[1], self.p)
            out.extend(w)
        return out

    def use_flat_buffer(self, device: torch.device) -> bool:
        """Whether this call builds the flat buffer (see ``flat``)."""
        return self.flat == "always" or (self.flat == "auto" and device.type == "cuda")

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        return run_lstm(self.module, x, hx, self.flat_weights(), self._layouts, self.use_flat_buffer(x.device),
                        self.module.dropout, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, flat={self.flat!r}"
