import numpy as np
import pytest
import torch

from lstmkit.errors import InputError
from lstmkit.lm import AWDLSTM, AWDLSTMConfig, TestLanguageModel
from lstmkit.lm.evaluate import generation_nll


@pytest.fixture
def model():
    torch.manual_seed(0)
    return AWDLSTM(AWDLSTMConfig(vocab_size=40, emb_size=8, hidden_size=12, num_layers=3))


def test_shapes_and_tying(model):
    out = model(torch.randint(0, 40, (3, 7)))
    assert out.logits.shape == (3, 7, 40)
    assert out.raw.shape == out.dropped.shape == (3, 7, 8)
    assert [h[0].shape for h in out.hidden] == [(1, 3, 12), (1, 3, 12), (1, 3, 8)]
    assert model.decoder.weight is model.encoder.weight
    assert model.encoder.weight.abs().max() <= 0.1


def test_untied_and_dropout_scale():
    m = AWDLSTM(AWDLSTMConfig(vocab_size=40, emb_size=8, hidden_size=12, num_layers=2, tie_weights=False,
                              dropout_scale=0.0))
    assert m.decoder.weight is not m.encoder.weight and m.decoder.in_features == 12
    m.train()
    x = torch.randint(0, 40, (2, 5))
    assert torch.equal(m(x).logits, m(x).logits)            # all dropouts off: deterministic in train


def test_eval_is_deterministic(model):
    model.eval()
    x = torch.randint(0, 40, (2, 5))
    assert torch.equal(model(x).logits, model(x).logits)


def test_prediction_matches_forward_last_step(model):
    x = np.random.default_rng(0).integers(0, 40, (4, 6))
    scores = TestLanguageModel.prediction(x, model)
    assert scores.dtype == np.float32 and scores.shape == (4, 40)
    model.eval()
    with torch.no_grad():
        ref = model(torch.as_tensor(x)).logits[:, -1]
    np.testing.assert_allclose(scores, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_generation_greedy_equals_iterated_prediction(model):
    x = np.random.default_rng(1).integers(0, 40, (3, 5))
    gen = TestLanguageModel.generation(x, 4, model)
    assert gen.shape == (3, 4) and gen.dtype == np.int64
    seq = x.copy()
    for k in range(4):   # re-reading the prefix each time must give the same greedy words
        nxt = TestLanguageModel.prediction(seq, model).argmax(-1)
        assert (nxt == gen[:, k]).all()
        seq = np.concatenate([seq, nxt[:, None]], 1)
    assert generation_nll(model, x, gen) > 0


def test_sampling_is_seeded(model):
    x = np.zeros((2, 3), dtype=np.int64)
    a = TestLanguageModel.generation(x, 6, model, temperature=1.5, top_k=10, seed=5)
    b = TestLanguageModel.generation(x, 6, model, temperature=1.5, top_k=10, seed=5)
    assert (a == b).all()
    c = TestLanguageModel.generation(x, 6, model, top_p=0.9, seed=5)
    assert c.shape == (2, 6) and c.max() < 40


@pytest.mark.parametrize("inp,match", [
    (np.zeros(5, dtype=np.int64), "rank 2"),
    (np.zeros((2, 3, 4), dtype=np.int64), "rank 2"),
    (np.zeros((2, 3), dtype=np.float32), "dtype float32"),
    (np.full((2, 3), 40), "id 40 out of range"),
    (np.full((2, 3), -1), "id -1 out of range"),
    (np.zeros((0, 3), dtype=np.int64), "N >= 1"),
    ("hello", "type str"),
])
def test_prediction_bad_input(model, inp, match):
    with pytest.raises(InputError, match=match):
        TestLanguageModel.prediction(inp, model)


@pytest.mark.parametrize("forward", [0, -3, 2.5, True])
def test_generation_bad_forward(model, forward):
    with pytest.raises(InputError, match="forward"):
        TestLanguageModel.generation(np.zeros((1, 2), dtype=np.int64), forward, model)


def test_adaptive_softmax_option_is_a_normalized_distribution():
    torch.manual_seed(0)
    m = AWDLSTM(AWDLSTMConfig(vocab_size=300, emb_size=8, hidden_size=12, num_layers=2, softmax="adaptive",
                              adaptive_cutoffs=[20, 100], adaptive_div=2.0))
    x = torch.randint(0, 300, (2, 5))
    scores = TestLanguageModel.prediction(x.numpy(), m)
    assert scores.shape == (2, 300)
    np.testing.assert_allclose(np.exp(scores).sum(-1), 1.0, rtol=1e-4)
    m.eval()
    d, _, _ = m.features(x)
    y = torch.randint(0, 300, (2, 5))
    ref = -torch.log_softmax(m.decode(d), -1).gather(-1, y.unsqueeze(-1)).mean()
    torch.testing.assert_close(m.loss(d, y), ref, rtol=1e-4, atol=1e-4)


def test_mixture_of_softmaxes_is_a_distribution_and_its_loss_matches_its_log_probs():
    from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig
    torch.manual_seed(0)
    m = AWDLSTM(AWDLSTMConfig(vocab_size=40, emb_size=8, hidden_size=16, num_layers=2, softmax="mos", mos_experts=3))
    assert m.decoder.weight is m.encoder.weight                          # tied through the shared decoder
    x, y = torch.randint(0, 40, (3, 7)), torch.randint(0, 40, (3, 7))
    m.eval()
    with torch.no_grad():
        out = m(x)
        loss = float(m.loss(out.dropped, y))
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(3, 7), atol=1e-5)
    want = -out.logits.log_softmax(-1).gather(-1, y[..., None]).mean()
    assert loss == pytest.approx(float(want), rel=1e-5)
    m.train()                                                            # chunked + checkpointed backward
    torch.manual_seed(1)
    h = torch.randn(10, 16, requires_grad=True)
    t = torch.randint(0, 40, (10,))
    m.mos.dropout = 0.0
    a = m.mos.target_logprob(h, t, chunk=3).sum()
    ga, = torch.autograd.grad(a, h)
    b = m.mos.log_prob(h).gather(1, t[:, None]).sum()
    gb, = torch.autograd.grad(b, h)
    assert torch.allclose(ga, gb, atol=1e-6) and float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)
