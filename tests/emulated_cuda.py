"""A CUDA device emulated on a CPU, for the tests of device handling that CI can run.

Inside ``with emulated_cuda():`` PyTorch reports one CUDA device; tensors created on or moved to
``cuda`` keep their data on the CPU (CPU kernels compute, so numbers equal a CPU run's) but are
:class:`OnGPU` tensors that say ``device == cuda:0`` and enforce what a real GPU enforces of the
code around them:

- an op that mixes them with CPU tensors of one or more dimensions raises, as CUDA does (0-d CPU
  tensors, indexing with CPU indices and ``copy_`` across devices are allowed, as on CUDA);
- ``.numpy()`` / ``np.asarray`` refuse them; ``.cpu()`` / ``.to("cpu")`` give plain CPU tensors;
- ``torch.set_rng_state`` and ``torch.cuda.set_rng_state`` take host byte tensors only (the one
  emulated GPU is ``cuda:0``); ``torch.load(map_location="cuda")`` and safetensors'
  ``load_file(device="cuda")`` put every tensor on the device (``torch.save`` stores plain ones);
- sampling on the device with a CPU ``torch.Generator`` raises;
- an LSTM forward in inference mode that autograd records raises (cuDNN's backward refuses it);
- ``pin_memory()`` of a non-contiguous view raises (it would pin the whole storage it spans);
- with ``torch.cuda.set_sync_debug_mode("error")``, what makes the host wait for a GPU raises:
  reading values or copying them to the host, data-dependent sizes (``nonzero``, mask indexing),
  blocking copies to the device (``torch.tensor(..., device="cuda")``, ``.to("cuda")`` without
  ``non_blocking``).

What it cannot emulate: CUDA kernels and their limits (cuDNN; CUDA autocast only as a casting
policy, with ``amp=True``: tests/emulated_autocast.py), streams, several devices. The cuDNN weight
layout is replaced by the packed one (the flat-buffer path still runs). Those need a real GPU.
"""
from __future__ import annotations

import contextlib
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._pytree import tree_leaves, tree_map

CUDA = torch.device("cuda", 0)
_MIXING_ALLOWED = ("torch.Tensor.__getitem__", "torch.Tensor.__setitem__", "torch.Tensor.copy_", "torch.Tensor.to",
                   "torch.Tensor.cpu", "torch.Tensor.cuda", "torch.Tensor.set_", "torch.Tensor.index_put_",
                   "torch.Tensor.index_put")


def _is_cuda(d) -> bool:
    return isinstance(d, (str, torch.device)) and torch.device(d).type == "cuda"


def _name(func) -> str:
    return resolve_name(func) or getattr(func, "__qualname__", None) or repr(func)


