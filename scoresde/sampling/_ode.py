"""The reverse-time drifts and the ODE solve (fixed steps or torchdiffeq's adaptive solvers) shared by the
ODE/SDE samplers and the likelihood."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torchdiffeq import odeint
from tqdm.auto import tqdm

from .._checks import NonFiniteError
from ..sde import SDE, batch_broadcast
from .runge_kutta import TABLEAUX, fixed_grid_odeint


def reverse_drift(sde: SDE, score: Callable, x: Tensor, t: Tensor, weight: float = 1.0) -> Tensor:
    """f(x, t) - weight g(t)^2 score(x, t), t of shape (B,): the reverse SDE's drift (weight 1)."""
    coef = sde.drift_coeff(t)
    g2 = sde._diffusion(t) ** 2
    return batch_broadcast(coef, x) * x - weight * batch_broadcast(g2, x) * score(x, t)


def pf_drift(sde: SDE, score: Callable, x: Tensor, t: Tensor) -> Tensor:
    """The probability-flow ODE dx/dt = f(x, t) - g(t)^2 score(x, t) / 2."""
    return reverse_drift(sde, score, x, t, 0.5)


class Counter:
    """Counts score evaluations (NFE) on the host, optionally ticking a tqdm bar: no device sync."""

    def __init__(self, score: Callable, progress: bool = False, desc: str = "", total: Optional[int] = None):
        self.score = score
        self.nfe = 0
        self.bar = tqdm(total=total, desc=desc, unit="nfe", leave=False) if progress else None

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        if self.bar is not None:
            self.bar.update(1)
        return self.score(x, t)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def clamped_time(t: Tensor, lo: float, hi: float, batch: int, like: Tensor) -> Tensor:
    """Solver time -> a (B,) score time inside [lo, hi]. Adaptive solvers may evaluate past their
    end point; the clamp keeps the score inside its domain there. A NaN time (the step size an
    adaptive solver derives from a NaN error estimate) goes to ``lo``: the solver then fails or the
    NaN reaches the result, and both are reported as a NonFiniteError."""
    return t.to(like.dtype).nan_to_num(nan=lo).clamp(lo, hi).expand(batch)


def integrate(rhs: Callable, y0: Tensor, grid: Tensor, method: str, rtol: float, atol: float,
              counted: Counter, routine: str) -> Tensor:
    """The state at grid[-1] of dy/dt = rhs(t, y), y(grid[0]) = y0; ``grid`` is a 1-D float64 tensor
    on the CPU. A fixed-step method (``runge_kutta.TABLEAUX``) steps from grid point to grid point
    (``runge_kutta.fixed_grid_odeint``); an adaptive one is torchdiffeq's odeint from grid[0] to
    grid[-1] at ``rtol``/``atol``, told to land exactly on grid[-1] (past it the score is only defined
    by clamping, and the dense-output interpolation back to it would cost accuracy). torchdiffeq's
    adaptive solvers meet a non-finite score by shrinking the step until an assertion fails
    ("underflow in dt"): that becomes a NonFiniteError naming ``routine``. Closes ``counted``'s bar."""
    try:
        if method in TABLEAUX:
            return fixed_grid_odeint(rhs, y0, grid, method)
        start, end = float(grid[0]), float(grid[-1])
        ends = torch.tensor([start, end], device=y0.device, dtype=y0.dtype)
        return odeint(rhs, y0, ends, method=method, rtol=rtol, atol=atol, options={"step_t": [end]})[-1]
    except AssertionError as e:
        raise NonFiniteError(f"{routine}: the ODE solver failed ({' '.join(str(e).split())[:120]}); the score "
                             "function returned non-finite values or the ODE is too stiff for this tolerance") from None
    finally:
        counted.close()
