"""AR/TAR penalties (section 4.6) and NT-ASGD (section 3) for AWD-LSTM.

NT-ASGD is plain SGD until validation stops improving (the non-monotone trigger below), then
the same SGD steps continue while an average of the iterates is kept; validation, test and the
saved "best" model use the averaged weights. The average is over the iterates after each step
since the switch, ``(w_1 + ... + w_k) / k``. Algorithm 1 of the paper also counts the weights at
the switch, ``w_0``; the paper's code (``torch.optim.ASGD`` with ``t0=0, lambd=0``) leaves out
``w_1`` as well, because its averaging weight ``mu`` lags one step. After the thousands of steps
between validations the three differ by O(1/k).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch

from ..core.train import fusable


def activation_regularization(dropped: torch.Tensor, alpha: float) -> torch.Tensor:
    """AR: ``alpha * mean(m * h_t ** 2)`` on the last layer's *dropped* outputs (N, T, H)."""
    return alpha * dropped.float().pow(2).mean()


def temporal_activation_regularization(raw: torch.Tensor, beta: float) -> torch.Tensor:
    """TAR: ``beta * mean((h_t - h_{t+1}) ** 2)`` on the last layer's *raw* outputs (N, T, H)."""
    if raw.size(1) < 2:
        return raw.new_zeros((), dtype=torch.float32)
    return beta * (raw[:, 1:].float() - raw[:, :-1].float()).pow(2).mean()     # the difference in fp32 too


def should_switch_to_asgd(val_losses: Sequence[float], nonmono: int) -> bool:
    """The non-monotone trigger (Algorithm 1 of the paper; salesforce/awd-lstm-lm main.py):
    ``val_losses[-1]`` is the newest check; switch when more than ``nonmono`` checks came before it
    and it is worse than the best of those earlier checks except the last ``nonmono`` of them.

    >>> should_switch_to_asgd([5.0, 3.9, 4.0, 3.95, 3.96, 3.97, 3.98, 3.99], nonmono=5)
    True
    >>> should_switch_to_asgd([5.0, 3.9, 3.95, 3.96, 3.97, 3.98, 3.99], nonmono=5)   # 3.9 is among the last 5
    False
    >>> should_switch_to_asgd([5.0, 4.0, 3.9, 3.8], nonmono=5)
    False
    """
    *earlier, newest = val_losses
    if len(earlier) <= nonmono:
        return False
    return newest > min(earlier[:-nonmono])


