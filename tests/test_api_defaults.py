"""The Python API decodes as the CLI does (issue 21): one source of truth, the run's config."""
from __future__ import annotations

import torch

from lstmkit.las import LASTrainer, greedy_decode, load_las
from lstmkit.las.decode import beam_search
from lstmkit.las.model import LAS, LASConfig
from test_las import tiny_las_config


def test_greedy_and_beam_default_to_the_models_decoding_weight():
    torch.manual_seed(0)
    m = LAS(LASConfig(vocab_size=10, listener_hidden=16, key_size=8, embed_size=8, speller_hidden=16, ctc_weight=0.5)).eval()
    x, lens = torch.randn(3, 20, 40), torch.tensor([20, 15, 9])
    m.decode_ctc_weight = 0.8
    with torch.no_grad():
        default, _ = greedy_decode(m, x, lens, 1, 2)
        explicit, _ = greedy_decode(m, x, lens, 1, 2, ctc_weight=0.8)
        assert torch.equal(default, explicit)
        assert beam_search(m, x, lens, 1, 2, beam=3) == beam_search(m, x, lens, 1, 2, beam=3, ctc_weight=0.8)
        m.decode_ctc_weight = 0.0
        attention_only, _ = greedy_decode(m, x, lens, 1, 2)
        assert torch.equal(attention_only, greedy_decode(m, x, lens, 1, 2, ctc_weight=0.0)[0])


def test_load_las_carries_the_runs_validation_weight(tmp_path):
    cfg = tiny_las_config(tmp_path / "runs", epochs=1, n_plots=0)
    cfg.data.toy.n_train, cfg.data.toy.n_val = 64, 4
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    cfg.model.key_size = cfg.model.embed_size = 8
    cfg.model.ctc_weight, cfg.train.val_ctc_weight = 0.5, 0.8
    LASTrainer(cfg, run_id="r").fit()
    model, _ = load_las(tmp_path / "runs" / "r")
    assert model.decode_ctc_weight == 0.8


def test_an_explicit_ctc_weight_of_0_decodes_with_attention_alone():
    """`las decode --ctc-weight 0` / `transcribe(ctc_weight=0)`: the explicit 0 wins over the model's weight."""
    from lstmkit.las.data import CharVocabulary
    from lstmkit.las.decode import decode_texts
    torch.manual_seed(0)
    vocab = CharVocabulary(list("abcdefg"))
    m = LAS(LASConfig(vocab_size=len(vocab), listener_hidden=16, key_size=8, embed_size=8, speller_hidden=16,
                      ctc_weight=0.5)).eval()
    m.decode_ctc_weight = 0.8
    x, lens = torch.randn(3, 20, 40), torch.tensor([20, 15, 9])
    with torch.no_grad():
        alone, _ = greedy_decode(m, x, lens, vocab.sos, vocab.eos, ctc_weight=0.0)
        assert decode_texts(m, vocab, x, lens, ctc_weight=0.0) == [vocab.decode(r.tolist()) for r in alone]
        joint = beam_search(m, x, lens, vocab.sos, vocab.eos, beam=1, ctc_weight=0.8)
        assert decode_texts(m, vocab, x, lens) == [vocab.decode(s) for s in joint]
