"""Linear inverse problems with an unconditional score: inpainting and colorization.

The observation is y = A x_0 with A a coordinate selection: ``known`` values where ``mask`` is 1.
(Colorization is one after an orthogonal change of colour basis, see ``colorize``.) Methods:

- ``"replace"`` (Song et al. 2021, Appendix I.2): after every step k of a fixed-grid sampler, the
  known part of x is replaced by a fresh draw of the forward marginal at t_{k+1},

      x_{k+1}[mask] <- alpha(t_{k+1}) y + sigma(t_{k+1}) z,      z ~ N(0, I),

  and the unknown part evolves under the unconditional score evaluated there. It is not the
  posterior: the unknown part sees y only through its noised copies, weakly at high noise where
  the coarse structure (which mode) is decided, so mode weights drift towards the prior's.
- ``"pigdm"`` (ΠGDM, Song, Vahdat, Mardani & Kautz, ICLR 2023): a score transform adding the
  gradient of a Gaussian approximation of log p_t(y | x_t),

      s'(x, t) = s(x, t) + (∂x̂_0/∂x)^T A^T (y - A x̂_0) / r_t^2,
      x̂_0 = (x + sigma^2 s(x, t)) / alpha  (Tweedie),   r_t^2 = v sigma^2 / (alpha^2 v + sigma^2),

  with A A^T = I for a selection. r_t^2 is Cov[x_0 | x_t] for data N(mu, v I), so the method is
  exact for such data (ΠGDM's r_t^2 = sigma^2 / (alpha^2 + sigma^2) is v = 1); ``data_var`` is v.
  The vector-Jacobian product goes through the score function under ``torch.enable_grad`` (one
  backward pass per evaluation). A score transform, so it runs with every sampler, ODE solvers too.
- ``"pigdm+replace"``: both (fixed-grid samplers only).

Every method ends with the known part set exactly to ``known``.

Exactness: under the true posterior, x_t's known part is alpha y + sigma z independently of the rest,
so with the exact posterior score ``"replace"`` changes nothing in law (tests/test_inverse.py).
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Union

import torch
from torch import Tensor

from .. import _checks
from ..sde import SDE, batch_broadcast
from . import _loop
from .adaptive import adaptive_sde
from .dpm_solver import dpm_solver
from .generators import SampleGenerators
from .heun import heun
from .implicit import ddim
from .odeint import probability_flow
from .sdeint import reverse_sde
from .stochastic import ancestral, euler_maruyama, predictor_corrector

METHODS = ("replace", "pigdm", "pigdm+replace")
Generator = Union[torch.Generator, SampleGenerators, None]

#: orthogonal colour decoupling: row 0 is (1, 1, 1) / sqrt(3), the gray direction; rows 1, 2 span
#: the chroma plane (any orthonormal pair works: the forward SDEs are isotropic)
COLOR_DECOUPLING = torch.tensor([[1 / math.sqrt(3)] * 3,
                                 [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
                                 [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)]], dtype=torch.float64)


#: the samplers taken by name: those of ``sampling.SAMPLERS`` (imported from their modules, not
#: from the package, which imports this one; tests/test_inverse.py checks that the two agree)
SAMPLERS_BY_NAME = {f.__name__: f for f in (euler_maruyama, predictor_corrector, ancestral, probability_flow,
                                           reverse_sde, ddim, dpm_solver, heun, adaptive_sde)}


def _sampler(sampler) -> Callable:
    if isinstance(sampler, str):
        if sampler not in SAMPLERS_BY_NAME:
            raise ValueError(f"sampler must be a sampler function or one of {tuple(SAMPLERS_BY_NAME)}, got {sampler!r}")
        return SAMPLERS_BY_NAME[sampler]
    if not callable(sampler):
        raise ValueError(f"sampler must be a sampler function or a name from SAMPLERS, got {type(sampler).__name__}")
    return sampler


def _has_hook(fn: Callable) -> bool:
    try:
        return "project" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _broadcasts_to(a: Tensor, x: Tensor) -> bool:
    """Whether ``a`` broadcasts to x's shape exactly (not to a larger one)."""
    try:
        return torch.broadcast_shapes(a.shape, x.shape) == x.shape
    except RuntimeError:
        return False


