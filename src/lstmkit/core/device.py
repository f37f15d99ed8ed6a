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


def pick_runtime(device: str = "auto", precision: str = "auto", threads: int = 0, deterministic: bool = False,
                 where: str = "train.precision") -> Runtime:
    """Resolve ``device`` ('auto'|'cpu'|'cuda'|'cuda:1') and ``precision`` ('auto'|'fp32'|'bf16').

    'auto' precision uses bf16 autocast on CUDA with bf16 support and on CPUs with AMX/AVX512-BF16.
    ``threads`` > 0 sets torch's intra-op threads (0 keeps torch's default). ``deterministic``:
    ask cuBLAS for its reproducible workspace (it must be set before cuBLAS starts, so here, not
    in :func:`deterministic_mode`). ``where`` names the setting in errors (a config field or a flag).
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from ..errors import InputError
        raise InputError("train.device", f"'{device}' requested but CUDA is not available", "'cpu' or 'auto'")
    if threads > 0:
        torch.set_num_threads(threads)
    if precision == "auto":
        fast = torch.cuda.is_bf16_supported() if dev.type == "cuda" else cpu_has_fast_bf16() and cpu_bf16_lstm_works()
        precision = "bf16" if fast and not os.environ.get("LSTMKIT_FP32") else "fp32"
    elif precision == "bf16" and dev.type == "cpu" and not cpu_bf16_lstm_works():
        from ..errors import InputError
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
    return t.pin_memory().to(device, non_blocking=True)
