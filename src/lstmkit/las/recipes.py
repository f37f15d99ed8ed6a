"""Turn real speech into the LAS data-folder layout (``<split>/transcripts.tsv`` + ``feats/*.npy``).

- :func:`prepare_folder`: any corpus laid out as ``<split>/transcripts.tsv`` + ``<split>/wav/<id>.wav``.
- :func:`prepare_fsdd`: the Free Spoken Digit Dataset (one digit per 8 kHz file) made into
  digit-string utterances: 3-7 recordings of one speaker joined by short random silences,
  transcript e.g. ``"three one four"``. Split ``official`` (takes 0-4 are held out, as the dataset
  prescribes) or ``speaker`` (train on five speakers, validate on the sixth).
- :func:`prepare_librispeech_mini`: ``{split}/fbank/*.npy`` (80, T) log-mel + ``{split}/text/*.npy``
  character arrays -> (T, 80) or pooled (T, 40) features, normalized per utterance.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import InputError, plain_name
from .data import Utterance, write_split
from .transcribe import save_feature_settings
from .features import FeatureConfig, cmvn, log_mel, read_wav, scale_to_level, speed_perturb, wav_features

DIGITS = "zero one two three four five six seven eight nine".split()
_FSDD_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def prepare_folder(src: str | Path, out: str | Path, cfg: FeatureConfig) -> dict[str, int]:
    """Every ``src/<split>/`` with ``transcripts.tsv`` and ``wav/`` -> ``out/<split>/``."""
    src, out = Path(src), Path(out)
    splits = sorted(p.parent for p in src.glob("*/transcripts.tsv"))
    if not splits:
        raise InputError(str(src), "no <split>/transcripts.tsv found", "folders like train/ and val/, each with "
                         "transcripts.tsv (<id> TAB <text>) and wav/<id>.wav")
    counts = {}
    for folder in splits:
        utts = []
        for k, row in enumerate((folder / "transcripts.tsv").read_text(encoding="utf-8").splitlines(), 1):
            if not row.strip():
                continue
            if "\t" not in row:
                raise InputError(f"{folder / 'transcripts.tsv'}:{k}", f"line {row[:40]!r} has no TAB", "<id> TAB <text>")
            uid, text = row.split("\t", 1)
            plain_name(uid, f"{folder / 'transcripts.tsv'}:{k}", "utterance id")
            utts.append(Utterance(uid, wav_features(folder / "wav" / f"{uid}.wav", cfg), text.strip().lower(), None))
        write_split(out / folder.name, utts)
        counts[folder.name] = len(utts)
    save_feature_settings(out, cfg)
    return counts


def fsdd_recordings(folder: str | Path) -> list[tuple[int, str, int, Path]]:
    """``(digit, speaker, take, path)`` of every ``{digit}_{speaker}_{take}.wav`` in ``folder``."""
    folder = Path(folder)
    rec_dir = folder / "recordings" if (folder / "recordings").is_dir() else folder
    out = []
    for p in sorted(rec_dir.glob("*.wav")):
        m = _FSDD_NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), m.group(2), int(m.group(3)), p))
    if not out:
        raise InputError(str(rec_dir), "no FSDD recordings ({digit}_{speaker}_{take}.wav)",
                         "the Free Spoken Digit Dataset's recordings/ folder")
    return out


def digit_strings(pool, n: int, rng: np.random.Generator, prefix: str, cfg: FeatureConfig,
                  min_digits: int = 3, max_digits: int = 7, silence_s=(0.05, 0.3), speed: float = 0.0,
                  speed_rng: np.random.Generator | None = None, level_dbfs: float | None = None,
                  gain_db: float = 0.0, noise_snr_db: tuple[float, float] | None = None) -> list[Utterance]:
    """``n`` utterances, each 3-7 random recordings of one speaker from ``pool`` joined by silences
    (noise of RMS 1e-3, i.e. -60 dBFS); ``speed`` > 0 plays each at a random speed in ``1 +- speed``
    (:func:`speed_perturb`). ``level_dbfs``: scale every recording to this RMS level first (FSDD
    speakers were recorded 20 dB apart, so the gaps would sit at a different distance below each
    voice); ``gain_db`` > 0 then adds a random gain in ``+- gain_db`` per recording. ``noise_snr_db``
    ``(lo, hi)``: add white noise to the whole utterance at a signal-to-noise ratio drawn from
    ``[lo, hi]`` dB (signal: the recordings' mean power). Speeds, gains and noise come from
    ``speed_rng``, so transcripts and recordings do not depend on them."""
    aug_rng = speed_rng or rng
    by_speaker: dict[str, list] = {}
    for rec in pool:
        by_speaker.setdefault(rec[1], []).append(rec)
    speakers = sorted(by_speaker)
    cache: dict[Path, tuple[np.ndarray, int]] = {}
    utts = []
    for i in range(n):
        spk = speakers[int(rng.integers(len(speakers)))]
        recs = [by_speaker[spk][j] for j in rng.integers(0, len(by_speaker[spk]), size=int(rng.integers(min_digits, max_digits + 1)))]
        pieces, rate, power = [], None, []
        for digit, _, _, path in recs:
            if path not in cache:
                cache[path] = read_wav(path)
            x, rate = cache[path]
            if level_dbfs is not None:
                x = scale_to_level(x, level_dbfs)
            if gain_db > 0:
                x = x * np.float32(10 ** (aug_rng.uniform(-gain_db, gain_db) / 20))
            power.append(float(np.mean(np.square(x, dtype=np.float64))))
            gap = np.zeros(int(rng.uniform(*silence_s) * rate), np.float32)
            pieces += [gap + 1e-3 * rng.standard_normal(gap.size).astype(np.float32), x]
        gap = np.zeros(int(rng.uniform(*silence_s) * rate), np.float32)
        pieces.append(gap + 1e-3 * rng.standard_normal(gap.size).astype(np.float32))
        text = " ".join(DIGITS[d] for d, _, _, _ in recs)
        audio = np.concatenate(pieces)
        if noise_snr_db is not None:
            snr = aug_rng.uniform(*noise_snr_db)
            noise = aug_rng.standard_normal(audio.size) * np.sqrt(np.mean(power) / 10 ** (snr / 10))
            audio = audio + noise.astype(np.float32)
        if speed > 0:
            audio = speed_perturb(audio, float(aug_rng.uniform(1 - speed, 1 + speed)))
        utts.append(Utterance(f"{prefix}-{i:05d}-{spk}", log_mel(audio, rate, cfg), text, None))
    return utts


def prepare_fsdd(src: str | Path, out: str | Path, split: str = "official", held_out: str = "theo",
                 n_train: int = 3000, n_val: int = 300, seed: int = 0,
                 cfg: FeatureConfig | None = None, speed_perturb: float = 0.0, level_dbfs: float | None = None,
                 gain_db: float = 0.0, noise_snr_db: tuple[float, float] | None = None) -> dict[str, int]:
    """Digit-string utterances from FSDD -> ``out/train`` and ``out/val``.

    ``official``: recordings with take index 0-4 build the validation utterances, 5-49 the
    training ones (every speaker in both). ``speaker``: ``held_out``'s recordings build the
    validation utterances, the other five speakers' the training ones. ``speed_perturb`` > 0
    plays every *training* utterance at a random speed in ``1 +- speed_perturb``. ``level_dbfs``
    scales every recording to that RMS level; ``gain_db`` > 0 varies *training* recordings' levels
    by a random gain in ``+- gain_db`` around it; ``noise_snr_db`` ``(lo, hi)`` adds white noise to
    *training* utterances at a random SNR in that range.
    """
    if not 0.0 <= speed_perturb <= 0.5:
        raise InputError("--speed-perturb", f"{speed_perturb}", "between 0 and 0.5")
    if level_dbfs is not None and not -60.0 < level_dbfs <= 0.0:
        raise InputError("--level-dbfs", f"{level_dbfs}", "an RMS level in dB below full scale, in (-60, 0], e.g. -26")
    if not 0.0 <= gain_db <= 30.0:
        raise InputError("--gain-db", f"{gain_db}", "between 0 and 30 dB")
    if noise_snr_db is not None and not (len(noise_snr_db) == 2 and -10.0 <= noise_snr_db[0] <= noise_snr_db[1]):
        raise InputError("--noise-snr-db", f"{noise_snr_db}", "two numbers LO HI in dB with -10 <= LO <= HI, e.g. 10 40")
    cfg = cfg or FeatureConfig(sample_rate=8000)
    recs = fsdd_recordings(src)
    if split == "official":
        train = [r for r in recs if r[2] >= 5]
        val = [r for r in recs if r[2] < 5]
    elif split == "speaker":
        speakers = sorted({r[1] for r in recs})
        if held_out not in speakers:
            raise InputError("--held-out", f"speaker {held_out!r}", f"one of {', '.join(speakers)}")
        train = [r for r in recs if r[1] != held_out]
        val = [r for r in recs if r[1] == held_out]
    else:
        raise InputError("--split", f"{split!r}", "'official' or 'speaker'")
    rng = np.random.default_rng(seed)
    counts = {}
    for name, pool, n in (("train", train, n_train), ("val", val, n_val)):
        speed = speed_perturb if name == "train" else 0.0
        utts = digit_strings(pool, n, rng, name, cfg, speed=speed, speed_rng=np.random.default_rng([seed, 1]),
                             level_dbfs=level_dbfs, gain_db=gain_db if name == "train" else 0.0,
                             noise_snr_db=noise_snr_db if name == "train" else None)
        write_split(Path(out) / name, utts)
        counts[name] = n
    save_feature_settings(Path(out), cfg, level_dbfs)
    return counts


def prepare_librispeech_mini(src: str | Path, out: str | Path, pool_to: int | None = 40,
                             splits: dict[str, str] | None = None) -> dict[str, int]:
    """``src/{split}/fbank/<id>.npy`` (80, T) + ``src/{split}/text/<id>.npy`` (characters) -> LAS folders.

    Features are transposed to (T, 80), optionally averaged over adjacent bands down to
    ``pool_to`` bands (80 -> 40), and normalized per utterance. A split without transcripts (the
    mini test-clean ships none) is written with empty transcripts: ``lstmkit las decode``
    transcribes it and scores only utterances that have a reference.
    """
    src = Path(src)
    splits = splits or {"train-clean-100": "train", "dev-clean": "val", "test-clean": "test"}
    counts = {}
    for name, target in splits.items():
        fb, tx = src / name / "fbank", src / name / "text"
        if not fb.is_dir():
            raise InputError(str(fb), "folder not found", "LibriSpeech-mini layout: <split>/fbank/*.npy, <split>/text/*.npy")
        utts = []
        for f in sorted(fb.glob("*.npy")):
            x = np.load(f, allow_pickle=False)
            if x.ndim != 2 or x.shape[0] != 80:
                raise InputError(str(f), f"shape {x.shape}", "(80, T) log-mel features")
            x = x.T.astype(np.float32)
            if pool_to:
                if 80 % pool_to:
                    raise InputError("--bands", f"{pool_to}", "a divisor of 80 (e.g. 40)")
                x = x.reshape(x.shape[0], pool_to, 80 // pool_to).mean(-1)
            tf = tx / f.name
            if not tx.is_dir():
                text = ""
            elif not tf.is_file():
                raise InputError(str(tf), "transcript not found", "one text/<id>.npy per fbank/<id>.npy")
            else:
                chars = np.load(tf, allow_pickle=False)
                text = "".join(c for c in chars.tolist() if len(c) == 1).lower()
            utts.append(Utterance(f.stem, cmvn(x), " ".join(text.split()), None))
        write_split(Path(out) / target, utts)
        counts[target] = len(utts)
    return counts
