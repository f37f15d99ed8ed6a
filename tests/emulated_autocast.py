"""CUDA autocast emulated on a CPU, for ``emulated_cuda(amp=True)`` (tests/emulated_cuda.py).

CUDA autocast is a dispatcher state that casts the arguments of listed ops on CUDA tensors; the
emulated GPU's tensors are CPU tensors underneath, so it would cast nothing. Here a torch-function
mode applies CUDA's casting policy to them instead, while ``torch.is_autocast_enabled("cuda")``:
the op lists come from PyTorch's ``ATen/autocast_mode.h`` (lower precision, fp32, fp32 with an
output dtype, promote), keyed by the Python entry points' names, and ``torch.lstm`` with fp32
weights is cast to **fp16** as ``ATen/cudnn/AutocastRNN.cpp`` does (recorded in :data:`EVENTS`).
The numbers are rounded where the GPU rounds them, at fp32 speed (a CPU without bf16 units runs a
bf16 matmul ~60x slower): a matrix product in the lower dtype takes its rounded inputs, computes
in fp32 and rounds its result once, as a GPU GEMM accumulating in fp32 does; ``lstm_cell`` rounds
its two gate products and its outputs ``h`` and ``c`` (CUDA's fused cell keeps nothing else
between steps); a whole-sequence LSTM whose tensors are all bf16/fp16 runs step by step with that
cell, so each step's ``h``, ``c`` and, backwards, their gradients are rounded (:func:`_lstm_by_step`;
a packed sequence only rounds its inputs, weights and outputs). Found with it: dtype
errors under bf16 on CUDA would show as exceptions; the neural cache's pointer scores and TAR's
difference ran in bf16 (both now fp32).
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from emulated_cuda import OnGPU, _Mode, _name

# Lists from ATen/autocast_mode.h (AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32,
# AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE (norm), AT_FORALL_PROMOTE),
# registered for CUDA in autocast_mode.cpp; `_cudnn_rnn` from ATen/cudnn/AutocastRNN.cpp (fp16).
# Keyed by the Python entry point's base name (torch.X, torch.Tensor.X, torch.nn.functional.X, ...).
# In-place (X_) and out= variants are not registered by autocast and are left alone, as on CUDA.
_LOWER = {
    "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "convolution", "_convolution", "prelu", "addmm", "addmv", "addr", "matmul", "einsum", "mm", "mv",
    "vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "multi_dot", "lstm_cell", "gru_cell",
    "rnn_tanh_cell", "rnn_relu_cell", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell",
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
}
_FP32 = {
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow", "softplus", "layer_norm", "native_layer_norm", "group_norm",
    "frobenius_norm", "nuclear_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss",
    "nll_loss", "nll_loss_nd", "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss",
    "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss",
    "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist",
    "renorm", "logsumexp", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
    # composite at the aten level: cross_entropy_loss = log_softmax (fp32) + nll_loss (fp32)
    "cross_entropy",
}
_FP32_SET_OPT_DTYPE = {"prod", "softmax", "log_softmax", "cumprod", "cumsum", "vector_norm", "matrix_norm",
                       "sum", "norm"}   # norm: fp32_append_dtype (norm.Scalar / ScalarOpt_dim); torch.norm -> vector_norm
_PROMOTE = {"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sample", "grid_sampler",
            "index_put", "tensordot", "scatter_add"}
_DUNDER = {"__matmul__": "matmul", "__rmatmul__": "matmul", "__pow__": "pow", "__rpow__": "pow"}
_PREFIXES = ("torch.Tensor.", "torch.nn.functional.", "torch.functional.", "torch.linalg.", "torch._C._nn.",
             "torch.special.", "torch._VF.", "torch.")

EVENTS: list = []    # what a test may want to know: cuDNN-RNN fp16 casts, banned ops, promote errors


def _base(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            b = name[len(p):]
            return _DUNDER.get(b, b)
    return name


def _eligible(t) -> bool:
    """CUDA autocast's is_eligible: a defined floating-point tensor on the device, not fp64."""
    return isinstance(t, OnGPU) and t.is_floating_point() and t.dtype != torch.float64


