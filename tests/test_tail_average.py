"""Schedule-based iterate averaging (``optim.average_last``, issue 18's GPU recipes): the averaged
weights are the mean of the iterates after the last ``round(f * total)`` scheduled steps (the
non-monotone trigger is then off), and a run stopped before or after the start resumes exactly."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import lstmkit.lm.trainer as trainer_mod
from conftest import make_corpus, tiny_config
from lstmkit.errors import InputError
from lstmkit.lm import LanguageModelTrainer, LMConfig


def adamw_cosine(small_corpus, runs, average_last, **train):
    cfg = tiny_config(small_corpus, runs, epochs=2, log_every=1, evals_per_epoch=2, threads=1, **train)
    cfg.optim.optimizer, cfg.optim.lr, cfg.optim.weight_decay = "adamw", 0.003, 0.01
    cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = "cosine", 3, 0.05
    # nonmono 1 fires the non-monotone trigger at the first worse check; with average_last set the
    # trigger is off and only the schedule starts averaging (the run without it gets nonmono 50)
    cfg.optim.nonmono = 1 if average_last else 50
    cfg.optim.average_last = average_last
    return cfg


def fit_recording(trainer, monkeypatch):
    """Fit ``trainer``; returns the weights after every training step."""
    iterates = []
    real_step = trainer_mod.device_step

    def recording_step(*a, **k):
        res = real_step(*a, **k)
        iterates.append([p.detach().clone() for p in trainer.model.parameters()])
        return res
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "device_step", recording_step)
        trainer.fit()
    return iterates


def test_averaged_weights_are_the_mean_of_the_last_fraction_of_iterates(tmp_path, monkeypatch):
    small_corpus = make_corpus(tmp_path / "corpus", n_train=600, n_valid=100, n_test=100)
    f = 0.3
    plain = LanguageModelTrainer.from_config(adamw_cosine(small_corpus, tmp_path / "runs", 0.0), run_id="plain")
    iterates = fit_recording(plain, monkeypatch)
    assert not plain.opt.averaging
    total = plain.config.train.epochs * len(plain.loader.iterator)
    assert len(iterates) == plain.step
    # the last f of the scheduled steps, rounded to whole steps; with variable-length BPTT the run
    # can take a few steps more than the schedule's estimate: those are averaged too
    start = total - math.floor(f * total + 0.5)
    n = plain.step - start
    assert n >= 10
    expected = [torch.stack([it[i] for it in iterates[start:]]).mean(0) for i in range(len(iterates[0]))]

    avg = LanguageModelTrainer.from_config(adamw_cosine(small_corpus, tmp_path / "runs", f), run_id="avg")
    avg_iterates = fit_recording(avg, monkeypatch)
    # averaging does not change the trajectory
    assert len(avg_iterates) == len(iterates)
    assert all(torch.equal(a, b) for x, y in zip(avg_iterates, iterates) for a, b in zip(x, y))
    assert avg.opt.averaging and avg.opt.n_avg == n
    for a, e in zip(avg.opt.avg, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    recs = [json.loads(line) for line in (avg.run.path / "metrics.jsonl").read_text().splitlines()]
    begun = [r for r in recs if r["type"] == "averaging"]
    assert len(begun) == 1 and begun[0]["step"] == start
    # validations after the start score the averaged weights, those before the raw ones
    valid = [r for r in recs if r["type"] == "valid"]
    assert [r["averaging"] for r in valid] == [r["step"] > start for r in valid]
    plain_valid = [json.loads(line) for line in (plain.run.path / "metrics.jsonl").read_text().splitlines()]
    plain_valid = [r for r in plain_valid if r["type"] == "valid"]
    for a, b in zip(valid, plain_valid):
        assert (a["val_loss"] == b["val_loss"]) == (a["step"] <= start), a["step"]


@pytest.mark.slow
def test_a_run_stopped_before_or_after_the_averaging_start_resumes_exactly(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=600, n_valid=100, n_test=100)   # 7 runs: ~50 steps an epoch
    cfg = adamw_cosine(corpus, tmp_path / "runs", 0.4, deterministic=True)
    full = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id="full")
    res_full = full.fit()
    total = cfg.train.epochs * len(full.loader.iterator)
    start = total - round(0.4 * total)
    for stop in (start - 1, start, start + 2):
        cut = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id=f"cut{stop}")
        cut._should_stop = lambda c=cut, s=stop: c.step == s
        cut.fit()
        assert cut.stopped and cut.step == stop
        resumed = LanguageModelTrainer.resume(cut.run.path)
        res = resumed.fit()
        assert resumed.val_losses == full.val_losses and resumed.train_losses == full.train_losses, stop
        assert resumed.opt.n_avg == full.opt.n_avg
        for a, b in zip(resumed.opt.avg, full.opt.avg):
            assert torch.equal(a, b), stop
        assert res["test_loss"] == res_full["test_loss"], stop


@pytest.mark.parametrize("optimizer", ["ntasgd", "adamw"])
def test_with_average_last_the_non_monotone_trigger_is_off(optimizer):
    from lstmkit.lm.config import OptimConfig
    from lstmkit.lm.optim import build_optimizer
    worse = [5.0, 4.0, 4.2, 4.5]             # nonmono 1: the newest check is worse than the best before the last one
    for last, fires in ((0.0, True), (0.2, False)):
        opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), OptimConfig(optimizer=optimizer, lr=0.1, nonmono=1,
                                                                               average_last=last))
        assert opt.check(worse) is fires and opt.averaging is fires


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf")])
def test_average_last_outside_0_1_is_refused_naming_the_field(value):
    with pytest.raises(InputError, match=r"tiny\.toml: field 'optim\.average_last': found"):
        LMConfig.load("configs/tiny.toml", {"optim": {"average_last": value}})
