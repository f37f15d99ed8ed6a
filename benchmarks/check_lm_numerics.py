"""Does the fast path compute the same model? Train the AWD-LSTM of a config twice from the same
seed on the same WikiText-2 batches (fixed BPTT, same dropout masks): once on lstmkit's default
path (bf16 autocast where supported) and once in fp32, then compare the training loss.

    python benchmarks/check_lm_numerics.py --config configs/wt2-cpu.toml --steps 200 --set model.softmax=full

Prints the mean cross-entropy of the last 20 steps of each run and their relative difference
(the issue's bar: within 1 %), plus the validation NLL of both models on the first 20k tokens.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lstmkit.config import load_toml, merge, parse_override
from lstmkit.core.device import Runtime, pick_runtime
from lstmkit.core.train import train_step
from lstmkit.lm import AWDLSTM, LMConfig
from lstmkit.lm.data import BPTTIterator, batchify, load_corpus
from lstmkit.lm.model import detach_hidden
from lstmkit.lm.optim import activation_regularization, temporal_activation_regularization
from lstmkit.cli_types import positive_float, positive_int


def run(cfg, corpus, rt: Runtime, steps: int, lr: float):
    torch.manual_seed(cfg.train.seed)
    c = cfg.model
    c.vocab_size = len(corpus.vocab)
    model = AWDLSTM(c).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    it = iter(BPTTIterator(batchify(corpus.split("train"), cfg.data.batch_size), cfg.data.bptt, variable=False))
    hidden, losses = None, []
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)

        def loss_fn():
            nonlocal hidden
            dropped, raw, hidden = model.features(x, hidden)
            ce = model.loss(dropped, y)
            losses.append(float(ce.detach()))
            return ce + activation_regularization(dropped, 2.0) + temporal_activation_regularization(raw, 1.0)
        train_step(loss_fn, opt, model.parameters(), cfg.optim.clip, rt)
        hidden = detach_hidden(hidden)
    seconds = time.perf_counter() - t0
    model.eval()
    val = batchify(corpus.split("valid")[:20001], 10)
    with torch.no_grad(), rt.autocast():
        d, _, _ = model.features(val[:, :-1])
        nll = float(model.loss(d, val[:, 1:]))
    return np.array(losses), nll, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/wt2-cpu.toml")
    ap.add_argument("--steps", type=positive_int, default=200)
    ap.add_argument("--lr", type=positive_float, default=2e-3, help="Adam learning rate for both runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args()
    over: dict = {}
    for kv in args.set:
        over = merge(over, parse_override(kv))
    cfg = load_toml(LMConfig, args.config, over)
    corpus = load_corpus(cfg.data)
    fast = pick_runtime("cpu", "auto")
    results = {}
    for name, rt in (("default", fast), ("fp32", Runtime(fast.device, None))):
        results[name] = run(cfg, corpus, rt, args.steps, args.lr)
    last = {k: float(v[0][-20:].mean()) for k, v in results.items()}
    rel = abs(last["default"] - last["fp32"]) / last["fp32"]
    prec = "bf16" if fast.amp_dtype else "fp32"
    print(f"# {args.config} {' '.join(args.set)}: {cfg.model.softmax} softmax, {args.steps} steps, batch {cfg.data.batch_size}, bptt {cfg.data.bptt}, Adam {args.lr}")
    print("| run | first-step CE | mean CE, last 20 steps | valid NLL (20k tokens) | seconds |")
    print("|---|---|---|---|---|")
    for name, (losses, nll, sec) in results.items():
        label = f"lstmkit default ({prec})" if name == "default" else "lstmkit fp32"
        print(f"| {label} | {losses[0]:.4f} | {last[name]:.4f} | {nll:.4f} | {sec:.0f} |")
    print(f"relative difference of the last-20-step loss: {100 * rel:.2f}% ({'within' if rel <= 0.01 else 'OUTSIDE'} 1%)")


if __name__ == "__main__":
    main()
