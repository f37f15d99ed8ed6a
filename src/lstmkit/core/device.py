"""Device, autocast dtype and thread settings, chosen once per run (never at import)."""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


@functools.lru_cache(maxsize=None)
def cpu_bf16_lstm_works() -> bool:
    """Whether this CPU's LSTM kernel (oneDNN) runs under bf16 autocast: on CPUs without bf16 or
    AVX-512 units it cannot build its bf16 primitive and fails at the first forward. Probed once
    with a one-step LSTM (a few microseconds)."""
    lstm = torch.nn.LSTM(4, 4)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 1, 4))
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class Runtime:
    """Where and how to compute: ``device`` and the autocast dtype (``None`` = fp32)."""

    device: torch.device
    amp_dtype: torch.dtype | None

    def autocast(self, enabled: bool = True):
        """Autocast context for the forward pass; fp32 master weights stay untouched."""
        if self.amp_dtype is None or not enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def cuda_has_fast_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes bf16 in hardware (Ampere, compute capability 8.0, and
    later). ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated (V100, T4:
    slower than fp32 there) and asks the current device, not ``device``."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def pick_runtime(device: str = "auto", precision: str = "auto", threads: int = 0, deterministic: bool = False,
                 where: str = "train.precision", device_where: str = "train.device") -> Runtime:
    """Resolve ``device`` ('auto'|'cpu'|'cuda'|'cuda:1') and ``precision`` ('auto'|'fp32'|'bf16').

    'auto' precision uses bf16 autocast on CUDA with bf16 support and on CPUs with AMX/AVX512-BF16.
    ``threads`` > 0 sets torch's intra-op threads (0 keeps torch's default). ``deterministic``:
    ask cuBLAS for its reproducible workspace (it must be set before cuBLAS starts, so here, not
    in :func:`deterministic_mode`). ``where`` / ``device_where`` name the precision and device
    settings in errors (config fields or flags).
    """
    from ..errors import InputError
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise InputError(device_where, f"found {device!r}", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(device_where, f"'{device}' requested but CUDA is not available", "'cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(device_where, f"'{device}', but this machine has {torch.cuda.device_count()} GPU(s)",
                         f"cuda:0 ... cuda:{torch.cuda.device_count() - 1}")
    if threads > 0:
        torch.set_num_threads(threads)
    if precision == "auto":
        fast = cuda_has_fast_bf16(dev) if dev.type == "cuda" else cpu_has_fast_bf16() and cpu_bf16_lstm_works()
        precision = "bf16" if fast and not os.environ.get("LSTMKIT_FP32") else "fp32"
    elif precision == "bf16" and dev.type == "cpu" and not cpu_bf16_lstm_works():
        raise InputError(where, "'bf16', but this CPU's LSTM kernel (oneDNN) has no bf16 path (no "
                         "AVX-512/AMX units)", "'auto' (fp32 here) or 'fp32'")
    return Runtime(dev, torch.bfloat16 if precision == "bf16" else None)


@contextlib.contextmanager
def deterministic_mode(enabled: bool):
    """Inside: PyTorch's deterministic kernels (``torch.use_deterministic_algorithms``, cuDNN
    deterministic, no cuDNN benchmark), so that on a GPU two runs of one config, and a resumed run
    and an uninterrupted one, give the same losses bit for bit (a CPU run already does). Ops with no
    deterministic CUDA kernel (CTC loss backward) warn instead of failing. The previous settings
    come back on exit: nothing global is left behind.

    >>> with deterministic_mode(True):
    ...     torch.are_deterministic_algorithms_enabled()
    True
    >>> torch.are_deterministic_algorithms_enabled()
    False
    """
    if not enabled:
        yield
        return
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[2], old[3]


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor (a training batch) on ``device`` without making the host wait for the GPU.

    A plain ``t.to("cuda")`` copies and then waits for the stream - for every kernel still queued
    from the previous step - so the CPU cannot prepare the next step while the GPU works: a host
    synchronisation per step. On CUDA the batch goes into page-locked memory (PyTorch's caching
    host allocator keeps the block until the copy is done) and is sent with ``non_blocking``;
    anywhere else this is ``t.to(device)``.

    >>> to_device(torch.arange(6).view(2, 3)[:, 1:], "cpu").tolist()
    [[1, 2], [4, 5]]
    """
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    # a new page-locked block of the window's own size: ``t.pin_memory()`` of a window (a strided
    # view into the whole token matrix) pins a block as large as the span of the view's storage,
    # i.e. nearly the whole corpus, and a non-contiguous source would go through a pageable copy
    pinned = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return pinned.copy_(t).to(device, non_blocking=True)
