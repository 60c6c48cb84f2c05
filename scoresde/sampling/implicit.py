"""DDIM (Song, Meng & Ermon, ICLR 2021) for VP, sub-VP and VE."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..sde import SDE
from . import _loop
from .. import _checks
from .grids import Schedule, make_grid


@torch.no_grad()
def ddim(score_fn, sde: SDE, x_T: Tensor, *, steps: int = 50, eta: float = 0.0, timesteps=None,
         eps: float = 1e-3, schedule: Schedule = "uniform", denoise: bool = True,
         generator: Optional[torch.Generator] = None, progress: bool = False,
         project: Optional[_loop.Project] = None) -> Tensor:
    """DDIM on a grid with marginal coefficients (alpha_k, sigma_k) (for VP, alpha^2 = alphā):

        eps_hat = -sigma_k score(x_k, t_k),   x̂_0 = (x_k - sigma_k eps_hat) / alpha_k,
        x_{k+1} = alpha_{k+1} x̂_0 + sqrt(sigma_{k+1}^2 - c_k^2) eps_hat + c_k z,
        c_k = eta sigma_{k+1} / sigma_k sqrt(sigma_k^2 - (alpha_k / alpha_{k+1})^2 sigma_{k+1}^2).

    eta = 0 is deterministic (a first-order solver of the probability-flow ODE); eta = 1 draws from
    the exact posterior, i.e. DDPM ancestral sampling with the posterior variance.

    ``timesteps``: descending indices of the N-step chain (e.g. ``range(980, -1, -20)``). On a VPSDE
    this uses alphas_cumprod[i] and is exactly the DDIM paper's update; alphā = 1 follows the last
    index, so the result is x̂_0 there (``denoise=True``; with ``denoise=False``, x at the last index).

    ``project``: optional per-step hook ``project(k, x, t_next) -> x``, called after step k with x at
    t_{k+1} (before the ``denoise`` step; see ``_loop.run``); its result replaces x.
    """
    eta = _checks.number(eta, "eta", 0.0, 1.0, closed=True)
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    grid = make_grid(sde, steps, eps, schedule, timesteps)
    return _loop.run_linear(score, grid, _loop.ddim_steps(grid, eta), x, denoise=denoise,
                            generator=generator, progress=progress, desc="ddim", project=project)
