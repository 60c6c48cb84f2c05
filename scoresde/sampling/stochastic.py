"""Reverse-SDE samplers of Song et al. (2021) and DDPM / SMLD ancestral sampling.

All run on a grid from ``make_grid`` (T down to eps, or discrete chain indices) and share the one
loop of ``_loop.run``; the first three differ only in their coefficient tables. The
predictor–corrector sampler takes any of the fixed-grid steps as its predictor.
"""
from __future__ import annotations

import inspect
import math
from typing import Optional

import torch
from torch import Tensor

from ..sde import SDE, VESDE
from . import _loop
from .. import _checks
from ._loop import linear_stepper, randn_like
from .dpm_solver import multistep_stepper, singlestep_stepper
from .grids import Schedule, make_grid
from .heun import heun_stepper

CORRECTORS = ("langevin", "annealed_langevin", None)
VARIANCES = ("beta", "posterior")


@torch.no_grad()
def euler_maruyama(score_fn, sde: SDE, x_T: Tensor, *, steps: int = 1000, eps: float = 1e-3,
                   schedule: Schedule = "uniform", denoise: bool = True,
                   generator: Optional[torch.Generator] = None, progress: bool = False,
                   project: Optional[_loop.Project] = None) -> Tensor:
    """Euler–Maruyama on the reverse SDE dx = [f - g^2 score] dt + g dw̄ from T to eps.

    Step t_k -> t_{k+1}, h = t_k - t_{k+1}:  x <- x - [f(x, t_k) - g(t_k)^2 score(x, t_k)] h + g(t_k) sqrt(h) z.

    ``project``: optional per-step hook ``project(k, x, t_next) -> x``, called after step k with x at
    t_{k+1} (before the ``denoise`` step; see ``_loop.run``); its result replaces x.
    """
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    grid = make_grid(sde, steps, eps, schedule)
    return _loop.run_linear(score, grid, _loop.euler_maruyama_steps(sde, grid), x, denoise=denoise,
                            generator=generator, progress=progress, desc="euler_maruyama", project=project)


@torch.no_grad()
def ancestral(score_fn, sde: SDE, x_T: Tensor, *, steps: Optional[int] = None, eps: float = 1e-3,
              timesteps=None, variance: Optional[str] = None, schedule: Schedule = "uniform",
              denoise: bool = True, generator: Optional[torch.Generator] = None,
              progress: bool = False, project: Optional[_loop.Project] = None) -> Tensor:
    """Ancestral sampling of the discretized reverse chain: DDPM for VP / sub-VP, SMLD for VE.

    Each step draws x_{k+1} ~ N((x_k + b_k^2 score) / a_k, v_k^2 I), where x_k = a_k x_{k+1} + b_k z is
    the forward chain between grid points; the mean is DDPM's mu_theta = (x - beta eps_theta /
    sqrt(1 - alphā)) / sqrt(alpha). ``variance``: "beta" (v^2 = b^2, DDPM's sigma^2 = beta; default
    for VP / sub-VP) or "posterior" (the true posterior variance, SMLD's choice; default for VE).

    ``timesteps`` (descending chain indices, e.g. ``range(N - 1, -1, -1)``) runs the discrete chain
    itself: with all N indices on a VPSDE this *is* DDPM's Algorithm 2, the final noiseless step
    being the denoising step. Otherwise a continuous grid of ``steps`` (default N) steps is used.

    ``project``: optional per-step hook ``project(k, x, t_next) -> x``, called after step k with x at
    t_{k+1} (before the ``denoise`` step; see ``_loop.run``); its result replaces x.
    """
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    if variance is None:
        variance = "posterior" if isinstance(sde, VESDE) else "beta"
    _checks.choice(variance, "variance", VARIANCES)
    grid = make_grid(sde, sde.N if steps is None else steps, eps, schedule, timesteps)
    return _loop.run_linear(score, grid, _loop.ancestral_steps(grid, variance), x, denoise=denoise,
                            generator=generator, progress=progress, desc="ancestral", project=project)


def _dpm_solver_step(score, sde, grid, x, generator, order=2, multistep=False, predict="x0"):
    # singlestep by default: a multistep history would mix predictions made before the corrector
    # moved x, and their differences then carry the corrector's noise, not the path's derivatives
    _checks.choice(order, "predictor_options['order']", (1, 2, 3))
    _checks.choice(predict, "predictor_options['predict']", ("x0", "eps"))
    if multistep:
        return multistep_stepper(score, grid, order, predict)
    return singlestep_stepper(score, sde, grid, x, order, predict)


def _ddim_step(score, sde, grid, x, generator, eta=0.0):
    return linear_stepper(score, _loop.ddim_steps(grid, _checks.number(eta, "predictor_options['eta']", 0.0, 1.0, closed=True)), generator)


def _no_step(score, sde, grid, x, generator):
    return lambda k, x, t, t_next: x  # stay at t_k: only the corrector moves x


