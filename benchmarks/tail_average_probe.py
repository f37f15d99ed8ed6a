"""How much tail averaging (``optim.average_last``) buys a cosine AdamW schedule, measured on a
CPU proxy of the GPU recipes: a small AWD-LSTM (wt2-cpu's with 128/384 units), AdamW + warm-up +
cosine over the epochs that fit in ``--minutes`` (``train.fit_epochs``), the last fractions of the
iterates averaged side by side in one run (averaging never changes the trajectory), then the raw
last iterate and each average scored on the same dev tokens. Results: docs/results.md.

    python benchmarks/tail_average_probe.py --minutes 30 --train-tokens 600000 --dropout-scale 1.0
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

import lstmkit.lm.trainer as trainer_mod
from lstmkit.core.checkpoint import load_checkpoint, load_module_weights
from lstmkit.lm import LanguageModelTrainer, LMConfig
from lstmkit.lm.evaluate import stream_loss
from lstmkit.lm.optim import averaging_start
from lstmkit.cli_types import nonneg_float, positive_float, positive_int


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=positive_float, default=30.0)
    ap.add_argument("--train-tokens", type=positive_int, default=600_000, help="first N training tokens")
    ap.add_argument("--eval-tokens", type=positive_int, default=60_000, help="first N dev tokens")
    ap.add_argument("--dropout-scale", type=nonneg_float, default=1.0)
    ap.add_argument("--fractions", default="0.1,0.2,0.3,0.5")
    ap.add_argument("--data", default="data/wikitext-2")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--threads", type=positive_int, default=1)
    args = ap.parse_args()
    cfg = LMConfig.load("configs/wt2-cpu.toml", {
        "model": {"emb_size": 128, "hidden_size": 384, "dropout_scale": args.dropout_scale},
        "data": {"path": args.data, "max_train_tokens": args.train_tokens, "max_eval_tokens": args.eval_tokens},
        "optim": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.01, "schedule": "cosine",
                  "warmup_steps": 100, "min_lr_ratio": 0.05, "lr_decay": 1.0, "nonmono": 1000},
        "train": {"max_minutes": args.minutes, "fit_epochs": True, "epochs": 1000, "threads": args.threads,
                  "evals_per_epoch": 1, "runs_dir": args.runs_dir, "precision": "fp32"}})
    t = LanguageModelTrainer.from_config(cfg, run_id=f"tail-average-probe-{int(time.time())}")
    fractions = [float(f) for f in args.fractions.split(",")]
    avgs: dict[float, list[torch.Tensor] | None] = {f: None for f in fractions}
    counts = {f: 0 for f in fractions}
    real_step = trainer_mod.device_step

    def step(*a, **k):                      # the trainer's step, then every running average
        res = real_step(*a, **k)
        total = t.config.train.epochs * len(t.loader.iterator)
        for f in fractions:
            if t.step >= averaging_start(total, f):     # t.step counts the steps before this one
                counts[f] += 1
                ps = [p.detach() for p in t.model.parameters()]
                if avgs[f] is None:
                    avgs[f] = [p.clone() for p in ps]
                else:
                    for a_, p in zip(avgs[f], ps):
                        a_.add_(p - a_, alpha=1.0 / counts[f])
        return res
    trainer_mod.device_step = step
    t.final_eval = lambda: {}               # the probe scores the dev tokens itself, below
    t.fit()
    valid = t.loader.corpus.valid

    def dev_ppl() -> float:
        return math.exp(stream_loss(t.model, valid, 10, 70, t.runtime))
    weights, _, _ = load_checkpoint(t.run.checkpoint_dir, "last")
    load_module_weights(t.model, weights)
    out = {"epochs": t.config.train.epochs, "scheduled_steps": t.config.train.epochs * len(t.loader.iterator),
           "steps": t.step, "raw_last_ppl": dev_ppl()}
    for f in fractions:
        if avgs[f] is not None:
            with torch.no_grad():
                for p, a_ in zip(t.model.parameters(), avgs[f]):
                    p.copy_(a_)
            out[f"avg_last_{f}_ppl"], out[f"avg_last_{f}_n"] = dev_ppl(), counts[f]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
