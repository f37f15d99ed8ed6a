"""Multi-process training with PyTorch's own engine: ``torchrun`` starts the processes,
``torch.distributed`` connects them (gloo on CPU; on CUDA nccl for the gradients and gloo for
host numbers, picked automatically) and
``DistributedDataParallel`` averages the gradients during the backward pass.

Nothing here starts processes or reads a config: under ``torchrun`` the environment holds
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without it every helper is a no-op for one process.
The trainers use these pieces:

* :func:`init_distributed` - join the process group once; :class:`Dist` says who we are.
* :class:`Objective` - the model and its loss as one ``nn.Module``, so that DDP sees a single
  forward per step (the loss needs more than ``model(x)``).
* :func:`all_sum` / :func:`any_rank` - agree on a few numbers (losses, counts, "stop now").
* :func:`gather_rows` / :func:`broadcast` - hidden states to rank 0 for its checkpoint; the run
  folder's path from rank 0.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as tdist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes the run folder."""
        return self.rank == 0

    def rows(self, n: int, where: str = "data.batch_size") -> slice:
        """The contiguous share of ``n`` rows (streams, utterances) this rank owns; ``n`` must divide."""
        if n % self.world:
            from ..errors import InputError
            raise InputError(where, f"{n} rows for {self.world} processes", f"a multiple of {self.world}")
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)


def process_group_backend(cuda: bool) -> str:
    """The ``init_process_group`` backend: gloo for CPU tensors, plus nccl for CUDA tensors when
    training on GPUs. nccl alone cannot reduce CPU tensors, and the trainers agree on host numbers
    (losses, counts, "stop now": :func:`all_sum`, :func:`any_rank`) with CPU tensors.

    >>> process_group_backend(True), process_group_backend(False)
    ('cpu:gloo,cuda:nccl', 'gloo')
    """
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (once per process);
    a single process without ``WORLD_SIZE`` gets ``Dist()``. Backend: :func:`process_group_backend`
    (nccl for the gradients when training on CUDA, gloo for the CPU numbers)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local)
        tdist.init_process_group(process_group_backend(cuda))
    return Dist(tdist.get_rank(), tdist.get_world_size(), local)


def close_distributed() -> None:
    """Leave the process group (end of a torchrun process): without it, gloo's worker threads can
    abort the interpreter at exit ("terminate called without an active exception")."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def device_for(dist: Dist, device: str) -> str:
    """``cuda`` means this rank's own GPU (``cuda:<local_rank>``) under torchrun."""
    if dist.enabled and (device == "cuda" or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{dist.local_rank}"
    return device


class Objective(nn.Module):
    """``Objective(model, fn)(*args) == fn(model, *args)``: the whole loss as one module forward,
    which is what :class:`~torch.nn.parallel.DistributedDataParallel` needs to hook the backward."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(self.model, *args)


def wrap(objective: Objective, dist: Dist, find_unused: bool = False) -> nn.Module:
    """DDP around ``objective`` when there are several processes; the objective itself otherwise."""
    if not dist.enabled:
        return objective
    dev = next(objective.parameters()).device
    ids = [dev.index] if dev.type == "cuda" else None
    import inspect
    ddp = nn.parallel.DistributedDataParallel
    # the models hold no buffers that need syncing; newer torch names the switch forward_sync_buffers
    # (and warns on broadcast_buffers), older torch knows only broadcast_buffers
    new = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if new else {"broadcast_buffers": False}
    return ddp(objective, device_ids=ids, find_unused_parameters=find_unused, **no_sync)


def all_sum(values: Sequence[float], dist: Dist, device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    if not dist.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, dist: Dist, device: torch.device | str = "cpu") -> bool:
    """True on every rank when it is true on any (a time budget or Ctrl-C seen by one process)."""
    return bool(all_sum([1.0 if flag else 0.0], dist, device)[0] > 0) if dist.enabled else flag


def gather_rows(t: torch.Tensor, dist: Dist, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's ``t`` along ``dim`` in rank order (same shapes on every rank)."""
    if not dist.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.world)]
    tdist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim)


def broadcast(obj: Any, dist: Dist) -> Any:
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if not dist.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    if dist.enabled:
        tdist.barrier()
