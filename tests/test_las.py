import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lstmkit.config import from_dict
from lstmkit.errors import InputError
from lstmkit.las import (LAS, Attention, CharVocabulary, LASConfig, LASRunConfig, LASTrainer, SpeechDataset, ToyConfig,
                         Utterance, greedy_decode, load_las, read_split, write_split)
from lstmkit.las.model import BiLSTM, frame_mask
from lstmkit.las.toy import generate
from conftest import in_process


def small_model(**kw):
    torch.manual_seed(0)
    return LAS(LASConfig(vocab_size=10, listener_hidden=16, key_size=8, embed_size=8, speller_hidden=16, **kw))


def test_attention_gives_padded_frames_exactly_zero():
    att = Attention(8)
    keys = torch.randn(3, 6, 8)
    keys[1, 2:] = 1e4                                        # huge energies at padding must not leak
    ctx, w = att(torch.randn(3, 8), keys, torch.randn(3, 6, 8), frame_mask(torch.tensor([6, 2, 4]), 6))
    assert torch.equal(w[1, 2:], torch.zeros(4)) and torch.equal(w[2, 4:], torch.zeros(2))
    torch.testing.assert_close(w.sum(-1), torch.ones(3))


def test_location_aware_attention_masks_padding_and_follows_previous_weights():
    torch.manual_seed(0)
    att = Attention(8, location_channels=4, location_kernel=5)
    q, keys, vals = torch.randn(2, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = frame_mask(torch.tensor([6, 3]), 6)
    prev_a = torch.zeros(2, 6); prev_a[:, 0] = 1
    prev_b = torch.zeros(2, 6); prev_b[:, 2] = 1
    _, wa = att(q, keys, vals, mask, prev_a)
    _, wb = att(q, keys, vals, mask, prev_b)
    assert torch.equal(wa[1, 3:], torch.zeros(3)) and torch.equal(wb[1, 3:], torch.zeros(3))
    assert not torch.allclose(wa, wb)                        # where it looked before changes the energies
    _, plain = Attention(8)(q, keys, vals, mask)
    torch.testing.assert_close(att(q, keys, vals, mask, None)[1], plain)   # no previous weights: content only
    with pytest.raises(ValueError, match="odd"):
        Attention(8, location_channels=2, location_kernel=4)


def test_shapes_through_listener_attention_speller():
    m = small_model(pyramid_layers=2)
    logits, att = m(torch.randn(2, 17, 40), torch.tensor([17, 9]), torch.ones(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 10) and att.shape == (2, 5, 4)
    assert torch.equal(att[1, :, 2:], torch.zeros(5, 2))    # 9 frames -> 2 after two halvings


def test_padding_does_not_change_outputs():
    m = small_model().eval()
    x = torch.randn(1, 9, 40)
    inp = torch.tensor([[1, 4, 5]])
    a, _ = m(x, torch.tensor([9]), inp)
    padded = torch.cat([x, torch.randn(1, 5, 40)], 1)
    b, _ = m(padded, torch.tensor([9]), inp)
    torch.testing.assert_close(a, b)


def test_bilstm_equals_packed_bidirectional_lstm_with_same_weights():
    torch.manual_seed(0)
    bi = BiLSTM(5, 7)
    ref = torch.nn.LSTM(5, 7, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(bi.forward_lstm, f"{name}_l0"))
            getattr(ref, f"{name}_l0_reverse").copy_(getattr(bi.backward_lstm, f"{name}_l0"))
    x = torch.randn(3, 9, 5, requires_grad=True)
    lengths = torch.tensor([9, 4, 6])
    out = bi(x, lengths)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    expect = torch.nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=9)[0]
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=1e-5)
    g1, = torch.autograd.grad(out.pow(2).sum(), x)
    g2, = torch.autograd.grad(expect.pow(2).sum(), x)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
    assert float(g1[1, 4:].abs().sum()) == 0.0          # padded frames receive no gradient


@pytest.mark.parametrize("direction", ["forward", "both"])
def test_forward_values_describe_only_the_audio_so_far(direction):
    torch.manual_seed(0)
    lis = small_model(value_direction=direction).listener.eval()
    x = torch.randn(1, 12, 40)
    y = x.clone()
    y[:, 8:] += 1.0                                   # change only the future of frame 7
    lens = torch.tensor([12])
    (k1, v1, _), (k2, v2, _) = lis(x, lens), lis(y, lens)
    assert not torch.allclose(k1[:, :8], k2[:, :8])   # keys see both directions
    assert torch.allclose(v1[:, :8], v2[:, :8]) == (direction == "forward")



