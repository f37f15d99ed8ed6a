import os
import numpy as np
import pytest


def make_corpus(folder, n_train=3000, n_valid=300, n_test=300, seed=0):
    """A small text corpus with learnable structure: sentences from a tiny grammar."""
    rng = np.random.default_rng(seed)
    subj = ["the cat", "a dog", "the bird", "my friend", "the teacher"]
    verb = ["sees", "likes", "finds", "follows"]
    obj = ["the ball", "a tree", "the house", "the river", "a book"]

    def lines(n):
        return [f"{subj[rng.integers(5)]} {verb[rng.integers(4)]} {obj[rng.integers(5)]} ." for _ in range(n)]

    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        (folder / f"{name}.txt").write_text("\n".join(lines(n)) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def small_corpus(tmp_path):
    return make_corpus(tmp_path / "corpus")


def tiny_config(corpus_dir, runs_dir, **train):
    from lstmkit.lm import LMConfig
    from lstmkit.config import from_dict
    return from_dict(LMConfig, {
        "model": {"emb_size": 16, "hidden_size": 32, "num_layers": 2},
        "data": {"path": str(corpus_dir), "format": "text", "batch_size": 8, "eval_batch_size": 4,
                 "test_batch_size": 2, "bptt": 12},
        "optim": {"lr": 10.0, "weight_decay": 0.0},
        "train": {"epochs": 2, "runs_dir": str(runs_dir), "n_predictions": 8, "log_every": 10,
                  "precision": "fp32", "seed": 3, **train},
    })


# TensorBoard event files are tested in test_tensorboard.py; elsewhere they would only add writer threads
os.environ.setdefault("LSTMKIT_TENSORBOARD", "0")
