"""Decoding options of TestLanguageModel.generation: beam search, repetition penalty, n-gram ban, streaming."""
import numpy as np
import pytest
import torch

from lstmkit.errors import InputError
from lstmkit.lm.generate import TestLanguageModel, iter_generation, shape_scores
from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig


def model(v=12, seed=0):
    torch.manual_seed(seed)
    m = AWDLSTM(AWDLSTMConfig(vocab_size=v, emb_size=8, hidden_size=16, num_layers=2)).eval()
    with torch.no_grad():           # large weights: the state matters, greedy loops and beams differ
        for p in m.parameters():
            p.mul_(8)
    return m


def total_logprob(m, prompt, cont):
    seq = torch.as_tensor(np.concatenate([prompt, cont], 1))
    with torch.no_grad():
        logp = m(seq[:, :-1]).logits.float().log_softmax(-1)
    k = cont.shape[1]
    return logp[:, -k:].gather(-1, seq[:, -k:, None])[..., 0].sum(1).numpy()


PROMPTS = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [3, 3, 3]])


def test_beam_one_is_greedy_and_wider_beams_find_likelier_continuations():
    m = model()
    greedy = TestLanguageModel.generation(PROMPTS, 8, m)
    assert np.array_equal(TestLanguageModel.generation(PROMPTS, 8, m, beam=1), greedy)
    wide = TestLanguageModel.generation(PROMPTS, 8, m, beam=5)
    assert wide.shape == (4, 8)
    lg, lw = total_logprob(m, PROMPTS, greedy), total_logprob(m, PROMPTS, wide)
    assert (lw >= lg - 1e-4).all() and (lw > lg + 1e-3).any()


def assert_no_new_repeats(seq, prompt_len, n):
    """No n-gram that ends in the generated part occurred before (the prompt may repeat itself)."""
    grams = [tuple(seq[i: i + n]) for i in range(len(seq) - n + 1)]
    for j in range(max(0, prompt_len - n + 1), len(grams)):
        assert grams[j] not in grams[:j], (seq, grams[j])


def test_no_repeat_ngram_and_repetition_penalty():
    m = model()
    out = TestLanguageModel.generation(PROMPTS, 10, m, no_repeat_ngram_size=2)
    for p, o in zip(PROMPTS, out):
        assert_no_new_repeats(list(p) + list(o), len(p), 2)
    plain = TestLanguageModel.generation(PROMPTS, 6, m)
    assert any(len(set(r)) < 6 for r in plain)                     # greedy repeats itself here
    pen = TestLanguageModel.generation(PROMPTS, 6, m, repetition_penalty=3.0)
    distinct = lambda rows: sum(len(set(r)) for r in rows)
    assert distinct(pen) > distinct(plain)
    beam = TestLanguageModel.generation(PROMPTS, 8, m, beam=3, no_repeat_ngram_size=3)
    for p, o in zip(PROMPTS, beam):
        assert_no_new_repeats(list(p) + list(o), len(p), 3)


def test_shape_scores_bans_exactly_the_repeating_words():
    hist = torch.tensor([[1, 2, 3, 1, 2, 0, 1]])
    s = shape_scores(torch.zeros(1, 5), hist, no_repeat_ngram_size=2)
    assert torch.isinf(s[0]).tolist() == [False, False, True, False, False]    # "1 2" seen: ban 2 after 1
    s = shape_scores(torch.zeros(1, 5), hist, no_repeat_ngram_size=3)
    assert not torch.isinf(s).any()                                             # "0 1 ?" never seen
    s = shape_scores(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[0, 1]]), repetition_penalty=2.0)
    assert s.tolist() == [[1.0, -4.0, 1.0]]


def test_streaming_equals_batch_and_seed_reproduces_sampling():
    m = model()
    steps = list(iter_generation(PROMPTS, 7, m))
    assert np.array_equal(torch.stack(steps, 1).numpy(), TestLanguageModel.generation(PROMPTS, 7, m))
    a = TestLanguageModel.generation(PROMPTS, 7, m, temperature=1.5, seed=3)
    b = TestLanguageModel.generation(PROMPTS, 7, m, temperature=1.5, seed=3)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kw,match", [({"beam": 0}, "beam"), ({"beam": 2, "top_k": 3}, "not both"),
                                      ({"repetition_penalty": 0}, "repetition_penalty"),
                                      ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size")])
def test_bad_decoding_options(kw, match):
    with pytest.raises(InputError, match=match):
        TestLanguageModel.generation(PROMPTS, 3, model(), **kw)


def test_generation_runs_no_model_step_after_the_last_word():
    from lstmkit.lm.generate import TestLanguageModel
    from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig
    torch.manual_seed(0)
    m = AWDLSTM(AWDLSTMConfig(vocab_size=30, emb_size=8, hidden_size=8, num_layers=1)).eval()
    calls = []
    original = m.features
    m.features = lambda *a, **k: (calls.append(a[0].shape), original(*a, **k))[1]
    x = np.zeros((2, 4), dtype=np.int64)
    for beam in (1, 3):
        calls.clear()
        out = TestLanguageModel.generation(x, 5, m, beam=beam)
        assert out.shape == (2, 5)
        assert len(calls) == 5          # the prompt, then one step for each of the first 4 new words