class NTASGD:
    """SGD with weight decay that starts iterate averaging when :func:`should_switch_to_asgd` fires.

    Call :meth:`step` after each backward, :meth:`check` after each validation, and use
    ``with opt.averaged():`` to evaluate with the averaged weights.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0,
                 nonmono: int = 5, enabled: bool = True):
        self.params = [p for p in params if p.requires_grad]
        # fused: the update can be skipped on the device (step_if), bit-identical to plain SGD
        self.inner = torch.optim.SGD(self.params, lr=lr, weight_decay=weight_decay, fused=fusable(self.params))
        self.base_lr = lr
        self.nonmono = nonmono
        self.enabled = enabled
        self.averaging = False
        self.switch_epoch: int | None = None
        self.n_avg = 0
        self.avg: list[torch.Tensor] = []

    # torch.optim-like surface so core.train.train_step can drive it
    @property
    def param_groups(self):
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def set_lr_scale(self, scale: float) -> None:
        """Learning rate for this window: ``base_lr * seq_len / bptt`` (section 4.1)."""
        for g in self.inner.param_groups:
            g["lr"] = self.base_lr * scale

    def step(self) -> None:
        self.inner.step()
        if self.averaging:
            self.n_avg += 1
            with torch.no_grad():
                for a, p in zip(self.avg, self.params):
                    a.add_(p.detach() - a, alpha=1.0 / self.n_avg)

    def step_if(self, ok: torch.Tensor) -> None:
        """:meth:`step` when the 0-dim bool tensor ``ok`` is true, else nothing - decided on the
        device, without reading ``ok`` (:func:`lstmkit.core.train.device_step`). The averaging
        count lives on the device too (``n_avg`` reads it)."""
        if not self.inner.defaults.get("fused"):
            raise ValueError("NTASGD.step_if needs parameters a fused optimizer supports (CPU/CUDA floating point)")
        self.inner.grad_scale, self.inner.found_inf = None, (~ok).to(torch.float32)
        try:
            self.inner.step()
        finally:
            del self.inner.grad_scale, self.inner.found_inf
        if self.averaging:
            n = self._n_avg_tensor(ok.device).add_(ok.to(torch.float64))
            w = (ok.to(torch.float64) / n.clamp(min=1.0)).to(self.avg[0].dtype)   # 1/n after a step, 0 if skipped
            with torch.no_grad():
                torch._foreach_add_(self.avg, torch._foreach_mul(torch._foreach_sub([p.detach() for p in self.params],
                                                                                   self.avg), w))

    def _n_avg_tensor(self, device) -> torch.Tensor:
        if not isinstance(self._n_avg, torch.Tensor):
            # torch.full, not torch.tensor(value, device=...): that one copies from the host and waits
            self._n_avg = torch.full((), float(self._n_avg), dtype=torch.float64, device=device)
        return self._n_avg

    @property
    def n_avg(self) -> int:
        """Averaged steps so far (reads the device counter when there is one)."""
        return int(self._n_avg.item()) if isinstance(self._n_avg, torch.Tensor) else self._n_avg

    @n_avg.setter
    def n_avg(self, value: int) -> None:
        self._n_avg = int(value)

    def start_averaging(self, epoch: int | None = None) -> None:
        self.averaging, self.switch_epoch, self.n_avg = True, epoch, 0
        self.avg = [p.detach().clone() for p in self.params]

    def check(self, val_losses: Sequence[float], epoch: int | None = None) -> bool:
        """After a validation: switch to averaging if the trigger fires. Returns True on switch."""
        if self.enabled and not self.averaging and should_switch_to_asgd(val_losses, self.nonmono):
            self.start_averaging(epoch)
            return True
        return False

    @contextlib.contextmanager
    def averaged(self):
        """Temporarily load the averaged weights into the model (no-op before the switch)."""
        if not self.averaging or self.n_avg == 0:
            yield
            return
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.avg):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "averaging": self.averaging, "n_avg": self.n_avg,
                "switch_epoch": -1 if self.switch_epoch is None else self.switch_epoch,
                "avg": list(self.avg), "base_lr": self.base_lr}

    def load_state_dict(self, st: dict) -> None:
        self.inner.load_state_dict(st["inner"])
        self.averaging, self.n_avg = bool(st["averaging"]), int(st["n_avg"])
        self.switch_epoch = None if st["switch_epoch"] < 0 else int(st["switch_epoch"])
        self.avg = [a.clone() for a in st["avg"]]
        self.base_lr = float(st["base_lr"])


def lr_multiplier(step: int, total: int, warmup: int = 0, schedule: str = "constant", min_ratio: float = 0.0) -> float:
    """Learning-rate factor for optimizer step ``step`` (1-based) of ``total``: linear warm-up over
    the first ``warmup`` steps, then 1 (``constant``) or a half cosine from 1 down to ``min_ratio``
    at step ``total`` (``cosine``; Loshchilov & Hutter 2017, without restarts).

    >>> [round(lr_multiplier(s, 10, warmup=2, schedule="cosine"), 3) for s in (1, 2, 6, 10)]
    [0.5, 1.0, 0.5, 0.0]
    """
    if warmup and step <= warmup:
        return step / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    import math
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def averaging_start(total: int, last: float) -> int:
    """Steps after which schedule-based iterate averaging (``optim.average_last``) starts: the
    iterates after the last ``round(last * total)`` of ``total`` scheduled steps are averaged, and
    the non-monotone trigger is off (:func:`build_optimizer`). Tail averaging of a decaying
    schedule (Polyak and Juditsky 1992, as SWA uses it, Izmailov et al. 2018). ``total`` is the
    schedule's estimate (epochs x expected windows per epoch); a run whose random window lengths
    give a few more steps averages those too. Callers skip this when ``last`` is 0 (off).

    >>> averaging_start(100, 0.25), averaging_start(100, 0.3), averaging_start(10, 1.0)
    (75, 70, 0)
    """
    return total - round(last * total)


class AdamWrapper(NTASGD):
    """Adam instead of SGD, same averaging switch (not the paper's; handy for short CPU budgets)."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, nonmono: int = 5, enabled: bool = True):
        super().__init__(params, lr, weight_decay, nonmono, enabled)
        self.inner = torch.optim.Adam(self.params, lr=lr, weight_decay=weight_decay, fused=fusable(self.params))


class AdamWWrapper(NTASGD):
    """AdamW (decoupled weight decay, Loshchilov & Hutter 2019) with the same averaging switch - the
    large-batch GPU recipes' optimizer."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, nonmono: int = 5, enabled: bool = True):
        super().__init__(params, lr, weight_decay, nonmono, enabled)
        self.inner = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay, fused=fusable(self.params))


def build_optimizer(params, o) -> NTASGD:
    """The optimizer ``o`` (an :class:`lstmkit.lm.config.OptimConfig`) asks for: NT-ASGD (the paper),
    plain SGD (NT-ASGD with its averaging switch off), Adam or AdamW, each with the averaging switch.
    With ``o.average_last`` > 0 the schedule decides when averaging starts and the non-monotone
    trigger is off (an early trigger would mix the high-rate iterates into the tail's average)."""
    cls = {"adam": AdamWrapper, "adamw": AdamWWrapper}.get(o.optimizer, NTASGD)
    return cls(params, o.lr, o.weight_decay, o.nonmono, enabled=o.optimizer != "sgd" and not o.average_last)
