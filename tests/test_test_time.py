"""Test-time methods of the language model: neural cache and dynamic evaluation."""
import math

import numpy as np
import pytest
import torch

from conftest import HostReads
from emulated_cuda import WITH_EMULATED, on
from lstmkit.errors import InputError
from lstmkit.lm.cache import NeuralCache, cache_grid, cache_loss, cache_losses, stream_states
from lstmkit.lm.dynamic_eval import DynamicEvalConfig, dynamic_eval_loss, gradient_rms
from lstmkit.lm.evaluate import stream_loss
from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig


def naive_cache_logprob(h, y, logp_model, window, theta, lam):
    """Token-by-token reference: h (L, H), y (L,), logp_model (L,) for one row."""
    out = []
    for t in range(len(y)):
        keys = list(range(max(0, t - window), t))
        if not keys:
            out.append(float(logp_model[t]))
            continue
        s = np.array([theta * float(h[t] @ h[i]) for i in keys])
        w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        pc = sum(wi for wi, i in zip(w, keys) if y[i] == y[t])
        out.append(math.log((1 - lam) * math.exp(float(logp_model[t])) + lam * pc))
    return np.array(out)


@pytest.mark.parametrize("window", [1, 4, 30])
def test_vectorized_cache_equals_the_token_loop(window):
    g = torch.Generator().manual_seed(0)
    n, length, hdim = 2, 23, 5
    h = torch.randn(n, length, hdim, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (n, length), generator=g)
    logp = torch.log_softmax(torch.randn(n, length, 4, generator=g, dtype=torch.float64), -1).gather(-1, y[..., None])[..., 0]
    cache = NeuralCache(window, theta=0.7, lam=0.3)
    got = torch.cat([cache(h[:, i: i + 6], y[:, i: i + 6], logp[:, i: i + 6]) for i in range(0, length, 6)], 1)
    for r in range(n):
        want = naive_cache_logprob(h[r].numpy(), y[r].numpy(), logp[r].numpy(), window, 0.7, 0.3)
        np.testing.assert_allclose(got[r].numpy(), want, rtol=1e-9, atol=1e-12)


def tiny_lm(v=30, seed=0):
    torch.manual_seed(seed)
    return AWDLSTM(AWDLSTMConfig(vocab_size=v, emb_size=8, hidden_size=16, num_layers=2)).eval()