def _cast(tree, dtype):
    return tree_map(lambda t: t.to(dtype) if _eligible(t) and t.dtype != dtype else t, tree)


def _where() -> str:
    import sys
    f = sys._getframe(2)
    fallback = None
    while f is not None:
        fn = f.f_code.co_filename
        if "/lstmkit/" in fn and "/site-packages/torch" not in fn:
            return f"{fn.split('/lstmkit/', 1)[1]}:{f.f_lineno}"
        if fallback is None and "emulated_" not in fn and "/torch/" not in fn:
            fallback = f"{fn}:{f.f_lineno}"
        f = f.f_back
    return fallback or "?"


def _dtypes(tree) -> tuple:
    return tuple(str(t.dtype).replace("torch.", "") for t in tree_leaves(tree)
                 if isinstance(t, torch.Tensor) and t.is_floating_point())


def _fp32_compute(func, args, kwargs, dtype):
    """Run an op on inputs already rounded to ``dtype`` (bf16/fp16) in fp32 and round its floating
    outputs to ``dtype``. For a matrix product this is what a GPU's bf16/fp16 GEMM computes (products
    accumulated in fp32, the result rounded once) up to the order of the sums, at fp32 speed: a CPU
    without bf16 units runs a bf16 matmul ~60x slower than fp32. For an LSTM over a packed sequence
    it stands in for the cuDNN kernel (inputs, weights and outputs rounded, the steps between not)."""
    def up(t):
        return t.float() if isinstance(t, torch.Tensor) and t.dtype == dtype else t

    def down(t):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
    out = func(*tree_map(up, args), **tree_map(up, kwargs))
    return tree_map(down, out)


def _rounded_lstm_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """CUDA's LSTM cell in a lower dtype: the two gate products rounded to it (GEMM outputs), the
    gates and the new cell state computed in fp32 (the fused kernel's accumulate type), ``h`` and
    ``c`` rounded to it on output."""
    low = x.dtype
    ig = (x.float() @ w_ih.float().T + (b_ih.float() if b_ih is not None else 0)).to(low)
    hg = (hx[0].float() @ w_hh.float().T + (b_hh.float() if b_hh is not None else 0)).to(low)
    i, f, g, o = (ig.float() + hg.float()).chunk(4, -1)
    c = torch.sigmoid(f) * hx[1].float() + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.to(low), c.to(low)


