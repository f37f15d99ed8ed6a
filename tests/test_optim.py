import torch

from lstmkit.lm.optim import NTASGD, activation_regularization, should_switch_to_asgd, temporal_activation_regularization


def test_ntasgd_trigger_on_scripted_losses():
    losses = [6.0, 5.5, 5.2, 5.1, 5.05, 5.04, 5.03, 5.02, 5.01]
    fired = [should_switch_to_asgd(losses[: i + 1], nonmono=5) for i in range(len(losses))]
    assert not any(fired)                                   # still improving: never switch
    stalled = [6.0, 5.5, 5.2, 5.3, 5.25, 5.22, 5.21, 5.23, 5.24]
    fired = [should_switch_to_asgd(stalled[: i + 1], nonmono=5) for i in range(len(stalled))]
    # index 8: 5.24 is worse than the best before the last five earlier checks, min(stalled[:3]) = 5.2;
    # index 7: 5.23 is compared with min(stalled[:2]) = 5.5 only, so no switch yet
    assert fired == [False] * 8 + [True]


def algorithm1_switch(curve, n):
    """Algorithm 1 of Merity et al. 2017, written out: logs, t; at each check with T = 0, compute v;
    if t > n and v > min(logs[0 .. t-n-1]) then T <- k; append v to logs; t <- t + 1.
    Returns the index of the check at which T is set (None if never)."""
    logs, t = [], 0
    for k, v in enumerate(curve):
        if t > n and v > min(logs[l] for l in range(0, t - n)):
            return k
        logs.append(v)
        t += 1
    return None


def test_ntasgd_trigger_is_algorithm_1_on_random_curves():
    import numpy as np
    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(1, 7))
        length = int(rng.integers(1, 30))
        curve = list(5.0 - np.cumsum(rng.normal(0.02, 0.05, size=length)))    # noisy, mostly falling
        want = algorithm1_switch(curve, n)
        opt = NTASGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, nonmono=n)
        got = next((k for k in range(length) if opt.check(curve[: k + 1])), None)
        assert got == want, (trial, n, curve)


def test_ntasgd_averages_iterates_after_switch():
    p = torch.nn.Parameter(torch.tensor([0.0]))
    opt = NTASGD([p], lr=1.0, nonmono=1)
    assert opt.check([1.0]) is False and opt.check([1.0, 2.0]) is False   # one earlier check: not enough
    assert opt.check([1.0, 0.5, 2.0]) is True and opt.averaging
    values = []
    for g in (1.0, 2.0, 3.0):
        p.grad = torch.tensor([-g])
        opt.step()
        values.append(float(p.detach()))
    with opt.averaged():
        assert abs(float(p.detach()) - sum(values) / 3) < 1e-6
    assert float(p.detach()) == values[-1]                           # raw weights restored


def test_ar_tar_values():
    h = torch.tensor([[[1.0, 1.0], [3.0, 1.0]]])            # (N=1, T=2, H=2)
    assert float(activation_regularization(h, 2.0)) == 2.0 * (1 + 1 + 9 + 1) / 4
    assert float(temporal_activation_regularization(h, 1.0)) == (4 + 0) / 2


def test_warmup_and_cosine_schedule_follow_sgdr():
    import math
    from lstmkit.lm.optim import lr_multiplier
    total, warm, lo = 100, 10, 0.1
    for step in range(1, total + 1):
        if step <= warm:
            want = step / warm
        else:   # SGDR eq. 5: eta_min + 1/2 (eta_max - eta_min)(1 + cos(pi T_cur / T_i)), eta_max = 1, eta_min = lo
            want = lo + 0.5 * (1 - lo) * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert abs(lr_multiplier(step, total, warm, "cosine", lo) - want) < 1e-12
    assert lr_multiplier(500, total, warm, "cosine", lo) == lo                   # past the end: stays at the floor
    assert [lr_multiplier(s, total, 0, "constant") for s in (1, 50)] == [1.0, 1.0]


def test_adamw_with_warmup_and_cosine_trains(small_corpus, tmp_path):
    import json
    from conftest import tiny_config
    from lstmkit.lm import LanguageModelTrainer
    cfg = tiny_config(small_corpus, tmp_path / "runs", epochs=1, log_every=1)
    cfg.optim.optimizer, cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_steps = "adamw", 3e-3, "cosine", 10
    cfg.data.variable_bptt = False
    t = LanguageModelTrainer.from_config(cfg, run_id="r")
    t.fit()
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines())
           if r["type"] == "train"]
    assert abs(lrs[0] - 3e-4) < 1e-12 and abs(lrs[9] - 3e-3) < 1e-12 and lrs[-1] < 0.2 * 3e-3
    assert isinstance(t.opt.inner, torch.optim.AdamW)
