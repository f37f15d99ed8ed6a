"""A plain (non-editable) install works outside the checkout (issue 21): the wheel carries the
built-in configs and the demo corpus, and a smoke run starts from another folder by config name."""
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
