import warnings

import pytest
import torch
from torch import nn

from lstmkit.nn import LockedDropout, WeightDrop, drop_connect, embedding_dropout


def test_locked_dropout_mask_constant_over_time_and_scaled():
    torch.manual_seed(0)
    drop = LockedDropout(0.4).train()
    y = drop(torch.ones(16, 30, 50))
    assert torch.equal(y, y[:, :1].expand_as(y))            # one mask per sequence
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.6))
    assert 0.3 < (y == 0).float().mean() < 0.5
    assert not torch.equal(y[0], y[1])                      # masks differ across sequences


def test_locked_dropout_eval_identity_and_bad_p():
    x = torch.randn(2, 3, 4)
    assert torch.equal(LockedDropout(0.5).eval()(x), x)
    with pytest.raises(ValueError):
        LockedDropout(1.0)


def test_embedding_dropout_drops_whole_rows():
    torch.manual_seed(0)
    emb = nn.Embedding(20, 6)
    tokens = torch.arange(20).repeat(3, 1)                  # every word three times
    out = embedding_dropout(emb, tokens, 0.5, training=True)
    for w in range(20):
        rows = out[:, w]                                    # the three occurrences of word w
        zero = (rows == 0).all()
        scaled = torch.allclose(rows, (emb.weight[w] * 2).expand_as(rows))
        assert zero or scaled
        assert torch.equal(rows[0], rows[1])
    dropped = sum(bool((out[0, w] == 0).all()) for w in range(20))
    assert 3 <= dropped <= 17
    assert torch.equal(embedding_dropout(emb, tokens, 0.5, training=False), emb(tokens))


def test_weight_drop_eval_equals_plain_lstm_and_is_deterministic():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True)
    wd = WeightDrop(lstm, 0.5).eval()
    x = torch.randn(3, 9, 5)
    torch.testing.assert_close(wd(x)[0], lstm(x)[0])
    assert torch.equal(wd(x)[0], wd(x)[0])


def test_weight_drop_training_uses_one_mask_and_grads_reach_raw_weights():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, batch_first=True)
    wd = WeightDrop(lstm, 0.5).train()
    x = torch.randn(3, 9, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no per-step warnings
        out, _ = wd(x)
    # the same output is reproduced by a plain LSTM whose weight_hh carries one fixed mask
    torch.manual_seed(1)
    out1, _ = wd(x)
    torch.manual_seed(1)
    # DropConnect by its definition: each weight kept with probability 1 - p (uniform >= p), scaled 1/(1-p)
    kept = torch.rand(lstm.weight_hh_l0.shape) >= 0.5
    mask_w = torch.where(kept, lstm.weight_hh_l0 / 0.5, torch.zeros(()))
    ref = nn.LSTM(5, 7, batch_first=True)
    ref.load_state_dict({**lstm.state_dict(), "weight_hh_l0": mask_w.detach()})
    torch.testing.assert_close(out1, ref(x)[0])
    assert not torch.allclose(out1, lstm(x)[0])
    out1.sum().backward()
    g = lstm.weight_hh_l0.grad
    ref(x)[0].sum().backward()
    # d out / d raw w_hh = d out / d dropped w_hh * mask / (1 - p): zero where dropped, scaled where kept
    torch.testing.assert_close(g, ref.weight_hh_l0.grad * (mask_w != 0).float() / 0.5)
    assert bool((g[mask_w == 0] == 0).all()) and g.abs().sum() > 0


def test_drop_connect_rate_scale_and_gradient():
    torch.manual_seed(0)
    w = (torch.rand(400, 500) + 0.5).requires_grad_()          # no zeros of its own
    for p in (0.1, 0.5, 0.75):
        out = drop_connect(w, p)
        kept = out != 0
        frac = 1.0 - kept.float().mean().item()
        # 200,000 independent draws: the dropped fraction is within 0.5% of p (std ~0.1%)
        assert abs(frac - p) < 0.005, (p, frac)
        torch.testing.assert_close(out[kept], w.detach()[kept] / (1 - p), rtol=1e-6, atol=0)
        out.backward(torch.ones_like(out))
        torch.testing.assert_close(w.grad, kept.float() / (1 - p), rtol=1e-6, atol=0)
        w.grad = None
    # a fresh mask each call, and the global generator decides it
    torch.manual_seed(3)
    a = drop_connect(w, 0.5)
    b = drop_connect(w, 0.5)
    torch.manual_seed(3)
    assert not torch.equal(a, b) and torch.equal(a, drop_connect(w, 0.5))


def test_weight_drop_rejects_non_lstm():
    with pytest.raises(TypeError):
        WeightDrop(nn.GRU(3, 3), 0.5)
