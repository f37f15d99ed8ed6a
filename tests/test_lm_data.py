import numpy as np
import pytest
import torch

from lstmkit.errors import InputError
from lstmkit.lm.data import (BPTTIterator, Vocabulary, batchify, bptt_length, load_npy, load_text, load_wikitext,
                             resolve_data_path)


def test_vocabulary_roundtrip_and_unk(tmp_path):
    v = Vocabulary.build([["b", "a", "b"], ["c"]])
    assert v.itos[:2] == ["<eos>", "<unk>"] and v.itos[2] == "b"
    assert v.encode(["a", "zzz"]) == [v.stoi["a"], v.stoi["<unk>"]]
    v.save(tmp_path / "vocab.txt")
    w = Vocabulary.load(tmp_path / "vocab.txt")
    assert w.itos == v.itos
    strict = Vocabulary(["<eos>", "x"])
    with pytest.raises(InputError, match="not in the vocabulary"):
        strict.encode(["y"])


def test_wikitext2_vendored_vocab_and_sizes():
    c = load_wikitext(resolve_data_path("data/wikitext-2"))
    assert len(c.vocab) == 33278
    assert (len(c.train), len(c.valid), len(c.test)) == (2088628, 217646, 245569)
    assert c.vocab.decode(c.train[:2]) == ["<eos>", "="]   # line 1 is blank, line 2 a title


def test_text_reader_caps_vocabulary(small_corpus):
    c = load_text(small_corpus / "train.txt", small_corpus / "valid.txt", small_corpus / "test.txt", max_vocab=6)
    assert len(c.vocab) == 6
    assert (c.train == c.vocab.stoi["<unk>"]).any()
    assert c.train[-1] == c.vocab.stoi["<eos>"]


def test_npy_reader(tmp_path):
    words = np.array(["<eol>", "a", "b", "c"])
    np.save(tmp_path / "vocab.npy", words)
    arts = np.empty(2, dtype=object)
    arts[0], arts[1] = np.array([1, 2, 0]), np.array([3, 0])
    for s in ("train", "valid", "test"):
        np.save(tmp_path / f"{s}.npy", arts, allow_pickle=True)
    c = load_npy(tmp_path)
    assert c.train.tolist() == [1, 2, 0, 3, 0] and c.vocab.eos == "<eol>"
    arts[1] = np.array([9])
    np.save(tmp_path / "test.npy", arts, allow_pickle=True)
    with pytest.raises(InputError, match="test.npy: id 9 out of range"):
        load_npy(tmp_path)


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"\x00\x01\x02", "binary"), (b"caf\xe9 ok", "UTF-8"),
                                           (b"   \n \n", "empty")])
def test_bad_corpus_files(tmp_path, content, match):
    p = tmp_path / "train.txt"
    p.write_bytes(content)
    with pytest.raises(InputError, match=match) as e:
        load_text(p, p, p)
    assert str(p) in str(e.value)


def test_missing_corpus(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_wikitext(tmp_path)


def test_batchify_layout():
    rows = batchify(np.arange(26), 4)
    assert rows.shape == (4, 6)
    assert rows[1].tolist() == [6, 7, 8, 9, 10, 11]


def test_bptt_length_distribution():
    rng = np.random.default_rng(0)
    lens = np.array([bptt_length(rng, 70, 110) for _ in range(20000)])
    assert lens.min() >= 5 and lens.max() <= 110
    short = (lens < 52).mean()                    # the bptt/2 = 35 branch, N(35, 5)
    assert 0.035 < short < 0.065
    assert abs(lens[lens >= 52].mean() - 69.5) < 0.3   # int() truncates N(70, 5), as the paper does
    assert abs(lens[lens >= 52].std() - 5) < 0.3


def test_bptt_iterator_covers_stream_and_resumes():
    rows = batchify(np.arange(1000), 4)
    it = BPTTIterator(rows, bptt=20, seed=1)
    xs, ys = zip(*list(it))
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)
    assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:])
    a = BPTTIterator(rows, bptt=20, seed=2)
    gen = iter(a)
    for _ in range(3):
        next(gen)
    st = a.state_dict()
    rest = [t[0] for t in gen]
    b = BPTTIterator(rows, bptt=20, seed=99)
    b.load_state_dict(st)
    assert all(torch.equal(p, q) for p, q in zip(rest, [t[0] for t in b]))


@pytest.mark.parametrize("bptt,variable", [(70, True), (12, True), (6, True), (20, False)])
def test_len_is_the_mean_number_of_windows_per_epoch(bptt, variable):
    # the cosine schedule and tail averaging count steps by len(): with tokens // bptt the paper's
    # variable lengths (mean ~0.975 bptt - 0.5) gave ~3% more windows than len(), so the schedule
    # ended early. Measured over many epochs of the real iterator, independently of the formula.
    it = BPTTIterator(batchify(np.arange(40_001), 4), bptt=bptt, seed=1, variable=variable)
    counts = []
    for _ in range(60):
        counts.append(sum(1 for _ in it))
        it.pos = 0
    assert abs(np.mean(counts) - len(it)) <= max(1.0, 0.005 * len(it)), (np.mean(counts), len(it))