class OnGPU(torch.Tensor):
    """CPU data that says it lives on ``cuda:0`` (see the module docstring)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name == "torch.Tensor.device.__get__":
            return CUDA
        if name == "torch.Tensor.is_cuda.__get__":
            return True
        if name == "torch.Tensor.is_cpu.__get__":
            return False
        if name == "torch.Tensor.get_device":
            return 0
        if name in ("torch.Tensor.numpy", "torch.Tensor.__array__"):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        if SYNC_MODE[0] == "error" and _reads_back(name, args, kwargs):
            raise RuntimeError(f"called a synchronizing CUDA operation: {name}")
        packed = "pack_padded_sequence" in name or "pad_packed_sequence" in name or \
            (name == "torch.lstm" and isinstance(args[1], torch.Tensor))
        if name not in _MIXING_ALLOWED and "shallow_copy" not in name and "swap" not in name:
            checked = (args[0],) + tuple(args[2:]) if packed else args    # packed lengths/batch sizes: host data on CUDA too
            if any(isinstance(t, torch.Tensor) and not isinstance(t, OnGPU) and t.dim() > 0
                   for t in tree_leaves((checked, kwargs))):
                raise RuntimeError(f"{name}: Expected all tensors to be on the same device, but found at least two "
                                   "devices, cuda:0 and cpu!")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if name == "torch.Tensor.cpu" or (name == "torch.Tensor.to" and _target(args, kwargs) == "cpu"):
            return tree_map(plain, out)
        if name == "torch.Tensor.__setitem__":
            return out
        if packed and "lstm" not in name:                     # (data on the device, sizes on the host)
            return (torch._tensor._convert(out[0], cls),) + tuple(out[1:])
        return torch._tensor._convert(out, cls)

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        with torch._C.DisableTorchFunctionSubclass():
            out = self.detach().clone().as_subclass(OnGPU)
        if getattr(self, "_is_param", False):
            out = torch.nn.Parameter(out, self.requires_grad)
        elif self.requires_grad:
            out.requires_grad_(True)
        memo[id(self)] = out
        return out


_READS = {f"torch.Tensor.{m}" for m in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu",
                                         "nonzero", "masked_select", "unique", "__repr__", "__format__")} | \
    {"torch.nonzero", "torch.masked_select", "torch.unique", "torch.argwhere", "torch.Tensor.argwhere"}


def _reads_back(name: str, args, kwargs) -> bool:
    """Whether a call on a device tensor makes the host wait for the GPU (what CUDA's sync debug
    mode reports): reading values, copying to the host, ops whose output size depends on the data
    (``nonzero``, boolean-mask indexing)."""
    if name in _READS or (name == "torch.Tensor.to" and _target(args, kwargs) == "cpu"):
        return True
    if name == "torch.Tensor.__getitem__":
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in tree_leaves(args[1:]))
    return False


def plain(t):
    """An :class:`OnGPU` tensor's data as an ordinary CPU tensor (anything else unchanged)."""
    return t.as_subclass(torch.Tensor) if isinstance(t, OnGPU) else t


def on_gpu(t):
    return t.as_subclass(OnGPU) if isinstance(t, torch.Tensor) and not isinstance(t, OnGPU) else t


def _target(args, kwargs) -> str | None:
    """The device type a ``Tensor.to`` call moves to (None: it keeps the device)."""
    d = kwargs.get("device")
    for a in args[1:]:
        if isinstance(a, (str, torch.device)):
            d = a
        elif isinstance(a, torch.Tensor):
            d = "cuda" if isinstance(a, OnGPU) else "cpu"
    return None if d is None else torch.device(d).type


def _check_cudnn_lstm(args) -> None:
    """cuDNN's RNN backward refuses a forward run in inference mode (``train=False``): raise when
    such a forward is recorded for a backward (here at the forward, on CUDA at the backward)."""
    packed = isinstance(args[1], torch.Tensor)              # lstm(data, batch_sizes, hx, params, ..., train, ...)
    x, params, train = args[0], args[3] if packed else args[2], args[7] if packed else args[6]
    if isinstance(x, OnGPU) and not train and torch.is_grad_enabled() and \
            (x.requires_grad or any(w.requires_grad for w in params)):
        raise RuntimeError("cudnn RNN backward can only be called in training mode")


