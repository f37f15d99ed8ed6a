import os
import subprocess
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


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A trained tiny LM run, a trained tiny LAS run, a toy speech folder and a text corpus, shared by
    the bad-input tests (which copy what they damage and check that nothing else changed)."""
    from lstmkit.las import LASTrainer
    from lstmkit.las.data import Utterance, write_split
    from lstmkit.las.toy import ToyConfig, generate
    from lstmkit.lm import LanguageModelTrainer
    from test_las import tiny_las_config
    root = tmp_path_factory.mktemp("world")
    corpus = make_corpus(root / "corpus", n_train=400, n_valid=60, n_test=60)
    LanguageModelTrainer.from_config(tiny_config(corpus, root / "runs", epochs=1), run_id="lm").fit()
    toy = ToyConfig(n_train=64, n_val=8, min_chars=4, max_chars=6, seed=3)
    for split in ("train", "val"):
        write_split(root / "toy" / split, [Utterance(f"{split}-{i}", x, t, s) for i, (x, t, s) in enumerate(generate(toy, split))])
    cfg = tiny_las_config(root / "runs", epochs=1, n_plots=1)
    cfg.data.path = str(root / "toy")
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    LASTrainer(cfg, run_id="las").fit()
    (root / "runs" / "keep.txt").write_text("an artifact that must survive every failure\n")
    return root


def snapshot(folder):
    """sha256 of every file under ``folder``: compare before and after to show nothing changed."""
    import hashlib
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


class HostReads:
    """Inside the block, count every tensor -> Python conversion (each one a host synchronisation
    on a GPU) in ``n``; ``refuse=True`` makes each one raise instead."""

    names = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, refuse: bool = False):
        self.refuse, self.n, self.depth = refuse, 0, 0

    def __enter__(self):
        import torch
        self.saved = {name: getattr(torch.Tensor, name) for name in self.names}

        def wrapped(name):
            def f(t, *a, **k):
                if self.refuse:
                    raise AssertionError("host read of a tensor inside the step")
                self.n += self.depth == 0        # a conversion that calls another (float -> item) reads once
                self.depth += 1
                try:
                    return self.saved[name](t, *a, **k)
                finally:
                    self.depth -= 1
            return f
        for name in self.names:
            setattr(torch.Tensor, name, wrapped(name))
        return self

    def __exit__(self, *exc):
        import torch
        for name, f in self.saved.items():
            setattr(torch.Tensor, name, f)


def elsewhere_class():
    """A tensor type that holds CPU data but says it lives on ``cuda``: on a CPU-only machine it
    stands in for a GPU tensor where the point is host-versus-device handling. Every op on it raises
    (as mixing devices would), except a copy to the CPU, which returns the data; PyTorch's own checks
    (``torch.set_rng_state`` wants a CPU byte tensor, ``.numpy()``) refuse it as they refuse a GPU
    tensor."""
    import torch

    class Elsewhere(torch.Tensor):
        @staticmethod
        def __new__(cls, inner, device="cuda"):
            r = torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=torch.device(device),
                                                    strides=inner.stride())
            r.inner = inner
            return r

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and kwargs.get("device") == torch.device("cpu"):
                return args[0].inner.to(dtype=kwargs.get("dtype") or args[0].inner.dtype, copy=True)
            raise RuntimeError(f"{func}: a tensor on {args[0].device} met code that expects another device")

    return Elsewhere


def on_elsewhere(tree):
    """``tree`` (nested dicts/lists/tuples) with every tensor replaced by an :func:`elsewhere_class`
    tensor, i.e. what ``torch.load(..., map_location="cuda")`` gives, emulated on a CPU."""
    import torch
    cls = elsewhere_class()
    if isinstance(tree, torch.Tensor):
        return cls(tree)
    if isinstance(tree, dict):
        return {k: on_elsewhere(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(on_elsewhere(v) for v in tree)
    return tree


def in_process(capsys, args) -> subprocess.CompletedProcess:
    """``lstmkit ARGS`` run by ``lstmkit.cli.main`` in this process (no interpreter and torch start-up
    per command), as ``subprocess.run(..., capture_output=True, text=True)`` would report it;
    argparse's exit status is kept."""
    import torch
    from lstmkit.cli import main
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:          # argparse usage errors
        rc = e.code
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["lstmkit", *map(str, args)], rc, out.out, out.err)
