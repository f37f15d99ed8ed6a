"""Recognition and attention metrics.

CER/WER use ``rapidfuzz``'s Levenshtein distance (summed edits / summed reference lengths).
``alignment_accuracy`` and ``monotonic_focus`` are defined in DESIGN.md.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate: total edit distance / total reference characters.

    >>> round(cer(["abcd"], ["abed"]), 2)
    0.25
    """
    edits = sum(Levenshtein.distance(r, h) for r, h in zip(refs, hyps))
    return edits / max(1, sum(len(r) for r in refs))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate over whitespace tokens.

    >>> wer(["the cat sat"], ["the bat sat"])
    0.3333333333333333
    """
    edits = sum(Levenshtein.distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    return edits / max(1, sum(len(r.split()) for r in refs))


def alignment_accuracy(attentions: Sequence[np.ndarray], spans: Sequence[Sequence[tuple[int, int]]]) -> float:
    """Share of output characters whose attention argmax lies inside the character's true span.

    ``attentions[i]`` is (L_i, S_i): row j is the attention that produced character j (teacher
    forced, so row j belongs to reference character j); rows past the spans (``<eos>``) are ignored.

    >>> a = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
    >>> alignment_accuracy([a], [[(0, 1), (1, 3)]])
    1.0
    """
    hit = total = 0
    for att, sp in zip(attentions, spans):
        arg = np.asarray(att).argmax(-1)
        for j, (s, e) in enumerate(sp[: len(arg)]):
            hit += int(s <= arg[j] < e)
            total += 1
    return hit / max(total, 1)


def listener_spans(spans: Sequence[tuple[int, int]], factor: int) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` in input frames -> in listener frames, when a pyramid of P
    layers makes each listener frame cover ``factor`` = 2**P input frames: a listener frame is in a
    span when it covers any of the span's input frames.

    >>> listener_spans([(0, 3), (3, 4), (4, 9)], 2)
    [(0, 2), (1, 2), (2, 5)]
    >>> listener_spans([(2, 5)], 1)
    [(2, 5)]
    """
    return [(s // factor, max(s // factor + 1, -(-e // factor))) for s, e in spans]


def monotonic_focus(attentions: Sequence[np.ndarray]) -> float:
    """Mean over output steps of the largest attention weight, times the share of steps whose
    argmax does not move backwards. 1.0 is a sharp, monotonic diagonal.

    >>> monotonic_focus([np.eye(3)])
    1.0
    """
    peaks, forward, steps = [], 0, 0
    for att in attentions:
        att = np.asarray(att)
        if att.size == 0:
            continue
        peaks.extend(att.max(-1).tolist())
        arg = att.argmax(-1)
        forward += int((np.diff(arg) >= 0).sum()) + 1
        steps += len(arg)
    if not steps:
        return 0.0
    return float(np.mean(peaks)) * forward / steps
