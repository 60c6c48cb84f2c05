"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, Sec. 4.3 / App. D.2).

Along a solution of dx/dt = f̃(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 the log-density obeys the
instantaneous change of variables d log p_t(x_t) / dt = -div f̃(x_t, t), so

    log p_eps(x) = log p_T(x_T) + ∫_eps^T div f̃(x_t, t) dt,     x_eps = x.

The state (x, ∫div) is integrated from eps to T with torchdiffeq's adaptive solvers, or with the
fixed-step Runge–Kutta loop of scoresde.sampling.runge_kutta (no host sync). The divergence is exact (D
backward passes, for small D) or Hutchinson's estimate E_v[v^T (∂f̃/∂x) v] with probes v drawn
once per sample and held fixed along the path, which keeps the ODE smooth for adaptive solvers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from .sde import SDE
from . import _checks
from .sampling._ode import Counter, clamped_time, integrate, pf_drift
from .sampling.generators import SampleGenerators
from .sampling.odeint import ADAPTIVE_METHODS, FIXED_METHODS
from .sampling.runge_kutta import STAGES

ESTIMATORS = ("hutchinson", "exact")
#: a torch.Generator, or a SampleGenerators: row r of every draw (probes, dequantization) from its own seed
GeneratorLike = Union[torch.Generator, SampleGenerators, None]
NOISES = ("rademacher", "gaussian")


@dataclass
class LikelihoodResult:
    """``logp``: log-density of x in nats (B,); ``z``: the latent at T; ``nfe``: score evaluations;
    ``prior_logp``: log p_T(z) (B,); ``delta_logp``: ∫ div f̃ dt (B,)."""

    logp: Tensor
    z: Tensor
    nfe: int
    prior_logp: Tensor
    delta_logp: Tensor


@dataclass
class BitsPerDimResult(LikelihoodResult):
    """Adds ``bpd`` (B,): -log2 of the probability mass of x's 8-bit bin, per dimension."""

    bpd: Tensor = None


def _divergence_fn(estimator: str, probes: Optional[Tensor]):
    """(f, x) -> div f(x) per sample, with f computed from x under autograd."""
    if estimator == "exact":
        # one backward pass per dimension (vectorising them with is_grads_batched measured slower
        # on CPU for the package's networks and the analytic mixture); likewise per probe below
        def div(f: Tensor, x: Tensor) -> Tensor:
            # reshape, not flatten(1): a (B,) batch of scalars is data too
            ff = f.reshape(f.shape[0], -1)
            total, D = 0, ff.shape[1]
            for d in range(D):
                (grad,) = torch.autograd.grad(ff[:, d].sum(), x, retain_graph=d + 1 < D)
                total = total + grad.reshape(ff.shape)[:, d]
            return total
        return div

    def div(f: Tensor, x: Tensor) -> Tensor:
        total, P = 0, probes.shape[0]
        for i, v in enumerate(probes):
            (vjp,) = torch.autograd.grad(f, x, grad_outputs=v, retain_graph=i + 1 < P)
            total = total + (vjp * v).reshape(x.shape[0], -1).sum(1)
        return total / P if P > 1 else total
    return div


def _draw_probes(noise: str, n: int, x: Tensor, generator: GeneratorLike) -> Tensor:
    if isinstance(generator, SampleGenerators):  # sample r's n probes from its own generator r
        v = generator.randn((x.shape[0], n) + tuple(x.shape[1:]), dtype=x.dtype).transpose(0, 1).contiguous()
    else:
        gdev = generator.device if generator is not None else x.device
        v = torch.randn((n,) + tuple(x.shape), generator=generator, device=gdev, dtype=x.dtype)
    if noise == "rademacher":
        v = v.sign()
        v[v == 0] = 1.0
    return v.to(x.device)


@torch.no_grad()
def log_likelihood(score_fn, sde: SDE, x: Tensor, *, estimator: str = "hutchinson", noise: str = "rademacher",
                   probes: int = 1, eps: float = 1e-5, method: str = "dopri5", rtol: float = 1e-5,
                   atol: float = 1e-5, steps: int = 100, prior_logp: Optional[Callable[[Tensor], Tensor]] = None,
                   generator: GeneratorLike = None, progress: bool = False) -> LikelihoodResult:
    """log p_eps(x) in nats through the probability-flow ODE (see the module docstring).

    Args:
        estimator: "exact" trace (D backward passes per evaluation) or "hutchinson".
        noise, probes: the Hutchinson probe distribution and how many probes to average.
        eps: start time of the ODE (the score is never evaluated outside [eps, T]).
        method, rtol, atol, steps: an adaptive torchdiffeq solver (``ADAPTIVE_METHODS``), or a fixed-step
            Runge–Kutta method (``FIXED_METHODS``, scoresde.sampling.runge_kutta) over ``steps`` uniform steps.
            rtol/atol bound the RMS norm of the local error estimate over the whole state
            [x, ∫div f̃] per step, as scipy's RK45 does in the reference implementation (the
            estimate is torchdiffeq's: for dopri5 its error weights are -2/3 of RK45's, so equal
            tolerances give similar, not identical, steps).
        prior_logp: log p_T to use instead of ``sde.prior_logp`` (e.g. an exact p_T for tests).
        generator: the Hutchinson probes' source: a ``torch.Generator``, or a ``SampleGenerators``
            (sample r's probes from its own generator r, whatever batch it is in).
    """
    _checks.choice(estimator, "estimator", ESTIMATORS)
    _checks.choice(noise, "noise", NOISES)
    _checks.choice(method, "method", ADAPTIVE_METHODS + tuple(FIXED_METHODS))
    _checks.positive_int(probes, "probes")
    _checks.batch(x, "x")
    eps = _checks.eps(sde, eps)
    score = _checks.score_function(score_fn)
    B, T = x.shape[0], sde.T
    if method in ADAPTIVE_METHODS:
        rtol, atol = _checks.tolerance(rtol, "rtol"), _checks.tolerance(atol, "atol")
        total = None
    else:
        _checks.positive_int(steps)
        total = steps * STAGES[method]
    counted = Counter(score, progress, "log_likelihood", total)
    div = _divergence_fn(estimator, _draw_probes(noise, probes, x, generator) if estimator == "hutchinson" else None)

    # one flat state [x | ∫div] per sample, (B, D + 1), so rtol/atol act as in the reference
    # implementation (scipy over the flattened state): on the RMS norm of the whole augmented state
    shape, D = x.shape, x[0].numel()

    def rhs(t: Tensor, state: Tensor) -> Tensor:
        tt = clamped_time(t, eps, T, B, state)
        with torch.enable_grad():
            y = state[:, :D].detach().reshape(shape).requires_grad_(True)
            f = pf_drift(sde, counted, y, tt)
            d = div(f, y)
        return torch.cat([f.detach().reshape(B, D), d.detach()[:, None]], dim=1)

    state0 = torch.cat([x.detach().reshape(B, D), torch.zeros(B, 1, device=x.device, dtype=x.dtype)], dim=1)
    grid = torch.tensor([eps, T], dtype=torch.float64) if method in ADAPTIVE_METHODS else \
        torch.linspace(eps, T, steps + 1, dtype=torch.float64)
    end = integrate(rhs, state0, grid, method, rtol, atol, counted, "log_likelihood")
    z, delta = end[:, :D].reshape(shape), end[:, D]
    prior = (sde.prior_logp if prior_logp is None else prior_logp)(z)
    logp = _checks.finite_result(prior + delta, "log_likelihood")
    return LikelihoodResult(logp=logp, z=z, nfe=counted.nfe, prior_logp=prior, delta_logp=delta)


def bits_per_dim(score_fn, sde: SDE, x: Tensor, *, data_range: Tuple[float, float] = (-1.0, 1.0),
                 dequantize: bool = True, generator: GeneratorLike = None,
                 **likelihood_kwargs) -> BitsPerDimResult:
    """Bits per dimension of 8-bit data on the 0–255 scale, comparable with the papers' tables.

    ``x`` holds integer pixel values in [0, 255] (uint8 or float), shape (B, ...). Each is
    dequantized to u = (x + U[0, 1)) / 256 (or the bin centre with ``dequantize=False``) and mapped
    linearly onto the model's ``data_range`` [lo, hi]: y = lo + (hi - lo) u. Then

        bpd = -(log p(y) + D log((hi - lo) / 256)) / (D log 2),

    the change-of-variables term turning the density of y into one over the 0–255 scale; with
    uniform dequantization it is an upper bound on the discrete negative log-likelihood (Theis et
    al. 2016). For [-1, 1] this is the reference implementation's "+7" offset, for [0, 1] "+8".
    Other keywords go to ``log_likelihood``. With a ``SampleGenerators`` as ``generator``, image r's
    dequantization noise and then its probes come from its own generator r.
    """
    if not torch.is_tensor(x) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a tensor of 8-bit pixel values, shape (B, ...), got {type(x).__name__}")
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range!r}")
    xf = x.to(torch.get_default_dtype() if not x.is_floating_point() else x.dtype)
    if bool(((xf < 0) | (xf > 255) | (xf != xf.round())).any()):
        raise ValueError("x must hold integer pixel values in [0, 255] (the 8-bit scale)")
    if dequantize and isinstance(generator, SampleGenerators):
        noise = generator.rand(xf.shape, device=xf.device, dtype=xf.dtype)
    elif dequantize:
        gdev = generator.device if generator is not None else xf.device
        noise = torch.rand(xf.shape, generator=generator, device=gdev, dtype=xf.dtype).to(xf.device)
    else:
        noise = torch.full_like(xf, 0.5)
    y = lo + (hi - lo) * (xf + noise) / 256.0
    res = log_likelihood(score_fn, sde, y, generator=generator, **likelihood_kwargs)
    D = x[0].numel()
    bpd = -(res.logp + D * math.log((hi - lo) / 256.0)) / (D * math.log(2.0))
    return BitsPerDimResult(logp=res.logp, z=res.z, nfe=res.nfe, prior_logp=res.prior_logp,
                            delta_logp=res.delta_logp, bpd=bpd)