class _Mode(TorchFunctionMode):
    """Creates on the CPU what is asked for on ``cuda`` and marks it :class:`OnGPU`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)
        if name == "torch.Tensor.pin_memory":
            if not args[0].is_contiguous():        # real, but wasteful: it pins the view's whole storage span
                raise AssertionError("pin_memory() of a non-contiguous view pins the whole storage it spans")
            return args[0]
        kwargs.pop("pin_memory", None)             # page-locked host memory: nothing to emulate
        if name in ("torch.Tensor.to", "torch.Tensor.cuda") and (name == "torch.Tensor.cuda" or _target(args, kwargs) == "cuda"):
            rest = ["cpu" if _is_cuda(a) else plain(a) for a in args[1:]] if name == "torch.Tensor.to" else []
            if SYNC_MODE[0] == "error" and not isinstance(args[0], OnGPU) and not kwargs.get("non_blocking"):
                raise RuntimeError("called a synchronizing CUDA operation: a blocking copy to the GPU")
            kwargs.pop("non_blocking", None)
            if "device" in kwargs:
                kwargs["device"] = "cpu"
            with torch._C.DisableTorchFunctionSubclass():
                out = torch.Tensor.to(args[0], *rest, **kwargs) if rest or kwargs else args[0]
            return on_gpu(out)
        if name == "torch.lstm":
            _check_cudnn_lstm(args)
        gpu = _is_cuda(kwargs.get("device"))
        if gpu and SYNC_MODE[0] == "error" and name in ("torch.tensor", "torch.as_tensor") and \
                not isinstance(args[0], OnGPU):         # copies host data with a blocking copy
            raise RuntimeError(f"called a synchronizing CUDA operation: {name}(..., device='cuda')")
        if gpu:
            kwargs["device"] = "cpu"
            g = kwargs.get("generator")
            if g is not None and not getattr(g, "for_gpu", False):
                raise RuntimeError("Expected a 'cuda' device type for generator but found 'cpu'")
        out = func(*args, **kwargs)
        return tree_map(on_gpu, out) if gpu else out


def _set_rng_state_host_only(real):
    def set_state(state):
        if type(state) is not torch.Tensor or state.dtype != torch.uint8:
            raise TypeError("RNG state must be a torch.ByteTensor")
        return real(state)
    return set_state


SYNC_MODE = ["default"]     # torch.cuda.set_sync_debug_mode: "error" makes every host wait raise
CUDA_RNG = [torch.zeros(16, dtype=torch.uint8)]   # the emulated GPU generator's state (draws use the CPU's)


def _set_sync_mode(mode) -> None:
    SYNC_MODE[0] = {0: "default", 1: "warn", 2: "error"}.get(mode, mode)


def _set_cuda_rng_state(state, device="cuda"):
    if type(state) is not torch.Tensor or state.dtype != torch.uint8:
        raise TypeError("RNG state must be a torch.ByteTensor")
    if torch.device(device).type != "cuda" or (torch.device(device).index or 0) != 0:
        raise RuntimeError(f"invalid device {device} (one emulated GPU, cuda:0)")
    CUDA_RNG[0] = state.clone()


class _Generator(torch.Generator):
    """``torch.Generator(device="cuda")``: a CPU generator that remembers it was asked for the GPU."""

    def __new__(cls, device="cpu"):
        return super().__new__(cls, device="cpu")

    def __init__(self, device="cpu"):
        self.for_gpu = _is_cuda(device)


def _loader(real, key):
    def load(*args, **kwargs):
        to_gpu = _is_cuda(kwargs.get(key))
        if to_gpu:
            kwargs[key] = "cpu"
        out = real(*args, **kwargs)
        return tree_map(on_gpu, out) if to_gpu else out
    return load


_save = torch.save


def _grouping(real):
    """PyTorch's grouping of tensors by (device, dtype) for its multi-tensor kernels keys by the real
    device (the CPU here); key the groups of device tensors by ``cuda:0``, as on a GPU, so that what
    PyTorch moves "to the group's device" (clipping's norms) stays there."""
    def group(tensorlistlist, with_indices=False):
        out = real(tensorlistlist, with_indices)
        fixed = {}
        for (device, dtype), value in out.items():
            lists = value[0]
            gpu = any(isinstance(t, OnGPU) for t in lists[0] if t is not None) if lists and lists[0] else False
            fixed[(CUDA if gpu else device, dtype)] = value
        return fixed
    return group


def _swapping(real):
    """``Module._apply`` (``.to``, ``.cuda``) that swaps parameters for the converted ones, so that
    they become :class:`OnGPU` tensors (assigning ``.data`` would keep the plain tensor type)."""
    def apply(self, *args, **kwargs):
        old = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            return real(self, *args, **kwargs)
        finally:
            torch.__future__.set_swap_module_params_on_conversion(old)
    return apply


@contextlib.contextmanager
def emulated_cuda(amp: bool = False):
    """PyTorch with one emulated CUDA device, for the block (everything is restored after).

    ``amp``: a GPU with bf16 units (precision ``auto`` resolves to bf16) and CUDA autocast's casting
    policy applied to the emulated tensors, with the rounding a GPU does (tests/emulated_autocast.py)."""
    import safetensors.torch

    import lstmkit.core.checkpoint as checkpoint
    import lstmkit.nn.weight_drop as weight_drop
    patches = [
        mock.patch.object(torch.nn.Module, "_apply", _swapping(torch.nn.Module._apply)),
        mock.patch("torch.nn.utils.clip_grad._group_tensors_by_device_and_dtype",
                   _grouping(torch.utils._foreach_utils._group_tensors_by_device_and_dtype)),
        mock.patch("torch.optim.optimizer._group_tensors_by_device_and_dtype",
                   _grouping(torch.utils._foreach_utils._group_tensors_by_device_and_dtype)),
        mock.patch("torch.cuda.is_available", lambda: True),
        mock.patch("torch.backends.cudnn.is_acceptable", lambda tensor: False),   # no cuDNN here (a CUDA build
        mock.patch("torch.backends.cudnn.is_available", lambda: False),          # without a GPU has one)
        mock.patch("torch.cuda.device_count", lambda: 1),
        mock.patch("torch.cuda.is_current_stream_capturing", lambda: False),
        mock.patch("torch.cuda.current_device", lambda: 0),
        mock.patch("torch.cuda.set_device", lambda device: None),
        mock.patch("torch.cuda.get_device_capability", lambda device=None: (9, 0) if amp else (7, 5)),
        mock.patch("torch.cuda.is_bf16_supported", lambda *a, **k: amp),    # without amp: precision auto = fp32
        mock.patch("torch.cuda.synchronize", lambda device=None: None),
        mock.patch("torch.cuda.empty_cache", lambda: None),
        mock.patch("torch.cuda.reset_peak_memory_stats", lambda device=None: None),
        mock.patch("torch.cuda.memory_allocated", lambda device=None: 0),
        mock.patch("torch.cuda.max_memory_allocated", lambda device=None: 0),
        mock.patch("torch.cuda.set_sync_debug_mode", _set_sync_mode),
        mock.patch("torch.cuda.get_sync_debug_mode", lambda: {"default": 0, "warn": 1, "error": 2}[SYNC_MODE[0]]),
        mock.patch("torch.cuda.get_rng_state", lambda device="cuda": CUDA_RNG[0].clone()),
        mock.patch("torch.cuda.set_rng_state", _set_cuda_rng_state),
        mock.patch("torch.set_rng_state", _set_rng_state_host_only(torch.set_rng_state)),
        mock.patch("torch.Generator", _Generator),
        mock.patch("torch.load", _loader(torch.load, "map_location")),
        mock.patch("torch.save", lambda obj, *a, **k: _save(tree_map(plain, obj), *a, **k)),
        mock.patch.object(checkpoint, "load_file", _loader(safetensors.torch.load_file, "device")),
        mock.patch.object(weight_drop, "cudnn_layout", lambda module, dtype: weight_drop.FlatLayout.packed(module._flat_weights)),
    ]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        stack.enter_context(_Mode())
        if amp:
            import torch.utils.checkpoint as checkpointing

            from emulated_autocast import AutocastMode, recompute_with_modes
            stack.enter_context(mock.patch.object(checkpointing, "_run_fn_with_dynamo_disabled",
                                                  recompute_with_modes(checkpointing._run_fn_with_dynamo_disabled)))
            stack.enter_context(AutocastMode())
        try:
            yield
        finally:
            SYNC_MODE[0] = "default"


# a test's device parameter: the real devices present, and "emulated" (this module's GPU) where
# there is no real one
WITH_EMULATED = ["cpu"] + (["cuda"] if torch.cuda.is_available() else ["emulated"])


def on(device: str):
    """``(the device a config names, the context to run in)`` for a :data:`WITH_EMULATED` value."""
    if device != "emulated":
        return device, contextlib.nullcontext()
    return "cuda", emulated_cuda()
