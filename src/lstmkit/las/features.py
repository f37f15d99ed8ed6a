"""Waveform -> log-mel filterbank features for LAS, with ``soundfile`` (reading),
``scipy.signal.resample_poly`` (resampling) and ``kaldi-native-fbank`` (the filterbank), plus
per-utterance mean/variance normalization and SpecAugment (Park et al. 2019) for training.

    samples (L,) at rate r  -> [resample to FeatureConfig.sample_rate] -> Kaldi fbank
                            -> log mel energies (T, n_bands), 25 ms windows every 10 ms
                            -> (x - mean_t) / std_t per band
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError


@dataclass
class FeatureConfig:
    n_bands: int = field(default=40, metadata={"min": 1})
    sample_rate: int = field(default=16000, metadata={"min": 1000})   # audio at another rate is resampled
    window_ms: float = field(default=25.0, metadata={"min": 1.0})
    hop_ms: float = field(default=10.0, metadata={"min": 1.0})
    normalize: bool = True                                              # per-utterance mean/variance


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate; multi-channel audio is averaged."""
    import soundfile
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "audio file not found", "a WAV/FLAC file readable by soundfile")
    try:
        x, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise InputError(str(path), f"unreadable audio ({e})", "a WAV/FLAC file readable by soundfile") from None
    if x.shape[0] == 0:
        raise InputError(str(path), "no samples", "a non-empty recording")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(1).sum())
        raise InputError(str(path), f"{bad} samples are NaN or infinite", "finite samples (a float WAV with NaN/inf is damaged)")
    if rate <= 0:
        raise InputError(str(path), f"sample rate {rate}", "a positive sample rate")
    return x.mean(1), int(rate)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (scipy) from ``rate`` to ``target`` Hz; a no-op when they match."""
    if rate == target:
        return x
    from scipy.signal import resample_poly
    g = gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def scale_to_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale samples to an RMS level of ``dbfs`` dB below full scale (recordings made at other gains
    then give the same features).

    >>> round(float(np.sqrt(np.mean(scale_to_level(np.full(10, 0.5, np.float32), -20.0) ** 2))), 4)
    0.1
    """
    rms = max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-6)
    return x * np.float32(10 ** (dbfs / 20) / rms)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (Ko et al. 2015): resample by 1/``factor`` and keep the
    rate, so duration, pitch and formants all change - a cheap stand-in for another speaker.
    ``factor`` is rounded to a ratio with denominator <= 200.

    >>> speed_perturb(np.zeros(1100, np.float32), 1.1).size
    1000
    """
    from fractions import Fraction
    from scipy.signal import resample_poly
    if not 0.5 <= factor <= 2.0:
        raise InputError("speed factor", f"{factor}", "between 0.5 and 2")
    r = Fraction(factor).limit_denominator(200)
    if r == 1:
        return x
    return resample_poly(x, r.denominator, r.numerator).astype(np.float32)


def log_mel(x: np.ndarray, rate: int, cfg: FeatureConfig) -> np.ndarray:
    """Kaldi-compatible log mel filterbank of 1-D samples -> (T, n_bands) float32.

    Example:
        >>> t = np.arange(16000) / 16000
        >>> f = log_mel(np.sin(2 * np.pi * 440 * t).astype(np.float32), 16000, FeatureConfig(normalize=False))
        >>> f.shape
        (98, 40)
    """
    import kaldi_native_fbank as knf
    x = resample(np.asarray(x, np.float32), rate, cfg.sample_rate)
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = cfg.sample_rate
    opts.frame_opts.frame_length_ms = cfg.window_ms
    opts.frame_opts.frame_shift_ms = cfg.hop_ms
    opts.frame_opts.dither = 0.0                  # deterministic features
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = cfg.n_bands
    opts.mel_opts.high_freq = 0                   # up to Nyquist
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(cfg.sample_rate, (x * 32768.0).tolist())   # Kaldi's int16 scale
    fb.input_finished()
    n = fb.num_frames_ready
    if n == 0:
        return np.zeros((0, cfg.n_bands), np.float32)
    feats = np.stack([fb.get_frame(i) for i in range(n)]).astype(np.float32)
    return cmvn(feats) if cfg.normalize else feats


def cmvn(x: np.ndarray) -> np.ndarray:
    """Per-utterance mean and variance normalization of (T, F) features, per band (in float64; a
    band with no variance, e.g. silence at the floor, is only centred)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0, keepdims=True)
    return (x / np.maximum(x.std(0, keepdims=True), 1e-3)).astype(np.float32)


def wav_features(path: str | Path, cfg: FeatureConfig) -> np.ndarray:
    x, rate = read_wav(path)
    f = log_mel(x, rate, cfg)
    if f.shape[0] == 0:
        raise InputError(str(path), f"{len(x) / rate * 1000:.0f} ms of audio", f"at least one {cfg.window_ms} ms window")
    return f


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, time_masks: int, time_width: int, freq_masks: int,
                 freq_width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment without time warping: zero ``time_masks`` spans of up to ``time_width`` frames
    (inside each utterance's real frames) and ``freq_masks`` bands of up to ``freq_width`` bins.
    x (N, S, F) -> same shape (a new tensor).

    >>> g = torch.Generator().manual_seed(0)
    >>> y = spec_augment(torch.ones(2, 50, 40), torch.tensor([50, 30]), 2, 5, 0, 4, g)
    >>> y.shape, bool((y[1, 30:] == 1).all()), bool((y == 0).any())   # time masks stay inside real frames
    (torch.Size([2, 50, 40]), True, True)
    """
    n, s, f = x.shape
    keep = torch.ones(n, s, f, dtype=torch.bool)
    t = torch.arange(s)[None, :]
    b = torch.arange(f)[None, :]
    lens = lengths.cpu()
    for _ in range(time_masks):
        w = (torch.rand(n, generator=generator) * (time_width + 1)).long()
        w = torch.minimum(w, lens // 5)                                # never more than 20% of an utterance
        start = (torch.rand(n, generator=generator) * (lens - w + 1).clamp(min=1)).long()
        keep &= ~((t >= start[:, None]) & (t < (start + w)[:, None]))[:, :, None]
    for _ in range(freq_masks):
        w = (torch.rand(n, generator=generator) * (freq_width + 1)).long()
        start = (torch.rand(n, generator=generator) * (f - w + 1)).long()
        keep &= ~((b >= start[:, None]) & (b < (start + w)[:, None]))[:, None, :]
    return x * keep.to(x.device, x.dtype)
