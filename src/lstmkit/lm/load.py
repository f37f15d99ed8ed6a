"""Load a trained language model from its run folder (weights, config, vocabulary)."""
from __future__ import annotations

from pathlib import Path

from ..config import load_toml
from ..core.checkpoint import load_checkpoint, load_module_weights
from ..core.runs import RunFolder
from ..errors import InputError
from .config import LMConfig
from .data import Vocabulary
from .model import AWDLSTM


def load_model(run_dir: str | Path, which: str = "best") -> AWDLSTM:
    """Model of a run folder with its vocabulary attached (``model.vocab``), on CPU, eval mode."""
    run = RunFolder.open(run_dir, "lm")
    config = load_toml(LMConfig, run.path / "config.toml")
    model = AWDLSTM(config.model)
    weights, _, _ = load_checkpoint(run.checkpoint_dir, which)
    load_module_weights(model, weights, str(run.checkpoint_dir / f"{which}.json"))
    model.vocab = Vocabulary.load(run.path / "vocab.txt", unit=config.data.unit)
    if len(model.vocab) != config.model.vocab_size:
        raise InputError(str(run.path / "vocab.txt"), f"{len(model.vocab)} words",
                         f"{config.model.vocab_size} words as in config.toml/checkpoint")
    return model.eval()