def _lstm_by_step(x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """``torch.lstm`` on tensors in a lower dtype, one time step at a time with
    :func:`_rounded_lstm_cell`: every step's ``h`` and ``c`` are stored in that dtype, and so in the
    backward pass are the gradients that reach them and each step's share of the weight gradients
    (summed in that dtype). A kernel that keeps its per-step values in the data type behaves so; with
    fp16 data and no loss scaling, gradients under ~6e-8 vanish at every step (the pessimistic side
    of cuDNN, whose arithmetic runs in fp32: ``promote_rnn_math_type``)."""
    if dropout and train and num_layers > 1:
        raise NotImplementedError("emulated_autocast: LSTM dropout between layers")
    seq = x.transpose(0, 1) if batch_first else x            # (T, N, D)
    dirs, per = (2 if bidirectional else 1), (4 if has_biases else 2)
    hs, cs = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w = params[k * per:(k + 1) * per]
            h, c = hx[0][k], hx[1][k]
            ys = [None] * seq.size(0)
            for t in (range(seq.size(0)) if d == 0 else reversed(range(seq.size(0)))):
                h, c = _rounded_lstm_cell(seq[t], (h, c), *w)
                ys[t] = h
            outs.append(torch.stack(ys))
            hs.append(h)
            cs.append(c)
        seq = torch.cat(outs, -1) if dirs == 2 else outs[0]
    out = seq.transpose(0, 1) if batch_first else seq
    return out, torch.stack(hs), torch.stack(cs)


def _lstm_tensors(args):
    packed = len(args) > 1 and isinstance(args[1], torch.Tensor)
    return (args[0], args[2], args[3]) if packed else (args[0], args[1], args[2])


class AutocastMode(TorchFunctionMode):
    """While ``torch.is_autocast_enabled("cuda")``, cast the floating-point emulated-GPU arguments
    of the ops in CUDA autocast's lists as CUDA autocast would (events in :data:`EVENTS`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)
        if name.endswith("__get__") or name.endswith("__set__"):
            return func(*args, **kwargs)
        base = _base(name)
        on = torch.is_autocast_enabled("cuda") and any(isinstance(t, OnGPU) for t in tree_leaves((args, kwargs)))
        if on and "out" not in kwargs:
            low = torch.get_autocast_dtype("cuda")
            if base in ("lstm",):                                   # _cudnn_rnn: AutocastRNN.cpp casts to fp16
                x, hx, params = _lstm_tensors(args)
                if _eligible(x) or any(_eligible(w) for w in params):
                    EVENTS.append(("cudnn_rnn autocast -> fp16", name, _dtypes((x, hx, params)), _where()))
                    args = list(args)
                    idx = (0, 2, 3) if isinstance(args[1], torch.Tensor) else (0, 1, 2)
                    for i in idx:
                        args[i] = _cast(args[i], torch.float16)
                    args = tuple(args)
            elif base == "binary_cross_entropy":
                EVENTS.append(("banned", name, _dtypes((args, kwargs)), _where()))
                raise RuntimeError("torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast.")
            elif base in _LOWER:
                args, kwargs = _cast(args, low), _cast(kwargs, low)
                if low in (torch.bfloat16, torch.float16) and base not in ("lstm_cell", "gru_cell"):
                    return _fp32_compute(func, args, kwargs, low)
            elif base in _FP32:
                args, kwargs = _cast(args, torch.float32), _cast(kwargs, torch.float32)
            elif base in _FP32_SET_OPT_DTYPE:
                first = args[0] if args else kwargs.get("input")
                has_dtype = kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args[1:])
                if _eligible(first) and not has_dtype:
                    kwargs["dtype"] = torch.float32
            elif base in _PROMOTE:
                ts = [t for t in tree_leaves((args, kwargs)) if _eligible(t)]
                cur = low
                for t in ts:
                    if t.dtype == torch.float32 or cur == torch.float32:
                        cur = torch.float32
                    elif not (cur == low and t.dtype == low):
                        EVENTS.append(("promote error", name, _dtypes(ts), _where()))
                        raise RuntimeError("Unexpected floating ScalarType in at::autocast::prioritize")
                args, kwargs = _cast(args, cur), _cast(kwargs, cur)
        if base == "lstm_cell" and _eligible(args[0]) and args[0].dtype in (torch.bfloat16, torch.float16):
            return _rounded_lstm_cell(*args, **kwargs)
        if base in ("lstm", "lstm_cell"):
            x, hx, params = _lstm_tensors(args) if base == "lstm" else (args[0], args[1], args[2:])
            fl = [t for t in tree_leaves((x, hx, params)) if isinstance(t, torch.Tensor) and t.is_floating_point()]
            kinds = {t.dtype for t in fl}
            if len(kinds) == 1 and next(iter(kinds)) in (torch.bfloat16, torch.float16):
                if base == "lstm" and not isinstance(args[1], torch.Tensor) and not kwargs:   # not packed
                    return _lstm_by_step(*args)
                return _fp32_compute(func, args, kwargs, next(iter(kinds)))
        return func(*args, **kwargs)


def recompute_with_modes(real):
    """Autograd runs backward with the torch-function mode stack empty (every mode's handler pops
    itself while it runs ``Tensor.backward``), so a checkpoint's recompute would escape the
    emulation (CUDA autocast is a dispatcher state and applies there). Re-push the emulator's modes
    around the recompute."""
    def run(fn, *args, **kwargs):
        stack = torch.overrides._get_current_function_mode_stack()
        if any(isinstance(m, AutocastMode) for m in stack):
            return real(fn, *args, **kwargs)
        with contextlib.ExitStack() as es:
            if not any(isinstance(m, _Mode) for m in stack):
                es.enter_context(_Mode())
            es.enter_context(AutocastMode())
            return real(fn, *args, **kwargs)
    return run
