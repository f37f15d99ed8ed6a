"""Exact resume after kill -9, and the numerical guard (skip, rewind, lower the learning rate),
for both trainers."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import tiny_config
from lstmkit.config import dumps_toml, to_dict
from lstmkit.lm import LanguageModelTrainer
from lstmkit.las import LASTrainer
from test_las import tiny_las_config


def records(run, kind):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if json.loads(x)["type"] == kind]


def step_losses(run):
    """step -> loss of the last time that step was logged (a resumed run logs replayed steps again)."""
    return {r["step"]: r["step_loss"] for r in records(run, "train")}


def valid_losses(run):
    """(step, validation loss, training loss so far) of every validation, in order; a resumed run
    repeats none (the checkpoint it resumes from was written after the last one it holds)."""
    last = {r["step"]: (r["step"], r["val_loss"], r.get("train_loss")) for r in records(run, "valid")}
    return [last[k] for k in sorted(last)]    # a kill between the log line and the checkpoint repeats one


def committed_step(run):
    p = run / "checkpoint" / "last.json"
    try:
        return json.loads(p.read_text())["state"]["step"] if p.exists() else -1
    except (OSError, json.JSONDecodeError):
        return -1


def kill_after_checkpoint(cmd, run, min_step, env, timeout=240):
    """Start ``cmd``, SIGKILL it once a checkpoint at ``min_step`` or later is committed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while committed_step(run) < min_step:
        assert proc.poll() is None, f"finished before the kill: {proc.stderr.read()[-2000:]}"
        assert time.time() - t0 < timeout
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return committed_step(run)


def cli_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "LSTMKIT_FP32": "1"}


def kill_resume_and_compare(tmp_path, family, cfg, kill_at_step):
    """Run ``lstmkit FAMILY train`` uninterrupted ("full") and again ("cut") killed with SIGKILL after
    the checkpoint of ``kill_at_step``, then ``--resume`` "cut" to the end. Asserts both runs log the
    same steps and bit-identical per-step losses after the checkpoint; returns (full run, cut run,
    committed step at the kill)."""
    (tmp_path / "c.toml").write_text(dumps_toml(to_dict(cfg)))
    base = [sys.executable, "-m", "lstmkit", family, "train", "--config", str(tmp_path / "c.toml")]
    env = cli_env()
    r = subprocess.run(base + ["--run-id", "full"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    full_run, run = tmp_path / "runs" / "full", tmp_path / "runs" / "cut"
    at = kill_after_checkpoint(base + ["--run-id", "cut"], run, kill_at_step, env)
    r = subprocess.run([sys.executable, "-m", "lstmkit", family, "train", "--resume", str(run)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    full, cut = step_losses(full_run), step_losses(run)
    assert sorted(cut) == sorted(full)
    assert [cut[s] for s in sorted(cut) if s > at] == [full[s] for s in sorted(full) if s > at]   # exact floats
    return full_run, run, at


@pytest.mark.slow
def test_lm_kill_9_mid_epoch_then_resume_matches_uninterrupted_run_bit_for_bit(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=2, checkpoint_every=25, log_every=1, threads=1,
                      evals_per_epoch=3, deterministic=True)     # what exact resume needs on a GPU; no change on a CPU
    full_run, run, at = kill_resume_and_compare(tmp_path, "lm", cfg, 50)
    assert 0 < at < len(step_losses(full_run)) // 6                       # before the epoch's first validation
    assert valid_losses(run) == valid_losses(full_run) and len(valid_losses(run)) == 6
    a = json.loads((full_run / "results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    assert a["test_loss"] == b["test_loss"] and a["val_loss"] == b["val_loss"]


@pytest.mark.slow
def test_las_kill_9_mid_epoch_then_resume_matches_uninterrupted_run_bit_for_bit(tmp_path):
    cfg = tiny_las_config(tmp_path / "runs", epochs=2, checkpoint_every=10, log_every=1, threads=1,
                          precision="fp32", n_plots=1, deterministic=True)
    cfg.data.toy.n_train, cfg.data.toy.n_val = 800, 16
    cfg.model.listener_hidden = cfg.model.speller_hidden = 64     # exact resume does not depend on the width
    cfg.model.key_size = cfg.model.embed_size = 32
    cfg.optim.tf_floor, cfg.optim.tf_decay = 0.5, 0.5        # scheduled sampling draws: RNG must resume too
    cfg.model.dropout_p = 0.2
    cfg.optim.ema_decay = 0.95                                # validation on averaged weights: they must resume too
    cfg.train.evals_per_epoch = 2                             # a validation inside each epoch
    full_run, run, at = kill_resume_and_compare(tmp_path, "las", cfg, 30)
    assert valid_losses(run) == valid_losses(full_run) and len(valid_losses(run)) == 4
    steps_per_epoch = 800 // 32
    assert steps_per_epoch < at < 2 * steps_per_epoch                     # inside the second epoch
    a, b = records(run, "valid")[-1], records(full_run, "valid")[-1]
    assert a["cer"] == b["cer"] and a["val_loss"] == b["val_loss"]


def poison(trainer, attr, calls):
    """Make the trainer's loss NaN on the given call numbers (1-based)."""
    original = getattr(trainer, attr) if attr else None
    n = {"calls": 0}

    def wrapped(*a, **k):
        n["calls"] += 1
        out = original(*a, **k)
        return out * float("nan") if n["calls"] in calls else out
    return wrapped, n


def test_lm_nonfinite_steps_rewind_to_last_checkpoint_with_lower_lr(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=1, checkpoint_every=10, max_nonfinite=3,
                      log_every=1)
    t = LanguageModelTrainer.from_config(cfg, run_id="nan")
    t._loss, n = poison(t, "_loss", {15, 16, 17})
    t.fit()
    run = tmp_path / "runs" / "nan"
    assert len(records(run, "nonfinite")) == 3
    (rw,) = records(run, "rewind")
    assert rw["at_step"] == 17 and rw["to_step"] == 10 and rw["lr_factor"] == 0.5
    assert t.lr_factor == 0.5 and t.rewinds == 1 and n["calls"] > 17
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_lm_gives_up_with_a_clear_error_when_rewinds_do_not_help(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=1, checkpoint_every=5, max_nonfinite=2, max_rewinds=1)
    t = LanguageModelTrainer.from_config(cfg, run_id="nan")
    t._loss, _ = poison(t, "_loss", set(range(8, 10 ** 6)))
    with pytest.raises(FloatingPointError, match="after 1 rewinds"):
        t.fit()


def test_las_nonfinite_steps_rewind_to_last_checkpoint_with_lower_lr(tmp_path, monkeypatch):
    import lstmkit.las.trainer as lt
    cfg = tiny_las_config(tmp_path / "runs", epochs=1, checkpoint_every=5, max_nonfinite=2, n_plots=0)
    cfg.data.toy.n_train, cfg.data.toy.n_val = 640, 8
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    wrapped, n = poison(lt, "las_loss", {8, 9})
    monkeypatch.setattr(lt, "las_loss", wrapped)          # before the trainer captures it in its objective
    t = LASTrainer(cfg, run_id="nan")
    t.fit()
    run = tmp_path / "runs" / "nan"
    (rw,) = records(run, "rewind")
    assert rw["at_step"] == 9 and rw["to_step"] == 5 and rw["lr_factor"] == 0.5
    assert t.opt.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr * 0.5)
    assert records(run, "valid")[-1]["step"] == 20                       # the epoch was completed after the rewind
