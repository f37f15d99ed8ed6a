"""Training and evaluation tokens/s of lstmkit's AWD-LSTM against a reference implementation of
the original 2017 approach, measured in the same process on the same batches.

Reference (b): weight-drop by building a dropped ``weight_hh`` in Python and running the LSTM
through ``torch.func.functional_call`` each forward (the modern equivalent of the original
``setattr`` trick), masks drawn in Python, fp32, full softmax over the whole (N*T, V) logits.
lstmkit (a): its default path for the config (bf16 autocast where the CPU/GPU supports it).

    python benchmarks/bench_lm_train.py --config configs/wt2-cpu.toml --steps 5
    python benchmarks/bench_lm_train.py --config configs/wt2.toml --steps 3

Prints one table; ratio = tokens/s / reference tokens/s. Timings are never asserted in tests.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lstmkit.config import load_toml
from lstmkit.core.device import pick_runtime
from lstmkit.core.train import train_step
from lstmkit.lm import AWDLSTM, LMConfig
from lstmkit.lm.optim import activation_regularization, temporal_activation_regularization


class Reference2017(nn.Module):
    """Same maths as the paper's code, written the way it was: per-forward weight re-assignment."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.encoder = nn.Embedding(c.vocab_size, c.emb_size)
        sizes = [c.emb_size] + [c.hidden_size] * (c.num_layers - 1) + [c.emb_size]
        self.rnns = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1]) for i in range(c.num_layers))
        self.decoder = nn.Linear(c.emb_size, c.vocab_size)
        self.decoder.weight = self.encoder.weight

    def lockdrop(self, x, p):  # (T, N, H), mask drawn in Python
        if not self.training or not p:
            return x
        m = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
        return x * m

    def forward(self, tokens):  # (T, N)
        c = self.c
        w = self.encoder.weight
        if self.training:
            mask = w.new_empty(w.size(0), 1).bernoulli_(1 - c.p("dropoute_p")) / (1 - c.p("dropoute_p"))
            w = w * mask
        x = self.lockdrop(F.embedding(tokens, w), c.p("dropouti_p"))
        for i, rnn in enumerate(self.rnns):
            dropped = F.dropout(rnn.weight_hh_l0, c.p("wdrop_p"), self.training)
            raw, _ = functional_call(rnn, {"weight_hh_l0": dropped}, (x,))
            x = self.lockdrop(raw, c.p("dropouth_p") if i < len(self.rnns) - 1 else c.p("dropout_p"))
        return self.decoder(x), raw, x


def measure(step, tokens, steps):
    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return tokens * steps / (time.perf_counter() - t)


def peak_matmul_gflops(dtype):
    a = torch.randn(2048, 2048, dtype=dtype)
    a @ a
    t = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/wt2-cpu.toml")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    cfg = load_toml(LMConfig, args.config)
    c, d = cfg.model, cfg.data
    c.vocab_size = 33278
    n, t = d.batch_size, d.bptt
    torch.manual_seed(0)
    x = torch.randint(0, c.vocab_size, (n, t))
    y = torch.randint(0, c.vocab_size, (n, t))
    rows = []

    # (a) lstmkit, default path
    rt = pick_runtime(cfg.train.device, cfg.train.precision, cfg.train.threads)
    model = AWDLSTM(c).train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def loss_a():
        d_, raw, _ = model.features(x)
        return model.loss(d_, y) + activation_regularization(d_, 2) + temporal_activation_regularization(raw, 1)
    train_a = measure(lambda: train_step(loss_a, opt, model.parameters(), 0.25, rt), n * t, args.steps)
    model.eval()
    with torch.no_grad():
        eval_a = measure(lambda: [model.loss(model.features(x)[0], y) for _ in [0]], n * t, args.steps)
    rows.append((f"lstmkit ({c.softmax} softmax, {'bf16' if rt.amp_dtype else 'fp32'})", train_a, eval_a))

    # (b) reference 2017 approach, always full softmax, fp32
    c_ref = type(c)(**{**c.__dict__, "softmax": "full"})
    ref = Reference2017(c_ref).train()
    opt_r = torch.optim.SGD(ref.parameters(), lr=1.0)
    xt, yt = x.t().contiguous(), y.t().contiguous()

    def step_b():
        opt_r.zero_grad()
        logits, raw, dropped = ref(xt)
        loss = F.cross_entropy(logits.view(-1, c.vocab_size), yt.reshape(-1))
        loss = loss + 2 * dropped.pow(2).mean() + (raw[1:] - raw[:-1]).pow(2).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(ref.parameters(), 0.25)
        opt_r.step()
    train_b = measure(step_b, n * t, args.steps)
    ref.eval()
    with torch.no_grad():
        eval_b = measure(lambda: F.cross_entropy(ref(xt)[0].view(-1, c.vocab_size), yt.reshape(-1)), n * t, args.steps)
    rows.append(("reference 2017 approach (fp32, full softmax)", train_b, eval_b))

    peak32, peak16 = peak_matmul_gflops(torch.float32), peak_matmul_gflops(torch.bfloat16)
    print(f"# {args.config}: batch {n}, bptt {t}, emb {c.emb_size}, hidden {c.hidden_size}, layers {c.num_layers}; "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"matmul peak fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    print(f"{'implementation':48s} {'train tok/s':>12s} {'ratio':>6s} {'eval tok/s':>11s} {'ratio':>6s}")
    for name, tr, ev in rows:
        print(f"{name:48s} {tr:12.0f} {tr / train_b:6.2f} {ev:11.0f} {ev / eval_b:6.2f}")


if __name__ == "__main__":
    main()
