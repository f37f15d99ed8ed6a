"""Where a training step spends its time, for the benches' ``--profile N``: N calls of ``step``
under torch.profiler; the ops (CPU) or kernels (CUDA) with the most self time; and, on CUDA, the
kernel launches per step and the calls that make the host wait for the device (a step with none
is free of host synchronisation). Shared by bench_lm_train.py and bench_las.py."""
from __future__ import annotations

import time

import torch

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def timed(step, tokens, steps, warmup=1, sync=lambda: None) -> float:
    """Tokens (or utterances) per second of ``steps`` calls of ``step()`` that handle ``tokens`` each,
    after ``warmup`` calls; ``sync`` waits for queued device work before the clock is read."""
    for _ in range(warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return tokens * steps / (time.perf_counter() - t)


def count_ops(step) -> int:
    """PyTorch operators one call of ``step()`` dispatches (forward, backward, optimizer; views
    included): on a GPU, where small steps wait on the host, its kernel launches follow this count,
    and it is the same on every device, so it can be compared on a CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))
    with Count() as counter:
        step()
    return counter.n


def profile_steps(step, steps: int, device: torch.device, label: str, warmup: int = 2, top: int = 15,
                  per: tuple[int, str] | None = None) -> None:
    """Print the profile of ``steps`` calls of ``step()`` on ``device`` (after ``warmup`` calls);
    ``per = (count, unit)`` also prints the operators per unit (e.g. per output character)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)
    wall_ms = 1e3 / timed(step, 1, steps, warmup, sync)                 # without the profiler
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync()
    ev = every = prof.key_averages()
    if cuda:    # the kernels, copies and fills themselves (a CPU op's entry would count its kernels twice)
        key, ev = "self_device_time_total", [e for e in ev if str(getattr(e, "device_type", "")).endswith("CUDA")]
    else:
        key = "self_cpu_time_total"
    busy = sum(getattr(e, key, 0) for e in ev) / 1e3 / steps
    print(f"# profile of {steps} training steps of {label} ({device}): {wall_ms:.2f} ms per step without the "
          f"profiler; " + (f"GPU busy {busy:.2f} ms per step (the rest of the step the GPU waits for the host)" if cuda
                           else f"CPU ops' self time {busy:.2f} ms per step"))
    for e in sorted(ev, key=lambda e: getattr(e, key, 0), reverse=True)[:top]:
        t_ms = getattr(e, key, 0) / 1e3 / steps
        print(f"#   {100 * t_ms / max(busy, 1e-9):5.1f}%  {t_ms:8.2f} ms/step  {e.count / steps:6.1f} calls/step  {e.key[:90]}")
    waits = dict.fromkeys(WAITS, 0)
    launches = 0
    for e in every:
        if e.key in waits:
            waits[e.key] += e.count
        if e.key in LAUNCHES:
            launches += e.count
    ops = count_ops(step)
    print(f"# per step: {ops} PyTorch operators dispatched (views included)"
          + (f", {ops / per[0]:.1f} per {per[1]} ({per[0]} a step)" if per else ""))
    if cuda:
        print(f"# per step: {launches / steps:.0f} kernel launches; host waits: "
              + ", ".join(f"{k} {v / steps:g}" for k, v in waits.items()) + " (the last sync() of the loop counts once)")
