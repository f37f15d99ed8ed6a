import torch

from lstmkit.lm.optim import NTASGD, activation_regularization, should_switch_to_asgd, temporal_activation_regularization


def test_ntasgd_trigger_on_scripted_losses():
    losses = [6.0, 5.5, 5.2, 5.1, 5.05, 5.04, 5.03, 5.02, 5.01]
    fired = [should_switch_to_asgd(losses[: i + 1], nonmono=5) for i in range(len(losses))]
    assert not any(fired)                                   # still improving: never switch
    stalled = [6.0, 5.5, 5.2, 5.3, 5.25, 5.22, 5.21, 5.23]
    fired = [should_switch_to_asgd(stalled[: i + 1], nonmono=5) for i in range(len(stalled))]
    # index 7: 5.23 is worse than the best before the last five checks, min(stalled[:3]) = 5.2;
    # index 6: 5.21 is compared with min(stalled[:2]) = 5.5 only, so no switch yet
    assert fired == [False] * 7 + [True]


def test_ntasgd_averages_iterates_after_switch():
    p = torch.nn.Parameter(torch.tensor([0.0]))
    opt = NTASGD([p], lr=1.0, nonmono=1)
    assert opt.check([1.0]) is False
    assert opt.check([1.0, 2.0]) is True and opt.averaging
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
