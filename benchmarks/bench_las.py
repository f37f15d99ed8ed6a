"""Toy LAS utterances/s for training and greedy decoding, against a plain reference measured in
the same run.

(a) lstmkit: length-bucketed batches, the unpacked two-direction ``BiLSTM`` listener, automatic
    precision (bf16 autocast where the CPU/GPU has it), fused Adam stepped without a host sync, batched greedy decoding.
(b) plain: what a first implementation usually does - the same speller, a listener that runs
    ``nn.LSTM(bidirectional=True)`` over a ``PackedSequence``, fp32, random (unbucketed) batches,
    greedy decoding one utterance at a time.

    python benchmarks/bench_las.py --config configs/las-toy.toml --batches 10
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmkit.config import load_toml
from lstmkit.core.device import pick_runtime
from lstmkit.core.train import device_step, train_step
from lstmkit.las import LAS, LASRunConfig, LASTrainer, greedy_decode
from lstmkit.las.data import length_buckets
from lstmkit.las.model import las_loss, sequence_loss
from lstmkit.cli_types import nonneg_int, positive_int
from step_profile import profile_steps


class PackedListener(nn.Module):
    """The textbook listener: one packed bidirectional ``nn.LSTM``, keys and values from both directions."""

    def __init__(self, cfg):
        super().__init__()
        h = cfg.listener_hidden
        self.blstm = nn.LSTM(cfg.n_bands, h, batch_first=True, bidirectional=True)
        self.key = nn.Linear(2 * h, cfg.key_size)
        self.value = nn.Linear(2 * h, cfg.key_size)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h = pad_packed_sequence(self.blstm(packed)[0], batch_first=True, total_length=x.size(1))[0]
        return self.key(h), self.value(h), lengths


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/las-toy.toml")
    ap.add_argument("--batches", type=positive_int, default=10)
    ap.add_argument("--val-utts", type=positive_int, default=64, help="utterances decoded for the decode column")
    ap.add_argument("--profile", type=nonneg_int, default=0, metavar="N",
                    help="after the table, profile N training steps of lstmkit's row on one batch (top ops/kernels, "
                         "launches, host waits)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_las_") as runs:   # the trainer's run folder, removed after
        cfg = load_toml(LASRunConfig, args.config, {"data": {"toy": {"n_train": 1000, "n_val": args.val_utts}},
                                                     "train": {"runs_dir": runs}})
        run(args, cfg)


def run(args, cfg):
    tr = LASTrainer(cfg)
    bs = cfg.data.batch_size
    lengths = [len(t) for t in tr.train_set.targets]
    rng = np.random.default_rng(0)
    bucketed = length_buckets(lengths, bs, rng)[: args.batches]
    perm = rng.permutation(len(lengths))
    random_batches = [perm[i * bs:(i + 1) * bs].tolist() for i in range(args.batches)]

    plain = LAS(cfg.model)
    plain.listener = PackedListener(cfg.model)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=cfg.optim.lr)
    fp32 = pick_runtime(str(tr.runtime.device), "fp32")
    plain.to(fp32.device)

    def sync():       # CUDA runs asynchronously: wait for the queued work before reading the clock
        if tr.runtime.device.type == "cuda":
            torch.cuda.synchronize()

    def train_rate(model, opt, runtime, batches, step):
        model.train()
        n = 0
        sync()
        t = time.perf_counter()
        for idx in batches:
            x, lens, inp, tgt = tr._batch(tr.train_set, idx)
            step(lambda: sequence_loss(model(x, lens, inp)[0], tgt), opt, model.parameters(), 1.0, runtime)
            n += len(idx)
        sync()
        return n / (time.perf_counter() - t)

    def decode_rate(model, runtime, batch_size):
        n = 0
        sync()
        t = time.perf_counter()
        with runtime.autocast():
            for i in range(0, len(tr.val_set), batch_size):
                idx = list(range(i, min(i + batch_size, len(tr.val_set))))
                x, lens, _, _ = tr._batch(tr.val_set, idx)
                greedy_decode(model, x, lens, tr.vocab.sos, tr.vocab.eos)
                n += len(idx)
        sync()
        return n / (time.perf_counter() - t)

    # lstmkit's step as its trainer takes it (fused Adam, no host sync), the reference reads the loss back
    train_rate(tr.model, tr.opt, tr.runtime, bucketed[:1], device_step)          # warm-up
    train_rate(plain, plain_opt, fp32, random_batches[:1], train_step)
    ours_t = train_rate(tr.model, tr.opt, tr.runtime, bucketed, device_step)
    ref_t = train_rate(plain, plain_opt, fp32, random_batches, train_step)
    ours_d, ref_d = decode_rate(tr.model, tr.runtime, bs), decode_rate(plain, fp32, 1)
    prec = "bf16" if tr.runtime.amp_dtype else "fp32"
    print(f"# {args.config}: batch {bs}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, lstmkit precision {prec}")
    print(f"{'':44s} {'train utt/s':>12s} {'s/epoch(5k)':>12s} {'decode utt/s':>13s}")
    print(f"{'lstmkit (bucketed, BiLSTM, ' + prec + ', batched decode)':44s} {ours_t:12.1f} {5000 / ours_t:12.1f} {ours_d:13.1f}")
    print(f"{'plain (random, packed, fp32, batch-1 decode)':44s} {ref_t:12.1f} {5000 / ref_t:12.1f} {ref_d:13.1f}")
    print(f"{'ratio':44s} {ours_t / ref_t:12.2f} {'':12s} {ours_d / ref_d:13.2f}")
    if args.profile:
        x, lens, inp, tgt = tr._batch(tr.train_set, bucketed[0])
        tr.model.train()

        def step():
            device_step(lambda: las_loss(tr.model, x, lens, inp, tgt), tr.opt, tr.model.parameters(), 1.0, tr.runtime)
        profile_steps(step, args.profile, tr.runtime.device,
                      f"lstmkit's row (the trainer's loss: ctc_weight {cfg.model.ctc_weight}, batch of {len(bucketed[0])})",
                      per=(inp.size(1), "output character"))


if __name__ == "__main__":
    main()
