"""Exact resume after a stop (time budget, Ctrl-C) at any step, with several validations per epoch
(issue 19): every per-step loss, every validation, the epochs' training losses and the NT-ASGD /
best-checkpoint history equal an uninterrupted run's."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import make_corpus, tiny_config
from lstmkit.las import LASTrainer
from lstmkit.lm import LanguageModelTrainer
from test_las import tiny_las_config


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])   # resume on a GPU: its
# checkpoints load onto the device (random states included), and its kernels need train.deterministic


def records(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def history(run):
    """Everything the two runs must share: per-step losses (last logged value of each step), every
    validation, every epoch summary."""
    steps = {r["step"]: r["step_loss"] for r in records(run, "train")}
    valid = [(r["step"], r["val_loss"], r.get("train_loss"), r.get("switched_to_asgd")) for r in records(run, "valid")]
    epochs = [(r["epoch"], r["train_loss"], r["val_loss"]) for r in records(run, "epoch")]
    return steps, valid, epochs


def stop_at(trainer, step):
    trainer._should_stop = lambda: trainer.step == step


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_lm_stop_then_resume_at_any_step_equals_the_uninterrupted_run(tmp_path, device):
    # nonmono 1: NT-ASGD switches within the run, so its trigger history must resume exactly too
    corpus = make_corpus(tmp_path / "corpus", n_train=800, n_valid=100, n_test=100)   # 7 runs: ~70 steps an epoch
    cfg = tiny_config(corpus, tmp_path / "runs", epochs=2, log_every=1, evals_per_epoch=6, threads=1,
                      deterministic=True, device=device)        # what exact resume needs on a GPU (docs/gpu.md); no change on a CPU
    cfg.optim.nonmono = 1
    full = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id="full")
    res_full = full.fit()
    per_epoch = full.step // 2
    assert any(v[3] for v in history(full.run.path)[1])                     # the switch happened
    first_val = records(full.run.path, "valid")[0]["step"]
    for stop in (7, first_val, per_epoch):                                 # mid-epoch, at a validation, epoch end
        cut = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id=f"cut{stop}")
        stop_at(cut, stop)
        cut.fit()
        assert cut.stopped and cut.step == stop
        n_valid = len(records(cut.run.path, "valid"))
        resumed = LanguageModelTrainer.resume(cut.run.path)
        res = resumed.fit()
        assert history(cut.run.path) == history(full.run.path), stop
        assert resumed.val_losses == full.val_losses and resumed.train_losses == full.train_losses
        assert res["test_loss"] == res_full["test_loss"] and res["best_step"] == res_full["best_step"]
        assert n_valid == len([v for v in history(full.run.path)[1] if v[0] <= stop])   # no extra validation


@pytest.mark.slow
def test_lm_budget_stop_before_any_validation_still_leaves_a_usable_run(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=1, log_every=1)
    t = LanguageModelTrainer.from_config(cfg, run_id="r")
    stop_at(t, 5)
    res = t.fit()
    assert t.val_losses == [] and res["best_step"] == 5 and res["test_ppl"] > 1


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_las_stop_then_resume_equals_the_uninterrupted_run_and_keeps_training_mode(tmp_path, device):
    cfg = tiny_las_config(tmp_path / "runs", epochs=2, log_every=1, threads=1, precision="fp32", n_plots=1,
                          evals_per_epoch=2, deterministic=True, device=device)
    if device == "cuda":
        cfg.model.ctc_weight = 0.0                # CUDA's CTC backward has no deterministic kernel
    cfg.data.toy.n_train, cfg.data.toy.n_val = 320, 16
    cfg.model.listener_hidden = cfg.model.speller_hidden = 48     # exact resume does not depend on the width
    cfg.model.key_size = cfg.model.embed_size = 24
    cfg.model.dropout_p = 0.3                     # a validation that left eval mode on would change the losses
    cfg.optim.tf_floor, cfg.optim.tf_decay = 0.5, 0.5
    full = LASTrainer(copy.deepcopy(cfg), run_id="full")
    full.fit()
    per_epoch = full.step // 2
    for stop in (3, per_epoch // 2 + 1):
        cut = LASTrainer(copy.deepcopy(cfg), run_id=f"cut{stop}")
        stop_at(cut, stop)
        out = cut.fit()
        assert cut.stopped and out["type"] == "stop"
        resumed = LASTrainer.resume(cut.run.path)
        resumed.fit()
        assert history(cut.run.path)[:2] == history(full.run.path)[:2], stop
        assert resumed.best_cer == full.best_cer


def test_las_training_mode_is_restored_after_a_mid_epoch_validation(tmp_path, monkeypatch):
    cfg = tiny_las_config(tmp_path / "runs", epochs=1, log_every=1, threads=1, precision="fp32", n_plots=0,
                          evals_per_epoch=2)
    cfg.data.toy.n_train, cfg.data.toy.n_val = 128, 8
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    cfg.model.key_size = cfg.model.embed_size = 8
    t = LASTrainer(cfg, run_id="r")
    modes = []
    original = t.objective

    def spy(*a, **k):
        modes.append(t.model.training)
        return original(*a, **k)
    t.objective = spy
    t.fit()
    assert len(modes) == 4 and all(modes)
