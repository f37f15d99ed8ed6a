"""Does the LAS keep its gradients and cell state under bf16 autocast on this machine's device?

Why LAS did not learn under bf16 on CUDA (issue 18): CUDA autocast hands cuDNN RNNs fp16 (its own
rule, whatever dtype autocast was given) and runs ``nn.LSTMCell`` wholly in bf16. The gradients
that reach the listener are tiny on the toy task (median |dL/d output| 9e-8 after 79 fp32 steps;
fp16's smallest subnormal is 6e-8, its smallest normal 6.1e-5). A CPU emulation that keeps fp16
subnormals still learns (docs/gpu.md); a listener whose gradient is lost entirely (as in a kernel
that flushes fp16 subnormals to zero) reproduces the H200 symptoms on a CPU (loss stuck near 1.0,
alignment 0.12-0.2, while CTC alone reaches CER 2.5%). This prints, on the device (``--device``,
default the GPU if any), the relative error against fp32 (and the share of exact zeros) of:

  listener weight gradients at the toy task's size (--scale), lstmkit's BiLSTM under bf16 autocast,
  and the same weights as plain ``nn.LSTM`` modules left to autocast (on CUDA: the fp16 rule);
  the speller's cell state after 800 small updates, lstmkit's ``lstm_cell`` and a plain
  ``nn.LSTMCell`` under autocast.

    python benchmarks/check_las_precision.py            # a few seconds
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from lstmkit.core.device import pick_runtime
from lstmkit.las.model import BiLSTM, frame_mask, lstm_cell
from lstmkit.cli_types import positive_float


def grads(bl, x, lens, g, amp):
    bl.zero_grad()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = bl(x, lens)
    (out.float() * g).sum().backward()
    return [p.grad.detach().double().cpu() for p in bl.parameters()]


def rel(got, ref) -> float:
    return max(float((a - b).norm() / b.norm()) for a, b in zip(got, ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--scale", type=positive_float, default=1e-7, help="size of the gradients reaching the listener outputs")
    args = ap.parse_args()
    dev = pick_runtime(args.device, "fp32").device
    torch.manual_seed(0)
    bl = BiLSTM(40, 256).to(dev)                       # the las-toy listener
    n, s = 16, 200
    x, lens = torch.randn(n, s, 40, device=dev), torch.randint(s // 2, s + 1, (n,), device=dev)
    g = torch.randn(n, s, 512, device=dev) * args.scale * frame_mask(lens, s).unsqueeze(-1)
    ref = grads(bl, x, lens, g, False)
    zero_ref = sum(int((t == 0).sum()) for t in ref) / sum(t.numel() for t in ref)
    plain = copy.deepcopy(bl)
    plain._run = lambda lstm, inp: lstm(inp)[0]          # nn.LSTM as it is, left to autocast

    def error(model) -> str:
        try:
            got = grads(model, x, lens, g, True)
        except RuntimeError as e:                       # a CPU without a bf16 LSTM kernel (no AVX512-BF16/AMX)
            return f"fails here: {str(e).splitlines()[0][:70]}"
        zero = sum(int((t == 0).sum()) for t in got) / sum(t.numel() for t in got)
        return f"{rel(got, ref):.4f} ({100 * zero:.1f}% of the gradient elements exactly 0; fp32: {100 * zero_ref:.1f}%)"
    ours, broken = error(bl), error(plain)
    print(f"# {dev}, torch {torch.__version__}; listener weight gradients of size {args.scale:g}, relative error "
          f"against fp32 under bf16 autocast:")
    print(f"lstmkit BiLSTM (bf16 kernel, autocast off for it)  {ours}")
    print(f"plain nn.LSTM left to autocast                     {broken}")
    # the speller's cell: forget gate ~1, input gate ~0.5, candidate ~0.01: c grows ~0.005 per step
    cell = nn.LSTMCell(8, 4).to(dev)
    with torch.no_grad():
        cell.weight_ih.uniform_(-1e-3, 1e-3)
        cell.weight_hh.zero_()
        b = torch.zeros(16, device=dev)
        b[4:8], b[8:12] = 20.0, 0.01
        cell.bias_ih.copy_(b)
        cell.bias_hh.zero_()
    xs = torch.ones(2, 8, device=dev)
    expect = 800 * 0.5 * float(torch.tanh(torch.tensor(0.01)))         # 800 steps of i * g = sigmoid(0) * tanh(0.01)
    out = {}
    for name, fn in (("lstmkit lstm_cell", lstm_cell), ("plain nn.LSTMCell", lambda m, xx, st: m(xx, st))):
        h = c = torch.zeros(2, 4, device=dev)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            for _ in range(800):
                h, c = fn(cell, xs, (h, c))
        out[name] = (float(c.float().mean()), c.dtype)
    print(f"# speller cell state after 800 small updates under bf16 autocast (expected about {expect:.3f}):")
    for name, (v, dt) in out.items():
        print(f"{name:<51}{v:.3f} ({str(dt).replace('torch.', '')}, relative error {abs(v - expect) / expect:.3f})")


if __name__ == "__main__":
    main()
