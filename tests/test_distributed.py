"""torchrun + DDP (gloo on CPU): 2 processes with a global batch compute what 1 process computes with it."""
import json
import subprocess
import sys

import pytest

from conftest import make_corpus

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lstmkit"]
ONE = [sys.executable, "-m", "lstmkit"]


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def records(folder, kind):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if json.loads(x)["type"] == kind]


def lm_sets(corpus):
    return ["--config", "configs/tiny.toml", "--set", f'data.path="{corpus}"', "--set", 'data.format="text"',
            "--set", "model.emb_size=16", "--set", "model.hidden_size=32", "--set", "model.num_layers=2",
            "--set", "data.batch_size=8", "--set", "data.bptt=12", "--set", 'train.precision="fp32"',
            "--set", "train.n_predictions=4", "--set", "model.dropout_scale=0", "--set", "train.log_every=5",
            "--set", "train.threads=1", "--set", "optim.lr=1"]


@pytest.mark.slow
def test_lm_two_ranks_equal_one_process_and_resume_on_another_world_size(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=1500, n_valid=200, n_test=200)
    runs = tmp_path / "runs"
    sets = lm_sets(corpus)
    r = run(TORCHRUN + ["lm", "train", "--runs-dir", str(runs), "--run-id", "two", "--epochs", "1"] + sets)
    assert r.stdout.count("run folder:") == 1                      # rank 0 speaks, rank 1 is silent
    run(ONE + ["lm", "train", "--runs-dir", str(runs), "--run-id", "one", "--epochs", "2"] + sets)
    one, two = records(runs / "one", "train"), records(runs / "two", "train")
    assert len(two) >= 5
    # same steps, same global-batch loss: the only difference is the order of the float sums in the
    # gradient all-reduce (~1e-7 relative here; lr 1 keeps it from being amplified)
    for a, b in zip(one, two):
        assert a["step"] == b["step"] and b["step_loss"] == pytest.approx(a["step_loss"], rel=1e-5)
    v1, v2 = records(runs / "one", "valid")[0], records(runs / "two", "valid")[0]
    assert v2["val_loss"] == pytest.approx(v1["val_loss"], rel=1e-5)
    # the 2-rank checkpoint (all 8 streams' hidden state gathered on rank 0) resumes in one process
    run(ONE + ["lm", "train", "--resume", str(runs / "two"), "--epochs", "2"])
    e1, e2 = records(runs / "one", "epoch"), records(runs / "two", "epoch")
    assert [r["epoch"] for r in e2] == [1, 2]
    assert e2[-1]["val_loss"] == pytest.approx(e1[-1]["val_loss"], rel=1e-5)
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]       # rank 1 made no folder of its own


@pytest.mark.slow
def test_las_two_ranks_equal_one_process_and_resume_distributed(tmp_path):
    runs = tmp_path / "runs"
    sets = ["--config", "configs/las-toy.toml", "--set", "model.listener_hidden=32", "--set", "model.key_size=16",
            "--set", "model.embed_size=16", "--set", "model.speller_hidden=32", "--set", "data.batch_size=16",
            "--set", "data.toy.n_train=64", "--set", "data.toy.n_val=8", "--set", "data.toy.min_chars=4",
            "--set", "data.toy.max_chars=8", "--set", 'train.precision="fp32"', "--set", "train.threads=1",
            "--set", "train.log_every=1", "--set", "optim.tf_floor=1.0", "--set", "model.ctc_weight=0.3",
            "--set", "optim.lr=0.003", "--set", "model.dropout_p=0.0"]
    run(TORCHRUN + ["las", "train", "--runs-dir", str(runs), "--run-id", "two", "--epochs", "1"] + sets)
    run(ONE + ["las", "train", "--runs-dir", str(runs), "--run-id", "one", "--epochs", "2"] + sets)
    one, two = records(runs / "one", "train"), records(runs / "two", "train")
    assert len(two) == 4
    for a, b in zip(one, two):
        assert b["step_loss"] == pytest.approx(a["step_loss"], rel=1e-5)
    run(TORCHRUN + ["las", "train", "--resume", str(runs / "two"), "--epochs", "2"])
    two = records(runs / "two", "train")
    assert [r["step"] for r in two] == list(range(1, 9))
    for a, b in zip(one, two):
        assert b["step_loss"] == pytest.approx(a["step_loss"], rel=1e-4)
    assert (runs / "two" / "attention_plots" / "attention_0.png").is_file()


def test_cuda_training_joins_nccl_for_gradients_and_gloo_for_host_numbers(monkeypatch):
    """nccl alone cannot all-reduce the CPU tensors of all_sum / any_rank: on CUDA the group must
    also hold gloo (torch's "cpu:gloo,cuda:nccl"). Checked without GPUs by recording the call."""
    import torch
    import torch.distributed as tdist

    from lstmkit.core import distributed

    seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda backend: seen.append(backend))
    monkeypatch.setattr(tdist, "get_rank", lambda: 1)
    monkeypatch.setattr(tdist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: seen.append(("device", i)))
    d = distributed.init_distributed("cuda")
    assert (d.rank, d.world, d.local_rank) == (1, 2, 1)
    assert seen == [("device", 1), "cpu:gloo,cuda:nccl"]
    backends = {k.split(":")[0]: v for k, v in (part.split(":") for part in seen[1].split(","))}
    assert backends == {"cpu": "gloo", "cuda": "nccl"}
    seen.clear()
    distributed.init_distributed("cpu")
    assert seen == ["gloo"]
