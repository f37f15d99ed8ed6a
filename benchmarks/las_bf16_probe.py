"""Does the LAS toy learn under CUDA's bf16 numerics? A CPU probe of issue 18's failure.

On one H200, LAS under bf16 autocast stayed at alignment 0.12-0.14 (loss ~1.0) while fp32 reached
0.93 in 24 s. This trains the default toy config (``las-toy``) on a CPU in one of these forms and
prints the validation curve:

  fp32              the CPU in fp32 (the reference)
  bf16              the emulated GPU with CUDA autocast's numerics (tests/emulated_autocast.py: bf16
                    GEMMs rounded as a GPU rounds them, ``nn.LSTMCell`` wholly in bf16, low-precision
                    LSTMs step by step with every step's state and gradient rounded), lstmkit as it is
  bf16-old          the same with the two forms CUDA autocast mishandled: the speller's cells as
                    plain ``nn.LSTMCell`` (bf16 cell state) and the listener's ``nn.LSTM`` left to
                    autocast (cuDNN's rule: fp16, no loss scaling)
  bf16-old-listener only the listener in that old form; bf16-old-speller: only the speller cells
  frozen-listener   fp32 with the listener's LSTM weights never updated (all their gradient lost)

    python benchmarks/las_bf16_probe.py --form bf16 --epochs 3 --threads 2      # ~15 min on 2 cores

Needs the repository's tests/ folder (the emulated GPU). Results: docs/gpu.md.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch
from lstmkit.cli_types import positive_int

FORMS = ("fp32", "bf16", "bf16-old", "bf16-old-listener", "bf16-old-speller", "frozen-listener")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--form", choices=FORMS, default="bf16")
    ap.add_argument("--epochs", type=positive_int, default=3)
    ap.add_argument("--evals-per-epoch", type=positive_int, default=2)
    ap.add_argument("--n-train", type=positive_int, default=5000, help="training utterances (the toy config's 5,000)")
    ap.add_argument("--n-val", type=positive_int, default=100, help="validation utterances")
    ap.add_argument("--threads", type=positive_int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from emulated_cuda import emulated_cuda                       # noqa: E402 (a test helper)
    import lstmkit.las.model as las_model
    from lstmkit.config import load_toml, resolve_config
    from lstmkit.las import LASRunConfig
    from lstmkit.las.trainer import LASTrainer

    f = args.form
    emulated = f.startswith("bf16")
    over = {"train": {"epochs": args.epochs, "evals_per_epoch": args.evals_per_epoch, "threads": args.threads,
                      "device": "auto" if emulated else "cpu", "precision": "auto" if emulated else "fp32",
                      "n_plots": 0, "runs_dir": tempfile.mkdtemp(prefix="las-bf16-probe-")},
            "data": {"toy": {"n_train": args.n_train, "n_val": args.n_val}}}
    cfg = load_toml(LASRunConfig, resolve_config("las-toy"), over)
    if f in ("bf16-old", "bf16-old-speller"):
        las_model.lstm_cell = lambda cell, x, state: cell(x, state)              # plain nn.LSTMCell
    if f in ("bf16-old", "bf16-old-listener"):
        las_model.BiLSTM._run = lambda self, lstm, x: lstm(x)[0]                 # nn.LSTM left to autocast
    t0 = time.time()
    with emulated_cuda(amp=True) if emulated else contextlib.nullcontext():
        trainer = LASTrainer(cfg, run_id=f)
        if f == "frozen-listener":
            for p in trainer.model.listener.blstm.parameters():
                p.requires_grad_(False)
        trainer.fit()
    print(f"# {f}: {args.epochs} epochs in {time.time() - t0:.0f} s wall; torch {torch.__version__}")
    print("| step | train loss | val loss | CER | alignment |")
    print("|---|---|---|---|---|")
    for r in trainer.history:
        print(f"| {r['step']} | {r['train_loss']:.3f} | {r['val_loss']:.3f} | {100 * r['cer']:.2f}% | "
              f"{r.get('alignment_accuracy', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
