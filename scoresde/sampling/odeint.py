"""Probability-flow ODE sampling: adaptive steps through torchdiffeq, fixed steps by the explicit
Runge–Kutta loop of ``runge_kutta`` (torchdiffeq's tableaux, without its per-step host sync)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..sde import SDE
from .. import _checks
from ._loop import end_coeffs, tweedie_at
from ._ode import Counter, clamped_time, integrate, pf_drift
from .grids import Schedule, time_grid
from .runge_kutta import STAGES, TABLEAUX

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
#: the fixed-step methods (scoresde.sampling.runge_kutta; "heun" is torchdiffeq's "heun2")
FIXED_METHODS = tuple(TABLEAUX)


@torch.no_grad()
def probability_flow(score_fn, sde: SDE, x_T: Tensor, *, method: str = "dopri5", rtol: float = 1e-5,
                     atol: float = 1e-5, steps: int = 100, eps: float = 1e-3, schedule: Schedule = "uniform",
                     denoise: bool = True, generator: Optional[torch.Generator] = None,
                     progress: bool = False) -> Tensor:
    """Integrate the probability-flow ODE dx/dt = f(x, t) - g(t)^2 score(x, t) / 2 from T to eps.

    Adaptive methods (``ADAPTIVE_METHODS``) use ``rtol``/``atol``; fixed-step ones (euler, midpoint,
    rk4, heun, heun3) step along the grid of ``steps`` steps given by ``schedule``. Deterministic:
    ``generator`` is accepted for a uniform signature and unused. The progress bar counts NFE.
    """
    _checks.choice(method, "method", ADAPTIVE_METHODS + tuple(FIXED_METHODS))
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    shape, B = x.shape, x.shape[0]
    if method in ADAPTIVE_METHODS:
        rtol, atol = _checks.tolerance(rtol, "rtol"), _checks.tolerance(atol, "atol")
        eps = _checks.eps(sde, eps)
        grid_t = torch.tensor([sde.T, eps], dtype=torch.float64)
        total = None
    else:
        grid_t = time_grid(sde, steps, eps, schedule)
        eps = float(grid_t[-1])
        total = (grid_t.numel() - 1) * STAGES[method]
    counted = Counter(score, progress, "probability_flow", total)
    T, end = float(grid_t[0]), end_coeffs(sde, eps)

    def rhs(t: Tensor, y: Tensor) -> Tensor:
        return pf_drift(sde, counted, y, clamped_time(t, eps, T, B, y))

    x = integrate(rhs, x, grid_t, method, rtol, atol, counted, "probability_flow")
    if denoise:
        x = tweedie_at(score, sde, x, eps, coeffs=end)
    return _checks.finite_result(x.reshape(shape), "probability_flow")