def stepped(m, x, lens, inp, tf_rate=1.0, generator=None):
    """LAS.forward by its definition: ``Speller.step`` one character at a time (eval mode: no dropout)."""
    keys, values, ln = m.listener(x, lens)
    mask = frame_mask(ln, keys.size(1))
    state = m.speller.init_state(keys, values, mask)
    outs, ws, prev = [], [], inp[:, 0]
    for t in range(inp.size(1)):
        o, state, w = m.speller.step(prev, state, keys, values, mask)
        outs.append(o)
        ws.append(w)
        if t + 1 < inp.size(1):
            own = torch.rand(prev.shape, generator=generator) >= tf_rate
            prev = torch.where(own, o.argmax(-1), inp[:, t + 1]) if tf_rate < 1 else inp[:, t + 1]
    return torch.stack(outs, 1), torch.stack(ws, 1)


@pytest.mark.parametrize("location", [0, 3])
@pytest.mark.parametrize("tf_rate", [1.0, 0.5])
def test_teacher_forcing_runs_the_output_layer_once_and_equals_stepping(location, tf_rate):
    """The output layer runs once over all steps (with autograd; below tf_rate 1 also once a step
    without, for the fed-back guess); logits, attention and gradients are those of running
    ``Speller.step`` (recurrence + output layer) one character at a time."""
    m = small_model(location_channels=location, location_kernel=3).eval()   # no dropout: same numbers
    x, lens, inp = torch.randn(3, 11, 40), torch.tensor([11, 8, 5]), torch.randint(3, 10, (3, 6))
    calls = []
    hook = m.speller.out.register_forward_hook(lambda mod, a, out: calls.append((a[0].shape, a[0].requires_grad)))
    logits, att = m(x, lens, inp, tf_rate=tf_rate, generator=torch.Generator().manual_seed(0))
    hook.remove()
    guesses = [(torch.Size([3, 8]), False)] * 5 if tf_rate < 1 else []
    assert calls == guesses + [(torch.Size([3, 6, 8]), True)]      # not L calls with autograd
    ref_logits, ref_att = stepped(m, x, lens, inp, tf_rate, torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(att, ref_att, rtol=1e-5, atol=1e-6)
    grads = []
    for out in (logits, ref_logits):
        m.zero_grad()
        out.square().sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in m.parameters()])
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_own_guesses_are_the_argmax_of_the_returned_logits_under_dropout():
    """In training, the character fed back is the argmax of the logits the loss sees at that step
    (one dropout mask for both), as when every step computed its logits with autograd."""
    m = small_model(dropout_p=0.5).train()
    fed = []
    m.speller.embed.register_forward_hook(lambda mod, a, out: fed.append(a[0]))
    inp = torch.randint(3, 10, (8, 12))
    x = torch.randn(8, 15, 40)
    logits, _ = m(x, torch.full((8,), 15), inp, tf_rate=0.0)
    assert len(fed) == 12 and torch.equal(fed[0], inp[:, 0])
    for t in range(11):
        assert torch.equal(fed[t + 1], logits[:, t].argmax(-1)), t
    again, _ = m(x, torch.full((8,), 15), inp, tf_rate=0.0)
    assert not torch.allclose(logits, again)                       # dropout is on


def test_char_dropout_hides_previous_characters_at_its_rate_and_never_sos():
    m = small_model(char_dropout_p=0.3).train()
    fed = []
    m.speller.embed.register_forward_hook(lambda mod, a, out: fed.append(a[0]))
    inp = torch.randint(3, 10, (400, 25))
    inp[:, 0] = 1
    for tf in (1.0, 0.999):       # characters embedded at once, and step by step
        fed.clear()
        m(torch.randn(400, 6, 40), torch.full((400,), 6), inp, tf_rate=tf, generator=torch.Generator().manual_seed(1))
        ids = fed[0] if len(fed) == 1 else torch.stack(fed, 1)
        assert ids.shape == inp.shape and torch.equal(ids[:, 0], inp[:, 0])
        hidden = (ids[:, 1:] == 0).float().mean().item()
        assert abs(hidden - 0.3) < 0.015, (tf, hidden)      # 9,600 draws: sd 0.0047, seeded


