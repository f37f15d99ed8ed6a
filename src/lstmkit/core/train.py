"""One optimisation step, shared by every trainer: autocast forward, backward, global-norm
clipping, a NaN/inf guard that skips the step, and the optimizer step.

The epoch loops live in each model's trainer because what they carry between steps differs
(hidden state for the language model, teacher forcing for LAS); this is the part they share.
"""
from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .checkpoint import has_checkpoint
from .device import Runtime


@dataclass
class StepResult:
    loss: float          # the scalar that was minimised (nan when skipped)
    grad_norm: float     # global gradient norm before clipping
    skipped: bool        # True when the loss or gradient was not finite


def train_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
               params: Iterable[torch.nn.Parameter], clip: float, runtime: Runtime, sync: bool = False) -> StepResult:
    """Run ``loss_fn`` under autocast, backpropagate, clip to ``clip`` (0 = off) and step.

    A non-finite loss or gradient norm skips the update (gradients are cleared) and reports
    ``skipped=True``; the caller counts these and decides when to give up. ``sync`` (distributed
    training): always run the backward, whose gradient all-reduce every rank must join; a NaN on
    one rank then reaches every rank's gradient norm, so all of them skip the same step.
    """
    params = [p for p in params if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    with runtime.autocast():
        loss = loss_fn()
    value = float(loss.detach())
    if not math.isfinite(value) and not sync:
        return StepResult(value, float("nan"), True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    norm = float(norm)
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(value, norm, True)
    optimizer.step()
    return StepResult(value, norm, False)


def fusable(params: Iterable[torch.Tensor]) -> bool | None:
    """``fused=`` for a ``torch.optim`` optimizer over ``params``: True where fused kernels exist
    (floating-point CPU and CUDA tensors), None (torch's default) elsewhere."""
    params = list(params)
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


@dataclass
class DeviceStep:
    """What :func:`device_step` leaves on the device: read it only when needed (one sync for many steps)."""
    loss: torch.Tensor       # () the minimised scalar
    grad_norm: torch.Tensor  # () global gradient norm before clipping
    ok: torch.Tensor         # () bool: loss and gradient finite, update applied


def device_step(loss_fn: Callable[[], torch.Tensor], optimizer, params: Iterable[torch.nn.Parameter], clip: float,
                runtime: Runtime, agree: bool = False) -> DeviceStep:
    """:func:`train_step` without a host synchronisation: the finiteness check stays on the device
    and decides there whether the update is applied, so a GPU never waits for the CPU inside a step.

    ``optimizer`` either has ``step_if(ok)`` (:class:`lstmkit.lm.optim.NTASGD`) or is a fused
    ``torch.optim`` optimizer, which skips the whole update (moments and step count included) when
    its ``found_inf`` is set - the mechanism ``GradScaler`` uses. Same result as :func:`train_step`:
    a non-finite step changes nothing. Any other optimizer (a device without fused kernels) is
    stepped after reading ``ok`` on the host. ``agree`` (distributed training): the ranks take the
    minimum of their ``ok`` on the device, so a loss that is non-finite on one rank only skips the
    step on every rank and the replicas stay equal.
    """
    params = [p for p in params if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    with runtime.autocast():
        loss = loss_fn()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    ok = torch.isfinite(loss.detach()) & torch.isfinite(norm)
    if agree and torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = ok.to(torch.float32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        ok = flag > 0
    if hasattr(optimizer, "step_if"):
        optimizer.step_if(ok)
    elif all(g.get("fused") for g in optimizer.param_groups):
        optimizer.grad_scale, optimizer.found_inf = None, (~ok).to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif bool(ok):
        optimizer.step()
    return DeviceStep(loss.detach(), norm.detach(), ok)


def read_steps(pending: list[tuple[int, DeviceStep, torch.Tensor]], dist=None) -> list[tuple[int, float, float, bool, float]]:
    """The steps :func:`device_step` left on the device, read in one transfer: ``pending`` holds
    (step, result, extra scalar such as the cross-entropy part of the loss); returns (step, loss,
    grad_norm, ok, extra) per step. Under torchrun (``dist`` enabled) loss and extra are the means
    over the ranks, the global batch's numbers (``ok`` and the norm already agree)."""
    if not pending:
        return []
    vals = torch.stack([torch.stack([r.loss.float(), r.grad_norm.float(), r.ok.float(), extra.detach().float()])
                        for _, r, extra in pending]).cpu().double()
    if dist is not None and dist.enabled:
        from .distributed import all_sum
        summed = torch.tensor(all_sum(vals[:, [0, 3]].reshape(-1).tolist(), dist), dtype=torch.float64).view(-1, 2)
        vals[:, [0, 3]] = summed / dist.world
    return [(step, loss, norm, bool(ok), extra) for (step, _, _), (loss, norm, ok, extra) in zip(pending, vals.tolist())]


def weight_average(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s parameters (Polyak averaging with forgetting),
    as a :class:`torch.optim.swa_utils.AveragedModel`: call ``.update_parameters(model)`` after each
    optimizer step and evaluate ``.module``. The decay warms up as ``min(decay, (1 + n) / (10 + n))``
    after n updates, so early validations average recent steps instead of the initial weights.

    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> avg = weight_average(m, 0.5)
    >>> for w in (0.0, 1.0):
    ...     _ = m.weight.data.fill_(w); avg.update_parameters(m)
    >>> round(avg.module.weight.item(), 3)   # first update copies, then decay min(0.5, 2/11)
    0.818
    """
    def update(averaged, current, n):
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(averaged, current, 1.0 - d)
    averaged = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update)
    for m in averaged.modules():       # the copy's LSTM weights in one cuDNN buffer again (a no-op off CUDA)
        if isinstance(m, torch.nn.LSTM):
            m.flatten_parameters()
    return averaged


class Rewind(Exception):
    """Raised by a trainer after too many non-finite steps in a row: its ``fit`` loop reloads the
    last checkpoint and continues with a lower learning rate."""

    def __init__(self, step: int):
        super().__init__(f"non-finite steps up to step {step}")
        self.step = step


class RewindOnNonFinite:
    """Mixin for trainers: count skipped (non-finite) steps; after ``train.max_nonfinite`` in a row
    raise :class:`Rewind`, which the trainer's ``fit`` loop answers with :meth:`rewind`: reload the
    ``last`` checkpoint and go on with the learning rate x ``train.nonfinite_lr_factor``. After
    ``train.max_rewinds`` rewinds, give up with an error naming the checkpoint folder.

    Needs ``config.train``, ``run`` (a RunFolder), ``step``, ``nonfinite``, ``rewinds``, ``lr_factor``
    and ``_restore()`` (load ``last`` into the trainer).
    """

    def _on_nonfinite(self, res: StepResult, step: int | None = None) -> None:
        t = self.config.train
        step = self.step if step is None else step
        self.nonfinite += 1
        self.run.log_metrics({"type": "nonfinite", "step": step, "loss": res.loss, "grad_norm": res.grad_norm})
        if self.nonfinite < t.max_nonfinite:
            return
        if self.rewinds < t.max_rewinds and has_checkpoint(self.run.checkpoint_dir, "last"):
            raise Rewind(step)
        raise FloatingPointError(
            f"{self.nonfinite} non-finite losses/gradients in a row at step {step} after {self.rewinds} "
            f"rewinds; lower optim.lr or optim.clip; the last good checkpoint is in {self.run.checkpoint_dir}")

    def rewind(self, at_step: int) -> None:
        """Reload the last checkpoint and continue with the learning rate x ``nonfinite_lr_factor``."""
        factor, rewinds = self.lr_factor * self.config.train.nonfinite_lr_factor, self.rewinds + 1
        self._restore()
        self.lr_factor, self.rewinds, self.nonfinite = factor, rewinds, 0
        self.run.log_metrics({"type": "rewind", "at_step": at_step, "to_step": self.step, "lr_factor": factor,
                              "rewinds": rewinds})
        print(f"step {at_step}: {self.config.train.max_nonfinite} non-finite steps in a row; back to the checkpoint "
              f"of step {self.step} with learning rate x {factor:g}", flush=True)


class StopFlag:
    """Turns Ctrl-C (SIGINT) into a flag the loop checks between steps, so training ends at a
    step boundary with a checkpoint written. A second Ctrl-C interrupts immediately."""

    def __init__(self):
        self.stop = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            if self.stop:
                raise KeyboardInterrupt
            self.stop = True
        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not in the main thread
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
