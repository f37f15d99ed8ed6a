"""Progress of every long phase: a tqdm bar on a terminal, and otherwise (nohup, CI, a notebook's
log) one status line every ``LSTMKIT_STATUS_SECONDS`` seconds (default 60)::

    epoch 1: 1,200/13,674 steps (8.8%) | loss 5.123 | 4,210 tokens/s | 4m12s elapsed | ETA 43m40s
"""
from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """``update(n, amount, **postfix)`` after each step; ``amount`` counts what the rate is of
    (tokens, utterances; default the steps). ``close()`` at the end.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> p = Progress(4, "eval", unit="windows", rate_unit="tokens/s", every=0.0, stream=out)
        >>> p.update(2, amount=100, loss=1.5); p.close()
        >>> out.getvalue().startswith("eval: 2/4 windows (50.0%) | loss 1.5")
        True
    """

    def __init__(self, total: int | None, desc: str, unit: str = "steps", rate_unit: str | None = None,
                 initial: int = 0, every: float | None = None, stream=None, enabled: bool = True):
        self.total, self.desc, self.unit, self.rate_unit = total, desc, unit, rate_unit or f"{unit}/s"
        self.stream = stream or sys.stderr
        self.n, self.start_n, self.amount = initial, initial, 0.0
        self.t0 = self.t_last = time.time()
        self.every = float(os.environ.get("LSTMKIT_STATUS_SECONDS", 60)) if every is None else every
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, mininterval=2.0,
                        file=self.stream) if enabled and tty else None
        self.lines = enabled and not tty
        self.postfix: dict = {}

    def update(self, n: int = 1, amount: float | None = None, **postfix) -> None:
        self.n += n
        self.amount += n if amount is None else amount
        if postfix:
            self.set_postfix(**postfix)
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.time() - self.t_last >= self.every:
            self.print_status()

    def set_postfix(self, **postfix) -> None:
        """Values shown after the count (loss, perplexity ...) from now on."""
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in self.postfix.items()})

    def print_status(self) -> None:
        now = time.time()
        elapsed = now - self.t0
        done = f"{self.n:,}/{self.total:,} {self.unit} ({100 * self.n / max(self.total, 1):.1f}%)" if self.total \
            else f"{self.n:,} {self.unit}"
        parts = [f"{self.desc}: {done}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(f"{self.amount / max(elapsed, 1e-9):,.0f} {self.rate_unit}")
        parts.append(f"{_clock(elapsed)} elapsed")
        if self.total and self.n > self.start_n:
            rate = elapsed / (self.n - self.start_n)
            parts.append(f"ETA {_clock(rate * max(self.total - self.n, 0))}")
        print(" | ".join(parts), file=self.stream, flush=True)
        self.t_last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.n and time.time() - self.t0 >= self.every:
            self.print_status()
