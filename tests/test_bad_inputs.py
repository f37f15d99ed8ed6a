"""The bad-input catalogue: every case gets one clear message naming the file or field and what
was expected (CLI: exit code 2, no traceback), and leaves every existing artifact untouched."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import in_process, make_corpus, snapshot, tiny_config
from lstmkit.errors import InputError
from lstmkit.las.data import Utterance, write_split
from lstmkit.lm import LanguageModelTrainer, TestLanguageModel, load_model
from lstmkit.las.toy import ToyConfig, generate


def run_cli(argv, capsys):
    r = in_process(capsys, argv)
    return r.returncode, r.stderr


def speech_folder(root, name, mutate):
    """A copy of the toy val split with ``mutate(folder)`` applied."""
    out = root / "bad" / name
    toy = ToyConfig(n_train=1, n_val=3, min_chars=4, max_chars=6, seed=3)
    write_split(out, [Utterance(f"u{i}", x, t, s) for i, (x, t, s) in enumerate(generate(toy, "val"))])
    mutate(out)
    return out


def text_corpus(root, name, train_bytes):
    out = root / "bad" / name
    make_corpus(out, n_train=5, n_valid=5, n_test=5)
    if train_bytes is None:
        (out / "train.txt").unlink()
    else:
        (out / "train.txt").write_bytes(train_bytes)
    return out


def lm_train(root, *extra):
    return ["lm", "train", "--config", "configs/tiny.toml", "--runs-dir", root / "runs-new", *extra]


def write_npy(folder, uid, arr):
    np.save(folder / "feats" / f"{uid}.npy", arr)


LATIN1 = "caf\xe9 na\xefve".encode("latin-1")

CLI_CASES = {
    # corpus files
    "empty corpus": (lambda r: lm_train(r, "--set", f"data.path={text_corpus(r, 'empty', b'')}", "--set", "data.format=text"),
                     "empty"),
    "missing corpus": (lambda r: lm_train(r, "--set", f"data.path={text_corpus(r, 'missing', None)}", "--set", "data.format=text"),
                       "not found"),
    "binary corpus": (lambda r: lm_train(r, "--set", f"data.path={text_corpus(r, 'binary', bytes(range(256)) * 4)}",
                                         "--set", "data.format=text"), "binary"),
    "non-UTF-8 corpus": (lambda r: lm_train(r, "--set", "data.path=" + str(text_corpus(r, "latin1", LATIN1)),
                                            "--set", "data.format=text"), "UTF-8"),
    # configs
    "unknown config key": (lambda r: lm_train(r, "--set", "model.dropout=0.5"), "model.dropout"),
    "dropout 1.5": (lambda r: lm_train(r, "--set", "model.dropout_p=1.5"), "model.dropout_p"),
    "negative lr": (lambda r: lm_train(r, "--set", "optim.lr=-1"), "optim.lr"),
    "bptt 0": (lambda r: lm_train(r, "--set", "data.bptt=0"), "data.bptt"),
    "config not TOML": (lambda r: ["lm", "train", "--config", _file(r, "bad.toml", "[model\nemb = ")], "bad.toml"),
    "config missing": (lambda r: ["lm", "train", "--config", r / "nope.toml"], "nope.toml"),
    "LAS dropout out of range": (lambda r: ["las", "train", "--config", "configs/las-toy.toml", "--set", "model.dropout_p=1.5",
                                            "--runs-dir", r / "runs-new"], "model.dropout_p"),
    # run folders and checkpoints
    "eval a folder that is not a run": (lambda r: ["lm", "eval", r / "corpus"], "not a run folder"),
    "vocabulary does not match checkpoint": (lambda r: ["lm", "eval", _lm_copy(r, "vocab", _cut_vocab)], "vocab.txt"),
    "truncated checkpoint": (lambda r: ["lm", "eval", _lm_copy(r, "trunc", _truncate_best)], "truncated or corrupted"),
    # generation
    "generate forward=0": (lambda r: ["lm", "generate", r / "runs" / "lm", "--prompt", "the cat", "--max-new-tokens", "0"],
                           "--max-new-tokens"),
    "generate forward<0": (lambda r: ["lm", "generate", r / "runs" / "lm", "--prompt", "the cat", "--max-new-tokens", "-3"],
                           "--max-new-tokens"),
    "generate empty prompt": (lambda r: ["lm", "generate", r / "runs" / "lm", "--prompt", "  "], "--prompt"),
    # speech features and transcripts
    "wrong band count": (lambda r: ["las", "decode", r / "runs" / "las",
                                    speech_folder(r, "bands", lambda f: write_npy(f, "u0", np.zeros((20, 13), np.float32)))],
                         "13 bands"),
    "zero frames": (lambda r: ["las", "decode", r / "runs" / "las",
                               speech_folder(r, "zero", lambda f: write_npy(f, "u1", np.zeros((0, 40), np.float32)))],
                    "zero frames"),
    "NaN features": (lambda r: ["las", "decode", r / "runs" / "las",
                                speech_folder(r, "nan", lambda f: write_npy(f, "u2", np.full((9, 40), np.nan, np.float32)))],
                     "NaN or inf"),
    "ragged features": (lambda r: ["las", "decode", r / "runs" / "las",
                                   speech_folder(r, "ragged", lambda f: np.save(f / "feats" / "u0.npy",
                                                                                np.array([np.zeros(3), np.zeros(5)], dtype=object),
                                                                                allow_pickle=True))],
                        "u0.npy"),
    "unknown transcript characters": (lambda r: ["las", "decode", r / "runs" / "las",
                                                 speech_folder(r, "chars", lambda f: _retext(f, "u0", "h3llo!"))], "'3'"),
    "feature file without transcript": (lambda r: ["las", "decode", r / "runs" / "las",
                                                   speech_folder(r, "extra", lambda f: write_npy(f, "u9", np.zeros((9, 40), np.float32)))],
                                        "without a transcript"),
    "transcript without feature file": (lambda r: ["las", "decode", r / "runs" / "las",
                                                   speech_folder(r, "lost", lambda f: (f / "feats" / "u1.npy").unlink())],
                                        "not found"),
    "empty data folder": (lambda r: ["las", "decode", r / "runs" / "las", _mkdir(r / "bad" / "emptydir")], "transcripts.tsv"),
    "beam width 0": (lambda r: ["las", "decode", r / "runs" / "las", r / "toy" / "val", "--beam", "0"], "--beam"),
}


def _file(root, name, text):
    p = root / "bad" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _mkdir(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


def _lm_copy(root, name, damage):
    import shutil
    dst = root / "bad" / f"lm-{name}"
    if not dst.exists():
        shutil.copytree(root / "runs" / "lm", dst)
        damage(dst)
    return dst


def _cut_vocab(run):
    lines = (run / "vocab.txt").read_text().splitlines()
    (run / "vocab.txt").write_text("\n".join(lines[:-2]) + "\n")


def _truncate_best(run):
    import json
    rec = json.loads((run / "checkpoint" / "best.json").read_text())
    f = run / "checkpoint" / rec["files"]["model"]["name"]
    f.write_bytes(f.read_bytes()[:100])


def _retext(folder, uid, text):
    tsv = folder / "transcripts.tsv"
    rows = [ln.split("\t", 1) for ln in tsv.read_text().splitlines()]
    tsv.write_text("".join(f"{u}\t{text if u == uid else t}\n" for u, t in rows))


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input_gives_one_clear_message_and_keeps_artifacts(case, world, capsys, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # configs/ relative paths
    build, expected = CLI_CASES[case]
    argv = build(world)
    before = snapshot(world / "runs")
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    assert err.strip().count("\n") <= 1, err                      # one message, not a wall of text
    assert snapshot(world / "runs") == before
    assert not (world / "runs-new").exists() or not any((world / "runs-new").iterdir())


API_CASES = {
    "ids out of range": (lambda m: TestLanguageModel.prediction(np.array([[0, 10 ** 6]]), m), "out of range"),
    "negative ids": (lambda m: TestLanguageModel.prediction(np.array([[-1, 2]]), m), "out of range"),
    "float ids": (lambda m: TestLanguageModel.prediction(np.zeros((2, 3), np.float32), m), "dtype"),
    "rank 1 ids": (lambda m: TestLanguageModel.prediction(np.zeros(5, np.int64), m), "rank 1"),
    "rank 3 ids": (lambda m: TestLanguageModel.generation(np.zeros((1, 2, 3), np.int64), 2, m), "rank 3"),
    "ragged list": (lambda m: TestLanguageModel.prediction([[1, 2], [3]], m), "ragged"),
    "empty batch": (lambda m: TestLanguageModel.prediction(np.zeros((0, 4), np.int64), m), "N >= 1"),
    "generation forward=0": (lambda m: TestLanguageModel.generation(np.zeros((1, 2), np.int64), 0, m), "forward"),
    "generation forward<0": (lambda m: TestLanguageModel.generation(np.zeros((1, 2), np.int64), -2, m), "forward"),
    "generation forward float": (lambda m: TestLanguageModel.generation(np.zeros((1, 2), np.int64), 2.5, m), "forward"),
    "generation temperature 0": (lambda m: TestLanguageModel.generation(np.zeros((1, 2), np.int64), 2, m, temperature=0),
                                 "temperature"),
    "not an array": (lambda m: TestLanguageModel.prediction("the cat", m), "type str"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_bad_input_raises_input_error_naming_the_argument(case, world):
    model = load_model(world / "runs" / "lm")
    call, expected = API_CASES[case]
    with pytest.raises(InputError) as e:
        call(model)
    assert expected in str(e.value)


def test_disk_full_while_saving_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    import shutil
    import lstmkit.core.checkpoint as ck
    run = tmp_path / "lm"
    shutil.copytree(world / "runs" / "lm", run)
    trainer = LanguageModelTrainer.resume(run)
    before = snapshot(run / "checkpoint")
    weights_before = load_model(run, "last").state_dict()

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(OSError, match="No space left"):
        trainer.save()
    assert snapshot(run / "checkpoint") == before                  # no temp files, last.json untouched
    monkeypatch.undo()
    after = load_model(run, "last").state_dict()                    # the old checkpoint, whole
    assert after.keys() == weights_before.keys() and all(torch.equal(after[k], weights_before[k]) for k in after)


@pytest.mark.slow
def test_ctrl_c_during_training_writes_a_checkpoint_and_exits_130(world, tmp_path):
    cfg = tiny_config(world / "corpus", tmp_path / "runs", epochs=50)
    from lstmkit.config import dumps_toml, to_dict
    (tmp_path / "c.toml").write_text(dumps_toml(to_dict(cfg)))
    proc = subprocess.Popen([sys.executable, "-m", "lstmkit", "lm", "train", "--config", str(tmp_path / "c.toml"),
                             "--run-id", "ctrlc"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "ctrlc" / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.exists() and '"epoch"' in metrics.read_text()):   # one epoch done
        assert proc.poll() is None and time.time() - t0 < 120
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = tmp_path / "runs" / "ctrlc" / "checkpoint" / "last.json"
    assert last.exists()
    resumed = LanguageModelTrainer.resume(tmp_path / "runs" / "ctrlc")
    assert resumed.step > 0
