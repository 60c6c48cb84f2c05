"""Heun's second-order method on the probability-flow ODE in EDM's variables (Karras et al. 2022).

With x = alpha_t x̂ and noise level s = sigma_t / alpha_t, the probability-flow ODE of every SDE of
the package becomes the variance-exploding ODE

    dx̂/ds = (x̂ - D(x̂; s)) / s = eps_hat(x, t),      eps_hat = -sigma_t score(x, t),

which EDM integrates with Heun's method in s: its trajectories are nearly straight there, so a
second-order step goes far. Between grid points a -> b (Δ = s_b - s_a < 0):

    x̂' = x̂_a + Δ eps_hat_a,     x̂_b = x̂_a + Δ (eps_hat_a + eps_hat(x'_b, t_b)) / 2.

An Euler step alone is DDIM; EDM's final Euler step to s = 0 is the Tweedie step of ``denoise``.

Stochastic churn (EDM's Algorithm 2): before the step from t_k, for noise levels s_k in
[churn_min, churn_max], raise the noise level to ŝ = s_k (1 + gamma), gamma = min(churn / steps,
sqrt(2) - 1), by adding fresh noise of variance ŝ^2 - s_k^2 (scaled by ``churn_noise``), then step
from ŝ. ŝ is capped at s(T) so that the score is never asked outside [eps, T].
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from .. import _checks
from ..sde import SDE
from . import _loop
from .grids import Grid, Schedule, make_grid, t_from_logsnr


def heun_stepper(score: Callable, sde: SDE, grid: Grid, like: Tensor, generator: Optional[torch.Generator] = None,
                 churn: float = 0.0, churn_min: float = 0.0, churn_max: float = math.inf,
                 churn_noise: float = 1.0) -> _loop.Step:
    """Heun steps along ``grid`` (two score evaluations per step), optionally with churn."""
    alpha, sigma = grid.alpha, grid.sigma
    s = sigma / alpha
    # float64 like the grid (a Python scalar in torch.where would make gamma float32)
    gamma = ((s >= churn_min) & (s <= churn_max)).to(s.dtype)[:-1] * min(churn / grid.steps, math.sqrt(2) - 1)
    s_hat = torch.minimum(s[:-1] * (1 + gamma), s[0])
    churned = (s_hat > s[:-1]).tolist()
    # the churned level's time and coefficients (the grid's own where nothing is added)
    lam_hat = -s_hat.log()
    t_hat = torch.where(s_hat > s[:-1], t_from_logsnr(sde, lam_hat, float(grid.t[-1]), sde.T), grid.t[:-1])
    a_hat, sig_hat = sde.marginal_coeffs(t_hat)
    a_hat = torch.where(s_hat > s[:-1], a_hat, alpha[:-1])
    sig_hat = torch.where(s_hat > s[:-1], sig_hat, sigma[:-1])
    lift = (a_hat / alpha[:-1]).tolist()
    noise = (churn_noise * a_hat * (s_hat ** 2 - s[:-1] ** 2).clamp(min=0).sqrt()).tolist()
    ratio = (alpha[1:] / a_hat).tolist()
    delta = (alpha[1:] * (s[1:] - sig_hat / a_hat)).tolist()  # alpha_b Δ
    sig_a, sig_b = sig_hat.tolist(), sigma[1:].tolist()
    t_hat_dev = t_hat.to(device=like.device, dtype=like.dtype)

    def step(k: int, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        if churned[k]:
            x = lift[k] * x + noise[k] * _loop.randn_like(x, generator)
            t = t_hat_dev[k].expand(x.shape[0])
        d_a = score(x, t)
        carried = ratio[k] * x
        x_euler = torch.add(carried, d_a, alpha=-delta[k] * sig_a[k])
        d_b = score(x_euler, t_next)
        return torch.add(torch.add(carried, d_a, alpha=-0.5 * delta[k] * sig_a[k]), d_b,
                         alpha=-0.5 * delta[k] * sig_b[k])
    return step


@torch.no_grad()
def heun(score_fn, sde: SDE, x_T: Tensor, *, steps: int = 18, eps: float = 1e-3, schedule: Schedule = "karras",
         churn: float = 0.0, churn_min: float = 0.0, churn_max: float = math.inf, churn_noise: float = 1.0,
         denoise: bool = True, generator: Optional[torch.Generator] = None, progress: bool = False,
         project: Optional[_loop.Project] = None) -> Tensor:
    """EDM's Heun sampler of the probability-flow ODE (see the module docstring), 2 NFE per step
    (plus one for ``denoise``), on the Karras rho = 7 grid by default.

    ``churn`` = 0 (default) is the deterministic second-order solver. ``churn`` > 0 is EDM's
    stochastic sampler (S_churn, with S_tmin, S_tmax, S_noise as ``churn_min``, ``churn_max``,
    ``churn_noise``, in units of s = sigma / alpha); it then uses ``generator``.

    ``project``: optional per-step hook ``project(k, x, t_next) -> x``, called after the whole Heun
    step k (churn, Euler stage and correction) with x at t_{k+1} (see ``_loop.run``); its result
    replaces x.
    """
    churn = _checks.number(churn, "churn", 0.0, math.inf, closed=True)
    churn_min = _checks.number(churn_min, "churn_min", 0.0, math.inf, closed=True)
    churn_max = _checks.number(churn_max, "churn_max", 0.0, math.inf, closed=True)
    if churn_max < churn_min:
        raise ValueError(f"churn_max must be >= churn_min, got {churn_max} < {churn_min}")
    churn_noise = _checks.number(churn_noise, "churn_noise", 0.0, math.inf, closed=True)
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    grid = make_grid(sde, steps, eps, schedule)
    step = heun_stepper(score, sde, grid, x, generator, churn, churn_min, churn_max, churn_noise)
    return _loop.run(score, grid, step, x, denoise=denoise, progress=progress, desc="heun", project=project)
