"""Careless input on the command line (issue 20): every number flag refuses 0 / negative / nan /
inf / huge where they make no sense, runs of the wrong family, bad config values and damaged files
give one line naming the problem, exit status 2, no traceback, and leave every other file as it was."""
from __future__ import annotations


import numpy as np
import pytest

from conftest import snapshot
from lstmkit.cli import main


@pytest.fixture
def runs(world):
    return world


def one_line_error(argv, capsys, *needles):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


LM = ["lm", "train", "--config", "configs/tiny.toml"]
BAD_FLAGS = [
    (LM + ["--epochs", "0"], "--epochs"), (LM + ["--epochs", "-1"], "--epochs"),
    (LM + ["--max-minutes", "0"], "--max-minutes"), (LM + ["--max-minutes", "nan"], "--max-minutes"),
    (LM + ["--max-minutes", "inf"], "--max-minutes"), (LM + ["--max-minutes", "-3"], "--max-minutes"),
    (["lm", "eval", "RUN_LM", "--batch-size", "0"], "--batch-size"),
    (["lm", "eval", "RUN_LM", "--n-contexts", "-1"], "--n-contexts"),
    (["lm", "eval", "RUN_LM", "--grid-thetas", "a,b"], "--grid-thetas"),
    (["lm", "eval", "RUN_LM", "--window", "-5"], "--window"), (["lm", "eval", "RUN_LM", "--lambda", "2"], "--lambda"),
    (["lm", "eval", "RUN_LM", "--de-lr", "nan"], "--de-lr"), (["lm", "eval", "RUN_LM", "--de-decay", "1"], "--de-decay"),
    (["lm", "eval", "RUN_LM", "--de-bptt", "0"], "--de-bptt"),
    (["lm", "generate", "RUN_LM", "--prompt", "the", "--max-new-tokens", "1000000000000"], "--max-new-tokens"),
    (["lm", "generate", "RUN_LM", "--prompt", "the", "--temperature", "0"], "--temperature"),
    (["lm", "generate", "RUN_LM", "--prompt", "the", "--top-p", "0"], "--top-p"),
    (["lm", "generate", "RUN_LM", "--prompt", "the", "--top-k", "0"], "--top-k"),
    (["lm", "generate", "RUN_LM", "--prompt", "the", "--beam", "0"], "--beam"),
    (["las", "decode", "RUN_LAS", "DATA", "--batch-size", "0"], "--batch-size"),
    (["las", "decode", "RUN_LAS", "DATA", "--ctc-weight", "2"], "--ctc-weight"),
    (["las", "decode", "RUN_LAS", "DATA", "--length-norm", "nan"], "--length-norm"),
    (["las", "decode", "RUN_LAS", "DATA", "--window", "-5"], "--window"),
    (["las", "decode", "RUN_LAS", "DATA", "--lm-weight", "inf"], "--lm-weight"),
    (["las", "make-toy", "OUT", "--n-train", "0"], "--n-train"),
    (["las", "prepare", "DATA", "OUT", "--hop-ms", "0"], "--hop-ms"),
    (["las", "prepare", "DATA", "OUT", "--speed-perturb", "1"], "--speed-perturb"),
    (["las", "train", "--epochs", "0"], "--epochs"),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS, ids=[" ".join(a[:2] + a[-2:]) for a, _ in BAD_FLAGS])
def test_number_flags_refuse_values_that_make_no_sense(runs, tmp_path, capsys, argv, flag):
    before = snapshot(runs)
    subst = {"RUN_LM": runs / "runs" / "lm", "RUN_LAS": runs / "runs" / "las", "DATA": runs / "toy" / "val",
             "OUT": tmp_path / "out"}
    one_line_error([subst.get(a, a) for a in argv], capsys, flag)
    assert snapshot(runs) == before and not (tmp_path / "out").exists()


