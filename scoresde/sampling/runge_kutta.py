"""Explicit Runge–Kutta steps over a fixed time grid, for the probability-flow ODE's fixed-step
methods (``probability_flow``, ``log_likelihood``).

For dy/dt = F(t, y) and a step from t_k to t_{k+1} (h = t_{k+1} - t_k, negative when integrating
backwards in time), an s-stage explicit scheme with tableau (c, A, b) computes

    K_i = F(t_k + c_i h, y_k + h sum_{j<i} a_ij K_j),    y_{k+1} = y_k + h sum_i b_i K_i.

The tableaux are torchdiffeq's fixed-grid ones under the same names ("heun" is its "heun2", "rk4"
Kutta's 3/8 rule), so a fixed-step run here is what ``torchdiffeq.odeint`` computes on the same grid,
up to float rounding. The loop is written here rather than run through torchdiffeq because
torchdiffeq's fixed-grid loop compares its current time with the output times on the device once per
step (a host synchronisation on a GPU); here every stage time is computed once, in float64 on the
host, and copied to the device once, and the loop never reads the device. Adaptive methods stay
with torchdiffeq (their step-size control reads the error estimate on the host by nature).
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Tuple

import torch
from torch import Tensor


class Tableau(NamedTuple):
    c: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]  # row i holds a_i0 .. a_i(i-1)
    b: Tuple[float, ...]


TABLEAUX: Dict[str, Tableau] = {
    "euler": Tableau((0.0,), ((),), (1.0,)),
    "midpoint": Tableau((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "heun": Tableau((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "heun3": Tableau((0.0, 1 / 3, 2 / 3), ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    "rk4": Tableau((0.0, 1 / 3, 2 / 3, 1.0), ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
                   (0.125, 0.375, 0.375, 0.125)),
}
#: score evaluations per step
STAGES = {name: len(tab.c) for name, tab in TABLEAUX.items()}


def stage_times(grid: Tensor, tableau: Tableau) -> Tensor:
    """(steps, stages) float64 times t_k + c_i h_k; a stage with c_i = 1 takes t_{k+1} itself."""
    t0, t1 = grid[:-1, None], grid[1:, None]
    c = torch.tensor(tableau.c, dtype=torch.float64)
    return torch.where(c == 1, t1, t0 + c * (t1 - t0))


def fixed_grid_odeint(rhs: Callable[[Tensor, Tensor], Tensor], y0: Tensor, grid: Tensor, method: str) -> Tensor:
    """y at grid[-1] for dy/dt = rhs(t, y), y(grid[0]) = y0, stepping from grid point to grid point
    with the tableau ``method`` (a key of ``TABLEAUX``). ``grid``: a 1-D float64 tensor on the CPU,
    increasing or decreasing. ``rhs`` receives t as a 0-dim tensor on y's device and dtype (from a
    table copied there once, so it never sees a Python float)."""
    tab = TABLEAUX[method]
    grid = grid.to(dtype=torch.float64, device="cpu")
    times = stage_times(grid, tab).to(device=y0.device, dtype=y0.dtype)
    # h a_ij and h b_i as Python floats, computed once: the loop multiplies tensors by host scalars
    h = (grid[1:] - grid[:-1]).tolist()
    y = y0
    for k, hk in enumerate(h):
        slopes = []
        for i, row in enumerate(tab.a):
            y_i = y
            for a_ij, K in zip(row, slopes):
                if a_ij != 0:
                    y_i = y_i + (hk * a_ij) * K
            slopes.append(rhs(times[k, i], y_i))
        for b_i, K in zip(tab.b, slopes):
            if b_i != 0:
                y = y + (hk * b_i) * K
    return y
