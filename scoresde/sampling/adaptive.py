"""Adaptive-step reverse-SDE sampling (Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When
Generating Data with Score-Based Models", Algorithm 1), with one step size per sample.

Each iteration proposes, for every sample still above eps, a step of size h from t to t - h with
one Gaussian draw z shared by two stages:

    x'  = x - h [f(x, t) - g(t)^2 score(x, t)] + g(t) sqrt(h) z                 (Euler–Maruyama)
    x~  = x - h [f(x', t-h) - g(t-h)^2 score(x', t-h)] + g(t-h) sqrt(h) z
    x'' = (x' + x~) / 2                                                         (improved Euler)

The local error is estimated by the scaled norm E = ||(x' - x'') / delta||_2 / sqrt(n) with
delta = max(atol, rtol max(|x'|, |x|)) elementwise (n = elements per sample). The step is accepted
when E <= 1, keeping the more accurate x'' (extrapolation); either way the next step size is
h <- min(t - eps, safety h E^(-exponent)). The samples finish at exactly t = eps.

Rejections keep their noise ("rejection sampling with memory", Rackauckas & Nie 2017). The
paper draws a fresh z after a rejection; since the error estimate depends on z, that accepts small
draws more often than large ones and under-disperses the samples, the more so the more steps are
rejected and the fewer the dimensions (on the 2-D test mixture under VE the samples fail the
two-sample test, worse at tighter tolerances). Here every attempted step's Brownian increment dW
stays part of the sample's Brownian path: a rejected (h, dW) is pushed on a per-sample stack, and
the next, shorter step takes its increment from the Brownian bridge inside it (and leaves the rest
on the stack), so the path is never redrawn. ``memory=False`` gives the paper's redraw.

The loop reads three integers per iteration on the host (are all samples done; how deep is the
deepest stack; was anything non-finite): an adaptive solver cannot know its step count in advance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import _checks
from ..sde import SDE, batch_broadcast
from ._loop import end_coeffs, randn_like, tweedie_at
from ._ode import reverse_drift


@dataclass(frozen=True)
class AdaptiveStats:
    """What an ``adaptive_sde`` run cost: ``nfe`` batched score evaluations (denoising included),
    and per sample the ``accepted`` and ``rejected`` step counts (int64 tensors of shape (B,))."""

    nfe: int
    accepted: Tensor
    rejected: Tensor


class _BrownianStacks:
    """Per-sample stacks of not-yet-used pieces (h, dW) of each sample's Brownian path, the top
    piece starting at the sample's current time."""

    def __init__(self, x: Tensor):
        self.B = x.shape[0]
        self.rows = torch.arange(self.B, device=x.device)
        self.depth = torch.zeros(self.B, dtype=torch.long, device=x.device)
        self.h = torch.zeros(self.B, 1, dtype=torch.float64, device=x.device)
        self.w = torch.zeros((self.B, 1) + x.shape[1:], dtype=x.dtype, device=x.device)

    def reserve(self, max_depth: int):
        """Room for one more piece on every stack (at most one is pushed per iteration)."""
        if max_depth + 1 >= self.h.shape[1]:
            self.h = torch.cat([self.h, torch.zeros_like(self.h)], dim=1)
            self.w = torch.cat([self.w, torch.zeros_like(self.w)], dim=1)

    def take(self, h: Tensor, xi: Tensor) -> Tuple[Tensor, Tensor]:
        """The increment over the next step of (at most) ``h``: from the top piece where there is
        one (all of it if h reaches its end, else a Brownian-bridge draw inside it, the rest
        staying on top), else fresh, sqrt(h) xi. Returns the step actually taken and dW."""
        has = self.depth > 0
        top = (self.depth - 1).clamp(min=0)
        h_top, w_top = self.h[self.rows, top], self.w[self.rows, top]
        whole = has & (h >= h_top)
        split = has & ~whole
        h = torch.where(whole, h_top, h)
        q = torch.where(split, h / h_top.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
        bridge = batch_broadcast(q.to(xi.dtype), xi) * w_top + batch_broadcast((h * (1 - q)).sqrt().to(xi.dtype), xi) * xi
        dw = torch.where(batch_broadcast(whole, xi), w_top, bridge)
        self.h[self.rows, top] = torch.where(split, h_top - h, h_top)
        self.w[self.rows, top] = torch.where(batch_broadcast(split, xi), w_top - dw, w_top)
        self.depth = self.depth - whole.long()
        return h, dw

    def push(self, mask: Tensor, h: Tensor, dw: Tensor):
        """Put (h, dW) back on top of the stacks where ``mask`` (the step was rejected)."""
        d = self.depth
        self.h[self.rows, d] = torch.where(mask, h, self.h[self.rows, d])
        self.w[self.rows, d] = torch.where(batch_broadcast(mask, dw), dw, self.w[self.rows, d])
        self.depth = d + mask.long()


@torch.no_grad()
def adaptive_sde(score_fn, sde: SDE, x_T: Tensor, *, rtol: float = 1e-2, atol: float = 1e-2, eps: float = 1e-3,
                 h_init: float = 1e-2, safety: float = 0.9, exponent: float = 0.9, memory: bool = True,
                 max_iters: int = 100_000, denoise: bool = True, generator: Optional[torch.Generator] = None,
                 progress: bool = False, return_stats: bool = False) -> Union[Tensor, Tuple[Tensor, AdaptiveStats]]:
    """Solve the reverse SDE from T to eps with per-sample adaptive steps (see the module docstring).

    ``rtol``/``atol`` set the error tolerance (the authors use atol = 1/128 and rtol 0.01–0.05 for
    images in [-1, 1]); ``h_init``, ``safety`` (theta) and ``exponent`` (r) are the paper's other
    parameters; ``memory=False`` redraws the noise of rejected steps as the paper does (biased).
    Each iteration costs two batched score evaluations; samples that have finished ride along with
    h = 0. With ``return_stats``, returns ``(samples, AdaptiveStats)``.
    """
    rtol, atol = _checks.tolerance(rtol, "rtol"), _checks.tolerance(atol, "atol")
    eps = _checks.eps(sde, eps)
    h_init = _checks.number(h_init, "h_init", 0.0, math.inf)
    safety = _checks.number(safety, "safety", 0.0, 1.0, closed=False)
    exponent = _checks.number(exponent, "exponent", 0.0, 1.0, closed=True)
    max_iters = _checks.positive_int(max_iters, "max_iters")
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    B, n = x.shape[0], x[0].numel()
    end = end_coeffs(sde, eps)
    # time is kept as the remaining span r = t - eps: h = min(r, ...) then makes r - h exactly 0
    span = torch.full((B,), sde.T - eps, device=x.device, dtype=torch.float64)
    h = span.clamp(max=h_init)
    accepted = torch.zeros(B, dtype=torch.long, device=x.device)
    rejected = torch.zeros_like(accepted)
    stacks = _BrownianStacks(x) if memory else None
    tiny = torch.finfo(x.dtype).tiny
    nonfinite = torch.zeros((), dtype=torch.bool, device=x.device)
    bar = tqdm(desc="adaptive_sde", unit="step", leave=False) if progress else None
    iters = 0

    while True:
        depth = stacks.depth.max() if memory else span.new_zeros((), dtype=torch.long)
        active, max_depth, bad = torch.stack([(span > 0).any().long(), depth, nonfinite.long()]).tolist()
        if bad:  # a NaN error estimate rejects every step forever: stop at once
            raise _checks.NonFiniteError("adaptive_sde: the score function returned non-finite values "
                                         "(NaN or inf in the error estimate)")
        if not active:
            break
        if iters == max_iters:
            raise RuntimeError(f"adaptive_sde: samples still above eps after max_iters={max_iters} iterations; "
                               "loosen rtol/atol or raise max_iters")
        iters += 1
        xi = randn_like(x, generator)
        if memory:
            stacks.reserve(max_depth)
            h, dw = stacks.take(h, xi)
        else:
            dw = batch_broadcast(h.sqrt().to(x.dtype), x) * xi
        t_now = (eps + span).to(x.dtype)
        t_next = (eps + (span - h)).to(x.dtype)
        hx = batch_broadcast(h.to(x.dtype), x)
        x_em = x - hx * reverse_drift(sde, score, x, t_now) + batch_broadcast(sde._diffusion(t_now), x) * dw
        x_tilde = x - hx * reverse_drift(sde, score, x_em, t_next) + batch_broadcast(sde._diffusion(t_next), x) * dw
        x_heun = 0.5 * (x_em + x_tilde)
        delta = torch.maximum(torch.full_like(x, atol), rtol * torch.maximum(x_em.abs(), x.abs()))
        err = ((x_em - x_heun) / delta).reshape(x.shape[0], -1).norm(dim=1).double() / math.sqrt(n)
        nonfinite = nonfinite | ~torch.isfinite(err).all()
        ok = (err <= 1) & (span > 0)
        refused = (err > 1) & (span > 0)
        if memory:
            stacks.push(refused, h, dw)
        x = torch.where(batch_broadcast(ok, x), x_heun, x)
        span = torch.where(ok, span - h, span)
        accepted += ok
        rejected += refused
        h = torch.minimum(span, safety * h * err.clamp(min=tiny) ** -exponent)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    nfe = 2 * iters
    if denoise:
        x = tweedie_at(score, sde, x, eps, per_sample=True, coeffs=end)  # t laid out as the loop's per-sample times
        nfe += 1
    _checks.finite_result(x, "adaptive_sde")
    return (x, AdaptiveStats(nfe, accepted, rejected)) if return_stats else x
