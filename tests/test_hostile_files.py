"""Hostile files (issue 20): no name read from a pointer, a transcript or the command line leads
outside its folder, no data file runs code, and a pointer's state is checked before it is used.
Each test asserts the exit code / error, that the message names the problem, that the victim files
still exist unchanged and that no payload marker was created."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from conftest import in_process, make_corpus, snapshot, tiny_config
from lstmkit.core.checkpoint import load_checkpoint
from lstmkit.errors import InputError
from lstmkit.las.data import Utterance, read_split, write_split
from lstmkit.las.toy import ToyConfig, generate
from lstmkit.lm import LanguageModelTrainer
from lstmkit.lm.npy_articles import load_articles


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    corpus = make_corpus(root / "corpus", n_train=300, n_valid=40, n_test=40)
    LanguageModelTrainer.from_config(tiny_config(corpus, root / "runs", epochs=1), run_id="lm").fit()
    return root


def cli(argv, capsys):
    r = in_process(capsys, argv)
    return r.returncode, r.stderr


def victim(tmp_path):
    v = tmp_path / "victim"
    v.mkdir(exist_ok=True)
    (v / "file.safetensors").write_bytes(b"precious")
    (v / "file.extra.pt").write_bytes(b"precious too")
    return v


def copy_run(lm_run, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(lm_run / "runs" / "lm", dst)
    return dst


@pytest.mark.parametrize("target", ["../../victim/file", "ABSOLUTE", "symlink"])
def test_a_pointer_naming_files_outside_the_checkpoint_folder_is_refused_and_deletes_nothing(lm_run, tmp_path, capsys,
                                                                                             target):
    v = victim(tmp_path)
    before = snapshot(v)
    run = copy_run(lm_run, tmp_path / "r", "lm")
    ptr = run / "checkpoint" / "last.json"
    rec = json.loads(ptr.read_text())
    if target == "ABSOLUTE":
        names = {"model": str(v / "file.safetensors"), "extra": str(v / "file.extra.pt")}
    elif target == "symlink":
        os.symlink(v / "file.safetensors", run / "checkpoint" / "000000001.last.model.safetensors")
        os.symlink(v / "file.extra.pt", run / "checkpoint" / "000000001.last.extra.pt")
        names = {"model": "000000001.last.model.safetensors", "extra": "000000001.last.extra.pt"}
    else:
        names = {"model": "../../../victim/file.model.safetensors", "extra": "../../../victim/file.extra.pt"}
    for k, n in names.items():
        rec["files"][k]["name"] = n
    ptr.write_text(json.dumps(rec))
    code, err = cli(["lm", "train", "--resume", run], capsys)
    assert code == 2 and "Traceback" not in err and "files.model.name" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(InputError, match="files.model.name"):
        load_checkpoint(run / "checkpoint", "last")
    # a new save over the hostile pointer replaces it and deletes nothing it names
    from lstmkit.core.checkpoint import save_checkpoint
    import torch
    save_checkpoint(run / "checkpoint", "last", "000000999", {"w": torch.zeros(1)}, {}, {"epoch": 0})
    assert snapshot(v) == before


@pytest.mark.parametrize("rec", [{}, {"files": {}, "state": {}}, {"files": [], "state": {}}, "just a string"])
def test_a_malformed_pointer_is_one_clear_error(lm_run, tmp_path, capsys, rec):
    run = copy_run(lm_run, tmp_path, "lm")
    (run / "checkpoint" / "last.json").write_text(json.dumps(rec))
    code, err = cli(["lm", "train", "--resume", run], capsys)
    assert code == 2 and "Traceback" not in err and "last.json" in err


def test_a_pointer_to_a_file_that_is_not_safetensors_is_refused(lm_run, tmp_path, capsys):
    run = copy_run(lm_run, tmp_path, "lm")
    ck = run / "checkpoint"
    rec = json.loads((ck / "best.json").read_text())
    bogus = ck / "000000001.best.model.safetensors"
    bogus.write_bytes(b"not safetensors at all")
    rec["files"]["model"] = {"name": bogus.name, "sha256": hashlib.sha256(bogus.read_bytes()).hexdigest(),
                             "bytes": bogus.stat().st_size}
    (ck / "best.json").write_text(json.dumps(rec))
    code, err = cli(["lm", "generate", run, "--prompt", "the cat"], capsys)
    assert code == 2 and "Traceback" not in err and "safetensors" in err


@pytest.mark.parametrize("key,value", [("epoch", 99), ("epoch", -1), ("step", "x"), ("lr_factor", "fast"),
                                       ("lr_factor", 0.0), ("loader.pos", 10 ** 9), ("elapsed", float("nan"))])
def test_edited_pointer_state_is_refused(lm_run, tmp_path, capsys, key, value):
    run = copy_run(lm_run, tmp_path, "lm")
    ptr = run / "checkpoint" / "last.json"
    rec = json.loads(ptr.read_text())
    st = rec["state"]
    if key == "loader.pos":
        st["loader"]["pos"] = value
    else:
        st[key] = value
    ptr.write_text(json.dumps(rec))
    code, err = cli(["lm", "train", "--resume", run], capsys)
    assert code == 2 and "Traceback" not in err and "state" in err
    del rec["state_sha256"]                       # without the hash, the range checks still refuse it
    ptr.write_text(json.dumps(rec))
    code, err = cli(["lm", "train", "--resume", run], capsys)
    assert code == 2 and "Traceback" not in err and f"state.{key.split('.')[-1]}" in err


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def course_folder(root, train_articles):
    root.mkdir(parents=True)
    np.save(root / "vocab.npy", np.array(["<eol>", "a", "b", "c"]))
    for s in ("train", "valid", "test"):
        arts = np.empty(2, dtype=object)
        arts[0], arts[1] = np.array([1, 2, 0]), np.array([3, 1, 0])
        np.save(root / f"{s}.npy", arts, allow_pickle=True)
    if train_articles is not None:
        np.save(root / "train.npy", train_articles, allow_pickle=True)
    return root


def test_course_npy_corpus_loads_without_pickle_execution(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    ok = course_folder(tmp_path / "ok", None)
    assert [a.tolist() for a in load_articles(ok / "train.npy")] == [[1, 2, 0], [3, 1, 0]]
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = np.array([1, 2]), Payload(str(marker))
    bad = course_folder(tmp_path / "bad", evil)
    with pytest.raises(InputError, match="refused"):
        load_articles(bad / "train.npy")
    assert not marker.exists()
    # a raw pickle renamed .npy, and the CLI path
    (bad / "train.npy").write_bytes(__import__("pickle").dumps(Payload(str(marker))))
    code, err = cli(["lm", "train", "--config", "tiny", "--set", f'data.path="{bad}"', "--set", 'data.format="npy"', "--runs-dir",
                     tmp_path / "runs", "--epochs", "1"], capsys)
    assert code == 2 and "Traceback" not in err and "train.npy" in err
    assert not marker.exists()


def test_object_arrays_of_anything_but_int_arrays_are_refused(tmp_path):
    arts = np.empty(2, dtype=object)
    arts[0], arts[1] = np.array([1, 2]), "a string"
    bad = course_folder(tmp_path / "c", arts)
    with pytest.raises(InputError, match="article 1"):
        load_articles(bad / "train.npy")


@pytest.mark.parametrize("run_id", ["../escape", "/abs/path", "a/b", "..", ".hidden", ""])
def test_run_ids_that_are_paths_are_refused(tmp_path, capsys, run_id):
    corpus = make_corpus(tmp_path / "corpus", n_train=50, n_valid=10, n_test=10)
    runs = tmp_path / "runs"
    code, err = cli(["lm", "train", "--config", "configs/tiny.toml", "--set", f'data.path="{corpus}"', "--set",
                     'data.format="text"', "--runs-dir", runs, "--run-id", run_id, "--epochs", "1"], capsys)
    if run_id == "":
        return            # empty = default timestamp name
    assert code == 2 and "run id" in err and "Traceback" not in err
    assert not (tmp_path / "escape").exists() and (not runs.exists() or not any(runs.iterdir()))


def toy_split(folder, ids):
    toy = ToyConfig(n_train=1, n_val=len(ids), min_chars=4, max_chars=6, seed=3)
    write_split(folder, [Utterance(u, x, t, s) for u, (x, t, s) in zip(ids, generate(toy, "val"))])


@pytest.mark.parametrize("line,expect", [("../../../outside/x\tabc", "utterance id"),
                                         ("/etc/passwd\tabc", "utterance id"),
                                         ("u0\tabc\textra", "columns"),
                                         ("u0\tother text", "listed twice")])
def test_transcript_lines_that_escape_or_contradict_are_refused(tmp_path, line, expect):
    folder = tmp_path / "split"
    toy_split(folder, ["u0", "u1"])
    outside = tmp_path / "outside"
    outside.mkdir()
    np.save(outside / "x.npy", np.zeros((10, 40), np.float32))
    tsv = folder / "transcripts.tsv"
    tsv.write_text(tsv.read_text() + line + "\n")
    with pytest.raises(InputError, match=expect):
        read_split(folder)


def test_a_feature_link_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "split"
    toy_split(folder, ["u0", "u1"])
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros((10, 40), np.float32))
    (folder / "feats" / "u1.npy").unlink()
    os.symlink(outside, folder / "feats" / "u1.npy")
    with pytest.raises(InputError, match="outside"):
        read_split(folder)
