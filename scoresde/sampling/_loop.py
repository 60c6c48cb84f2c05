"""What every fixed-grid sampler shares: input checks, the noise source, the Tweedie denoising
step and the one sampling loop.

A sampler on a grid t_0 = T > t_1 > ... > t_n = eps is a *step* ``step(k, x, t_k, t_{k+1}) ->
x_{k+1}`` built once per grid (all its coefficients precomputed as Python floats), run by ``run``,
optionally with a corrector before each step (predictor–corrector sampling).

Most samplers take steps of the form

    x_{k+1} = A_k x_k + B_k score(x_k, t_k) + C_k z_k,      z_k ~ N(0, I),

with scalar A_k, B_k, C_k that depend only on the grid (Euler–Maruyama, reverse diffusion, DDPM
ancestral, DDIM). They differ only in those coefficient tables (``LinearSteps``). Multi-stage and
multistep solvers (Heun, DPM-Solver) build their own steps in their modules.

``run`` also takes an optional per-step hook ``project(k, x, t_{k+1}) -> x``, called once after
step k (after every stage of a multi-stage step, never between them) with x at t_{k+1}; its
return value replaces x before the corrector and step k+1 see it. It is how inverse problems
(``inverse.inpaint``, ``inverse.colorize``) enforce an observation at every noise level.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor
from tqdm.auto import trange

from .. import _checks
from ..sde import SDE
from .generators import SampleGenerators
from .grids import Grid


def randn_like(x: Tensor, generator: Union[torch.Generator, SampleGenerators, None]) -> Tensor:
    """Standard normal noise shaped like x, drawn from ``generator`` (on its own device): a
    ``torch.Generator``, or a ``SampleGenerators`` that draws row r of x from its own generator r."""
    if isinstance(generator, SampleGenerators):
        return generator.randn(x.shape, device=x.device, dtype=x.dtype)
    if generator is None or generator.device == x.device:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def device_times(grid: Grid, x: Tensor) -> Tensor:
    """The grid's times on x's device and dtype, copied once before the loop."""
    return grid.t.to(device=x.device, dtype=x.dtype)


def tweedie(score: Callable, x: Tensor, t: Tensor, alpha: float, sigma: float) -> Tensor:
    """E[x_0 | x_t] = (x + sigma^2 score(x, t)) / alpha (Tweedie's formula for a Gaussian p_0t)."""
    return (x + sigma ** 2 * score(x, t)) / alpha


def end_coeffs(sde: SDE, eps: float) -> Tuple[float, float]:
    """(alpha_eps, sigma_eps) of the SDE's continuous marginal, as Python floats computed in float64:
    read before a sampling loop, so that nothing is read back after it. ``eps`` is the end of a grid
    the caller has checked (no range check here)."""
    alpha, sigma = (float(c) for c in sde._marginal_coeffs(torch.tensor([eps], dtype=torch.float64)))
    return alpha, sigma


def tweedie_at(score: Callable, sde: SDE, x: Tensor, eps: float, per_sample: bool = False,
               coeffs: Optional[Tuple[float, float]] = None) -> Tensor:
    """Tweedie's E[x_0 | x_eps] with the SDE's continuous marginal coefficients at time eps
    (``coeffs``: those of ``end_coeffs(sde, eps)``, computed before the loop).

    t is laid out as the caller's own score calls had it, so that a compiled network sees the same
    strides as at every step before and is not recompiled for this last call
    (``scoresde.precision.compile_score``): one value expanded to (B,) (stride 0), as the ODE/SDE
    solvers' times are (``clamped_time``), or with ``per_sample`` a (B,) tensor of its own, as the
    per-sample times of ``adaptive_sde`` are."""
    alpha, sigma = end_coeffs(sde, eps) if coeffs is None else coeffs
    B = x.shape[0]
    t = torch.full((B,) if per_sample else (), eps, device=x.device, dtype=x.dtype)
    return tweedie(score, x, t if per_sample else t.expand(B), alpha, sigma)


@dataclass(frozen=True)
class LinearSteps:
    """Per-step scalars of x_{k+1} = A_k x_k + B_k score(x_k, t_k) + C_k z_k."""

    A: List[float]
    B: List[float]
    C: List[float]

    @classmethod
    def from_tensors(cls, A: Tensor, B: Tensor, C: Tensor) -> "LinearSteps":
        return cls(A.tolist(), B.tolist(), C.clamp(min=0).tolist())


#: step(k, x, t_k, t_{k+1}) -> x_{k+1}, with t_k and t_{k+1} of shape (B,) on x's device
Step = Callable[[int, Tensor, Tensor, Tensor], Tensor]
#: corrector(k, x, t_k) -> x, applied at t_k before the step
Corrector = Callable[[int, Tensor, Tensor], Tensor]
#: project(k, x, t_{k+1}) -> x, applied after step k (t_{k+1} of shape (B,) on x's device)
Project = Callable[[int, Tensor, Tensor], Tensor]


def linear_stepper(score: Callable, steps: LinearSteps, generator: Optional[torch.Generator]) -> Step:
    def step(k: int, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        x_next = steps.A[k] * x
        if steps.B[k] != 0:
            x_next = x_next + steps.B[k] * score(x, t)
        if steps.C[k] > 0:
            x_next = x_next + steps.C[k] * randn_like(x, generator)
        return x_next
    return step


def run(score: Callable, grid: Grid, step: Step, x: Tensor, *, denoise: bool, progress: bool, desc: str,
        corrector: Optional[Corrector] = None, project: Optional[Project] = None) -> Tensor:
    """Run the grid's steps, then denoise at t_n. For k = 0 .. n-1:

        x <- corrector(k, x, t_k)                 (if given)
        x <- step(k, x, t_k, t_{k+1})
        x <- project(k, x, t_{k+1})               (if given)

    so ``project`` is called exactly n times, after each full step (all its stages), with x at
    t_{k+1} and t_{k+1} as a (B,) tensor on x's device; the last call (k = n-1, t_n = eps) comes
    before the Tweedie step of ``denoise``. Its return value replaces x; it must not read the
    device (no ``.item()``), as nothing else in the loop does.

    Every score call gets t as one grid time expanded to (B,), in x's dtype (never a Python float),
    and x of one shape: a compiled network (``scoresde.precision.compile_score``) compiles once."""
    ts = device_times(grid, x)
    B = x.shape[0]
    end = float(grid.alpha[-1]), float(grid.sigma[-1])  # read before the loop, not after it
    for k in trange(grid.steps, disable=not progress, desc=desc, leave=False):
        t = ts[k].expand(B)
        if corrector is not None:
            x = corrector(k, x, t)
        t_next = ts[k + 1].expand(B)
        x = step(k, x, t, t_next)
        if project is not None:
            x = project(k, x, t_next)
    if denoise:
        x = tweedie(score, x, ts[-1].expand(B), *end)
    return _checks.finite_result(x, desc)


def run_linear(score: Callable, grid: Grid, steps: LinearSteps, x: Tensor, *, denoise: bool,
               generator: Optional[torch.Generator], progress: bool, desc: str,
               corrector: Optional[Corrector] = None, project: Optional[Project] = None) -> Tensor:
    """``run`` with the step x_{k+1} = A_k x_k + B_k score + C_k z of ``steps`` (``project`` as in ``run``)."""
    return run(score, grid, linear_stepper(score, steps, generator), x, denoise=denoise, progress=progress,
               desc=desc, corrector=corrector, project=project)


# ---- coefficient tables of the linear samplers (float64, one entry per step) -------------------

def _transition(grid: Grid):
    """a_k, b_k^2 of the forward transition p(x_{t_k} | x_{t_{k+1}}) = N(a x, b^2 I) between grid points."""
    a = grid.alpha[:-1] / grid.alpha[1:]
    b2 = (grid.sigma[:-1] ** 2 - a ** 2 * grid.sigma[1:] ** 2).clamp(min=0)
    return a, b2


def euler_maruyama_steps(sde: SDE, grid: Grid, probability_flow: bool = False) -> LinearSteps:
    """Reverse SDE dx = [c x - g^2 score] dt + g dw̄ stepped by Euler–Maruyama, h = t_k - t_{k+1}:
    x' = (1 - c h) x + g^2 h score + g sqrt(h) z. With ``probability_flow``: the ODE's Euler step
    (g^2/2, no noise)."""
    t = grid.t[:-1]
    h = t - grid.t[1:]
    c = sde.drift_coeff(t)
    g2 = sde.diffusion(t) ** 2
    if probability_flow:
        return LinearSteps.from_tensors(1 - c * h, 0.5 * g2 * h, torch.zeros_like(h))
    return LinearSteps.from_tensors(1 - c * h, g2 * h, (g2 * h).sqrt())


def reverse_diffusion_steps(grid: Grid) -> LinearSteps:
    """Song et al.'s reverse-diffusion predictor on the grid's own forward chain x_k = a x_{k+1} + b z:
    x_{k+1} = x_k - (a - 1) x_k + b^2 score + b z."""
    a, b2 = _transition(grid)
    return LinearSteps.from_tensors(2 - a, b2, b2.sqrt())


def ancestral_steps(grid: Grid, variance: str) -> LinearSteps:
    """Ancestral sampling of the grid's chain: x_{k+1} = (x_k + b^2 score) / a + v z, which is the
    posterior mean E[x_{k+1} | x_k, x̂_0] (DDPM's mu_theta). v^2 = b^2 ("beta", DDPM's sigma^2 = beta)
    or b^2 sigma_{k+1}^2 / sigma_k^2 ("posterior", the exact posterior variance; SMLD's choice)."""
    a, b2 = _transition(grid)
    v2 = b2 if variance == "beta" else b2 * grid.sigma[1:] ** 2 / grid.sigma[:-1] ** 2
    return LinearSteps.from_tensors(1 / a, b2 / a, v2.sqrt())


def ddim_steps(grid: Grid, eta: float) -> LinearSteps:
    """DDIM (Song, Meng & Ermon 2021) for any (alpha, sigma) chain, with eps_hat = -sigma_k score:
    x_{k+1} = alpha_{k+1} x̂_0 + sqrt(sigma_{k+1}^2 - c^2) eps_hat + c z,
    x̂_0 = (x_k - sigma_k eps_hat) / alpha_k,  c = eta sigma_{k+1} b / sigma_k (b as in ``_transition``)."""
    a_k, s_k = grid.alpha[:-1], grid.sigma[:-1]
    a_n, s_n = grid.alpha[1:], grid.sigma[1:]
    _, b2 = _transition(grid)
    c = eta * s_n * b2.sqrt() / s_k
    dir_coef = (s_n ** 2 - c ** 2).clamp(min=0).sqrt()
    return LinearSteps.from_tensors(a_n / a_k, a_n * s_k ** 2 / a_k - dir_coef * s_k, c)
