"""Dynamic evaluation speed (Krause et al. 2018): scored tokens/s of lstmkit's
``dynamic_eval_losses`` against the 2017-style loop measured in the same run, on the same model,
the same stream and the same rule (segments of ``--bptt`` tokens, one row, SGD with decay back to
the trained weights: ``w <- w + decay * (w0 - w) - lr * g``).

(a) lstmkit: the segment losses summed on the device, the update as one multi-tensor kernel per
    operation over all parameters (``torch._foreach_*``); the host reads the sum once per pass.
(b) reference: what the paper's code does - ``loss.backward()``, ``loss.item()`` per segment
    (a host synchronisation on a GPU) and a Python loop over the parameters updating ``p.data``.

Both must agree on the loss (checked); the model's weights are random (speed only).

    python benchmarks/bench_dynamic_eval.py --config configs/wt2.toml --segments 200
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from lstmkit.config import load_toml
from lstmkit.core.device import pick_runtime
from lstmkit.lm import AWDLSTM, LMConfig
from lstmkit.lm.data import batchify
from lstmkit.lm.dynamic_eval import DynamicEvalConfig, dynamic_eval_losses
from lstmkit.lm.model import detach_hidden
from lstmkit.cli_types import positive_int


def reference_dynamic_eval(model, stream, bptt, lr, decay, runtime) -> float:
    """The 2017 loop: per segment backward, ``.item()``, per-parameter ``p.data`` update."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    w0 = [p.data.clone() for p in params]
    rows = batchify(stream, 1).to(params[0].device)
    hidden, total, count = None, 0.0, 0
    for i in range(0, rows.size(1) - 1, bptt):
        y = rows[:, i + 1: i + 1 + bptt]
        x = rows[:, i: i + y.size(1)]
        model.zero_grad()
        with runtime.autocast():
            h, _, hidden = model.features(x, hidden)
            logp = model.target_logprob(h, y)
        loss = -logp.mean()
        loss.backward()
        total += loss.item() * y.numel()
        count += y.numel()
        for p, w in zip(params, w0):
            if p.grad is not None:
                p.data.add_(decay * (w - p.data) - lr * p.grad.float())
        hidden = detach_hidden(hidden)
    for p, w in zip(params, w0):
        p.data.copy_(w)
    return total / max(count, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/wt2.toml")
    ap.add_argument("--segments", type=positive_int, default=200, help="segments timed per row")
    ap.add_argument("--bptt", type=positive_int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.segments < 2 or args.bptt < 1:
        ap.error("--segments must be >= 2 and --bptt >= 1")
    cfg = load_toml(LMConfig, args.config)
    c, vocab = cfg.model, cfg.model.vocab_size
    rt = pick_runtime(args.device, cfg.train.precision)
    torch.manual_seed(0)
    model = AWDLSTM(c).to(rt.device).eval()
    stream = np.random.default_rng(0).integers(0, vocab, args.segments * args.bptt + 1)
    de = DynamicEvalConfig(method="sgd", lr=2e-5, decay=0.02, bptt=args.bptt, batch_size=1)

    def sync():
        if rt.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        fn(stream[: 3 * args.bptt + 1])          # warm-up
        sync()
        t = time.perf_counter()
        loss = fn(stream)
        sync()
        return loss, (len(stream) - 1) / (time.perf_counter() - t)

    ours, ours_rate = timed(lambda s: dynamic_eval_losses(model, s, de, runtime=rt)["dynamic"])
    ref, ref_rate = timed(lambda s: reference_dynamic_eval(model, s, de.bptt, de.lr, de.decay, rt))
    prec = "bf16" if rt.amp_dtype else "fp32"
    print(f"# {args.config}: vocab {vocab}, {args.segments} segments of {args.bptt}, {rt.device}, {prec}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"# loss: lstmkit {ours:.6f}, reference {ref:.6f} (relative difference {abs(ours - ref) / ref:.1e})")
    print(f"| {'row':58s} | {'tokens/s':>10s} | {'ratio':>6s} |")
    print(f"| {'lstmkit (sums on the device, multi-tensor update)':58s} | {ours_rate:10.1f} | {ours_rate / ref_rate:6.2f} |")
    print(f"| {'reference (loss.item() per segment, per-parameter loop)':58s} | {ref_rate:10.1f} | {1.0:6.2f} |")
    if abs(ours - ref) > 1e-3 * abs(ref):
        raise SystemExit("the two implementations disagree on the loss")


if __name__ == "__main__":
    main()
