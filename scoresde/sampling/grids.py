"""Time grids from T down to eps, shared by every fixed-step sampler.

A grid is computed once, in float64 on the CPU, before any sampling loop starts: its times and
the marginal coefficients (alpha_k, sigma_k) of p_0t at each of them. Samplers turn those into
per-step Python-float coefficients, so the loop itself does no schedule arithmetic and never
synchronises with the device.

Schedules (all descending, t_0 = T, t_n = eps):
- ``"uniform"``: uniform in t.
- ``"quadratic"``: t_k = eps + (T - eps) (1 - k/n)^2, denser near the data (DDIM's quadratic).
- ``"logsnr"``: uniform in log-SNR lambda(t) = log(alpha(t) / sigma(t)) (DPM-Solver's choice).
- ``"karras"``: the EDM rho = 7 schedule in the noise level s = sigma / alpha = exp(-lambda).
- a descending 1-D tensor of times in (0, T]: used as given (then ``steps`` follows from it).
Non-uniform schedules are mapped back to t by bisection on the monotone lambda(t), so they work
for any SDE of the package, not only for those with a closed-form inverse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .. import _checks
from ..sde import SDE

SCHEDULES = ("uniform", "logsnr", "quadratic", "karras")
Schedule = Union[str, Tensor, Sequence[float]]


@dataclass(frozen=True)
class Grid:
    """Times t_0 > … > t_n and the marginal coefficients alpha_k, sigma_k there (float64, CPU)."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor

    @property
    def steps(self) -> int:
        return self.t.numel() - 1


def logsnr(sde: SDE, t: Tensor) -> Tensor:
    """lambda(t) = log(alpha(t) / sigma(t)), decreasing in t."""
    alpha, sigma = sde.marginal_coeffs(t.to(torch.float64))
    return alpha.log() - sigma.log()


def t_from_logsnr(sde: SDE, lam: Tensor, lo: float, hi: float, iters: int = 80) -> Tensor:
    """Invert the decreasing lambda(t) on [lo, hi] by bisection (float64; 80 halvings reach ulp)."""
    a = torch.full_like(lam, lo, dtype=torch.float64)
    b = torch.full_like(lam, hi, dtype=torch.float64)
    for _ in range(iters):
        mid = 0.5 * (a + b)
        above = logsnr(sde, mid) > lam  # still too early: the target lies later in time
        a = torch.where(above, mid, a)
        b = torch.where(above, b, mid)
    return 0.5 * (a + b)


def time_grid(sde: SDE, steps: int = 100, eps: float = 1e-3, schedule: Schedule = "uniform") -> Tensor:
    """A descending float64 tensor of ``steps + 1`` times from T to ``eps`` (see module docstring)."""
    if not isinstance(schedule, str):
        return _explicit_grid(sde, schedule)
    steps = _checks.positive_int(steps)
    eps = _checks.eps(sde, eps)
    T = sde.T
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if schedule == "uniform":
        t = T + (eps - T) * u
    elif schedule == "quadratic":
        t = eps + (T - eps) * (1 - u) ** 2
    elif schedule in ("logsnr", "karras"):
        lam_T, lam_eps = (float(logsnr(sde, torch.tensor([v], dtype=torch.float64))) for v in (T, eps))
        if schedule == "logsnr":
            lam = lam_T + (lam_eps - lam_T) * u
        else:
            rho = 7.0
            s_max, s_min = math.exp(-lam_T), math.exp(-lam_eps)
            s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            lam = -s.log()
        t = t_from_logsnr(sde, lam, eps, T)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES} or a descending 1-D tensor of times, got {schedule!r}")
    t[0], t[-1] = T, eps  # exact end points whatever the rounding of the inversion
    return t


def _explicit_grid(sde: SDE, times) -> Tensor:
    try:
        t = torch.as_tensor(times, dtype=torch.float64).detach().cpu().flatten() if not torch.is_tensor(times) \
            else times.detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"schedule must be one of {SCHEDULES} or a descending 1-D tensor of times, got {times!r}") from None
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"an explicit schedule must be a 1-D tensor of at least 2 times, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or t[-1] <= 0 or t[0] > sde.T:
        raise ValueError(f"an explicit schedule must lie in (0, T] = (0, {sde.T}], got [{t.min().item()}, {t.max().item()}]")
    if not (t[1:] < t[:-1]).all():
        raise ValueError("an explicit schedule must be strictly decreasing (from T down to eps)")
    return t


def make_grid(sde: SDE, steps: Optional[int] = None, eps: float = 1e-3, schedule: Schedule = "uniform",
              timesteps=None) -> Grid:
    """The grid a sampler runs on: continuous times (``schedule``) or discrete chain ``timesteps``.

    ``timesteps`` is a strictly descending sequence of integer indices of the N-step chain; its
    times are t_i = T i / (N - 1), raised to ``eps`` where smaller (index 0), and its coefficients
    those of the chain (for VP, alpha_i^2 = alphas_cumprod[i]), so a sampler on it reproduces the
    discrete-time method exactly.
    """
    if timesteps is None:
        t = time_grid(sde, steps, eps, schedule)
        alpha, sigma = sde.marginal_coeffs(t)
        return Grid(t, alpha, sigma)
    idx = _check_timesteps(sde, timesteps)
    alpha, sigma = sde.discrete_marginal_coeffs(idx)
    # index 0 sits at t = 0, where a continuous-time model's noise level vanishes (its score is
    # undefined there): the score is evaluated at max(t_i, eps), the chain's coefficients stay exact
    t = (idx.to(torch.float64) * sde.T / (sde.N - 1)).clamp(min=_checks.eps(sde, eps))
    return Grid(t, alpha.to(torch.float64), sigma.to(torch.float64))


def _check_timesteps(sde: SDE, timesteps) -> Tensor:
    try:
        idx = torch.as_tensor(timesteps).detach().cpu().flatten() if not torch.is_tensor(timesteps) \
            else timesteps.detach().cpu().flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"timesteps must be a descending sequence of integers in [0, N-1], got {timesteps!r}") from None
    if idx.numel() < 1 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"timesteps must be a non-empty descending sequence of integer indices, got {timesteps!r}")
    idx = idx.long()
    if idx.min() < 0 or idx.max() > sde.N - 1:
        raise ValueError(f"timesteps must lie in [0, N-1] = [0, {sde.N - 1}], got [{idx.min().item()}, {idx.max().item()}]")
    if not (idx[1:] < idx[:-1]).all():
        raise ValueError("timesteps must be strictly decreasing (noisiest index first)")
    return idx