#: predictor name -> builder(score, sde, grid, x_T, generator, **predictor_options) of its step
PREDICTORS = {
    "reverse_diffusion": lambda score, sde, grid, x, g: linear_stepper(score, _loop.reverse_diffusion_steps(grid), g),
    "euler_maruyama": lambda score, sde, grid, x, g: linear_stepper(score, _loop.euler_maruyama_steps(sde, grid), g),
    "ancestral": lambda score, sde, grid, x, g: linear_stepper(
        score, _loop.ancestral_steps(grid, "posterior" if isinstance(sde, VESDE) else "beta"), g),
    "ddim": _ddim_step,
    "dpm_solver": _dpm_solver_step,
    "heun": heun_stepper,
    None: _no_step,
}


@torch.no_grad()
def predictor_corrector(score_fn, sde: SDE, x_T: Tensor, *, steps: int = 1000, eps: float = 1e-3,
                        predictor: Optional[str] = "reverse_diffusion", corrector: Optional[str] = "langevin",
                        snr: float = 0.16, corrector_steps: int = 1, predictor_options: Optional[dict] = None,
                        schedule: Schedule = "uniform", denoise: bool = True,
                        generator: Optional[torch.Generator] = None, progress: bool = False,
                        project: Optional[_loop.Project] = None) -> Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Algorithm 1), any predictor with any corrector.

    At each grid time t_k: ``corrector_steps`` Langevin steps targeting p_{t_k}, then one predictor
    step to t_{k+1}. Predictors (``PREDICTORS``): Song et al.'s "reverse_diffusion",
    "euler_maruyama" and "ancestral"; the probability-flow solvers "ddim" (option ``eta``),
    "dpm_solver" (options ``order``, ``predict`` and ``multistep``, False by default here: a
    multistep history would difference predictions made before and after the corrector's moves)
    and "heun" (options ``churn`` …); or None.
    ``predictor_options`` are passed to the predictor. Correctors, x <- x + delta score + sqrt(2 delta) z with
      - "langevin": delta = 2 a_k^2 (snr ||z|| / ||score||)^2 with norms averaged over the batch, as
        in the reference (a_k^2 = alpha_k of the chain: 1 - beta for VP, 1 for VE);
      - "annealed_langevin": delta = 2 a_k^2 (snr sigma(t_k))^2 (NCSN's annealed Langevin dynamics);
      - None.
    NFE per step: the predictor's (1, or 2 for heun, ``order`` for singlestep dpm_solver) plus
    ``corrector_steps``.

    ``project``: optional per-step hook ``project(k, x, t_next) -> x``, called after predictor step
    k with x at t_{k+1}, so the corrector at t_{k+1} already sees its result (see ``_loop.run``).
    With a multistep "dpm_solver" predictor the history holds predictions made at the projected
    points.
    """
    _checks.choice(predictor, "predictor", tuple(PREDICTORS))
    _checks.choice(corrector, "corrector", CORRECTORS)
    if predictor is None and corrector is None:
        raise ValueError("predictor and corrector cannot both be None")
    snr = _checks.number(snr, "snr", 0.0, math.inf)
    if corrector is not None:
        _checks.positive_int(corrector_steps, "corrector_steps")
    options = dict(predictor_options or {})
    unknown = set(options) - set(list(inspect.signature(PREDICTORS[predictor]).parameters)[5:])
    if unknown:
        raise ValueError(f"predictor_options has keys {sorted(unknown)} that predictor {predictor!r} does not take")
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    grid = make_grid(sde, steps, eps, schedule)
    pred = PREDICTORS[predictor](score, sde, grid, x, generator, **options)
    corr = None
    if corrector is not None:
        chain_alpha = ((grid.alpha[:-1] / grid.alpha[1:]) ** 2).tolist()
        sigmas = grid.sigma.tolist()

        def corr(k: int, x: Tensor, t: Tensor) -> Tensor:
            for _ in range(corrector_steps):
                s = score(x, t)
                z = randn_like(x, generator)
                if corrector == "langevin":
                    # batch-averaged norms as in the reference: per-sample ratios explode in low
                    # dimension wherever the score nearly vanishes (mode centres)
                    ratio = z.reshape(z.shape[0], -1).norm(dim=1).mean() / s.reshape(s.shape[0], -1).norm(dim=1).mean().clamp(min=torch.finfo(x.dtype).tiny)
                    delta = 2 * chain_alpha[k] * (snr * ratio) ** 2
                    x = x + delta * s + (2 * delta).sqrt() * z
                else:
                    delta = 2 * chain_alpha[k] * (snr * sigmas[k]) ** 2
                    x = x + delta * s + (2 * delta) ** 0.5 * z
            return x

    return _loop.run(score, grid, pred, x, denoise=denoise, progress=progress, desc="predictor_corrector",
                     corrector=corr, project=project)
