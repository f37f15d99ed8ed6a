"""Figures written into run folders: loss curves and attention heat maps (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(path: Path, curves: dict[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
                xlabel: str = "epoch", ylabel: str = "loss (NLL, nats)", title: str = "Training curves",
                x: Sequence[float] | None = None) -> Path:
    """Line plot of several named curves; saved as PNG. A curve is its y values (on ``x``, or 1, 2,
    ...) or its own ``(xs, ys)`` pair."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, ys in curves.items():
        if isinstance(ys, tuple):
            xs, ys = ys
        else:
            xs = list(x) if x is not None else list(range(1, len(ys) + 1))
        ax.plot(list(xs)[: len(ys)], ys, marker="o" if len(ys) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_attention(path: Path, weights: np.ndarray, ylabels: Sequence[str] | None = None,
                   title: str = "Attention", xlabel: str = "input frame", ylabel: str = "output step") -> Path:
    """Heat map of an attention matrix ``weights`` of shape (output steps, input frames)."""
    steps, frames = weights.shape
    width, height = max(5, frames / 12), max(3.5, steps / 5)
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    im = ax.imshow(weights, aspect="auto", origin="upper", cmap="viridis", interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)))
        ax.set_yticklabels(["␣" if c == " " else c for c in ylabels], fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.03, label="attention weight")
    # fixed margins in inches, not tight_layout: it lays out every text once more, a third of the
    # plot's time, and the trainers write ten of these at every validation
    fig.subplots_adjust(left=0.65 / width, right=1 - 1.0 / width, bottom=0.5 / height, top=1 - 0.35 / height)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_features(path: Path, features: np.ndarray, title: str) -> Path:
    """Spectrogram-like image of features (T, F): time on x, band on y."""
    fig, ax = plt.subplots(figsize=(max(5, features.shape[0] / 25), 3), dpi=100)
    im = ax.imshow(features.T, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
    ax.set_xlabel("frame")
    ax.set_ylabel("band")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, label="feature value")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
