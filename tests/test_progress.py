"""Long phases report progress when not on a terminal (issue 21): status lines with step, rate,
elapsed time and ETA, every LSTMKIT_STATUS_SECONDS."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import make_corpus


def test_training_without_a_terminal_prints_status_lines(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=300, n_valid=40, n_test=40)
    env = {**os.environ, "LSTMKIT_STATUS_SECONDS": "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "lstmkit", "lm", "train", "--config", "tiny", "--set",
                        f'data.path="{corpus}"', "--set", 'data.format="text"', "--runs-dir", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("epoch 1: ")]
    assert len(lines) > 5
    assert "steps (" in lines[-1] and "tokens/s" in lines[-1] and "elapsed" in lines[-1] and "ETA" in lines[-1]
    assert any(ln.startswith("final test: ") for ln in r.stderr.splitlines())
    assert "\r" not in r.stderr                                  # no progress-bar redraws in a log
