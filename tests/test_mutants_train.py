"""Tests that kill the mutants of the trainer's maths in scoresde/train.py (``make mutation MODULE=train``;
see mutation/REPORT.md): the learning-rate schedule against its closed form."""
import math
from types import SimpleNamespace

import pytest

from scoresde.train import lr_factor


def schedule(steps, warmup, kind="cosine"):
    return SimpleNamespace(steps=steps, warmup=warmup, lr_schedule=kind)


@pytest.mark.parametrize("steps,warmup", [(1, 0), (2, 1), (3, 1), (7, 2), (30, 5), (30, 0)])
def test_cosine_schedule_closed_form(steps, warmup):
    """(s + 1) / warmup during warmup, then (1 + cos(pi (s - warmup) / (steps - warmup))) / 2, which is 1 right
    after warmup and exactly 0 at s = steps (the factor of the step the scheduler would take next)."""
    t = schedule(steps, warmup)
    for s in range(steps + 1):
        if s < warmup:
            expected = (s + 1) / warmup
        else:
            expected = 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(steps - warmup, 1)))
        assert lr_factor(s, t) == pytest.approx(expected, abs=1e-15), s
    assert lr_factor(steps, t) == pytest.approx(0.0, abs=1e-15)


def test_cosine_schedule_stays_at_zero_past_the_end():
    t = schedule(3, 1)
    assert [lr_factor(s, t) for s in (3, 4, 10)] == pytest.approx([0.0, 0.0, 0.0], abs=1e-15)


def test_constant_schedule():
    t = schedule(10, 4, "constant")
    assert [lr_factor(s, t) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_ema_update_averages_float_buffers_and_copies_integer_ones():
    """EMAUpdate (scoresde.train_fast) on a network with a float and an integer buffer, as
    AveragedModel(use_buffers=True) defines it: the first update copies everything; later ones lerp
    the parameters and floating buffers by 1 - decay, and copy integer buffers (a count cannot be averaged)."""
    import torch
    from torch import nn
    from torch.optim.swa_utils import AveragedModel
    from scoresde.train_fast import EMAUpdate

    net = nn.Linear(2, 2)
    net.register_buffer("scale", torch.tensor([1.0, 2.0]))
    net.register_buffer("count", torch.tensor(3, dtype=torch.long))
    avg = AveragedModel(net, use_buffers=True)
    ema = EMAUpdate(avg, net)
    ema(0.9)  # first update: a copy
    assert ema.count == 1 and int(avg.n_averaged) == 1
    before = {k: v.clone() for k, v in avg.module.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
        net.scale.mul_(3.0)
        net.count.fill_(7)
    ema(0.9)
    now = avg.module.state_dict()
    for name in ("weight", "bias", "scale"):
        want = before[name] + 0.1 * (net.state_dict()[name] - before[name])
        torch.testing.assert_close(now[name], want, rtol=1e-6, atol=1e-7)
    assert now["count"].dtype == torch.long and int(now["count"]) == 7
    assert ema.count == 2 and int(avg.n_averaged) == 2
