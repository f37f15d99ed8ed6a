import pytest
import torch
import torch.nn.functional as F

from lstmkit.nn.linear_cross_entropy import linear_cross_entropy


@pytest.mark.parametrize("bias", [True, False])
def test_matches_cross_entropy_of_linear_in_value_and_gradients(bias):
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(50, dtype=torch.float64, requires_grad=True) if bias else None
    t = torch.randint(0, 50, (37,))
    ref = F.cross_entropy(F.linear(h, w, b), t)
    got = linear_cross_entropy(h, w, b, t, chunk=8)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    params = [h, w] + ([b] if bias else [])
    g_ref = torch.autograd.grad(3 * ref, params)
    g_got = torch.autograd.grad(3 * got, params)             # upstream gradient is applied
    for a, r in zip(g_got, g_ref):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-6)


def test_tied_weight_gets_both_gradients_and_autocast_runs_in_bf16():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(30, 8)
    x = torch.randint(0, 30, (4, 5))
    t = torch.randint(0, 30, (20,))
    h = emb(x).reshape(-1, 8) * 2

    def grads(fn):
        emb.zero_grad()
        fn(emb(x).reshape(-1, 8) * 2).backward()
        return emb.weight.grad.clone()
    ref = grads(lambda h: F.cross_entropy(h @ emb.weight.t(), t))
    got = grads(lambda h: linear_cross_entropy(h, emb.weight, None, t, chunk=7))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lo = linear_cross_entropy(h, emb.weight, None, t)
    ref = F.cross_entropy(h @ emb.weight.t(), t)
    assert lo.dtype == torch.float32 and abs(lo.item() - ref.item()) < 0.05


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), None, torch.zeros(3, dtype=torch.long))


def test_no_grad_computes_the_loss_only():
    h, w = torch.randn(9, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    t = torch.randint(0, 6, (9,))
    with torch.no_grad():
        lo = linear_cross_entropy(h, w, None, t, chunk=4)
    assert not lo.requires_grad
    torch.testing.assert_close(lo, F.cross_entropy(h @ w.t(), t).detach())


def test_adaptive_nll_matches_the_module_with_gradients_and_runs_under_autocast():
    from lstmkit.nn.adaptive import adaptive_nll
    torch.manual_seed(0)
    asm = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 60, [10, 30], div_value=2.0)
    h = torch.randn(40, 16, requires_grad=True)
    t = torch.randint(0, 60, (40,))
    ref = asm(h, t).loss
    got = adaptive_nll(asm, h, t)
    torch.testing.assert_close(got, ref)
    g_ref = torch.autograd.grad(ref, [h, asm.head.weight])
    g_got = torch.autograd.grad(got, [h, asm.head.weight])
    for a, r in zip(g_got, g_ref):
        torch.testing.assert_close(a, r)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lo = adaptive_nll(asm, h, t)
    assert lo.dtype == torch.float32 and abs(lo.item() - ref.item()) < 0.05
    with pytest.raises(ValueError, match="ids in"):
        adaptive_nll(asm, h, torch.full((40,), 60))


@pytest.mark.parametrize("dense", [False, True])
def test_adaptive_target_logprob_both_paths_equal_the_module_with_gradients(dense):
    """The gathered path (CPU default) and the dense one (accelerators: no host read) give the
    module's per-token log-probabilities and the same gradients for h and every weight, with ids on
    each cluster's edges and a cluster no target falls in."""
    from lstmkit.nn.adaptive import adaptive_target_logprob
    torch.manual_seed(1)
    asm = torch.nn.AdaptiveLogSoftmaxWithLoss(16, 70, [10, 30, 50], div_value=2.0)
    h = torch.randn(24, 16, requires_grad=True)
    t = torch.tensor([0, 9, 10, 29, 30, 49, 69, 5] * 3)
    t[-3:] = torch.tensor([1, 2, 11])          # cluster [50, 70) still has targets; remove them below
    t = torch.where(t >= 50, torch.tensor(31), t)
    out = asm(h, t).output                     # PyTorch's own log p(target)
    got = adaptive_target_logprob(asm, h, t, dense=dense)
    torch.testing.assert_close(got, out)
    params = [h] + list(asm.parameters())
    g_ref = torch.autograd.grad(out.sum(), params, allow_unused=True)
    g_got = torch.autograd.grad(got.sum(), params, allow_unused=True)
    for a, r in zip(g_got, g_ref):
        if r is None:                          # the empty cluster's weights: no gradient, or a zero one
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, r)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lo = adaptive_target_logprob(asm, h, t, dense=dense)
    assert lo.dtype == torch.float32 and (lo - out).abs().max().item() < 0.05


def test_bf16_weight_gradient_is_added_in_row_blocks_bit_identically_and_matches_fp64(monkeypatch):
    """Under bf16 autocast each chunk's (V, E) weight-gradient part is bf16 and the sum fp32; it is
    added in row blocks. The blocks must give exactly the one-add result, and the gradient must be
    the definition's (softmax - one-hot)^T h / M to bf16 accuracy."""
    import lstmkit.nn.linear_cross_entropy as lce
    torch.manual_seed(0)
    m, e, v = 50, 12, 301
    h = torch.randn(m, e)
    w = (0.3 * torch.randn(v, e)).requires_grad_()
    t = torch.randint(0, v, (m,))

    def grad_w(rows):
        monkeypatch.setattr(lce, "_ROWS", rows)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy(h, w, None, t, chunk=16)   # 4 chunks, each adding a bf16 part
        (g,) = torch.autograd.grad(loss, [w])
        return g
    whole, blocked = grad_w(10 ** 9), grad_w(37)                   # 1 block against 9 uneven ones
    assert whole.dtype == torch.float32 and torch.equal(whole, blocked)
    hd, wd = h.double(), w.detach().double()                        # the definition, in fp64
    p = torch.softmax(hd @ wd.t(), -1)
    p[torch.arange(m), t] -= 1.0
    expected = p.t() @ hd / m
    err = (blocked.double() - expected).norm() / expected.norm()
    assert err < 2e-2, err
