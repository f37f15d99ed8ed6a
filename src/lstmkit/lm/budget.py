"""Fit the schedule to a time budget: how many epochs of this config fit in ``train.max_minutes``
on this machine (``train.fit_epochs = true``).

A schedule that decays over ``train.epochs`` (cosine, per-epoch decay) only ends where it should if
that many epochs fit in the budget, and how many fit depends on the GPU: a recipe tuned on an H200
would stop mid-schedule, at a high learning rate, on a smaller card. With ``fit_epochs`` the
trainer first times a few training steps and a slice of the validation pass **on copies** of the
model and optimizer, with the random state saved and restored, then sets ``train.epochs`` to what
fits and writes it into the run's ``config.toml``. The run that follows is step for step the run
``--epochs N`` would give, and a resume reads the fitted ``N`` back instead of timing again.
"""
from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path

import torch

from ..core.checkpoint import rng_state, set_rng_state
from ..core.device import to_device
from ..core.train import device_step

MARGIN = 0.03          # share of the budget kept free for what the timing does not see (plots, artifacts)


def epochs_that_fit(budget_s: float, step_s: float, windows_per_epoch: int, val_s: float, evals_per_epoch: int,
                    cap: int, extra_s: float = 0.0, margin: float = MARGIN) -> int:
    """Whole epochs (training windows, ``evals_per_epoch`` validations and ``extra_s`` of artifacts
    each) that fit in ``budget_s x (1 - margin)``; at least 1, at most ``cap``.

    >>> epochs_that_fit(600, step_s=0.02, windows_per_epoch=373, val_s=0.5, evals_per_epoch=1, cap=1000)
    73
    >>> 600 * 0.97 // (0.02 * 373 + 0.5)      # 582 s usable / 7.96 s per epoch
    73.0
    """
    per_epoch = step_s * windows_per_epoch + val_s * evals_per_epoch + extra_s
    if not (math.isfinite(per_epoch) and per_epoch > 0):
        raise ValueError(f"epochs_that_fit: seconds per epoch {per_epoch!r}; expected a positive number")
    return max(1, min(cap, int(budget_s * (1.0 - margin) // per_epoch)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(trainer, warmup: int = 2, max_steps: int = 20, max_seconds: float = 20.0) -> dict:
    """Seconds per training window and per validation pass of ``trainer``'s config on its device,
    measured on copies of its model and optimizer over the first windows of the training stream.
    The trainer's model, optimizer, data position and every random state are left as they were."""
    from ..core.plots import plot_curves
    from .evaluate import stream_loss
    from .generate import TestLanguageModel
    from .model import detach_hidden
    from .optim import build_optimizer
    from .trainer import _lm_objective
    cfg, rt = trainer.config, trainer.runtime
    dev, o, d = rt.device, cfg.optim, cfg.data
    saved = rng_state(dev)
    model = copy.deepcopy(trainer.model).train()
    opt = build_optimizer(model.parameters(), o)
    rows = trainer.loader.iterator.rows
    bptt = min(d.bptt, rows.size(1) - 1)
    n_windows = max(1, (rows.size(1) - 1) // bptt)
    hidden = [None]

    def step(i: int):
        s = (i % n_windows) * bptt
        x, y = to_device(rows[:, s:s + bptt], dev), to_device(rows[:, s + 1:s + 1 + bptt], dev)   # as the trainer
        if hidden[0] is None:
            hidden[0] = model.init_hidden(x.size(0), dev)

        def loss():
            out, _, hidden[0] = _lm_objective(model, x, y, detach_hidden(hidden[0]), o.alpha, o.beta)
            return out
        return device_step(loss, opt, model.parameters(), o.clip, rt)

    try:
        for i in range(max(1, warmup)):          # first calls: allocations, kernel choice (cuDNN plans)
            t = time.perf_counter()
            step(i)
            _sync(dev)
            first = time.perf_counter() - t
        n = max(2, min(max_steps, int(max_seconds / 2 / max(first, 1e-6))))
        t = time.perf_counter()
        for i in range(n):
            step(max(1, warmup) + i)
        _sync(dev)
        step_s = (time.perf_counter() - t) / n
        model.eval()
        valid = trainer.loader.corpus.valid
        part = valid[: min(len(valid), d.check_rows * (d.bptt * 8 + 1))]   # as the validations during training
        stream_loss(model, part[: d.check_rows * (d.bptt + 1)], d.check_rows, d.bptt, rt)   # warm-up
        _sync(dev)
        t = time.perf_counter()
        stream_loss(model, part, d.check_rows, d.bptt, rt)
        _sync(dev)
        val_s = (time.perf_counter() - t) * len(valid) / max(len(part), 1)
        t = time.perf_counter()                 # each epoch's artifacts: scores, continuations, loss.png
        for ctx, _ in (trainer.dev_ctx, trainer.test_ctx):
            TestLanguageModel.prediction(ctx, model)
            TestLanguageModel.generation(ctx[:8], cfg.train.generate_len, model)
        with tempfile.TemporaryDirectory() as tmp:
            plot_curves(Path(tmp) / "loss.png", {"train": ([0, 1], [1.0, 0.5]), "dev": ([1], [0.7])}, xlabel="step")
        extra_s = time.perf_counter() - t
    finally:
        set_rng_state(saved, dev)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"step_s": step_s, "val_s": val_s, "extra_s": extra_s, "timed_steps": n, "bptt": bptt}


def fit_epochs(trainer, minutes: float) -> int:
    """Time this config (:func:`time_training`), set ``train.epochs`` (and ``trainer.max_epochs``) to
    the epochs that fit in ``minutes`` (never more than the configured ``train.epochs``), record it
    in the run's ``config.toml`` (with ``fit_epochs = false``, so a resume keeps it) and in
    ``metrics.jsonl``. Under torchrun the ranks average their timings (taken without the gradient
    all-reduce, which the 3% margin has to cover) and agree on one number."""
    from ..config import dumps_toml, to_dict
    from ..core.distributed import all_sum
    from ..errors import InputError
    if not minutes:
        raise InputError("train.fit_epochs", "true without a time budget", "train.max_minutes or --max-minutes")
    if trainer.step:
        raise InputError("train.fit_epochs", f"true for a run at step {trainer.step}",
                         "false: epochs are fitted once, when a run starts (its config.toml keeps the number)")
    t0 = time.time()
    m = time_training(trainer)
    world = trainer.dist.world
    step_s, val_s, extra_s = (v / world for v in all_sum([m["step_s"], m["val_s"], m["extra_s"]], trainer.dist))
    t = trainer.config.train
    cap = t.epochs
    n = epochs_that_fit(60.0 * minutes, step_s, len(trainer.loader), val_s, t.evals_per_epoch, cap, extra_s)
    t.epochs, t.fit_epochs, trainer.max_epochs = n, False, n
    if trainer.dist.main:
        trainer.run.write_text("config.toml", dumps_toml(to_dict(trainer.config)))
    rec = {"type": "fit_epochs", "epochs": n, "cap": cap, "minutes": minutes, "step_s": round(step_s, 6),
           "windows_per_epoch": len(trainer.loader), "val_s": round(val_s, 4), "artifacts_s": round(extra_s, 4), "timed_steps": m["timed_steps"],
           "timing_s": round(time.time() - t0, 2)}
    trainer.run.log_metrics(rec)
    if trainer.dist.main:
        print(f"fit_epochs: {step_s * 1000:.1f} ms per window x {len(trainer.loader)} windows + validation "
              f"{val_s:.1f} s x {t.evals_per_epoch} + artifacts {extra_s:.1f} s per epoch -> {n} epochs fit in {minutes:g} minutes"
              f"{' (the cap, train.epochs)' if n == cap else ''}; timed in {rec['timing_s']} s", flush=True)
    return n
