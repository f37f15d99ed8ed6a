"""Toy LAS utterances/s for training and greedy decoding, against a plain reference measured in
the same run: random (unbucketed) batches for training and one-utterance-at-a-time greedy
decoding, the way a first implementation usually does it.

    python benchmarks/bench_las.py --config configs/las-toy.toml --batches 10
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lstmkit.config import load_toml
from lstmkit.core.train import train_step
from lstmkit.las import LASRunConfig, LASTrainer, greedy_decode
from lstmkit.las.data import length_buckets
from lstmkit.las.model import sequence_loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/las-toy.toml")
    ap.add_argument("--batches", type=int, default=10)
    args = ap.parse_args()
    cfg = load_toml(LASRunConfig, args.config, {"data": {"toy": {"n_train": 1000, "n_val": 64}}, "train": {"runs_dir": "/tmp/bench_las_runs"}})
    tr = LASTrainer(cfg)
    bs = cfg.data.batch_size
    lengths = [len(t) for t in tr.train_set.targets]
    rng = np.random.default_rng(0)
    bucketed = length_buckets(lengths, bs, rng)[: args.batches]
    perm = rng.permutation(len(lengths))
    plain = [perm[i * bs:(i + 1) * bs].tolist() for i in range(args.batches)]

    def train_rate(batches):
        tr.model.train()
        n = 0
        t = time.perf_counter()
        for idx in batches:
            x, lens, inp, tgt = tr._batch(tr.train_set, idx)
            train_step(lambda: sequence_loss(tr.model(x, lens, inp)[0], tgt), tr.opt, tr.model.parameters(), 1.0, tr.runtime)
            n += len(idx)
        return n / (time.perf_counter() - t)

    def decode_rate(batch_size):
        n = 0
        t = time.perf_counter()
        for i in range(0, len(tr.val_set), batch_size):
            idx = list(range(i, min(i + batch_size, len(tr.val_set))))
            x, lens, _, _ = tr._batch(tr.val_set, idx)
            greedy_decode(tr.model, x, lens, tr.vocab.sos, tr.vocab.eos)
            n += len(idx)
        return n / (time.perf_counter() - t)

    train_rate(bucketed[:1])  # warm-up
    ours_t, ref_t = train_rate(bucketed), train_rate(plain)
    ours_d, ref_d = decode_rate(bs), decode_rate(1)
    print(f"# {args.config}: batch {bs}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'':34s} {'train utt/s':>12s} {'decode utt/s':>13s}")
    print(f"{'lstmkit (bucketed, batched)':34s} {ours_t:12.1f} {ours_d:13.1f}")
    print(f"{'plain (random batches, batch-1 decode)':34s} {ref_t:12.1f} {ref_d:13.1f}")
    print(f"{'ratio':34s} {ours_t / ref_t:12.2f} {ours_d / ref_d:13.2f}")


if __name__ == "__main__":
    main()
