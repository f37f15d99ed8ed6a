"""train.fit_epochs (lm/budget.py): the schedule's length fitted to the time budget on the machine
that trains, without changing the run that follows (issue 18: recipes that end their schedule
inside the budget on any GPU)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from conftest import tiny_config
from lstmkit.config import load_toml
from lstmkit.errors import InputError
from lstmkit.lm import LanguageModelTrainer, LMConfig
from lstmkit.lm.budget import epochs_that_fit


def records(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


@pytest.mark.parametrize("budget,step,windows,val,evals,cap,extra", [
    (390.0, 0.014, 373, 0.3, 1, 1000, 0.4),     # a 6.5-minute GPU recipe
    (3600.0, 2.5, 373, 40.0, 2, 750, 1.0),      # an hour on a CPU, two validations per epoch
    (60.0, 1.0, 100, 5.0, 1, 750, 0.0),         # less than one epoch fits: one epoch still runs
    (900.0, 0.001, 100, 0.0, 1, 40, 0.0),       # more than the cap fits: the cap
])
def test_epochs_that_fit_is_the_budget_over_an_epochs_time(budget, step, windows, val, evals, cap, extra):
    usable = budget * 0.97                             # 3% kept for what the timing does not see
    per_epoch = step * windows + val * evals + extra
    expected = min(cap, max(1, math.floor(usable / per_epoch)))
    assert epochs_that_fit(budget, step, windows, val, evals, cap, extra) == expected


def test_epochs_that_fit_refuses_a_zero_or_broken_timing():
    for step, val in ((0.0, 0.0), (float("nan"), 1.0), (float("inf"), 0.0)):
        with pytest.raises(ValueError, match="seconds per epoch"):
            epochs_that_fit(60.0, step, 10, val, 1, 10)


def steps_and_validations(run):
    return ({r["step"]: r["step_loss"] for r in records(run, "train")},
            [(r["step"], r["val_loss"]) for r in records(run, "valid")])


@pytest.mark.slow
def test_fitting_leaves_the_run_exactly_as_with_the_fitted_epochs_given(small_corpus, tmp_path):
    """Timing runs on copies with the random state restored: the fitted run equals a run started
    with ``epochs = N`` step for step; its config.toml records N, so a resume keeps it."""
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=2, log_every=1, threads=1, max_minutes=30.0)
    cfg.train.fit_epochs = True
    fitted = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id="fitted")
    res = fitted.fit()
    fit = records(fitted.run.path, "fit_epochs")
    assert len(fit) == 1 and fit[0]["epochs"] == 2 and fit[0]["cap"] == 2     # 30 minutes: the cap
    assert fit[0]["step_s"] > 0 and fit[0]["val_s"] > 0 and fit[0]["artifacts_s"] > 0
    stored = load_toml(LMConfig, fitted.run.path / "config.toml")
    assert stored.train.epochs == 2 and stored.train.fit_epochs is False
    plain_cfg = copy.deepcopy(cfg)
    plain_cfg.train.fit_epochs = False
    plain = LanguageModelTrainer.from_config(plain_cfg, run_id="plain")
    res_plain = plain.fit()
    assert steps_and_validations(fitted.run.path) == steps_and_validations(plain.run.path)
    assert res["test_loss"] == res_plain["test_loss"]


@pytest.mark.slow
def test_a_short_budget_fits_fewer_epochs_and_the_schedule_ends_inside_it(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=10_000, log_every=1, threads=1, max_minutes=0.1)
    cfg.train.fit_epochs = True
    cfg.optim.schedule = "cosine"
    t = LanguageModelTrainer.from_config(cfg, run_id="short")
    t.fit()
    n = records(t.run.path, "fit_epochs")[0]["epochs"]
    assert 1 <= n < 10_000 and t.max_epochs == n == t.config.train.epochs
    lrs = [r["lr"] for r in records(t.run.path, "train")]
    if not t.stopped:                      # the cosine reached its end (min_lr_ratio 0) inside the budget
        assert lrs[-1] < 0.05 * lrs[0]


def test_fit_epochs_needs_a_budget_and_a_new_run(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=1)
    cfg.train.fit_epochs = True
    t = LanguageModelTrainer.from_config(cfg, run_id="nobudget")
    with pytest.raises(InputError, match="train.fit_epochs.*max_minutes"):
        t.fit()
    t.step = 5                              # a resumed run: fitting again would change its schedule
    with pytest.raises(InputError, match="fitted once"):
        t.fit(max_minutes=1.0)


@pytest.mark.slow
def test_validations_in_training_use_check_batch_size_and_the_final_dev_number_eval_batch_size(small_corpus, tmp_path):
    from lstmkit.lm.evaluate import stream_loss
    from lstmkit.lm import load_model
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=1, threads=1)
    cfg.data.check_batch_size, cfg.data.eval_batch_size = 3, 4
    t = LanguageModelTrainer.from_config(cfg, run_id="check")
    res = t.fit()
    model, valid, bptt = load_model(t.run.path), t.loader.corpus.valid, cfg.data.bptt
    checked = records(t.run.path, "valid")[0]["val_loss"]
    assert checked == pytest.approx(stream_loss(model, valid, 3, bptt), rel=1e-6)
    assert res["val_loss"] == pytest.approx(stream_loss(model, valid, 4, bptt), rel=1e-6)
    assert checked != res["val_loss"]


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_timing_leaves_weights_optimizer_data_position_and_random_state_untouched(small_corpus, tmp_path, device):
    from lstmkit.lm.budget import time_training
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=1, threads=1, device=device)
    cfg.optim.optimizer = "adamw"                 # an optimizer with state to disturb
    cfg.optim.lr = 1e-3
    t = LanguageModelTrainer.from_config(cfg, run_id="timing")
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}
    opt_state = repr(t.opt.state_dict())
    pos = t.loader.iterator.state_dict()
    rng = [torch.get_rng_state()] + (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    m = time_training(t, warmup=1, max_steps=3)
    assert m["step_s"] > 0 and m["val_s"] > 0 and m["extra_s"] > 0 and m["timed_steps"] >= 2
    assert all(torch.equal(v, weights[k]) for k, v in t.model.state_dict().items())
    assert repr(t.opt.state_dict()) == opt_state and t.loader.iterator.state_dict() == pos
    after = [torch.get_rng_state()] + (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    assert all(torch.equal(a, b) for a, b in zip(rng, after)) and t.step == 0
