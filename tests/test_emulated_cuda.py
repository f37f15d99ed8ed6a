"""Both pipelines on an emulated GPU (tests/emulated_cuda.py): on a CPU-only machine, every device
decision of the code runs as it does on CUDA (``device = "auto"`` takes the GPU, flat cuDNN
buffers, the GPU loss path, the device-side step, checkpoints loaded onto the device), while the
emulated tensors refuse what a GPU refuses (mixing devices, numpy of device tensors, device random
states in host APIs, backward through an inference-mode LSTM). The numbers are CPU kernels', so a
run on the emulated GPU must match a CPU run closely and a resumed one exactly."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from conftest import in_process, make_corpus, tiny_config
from emulated_cuda import OnGPU, emulated_cuda, plain
from lstmkit.cli import main
from lstmkit.errors import InputError
from lstmkit.las import LASTrainer
from lstmkit.lm import LanguageModelTrainer
from test_las import tiny_las_config
from test_resume_stop import history, records, stop_at


# on a machine with a real GPU the device-parametrized tests run there instead
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the emulated GPU stands in for a missing one")


def cli_json(capsys, argv, stream: str = "out") -> dict:
    """The JSON line a command prints last on ``stream``."""
    r = in_process(capsys, argv)
    assert r.returncode == 0, r.stderr
    return json.loads(getattr(r, "std" + stream).strip().splitlines()[-1])


def test_the_emulated_gpu_refuses_what_a_gpu_refuses():
    with emulated_cuda():
        assert torch.cuda.is_available()
        x = torch.randn(3, 4, device="cuda")
        assert isinstance(x, OnGPU) and x.device.type == "cuda" and (x * 2).device.type == "cuda"
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(3, 4)
        assert (x + torch.tensor(2.0)).device.type == "cuda"             # 0-d host tensors mix, as on CUDA
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        assert type(x.cpu()) is torch.Tensor and torch.equal(x.cpu(), plain(x))
        with pytest.raises(TypeError, match="ByteTensor"):
            torch.set_rng_state(torch.get_rng_state().to("cuda"))
        with pytest.raises(RuntimeError, match="generator"):
            torch.rand(2, device="cuda", generator=torch.Generator())
        torch.rand(2, device="cuda", generator=torch.Generator(device="cuda"))
        lstm = torch.nn.LSTM(4, 5, batch_first=True).to("cuda")
        assert lstm.weight_hh_l0.device.type == "cuda" and isinstance(lstm.weight_hh_l0, torch.nn.Parameter)
        with pytest.raises(RuntimeError, match="same device"):
            lstm(torch.randn(2, 3, 4))
        lstm.eval()
        with pytest.raises(RuntimeError, match="training mode"):
            lstm(x.view(1, 3, 4))[0].sum().backward()
        with torch.no_grad():
            lstm(x.view(1, 3, 4))                                          # inference itself is fine
        packed = torch.nn.utils.rnn.pack_padded_sequence(x.view(1, 3, 4), torch.tensor([3]), batch_first=True)
        assert packed.data.device.type == "cuda" and packed.batch_sizes.device.type == "cpu"   # as on CUDA
        with pytest.raises(AssertionError, match="pin"):
            torch.zeros(4, 6)[:, 1:3].pin_memory()
    assert not torch.cuda.is_available() and type(torch.zeros(1).to("cpu")) is torch.Tensor


@pytest.mark.parametrize("bidirectional,layers,batch_first", [(False, 1, True), (True, 2, False)])
def test_the_step_by_step_lstm_of_the_emulated_autocast_is_the_lstm(bidirectional, layers, batch_first):
    """In fp32 (no rounding) the emulator's step-by-step LSTM equals PyTorch's, outputs and gradients."""
    from emulated_autocast import _lstm_by_step
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4, layers, batch_first=batch_first, bidirectional=bidirectional)
    x = torch.randn(3, 6, 5) if batch_first else torch.randn(6, 3, 5)
    hx = tuple(torch.randn(layers * (2 if bidirectional else 1), 3, 4) for _ in range(2))
    ref_out, (ref_h, ref_c) = lstm(x, hx)
    out, h, c = _lstm_by_step(x, hx, lstm._flat_weights, True, layers, 0.0, True, bidirectional, batch_first)
    for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
        assert torch.allclose(a, b, atol=1e-6)
    g = torch.autograd.grad((out.sum() + c.sum()), lstm._flat_weights)
    g_ref = torch.autograd.grad((ref_out.sum() + ref_c.sum()), lstm._flat_weights)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g, g_ref))


def test_a_device_that_is_not_there_is_one_clear_error(capsys):
    from lstmkit.core.device import pick_runtime
    for device, why in (("cuda", "CUDA is not available"), ("tpu", "found 'tpu'"), ("cuda:x", "found 'cuda:x'")):
        with pytest.raises(InputError, match=f"--device: .*{why}"):
            pick_runtime(device, "fp32", device_where="--device")
    with emulated_cuda(), pytest.raises(InputError, match=r"train.device: 'cuda:1', but this machine has 1 GPU"):
        pick_runtime("cuda:1")


@pytest.mark.slow
def test_lm_trains_resumes_and_evaluates_on_a_gpu_as_on_a_cpu(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus", n_train=600, n_valid=100, n_test=100)   # ~50 steps an epoch
    cfg = tiny_config(corpus, tmp_path / "runs", epochs=2, log_every=1, evals_per_epoch=2, threads=1,
                      device="auto")
    cfg.optim.average_last = 0.5                             # the iterate average is kept on the device too
    cpu_cfg = copy.deepcopy(cfg)
    cpu_cfg.train.device = "cpu"
    cpu_cfg.model.flat_weights, cpu_cfg.model.loss_path = "always", "plain"   # what "auto" picks on a GPU
    cpu = LanguageModelTrainer.from_config(cpu_cfg, run_id="cpu")
    res_cpu = cpu.fit()
    with emulated_cuda():
        full = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id="gpu")
        assert full.runtime.device.type == "cuda" and next(full.model.parameters()).device.type == "cuda"
        res = full.fit()
        cut = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id="cut")
        stop_at(cut, 7)
        cut.fit()
        resumed = LanguageModelTrainer.resume(cut.run.path)  # the checkpoint loads onto the device
        assert resumed.hidden[0][0].device.type == "cuda"
        res_resumed = resumed.fit()
        late = records(full.run.path, "averaging")[0]["step"] + 3   # the average and its count on the device
        cut2 = LanguageModelTrainer.from_config(copy.deepcopy(cfg), run_id="cut2")
        stop_at(cut2, late)
        cut2.fit()
        res_resumed2 = LanguageModelTrainer.resume(cut2.run.path).fit()
        tuned = LanguageModelTrainer.finetune(full.run.path, run_id="ft", overrides={"train": {"epochs": 1}})
        tuned.fit()
        ev = ["lm", "eval", full.run.path, "--split", "test", "--cache", "--dynamic-eval", "--n-contexts", 4,
              "--de-grad-batches", 2, "--seed", 1]
        gpu_eval = cli_json(capsys, ev)
        gen = ["lm", "generate", full.run.path, "--prompt", "the cat", "--max-new-tokens", 6, "--no-stream",
               "--temperature", 1.0, "--seed", 5]
        capsys.readouterr()
        assert main([str(a) for a in gen]) == 0
        gpu_text = capsys.readouterr().out
    assert history(cut.run.path) == history(full.run.path) == history(cut2.run.path)   # exact resume on the GPU path
    assert res_resumed["test_loss"] == res["test_loss"] == res_resumed2["test_loss"]
    assert records(full.run.path, "averaging") and records(cut.run.path, "averaging")
    # with the choices "auto" makes on a GPU (flat buffer, one cross-entropy over all logits), the
    # CPU run is the same computation: only where the tensors live differs
    assert history(full.run.path) == history(cpu.run.path) and res["test_loss"] == res_cpu["test_loss"]
    cpu_eval = cli_json(capsys, ev[:2] + [cpu.run.path] + ev[3:] + ["--device", "cpu"])
    for key in ("ppl", "fixed_context_nll"):
        assert gpu_eval[key] == pytest.approx(cpu_eval[key], rel=1e-6)
    for part in ("cache", "dynamic_eval", "dynamic_eval_cache"):
        assert gpu_eval[part]["ppl"] == pytest.approx(cpu_eval[part]["ppl"], rel=1e-6)
    assert len(records(tuned.run.path, "valid")) >= 1
    assert main([str(a) for a in gen[:2] + [cpu.run.path] + gen[3:] + ["--device", "cpu"]]) == 0
    assert len(gpu_text.split()) == len(capsys.readouterr().out.split()) == 6


@pytest.mark.slow
def test_lm_fits_its_epochs_to_the_budget_on_a_gpu(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=40, threads=1, fit_epochs=True, max_minutes=0.1)
    with emulated_cuda():
        t = LanguageModelTrainer.from_config(cfg, run_id="fit")
        res = t.fit()
    fit = records(t.run.path, "fit_epochs")
    assert len(fit) == 1 and 1 <= fit[0]["epochs"] <= 40 and res["test_ppl"] > 1


@pytest.mark.slow
def test_las_trains_resumes_and_decodes_on_a_gpu(tmp_path, capsys):
    from lstmkit.las.data import Utterance, write_split
    from lstmkit.las.toy import ToyConfig, generate
    toy = ToyConfig(n_train=96, n_val=8, min_chars=3, max_chars=5, seed=3)
    for split in ("train", "val"):
        write_split(tmp_path / "toy" / split, [Utterance(f"{split}-{i}", x, t, s)
                                               for i, (x, t, s) in enumerate(generate(toy, split))])
    cfg = tiny_las_config(tmp_path / "runs", epochs=2, log_every=1, threads=1, n_plots=2, evals_per_epoch=2,
                          device="auto", val_ctc_weight=0.3)
    cfg.data.path, cfg.data.batch_size = str(tmp_path / "toy"), 16
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    cfg.model.key_size = cfg.model.embed_size = 8
    cfg.model.ctc_weight, cfg.model.pyramid_layers = 0.3, 1      # CTC loss and a pyramid on the device
    cfg.optim.ema_decay, cfg.optim.tf_floor, cfg.optim.tf_decay = 0.9, 0.5, 0.5
    with emulated_cuda():
        full = LASTrainer(copy.deepcopy(cfg), run_id="gpu")
        assert next(full.model.parameters()).device.type == "cuda"
        full.fit()
        cut = LASTrainer(copy.deepcopy(cfg), run_id="cut")
        stop_at(cut, 5)
        cut.fit()
        LASTrainer.resume(cut.run.path).fit()
        res = cli_json(capsys, ["las", "decode", full.run.path, tmp_path / "toy" / "val", "--beam", 2], "err")
    assert history(cut.run.path)[:2] == history(full.run.path)[:2]
    assert res["n"] == 8 and 0 <= res["cer"]
    assert len(list((full.run.path / "attention_plots").rglob("*.png"))) >= 2
    cpu = cli_json(capsys, ["las", "decode", full.run.path, tmp_path / "toy" / "val", "--beam", 2, "--device", "cpu"],
                   "err")
    assert cpu["cer"] == pytest.approx(res["cer"])


@pytest.mark.slow
def test_both_models_train_under_cuda_bf16_autocast_with_no_lstm_left_to_its_fp16_rule(tmp_path, capsys):
    """precision "auto" on a GPU with bf16 units is bf16 autocast. Under the emulated autocast
    policy both trainers run (no dtype error anywhere: losses, AR/TAR, averaging, attention, CTC,
    validation, checkpoints, test-time methods), and no LSTM call reaches CUDA autocast's cuDNN rule,
    which would run it in fp16 without loss scaling."""
    import emulated_autocast
    emulated_autocast.EVENTS.clear()
    corpus = make_corpus(tmp_path / "corpus", n_train=600, n_valid=100, n_test=100)
    cfg = tiny_config(corpus, tmp_path / "runs", epochs=1, threads=1, device="auto", precision="auto")
    cfg.optim.average_last = 0.5
    las = tiny_las_config(tmp_path / "runs", epochs=1, threads=1, n_plots=1, device="auto", precision="auto",
                          val_ctc_weight=0.3)
    las.data.toy.n_train, las.data.toy.n_val = 64, 8
    las.model.listener_hidden = las.model.speller_hidden = 16
    las.model.key_size = las.model.embed_size = 8
    las.model.ctc_weight, las.model.pyramid_layers, las.optim.ema_decay = 0.3, 1, 0.9
    with emulated_cuda(amp=True):
        lm = LanguageModelTrainer.from_config(cfg, run_id="lm")
        assert lm.runtime.amp_dtype == torch.bfloat16
        res = lm.fit()
        ev = cli_json(capsys, ["lm", "eval", lm.run.path, "--cache", "--dynamic-eval", "--precision", "bf16",
                               "--n-contexts", 4, "--de-grad-batches", 2])
        t = LASTrainer(las, run_id="las")
        assert t.runtime.amp_dtype == torch.bfloat16
        t.fit()
    assert np.isfinite(res["test_loss"]) and np.isfinite(ev["dynamic_eval"]["ppl"])
    assert all(np.isfinite(r["val_loss"]) for r in records(t.run.path, "valid"))
    assert not [e for e in emulated_autocast.EVENTS if "cudnn_rnn" in e[0]], emulated_autocast.EVENTS

