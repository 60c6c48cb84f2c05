"""Tests that kill the mutants of scoresde/sampling/grids.py that the other grid tests let through
(``make mutation MODULE=sampling_grids``; see mutation/REPORT.md): the quadratic schedule's
formula, the documented defaults, explicit schedules given as lists or float32 tensors, the
shortest grids, and the exact error messages."""
import re

import pytest
import torch

import scoresde as sd
from scoresde.sampling.grids import make_grid, time_grid

F64 = torch.float64


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=["vp", "ve"])
def test_quadratic_schedule_is_its_formula(sde):
    """t_k = eps + (T - eps)(1 - k/n)^2: dense near eps, as in DDIM's quadratic skip."""
    n, eps = 7, 1e-3
    u = torch.arange(n + 1, dtype=F64) / n
    torch.testing.assert_close(time_grid(sde, n, eps, "quadratic"), eps + (sde.T - eps) * (1 - u) ** 2,
                               rtol=1e-15, atol=1e-15)


def test_documented_defaults():
    sde = sd.VPSDE()
    torch.testing.assert_close(time_grid(sde), time_grid(sde, 100, 1e-3, "uniform"), rtol=0, atol=0)
    a, b = make_grid(sde, 10), make_grid(sde, 10, 1e-3, "uniform")
    assert a.t[-1].item() == 1e-3
    for x, y in zip((a.t, a.alpha, a.sigma), (b.t, b.alpha, b.sigma)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_explicit_schedule_as_a_list_or_float32_tensor_becomes_float64():
    sde = sd.VPSDE()
    times = [1.0, 0.3, 0.001]
    exact = torch.tensor(times, dtype=F64)
    for given in (times, torch.tensor(times, dtype=F64)):
        t = time_grid(sde, schedule=given)
        assert t.dtype == F64 and torch.equal(t, exact)
    t32 = time_grid(sde, schedule=torch.tensor(times, dtype=torch.float32))
    assert t32.dtype == F64 and torch.equal(t32, torch.tensor(times, dtype=torch.float32).double())


def test_shortest_grids_are_accepted():
    """An explicit schedule of 2 times (one step) and a single chain index are valid grids."""
    sde = sd.VPSDE()
    assert make_grid(sde, schedule=torch.tensor([1.0, 0.5], dtype=F64)).steps == 1
    g = make_grid(sde, timesteps=[999])
    assert g.steps == 0 and g.t.tolist() == [1.0]


def test_chain_times_use_T_over_N_minus_1():
    sde = sd.VESDE(N=11)
    g = make_grid(sde, timesteps=[10, 5, 2], eps=1e-6)
    torch.testing.assert_close(g.t, torch.tensor([1.0, 0.5, 0.2], dtype=F64), rtol=1e-15, atol=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(schedule=torch.tensor([0.5, 1.0])), "an explicit schedule must be strictly decreasing (from T down to eps)"),
    (dict(schedule=[object()]), "schedule must be one of ('uniform', 'logsnr', 'quadratic', 'karras') or a "
                                "descending 1-D tensor of times, got [<object"),
    (dict(timesteps=[1000, 5]), "timesteps must lie in [0, N-1] = [0, 999], got [5, 1000]"),
    (dict(timesteps=[5, 7]), "timesteps must be strictly decreasing (noisiest index first)"),
    (dict(timesteps="abc"), "timesteps must be a descending sequence of integers in [0, N-1], got 'abc'"),
])
def test_error_messages(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        make_grid(sd.VPSDE(), 4, **kwargs)
