"""Transcribe new audio with a trained LAS run: the run's own feature settings, its decoding weights.

``lstmkit las prepare`` writes ``features.json`` beside the prepared splits (sample rate, bands,
window, hop, per-utterance CMVN, level normalization); training copies it into the run folder. A
wav file then goes through exactly the pipeline the model was trained on::

    lstmkit las transcribe runs/fsdd my.wav other.wav [--beam 8] [--lm runs/char-lm]

    from lstmkit.las import transcribe
    transcribe("runs/fsdd", ["my.wav"])          # -> ["two nine one"]
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import from_dict
from ..core.checkpoint import atomic_write_text
from ..errors import InputError
from .features import FeatureConfig, log_mel, read_wav, scale_to_level

FEATURES_FILE = "features.json"


def save_feature_settings(folder: Path, cfg: FeatureConfig, level_dbfs: float | None = None) -> None:
    """Record how a data folder's features were made (``folder/features.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / FEATURES_FILE, json.dumps({"features": asdict(cfg), "level_dbfs": level_dbfs}, indent=1) + "\n")


def load_feature_settings(path: Path) -> tuple[FeatureConfig, float | None]:
    """``(FeatureConfig, level_dbfs)`` from a ``features.json``; every field checked."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(str(path), f"unreadable ({e})", "a features.json written by lstmkit las prepare") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("features"), dict):
        raise InputError(str(path), "no 'features' table", "a features.json written by lstmkit las prepare")
    cfg = from_dict(FeatureConfig, rec["features"], str(path), "features.")
    level = rec.get("level_dbfs")
    if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float)) or not -60 < level <= 0):
        raise InputError(f"{path}: level_dbfs", f"found {level!r}", "null or a level in dB in (-60, 0]")
    return cfg, level


def audio_features(path: str | Path, cfg: FeatureConfig, level_dbfs: float | None = None) -> np.ndarray:
    """One audio file -> (T, n_bands) features, as ``las prepare`` makes them."""
    x, rate = read_wav(path)
    if level_dbfs is not None:
        x = scale_to_level(x, level_dbfs)
    f = log_mel(x, rate, cfg)
    if f.shape[0] == 0:
        raise InputError(str(path), "too short for one analysis window", f"at least {cfg.window_ms:g} ms of audio")
    return f


def run_feature_settings(run_dir: str | Path) -> tuple[FeatureConfig, float | None]:
    path = Path(run_dir) / FEATURES_FILE
    if not path.is_file():
        raise InputError(str(path), "not found: the run was not trained on audio prepared by `lstmkit las prepare` "
                         "(toy data or precomputed filterbanks)",
                         "a run trained on a folder from `las prepare` (it records features.json); for an older "
                         "run, copy that folder's features.json into the run folder")
    return load_feature_settings(path)


@torch.no_grad()
def transcribe(run_dir: str | Path, audio: Sequence[str | Path], beam: int = 1, ctc_weight: float | None = None,
               lm: str | Path | None = None, lm_weight: float = 0.3, batch_size: int = 16,
               checkpoint: str = "best", device: str = "auto") -> list[str]:
    """Transcripts of ``audio`` files by the run's ``checkpoint`` model, batched. Decoding as the run
    validated: joint CTC/attention greedy with the run's weight (``ctc_weight`` None); ``beam`` > 1
    for beam search; ``lm``: shallow fusion with a character-level LM run at ``lm_weight``.
    ``device``: where the models run ('auto': a GPU when there is one, 'cpu', 'cuda', 'cuda:N')."""
    from ..core.device import pick_runtime
    from .decode import decode_texts
    from .trainer import load_las
    if beam < 1 or batch_size < 1:
        raise InputError("beam/batch_size", f"{beam}/{batch_size}", "integers >= 1")
    dev = pick_runtime(device, "fp32", device_where="device").device
    cfg, level = run_feature_settings(run_dir)
    model, vocab = load_las(run_dir, checkpoint)
    model.to(dev)
    if cfg.n_bands != model.config.n_bands:
        raise InputError(str(Path(run_dir) / FEATURES_FILE), f"{cfg.n_bands} bands", f"{model.config.n_bands} as the model")
    fusion = None
    if lm is not None:
        from ..lm import load_model
        from .fusion import CharLMFusion
        fusion = CharLMFusion(load_model(lm).to(dev), vocab)
    out = []
    for i in range(0, len(audio), batch_size):
        feats = [torch.from_numpy(audio_features(p, cfg, level)) for p in audio[i: i + batch_size]]
        lengths = torch.tensor([f.size(0) for f in feats])
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        out += decode_texts(model, vocab, x, lengths, beam, ctc_weight, fusion, lm_weight)
    return out
