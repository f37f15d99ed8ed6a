"""LAS training on ``core``: teacher forcing with a schedule, validation by free-running greedy
decoding (CER/WER), attention metrics and plots. Each validation writes to the run folder::

    attention_plots/attention_<i>.png   first n_plots validation utterances (x frames, y predicted chars)
    attention.npy                       those attention matrices, zero-padded (n_plots, L, S)
    predictions.csv                     id, target, prediction (all validation utterances)
    loss.png, metrics.jsonl, train_X_sample.png, checkpoint/{last,best}
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..config import dumps_toml, load_toml, to_dict
from ..core.checkpoint import (check_state, require_resumable, has_checkpoint, load_checkpoint, load_module_weights, module_weights, rng_state,
                               save_checkpoint, set_rng_state)
from ..core.device import deterministic_mode, pick_runtime, to_device
from ..core.distributed import Objective, any_rank, barrier, device_for, init_distributed, wrap
from ..core.plots import plot_attention, plot_curves, plot_features
from ..core.progress import Progress
from ..core.runs import RunFolder
from ..core.train import (Rewind, RewindOnNonFinite, StepResult, StopFlag, device_step, fusable, read_steps,
                          weight_average)
from ..errors import InputError
from .config import LASRunConfig, learning_rate, teacher_forcing_rate
from .data import CharVocabulary, SpeechDataset, Utterance, collate, length_buckets, read_split, speed_perturb
from .decode import greedy_decode
from .features import spec_augment
from .metrics import alignment_accuracy, cer, listener_spans, monotonic_focus, wer
from .model import LAS, las_loss, sequence_loss
from .toy import generate
from .transcribe import FEATURES_FILE, load_feature_settings

SETTLE_EVERY = 50    # training steps between reads of the losses from the device (progress bar, non-finite guard)


def load_splits(cfg: LASRunConfig) -> tuple[list[Utterance], list[Utterance]]:
    """Train and validation utterances: from ``data.path`` or generated toy data."""
    d = cfg.data
    if d.path is None:
        return [[Utterance(f"{s}-{i:05d}", x, t, sp) for i, (x, t, sp) in enumerate(generate(d.toy, s))]
                for s in ("train", "val")]
    root = Path(d.path)
    return read_split(root / d.train_split, cfg.model.n_bands), read_split(root / d.val_split, cfg.model.n_bands)


class LASTrainer(RewindOnNonFinite):
    """Train :class:`LAS` from a :class:`LASRunConfig`; ``fit()`` runs epochs until done or out of time."""

    def __init__(self, config: LASRunConfig, run_id: str | None = None, run: RunFolder | None = None,
                 vocab: CharVocabulary | None = None):
        self.config = cfg = config
        self.dist = init_distributed(cfg.train.device)
        self.runtime = pick_runtime(device_for(self.dist, cfg.train.device), cfg.train.precision, cfg.train.threads,
                                    cfg.train.deterministic)
        torch.manual_seed(cfg.train.seed)
        train, val = load_splits(cfg)
        chars = cfg.data.toy.alphabet if cfg.data.path is None else sorted({c for u in train for c in u.text})
        self.vocab = vocab or CharVocabulary(chars)
        cfg.model.vocab_size = len(self.vocab)
        self.train_set = SpeechDataset(train, self.vocab, f"{cfg.data.path or 'toy'}/{cfg.data.train_split}")
        self.val_set = SpeechDataset(val, self.vocab, f"{cfg.data.path or 'toy'}/{cfg.data.val_split}")
        self.model = LAS(cfg.model).to(self.runtime.device)
        self.model.decode_ctc_weight = cfg.decode_ctc_weight     # greedy_decode / beam_search default: as validation
        params = list(self.model.parameters())
        # fused: one kernel for the update, and a non-finite step is skipped on the device (device_step)
        self.opt = torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=fusable(params))
        # optim.ema_decay > 0: validation, plots and the best checkpoint use averaged weights
        self.averaged = weight_average(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.objective = wrap(Objective(self.model, las_loss), self.dist, find_unused=True)
        if run is not None and not self.dist.main:
            run = RunFolder(run.path, readonly=True)
        self.run = run or RunFolder.create_on_main(self.dist, cfg.train.runs_dir, run_id)
        if run is None and self.dist.main:
            self.run.write_text("config.toml", dumps_toml(to_dict(cfg)))
            self.run.write_text("chars.json", json.dumps(self.vocab.chars()))
            settings = Path(cfg.data.path) / FEATURES_FILE if cfg.data.path else None
            if settings is not None and settings.is_file():     # how the audio became features: for transcribe
                load_feature_settings(settings)                    # checked before it is trusted
                self.run.write_text(FEATURES_FILE, settings.read_text(encoding="utf-8"))
            u = train[0]
            plot_features(self.run.file("train_X_sample.png"), u.features, f"train sample {u.id}: {u.text!r}")
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.elapsed, self.best_cer, self.nonfinite = 0.0, math.inf, 0
        self.lr_factor, self.rewinds = 1.0, 0   # numerical guard: lowered learning rate after a rewind
        self.rng = np.random.default_rng(cfg.train.seed)
        self.epoch_rng_state = self.rng.bit_generator.state
        self.history: list[dict] = []
        self._flag: StopFlag | None = None
        self._deadline = math.inf
        self.stopped = False
        self.epoch_loss = [0.0, 0, 0.0]         # summed training loss, count, summed attention CE of the running epoch
        self.last_train_ce = float("nan")       # mean attention CE of the last finished (part of an) epoch
        self._pending: list = []                # (step, DeviceStep, attention CE) not yet read from the device

    # ------------------------------------------------------------------------------ training
    def _batch(self, ds: SpeechDataset, idx):
        b = collate([ds[i] for i in idx], self.vocab, idx)
        dev = self.runtime.device
        return tuple(to_device(t, dev) for t in (b.features, b.lengths, b.inputs, b.targets))   # no host sync

    def train_epoch(self) -> float:
        cfg = self.config
        self.rng.bit_generator.state = self.epoch_rng_state
        batches = length_buckets([len(t) for t in self.train_set.targets], cfg.data.batch_size, self.rng,
                                 shortest_first=self.epoch < cfg.data.sortagrad_epochs)
        evals = {int(len(batches) * k / cfg.train.evals_per_epoch) for k in range(1, cfg.train.evals_per_epoch)}
        tf = teacher_forcing_rate(self.epoch, cfg.optim)
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.epoch, cfg.optim) * self.lr_factor
        self.model.train()
        t0 = time.time()
        world, norm = self.dist.world, None
        bar = Progress(len(batches), f"epoch {self.epoch + 1}", "batches", "utterances/s", initial=self.batch_in_epoch,
                       enabled=self.dist.main)
        for i in range(self.batch_in_epoch, len(batches)):
            idx = batches[i]
            bar.update(1, len(idx), **({"loss": round(self.epoch_loss[0] / self.epoch_loss[1], 4)} if self.epoch_loss[1] else {}))
            if world > 1:            # each rank takes every world-th utterance of the same global batch
                if len(idx) < world:
                    continue
                norm = (sum(len(self.train_set.targets[j]) + 1 for j in idx) / world, len(idx) / world)
                idx = idx[self.dist.rank::world]
            x, lens, inp, tgt = self._batch(self.train_set, idx)
            d = cfg.data
            if d.augment_noise > 0:             # fresh noise every step: the model cannot memorise it
                x = x + d.augment_noise * torch.randn_like(x)
            if d.augment_speed > 0:
                x, lens = speed_perturb(x, lens, d.augment_speed)
            if d.specaug_time_masks or d.specaug_freq_masks:
                x = spec_augment(x, lens, d.specaug_time_masks, d.specaug_time_width, d.specaug_freq_masks,
                                 d.specaug_freq_width)
            res = device_step(lambda: self.objective(x, lens, inp, tgt, tf, None, self.vocab.pad, norm),
                              self.opt, self.model.parameters(), cfg.optim.clip, self.runtime, agree=world > 1)
            self.step += 1
            self.batch_in_epoch = i + 1
            self._pending.append((self.step, res, self.model.last_ce))   # read at the next sync point, not now
            log = bool(cfg.train.log_every) and self.step % cfg.train.log_every == 0
            due = bool(cfg.train.checkpoint_every) and self.step % cfg.train.checkpoint_every == 0
            # the weight average follows the applied updates only, so it reads every step
            if self.averaged is not None or log or due or i + 1 in evals or self.step % SETTLE_EVERY == 0:
                self._settle(log)
            total, count = self.epoch_loss[:2]
            if due:
                self.elapsed += time.time() - t0
                t0 = time.time()
                self.save()
                barrier(self.dist)
            if i + 1 in evals:
                self.elapsed += time.time() - t0
                self.validate(total / max(count, 1), partial=True)
                self.model.train()                    # validation switched to eval mode: dropout etc. back on
                t0 = time.time()                      # validation time is not training time
            if self._should_stop():
                self.stopped = True
                break
        bar.close()
        self._settle()
        self.elapsed += time.time() - t0
        total, count = self.epoch_loss[:2]
        self.last_train_ce = self._mean_ce()
        if not self.stopped:
            self.epoch += 1
            self.batch_in_epoch = 0
            self.epoch_rng_state = self.rng.bit_generator.state
            self.epoch_loss = [0.0, 0, 0.0]
        return total / max(count, 1)

    def _settle(self, log: bool = False) -> None:
        """Read the steps since the last sync point in one transfer: count the finite ones into the
        epoch's loss sums (and the weight average), log and count the non-finite ones (a rewind
        after ``train.max_nonfinite`` in a row is decided here, before any checkpoint is written);
        ``log``: write the last step's record. Under torchrun the losses are the ranks' mean."""
        rows, self._pending = read_steps(self._pending, self.dist), []
        for step, loss, norm, ok, ce in rows:
            if not ok:
                self._on_nonfinite(StepResult(loss, norm, True), step)
            else:
                self.nonfinite = 0
                if self.averaged is not None:
                    self.averaged.update_parameters(self.model)
                self.epoch_loss = [self.epoch_loss[0] + loss, self.epoch_loss[1] + 1, self.epoch_loss[2] + ce]
        if log and rows:
            step, loss, norm, _, _ = rows[-1]
            self.run.log_metrics({"type": "train", "epoch": self.epoch + 1, "step": step, "step_loss": loss,
                                  "grad_norm": norm})

    def _mean_ce(self) -> float:
        return self.epoch_loss[2] / self.epoch_loss[1] if self.epoch_loss[1] else float("nan")

    def _should_stop(self) -> bool:
        """Time budget reached or Ctrl-C, on any rank (every rank stops at the same step)."""
        return any_rank((self._flag is not None and self._flag.stop) or time.time() > self._deadline, self.dist)

    # ------------------------------------------------------------------------------ validation
    @property
    def eval_model(self) -> LAS:
        """The weights validation uses: the running average when ``optim.ema_decay`` > 0."""
        return self.averaged.module if self.averaged is not None and self.averaged.n_averaged > 0 else self.model

    @torch.no_grad()
    def evaluate(self, n_plots: int = 0) -> dict:
        """Free-running CER/WER, teacher-forced loss and attention metrics on the validation set."""
        ds, v = self.val_set, self.vocab
        order = length_buckets([0] * len(ds), self.config.data.batch_size, None)
        refs, hyps, free_atts, tf_atts, spans, losses = [], [], [], [], [], []
        w_ctc = self.config.train.val_ctc_weight
        model = self.eval_model.eval()
        with self.runtime.autocast():
            for idx in order:
                x, lens, inp, tgt = self._batch(ds, idx)
                listened = model.listener(x, lens, return_hidden=w_ctc > 0)
                logits, att = model(x, lens, inp, listened=listened[:3])
                losses.append(float(sequence_loss(logits, tgt, v.pad)) * int((tgt != v.pad).sum()))
                ids, fatt = greedy_decode(model, x, lens, v.sos, v.eos, max_ratio=1.0, listened=listened,
                                          ctc_weight=w_ctc)
                # one transfer per batch, not four per utterance (each a host sync on a GPU)
                # attention columns are listener frames: lengths after the pyramid, spans divided down
                lens = listened[2]
                ids, lens, fatt, att = ids.cpu(), lens.cpu(), fatt.float().cpu().numpy(), att.float().cpu().numpy()
                for k, i in enumerate(idx):
                    u = ds.utts[i]
                    hyp = v.decode(ids[k].tolist())
                    refs.append(u.text)
                    hyps.append(hyp)
                    s = int(lens[k])
                    free_atts.append(fatt[k, : len(hyp) + 1, :s].copy())      # copies: the batch arrays can be large
                    if u.spans is not None:
                        tf_atts.append(att[k, : len(u.text), :s].copy())
                        spans.append(listener_spans(u.spans, 2 ** model.config.pyramid_layers))
        n_chars = sum(len(r) + 1 for r in refs)
        out = {"val_loss": sum(losses) / n_chars, "cer": cer(refs, hyps), "wer": wer(refs, hyps),
               "monotonic_focus": monotonic_focus(free_atts)}
        if spans:
            out["alignment_accuracy"] = alignment_accuracy(tf_atts, spans)
        self._last = (refs, hyps, free_atts)
        return out

    def validate(self, train_loss: float, partial: bool = False) -> dict:
        """Rank 0 validates and writes; under torchrun the other ranks wait for it."""
        if not self.dist.main:
            barrier(self.dist)
            return {}
        m = self.evaluate()
        epoch = self.epoch + (1 if partial or self.stopped else 0)
        rec = {"type": "valid", "epoch": epoch, "step": self.step, "partial_epoch": partial or self.stopped,
               "train_loss": train_loss, "train_ce": self._mean_ce() if partial else self.last_train_ce, **m, "tf_rate": teacher_forcing_rate(self.epoch, self.config.optim),
               "lr": self.opt.param_groups[0]["lr"],
               "elapsed_s": round(self.elapsed, 1),
               "utterances_per_s": round(self.step * self.config.data.batch_size / max(self.elapsed, 1e-9), 1)}
        self.history.append(rec)
        self.run.log_metrics(rec)
        print(f"epoch {epoch} step {self.step} ({rec['elapsed_s']} s): train loss {train_loss:.4f} | val loss "
              f"{m['val_loss']:.4f} | CER {100 * m['cer']:.2f}% WER {100 * m['wer']:.2f}% | alignment "
              f"{m.get('alignment_accuracy', float('nan')):.3f} | focus {m['monotonic_focus']:.3f}", flush=True)
        self.write_artifacts(epoch, m["cer"])
        if m["cer"] < self.best_cer:
            self.best_cer = m["cer"]
            save_checkpoint(self.run.checkpoint_dir, "best", f"{self.step:09d}", module_weights(self.eval_model), {},
                            {"epoch": epoch, "step": self.step, "cer": m["cer"]})
        self.save()
        barrier(self.dist)
        return rec

    def write_artifacts(self, epoch: int, cer_value: float) -> None:
        refs, hyps, atts = self._last
        n = min(self.config.train.n_plots, len(refs))
        for i in range(n):
            labels = list(hyps[i]) + ["<eos>"]
            plot_attention(self.run.file(f"attention_plots/attention_{i}.png"), atts[i], labels[: atts[i].shape[0]],
                           title=f"epoch {epoch}, CER {100 * cer_value:.2f}% | {self.val_set.utts[i].id}",
                           ylabel="predicted character")
        if n:
            shape = (n, max(a.shape[0] for a in atts[:n]), max(a.shape[1] for a in atts[:n]))
            padded = np.zeros(shape, np.float32)
            for i in range(n):
                padded[i, : atts[i].shape[0], : atts[i].shape[1]] = atts[i]
            np.save(self.run.file("attention.npy"), padded)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "target", "prediction"])
        w.writerows((u.id, r, h) for u, r, h in zip(self.val_set.utts, refs, hyps))
        self.run.write_text("predictions.csv", buf.getvalue())
        hist = self.history
        plot_curves(self.run.file("loss.png"),
                    {"train (teacher-forcing schedule, dropout)": [r.get("train_ce", float("nan")) for r in hist],
                     "dev (teacher-forced)": [r["val_loss"] for r in hist]},
                    x=[r["elapsed_s"] for r in hist], xlabel="training seconds",
                    ylabel="attention cross-entropy (nats per character)",
                    title=f"LAS attention decoder loss ({self.run.path.name})")

    # ------------------------------------------------------------------------------ persistence
    def save(self) -> None:
        if not self.dist.main:
            return
        state = {"epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch, "elapsed": self.elapsed,
                 "best_cer": self.best_cer, "epoch_rng": self.epoch_rng_state, "history": self.history,
                 "lr_factor": self.lr_factor, "rewinds": self.rewinds, "epoch_loss": self.epoch_loss}
        extra = {"optim": self.opt.state_dict(), "rng": rng_state(self.runtime.device)}
        if self.averaged is not None:
            extra["averaged"] = self.averaged.state_dict()
        save_checkpoint(self.run.checkpoint_dir, "last", f"{self.step:09d}", module_weights(self.model), extra, state)

    @classmethod
    def resume(cls, run_dir: str | Path, overrides: dict | None = None) -> "LASTrainer":
        run = RunFolder.open(run_dir, "las")
        require_resumable(run.path, "las")
        cfg = load_toml(LASRunConfig, run.path / "config.toml", overrides)
        vocab = CharVocabulary(json.loads((run.path / "chars.json").read_text(encoding="utf-8")))
        t = cls(cfg, run=run, vocab=vocab)
        t._restore()
        return t

    def _restore(self) -> None:
        """Load the ``last`` checkpoint: weights, optimizer, every RNG, position in the epoch."""
        weights, extra, st = load_checkpoint(self.run.checkpoint_dir, "last", self.runtime.device)
        check_state(st, str(self.run.checkpoint_dir / "last.json"),
                    {"epoch": (int, 0, self.config.train.epochs), "step": (int, 0, None), "batch_in_epoch": (int, 0, None),
                     "elapsed": ((int, float), 0, None), "lr_factor": ((int, float), 1e-30, 1.0), "rewinds": (int, 0, None),
                     "history": (list, 0, None), "epoch_loss": (list, 0, None), "epoch_rng": (dict, 0, None)})
        load_module_weights(self.model, weights, str(self.run.checkpoint_dir))
        self.opt.load_state_dict(extra["optim"])
        if self.averaged is not None and "averaged" in extra:
            self.averaged.load_state_dict(extra["averaged"])
        set_rng_state(extra["rng"], self.runtime.device)
        self.epoch, self.step, self.batch_in_epoch, self.elapsed = st["epoch"], st["step"], st["batch_in_epoch"], st["elapsed"]
        self.best_cer, self.history, self.epoch_rng_state = st["best_cer"], st["history"], st["epoch_rng"]
        self.lr_factor, self.rewinds = st.get("lr_factor", 1.0), st.get("rewinds", 0)
        loss_sum, n, ce_sum = (list(st.get("epoch_loss", [0.0, 0])) + [0.0])[:3]
        self.epoch_loss = [float(loss_sum), int(n), float(ce_sum)]

    def fit(self, max_minutes: float | None = None) -> dict:
        minutes = max_minutes or self.config.train.max_minutes
        self._deadline = time.time() + 60 * minutes if minutes else math.inf
        with self.run.in_use(), StopFlag() as self._flag, deterministic_mode(self.config.train.deterministic):
            while self.epoch < self.config.train.epochs and not self.stopped:
                try:
                    loss = self.train_epoch()
                except Rewind as r:
                    self.rewind(r.step)
                    continue
                if self.stopped:
                    return self.stop_report(loss)
                every = self.config.train.val_every_epochs
                if self.epoch % every == 0 or self.epoch >= self.config.train.epochs:
                    self.validate(loss)
        return self.history[-1] if self.history else {}

    def stop_report(self, train_loss: float) -> dict:
        """After a time-budget stop or Ctrl-C mid-epoch: commit ``last`` first (a resume continues as
        if never stopped), then evaluate for the user without entering the history or the choice of
        ``best`` (a ``best`` is written only if no validation has made one yet)."""
        self.save()
        if not self.dist.main:
            barrier(self.dist)
            return {}
        m = self.evaluate()
        epoch = self.epoch + 1
        rec = {"type": "stop", "epoch": epoch, "step": self.step, "partial_epoch": True, "train_loss": train_loss, **m,
               "elapsed_s": round(self.elapsed, 1)}
        self.run.log_metrics(rec)
        print(f"stopped at step {self.step} (epoch {epoch}, {round(self.elapsed, 1)} s): val loss {m['val_loss']:.4f} | "
              f"CER {100 * m['cer']:.2f}% | alignment {m.get('alignment_accuracy', float('nan')):.3f}; continue with: "
              f"lstmkit las train --resume {self.run.path}", flush=True)
        self.write_artifacts(epoch, m["cer"])
        if not has_checkpoint(self.run.checkpoint_dir, "best"):
            save_checkpoint(self.run.checkpoint_dir, "best", f"{self.step:09d}", module_weights(self.eval_model), {},
                            {"epoch": epoch, "step": self.step, "cer": m["cer"]})
        barrier(self.dist)
        return rec


def load_las(run_dir: str | Path, which: str = "best") -> tuple[LAS, CharVocabulary]:
    """Trained model (CPU, eval mode) and its character vocabulary from a run folder."""
    run = RunFolder.open(run_dir, "las")
    cfg = load_toml(LASRunConfig, run.path / "config.toml")
    vocab_file = run.path / "chars.json"
    if not vocab_file.is_file():
        raise InputError(str(vocab_file), "not found", "a LAS run folder (chars.json)")
    vocab = CharVocabulary(json.loads(vocab_file.read_text(encoding="utf-8")))
    cfg.model.vocab_size = len(vocab)
    model = LAS(cfg.model)
    weights, _, _ = load_checkpoint(run.checkpoint_dir, which)
    load_module_weights(model, weights, str(run.checkpoint_dir))
    model.decode_ctc_weight = cfg.decode_ctc_weight          # decode as the run validated
    return model.eval(), vocab
