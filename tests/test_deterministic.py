"""train.deterministic: PyTorch's deterministic kernels during fit(), so that on a GPU two runs of
one config (and a resumed run and an uninterrupted one) repeat bit for bit; the previous global
settings come back afterwards. On a CPU the kernels are deterministic already: there the test
shows the mode changes no number; on CUDA (when present) it shows two runs are equal."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import tiny_config
from lstmkit.core.device import deterministic_mode
from lstmkit.las import LASTrainer
from lstmkit.lm import LanguageModelTrainer
from test_las import tiny_las_config

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def flags():
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)


def step_losses(run):
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["type"], r.get("step"), r.get("step_loss", r.get("val_loss"))) for r in recs if r["type"] in ("train", "valid")]


def test_deterministic_mode_sets_and_restores_the_global_settings():
    before = flags()
    with deterministic_mode(True):
        assert flags() == (True, True, True, False)
    assert flags() == before
    with deterministic_mode(False):
        assert flags() == before
    with pytest.raises(RuntimeError), deterministic_mode(True):   # restored on an error too
        raise RuntimeError("boom")
    assert flags() == before


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_lm_runs_with_deterministic_kernels_repeat_exactly(small_corpus, tmp_path, device):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=1, log_every=1, threads=1, device=device,
                      deterministic=True)
    before = flags()
    a = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id="a")
    res_a = a.fit()
    assert flags() == before                                  # nothing global left behind
    b = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id="b")
    res_b = b.fit()
    assert step_losses(a.run.path) == step_losses(b.run.path) and res_a["test_loss"] == res_b["test_loss"]
    if device == "cpu":                                       # CPU kernels were deterministic already
        cfg.train.deterministic = False
        c = LanguageModelTrainer.from_config(cfg, run_id="c")
        c.fit()
        assert step_losses(c.run.path) == step_losses(a.run.path)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_las_trains_with_deterministic_kernels(tmp_path, device):
    cfg = tiny_las_config(tmp_path / "runs", epochs=1, log_every=1, threads=1, precision="fp32", n_plots=1,
                          device=device, deterministic=True)
    cfg.data.toy.n_train, cfg.data.toy.n_val = 96, 8
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    before = flags()
    runs = []
    for name in ("a", "b"):
        t = LASTrainer(copy.deepcopy(cfg), run_id=name)
        t.fit()
        runs.append(step_losses(t.run.path))
    assert flags() == before
    if device == "cpu" or cfg.model.ctc_weight == 0:          # CUDA's CTC backward has no deterministic kernel
        assert runs[0] == runs[1]
