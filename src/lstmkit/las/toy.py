"""Synthetic speech for Listen, Attend and Spell: "random sequences of embedded characters, each of
variable length and 40 frequency bands", with the true frame span of every character.

Each symbol of the alphabet gets a fixed random spectrum (its embedding, unit normal, F bands).
An utterance holds every character of its transcript for a random number of frames, adds a small
per-occurrence offset (so two equal neighbours still show a boundary), blurs neighbouring frames
with a short smoothing kernel and adds Gaussian noise::

    transcript  "ab a"
    frames      aaaa bbbbbbb ␣␣␣ aaaaa        (3-8 frames each)
    spans       [(0,4), (4,11), (11,14), (14,19)]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ALPHABET = "abcdefghijklmnopqrstuvwxyz '"


@dataclass
class ToyConfig:
    """Defaults are at least as hard as the reference task of the issue: 10-30 characters over 28
    symbols, unit-normal spectra, 3-8 frames per character, noise std 0.3, 5,000/500 utterances."""

    n_train: int = field(default=5000, metadata={"min": 1})
    n_val: int = field(default=500, metadata={"min": 1})
    n_bands: int = field(default=40, metadata={"min": 1})
    min_chars: int = field(default=10, metadata={"min": 1})
    max_chars: int = field(default=30, metadata={"min": 1})
    min_frames: int = field(default=3, metadata={"min": 1})
    max_frames: int = field(default=8, metadata={"min": 1})
    noise: float = field(default=0.3, metadata={"min": 0.0})          # per-frame Gaussian noise std
    jitter: float = field(default=0.3, metadata={"min": 0.0})         # per-occurrence spectrum offset std
    smoothing: float = field(default=0.0, metadata={"min": 0.0, "max": 0.5})  # weight of each neighbour frame
    alphabet: str = ALPHABET
    seed: int = 0

    def cross_check(self) -> tuple[str, str, str] | None:
        """Rules that join fields, broken: ``(field, found, expected)``; else None."""
        if self.min_chars > self.max_chars:
            return "min_chars", f"found {self.min_chars} > max_chars {self.max_chars}", "min_chars <= max_chars"
        if self.min_frames > self.max_frames:
            return "min_frames", f"found {self.min_frames} > max_frames {self.max_frames}", "min_frames <= max_frames"
        a = self.alphabet
        if not a or len(set(a)) != len(a) or any(c in a for c in "\t\n\r"):
            return "alphabet", f"found {a!r}", "one or more distinct characters, no TAB or line breaks"
        return None


def symbol_spectra(cfg: ToyConfig) -> np.ndarray:
    """The fixed embedding of every symbol: (len(alphabet), F) unit-normal, from ``cfg.seed``."""
    return np.random.default_rng([cfg.seed, 1]).standard_normal((len(cfg.alphabet), cfg.n_bands)).astype(np.float32)


def random_transcript(rng: np.random.Generator, cfg: ToyConfig) -> str:
    """Random words of 1-8 letters (an apostrophe now and then) joined by spaces, 10-30 chars."""
    letters = [c for c in cfg.alphabet if c not in " '"] or list(cfg.alphabet)
    n = int(rng.integers(cfg.min_chars, cfg.max_chars + 1))
    out: list[str] = []
    while len(out) < n:
        if out:
            out.append(" " if " " in cfg.alphabet else letters[0])
        word = [letters[i] for i in rng.integers(0, len(letters), size=int(rng.integers(1, 9)))]
        if "'" in cfg.alphabet and len(word) > 2 and rng.random() < 0.15:
            word.insert(int(rng.integers(1, len(word))), "'")
        out.extend(word)
    text = "".join(out[:n]).strip()
    return text if len(text) >= cfg.min_chars else text + letters[0] * (cfg.min_chars - len(text))


def make_utterance(rng: np.random.Generator, cfg: ToyConfig, spectra: np.ndarray, text: str | None = None):
    """One utterance -> ``(features (T, F) float32, transcript, spans [(start, end), ...])``."""
    text = text if text is not None else random_transcript(rng, cfg)
    index = {c: i for i, c in enumerate(cfg.alphabet)}
    frames, spans, t = [], [], 0
    for ch in text:
        d = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
        spec = spectra[index[ch]] + cfg.jitter * rng.standard_normal(cfg.n_bands).astype(np.float32)
        frames.append(np.repeat(spec[None], d, axis=0))
        spans.append((t, t + d))
        t += d
    x = np.concatenate(frames, 0)                                   # (T, F)
    if cfg.smoothing > 0:
        s = cfg.smoothing
        padded = np.concatenate([x[:1], x, x[-1:]], 0)
        x = s * padded[:-2] + (1 - 2 * s) * padded[1:-1] + s * padded[2:]
    x = x + cfg.noise * rng.standard_normal(x.shape)
    return x.astype(np.float32), text, spans


def generate(cfg: ToyConfig, split: str) -> list[tuple[np.ndarray, str, list[tuple[int, int]]]]:
    """All utterances of ``split`` ('train' or 'val'), deterministic from ``cfg.seed``.

    Example:
        >>> utts = generate(ToyConfig(n_train=2, seed=1), "train")
        >>> x, text, spans = utts[0]
        >>> x.shape[1], len(spans) == len(text), spans[-1][1] == x.shape[0]
        (40, True, True)
    """
    n = cfg.n_train if split == "train" else cfg.n_val
    rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 2])
    spectra = symbol_spectra(cfg)
    return [make_utterance(rng, cfg, spectra) for _ in range(n)]
