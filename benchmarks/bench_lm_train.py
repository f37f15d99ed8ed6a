"""Training and evaluation tokens/s of lstmkit's AWD-LSTM against peers, in one process, on the
same random batches, same batch size, BPTT length and threads; warm-up steps excluded.

Rows:
  (a) lstmkit, its default path for the config (bf16 autocast where the CPU/GPU supports it),
      and the same model in fp32 (to show what precision alone buys);
  (b) a reference of the original 2017 approach (the ratio column divides by this row):
      weight-drop by building a dropped ``weight_hh`` in Python each forward and running the LSTM
      through ``torch.func.functional_call`` (the modern form of the original ``setattr`` trick),
      Python-side dropout masks, fp32, full softmax over the whole (N*T, V) logits;
  (c) fastai 2.8.12's ``AWD_LSTM`` + tied ``LinearDecoder`` with the same sizes and dropouts, in
      fp32 and under bf16 autocast. fastai is not an lstmkit dependency; install it into the
      benchmark environment only (see benchmarks/README.md). Without it the rows are skipped.

    python benchmarks/bench_lm_train.py --config configs/wt2.toml --steps 3      # paper's WT2 model
    python benchmarks/bench_lm_train.py --config configs/wt2-cpu.toml --steps 5

MFU = model FLOPs per token (6 x the matmul weights a token passes through: LSTM input and
recurrent matrices and the decoder, forward + backward; 2 x for evaluation) x tokens/s / the
matmul peak measured in this run for the row's precision. Peak memory = the largest resident
set size during the timed training steps minus the size before the model was built (CUDA:
``max_memory_allocated``). Timings are never asserted in tests.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import platform
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lstmkit.config import load_toml, merge, parse_override
from lstmkit.core.device import Runtime, pick_runtime
from lstmkit.core.train import device_step
from lstmkit.lm import AWDLSTM, LMConfig
from lstmkit.lm.optim import NTASGD, activation_regularization, temporal_activation_regularization
from lstmkit.cli_types import nonneg_int, positive_int
from step_profile import profile_steps, timed


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


def flops_per_token(c, softmax_rows: int | None = None) -> float:
    """Forward matmul FLOPs per token of the full-softmax model: 2 x (LSTM weights + E x V)."""
    sizes = [c.emb_size] + [c.hidden_size] * (c.num_layers - 1) + [c.emb_size]
    lstm = sum(4 * sizes[i + 1] * (sizes[i] + sizes[i + 1]) for i in range(c.num_layers))
    return 2.0 * (lstm + sizes[-1] * (softmax_rows or c.vocab_size))


class PeakMemory:
    """Largest resident set (CPU) or allocated CUDA memory while the ``with`` block runs, in MiB,
    above the level measured by :meth:`baseline`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.base = 0
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def baseline(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)   # hand freed memory back so RSS starts low
        except OSError:
            pass
        self.base = self._rss()

    def __enter__(self):
        self.peak, self._run = self.base, True
        if not self.cuda:
            def sample():
                while self._run:
                    self.peak = max(self.peak, self._rss())
                    time.sleep(0.002)
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._run = False
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._thread.join()
        self.mib = (self.peak - self.base) / 2 ** 20


def peak_matmul_gflops(dtype, device, trials: int = 3):
    """Best of ``trials`` timings of a 2048^3 matmul loop: the machine's attainable matmul rate."""
    a = torch.randn(2048, 2048, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ a
    sync()
    reps = 5 if device.type == "cpu" else 50
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            a @ a
        sync()
        best = min(best, time.perf_counter() - t)
    return reps * 2 * 2048 ** 3 / best / 1e9


def objective(model, x, y):
    """The trainer's training loss: cross-entropy + AR (alpha 2) + TAR (beta 1), the paper's values."""
    d_, raw, _ = model.features(x)
    return model.loss(d_, y) + activation_regularization(d_, 2) + temporal_activation_regularization(raw, 1)


def bench_lstmkit(c, rt, x, y, steps, sync):
    """The trainer's step: NT-ASGD's fused SGD, the device-side finiteness check (no host sync in
    the step), the loss path and flat weight buffer the config chooses for the device."""
    model = AWDLSTM(c).to(rt.device).train()
    opt = NTASGD(model.parameters(), lr=1.0)
    return model, lambda: device_step(lambda: objective(model, x, y), opt, model.parameters(), 0.25, rt), \
        lambda: model.loss(model.features(x)[0], y)


def bench_lstmkit_compiled(c, rt, x, y, steps, sync):
    """As :func:`bench_lstmkit` with the loss compiled by ``torch.compile``: dynamo breaks the graph
    at each LSTM (cuDNN/oneDNN runs those as before) and fuses what lies between them (embedding
    dropout, locked dropout, decoder loss, AR/TAR). Compilation happens in the warm-up step."""
    model = AWDLSTM(c).to(rt.device).train()
    opt = NTASGD(model.parameters(), lr=1.0)

    compiled = torch.compile(objective)
    return model, lambda: device_step(lambda: compiled(model, x, y), opt, model.parameters(), 0.25, rt), \
        lambda: model.loss(model.features(x)[0], y)


class _GraphSafeAutocast:
    """The runtime's autocast with its weight-cast cache off: PyTorch's CUDA-graph notes require
    ``cache_enabled=False`` for autocast inside a captured region."""

    def __init__(self, rt: Runtime):
        self.device, self.amp_dtype = rt.device, rt.amp_dtype

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)


