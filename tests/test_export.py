"""`lstmkit lm export` / `las export` (issue 21): one TorchScript file that plain PyTorch loads and
that gives the same scores as the trained model."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import make_corpus, tiny_config
from lstmkit.las import LASTrainer, load_las
from lstmkit.lm import LanguageModelTrainer, TestLanguageModel, load_model
from test_las import tiny_las_config

PLAIN = """
import json, sys, torch
extra = {"export.json": "", "vocab.txt": ""}
m = torch.jit.load(sys.argv[1], _extra_files=extra)
meta = json.loads(extra["export.json"])
x = torch.tensor(json.loads(sys.argv[2]))
state = tuple(torch.zeros(1, x.size(0), h) for h in meta["state_sizes"] for _ in (0, 1))
with torch.no_grad():
    a, state = m(x[:, :3], state)
    b, _ = m(x[:, 3:], state)
assert "lstmkit" not in sys.modules
print(json.dumps(torch.cat([a, b], 1)[:, -1].tolist()))
"""


@pytest.mark.slow
def test_lm_export_loads_in_plain_pytorch_and_scores_the_same(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n_train=200, n_valid=30, n_test=30)
    LanguageModelTrainer.from_config(tiny_config(corpus, tmp_path / "runs", epochs=1), run_id="lm").fit()
    out = tmp_path / "lm.pt"
    r = subprocess.run([sys.executable, "-m", "lstmkit", "lm", "export", str(tmp_path / "runs" / "lm"), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    model = load_model(tmp_path / "runs" / "lm")
    ids = np.random.default_rng(0).integers(0, len(model.vocab), size=(3, 8))
    want = TestLanguageModel.prediction(ids, model)
    # a fresh interpreter that never imports lstmkit, the state carried across two chunks
    r = subprocess.run([sys.executable, "-c", PLAIN, str(out), json.dumps(ids.tolist())], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.array(json.loads(r.stdout)), want, rtol=1e-5, atol=1e-5)
    extra = {"vocab.txt": ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert extra["vocab.txt"].decode().split("\n") == model.vocab.itos


@pytest.mark.slow
def test_las_export_listen_and_step_give_the_models_teacher_forced_logits(tmp_path):
    cfg = tiny_las_config(tmp_path / "runs", epochs=1, n_plots=0)
    cfg.data.toy.n_train, cfg.data.toy.n_val = 64, 4
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    cfg.model.key_size = cfg.model.embed_size = 8
    LASTrainer(cfg, run_id="las").fit()
    out = tmp_path / "las.pt"
    r = subprocess.run([sys.executable, "-m", "lstmkit", "las", "export", str(tmp_path / "runs" / "las"), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    model, vocab = load_las(tmp_path / "runs" / "las")
    extra = {"export.json": ""}
    m = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["export.json"])
    assert meta["sos"] == vocab.sos and meta["chars"] == vocab.chars()
    torch.manual_seed(0)
    feats, lens = torch.randn(3, 23, 40), torch.tensor([23, 17, 12])
    inputs = torch.randint(3, len(vocab), (3, 6))
    with torch.no_grad():
        want, _ = model(feats, lens, inputs)
        keys, values, l2 = m.listen(feats, lens)
        mask = torch.arange(keys.size(1))[None, :] < l2[:, None]
        n, h = 3, meta["speller_hidden"]
        z = torch.zeros(n, h)
        ctx = (torch.softmax(torch.zeros(n, keys.size(1)).masked_fill(~mask, float("-inf")), -1)[:, None] @ values)[:, 0]
        w = torch.zeros(n, keys.size(1))
        w[:, 0] = 1.0
        state, got = (z, z, z, z, ctx, w), []
        for t in range(inputs.size(1)):
            logits, *state = m.step(inputs[:, t], *state, keys, values, mask)
            got.append(logits)
    torch.testing.assert_close(torch.stack(got, 1), want, rtol=1e-5, atol=1e-5)