def repetitive_stream(n=600, v=30, seed=0):
    rng = np.random.default_rng(seed)
    phrase = rng.integers(0, v, size=12)
    return np.concatenate([phrase if rng.random() < 0.5 else rng.integers(0, v, size=12) for _ in range(n // 12)])


def test_cache_without_weight_is_the_model_and_helps_on_repeated_text():
    m, s = tiny_lm(), repetitive_stream()
    base = stream_loss(m, s, batch_size=1, bptt=20)
    assert cache_loss(m, s, window=100, theta=0.5, lam=0.0, bptt=20) == pytest.approx(base, rel=1e-6)
    # target_logprob agrees with the model's loss
    total = -sum(float(lp.sum()) for _, _, lp in stream_states(m, s, 1, 20)) / (len(s) - 1)
    assert total == pytest.approx(base, rel=1e-5)
    both = cache_losses(m, s, 100, 0.5, 0.3, bptt=20)           # one pass: the model's loss and the cache's
    assert both["loss"] == pytest.approx(base, rel=1e-5)
    assert both["cache_loss"] == pytest.approx(cache_loss(m, s, 100, 0.5, 0.3, bptt=20), rel=1e-9)
    grid = cache_grid(m, s, [0.0, 0.5], [0.0, 0.5], window=100, bptt=20)
    assert len(grid) == 4
    for r in grid:
        assert r["loss"] == pytest.approx(cache_loss(m, s, 100, r["theta"], r["lambda"], bptt=20), rel=1e-6)
    assert min(r["loss"] for r in grid if r["lambda"] > 0) < base - 0.05     # the phrase repeats: the cache helps


def test_bad_cache_settings():
    with pytest.raises(InputError, match="lambda"):
        NeuralCache(100, 0.5, 1.5)


def test_dynamic_eval_scores_before_updating_and_restores_weights():
    m, s = tiny_lm(), repetitive_stream()
    before = [p.detach().clone() for p in m.parameters()]
    base = stream_loss(m, s, batch_size=1, bptt=5)
    frozen = dynamic_eval_loss(m, s, DynamicEvalConfig(method="sgd", lr=0.0, decay=0.0, bptt=5))
    assert frozen == pytest.approx(base, rel=1e-5)                                  # lr 0: plain evaluation
    adapted = dynamic_eval_loss(m, s, DynamicEvalConfig(method="sgd", lr=0.5, decay=0.0, bptt=5))
    assert adapted < base - 0.1                                                     # learns the repeated phrase
    rms = gradient_rms(m, repetitive_stream(seed=1), n_batches=5, bptt=5, batch_size=2)
    r = dynamic_eval_loss(m, s, DynamicEvalConfig(method="rms", lr=2e-3, decay=0.01, bptt=5), rms)
    assert r < base
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    # the first segment is scored with the trained weights: same loss as the frozen model on it
    head = s[:6]
    assert dynamic_eval_loss(m, head, DynamicEvalConfig(method="sgd", lr=10.0, bptt=5)) == \
        pytest.approx(stream_loss(m, head, 1, 5), rel=1e-5)
    with pytest.raises(InputError, match="gradient statistics"):
        dynamic_eval_loss(m, s, DynamicEvalConfig(method="rms"))


def test_dynamic_eval_and_cache_in_one_pass():
    from lstmkit.lm.dynamic_eval import dynamic_eval_losses
    m, s = tiny_lm(), repetitive_stream()
    cfg = DynamicEvalConfig(method="sgd", lr=0.2, decay=0.01, bptt=5)
    same = dynamic_eval_losses(m, s, cfg, cache=NeuralCache(100, 0.5, 0.0))
    assert same["dynamic_cache"] == pytest.approx(same["dynamic"], rel=1e-6)   # lambda 0: the cache adds nothing
    both = dynamic_eval_losses(m, s, cfg, cache=NeuralCache(100, 0.0, 0.4))
    assert both["dynamic"] == pytest.approx(same["dynamic"], rel=1e-6)          # the cache does not change updates
    assert both["dynamic_cache"] != both["dynamic"]


def test_stream_windows_backpropagates_within_each_window_only():
    from lstmkit.lm.evaluate import stream_windows
    m, s = tiny_lm(), repetitive_stream()
    m.train()
    lstm_weights = [p for n, p in m.named_parameters() if n.startswith("rnns.")]
    assert lstm_weights
    n = 0
    for h, y in stream_windows(m, s[:40], batch_size=1, bptt=5):   # dynamic evaluation's use: grads through the LSTM
        assert h.requires_grad
        m.zero_grad()
        h.sum().backward()                       # a second window would fail here if the state were not detached
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lstm_weights)
        n += 1
    assert n == 8 and m.training                 # walked in eval mode, training mode restored after
    with torch.no_grad():
        assert not any(h.requires_grad for h, _ in stream_windows(m, s[:40], batch_size=1, bptt=5))


def krause_reference(model, train, stream, lr, lamb, eps, bptt, grad_rows, grad_windows):
    """Dynamic evaluation with the RMS rule written out as Krause et al. 2017 (eq. 8-9) and their
    ``dynamiceval.py`` compute it, independently of lstmkit's functions: gradient statistics
    MS = sqrt(mean over training windows of g^2) (windows of the segment length, eval mode, state
    carried), decrate = MS / mean over tensors of mean(MS), clipped at 1 / lambda;
    dW = lambda * decrate * (w0 - w) - lr * g / (MS + eps) on each segment after it is scored."""
    import copy
    import torch.nn.functional as F
    m = copy.deepcopy(model).eval()
    params = list(m.parameters())

    def segments(data, rows):
        n = len(data) // rows
        src = torch.as_tensor(np.asarray(data[: n * rows]), dtype=torch.long).view(rows, n)
        i = 0
        while i < n - 1:
            seq = min(bptt, n - 1 - i)
            yield src[:, i: i + seq], src[:, i + 1: i + 1 + seq]
            i += seq

    def window_loss(x, y, hidden):
        out = m(x, hidden)
        return F.cross_entropy(out.logits.reshape(-1, out.logits.size(-1)), y.reshape(-1)), \
            [(h.detach(), c.detach()) for h, c in out.hidden]

    MS = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    hidden, batches = None, 0
    for x, y in segments(train, grad_rows):
        if batches == grad_windows:
            break
        loss, hidden = window_loss(x, y, hidden)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for k, g in enumerate(grads):
            if g is not None:
                MS[k] += g.double() ** 2
        batches += 1
    MS = [torch.sqrt(v / batches) for v in MS]
    gsum = sum(float(v.mean()) for v in MS) / len(MS)
    decrate = [torch.clamp(v / gsum, max=1.0 / lamb) for v in MS]
    data0 = [p.detach().double().clone() for p in params]
    total, count, hidden = 0.0, 0, None
    for x, y in segments(stream, 1):
        loss, hidden = window_loss(x, y, hidden)
        total += float(loss.detach()) * y.numel()
        count += y.numel()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for k, (p, g) in enumerate(zip(params, grads)):
                if g is None:
                    continue
                w = p.double()
                dW = lamb * decrate[k] * (data0[k] - w) - lr * g.double() / (MS[k] + eps)
                p.copy_(w + dW)
    return total / count


def test_rms_dynamic_eval_is_the_papers_rule():
    m, s = tiny_lm(), repetitive_stream(n=240)
    train = repetitive_stream(n=600, seed=1)
    lr, lamb, eps = 3e-3, 0.3, 1e-4          # large enough that any other rule gives another loss
    want = krause_reference(m, train, s, lr, lamb, eps, bptt=5, grad_rows=4, grad_windows=12)
    cfg = DynamicEvalConfig(method="rms", lr=lr, decay=lamb, eps=eps, bptt=5, grad_batches=12, grad_batch_size=4)
    rms = gradient_rms(m, train, cfg.grad_batches, cfg.stats_bptt, cfg.grad_batch_size)
    got = dynamic_eval_loss(m, s, cfg, rms)
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(stream_loss(m, s, 1, 5), rel=1e-3)      # the updates do change the loss


def test_dynamic_eval_settings_are_checked():
    for bad in (dict(lr=float("nan")), dict(decay=1.0), dict(decay=-0.1), dict(eps=float("inf")), dict(bptt=0),
                dict(grad_batches=-1), dict(grad_batch_size=0)):
        with pytest.raises(InputError):
            DynamicEvalConfig(**bad).check()
    assert DynamicEvalConfig(bptt=7).stats_bptt == 7 and DynamicEvalConfig(bptt=7, grad_bptt=3).stats_bptt == 3


@pytest.mark.parametrize("device", WITH_EMULATED)
def test_test_time_methods_read_back_once_per_pass_not_per_segment(device):
    """Dynamic evaluation (sgd and rms, with the cache) and the cache alone keep their sums on the
    device: the number of host reads does not grow with the number of segments. On the emulated GPU
    of tests/emulated_cuda.py (machines without one) also: every tensor on the device, and the
    backward through the LSTM in eval mode allowed by cuDNN (its kernel run in training mode)."""
    device, context = on(device)
    with context:
        _test_time_reads(device)


def _test_time_reads(device):
    from lstmkit.core.device import Runtime
    from lstmkit.lm.dynamic_eval import dynamic_eval_losses
    m = tiny_lm().to(device)
    rt = Runtime(torch.device(device), None)
    rms = gradient_rms(m, repetitive_stream(seed=1), n_batches=5, bptt=5, batch_size=2, runtime=rt)
    runs = {
        "sgd+cache": lambda s: dynamic_eval_losses(m, s, DynamicEvalConfig(method="sgd", lr=0.2, bptt=5), runtime=rt,
                                                   cache=NeuralCache(50, 0.5, 0.2)),
        "rms": lambda s: dynamic_eval_losses(m, s, DynamicEvalConfig(method="rms", lr=2e-3, bptt=5), rms, runtime=rt),
        "cache": lambda s: cache_losses(m, s, 50, 0.5, 0.2, bptt=5, runtime=rt),
        "stream": lambda s: stream_loss(m, s, 1, 5, rt),
    }
    s = repetitive_stream()
    for name, fn in runs.items():
        reads = []
        for length in (len(s) // 4, len(s)):
            with HostReads() as c:
                fn(s[:length])
            reads.append(c.n)
        assert reads[0] == reads[1] <= 4, (name, reads)


def test_the_cache_scores_its_pointers_in_fp32_under_bf16_autocast():
    """Under autocast (bf16 on CUDA, and on CPUs with bf16 units) the pointer logits theta * h_t.h_i
    would be a bf16 product, 8 significant bits: the cache's log-probabilities must not change."""
    g = torch.Generator().manual_seed(0)
    h = 3 * torch.randn(2, 12, 16, generator=g)
    y = torch.randint(0, 5, (2, 12), generator=g)
    ref = NeuralCache(8, 0.9, 0.3).cache_logprob(h, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = NeuralCache(8, 0.9, 0.3).cache_logprob(h, y)
    assert amp.dtype == torch.float32 and torch.equal(amp.isfinite(), ref.isfinite())
    assert torch.equal(amp[ref.isfinite()], ref[ref.isfinite()])