def test_greedy_decode_equals_teacher_forcing_on_its_own_output_and_stops_at_eos():
    m = small_model().eval()
    x, lens = torch.randn(3, 12, 40), torch.tensor([12, 10, 7])
    with torch.no_grad():   # make <eos> (id 2) likely so decoding stops early
        m.speller.out.bias.zero_()
        m.speller.out.bias[2] = 3.0
    ids, att = greedy_decode(m, x, lens, sos=1, eos=2, max_len=20)
    assert (ids[:, -1] == 2).all() and ids.size(1) < 20
    inp = torch.cat([torch.ones(3, 1, dtype=torch.long), ids[:, :-1]], 1)
    logits, att_tf = m(x, lens, inp)
    assert torch.equal(logits.argmax(-1), ids)
    torch.testing.assert_close(att, att_tf)


def test_toy_data_is_deterministic_and_spans_exact():
    cfg = ToyConfig(n_train=20, n_val=5, seed=3, noise=0.0, smoothing=0.0, jitter=0.0)
    a, b = generate(cfg, "train"), generate(cfg, "train")
    assert all(np.array_equal(x, y) and s == t for (x, s, _), (y, t, _) in zip(a, b))
    assert generate(cfg, "val")[0][1] != a[0][1]
    from lstmkit.las.toy import symbol_spectra
    spectra = symbol_spectra(cfg)
    for x, text, spans in a:
        assert 10 <= len(text) <= 30 and set(text) <= set(cfg.alphabet)
        assert spans[0][0] == 0 and spans[-1][1] == len(x)
        for ch, (s, e) in zip(text, spans):
            assert 3 <= e - s <= 8
            np.testing.assert_allclose(x[s:e], np.repeat(spectra[cfg.alphabet.index(ch)][None], e - s, 0), atol=1e-6)


def write_toy(folder, n=6, bands=40):
    cfg = ToyConfig(n_train=n, n_val=n, n_bands=bands)
    utts = [Utterance(f"u{i}", x, t, sp) for i, (x, t, sp) in enumerate(generate(cfg, "train"))]
    write_split(folder, utts)
    return utts


def test_folder_roundtrip(tmp_path):
    utts = write_toy(tmp_path / "train")
    back = read_split(tmp_path / "train")
    assert [u.text for u in back] == [u.text for u in utts] and back[0].spans == utts[0].spans
    np.testing.assert_array_equal(back[0].features, utts[0].features)


@pytest.mark.parametrize("damage,match", [
    (lambda d: np.save(d / "feats" / "u0.npy", np.zeros((5, 39), np.float32)), "39 bands"),
    (lambda d: np.save(d / "feats" / "u0.npy", np.zeros((0, 40), np.float32)), "zero frames"),
    (lambda d: np.save(d / "feats" / "u0.npy", np.full((5, 40), np.nan, np.float32)), "NaN or inf"),
    (lambda d: np.save(d / "feats" / "u0.npy", np.zeros(40, np.float32)), "2-D array"),
    (lambda d: (d / "feats" / "u1.npy").unlink(), "u1.npy: features of utterance 'u1'"),
    (lambda d: np.save(d / "feats" / "extra.npy", np.zeros((5, 40), np.float32)), "without a transcript line"),
    (lambda d: (d / "transcripts.tsv").write_text("u0\tHELLO\n" + "".join(f"u{i}\tab\n" for i in range(1, 6))),
     "character 'H' is not in the vocabulary"),
    (lambda d: (d / "transcripts.tsv").write_text(""), "no utterances"),
])
def test_bad_speech_data(tmp_path, damage, match):
    d = tmp_path / "train"
    write_toy(d)
    damage(d)
    with pytest.raises(InputError, match=match):
        SpeechDataset.from_folder(d, CharVocabulary(ToyConfig().alphabet))


def test_missing_data_folder(tmp_path):
    with pytest.raises(InputError, match="data folder not found"):
        read_split(tmp_path / "nope")