def bench_lstmkit_graphed(c, rt, x, y, steps, sync):
    """As :func:`bench_lstmkit`, with the whole step (forward, backward, clip, the device-side
    finiteness check and the fused update) captured once in a CUDA graph and replayed: no kernel
    launches from Python per step. One window length (the trainer's variable lengths would need one
    graph per length, ~40 of them); dropout masks still differ per replay (graph-safe RNG)."""
    if rt.device.type != "cuda":
        raise RuntimeError("CUDA graphs need a CUDA device")
    model = AWDLSTM(c).to(rt.device).train()
    opt = NTASGD(model.parameters(), lr=1.0)
    grt = _GraphSafeAutocast(rt)

    def step():
        return device_step(lambda: objective(model, x, y), opt, model.parameters(), 0.25, grt)
    side = torch.cuda.Stream()           # warm-up off the default stream, as the CUDA-graph notes ask
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return model, graph.replay, lambda: model.loss(model.features(x)[0], y)


def bench_reference(c, rt, x, y, steps, sync):
    ref = Reference2017(type(c)(**{**c.__dict__, "softmax": "full"})).to(rt.device).train()
    opt = torch.optim.SGD(ref.parameters(), lr=1.0)
    xt, yt = x.t().contiguous(), y.t().contiguous()

    def step():
        opt.zero_grad()
        logits, raw, dropped = ref(xt)
        loss = F.cross_entropy(logits.view(-1, c.vocab_size), yt.reshape(-1))
        loss = loss + 2 * dropped.pow(2).mean() + (raw[1:] - raw[:-1]).pow(2).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(ref.parameters(), 0.25)
        opt.step()
    return ref, step, lambda: F.cross_entropy(ref(xt)[0].view(-1, c.vocab_size), yt.reshape(-1))