def _mask(mask, x: Tensor) -> Tensor:
    """``mask`` as a bool tensor on x's device, broadcastable to x (one host read, before sampling)."""
    if not torch.is_tensor(mask):
        raise ValueError(f"mask must be a tensor (bool, or float of 0 and 1), got {type(mask).__name__}")
    if not _broadcasts_to(mask, x):
        raise ValueError(f"mask must be broadcastable to x_T's shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 (to fill) and 1 (known)")
        mask = mask == 1
    return mask.to(x.device)


def _known(known, mask: Tensor, x: Tensor) -> Tensor:
    if not torch.is_tensor(known) or not known.is_floating_point():
        raise ValueError(f"known must be a floating-point tensor shaped like x_T {tuple(x.shape)}, got "
                         f"{type(known).__name__}" + (f" of dtype {known.dtype}" if torch.is_tensor(known) else ""))
    if not _broadcasts_to(known, x):
        raise ValueError(f"known must have x_T's shape {tuple(x.shape)} (or broadcast to it), got {tuple(known.shape)}")
    known = known.to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(torch.where(mask, known, 0.0)).all()):
        raise ValueError("known contains NaN or infinite values where mask is 1")
    return torch.where(mask, known, 0.0)  # values outside the mask are never read; NaN there is fine


def replacement(sde: SDE, known: Tensor, mask: Tensor, generator: Generator = None) -> _loop.Project:
    """The ``project`` hook of Song et al.'s replacement method: x[mask] <- alpha(t') y + sigma(t') z
    at the step's end time t', fresh z each step (drawn through ``_loop.randn_like``)."""
    def project(k: int, x: Tensor, t_next: Tensor) -> Tensor:
        alpha, sigma = sde.marginal_coeffs(t_next, x)
        noised = batch_broadcast(alpha, x) * known + batch_broadcast(sigma, x) * _loop.randn_like(x, generator)
        return torch.where(mask, noised, x)
    return project


def pigdm_score(score_fn: Callable, sde: SDE, known: Tensor, mask: Tensor, data_var: float = 1.0) -> Callable:
    """ΠGDM's guided score s + (∂x̂_0/∂x)^T A^T (y - A x̂_0) / r_t^2 (see the module docstring) for the
    selection A of ``mask``; gradients are enabled here, as the samplers run under no_grad."""
    def score(x: Tensor, t) -> Tensor:
        alpha, sigma = sde.marginal_coeffs(t, x)
        r2 = data_var * sigma ** 2 / (alpha ** 2 * data_var + sigma ** 2)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = score_fn(xg, t)
            if not s.requires_grad:  # the guidance would silently drop the score's Jacobian
                raise ValueError("method 'pigdm' differentiates score_fn with respect to x, but its output has no "
                                 "gradient (does score_fn run under torch.no_grad or detach its output?)")
            x0 = (xg + batch_broadcast(sigma ** 2, x) * s) / batch_broadcast(alpha, x)
            residual = torch.where(mask, known - x0, 0.0) / batch_broadcast(r2, x)
            guide, = torch.autograd.grad(x0, xg, grad_outputs=residual.detach())
        return s.detach() + guide
    return score