def tiny_las_config(runs, **train):
    return from_dict(LASRunConfig, {
        "model": {"listener_hidden": 128, "key_size": 64, "embed_size": 64, "speller_hidden": 128},
        "data": {"batch_size": 32, "toy": {"n_train": 3000, "n_val": 64, "min_chars": 4, "max_chars": 8, "seed": 1}},
        "optim": {"lr": 0.003},
        "train": {"epochs": 9, "runs_dir": str(runs), "seed": 0, "evals_per_epoch": 1, **train}})


@pytest.mark.slow
def test_cli_make_toy_train_decode_plot(tmp_path, capsys):
    """The commands a user runs in turn; the first through ``python -m lstmkit`` (the entry point), the
    others in this process."""
    r = subprocess.run([sys.executable, "-m", "lstmkit", "las", "make-toy", str(tmp_path / "toy"), "--n-train", "64",
                        "--n-val", "8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "toy" / "train" / "feats").glob("*.npy"))) == 64

    def cli(*args):
        return in_process(capsys, ["las", *args])
    r = cli("make-toy", tmp_path / "toy")
    assert r.returncode == 2 and "not empty" in r.stderr
    r = cli("train", "--data", tmp_path / "toy", "--runs-dir", tmp_path / "runs", "--run-id", "x",
            "--epochs", "1", "--set", "model.listener_hidden=16", "--set", "model.speller_hidden=16",
            "--set", "model.key_size=8", "--set", "model.embed_size=8")
    assert r.returncode == 0, r.stderr
    r = cli("decode", tmp_path / "runs" / "x", tmp_path / "toy" / "val")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 8 and "cer" in r.stderr
    r = cli("plot", tmp_path / "runs" / "x")
    assert r.returncode == 0 and "attention_0.png" in r.stdout
    # shallow fusion with a character LM trained on the training transcripts
    text = tmp_path / "text"
    text.mkdir()
    lines = [ln.split("\t", 1)[1] for ln in (tmp_path / "toy" / "train" / "transcripts.tsv").read_text().splitlines()]
    for name, part in (("train", lines[:56]), ("valid", lines[56:]), ("test", lines[56:])):
        (text / f"{name}.txt").write_text("\n".join(part) + "\n")
    r = in_process(capsys, ["lm", "train", "--config", "configs/lm-char-digits.toml",
                            "--set", f'data.path="{text}"', "--set", "model.hidden_size=16", "--set", "model.emb_size=8",
                            "--set", "data.batch_size=4", "--set", "data.bptt=20", "--set", "train.n_predictions=4",
                            "--runs-dir", tmp_path / "runs", "--run-id", "charlm", "--epochs", "1"])
    assert r.returncode == 0, r.stderr
    r = cli("decode", tmp_path / "runs" / "x", tmp_path / "toy" / "val", "--beam", "3",
            "--lm", tmp_path / "runs" / "charlm", "--lm-weight", "0.5")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 8 and '"cer"' in r.stderr
    r = cli("train", "--data", tmp_path / "nothing", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "data folder not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_short_toy_training_aligns_diagonally_and_writes_every_artifact(tmp_path):
    """With the joint CTC loss on the listener, as the default toy config trains (configs/las-toy.toml),
    the attention is a clear diagonal after 5 epochs (measured: alignment 0.92 after 3, 0.96 after 4
    and 5; attention alone needs about 9)."""
    cfg = tiny_las_config(tmp_path, epochs=5)
    cfg.model.ctc_weight = 0.5
    trainer = LASTrainer(cfg, run_id="align")
    rec = trainer.fit()
    assert rec["alignment_accuracy"] >= 0.9          # attention argmax inside each character's true frames
    assert rec["monotonic_focus"] >= 0.45            # peaked and moving forward (uniform attention: ~0.02)
    assert rec["cer"] <= 0.2                         # free-running decoding already reads most characters
    run = trainer.run.path
    for i in range(10):
        assert (run / "attention_plots" / f"attention_{i}.png").stat().st_size > 0
    att = np.load(run / "attention.npy")
    assert att.shape[0] == 10 and np.allclose(att[0].sum(-1)[att[0].sum(-1) > 0], 1.0, atol=1e-3)
    rows = list(csv.DictReader(open(run / "predictions.csv", encoding="utf-8")))
    assert len(rows) == len(trainer.val_set) and rows[0].keys() == {"id", "target", "prediction"}
    recs = [json.loads(line) for line in open(run / "metrics.jsonl", encoding="utf-8")]
    valid = [r for r in recs if r["type"] == "valid"]
    assert len(valid) == trainer.config.train.epochs
    assert {"train_loss", "val_loss", "cer", "wer", "alignment_accuracy", "monotonic_focus"} <= valid[-1].keys()
    for name in ("loss.png", "train_X_sample.png", "config.toml", "chars.json"):
        assert (run / name).stat().st_size > 0
    model, vocab = load_las(run)
    assert vocab.chars() == trainer.vocab.chars() and not model.training


def test_speed_perturb_keeps_frame_order_and_masks_padding():
    from lstmkit.las.data import speed_perturb
    x = torch.arange(1, 21, dtype=torch.float32).view(2, 10, 1).clone()
    x[1, 6:] = 0
    g = torch.Generator().manual_seed(0)
    y, n = speed_perturb(x, torch.tensor([10, 6]), 0.3, g)
    for i, length in enumerate([10, 6]):
        v = y[i, : n[i], 0]
        assert (v[1:] >= v[:-1]).all() and v[0] == x[i, 0, 0] and v[-1] <= x[i, length - 1, 0]
        assert 7 <= int(n[i]) <= 13 if length == 10 else 4 <= int(n[i]) <= 8
        assert torch.equal(y[i, n[i]:], torch.zeros_like(y[i, n[i]:]))


def test_beam_one_is_exactly_greedy_and_wider_beams_score_no_worse():
    from lstmkit.las.decode import beam_search, greedy_decode
    m = small_model()
    torch.manual_seed(1)
    with torch.no_grad():                                   # sharpen the untrained model so it stops sometimes
        m.speller.out.bias[2] += 1.5
    x, lens = torch.randn(5, 14, 40), torch.tensor([14, 11, 9, 14, 6])
    ids, _ = greedy_decode(m, x, lens, sos=1, eos=2)
    greedy = []
    for row in ids.tolist():
        greedy.append(row[: row.index(2)] if 2 in row else row)
    assert beam_search(m, x, lens, sos=1, eos=2, beam=1) == greedy
    assert any(len(g) < int(c) for g, c in zip(greedy, torch.clamp(lens, min=10)))   # some stopped at <eos>

    def logp(seq):                                          # total log p_LAS of a transcript + <eos>
        inp = torch.tensor([[1] + seq])
        with torch.no_grad():
            out = m(x[i: i + 1], lens[i: i + 1], inp)[0].log_softmax(-1)[0]
        return float(out.gather(1, torch.tensor(seq + [2])[:, None]).sum())
    m.eval()
    wide = beam_search(m, x, lens, sos=1, eos=2, beam=6, length_norm=0.0)
    for i in range(5):
        if len(greedy[i]) < max(10, int(lens[i])):         # greedy finished with <eos>
            assert logp(wide[i]) >= logp(greedy[i]) - 1e-4


def test_joint_ctc_loss_mixes_in_and_trains_the_ctc_head():
    from lstmkit.las.model import las_loss, sequence_loss
    x, lens = torch.randn(2, 20, 40), torch.tensor([20, 12])
    inp = torch.tensor([[1, 5, 6, 6, 7], [1, 8, 9, 0, 0]])
    tgt = torch.tensor([[5, 6, 6, 7, 2], [8, 9, 2, 0, 0]])
    plain = small_model()
    torch.testing.assert_close(las_loss(plain, x, lens, inp, tgt), sequence_loss(plain(x, lens, inp)[0], tgt))
    m = small_model(ctc_weight=0.3)
    loss = las_loss(m, x, lens, inp, tgt)
    ce = sequence_loss(m(x, lens, inp)[0], tgt)
    assert torch.isfinite(loss) and not torch.allclose(loss, ce)
    loss.backward()
    assert m.listener.ctc.weight.grad.abs().sum() > 0


def test_sortagrad_batches_go_shortest_first():
    from lstmkit.las.data import length_buckets
    lengths = list(np.random.default_rng(0).integers(1, 100, size=50))
    batches = length_buckets(lengths, 8, np.random.default_rng(1), shortest_first=True)
    assert sorted(i for b in batches for i in b) == list(range(50))
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima == sorted(maxima)


def _brute_prefix_scores(logp, blank=0):
    """log p(transcript starts with g) for every g, by enumerating all C^S frame paths."""
    import itertools
    s, c = logp.shape
    scores = {}
    for path in itertools.product(range(c), repeat=s):
        out = [k for j, k in enumerate(path) if k != blank and (j == 0 or path[j - 1] != k)]
        p = float(sum(logp[t, k] for t, k in enumerate(path)))
        for n in range(len(out) + 1):
            key = tuple(out[:n])
            scores[key] = float(np.logaddexp(scores.get(key, -np.inf), p))
        full = tuple(out) + ("end",)
        scores[full] = float(np.logaddexp(scores.get(full, -np.inf), p))
    return scores


def test_ctc_prefix_scores_match_brute_force_enumeration_with_padding():
    from lstmkit.las.ctc_prefix import CTCPrefixScorer
    torch.manual_seed(0)
    c, eos = 4, 2                                   # ids: 0 blank, 1 sos, 2 eos, 3 'a'; brute force over all
    logp = torch.randn(2, 5, c).log_softmax(-1)
    lens = torch.tensor([5, 3])                     # second utterance padded by two frames
    sc = CTCPrefixScorer(logp, lens, torch.tensor([0, 1]), blank=0, eos=eos)
    brute = [_brute_prefix_scores(logp[0].double()), _brute_prefix_scores(logp[1, :3].double())]
    for prefix in ([], [3], [3, 3], [3, 1], [1, 3, 1]):
        state = sc.initial()
        for ch in prefix:
            ext = sc.extension_scores(state)
            state = sc.advance(state, torch.tensor([0, 1]), torch.tensor([ch, ch]), ext)
        ext = sc.extension_scores(state)
        for row in range(2):
            want = brute[row]
            assert abs(float(state.psi[row]) - want.get(tuple(prefix), -1e10)) < 1e-6 or not prefix
            for ch in (1, 3):
                got, ref = float(ext[row, ch]), want.get(tuple(prefix) + (ch,), -1e10)
                assert abs(got - ref) < 1e-6 if ref > -1e9 else got <= -1e9
            ref_end = want.get(tuple(prefix) + ("end",), -1e10)
            assert abs(float(ext[row, eos]) - ref_end) < 1e-6 if ref_end > -1e9 else float(ext[row, eos]) <= -1e9
    # the whole-transcript score agrees with torch's CTC loss
    nll = torch.nn.functional.ctc_loss(logp[:1].transpose(0, 1), torch.tensor([[3, 1]]), torch.tensor([5]),
                                       torch.tensor([2]), blank=0, reduction="sum")
    state = sc.initial()
    for ch in (3, 1):
        state = sc.advance(state, torch.tensor([0, 1]), torch.tensor([ch, ch]), sc.extension_scores(state))
    assert abs(float(sc.extension_scores(state)[0, eos]) + float(nll)) < 1e-5


def test_joint_ctc_beam_search_follows_a_confident_ctc_head():
    from lstmkit.las.decode import beam_search, greedy_decode
    m = small_model(ctc_weight=0.3)
    x, lens = torch.randn(2, 14, 40), torch.tensor([14, 9])
    with torch.no_grad():                    # every frame reads 'a' (id 5): CTC allows exactly "a"
        m.listener.ctc.weight.zero_()
        m.listener.ctc.bias.fill_(-20.0)
        m.listener.ctc.bias[5] = 20.0
    assert beam_search(m, x, lens, sos=1, eos=2, beam=3, ctc_weight=0.8) == [[5], [5]]
    listened = m.listener(x, lens, return_hidden=True)
    assert beam_search(m, x, lens, sos=1, eos=2, beam=3, ctc_weight=0.8, listened=listened) == [[5], [5]]
    ids, _ = greedy_decode(m, x, lens, sos=1, eos=2, ctc_weight=0.8)
    assert ids[:, :2].tolist() == [[5, 2], [5, 2]]


def test_joint_ctc_beam_one_is_exactly_joint_greedy():
    from lstmkit.las.decode import beam_search, greedy_decode
    m = small_model(ctc_weight=0.3)
    torch.manual_seed(3)
    with torch.no_grad():
        m.speller.out.bias[2] += 1.0
    x, lens = torch.randn(4, 12, 40), torch.tensor([12, 10, 7, 12])
    ids, _ = greedy_decode(m, x, lens, sos=1, eos=2, ctc_weight=0.4)
    greedy = [row[: row.index(2)] if 2 in row else row for row in ids.tolist()]
    assert beam_search(m, x, lens, sos=1, eos=2, beam=1, ctc_weight=0.4) == greedy
    with pytest.raises(InputError, match="CTC head"):
        beam_search(small_model(), x, lens, sos=1, eos=2, beam=3, ctc_weight=0.5)


def test_validation_every_k_epochs_with_joint_ctc_greedy(tmp_path):
    cfg = from_dict(LASRunConfig, {
        "model": {"listener_hidden": 16, "key_size": 8, "embed_size": 8, "speller_hidden": 16, "ctc_weight": 0.3},
        "data": {"batch_size": 8, "toy": {"n_train": 16, "n_val": 4, "min_chars": 4, "max_chars": 6, "seed": 1}},
        "train": {"epochs": 5, "runs_dir": str(tmp_path), "val_every_epochs": 2, "val_ctc_weight": 0.5, "n_plots": 2}})
    trainer = LASTrainer(cfg, run_id="every")
    trainer.fit()
    assert [r["epoch"] for r in trainer.history] == [2, 4, 5]      # every 2nd epoch and the last
    assert all(np.isfinite(r["cer"]) for r in trainer.history)
    from lstmkit.las.trainer import load_las
    assert load_las(tmp_path / "every")[0].decode_ctc_weight == 0.5   # `las decode` decodes as the run validated


def test_weight_averaging_validates_and_keeps_the_averaged_weights_as_best(tmp_path):
    cfg = from_dict(LASRunConfig, {
        "model": {"listener_hidden": 16, "key_size": 8, "embed_size": 8, "speller_hidden": 16},
        "data": {"batch_size": 8, "toy": {"n_train": 32, "n_val": 4, "min_chars": 4, "max_chars": 6, "seed": 1}},
        "optim": {"ema_decay": 0.9, "lr": 0.01},
        "train": {"epochs": 1, "runs_dir": str(tmp_path), "n_plots": 1}})
    trainer = LASTrainer(cfg, run_id="ema")
    trainer.fit()
    assert int(trainer.averaged.n_averaged) == trainer.step == 4
    avg, raw = trainer.averaged.module.state_dict(), trainer.model.state_dict()
    assert any(not torch.equal(avg[k], raw[k]) for k in raw)               # a real average, not a copy
    model, _ = load_las(tmp_path / "ema", "best")                          # one validation: best = the average
    assert all(torch.equal(model.state_dict()[k], avg[k].cpu()) for k in avg)
    last, _ = load_las(tmp_path / "ema", "last")                           # last = the raw weights (resume)
    assert all(torch.equal(last.state_dict()[k], raw[k].cpu()) for k in raw)
    assert trainer.eval_model is trainer.averaged.module


def test_validation_attention_is_cut_at_the_listener_lengths_under_a_pyramid(tmp_path):
    """With pyramid layers the attention's columns are listener frames (each 2**P input frames):
    each utterance's matrix is cut at its listener length, and the alignment metric compares peaks
    with the character spans divided down to listener frames (they were in input frames)."""
    from lstmkit.las.metrics import listener_spans
    cfg = tiny_las_config(tmp_path / "runs", epochs=1, precision="fp32", n_plots=0, threads=1)
    cfg.data.toy.n_train, cfg.data.toy.n_val = 32, 8
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    cfg.model.key_size = cfg.model.embed_size = 8
    cfg.model.pyramid_layers = 2
    t = LASTrainer(cfg, run_id="r")
    out = t.evaluate()
    _, _, atts = t._last
    frames = [int(torch.clamp(torch.clamp(torch.tensor(u.features.shape[0]) // 2, min=1) // 2, min=1))
              for u in t.val_set.utts]
    assert [a.shape[1] for a in atts] == frames
    assert 0.0 <= out["alignment_accuracy"] <= 1.0
    assert listener_spans([(0, 4), (4, 10)], 4) == [(0, 1), (1, 3)]
