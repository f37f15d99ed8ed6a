"""LanguageModelTrainer: the AWD-LSTM training loop with the seed's ``train()/test()/save()`` API.

Each validation writes to the run folder ``runs/<unix-time>/``: ``metrics.jsonl``, ``loss.png``,
``predictions-<epoch>.npy`` (dev scores, (n, V) float32), ``predictions-test-<epoch>.npy``,
``generated-<epoch>.txt`` / ``generated-<epoch>-test.txt`` (prompt | continuation) and the
``last``/``best`` checkpoints; ``LanguageModelTrainer.resume(run)`` continues a run exactly.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ..config import dumps_toml, load_toml, to_dict
from ..core.checkpoint import check_state, require_resumable, has_checkpoint, load_checkpoint, load_module_weights, module_weights, rng_state, save_checkpoint, set_rng_state
from ..core.device import Runtime, deterministic_mode, pick_runtime, to_device
from ..core.distributed import Objective, any_rank, barrier, device_for, gather_rows, init_distributed, wrap
from ..core.plots import plot_curves
from ..core.progress import Progress
from ..core.runs import RunFolder
from ..core.train import Rewind, RewindOnNonFinite, StepResult, StopFlag, device_step, read_steps
from .config import LMConfig
from .data import LanguageModelDataLoader, Vocabulary, load_corpus
from .evaluate import draw_contexts, nll_of_scores, perplexity, stream_loss
from .generate import TestLanguageModel
from .model import AWDLSTM, detach_hidden
from .optim import activation_regularization, averaging_start, build_optimizer, lr_multiplier, should_switch_to_asgd, temporal_activation_regularization


def _lm_objective(model: AWDLSTM, x, y, hidden, alpha: float, beta: float):
    """Training loss of one window -> (loss with AR/TAR, cross-entropy (detached), new hidden)."""
    dropped, raw, hidden = model.features(x, hidden)
    ce = model.loss(dropped, y)
    loss = ce
    if alpha:
        loss = loss + activation_regularization(dropped, alpha)
    if beta:
        loss = loss + temporal_activation_regularization(raw, beta)
    return loss, ce.detach(), hidden


class LanguageModelTrainer(RewindOnNonFinite):
    """Train an :class:`AWDLSTM` on ``loader``; ``run_id`` names the run folder (default: unix time)."""

    def __init__(self, model: AWDLSTM, loader: LanguageModelDataLoader, max_epochs: int = 1, run_id: str | None = None,
                 config: LMConfig | None = None, runtime: Runtime | None = None, run: RunFolder | None = None):
        self.config = cfg = config or LMConfig(model=model.config)
        self.model, self.loader, self.max_epochs = model, loader, max_epochs
        self.vocab = loader.corpus.vocab
        model.vocab = self.vocab
        self.dist = init_distributed(cfg.train.device)
        self.runtime = runtime or pick_runtime(device_for(self.dist, cfg.train.device), cfg.train.precision, cfg.train.threads,
                                                cfg.train.deterministic)
        model.to(self.runtime.device)
        if self.dist.enabled and loader.iterator.rows.size(0) * self.dist.world != loader.batch_size:
            raise ValueError("distributed training: build the loader with rows=dist.rows(batch_size) "
                             "(LanguageModelTrainer.from_config does)")
        self.objective = wrap(Objective(model, _lm_objective), self.dist)
        if run is not None and not self.dist.main:
            run = RunFolder(run.path, readonly=True)
        self.run = run or RunFolder.create_on_main(self.dist, cfg.train.runs_dir, run_id)
        if run is None and self.dist.main:
            self.run.write_text("config.toml", dumps_toml(to_dict(cfg)))
            self.vocab.save(self.run.file("vocab.txt"))
        o = cfg.optim
        self.opt = build_optimizer(model.parameters(), o)
        self.epoch, self.step, self.hidden = 0, 0, None
        self.epoch_windows = 0                  # windows trained in the running epoch
        self.epoch_loss = [0.0, 0]              # their summed cross-entropy and count (finite steps)
        self._pending: list = []                # (step, DeviceStep, cross-entropy) not yet read from the device
        self.val_losses: list[float] = []
        self.train_losses: list[float] = []
        self.best_val = math.inf
        self.elapsed = 0.0          # training seconds over all sessions of this run
        self.stopped = False        # time budget reached or Ctrl-C
        self.nonfinite = 0
        self.lr_factor, self.rewinds = 1.0, 0   # numerical guard: lowered learning rate after a rewind
        t = cfg.train
        self.dev_ctx = draw_contexts(loader.corpus.valid, t.n_predictions, t.context_len, seed=t.seed)
        self.test_ctx = draw_contexts(loader.corpus.test, t.n_predictions, t.context_len, seed=t.seed + 1)
        self._deadline = math.inf
        self._flag: StopFlag | None = None

    # ----------------------------------------------------------------------------- training
    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        o = self.config.optim
        loss, ce, self.hidden = self.objective(x, y, self.hidden, o.alpha, o.beta)
        self._last_ce = ce
        return loss

    def train(self) -> float:
        """Train one epoch (or until the time budget / Ctrl-C); returns the mean training NLL of the
        epoch's windows so far. The window count and the loss sums of the running epoch are part of
        the checkpoint, so a resumed epoch validates at the same windows and reports the same mean."""
        cfg, it = self.config, self.loader.iterator
        self.model.train()
        dev = self.runtime.device
        evals = {int(len(it) * k / cfg.train.evals_per_epoch) for k in range(1, cfg.train.evals_per_epoch)}
        scheduled = cfg.train.epochs * len(it)      # steps of the learning-rate schedule and tail averaging
        bar = Progress(len(it), f"epoch {self.epoch + 1}", "steps", "tokens/s", initial=min(self.epoch_windows, len(it)),
                       enabled=self.dist.main)
        t0 = t_log = time.time()
        tokens = 0
        for x, y in it:
            x, y = to_device(x, dev), to_device(y, dev)     # no host sync (pinned, non-blocking)
            if self.hidden is None or self.hidden[0][0].size(1) != x.size(0):
                self.hidden = self.model.init_hidden(x.size(0), dev)
            self.hidden = detach_hidden(self.hidden)
            o = cfg.optim
            if o.average_last and not self.opt.averaging and self.step >= averaging_start(scheduled, o.average_last):
                self.opt.start_averaging(self.epoch)         # the schedule's tail: average from here on
                self.run.log_metrics({"type": "averaging", "epoch": self.epoch + 1, "step": self.step,
                                      "reason": f"optim.average_last = {o.average_last}"})
            sched = lr_multiplier(self.step + 1, scheduled, o.warmup_steps, o.schedule, o.min_lr_ratio)
            self.opt.set_lr_scale(it.last_scale * o.lr_decay ** self.epoch * self.lr_factor * sched)
            res = device_step(lambda: self._loss(x, y), self.opt, self.model.parameters(), cfg.optim.clip, self.runtime,
                              agree=self.dist.enabled)
            self.step += 1
            self.epoch_windows += 1
            self._pending.append((self.step, res, self._last_ce))     # read at the next sync point, not now
            tokens += x.numel()
            bar.update(1, x.numel() * self.dist.world)
            log = self.step % cfg.train.log_every == 0
            due = cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0
            if log or due or self.epoch_windows in evals:
                last = self._settle()
                total, count = self.epoch_loss
                if log and count:
                    bar.set_postfix(loss=round(total / count, 3), ppl=round(perplexity(total / count)))
                    self.run.log_metrics({"type": "train", "epoch": self.epoch + 1, "step": self.step,
                                          "loss": total / count, "step_loss": last[0], "step_ce": last[2],
                                          "lr": self.opt.param_groups[0]["lr"],
                                          "grad_norm": last[1], "tokens_per_s": round(tokens / (time.time() - t_log), 1)})
                    t_log, tokens = time.time(), 0
            if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                self.save()
            if self.epoch_windows in evals:
                self.elapsed += time.time() - t0
                self.validate(partial=True)
                self.model.train()
                t0 = time.time()
            if self._should_stop():
                self.stopped = True
                break
        bar.close()
        self._settle()
        self.elapsed += time.time() - t0
        total, count = self.epoch_loss
        mean = total / max(count, 1)
        if not self.stopped:
            self.epoch += 1
            self.hidden = None
            self.train_losses.append(mean)
            self.epoch_windows, self.epoch_loss = 0, [0.0, 0]
        return mean

    def _settle(self) -> tuple[float, float, float] | None:
        """Read the steps since the last sync point in one transfer: add the finite ones to the epoch's
        loss sums, log and count the non-finite ones (a rewind after ``train.max_nonfinite`` in a
        row is decided here, before any checkpoint is written). Returns the last step's (loss, grad
        norm, cross-entropy), the mean over ranks under torchrun."""
        rows, self._pending = read_steps(self._pending, self.dist), []
        last = None
        for step, loss, norm, ok, ce in rows:
            if not ok:
                self._on_nonfinite(StepResult(loss, norm, True), step)
            else:
                self.nonfinite = 0
                self.epoch_loss = [self.epoch_loss[0] + ce, self.epoch_loss[1] + 1]
            last = (loss, norm, ce)
        return last

    def _should_stop(self) -> bool:
        local = (self._flag is not None and self._flag.stop) or time.time() > self._deadline
        return any_rank(local, self.dist)       # every rank stops at the same step

    # ----------------------------------------------------------------------------- evaluation
    def validate(self, partial: bool = False) -> float:
        """Validation NLL with the (averaged) weights; NT-ASGD check; metrics, best/last checkpoint."""
        d = self.config.data
        with self.opt.averaged():
            val = stream_loss(self.model, self.loader.corpus.valid, d.check_rows, d.bptt, self.runtime, self.dist)
            if val < self.best_val:
                self.best_val = val
                if self.dist.main:
                    save_checkpoint(self.run.checkpoint_dir, "best", f"{self.step:09d}", module_weights(self.model),
                                    {}, {"epoch": self.epoch, "step": self.step, "val_loss": val})
        self.val_losses.append(val)
        switched = self.opt.check(self.val_losses, self.epoch)
        self.run.log_metrics({"type": "valid", "epoch": self.epoch + (0 if not partial else 1), "step": self.step,
                              "partial_epoch": partial, "val_loss": val, "val_ppl": perplexity(val),
                              "averaging": self.opt.averaging, "switched_to_asgd": switched,
                              "elapsed_s": round(self.elapsed, 1)})
        self.save()
        return val

    def test(self) -> float:
        """Validate and write this epoch's artifacts; returns the dev NLL (per token, nats)."""
        val = self.validate()
        e = self.epoch
        if not self.dist.main:                       # artifacts: rank 0 only
            return val
        with self.opt.averaged():
            for suffix, (ctx, tgt) in (("", self.dev_ctx), ("-test", self.test_ctx)):
                scores = TestLanguageModel.prediction(ctx, self.model)
                name = f"predictions-{e}.npy" if not suffix else f"predictions-test-{e}.npy"
                np.save(self.run.file(name), scores)
                gen = TestLanguageModel.generation(ctx[:8], self.config.train.generate_len, self.model)
                lines = [self.vocab.join(self.vocab.decode(c)) + " | " + self.vocab.join(self.vocab.decode(g)) for c, g in zip(ctx, gen)]
                self.run.write_text(f"generated-{e}{suffix}.txt", "\n".join(lines) + "\n")
                nll = nll_of_scores(scores, tgt)
                if not suffix:
                    dev_nll = nll
                else:
                    test_nll = nll
        train = self.train_losses[-1] if self.train_losses else float("nan")
        # the fixed-context NLL of the few artifact contexts is too noisy to follow training (it can
        # rise while perplexity falls): it goes to metrics.jsonl only; `lstmkit lm eval` measures it
        # on enough contexts
        print(f"epoch {e}: train NLL {train:.4f} (ppl {perplexity(train):.1f}) | dev NLL {val:.4f} "
              f"(ppl {perplexity(val):.1f})", flush=True)
        self.run.log_metrics({"type": "epoch", "epoch": e, "step": self.step, "train_loss": train, "val_loss": val,
                              "fixed_context_nll_dev": dev_nll, "fixed_context_nll_test": test_nll,
                              "fixed_context_n": len(self.dev_ctx[0]), "elapsed_s": round(self.elapsed, 1)})
        recs = self.run.metrics()
        steps = {r["step"]: r.get("step_ce", r["step_loss"]) for r in recs if r.get("type") == "train"}   # last record
        valid = {r["step"]: r["val_loss"] for r in recs if r.get("type") == "valid"}
        plot_curves(self.run.file("loss.png"),
                    {f"train (one window every {self.config.train.log_every} steps)": (sorted(steps), [steps[k] for k in sorted(steps)]),
                     "dev (whole split)": (sorted(valid), [valid[k] for k in sorted(valid)])},
                    xlabel="step", title=f"AWD-LSTM cross-entropy per token ({self.run.path.name})")
        return val

    # ----------------------------------------------------------------------------- persistence
    def save(self) -> None:
        """Write the ``last`` checkpoint atomically (weights, optimizer, RNG, data position, hidden)."""
        hidden = [[gather_rows(t, self.dist, dim=1) for t in h] for h in self.hidden] if self.hidden is not None else []
        if not self.dist.main:                       # the hidden state of all streams is gathered on rank 0
            barrier(self.dist)                       # which writes; then every rank may read it (rewinds)
            return
        extra = {"optim": self.opt.state_dict(), "rng": rng_state(self.runtime.device), "hidden": hidden}
        state = {"epoch": self.epoch, "step": self.step, "val_losses": self.val_losses,
                 "train_losses": self.train_losses, "best_val": self.best_val, "elapsed": self.elapsed,
                 "loader": self.loader.iterator.state_dict(), "lr_factor": self.lr_factor, "rewinds": self.rewinds,
                 "epoch_windows": self.epoch_windows, "epoch_loss": self.epoch_loss}
        save_checkpoint(self.run.checkpoint_dir, "last", f"{self.step:09d}", module_weights(self.model), extra, state)
        barrier(self.dist)

    def _restore(self) -> None:
        weights, extra, st = load_checkpoint(self.run.checkpoint_dir, "last", self.runtime.device)
        where = str(self.run.checkpoint_dir / "last.json")
        check_state(st, where, {"epoch": (int, 0, self.config.train.epochs), "step": (int, 0, None),
                                "elapsed": ((int, float), 0, None), "lr_factor": ((int, float), 1e-30, 1.0),
                                "rewinds": (int, 0, None), "epoch_windows": (int, 0, None),
                                "val_losses": (list, 0, None), "train_losses": (list, 0, None),
                                "loader": (dict, 0, None), "epoch_loss": (list, 0, None)})
        check_state(st["loader"], where + ": loader", {"pos": (int, 0, self.loader.iterator.rows.size(1))})
        load_module_weights(self.model, weights, str(self.run.checkpoint_dir))
        self.opt.load_state_dict(extra["optim"])
        set_rng_state(extra["rng"], self.runtime.device)
        rows = self.dist.rows(self.loader.batch_size)    # the saved state holds every stream: take ours
        self.hidden = [tuple(t[:, rows] for t in h) for h in extra["hidden"]] or None
        self.epoch, self.step, self.elapsed = st["epoch"], st["step"], st["elapsed"]
        self.val_losses, self.train_losses, self.best_val = st["val_losses"], st["train_losses"], st["best_val"]
        self.loader.iterator.load_state_dict(st["loader"])
        self.lr_factor, self.rewinds = st.get("lr_factor", 1.0), st.get("rewinds", 0)
        self.epoch_windows = int(st.get("epoch_windows", 0))
        self.epoch_loss = [float(v) for v in st.get("epoch_loss", [0.0, 0])]
        self.epoch_loss[1] = int(self.epoch_loss[1])

    @classmethod
    def from_config(cls, config: LMConfig, run_id: str | None = None) -> "LanguageModelTrainer":
        torch.manual_seed(config.train.seed)
        np.random.seed(config.train.seed)
        corpus = load_corpus(config.data)
        config.model.vocab_size = len(corpus.vocab)
        model = AWDLSTM(config.model)
        d = config.data
        rows = init_distributed(config.train.device).rows(d.batch_size)
        loader = LanguageModelDataLoader(corpus, d.batch_size, d.bptt, d.variable_bptt, seed=config.train.seed, rows=rows)
        return cls(model, loader, config.train.epochs, run_id, config)

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: dict | None = None) -> "LanguageModelTrainer":
        """Continue the run in ``run_dir`` from its ``last`` checkpoint (same folder, same metrics)."""
        run = RunFolder.open(run_dir, "lm")
        require_resumable(run.path, "lm")
        config = load_toml(LMConfig, run.path / "config.toml", overrides)
        vocab = Vocabulary.load(run.path / "vocab.txt", unit=config.data.unit)
        corpus = load_corpus(config.data, vocab=vocab if config.data.format != "npy" else None)
        model = AWDLSTM(config.model)
        d = config.data
        rows = init_distributed(config.train.device).rows(d.batch_size)
        loader = LanguageModelDataLoader(corpus, d.batch_size, d.bptt, d.variable_bptt, seed=config.train.seed, rows=rows)
        trainer = cls(model, loader, config.train.epochs, config=config, run=run)
        trainer._restore()
        return trainer

    @classmethod
    def finetune(cls, run_dir: str | Path, run_id: str | None = None, overrides: dict | None = None) -> "LanguageModelTrainer":
        """The paper's fine-tuning stage (its ``finetune.py``): a new run that starts from the best
        weights of ``run_dir`` and averages the iterates from the first step (ASGD, or Adam with
        averaging when the run used Adam), stopping once the averaged validation loss has not
        improved for ``optim.nonmono`` checks (``train.stop_on_plateau``)."""
        src = RunFolder.open(run_dir, "lm")
        config = load_toml(LMConfig, src.path / "config.toml", overrides)
        config.train.stop_on_plateau = True
        if "runs_dir" not in (overrides or {}).get("train", {}):
            config.train.runs_dir = str(src.path.parent)          # beside the run it continues
        vocab = Vocabulary.load(src.path / "vocab.txt", unit=config.data.unit)
        corpus = load_corpus(config.data, vocab=vocab if config.data.format != "npy" else None)
        model = AWDLSTM(config.model)
        weights, _, st = load_checkpoint(src.checkpoint_dir, "best")
        load_module_weights(model, weights, str(src.checkpoint_dir / "best.json"))
        d = config.data
        rows = init_distributed(config.train.device).rows(d.batch_size)
        loader = LanguageModelDataLoader(corpus, d.batch_size, d.bptt, d.variable_bptt, seed=config.train.seed + 1, rows=rows)
        trainer = cls(model, loader, config.train.epochs, run_id or f"{src.path.name}-finetune", config)
        trainer.opt.start_averaging(0)
        trainer.run.log_metrics({"type": "finetune", "from_run": str(src.path), "from_step": st["step"],
                                 "from_val_loss": st.get("val_loss")})
        return trainer

    def fit(self, max_minutes: float | None = None) -> dict:
        """Train up to ``max_epochs`` (or ``max_minutes`` of wall time), validating each epoch; then
        evaluate the best checkpoint on the test split. Ctrl-C stops cleanly after a checkpoint."""
        with self.run.in_use(), deterministic_mode(self.config.train.deterministic):
            return self._fit(max_minutes or self.config.train.max_minutes)

    def _fit(self, minutes: float | None) -> dict:
        if self.config.train.fit_epochs:       # before the clock starts: time the config, fit the schedule
            from .budget import fit_epochs
            fit_epochs(self, minutes)
        self._deadline = time.time() + 60 * minutes if minutes else math.inf
        with StopFlag() as self._flag:
            while self.epoch < self.max_epochs and not self.stopped:
                try:
                    self.train()
                except Rewind as r:
                    self.rewind(r.step)
                    continue
                if self.stopped:       # mid-epoch: commit the exact position; no validation enters the history
                    self._stop_checkpoint()
                    break
                self.test()
                if self.config.train.stop_on_plateau and should_switch_to_asgd(self.val_losses, self.config.optim.nonmono):
                    print(f"validation has not improved for {self.config.optim.nonmono} checks: done", flush=True)
                    break
        return self.final_eval()

    def _stop_checkpoint(self) -> None:
        """After a time-budget stop or Ctrl-C: save ``last`` (resume continues exactly as if never
        stopped) and, when no validation has made a ``best`` checkpoint yet, save the current
        (averaged) weights as ``best`` without counting them as a validation, so the run can be
        evaluated and used; the first real validation after a resume replaces them."""
        self.save()
        if self.dist.main and not has_checkpoint(self.run.checkpoint_dir, "best"):
            with self.opt.averaged():
                save_checkpoint(self.run.checkpoint_dir, "best", f"{self.step:09d}", module_weights(self.model), {},
                                {"epoch": self.epoch, "step": self.step, "val_loss": None})
        it = self.loader.iterator
        print(f"stopped at step {self.step} (epoch {self.epoch + 1}, window {self.epoch_windows} of ~{len(it)}); "
              f"continue with: lstmkit lm train --resume {self.run.path}", flush=True)

    def final_eval(self) -> dict:
        """Load the best weights; dev and test perplexity (paper protocol) into ``results.json``
        (rank 0 only under torchrun; the other ranks return an empty dict)."""
        import json
        if not self.dist.main:
            return {}
        weights, _, st = load_checkpoint(self.run.checkpoint_dir, "best", self.runtime.device)
        load_module_weights(self.model, weights)
        d = self.config.data
        c = self.loader.corpus
        print(f"final evaluation of the best checkpoint (step {st['step']}): dev {len(c.valid):,} tokens at batch "
              f"{d.eval_batch_size}, test {len(c.test):,} tokens at batch {d.test_batch_size} ...", flush=True)
        t0 = time.time()
        val = stream_loss(self.model, c.valid, d.eval_batch_size, d.bptt, self.runtime, progress="final dev")
        test = stream_loss(self.model, c.test, d.test_batch_size, d.bptt, self.runtime, progress="final test")
        res = {"best_step": st["step"], "val_loss": val, "val_ppl": perplexity(val), "test_loss": test,
               "test_ppl": perplexity(test), "epochs": self.epoch,
               "stopped_in_epoch": self.epoch + 1 if self.stopped else None, "train_seconds": round(self.elapsed, 1),
               "eval_seconds": round(time.time() - t0, 1)}
        self.run.write_text("results.json", json.dumps(res, indent=1) + "\n")
        print(f"best model (step {st['step']}): dev ppl {res['val_ppl']:.2f} | test ppl {res['test_ppl']:.2f}")
        return res

