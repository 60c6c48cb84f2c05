"""FLOP counting for gpu_speed.py: torch.utils.flop_counter.FlopCounterMode around one real forward +
backward (or one forward), and a check of the counter against a count by hand. Counted are the
matmul, convolution and attention FLOPs; elementwise ops count zero."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def train_step_flops(loss_fn: Callable[[], torch.Tensor], params=()) -> int:
    """FLOPs of one forward + backward: ``loss_fn()`` and its ``backward()`` run under
    FlopCounterMode (matmuls, convolutions, attention; elementwise ops count zero). The gradients
    it leaves on ``params`` are cleared."""
    with FlopCounterMode(display=False) as counter:
        loss = loss_fn()
        loss.backward()
    for p in params:
        p.grad = None
    return int(counter.get_total_flops())


def forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` (a forward pass) under FlopCounterMode, without autograd."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def linear_flop_check(batch: int = 16, d_in: int = 32, hidden: int = 64, d_out: int = 8) -> dict:
    """The counter against a count by hand on Linear(d_in, hidden) -> ReLU -> Linear(hidden, d_out),
    loss = mean of squares, input without grad: forward 2B(in h + h out); backward: the second layer
    its input and weight gradients (2 x 2B h out), the first only its weight gradient (2B in h), as
    the input needs none. By hand 4B in h + 6B h out (3x the forward would give 6B in h + 6B h out)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
    x = torch.randn(batch, d_in)
    counted = train_step_flops(lambda: net(x).square().mean(), net.parameters())
    by_hand = 4 * batch * d_in * hidden + 6 * batch * hidden * d_out
    return {"net": f"Linear({d_in},{hidden})-ReLU-Linear({hidden},{d_out})", "batch": batch, "d_in": d_in,
            "hidden": hidden, "d_out": d_out, "counted": counted, "by_hand": by_hand, "equal": counted == by_hand}
