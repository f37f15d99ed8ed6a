"""The LAS run config: ``[model]``, ``[data]`` (with ``[data.toy]``), ``[optim]``, ``[train]``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_toml
from .model import LASConfig
from .toy import ToyConfig


@dataclass
class LASDataConfig:
    path: str | None = None          # folder with <train_split>/ and <val_split>/; unset = toy data in memory
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = field(default=64, metadata={"min": 1})
    sortagrad_epochs: int = field(default=0, metadata={"min": 0})       # first epochs: shortest utterances first
    augment_noise: float = field(default=0.0, metadata={"min": 0.0})   # std of fresh Gaussian noise on training features
    augment_speed: float = field(default=0.0, metadata={"min": 0.0, "max": 0.5})  # time stretch by 1 +- this, per utterance
    # SpecAugment (Park et al. 2019), training only: masks of up to `width` frames / bands
    specaug_time_masks: int = field(default=0, metadata={"min": 0})
    specaug_time_width: int = field(default=10, metadata={"min": 0})
    specaug_freq_masks: int = field(default=0, metadata={"min": 0})
    specaug_freq_width: int = field(default=8, metadata={"min": 0})
    toy: ToyConfig = field(default_factory=ToyConfig)


@dataclass
class LASOptimConfig:
    lr: float = field(default=1e-3, metadata={"min": 0.0, "min_open": True})
    lr_decay: float = field(default=1.0, metadata={"min": 0.0, "min_open": True, "max": 1.0})  # per-epoch multiplier
    min_lr: float = field(default=0.0, metadata={"min": 0.0})                                 # decay stops here
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    clip: float = field(default=1.0, metadata={"min": 0.0})
    tf_start: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})    # teacher forcing rate, epoch 1
    tf_floor: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})    # lowest rate
    tf_decay: float = field(default=0.02, metadata={"min": 0.0})                # drop per epoch
    ema_decay: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "max_open": True})  # weight averaging; 0 = off


@dataclass
class LASTrainConfig:
    epochs: int = field(default=20, metadata={"min": 1})
    max_minutes: float | None = field(default=None, metadata={"min": 0.0, "min_open": True})
    evals_per_epoch: int = field(default=1, metadata={"min": 1})
    val_every_epochs: int = field(default=1, metadata={"min": 1})      # >1: validate (and save) every k-th epoch only
    seed: int = 0
    device: str = "auto"
    precision: str = field(default="auto", metadata={"choices": ("auto", "fp32", "bf16")})
    threads: int = field(default=0, metadata={"min": 0})
    deterministic: bool = False        # GPU: deterministic kernels, so runs and resumes repeat bit for bit (slower)
    runs_dir: str = "runs"
    n_plots: int = field(default=10, metadata={"min": 0})
    val_ctc_weight: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0, "max_open": True})  # joint CTC greedy in validation
    max_nonfinite: int = field(default=5, metadata={"min": 1})          # skipped steps in a row before a rewind
    nonfinite_lr_factor: float = field(default=0.5, metadata={"min": 0.0, "min_open": True, "max": 1.0})
    max_rewinds: int = field(default=3, metadata={"min": 0})
    checkpoint_every: int = field(default=0, metadata={"min": 0})       # steps; 0 = at each validation only
    log_every: int = field(default=0, metadata={"min": 0})              # steps between per-step loss records; 0 = none


@dataclass
class LASRunConfig:
    model: LASConfig = field(default_factory=LASConfig)
    data: LASDataConfig = field(default_factory=LASDataConfig)
    optim: LASOptimConfig = field(default_factory=LASOptimConfig)
    train: LASTrainConfig = field(default_factory=LASTrainConfig)

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> "LASRunConfig":
        return load_toml(cls, path, overrides)

    @property
    def decode_ctc_weight(self) -> float:
        """The joint CTC weight validation decodes with (``train.val_ctc_weight``); 0 without a CTC head."""
        return self.train.val_ctc_weight if self.model.ctc_weight > 0 else 0.0


def learning_rate(epoch: int, cfg: LASOptimConfig) -> float:
    """``lr`` x ``lr_decay`` ** ``epoch`` (0-based), not below ``min_lr``.

    >>> round(learning_rate(2, LASOptimConfig(lr=1.0, lr_decay=0.5, min_lr=0.3)), 2)
    0.3
    """
    return max(cfg.lr * cfg.lr_decay ** epoch, min(cfg.min_lr, cfg.lr))


def teacher_forcing_rate(epoch: int, cfg: LASOptimConfig) -> float:
    """Rate for 0-based ``epoch``: ``tf_start`` decayed linearly by ``tf_decay`` per epoch to ``tf_floor``.

    >>> teacher_forcing_rate(0, LASOptimConfig()), round(teacher_forcing_rate(3, LASOptimConfig()), 2)
    (1.0, 0.94)
    """
    return max(min(cfg.tf_floor, cfg.tf_start), cfg.tf_start - cfg.tf_decay * epoch)
