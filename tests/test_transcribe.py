"""`lstmkit las transcribe` / `lstmkit.las.transcribe` (issue 21): new audio goes through the
features the run was trained on (recorded by `las prepare`, copied into the run)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lstmkit.errors import InputError
from lstmkit.las import LASTrainer, transcribe
from lstmkit.las.transcribe import FEATURES_FILE, audio_features, run_feature_settings
from test_las import tiny_las_config

TONES = {"a": 440.0, "b": 880.0, "c": 1320.0}


def tone_wav(path, text, rate=16000, seconds_per_char=0.12, gain=0.3):
    import soundfile
    t = np.arange(int(rate * seconds_per_char)) / rate
    x = np.concatenate([gain * np.sin(2 * np.pi * TONES[c] * t) for c in text]).astype(np.float32)
    soundfile.write(path, x, rate)


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("transcribe")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 4)):
        (root / "corpus" / split / "wav").mkdir(parents=True)
        lines = []
        for i in range(n):
            text = "".join(rng.choice(list(TONES), size=int(rng.integers(2, 4))))
            tone_wav(root / "corpus" / split / "wav" / f"u{i}.wav", text)
            lines.append(f"u{i}\t{text}")
        (root / "corpus" / split / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "lstmkit", "las", "prepare", str(root / "corpus"), str(root / "data")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg = tiny_las_config(root / "runs", epochs=1, n_plots=0)
    cfg.data.path = str(root / "data")
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    cfg.model.key_size = cfg.model.embed_size = 8
    LASTrainer(cfg, run_id="r").fit()
    return root


def test_prepare_records_the_feature_settings_and_the_run_keeps_them(audio_run):
    assert (audio_run / "data" / FEATURES_FILE).is_file()
    assert (audio_run / "runs" / "r" / FEATURES_FILE).read_text() == (audio_run / "data" / FEATURES_FILE).read_text()
    cfg, level = run_feature_settings(audio_run / "runs" / "r")
    assert cfg.sample_rate == 16000 and cfg.n_bands == 40 and level is None


def test_new_audio_gets_exactly_the_training_features(audio_run):
    cfg, level = run_feature_settings(audio_run / "runs" / "r")
    got = audio_features(audio_run / "corpus" / "val" / "wav" / "u1.wav", cfg, level)
    np.testing.assert_array_equal(got, np.load(audio_run / "data" / "val" / "feats" / "u1.npy"))


def test_transcribe_api_and_cli(audio_run, tmp_path):
    wavs = [audio_run / "corpus" / "val" / "wav" / f"u{i}.wav" for i in range(3)]
    texts = transcribe(audio_run / "runs" / "r", wavs, batch_size=2)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert transcribe(audio_run / "runs" / "r", wavs[:1], beam=3)[0] is not None
    import torch
    from emulated_cuda import emulated_cuda
    if not torch.cuda.is_available():
        with emulated_cuda():                                  # device "auto" takes the (emulated) GPU
            assert transcribe(audio_run / "runs" / "r", wavs, batch_size=2) == texts
    with pytest.raises(InputError, match="device: found 'tpu'"):
        transcribe(audio_run / "runs" / "r", wavs, device="tpu")
    r = subprocess.run([sys.executable, "-m", "lstmkit", "las", "transcribe", str(audio_run / "runs" / "r")] +
                       [str(w) for w in wavs], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.rstrip("\n").splitlines()
    assert [ln.split("\t")[0] for ln in lines] == [str(w) for w in wavs]
    assert [ln.split("\t", 1)[1] for ln in lines] == texts


def test_a_run_without_audio_settings_says_why(tmp_path):
    cfg = tiny_las_config(tmp_path / "runs", epochs=1, n_plots=0)
    cfg.data.toy.n_train, cfg.data.toy.n_val = 32, 4
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    LASTrainer(cfg, run_id="toy").fit()
    wav = tmp_path / "x.wav"
    tone_wav(wav, "ab")
    with pytest.raises(InputError, match="features.json"):
        transcribe(tmp_path / "runs" / "toy", [wav])
