"""Number types for the command line: every flag refuses what makes no sense for it (0, negative,
nan, inf, huge) with one line naming the flag, and the parser prints that one line, no usage dump.

>>> positive_int("3"), unit_interval("0.5"), float_list("0.1,0.2")
(3, 0.5, [0.1, 0.2])
>>> positive_int("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: found 0; expected an integer >= 1
"""
from __future__ import annotations

import argparse
import math
import sys

MAX_NEW_TOKENS = 100_000


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line on stderr and exit status 2, and whose help shows
    every flag's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _int(text: str, lo: int, hi: int | None = None) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"found {text!r}; expected an integer") from None
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi:,}]"
        raise argparse.ArgumentTypeError(f"found {v}; expected an integer {rng}")
    return v


def _float(text: str, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"found {text!r}; expected a number") from None
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise argparse.ArgumentTypeError(f"found {text}; expected a finite number in {left}{lo:g}, {hi:g}{right}")
    return v


def positive_int(text: str) -> int:
    return _int(text, 1)


def nonneg_int(text: str) -> int:
    return _int(text, 0)


def new_tokens(text: str) -> int:
    return _int(text, 1, MAX_NEW_TOKENS)


def positive_float(text: str) -> float:
    return _float(text, 0.0, lo_open=True)


def nonneg_float(text: str) -> float:
    return _float(text, 0.0)


def finite_float(text: str) -> float:
    return _float(text)


def unit_interval(text: str) -> float:
    """[0, 1]: mixture weights."""
    return _float(text, 0.0, 1.0)


def unit_half_open(text: str) -> float:
    """[0, 1): decays, perturbation rates."""
    return _float(text, 0.0, 1.0, hi_open=True)


def probability_mass(text: str) -> float:
    """(0, 1]: top-p."""
    return _float(text, 0.0, 1.0, lo_open=True)


def float_list(text: str) -> list[float]:
    """Comma-separated finite numbers, e.g. ``0.1,0.2``."""
    out = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"found {part!r} in {text!r}; expected comma-separated numbers") from None
        if not math.isfinite(v) or v < 0:
            raise argparse.ArgumentTypeError(f"found {part} in {text!r}; expected finite numbers >= 0")
        out.append(v)
    return out