def test_a_run_of_the_other_family_is_named_as_such(runs, capsys):
    one_line_error(["las", "decode", runs / "runs" / "lm", runs / "toy" / "val"], capsys, "language-model run")
    one_line_error(["lm", "generate", runs / "runs" / "las", "--prompt", "a"], capsys, "speech-recognition run")
    one_line_error(["lm", "train", "--resume", runs / "runs" / "las"], capsys, "speech-recognition run")


@pytest.mark.parametrize("sets,needle", [
    (["model.location_kernel=4"], "location_kernel"),
    (["data.toy.min_chars=9", "data.toy.max_chars=3"], "min_chars"),
    (['data.toy.alphabet=""'], "alphabet")])
def test_las_config_values_are_checked(tmp_path, capsys, sets, needle):
    argv = ["las", "train", "--runs-dir", tmp_path / "runs", "--epochs", "1"]
    for s in sets:
        argv += ["--set", s]
    one_line_error(argv, capsys, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("cutoffs", ["[]", "[5, 3]", "[5000, 9000]"])
def test_adaptive_softmax_cutoffs_are_checked(runs, tmp_path, capsys, cutoffs):
    one_line_error(["lm", "train", "--config", "configs/tiny.toml", "--set", f'data.path="{runs / "corpus"}"',
                    "--set", 'data.format="text"', "--set", 'model.softmax="adaptive"', "--set",
                    f"model.adaptive_cutoffs={cutoffs}", "--runs-dir", tmp_path / "runs", "--epochs", "1"],
                   capsys, "adaptive_cutoffs")


def test_runs_dir_that_is_a_file_and_resume_before_any_checkpoint(runs, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    one_line_error(["lm", "train", "--config", "configs/tiny.toml", "--set", f'data.path="{runs / "corpus"}"',
                    "--set", 'data.format="text"', "--runs-dir", tmp_path / "afile"], capsys, "not a folder")
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.toml").write_text((runs / "runs" / "lm" / "config.toml").read_text())
    one_line_error(["lm", "train", "--resume", half], capsys, "no checkpoint yet", "--config")


def test_las_plot_refuses_a_pickled_attention_file(runs, tmp_path, capsys):
    import shutil
    run = tmp_path / "las"
    shutil.copytree(runs / "runs" / "las", run)
    marker = tmp_path / "PWNED"
    arr = np.empty(1, dtype=object)
    arr[0] = {"x": 1}
    np.save(run / "attention.npy", arr, allow_pickle=True)
    one_line_error(["las", "plot", run], capsys, "attention.npy")
    assert not marker.exists()


def test_las_prepare_refuses_a_wav_full_of_nan(tmp_path, capsys):
    import soundfile
    src = tmp_path / "corpus" / "train"
    (src / "wav").mkdir(parents=True)
    soundfile.write(src / "wav" / "a.wav", np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    (src / "transcripts.tsv").write_text("a\thello\n")
    one_line_error(["las", "prepare", tmp_path / "corpus", tmp_path / "out"], capsys, "a.wav", "NaN")


def test_a_killed_checkpoint_write_leaves_no_temp_file_behind(tmp_path):
    import torch
    from lstmkit.core.checkpoint import save_checkpoint
    ck = tmp_path / "checkpoint"
    ck.mkdir()
    (ck / ".000000001.last.model.safetensors.abc.tmp").write_bytes(b"half")
    save_checkpoint(ck, "last", "000000002", {"w": torch.zeros(2)}, {}, {"step": 2})
    assert not list(ck.glob(".*.tmp"))


def test_threads_flag_sets_torch_threads_for_inference_commands(runs, capsys, monkeypatch):
    import torch
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    assert main(["lm", "generate", str(runs / "runs" / "lm"), "--prompt", "the cat", "--max-new-tokens", "3",
                 "--threads", "1", "--no-stream"]) == 0
    assert calls == [1]
    one_line_error(["las", "decode", runs / "runs" / "las", runs / "toy" / "val", "--threads", "0"], capsys, "--threads")


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("lstmkit ")
