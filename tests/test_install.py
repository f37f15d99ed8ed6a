"""A plain (non-editable) install works outside the checkout (issue 21): the wheel carries the
built-in configs and the demo corpus; a smoke run starts from another folder by config name, and a
wav file is prepared, trained on and transcribed there."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                        str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("lstmkit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch & co. from this environment (appended after the new venv's own site-packages)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    where = subprocess.run([str(py), "-c", "import lstmkit; print(lstmkit.__file__)"], cwd=work, capture_output=True,
                           text=True, env=env, check=True).stdout
    assert where.startswith(str(venv)), where                       # the installed copy, not the checkout
    exe = venv / "bin" / "lstmkit"
    r = subprocess.run([str(exe), "configs"], cwd=work, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "tiny" in r.stdout and "wt2-cpu" in r.stdout
    r = subprocess.run([str(exe), "lm", "train", "--config", "tiny", "--run-id", "smoke"], cwd=work,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["test_ppl"] > 1 and (work / "runs" / "smoke" / "checkpoint" / "best.json").is_file()
    # speech: prepare a tiny wav corpus, train one epoch, transcribe a file - all from the installed package
    from test_transcribe import tone_wav
    for split, texts in (("train", ["ab", "ba", "abc", "cab"] * 4), ("val", ["ab", "ca"])):
        (work / "corpus" / split / "wav").mkdir(parents=True)
        for i, text in enumerate(texts):
            tone_wav(work / "corpus" / split / "wav" / f"u{i}.wav", text)
        (work / "corpus" / split / "transcripts.tsv").write_text("".join(f"u{i}\t{t}\n" for i, t in enumerate(texts)))
    for argv in (["las", "prepare", "corpus", "data"],
                 ["las", "train", "--data", "data", "--epochs", "1", "--run-id", "speech", "--set", "model.listener_hidden=16",
                  "--set", "model.speller_hidden=16", "--set", "model.key_size=8", "--set", "model.embed_size=8"],
                 ["las", "transcribe", "runs/speech", "corpus/val/wav/u0.wav", "corpus/val/wav/u1.wav"]):
        r = subprocess.run([str(exe)] + argv, cwd=work, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, (argv, r.stderr[-3000:])
    assert [ln.split("\t")[0] for ln in r.stdout.rstrip("\n").splitlines()] == ["corpus/val/wav/u0.wav",
                                                                              "corpus/val/wav/u1.wav"]
    r = subprocess.run([str(exe), "--version"], cwd=work, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("lstmkit 0.")
