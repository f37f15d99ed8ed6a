"""One training process per run folder: a second one (a --resume in another terminal while the
first still trains) stops with one error before writing anything; the lock never follows a link."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import snapshot, tiny_config
from lstmkit.core.runs import RunFolder
from lstmkit.errors import InputError
from lstmkit.lm import LanguageModelTrainer


def test_a_second_training_process_on_a_run_in_use_is_refused_and_writes_nothing(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=1)
    t = LanguageModelTrainer.from_config(cfg, run_id="busy")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from lstmkit.core.runs import RunFolder\n"
        "with RunFolder(sys.argv[1]).in_use():\n    print('held', flush=True); time.sleep(60)\n"), str(t.run.path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(t.run.path)
        with pytest.raises(InputError, match=rf"in use by another training process \(pid {holder.pid}\)"):
            t.fit()
        assert snapshot(t.run.path) == before
    finally:
        holder.kill()
        holder.wait()
    res = t.fit()                                   # the lock ended with its process (killed)
    assert res["test_ppl"] > 1


def test_the_lock_is_released_after_fit_and_never_follows_a_link(tmp_path):
    run = RunFolder.create(tmp_path / "runs", run_id="r")
    with run.in_use():
        pass
    with run.in_use():                              # released: the same process may take it again
        pass
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    os.remove(run.path / ".lock")
    os.symlink(victim, run.path / ".lock")
    with pytest.raises(InputError, match=r"\.lock: cannot be opened"):
        with run.in_use():
            pass
    assert victim.read_text() == "keep me\n"
