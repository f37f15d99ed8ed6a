"""Character-level language model (lm/ with data.unit = "char") and its shallow fusion into LAS beam search."""
import pytest
import torch

from lstmkit.errors import InputError
from lstmkit.las import LAS, CharVocabulary, LASConfig
from lstmkit.las.decode import beam_search
from lstmkit.las.fusion import CharLMFusion
from lstmkit.lm.data import Vocabulary, load_text
from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig


def char_corpus(tmp_path):
    for name, text in (("train", "one two\nthree  four\n"), ("valid", "two one\n"), ("test", "Four\n")):
        (tmp_path / f"{name}.txt").write_text(text)
    return load_text(tmp_path / "train.txt", tmp_path / "valid.txt", tmp_path / "test.txt", unit="char", lowercase=True)


def test_char_corpus_tokens_vocabulary_roundtrip(tmp_path):
    c = char_corpus(tmp_path)
    v = c.vocab
    assert v.unit == "char" and " " in v and "o" in v
    assert v.decode(c.train[:8]) == list("one two") + ["<eos>"]
    assert v.decode(c.train[8:19]) == list("three four") + ["<eos>"]            # whitespace run -> one space
    assert v.join(v.decode(c.test[:-1])) == "four"                             # lowercase
    v.save(tmp_path / "vocab.txt")
    back = Vocabulary.load(tmp_path / "vocab.txt", unit="char")
    assert back.itos == v.itos and back.unit == "char"                        # " " survives the file
    assert v.tokenize("on  e") == ["o", "n", " ", "e"]


def tiny_lm(vocab, seed=0):
    torch.manual_seed(seed)
    m = AWDLSTM(AWDLSTMConfig(vocab_size=len(vocab), emb_size=8, hidden_size=16, num_layers=2))
    m.vocab = vocab
    return m.eval()


def test_fusion_scores_equal_the_lm_reading_the_transcript(tmp_path):
    lv = char_corpus(tmp_path).vocab
    lm = tiny_lm(lv)
    cv = CharVocabulary("onetwhrfu ")
    fusion = CharLMFusion(lm, cv)
    text = "one tw"
    prev = [cv.sos] + cv.encode(text)
    state, got = None, []
    for p in prev:
        scores, state = fusion(torch.tensor([p, p]), state)                   # two identical rows
        assert torch.equal(scores[0], scores[1])
        got.append(scores[0])
    with torch.no_grad():
        ids = torch.tensor([[lv.stoi["<eos>"]] + [lv.stoi[c] for c in text]])
        ref = lm(ids).logits[0].log_softmax(-1)                                # (T, V_lm)
    for t, nxt in enumerate(cv.encode(text) + [cv.eos]):
        if t >= len(got):
            break
        lm_id = lv.stoi["<eos>"] if nxt == cv.eos else lv.stoi[cv.itos[nxt]]
        assert float(got[t][nxt]) == pytest.approx(float(ref[t, lm_id]), abs=1e-5)
    assert torch.isinf(got[0][cv.pad]) and torch.isinf(got[0][cv.sos])


def test_fusion_rejects_a_word_level_lm_and_unknown_characters_without_unk(tmp_path):
    lv = char_corpus(tmp_path).vocab
    word = tiny_lm(Vocabulary(["<eos>", "<unk>", "one"]))
    with pytest.raises(InputError, match="character-level"):
        CharLMFusion(word, CharVocabulary("one"))
    no_unk = tiny_lm(Vocabulary(["<eos>", "o", "n", "e"], unit="char"))
    with pytest.raises(InputError, match="'z'"):
        CharLMFusion(no_unk, CharVocabulary("onez"))
    CharLMFusion(tiny_lm(lv), CharVocabulary("onez"))                          # z -> <unk>: fine


def test_beam_search_follows_a_dominant_lm_and_ignores_it_at_weight_zero(tmp_path):
    lv = char_corpus(tmp_path).vocab
    lm = tiny_lm(lv, seed=3)
    cv = CharVocabulary("onetwhrfu ")
    torch.manual_seed(0)
    las = LAS(LASConfig(vocab_size=len(cv), n_bands=4, listener_hidden=8, key_size=8, embed_size=8,
                        speller_hidden=16)).eval()
    x, lens = torch.randn(3, 12, 4), torch.tensor([12, 9, 7])
    fusion = CharLMFusion(lm, cv)
    plain = beam_search(las, x, lens, cv.sos, cv.eos, beam=4)
    assert beam_search(las, x, lens, cv.sos, cv.eos, beam=4, lm_step=fusion, lm_weight=0.0) == plain
    # lambda huge: the result is the LM's own greedy reading from a line start, for every utterance
    fused = beam_search(las, x, lens, cv.sos, cv.eos, beam=1, lm_step=fusion, lm_weight=1e4)
    prev, state, want = torch.tensor([cv.sos]), None, []
    for _ in range(12):
        scores, state = fusion(prev, state)
        prev = scores.argmax(-1)
        if int(prev) == cv.eos:
            break
        want.append(int(prev))
    for got in fused:                                                          # each stops at <eos> or its cap
        assert got == want[: len(got)] and len(got) in (len(want), 10, 12)