def inpaint(sampler, score_fn: Callable, sde: SDE, x_T: Tensor, *, known: Tensor, mask: Tensor,
            method: str = "replace", generator: Generator = None, data_var: float = 1.0, **options) -> Tensor:
    """Fill the entries of x where ``mask`` is 0, given ``known`` where it is 1, with ``sampler``.

    ``sampler``: a sampler function or a name from ``SAMPLERS``; ``x_T`` the prior draw to start
    from; ``known`` (B, ...) the observed values (broadcastable to x_T; entries outside the mask
    are ignored); ``mask`` broadcastable to x_T, bool or float 0/1 (1 = known). ``method``:
    "replace", "pigdm" or "pigdm+replace" (module docstring); "replace" needs a fixed-grid sampler
    (``probability_flow``, ``reverse_sde`` and ``adaptive_sde`` have no per-step hook). ``data_var``:
    ΠGDM's data variance v. ``generator`` draws the replacement noise and is passed to the
    sampler with the other ``options`` (steps, eps, denoise, ...). The result's known part is
    exactly ``known``.

    The replacement noise uses the SDE's continuous marginal (alpha(t), sigma(t)) at the hook's
    t_{k+1}; on a discrete chain (``timesteps=``) that is the continuous-time approximation of the
    chain's own coefficients (they differ by O(1/N)).
    """
    fn = _sampler(sampler)
    _checks.choice(method, "method", METHODS)
    if "project" in options:
        raise ValueError("project is not an option of inpaint: the method sets the sampler's per-step hook")
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    mask = _mask(mask, x)
    known = _known(known, mask, x)
    data_var = _checks.number(data_var, "data_var", 0.0, math.inf)
    if "replace" in method:
        if not _has_hook(fn):
            raise ValueError(f"method {method!r} needs a fixed-grid sampler with a per-step hook (euler_maruyama, "
                             f"ancestral, predictor_corrector, ddim, heun, dpm_solver); "
                             f"{getattr(fn, '__name__', fn)!r} has none (ODE/SDE-solver or adaptive): use method='pigdm'")
        options["project"] = replacement(sde, known, mask, generator)
    if "pigdm" in method:
        score = pigdm_score(score, sde, known, mask, data_var)
    out = fn(score, sde, x, generator=generator, **options)
    return torch.where(mask, known, out)


def decouple(x: Tensor) -> Tensor:
    """u = M x over the channel dimension 1 (M = ``COLOR_DECOUPLING``): u[:, 0] = sqrt(3) mean colour."""
    return torch.einsum("ij,bj...->bi...", COLOR_DECOUPLING.to(device=x.device, dtype=x.dtype), x)


def couple(u: Tensor) -> Tensor:
    """x = M^T u, the inverse of ``decouple``."""
    return torch.einsum("ji,bj...->bi...", COLOR_DECOUPLING.to(device=u.device, dtype=u.dtype), u)


def colorize(sampler, score_fn: Callable, sde: SDE, x_T: Tensor, *, gray: Tensor, method: str = "replace",
             generator: Generator = None, data_var: float = 1.0, **options) -> Tensor:
    """Colour images x (B, 3, ...) whose gray level ``gray`` (B, 1, ...) is known: gray is the mean of
    the three channels, gray = (x_0 + x_1 + x_2) / 3, on the data's own scale (e.g. [-1, 1]).

    Song et al. 2021's decoupling: u = M x with M orthogonal, first row (1, 1, 1) / sqrt(3), so
    u_0 = sqrt(3) gray is known and colorization is inpainting of u_1, u_2. The forward SDEs are
    isotropic, so they commute with M and the score of u is M s(M^T u, t). Runs ``inpaint`` there
    (same ``method``s and options) and returns M^T u, whose channel mean is ``gray`` up to rounding.
    Data shaped (B, 3, m) (m "pixels") work the same way. ``data_var`` (ΠGDM) is the variance of
    u_0 = sqrt(3) gray, i.e. 3 x the gray level's variance.
    """
    x = _checks.batch(x_T)
    if x.dim() < 2 or x.shape[1] != 3:
        raise ValueError(f"x_T must have 3 colour channels in dimension 1, (B, 3, ...), got {tuple(x.shape)}")
    want = (x.shape[0], 1) + tuple(x.shape[2:])
    if not torch.is_tensor(gray) or not gray.is_floating_point() or tuple(gray.shape) != want:
        got = f"shape {tuple(gray.shape)}, dtype {gray.dtype}" if torch.is_tensor(gray) else type(gray).__name__
        raise ValueError(f"gray must be a floating-point tensor of shape {want} (x_T's with one channel), got {got}")
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")
    gray = gray.to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(gray).all()):
        raise ValueError("gray contains NaN or infinite values")
    known = torch.cat([math.sqrt(3) * gray, torch.zeros_like(gray), torch.zeros_like(gray)], dim=1)
    mask = torch.zeros((1, 3) + (1,) * (x.dim() - 2), dtype=torch.bool, device=x.device)
    mask[:, 0] = True

    def decoupled_score(u: Tensor, t) -> Tensor:
        return decouple(score_fn(couple(u), t))

    u = inpaint(sampler, decoupled_score, sde, decouple(x), known=known, mask=mask, method=method,
                generator=generator, data_var=data_var, **options)
    return couple(u)