def bench_fastai(c, rt, x, y, steps, sync):
    from fastai.text.models.awdlstm import AWD_LSTM
    from fastai.text.models.core import LinearDecoder
    enc = AWD_LSTM(c.vocab_size, c.emb_size, c.hidden_size, c.num_layers, hidden_p=c.p("dropouth_p"),
                   input_p=c.p("dropouti_p"), embed_p=c.p("dropoute_p"), weight_p=c.p("wdrop_p"))
    dec = LinearDecoder(c.vocab_size, c.emb_size, output_p=c.p("dropout_p"), tie_encoder=enc.encoder)
    model = nn.Sequential(enc, dec).to(rt.device).train()
    enc.reset()   # its hidden state, made at construction on the CPU, on rt.device (fastai's Learner resets at fit)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def step():
        opt.zero_grad()
        with rt.autocast():
            logits, raw, dropped = model(x)
            loss = F.cross_entropy(logits.float().view(-1, c.vocab_size), y.reshape(-1))
            loss = loss + 2 * dropped.float().pow(2).mean() + (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    def evaluate():
        with rt.autocast():
            return F.cross_entropy(model(x)[0].float().view(-1, c.vocab_size), y.reshape(-1))
    return model, step, evaluate


def profile_step(c, rt, x, y, steps: int, sync) -> None:
    """Where the default row's training step spends its time (see step_profile.py)."""
    _, step, _ = bench_lstmkit(c, rt, x, y, steps, sync)
    profile_steps(step, steps, rt.device, "the default row")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/wt2-cpu.toml")
    ap.add_argument("--steps", type=positive_int, default=5, help="timed training steps per row (eval: 2x)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. model.loss_chunk=0")
    ap.add_argument("--skip-fastai", action="store_true")
    ap.add_argument("--compile", action="store_true", help="add a row with the loss under torch.compile")
    ap.add_argument("--graph", action="store_true", help="add a row with the whole step in a CUDA graph (CUDA only)")
    ap.add_argument("--profile", type=nonneg_int, default=0, metavar="N",
                    help="after the table, profile N training steps of the default row (top ops/kernels, launches, host waits)")
    ap.add_argument("--only", default="", help="comma list of rows to run: lstmkit,compile,graph,fp32,reference,fastai,fastai-bf16")
    args = ap.parse_args()
    over: dict = {}
    for kv in args.set:
        over = merge(over, parse_override(kv))
    cfg = load_toml(LMConfig, args.config, over)
    c, d = cfg.model, cfg.data
    c.vocab_size = 33278
    rt = pick_runtime(args.device, cfg.train.precision, cfg.train.threads)
    fp32 = Runtime(rt.device, None)
    bf16 = Runtime(rt.device, torch.bfloat16)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    n, t = d.batch_size, d.bptt
    torch.manual_seed(0)
    x = torch.randint(0, c.vocab_size, (n, t), device=rt.device)
    y = torch.randint(0, c.vocab_size, (n, t), device=rt.device)
    prec = "bf16" if rt.amp_dtype else "fp32"
    # the reference first: every later row prints its ratio as soon as it is measured, so a row that
    # fails or a run killed at a time limit keeps the rows before it
    rows = [("reference", "reference 2017 approach (fp32, full softmax)", bench_reference, fp32),
            ("lstmkit", f"lstmkit ({c.softmax} softmax, {prec}, default)", bench_lstmkit, rt),
            ("fp32", f"lstmkit ({c.softmax} softmax, fp32)", bench_lstmkit, fp32),
            ("fastai", "fastai 2.8.12 AWD_LSTM (fp32, full softmax)", bench_fastai, fp32),
            ("fastai-bf16", "fastai 2.8.12 AWD_LSTM (bf16 autocast)", bench_fastai, bf16)]
    if args.graph:      # last: a capture that broke the CUDA context would end only the rows after it
        rows.append(("graph", f"lstmkit + CUDA graph ({c.softmax} softmax, {prec})", bench_lstmkit_graphed, rt))
    if args.compile:
        rows.insert(2, ("compile", f"lstmkit + torch.compile ({c.softmax} softmax, {prec})", bench_lstmkit_compiled, rt))
    if args.only:
        rows = [r for r in rows if r[0] in args.only.split(",") or r[0] == "reference"]
    if rt.amp_dtype is None:
        rows = [r for r in rows if r[0] not in ("fp32", "fastai-bf16")]
    # the matmul peak of each precision a row runs in (not bf16 on a CPU without bf16 units, where an
    # emulated 2048^3 bf16 loop alone takes minutes)
    peaks = {dt: peak_matmul_gflops(dt or torch.float32, rt.device) for dt in {r[3].amp_dtype for r in rows}}
    adaptive_rows = c.adaptive_cutoffs[0] + len(c.adaptive_cutoffs) if c.softmax == "adaptive" else None
    mem = PeakMemory(rt.device)
    print(f"# {args.config}: batch {n}, bptt {t}, emb {c.emb_size}, hidden {c.hidden_size}, layers {c.num_layers}, "
          f"vocab {c.vocab_size}; {3 * flops_per_token(c) / 1e6:.0f} MFLOP per training token (full softmax)")
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()} ({rt.device}), "
          f"{torch.get_num_threads()} threads; matmul peak " + ", ".join(f"{'bf16' if dt else 'fp32'} {v:.0f} GFLOP/s"
                                                                   for dt, v in peaks.items()) + "; "
          f"{args.steps} timed steps after 1 warm-up")
    print("| implementation | train tok/s | ratio | train MFU | eval tok/s | ratio | eval MFU | peak MiB |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    ref_train = ref_eval = None
    for key, name, build, runtime in rows:
        if key.startswith("fastai") and args.skip_fastai:
            continue
        if key.startswith("fastai"):
            try:
                import fastai.text.models.awdlstm  # noqa: F401
            except ImportError as e:       # fastai itself, or one of its needs (the row is skipped, not the bench)
                print(f"# skipped {name}: fastai cannot be imported ({e}; see benchmarks/README.md)", flush=True)
                continue
        mem.baseline()
        try:
            with mem:
                model, step, evaluate = build(c, runtime, x, y, args.steps, sync)
                train = timed(step, n * t, args.steps, sync=sync)
            model.eval()
            with torch.no_grad(), runtime.autocast():
                ev = timed(evaluate, n * t, 2 * args.steps, sync=sync)
        except Exception as e:             # an optional row (compile, graph) that fails here ends only itself
            if key == "reference":
                raise
            print(f"# skipped {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            continue
        if key == "reference":
            ref_train, ref_eval = train, ev
        # the FLOPs each row computes; for an adaptive softmax only its head is counted (a lower bound)
        fl = flops_per_token(c, adaptive_rows if key in ("lstmkit", "fp32", "compile", "graph") else None)
        dt = runtime.amp_dtype
        mfu_t, mfu_e = 3 * fl * train / (peaks[dt] * 1e9), fl * ev / (peaks[dt] * 1e9)
        print(f"| {name} | {train:,.0f} | {train / ref_train:.2f} | {100 * mfu_t:.0f}% | {ev:,.0f} | {ev / ref_eval:.2f} | "
              f"{100 * mfu_e:.0f}% | {mem.mib:,.0f} |", flush=True)
        del model, step, evaluate
    if args.profile:
        profile_step(c, rt, x, y, args.profile, sync)


if __name__ == "__main__":
    main()
