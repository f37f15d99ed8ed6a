"""The language model's run config: ``[model]``, ``[data]``, ``[optim]``, ``[train]`` tables of a
TOML file (see ``configs/wt2.toml``). Defaults are the paper's WikiText-2 settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_toml
from .model import AWDLSTMConfig

POS = {"min": 1}


@dataclass
class DataConfig:
    """``eval_batch_size`` rows score the validation split in the final evaluation (paper: 10);
    ``check_batch_size`` (when set) the validations during training. Recipes timed in GPU minutes
    set it: 10 rows of WikiText-2's dev split are 21,700 sequential LSTM steps, more than a whole
    batch-128 training epoch (16,300), and a GPU's time goes by sequential steps; more rows
    change the checked NLL little (docs/gpu.md) while the final dev number keeps the protocol."""
    path: str = "data/wikitext-2"      # folder (wikitext, npy) or train file (text: valid/test beside it)
    format: str = field(default="wikitext", metadata={"choices": ("wikitext", "text", "npy")})
    valid_path: str | None = None       # text format only
    test_path: str | None = None        # text format only
    max_vocab: int | None = field(default=None, metadata={"min": 3})  # text format: cap, rest <unk>
    unit: str = field(default="word", metadata={"choices": ("word", "char")})  # tokens: words or characters
    lowercase: bool = False             # lower-case the text before tokenizing
    batch_size: int = field(default=80, metadata=POS)
    eval_batch_size: int = field(default=10, metadata=POS)
    check_batch_size: int = field(default=0, metadata={"min": 0})  # rows of the validations during training; 0 = eval_batch_size
    test_batch_size: int = field(default=1, metadata=POS)
    bptt: int = field(default=70, metadata={"min": 2})
    variable_bptt: bool = True
    max_train_tokens: int = field(default=0, metadata={"min": 0})   # first N training tokens only (0 = all)
    max_eval_tokens: int = field(default=0, metadata={"min": 0})    # first N validation and test tokens (0 = all)

    @property
    def check_rows(self) -> int:
        """Rows of the validations during training: ``check_batch_size``, or ``eval_batch_size`` when 0."""
        return self.check_batch_size or self.eval_batch_size


@dataclass
class OptimConfig:
    optimizer: str = field(default="ntasgd", metadata={"choices": ("ntasgd", "sgd", "adam", "adamw")})
    lr: float = field(default=30.0, metadata={"min": 0.0, "min_open": True})
    clip: float = field(default=0.25, metadata={"min": 0.0})     # global grad-norm clip, 0 = off
    weight_decay: float = field(default=1.2e-6, metadata={"min": 0.0})
    alpha: float = field(default=2.0, metadata={"min": 0.0})      # AR (section 4.6), 0 = off
    beta: float = field(default=1.0, metadata={"min": 0.0})       # TAR (section 4.6), 0 = off
    nonmono: int = field(default=5, metadata=POS)                 # NT-ASGD trigger window
    lr_decay: float = field(default=1.0, metadata={"min": 0.0, "min_open": True, "max": 1.0})  # per-epoch multiplier
    schedule: str = field(default="constant", metadata={"choices": ("constant", "cosine")})  # over train.epochs
    warmup_steps: int = field(default=0, metadata={"min": 0})     # linear warm-up of the learning rate
    min_lr_ratio: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})  # cosine ends at lr x this
    average_last: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})  # average the iterates of this last fraction of the schedule (0 = off)


@dataclass
class TrainConfig:
    epochs: int = field(default=750, metadata=POS)
    max_minutes: float | None = field(default=None, metadata={"min": 0.0, "min_open": True})
    fit_epochs: bool = False           # set epochs to what fits in max_minutes here (timed first; lm/budget.py)
    evals_per_epoch: int = field(default=1, metadata=POS)        # validations (NT-ASGD checks) per epoch
    seed: int = 141
    device: str = "auto"
    precision: str = field(default="auto", metadata={"choices": ("auto", "fp32", "bf16")})
    threads: int = field(default=0, metadata={"min": 0})
    deterministic: bool = False        # GPU: deterministic kernels, so runs and resumes repeat bit for bit (slower)
    runs_dir: str = "runs"
    log_every: int = field(default=100, metadata=POS)
    checkpoint_every: int = field(default=0, metadata={"min": 0})  # steps; 0 = at each validation only
    n_predictions: int = field(default=32, metadata=POS)           # contexts scored per epoch
    context_len: int = field(default=20, metadata=POS)
    generate_len: int = field(default=10, metadata=POS)
    max_nonfinite: int = field(default=5, metadata=POS)            # skipped steps in a row before a rewind
    nonfinite_lr_factor: float = field(default=0.5, metadata={"min": 0.0, "min_open": True, "max": 1.0})  # lr x this per rewind
    max_rewinds: int = field(default=3, metadata={"min": 0})       # rewinds to the last checkpoint before giving up
    stop_on_plateau: bool = False      # stop when validation has not improved for optim.nonmono checks (finetune sets it)


@dataclass
class LMConfig:
    model: AWDLSTMConfig = field(default_factory=AWDLSTMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> "LMConfig":
        return load_toml(cls, path, overrides)
