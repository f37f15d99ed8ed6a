"""Real speech: waveform features, the FSDD and LibriSpeech-mini recipes, SpecAugment."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from lstmkit.errors import InputError
from lstmkit.las import read_split
from lstmkit.las.features import FeatureConfig, cmvn, log_mel, read_wav, resample, spec_augment, wav_features
from lstmkit.las.recipes import DIGITS, prepare_folder, prepare_fsdd, prepare_librispeech_mini

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "fsdd").is_dir(), reason="../shared/data not present")


def tone(seconds=0.5, rate=16000, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_log_mel_shape_hop_and_normalization():
    f = log_mel(tone(1.0), 16000, FeatureConfig(n_bands=40))
    assert f.shape == (98, 40) and f.dtype == np.float32         # (1000 - 25) / 10 + 1 windows
    np.testing.assert_allclose(f.mean(0), 0, atol=1e-4)
    raw = log_mel(tone(1.0), 16000, FeatureConfig(n_bands=23, hop_ms=20, normalize=False))
    assert raw.shape == (49, 23)
    assert raw[:, np.argmax(raw.mean(0))].mean() > raw.mean() + 3   # the 440 Hz band stands out


def test_resampling_keeps_duration_and_tone():
    x8 = tone(1.0, 8000)
    x16 = resample(x8, 8000, 16000)
    assert x16.shape == (16000,)
    a = log_mel(x8, 8000, FeatureConfig(sample_rate=16000, normalize=False))
    b = log_mel(x16, 16000, FeatureConfig(sample_rate=16000, normalize=False))
    assert a.shape == b.shape and np.argmax(a.mean(0)) == np.argmax(b.mean(0))


def test_read_wav_mono_and_errors(tmp_path):
    stereo = np.stack([tone(), tone()], 1)
    soundfile.write(tmp_path / "s.wav", stereo, 16000)
    x, rate = read_wav(tmp_path / "s.wav")
    assert x.ndim == 1 and rate == 16000 and abs(x.max() - 0.3) < 1e-3
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(InputError, match="unreadable audio"):
        read_wav(tmp_path / "junk.wav")
    with pytest.raises(InputError, match="not found"):
        read_wav(tmp_path / "nope.wav")
    soundfile.write(tmp_path / "short.wav", tone(0.01), 16000)
    with pytest.raises(InputError, match="window"):
        wav_features(tmp_path / "short.wav", FeatureConfig())


def test_cmvn_and_spec_augment():
    x = np.random.default_rng(0).normal(3, 2, (50, 4)).astype(np.float32)
    y = cmvn(x)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-3)
    g = torch.Generator().manual_seed(0)
    z = spec_augment(torch.ones(3, 60, 40), torch.tensor([60, 60, 40]), 0, 0, 2, 8, g)
    masked_bands = (z[:, 0] == 0)
    assert masked_bands.any() and (masked_bands.sum(1) <= 16).all()
    assert torch.equal(spec_augment(torch.ones(2, 5, 3), torch.tensor([5, 5]), 0, 9, 0, 9), torch.ones(2, 5, 3))


def test_prepare_folder_of_wavs(tmp_path):
    split = tmp_path / "corpus" / "train"
    (split / "wav").mkdir(parents=True)
    for i, f in enumerate((300.0, 900.0)):
        soundfile.write(split / "wav" / f"u{i}.wav", tone(0.4, 8000, f), 8000)
    (split / "transcripts.tsv").write_text("u0\tLow Tone\nu1\thigh tone\n")
    counts = prepare_folder(tmp_path / "corpus", tmp_path / "out", FeatureConfig(n_bands=40))
    assert counts == {"train": 2}
    utts = read_split(tmp_path / "out" / "train", 40)
    assert [u.text for u in utts] == ["low tone", "high tone"] and utts[0].features.shape == (38, 40)
    with pytest.raises(InputError, match="transcripts.tsv"):
        prepare_folder(tmp_path / "out" / "train" / "feats", tmp_path / "x", FeatureConfig())


@pytest.fixture
def small_fsdd(tmp_path):
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for spk in ("george", "theo"):
        for d in range(10):
            for take in (0, 7):
                shutil.copy(SHARED / "fsdd" / "recordings" / f"{d}_{spk}_{take}.wav", rec)
    return tmp_path / "fsdd"


@needs_shared
def test_fsdd_digit_strings_official_and_held_out_speaker(small_fsdd, tmp_path):
    counts = prepare_fsdd(small_fsdd, tmp_path / "off", "official", n_train=6, n_val=4, seed=1)
    assert counts == {"train": 6, "val": 4}
    val = read_split(tmp_path / "off" / "val", 40)
    for u in val:
        words = u.text.split()
        assert 3 <= len(words) <= 7 and set(words) <= set(DIGITS)
        assert u.features.shape[1] == 40 and u.features.shape[0] > 25 * len(words)   # >= 0.25 s per digit
    prepare_fsdd(small_fsdd, tmp_path / "spk", "speaker", held_out="theo", n_train=5, n_val=3, seed=1)
    assert all(u.id.endswith("-theo") for u in read_split(tmp_path / "spk" / "val", 40))
    assert not any(u.id.endswith("-theo") for u in read_split(tmp_path / "spk" / "train", 40))
    with pytest.raises(InputError, match="--held-out"):
        prepare_fsdd(small_fsdd, tmp_path / "bad", "speaker", held_out="alice")
    # speed perturbation changes only the training audio; transcripts and validation stay the same
    prepare_fsdd(small_fsdd, tmp_path / "fast", "speaker", held_out="theo", n_train=5, n_val=3, seed=1, speed_perturb=0.2)
    for name in ("train", "val"):
        a, b = read_split(tmp_path / "spk" / name, 40), read_split(tmp_path / "fast" / name, 40)
        assert [u.text for u in a] == [u.text for u in b]
        same = [u.features.shape == v.features.shape and np.allclose(u.features, v.features) for u, v in zip(a, b)]
        assert all(same) if name == "val" else sum(same) <= 1     # a factor within 0.5% of 1 keeps the audio
    with pytest.raises(InputError, match="--speed-perturb"):
        prepare_fsdd(small_fsdd, tmp_path / "bad2", "speaker", speed_perturb=0.9)


@needs_shared
def test_fsdd_level_normalization_removes_recording_gain_and_gain_augments_training_only(small_fsdd, tmp_path):
    quiet = tmp_path / "quiet" / "recordings"                 # the same recordings 20 dB quieter
    quiet.mkdir(parents=True)
    for f in (small_fsdd / "recordings").glob("*.wav"):
        x, rate = soundfile.read(f, dtype="float32")
        soundfile.write(quiet / f.name, 0.1 * x, rate, subtype="FLOAT")
    kw = dict(split="speaker", held_out="theo", n_train=4, n_val=3, seed=2)
    for name, src in (("loud", small_fsdd), ("quiet", quiet.parent)):
        prepare_fsdd(src, tmp_path / name, **kw)
        prepare_fsdd(src, tmp_path / f"{name}-26", level_dbfs=-26.0, **kw)
    prepare_fsdd(quiet.parent, tmp_path / "gain", level_dbfs=-26.0, gain_db=6.0, **kw)

    def close(a, b, split="val"):
        return [np.allclose(u.features, v.features, atol=1e-3) for u, v in
                zip(read_split(tmp_path / a / split, 40), read_split(tmp_path / b / split, 40))]
    assert not any(close("loud", "quiet"))                    # fixed-level gaps: the gain shows in the features
    assert all(close("loud-26", "quiet-26"))                  # normalized: the gain is gone
    assert all(close("quiet-26", "gain")) and not any(close("quiet-26", "gain", "train"))
    raw = FeatureConfig(sample_rate=8000, normalize=False)
    prepare_fsdd(quiet.parent, tmp_path / "noisy", level_dbfs=-26.0, noise_snr_db=(5.0, 5.0), cfg=raw, **kw)
    prepare_fsdd(quiet.parent, tmp_path / "clean", level_dbfs=-26.0, cfg=raw, **kw)
    assert all(close("clean", "noisy")) and not any(close("clean", "noisy", "train"))
    for u, v in zip(read_split(tmp_path / "clean" / "train", 40), read_split(tmp_path / "noisy" / "train", 40)):
        quietest = [np.sort(f.mean(1))[:10].mean() for f in (u.features, v.features)]
        assert quietest[1] > quietest[0] + 5            # log-mel energy: noise at 5 dB SNR fills the silences
    with pytest.raises(InputError, match="--level-dbfs"):
        prepare_fsdd(small_fsdd, tmp_path / "bad", level_dbfs=3.0)
    with pytest.raises(InputError, match="--noise-snr-db"):
        prepare_fsdd(small_fsdd, tmp_path / "bad2", noise_snr_db=(20.0, 10.0))


def test_speed_perturbation_raises_pitch_and_shortens():
    from lstmkit.las.features import speed_perturb
    x = tone(1.0, 8000, 440.0)
    y = speed_perturb(x, 1.25)
    assert y.size == 6400
    peak = np.argmax(np.abs(np.fft.rfft(y))) * 8000 / y.size
    assert abs(peak - 550.0) < 5
    assert speed_perturb(x, 1.0) is x
    with pytest.raises(InputError, match="speed factor"):
        speed_perturb(x, 3.0)


@needs_shared
def test_librispeech_mini_loads_train_dev_and_the_untranscribed_test(tmp_path):
    counts = prepare_librispeech_mini(SHARED / "librispeech-fbank-mini", tmp_path / "ls")
    n_test = len(list((SHARED / "librispeech-fbank-mini" / "test-clean" / "fbank").glob("*.npy")))
    assert counts == {"train": 28, "val": 2, "test": n_test} and n_test > 0
    with pytest.raises(InputError, match="empty transcript"):
        read_split(tmp_path / "ls" / "test", 40)                       # not for training ...
    test = read_split(tmp_path / "ls" / "test", 40, allow_empty=True)  # ... but decodable
    assert len(test) == n_test and all(u.text == "" and u.features.shape[1] == 40 for u in test)
    utts = read_split(tmp_path / "ls" / "val", 40)
    assert utts[0].features.shape[1] == 40 and utts[0].text == utts[0].text.lower() and len(utts[0].text) > 20
    assert prepare_librispeech_mini(SHARED / "librispeech-fbank-mini", tmp_path / "ls80", pool_to=None,
                                    splits={"dev-clean": "val"}) == {"val": 2}
    assert read_split(tmp_path / "ls80" / "val", 80)[0].features.shape[1] == 80
