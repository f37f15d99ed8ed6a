"""The GPU training path's pieces (issue 18), tested on CPU where their logic is device-independent
and on CUDA when present: flat weight buffer, loss-path choice."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from emulated_cuda import WITH_EMULATED, on
from lstmkit.lm.model import AWDLSTM, AWDLSTMConfig, choose_loss_path
from lstmkit.nn.weight_drop import FlatLayout, WeightDrop

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NO_REAL_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="uses the emulated GPU (tests/emulated_cuda.py)")


def test_flat_layout_views_share_one_buffer_in_any_order_with_gaps():
    ws = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True), torch.randn(2, 2, requires_grad=True)]
    layout = FlatLayout(offsets=(10, 0, 5), total=26)         # out of order, gaps at 9 and 22..25
    views = layout.build(ws)
    base = views[0].untyped_storage()
    assert all(v.untyped_storage().data_ptr() == base.data_ptr() for v in views)
    assert base.nbytes() // 4 == 26
    assert [v.storage_offset() for v in views] == [10, 0, 5]
    for v, w in zip(views, ws):
        assert v.shape == w.shape and torch.equal(v, w) and v.is_contiguous()
    sum((k + 1) * v.sum() for k, v in enumerate(views)).backward()
    for k, w in enumerate(ws):                               # gradients reach the source weights
        assert torch.equal(w.grad, torch.full_like(w, k + 1.0))


def test_flat_layout_refuses_overlaps_and_short_buffers():
    ws = [torch.zeros(4), torch.zeros(4)]
    with pytest.raises(ValueError, match="overlaps"):
        FlatLayout((0, 2), 8).build(ws)
    with pytest.raises(ValueError, match="buffer has"):
        FlatLayout((0, 4), 6).build(ws)


def test_flat_layout_casts_to_the_autocast_dtype():
    w = [torch.randn(3, 3, requires_grad=True)]
    (v,) = FlatLayout.packed(w).build(w, torch.bfloat16)
    assert v.dtype == torch.bfloat16 and torch.equal(v, w[0].detach().bfloat16())
    v.float().sum().backward()
    assert w[0].grad.dtype == torch.float32


def test_flat_layout_reads_the_layout_of_views():
    buf = torch.zeros(20)
    views = [buf[4:10].view(2, 3), buf[0:4]]
    assert FlatLayout.of_views(views) == FlatLayout((4, 0), 20)
    with pytest.raises(ValueError):
        FlatLayout.of_views([torch.zeros(3), torch.zeros(3)])


def test_flat_buffer_is_used_on_cuda_only_by_default():
    wd = WeightDrop(nn.LSTM(3, 4), 0.5)
    assert not wd.use_flat_buffer(torch.device("cpu")) and wd.use_flat_buffer(torch.device("cuda"))
    assert WeightDrop(nn.LSTM(3, 4), 0.5, "always").use_flat_buffer(torch.device("cpu"))
    assert not WeightDrop(nn.LSTM(3, 4), 0.5, "never").use_flat_buffer(torch.device("cuda"))
    with pytest.raises(ValueError, match="flat"):
        WeightDrop(nn.LSTM(3, 4), 0.5, "sometimes")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, False), (1, True)])
def test_weight_drop_flat_buffer_equals_the_weight_list(device, layers, bidir):
    """Same mask, same outputs, same gradients whether the weights go as a list or a flat buffer;
    on CUDA cuDNN takes the buffer without its 'not part of single contiguous chunk' copy."""
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, num_layers=layers, bidirectional=bidir, batch_first=True).to(device)
    a, b = WeightDrop(lstm, 0.5, "never"), WeightDrop(lstm, 0.5, "always")
    x = torch.randn(3, 7, 6, device=device)
    results = []
    for wd in (a, b):
        lstm.zero_grad()
        torch.manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter("error" if wd is b else "ignore")
            out, (h, c) = wd(x)
        (out.square().sum() + h.sum() + c.sum()).backward()
        results.append((out.detach(), h.detach(), [p.grad.clone() for p in lstm.parameters()]))
    (oa, ha, ga), (ob, hb, gb) = results
    tol = dict(rtol=1e-5, atol=1e-6)
    assert torch.allclose(oa, ob, **tol) and torch.allclose(ha, hb, **tol)
    assert all(torch.allclose(p, q, **tol) for p, q in zip(ga, gb))


@pytest.mark.parametrize("device", DEVICES)
def test_awd_lstm_trains_identically_with_and_without_the_flat_buffer(device):
    cfg = dict(vocab_size=40, emb_size=6, hidden_size=10, num_layers=3)
    x, y = torch.randint(0, 40, (4, 9), device=device), torch.randint(0, 40, (4, 9), device=device)
    losses = []
    for flat in ("never", "always"):
        torch.manual_seed(0)
        m = AWDLSTM(AWDLSTMConfig(**cfg, flat_weights=flat)).to(device).train()
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        run = []
        for _ in range(3):
            dropped, raw, _ = m.features(x)
            loss = m.loss(dropped, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(float(loss.detach()))
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_loss_path_is_chosen_for_the_device_and_both_give_the_same_loss():
    cfg = AWDLSTMConfig(vocab_size=50, emb_size=8, hidden_size=12, num_layers=2, loss_chunk=7)
    assert choose_loss_path(cfg, torch.device("cpu")) == "chunked"
    assert choose_loss_path(cfg, torch.device("cuda")) == "plain"
    cfg.loss_path = "chunked"
    assert choose_loss_path(cfg, torch.device("cuda")) == "chunked"
    cfg.loss_path = "plain"
    assert choose_loss_path(cfg, torch.device("cpu")) == "plain"
    torch.manual_seed(0)
    m = AWDLSTM(cfg).eval()
    h, y = torch.randn(3, 5, 8), torch.randint(0, 50, (3, 5))
    got = {}
    for path in ("chunked", "plain"):
        m.config.loss_path = path
        m.zero_grad()
        loss = m.loss(h, y)
        loss.backward()
        got[path] = (float(loss.detach()), m.decoder.weight.grad.clone())
    assert got["chunked"][0] == pytest.approx(got["plain"][0], rel=1e-6)
    assert torch.allclose(got["chunked"][1], got["plain"][1], atol=1e-6)


# ---------------------------------------------------------------- the step without host synchronisation
from conftest import HostReads  # noqa: E402
from lstmkit.core.device import Runtime  # noqa: E402
from lstmkit.core.train import device_step, train_step  # noqa: E402
from lstmkit.lm.optim import NTASGD, AdamWrapper  # noqa: E402


def tiny_problem(device, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 1)).to(device)
    x, y = torch.randn(16, 5, device=device), torch.randn(16, 1, device=device)
    return model, (lambda: ((model(x) - y) ** 2).mean())


def NoHostReads() -> HostReads:
    """Every tensor -> Python conversion raises inside the block (what a host sync would need)."""
    return HostReads(refuse=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt_cls", [NTASGD, AdamWrapper])
def test_device_step_reads_nothing_back_and_equals_the_host_step(device, opt_cls):
    rt = Runtime(torch.device(device), None)
    results = []
    for deferred in (False, True):
        model, loss_fn = tiny_problem(device)
        opt = opt_cls(model.parameters(), lr=0.1, weight_decay=0.01)
        for k in range(6):
            if k == 3:
                opt.start_averaging()
            if deferred:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    with NoHostReads():
                        res = device_step(loss_fn, opt, model.parameters(), 0.5, rt)
                finally:
                    if device == "cuda":
                        torch.cuda.set_sync_debug_mode("default")
                assert bool(res.ok)
            else:
                train_step(loss_fn, opt, model.parameters(), 0.5, rt)
        with opt.averaged():
            averaged = [p.detach().clone() for p in model.parameters()]
        results.append(([p.detach().clone() for p in model.parameters()], averaged, opt.n_avg))
    (p0, a0, n0), (p1, a1, n1) = results
    assert n0 == n1 == 3
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(p0, p1))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(a0, a1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt_cls", [NTASGD, AdamWrapper])
def test_a_nonfinite_device_step_changes_nothing(device, opt_cls):
    rt = Runtime(torch.device(device), None)
    model, loss_fn = tiny_problem(device)
    opt = opt_cls(model.parameters(), lr=0.1, weight_decay=0.01)
    device_step(loss_fn, opt, model.parameters(), 0.5, rt)
    opt.start_averaging()
    device_step(loss_fn, opt, model.parameters(), 0.5, rt)
    before = [p.detach().clone() for p in model.parameters()]
    avg_before = [a.clone() for a in opt.avg]
    inner_before = {k: v.clone() if torch.is_tensor(v) else v
                    for st in opt.inner.state.values() for k, v in st.items() if torch.is_tensor(v)}
    res = device_step(lambda: loss_fn() * float("nan"), opt, model.parameters(), 0.5, rt)
    assert not bool(res.ok)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(avg_before, opt.avg)) and opt.n_avg == 1
    after = {k: v for st in opt.inner.state.values() for k, v in st.items() if torch.is_tensor(v)}
    assert all(torch.equal(inner_before[k], after[k]) for k in inner_before)     # moments, step count
    res = device_step(loss_fn, opt, model.parameters(), 0.5, rt)                    # and it goes on normally
    assert bool(res.ok) and opt.n_avg == 2


@pytest.mark.parametrize("device", DEVICES)
def test_device_step_with_an_unfused_optimizer_reads_ok_on_the_host_and_still_skips(device):
    """An optimizer without fused kernels (another device's, or fused=False) cannot skip on the
    device: device_step then reads ``ok`` on the host and equals train_step, skip included."""
    rt = Runtime(torch.device(device), None)
    runs = []
    for fn in (train_step, device_step):
        model, loss_fn = tiny_problem(device)
        opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=False)
        fn(loss_fn, opt, model.parameters(), 0.5, rt)
        before = [p.detach().clone() for p in model.parameters()]
        fn(lambda: loss_fn() * float("inf"), opt, model.parameters(), 0.5, rt)          # skipped
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert all(int(st["step"]) == 1 for st in opt.state.values())
        fn(loss_fn, opt, model.parameters(), 0.5, rt)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_ranks_agree_on_skipping_a_step_nonfinite_on_one_rank_only(tmp_path):
    """Distributed training: a loss that is non-finite on one rank skips the step on every rank
    (device_step(agree=True) takes the minimum of the ranks' ok), so the replicas stay equal."""
    import subprocess
    import sys
    script = tmp_path / "agree.py"
    script.write_text(AGREE_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    got = [(tmp_path / f"rank{k}.txt").read_text().split() for k in (0, 1)]
    assert got[0] == got[1] == ["False", "True", "1.0"], got     # both skipped, then both stepped


AGREE_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from torch import nn
from lstmkit.core.device import Runtime
from lstmkit.core.train import device_step
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
before = model.weight.detach().clone()
x = torch.ones(4, 3)
def loss():                      # the loss of rank 1 alone is inf; its gradient stays finite (no backward through inf)
    out = (model(x) ** 2).mean()
    return out + (float("inf") if rank == 1 else 0.0)
r1 = device_step(loss, opt, model.parameters(), 0.0, Runtime(torch.device("cpu"), None), agree=True)
skipped = bool(torch.equal(before, model.weight))
r2 = device_step(lambda: (model(x) ** 2).mean(), opt, model.parameters(), 0.0, Runtime(torch.device("cpu"), None), agree=True)
moved = not torch.equal(before, model.weight)
w = model.weight.detach().sum().reshape(1); ws = [torch.zeros(1), torch.zeros(1)]
dist.all_gather(ws, w)
open(f"{sys.argv[1]}/rank{rank}.txt", "w").write(f"{bool(r1.ok)} {bool(r2.ok)} {float(ws[0] == ws[1])}" if skipped and moved else "moved-on-inf")
dist.barrier()
os._exit(0)       # skip gloo's teardown, which can abort ("terminate called without an active exception")
"""


def test_forced_bf16_on_a_cpu_whose_lstm_kernel_lacks_it_is_one_clear_error():
    """On CPUs without AVX-512/AMX, oneDNN cannot build a bf16 LSTM: ``precision = "bf16"`` used to
    crash at the first forward with oneDNN's message; now it is refused up front, and "auto" never
    picks it there. Where the kernel has bf16, the probe says so and the LSTM runs."""
    from lstmkit.core.device import cpu_bf16_lstm_works, pick_runtime
    from lstmkit.errors import InputError
    works = cpu_bf16_lstm_works()
    lstm = nn.LSTM(4, 4)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(2, 3, 4))
        ran = True
    except RuntimeError:
        ran = False
    assert works == ran                                     # the probe tells the truth
    if works:
        assert pick_runtime("cpu", "bf16").amp_dtype == torch.bfloat16
    else:
        with pytest.raises(InputError, match=r"--precision: 'bf16', but this CPU's LSTM kernel"):
            pick_runtime("cpu", "bf16", where="--precision")
        assert pick_runtime("cpu", "auto").amp_dtype is None


def test_to_device_copies_a_window_of_the_rows():
    from lstmkit.core.device import to_device
    rows = torch.arange(8 * 50).view(8, 50)
    x = rows[:, 10:31]                                   # a BPTT window: a non-contiguous view
    for dev in DEVICES:
        y = to_device(x, dev)
        assert y.device.type == dev and torch.equal(y.cpu(), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_batch_reaches_the_gpu_without_a_host_sync():
    """The trainers' batches go through to_device: a plain .to("cuda") copies and then waits for the
    stream (every kernel of the previous step), which CUDA's sync debug mode reports."""
    from lstmkit.core.device import to_device
    rows = torch.arange(80 * 1000).view(80, 1000)
    x = rows[:, 10:80]
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = to_device(x, "cuda")
        with pytest.raises(RuntimeError):
            x.to("cuda")                                 # the form the trainers used: a sync
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(y.cpu(), x)


def test_las_reads_its_losses_back_in_batches_with_the_same_numbers(tmp_path, monkeypatch):
    """The LAS trainer keeps each step's loss on the device and reads them at sync points; every
    validation's train loss and CE, and the weights, equal reading after every step."""
    import json

    import lstmkit.las.trainer as lt
    from test_las import tiny_las_config
    out, real = [], lt.read_steps
    for every in (1, 7):
        monkeypatch.setattr(lt, "SETTLE_EVERY", every)
        reads = []
        monkeypatch.setattr(lt, "read_steps", lambda p, d, reads=reads: reads.append(len(p)) or real(p, d))
        cfg = tiny_las_config(tmp_path / f"runs{every}", epochs=2, threads=1, precision="fp32", n_plots=0,
                              evals_per_epoch=2)
        cfg.data.toy.n_train, cfg.data.toy.n_val = 320, 8
        cfg.model.listener_hidden = cfg.model.speller_hidden = 16
        t = lt.LASTrainer(cfg, run_id="r")
        t.fit()
        lines = (tmp_path / f"runs{every}" / "r" / "metrics.jsonl").read_text().splitlines()
        valid = [(r["step"], r["train_loss"], r["train_ce"], r["val_loss"]) for r in map(json.loads, lines)
                 if r["type"] == "valid"]
        out.append((valid, [p.detach().clone() for p in t.model.parameters()], reads))
    (v1, w1, r1), (v7, w7, r7) = out
    assert len(v1) == 4 and v1 == v7
    assert all(torch.equal(a, b) for a, b in zip(w1, w7))
    assert sum(r1) == sum(r7) == 20 and max(r1) == 1 and max(r7) > 1    # every step read once, fewer reads


class Unguarded:
    """Call ``fn`` with host reads allowed again (the trainers' sync points: reading the losses)."""

    def __init__(self, guard: HostReads, device: str, fn):
        self.guard, self.device, self.fn = guard, device, fn

    def __call__(self, *a, **k):
        self.guard.__exit__()
        if self.device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        try:
            return self.fn(*a, **k)
        finally:
            if self.device == "cuda":
                torch.cuda.set_sync_debug_mode("error")
            self.guard.__enter__()


def train_without_host_reads(trainer, device, run_epoch):
    """Run one training epoch with every tensor -> Python read refused (and, on CUDA, every
    synchronising call an error) except inside the trainer's read of the pending losses."""
    guard = NoHostReads()
    trainer._settle = Unguarded(guard, device, trainer._settle)
    guard.__enter__()
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        run_epoch()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        guard.__exit__()


@pytest.mark.parametrize("device, softmax", [(d, "full") for d in WITH_EMULATED] +
                         [(d, "adaptive") for d in WITH_EMULATED if d != "cpu"])
def test_lm_training_steps_read_nothing_back_between_sync_points(tmp_path, device, softmax):
    """The whole LM step - batch to the device, dropout masks, WeightDrop, loss (full or adaptive
    softmax), AR/TAR, clipping, the finiteness guard, NT-ASGD - runs without a host read; only the
    trainer's read of the pending losses (at log points and the epoch's end) does one. (On a CPU the
    adaptive softmax checks the target ids and sizes its clusters on the host: no sync there.)"""
    from conftest import make_corpus, tiny_config
    from lstmkit.lm import LanguageModelTrainer
    device, context = on(device)
    corpus = make_corpus(tmp_path / "corpus", n_train=600, n_valid=100, n_test=100)    # ~50 steps
    cfg = tiny_config(corpus, tmp_path / "runs", log_every=1000, evals_per_epoch=1, device=device)
    if softmax == "adaptive":
        cfg.model.softmax, cfg.model.adaptive_cutoffs, cfg.model.adaptive_div = "adaptive", [10, 40], 2.0
    with context:
        t = LanguageModelTrainer.from_config(cfg, run_id="r")
        t.opt.start_averaging()                   # the averaging update runs inside the step too
        train_without_host_reads(t, device, t.train)
    assert t.step > 20 and t.epoch_loss[1] == 0 and math.isfinite(t.train_losses[-1])


@pytest.mark.parametrize("device", WITH_EMULATED)
def test_las_training_steps_read_nothing_back_between_sync_points(tmp_path, monkeypatch, device):
    """The LAS step likewise, without the CTC head (PyTorch's CUDA ctc_loss copies its length
    tables with blocking copies, documented in docs/gpu.md)."""
    import lstmkit.las.trainer as lt
    from test_las import tiny_las_config
    monkeypatch.setattr(lt, "SETTLE_EVERY", 10 ** 6)
    device, context = on(device)
    cfg = tiny_las_config(tmp_path / "runs", epochs=1, precision="fp32", n_plots=0, device=device)
    cfg.data.toy.n_train, cfg.data.toy.n_val = 96, 8
    cfg.model.listener_hidden = cfg.model.speller_hidden = 16
    cfg.model.ctc_weight = 0.0
    cfg.optim.tf_floor, cfg.optim.tf_start = 0.5, 0.5          # the sampling of own predictions too
    with context:
        t = lt.LASTrainer(cfg, run_id="r")
        train_without_host_reads(t, device, t.train_epoch)
    assert t.step == 3 and t.epoch == 1 and math.isfinite(t.last_train_ce)


@pytest.mark.parametrize("ctc", [0.0, 0.5])
def test_greedy_decoding_that_checks_for_the_end_every_8_steps_gives_the_same_output(monkeypatch, ctc):
    """On a GPU greedy decoding reads "all stopped" every 8 steps (lstmkit.las.decode.done_check_every)
    and trims the steps it ran past the end: the same ids and attentions as checking every step."""
    import lstmkit.las.decode as dec
    from lstmkit.las.model import LAS, LASConfig
    torch.manual_seed(0)
    m = LAS(LASConfig(vocab_size=9, listener_hidden=16, key_size=8, embed_size=8, speller_hidden=16,
                      ctc_weight=ctc)).eval()
    x, lens = torch.randn(3, 30, 40), torch.tensor([30, 22, 17])
    for eos_bias in (0.0, 8.0):            # runs to the length caps / stops within a few steps
        with torch.no_grad():
            m.speller.out.bias[2] = eos_bias
        out = []
        for every in (1, 8):
            monkeypatch.setattr(dec, "done_check_every", lambda device, every=every: every)
            with torch.no_grad():
                out.append(dec.greedy_decode(m, x, lens, 1, 2, ctc_weight=ctc))
        (i1, a1), (i8, a8) = out
        assert torch.equal(i1, i8) and torch.equal(a1, a8), (eos_bias, i1.shape, i8.shape)
        if eos_bias:                       # stopped before the longest cap (30), between two checks: trimmed
            assert i1.size(1) < 30 and i1.size(1) % 8, i1.size(1)


@pytest.mark.parametrize("device", DEVICES)
def test_random_states_restore_exactly_from_a_checkpoint_loaded_onto_the_device(tmp_path, device):
    """The trainers load ``last`` with ``map_location`` = their device (resume, rewind), which puts
    the saved random states on the GPU; ``torch.set_rng_state`` and numpy take host data only. The
    stand-in tensor of conftest.on_elsewhere makes the GPU case fail on a CPU too."""
    import random

    import numpy as np

    from conftest import on_elsewhere
    from lstmkit.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    def draws():
        return torch.rand(4).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(2)]

    save_checkpoint(tmp_path, "last", "000000001", {"w": torch.zeros(2)}, {"rng": rng_state()}, {"step": 1})
    expected = draws()
    _, extra, _ = load_checkpoint(tmp_path, "last", device)
    assert extra["rng"]["torch"].device.type == device          # what map_location does
    for st in (extra["rng"], on_elsewhere(extra["rng"])):
        draws()                                                 # move every generator on
        set_rng_state(st)
        assert draws() == expected


@NO_REAL_GPU
def test_the_gpu_random_state_is_the_run_device_s_in_old_and_new_checkpoints():
    """Only the training GPU's generator is saved, and it goes back to the run's device: a list of
    every visible GPU's states (older checkpoints) restored on a machine with fewer GPUs failed with
    an IndexError, and under torchrun it held rank 0's unused generators for the other ranks."""
    import emulated_cuda as emu
    from lstmkit.core.checkpoint import rng_state, set_rng_state
    s0, s1, s2 = (torch.full((16,), v, dtype=torch.uint8) for v in (1, 2, 3))
    with emu.emulated_cuda():
        emu.CUDA_RNG[0] = s1.clone()
        st = rng_state("cuda")
        assert "cuda" not in st and torch.equal(st["cuda_device"], s1)
        assert "cuda_device" not in rng_state("cpu")
        emu.CUDA_RNG[0] = s0.clone()
        set_rng_state({**st, "cuda_device": st["cuda_device"].to("cuda")}, "cuda")   # as loaded onto the GPU
        assert torch.equal(emu.CUDA_RNG[0], s1)
        set_rng_state({**st, "cuda_device": None, "cuda": [s2, s0, s1]}, "cuda:0")    # saved on three GPUs
        assert torch.equal(emu.CUDA_RNG[0], s2)
        set_rng_state(st, "cpu")                                                     # a GPU run resumed on a CPU
        assert torch.equal(emu.CUDA_RNG[0], s2)


def test_bf16_autocast_means_gpus_with_bf16_units_and_asks_the_run_s_gpu(monkeypatch):
    from lstmkit.core.device import cuda_has_fast_bf16
    asked = []

    def capability(device=None):
        asked.append(device)
        return {0: (7, 0), 1: (9, 0)}[torch.device(device).index or 0]
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert not cuda_has_fast_bf16(torch.device("cuda:0"))      # V100: bf16 only emulated, slower than fp32
    assert cuda_has_fast_bf16(torch.device("cuda:1")) and asked == [torch.device("cuda:0"), torch.device("cuda:1")]


@NO_REAL_GPU
@pytest.mark.parametrize("flat", ["auto", "never"])
def test_lstms_under_cuda_autocast_run_in_its_dtype_not_in_fp16(monkeypatch, flat):
    """CUDA autocast gives cuDNN RNNs fp16 whatever dtype autocast was asked for (PyTorch's
    AutocastRNN.cpp); the AWD-LSTM layers and the LAS listener hand the kernel bf16 themselves, with
    autocast off. Emulated: CUDA autocast switched on in bf16, the kernel call recorded."""
    from emulated_cuda import emulated_cuda
    from lstmkit.las.model import BiLSTM
    seen = []
    real = torch.lstm

    def spy(x, hx, params, *args):
        seen.append({x.dtype, hx[0].dtype, hx[1].dtype} | {w.dtype for w in params})
        f32 = (lambda t: t.float())
        out, h, c = real(f32(x), (f32(hx[0]), f32(hx[1])), [f32(w) for w in params], *args)
        return out.to(x.dtype), h.to(x.dtype), c.to(x.dtype)
    old = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    with emulated_cuda():
        monkeypatch.setattr(torch, "lstm", spy)
        monkeypatch.setattr(torch._VF, "lstm", spy, raising=False)      # what nn.LSTM calls
        torch.set_autocast_enabled("cuda", True)     # the flag alone (the emulated tensors are CPU ones
        torch.set_autocast_dtype("cuda", torch.bfloat16)        # underneath: CUDA autocast casts nothing)
        try:
            wd = WeightDrop(nn.LSTM(4, 6, batch_first=True), 0.5, flat).to("cuda")
            out, (h, c) = wd(torch.randn(2, 5, 4, device="cuda"))
            bi = BiLSTM(4, 3).to("cuda")
            y = bi(torch.randn(2, 5, 4, device="cuda"), torch.tensor([5, 3], device="cuda"))
        finally:
            torch.set_autocast_enabled("cuda", old[0])
            torch.set_autocast_dtype("cuda", old[1])
    assert len(seen) == 3 and all(s == {torch.bfloat16} for s in seen), seen
    assert h.dtype == c.dtype == torch.float32 and y.shape == (2, 5, 6)   # states back in the caller's dtype
