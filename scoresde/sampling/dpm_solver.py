"""DPM-Solver (Lu et al., NeurIPS 2022) and DPM-Solver++ (Lu et al., 2022) for VP, sub-VP and VE.

Every SDE of the package has Gaussian marginals x_t = alpha_t x_0 + sigma_t eps whose variance obeys
d sigma^2/dt = 2 f sigma^2 + g^2, so its probability-flow ODE is, with lambda = log(alpha / sigma),

    dx/dt = f(t) x - sigma_t (dlambda/dt) eps_hat(x, t),      eps_hat = -sigma_t score,

and its exact solution from s to t (h = lambda_t - lambda_s > 0, u = lambda - lambda_s) is

    x_t = (alpha_t / alpha_s) x_s - sigma_t ∫_0^h e^(h-u) eps_hat du        (noise prediction)
        = (sigma_t / sigma_s) x_s + alpha_t ∫_0^h e^(u-h) x0_hat du         (data prediction, "++")

with x0_hat = (x + sigma^2 score) / alpha. DPM-Solver's name is only used for VP in the paper; the
derivation needs nothing but these marginals, so VE (alpha = 1) and sub-VP work unchanged.

Both solvers here replace the prediction in the integral by the polynomial that interpolates it at
a few nodes and integrate that polynomial against the exponential *exactly* (the weights are
computed once per grid by Gauss–Legendre quadrature in float64):

- multistep (order q, one NFE per step): the nodes are the last q grid points; the first steps use
  lower orders while the history fills, and with fewer than 15 steps so do the last ones, which the
  authors recommend for stability at very few steps;
- singlestep (order q, q NFE per step): stages at lambda_s + r h, r = 1/2 (order 2) or 1/3, 2/3
  (order 3), each stage and the final update integrating the line through node 0 and the previous
  stage, which is DPM-Solver-2 / -3 (and DPM-Solver++(2S) for data prediction) in its exact-φ form.

Order 1 is DDIM in either prediction. Multistep runs can add a corrector (see ``dpm_solver``).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import _checks
from ..sde import SDE
from . import _loop
from .grids import Grid, Schedule, make_grid, t_from_logsnr

PREDICTIONS = ("x0", "eps")
#: stage positions r in (0, 1) of the singlestep solvers, by order
STAGES = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def exponential_weights(h: float, nodes: Sequence[float], predict: str) -> List[float]:
    """∫_0^h K(u) L_j(u) du for the Lagrange basis L_j of ``nodes`` (u-coordinates), K(u) = e^(u-h)
    for data prediction and e^(h-u) for noise prediction. 24-point Gauss–Legendre integrates these
    (polynomial x exponential, |h| ≲ 20) to float64 rounding."""
    u = 0.5 * h * (_GL_NODES + 1)
    kernel = np.exp(u - h) if predict == "x0" else np.exp(h - u)
    quad = 0.5 * h * _GL_WEIGHTS * kernel
    out = []
    for j, nj in enumerate(nodes):
        basis = np.ones_like(u)
        for m, nm in enumerate(nodes):
            if m != j:
                basis = basis * (u - nm) / (nj - nm)
        out.append(float(np.dot(quad, basis)))
    return out


class _Point:
    """A time with its marginal coefficients and log-SNR, as Python floats."""

    __slots__ = ("alpha", "sigma", "lam")

    def __init__(self, alpha: float, sigma: float):
        self.alpha, self.sigma = alpha, sigma
        self.lam = float(np.log(alpha) - np.log(sigma))


def _update(predict: str, a: _Point, b: _Point, nodes: Sequence[_Point]) -> Tuple[float, List[float]]:
    """(A, W) of x_b = A x_a + sum_j W_j pred_j, pred_j the prediction at ``nodes[j]``."""
    w = exponential_weights(b.lam - a.lam, [n.lam - a.lam for n in nodes], predict)
    if predict == "x0":
        return b.sigma / a.sigma, [b.alpha * wj for wj in w]
    return b.alpha / a.alpha, [-b.sigma * wj for wj in w]


def _combine(x: Tensor, A: float, W: Sequence[float], preds: Sequence[Tensor]) -> Tensor:
    out = A * x
    for w, p in zip(W, preds):
        out = torch.add(out, p, alpha=w)
    return out


def _predictor(score: Callable, predict: str) -> Callable[[Tensor, Tensor, _Point], Tensor]:
    if predict == "x0":
        return lambda x, t, p: torch.add(x, score(x, t), alpha=p.sigma ** 2) / p.alpha
    return lambda x, t, p: -p.sigma * score(x, t)


def multistep_stepper(score: Callable, grid: Grid, order: int = 2, predict: str = "x0",
                      corrector: bool = False, lower_order_final: bool = True) -> _loop.Step:
    """DPM-Solver(++) multistep of ``order`` on ``grid``: one score evaluation per step.

    With ``corrector``, each new point is corrected once the prediction there is known, by the
    same update with that prediction added as a node (an exponential Adams–Moulton step, one order
    higher, as in UniPC's corrector). The prediction made before the correction is the one kept in
    the history, so the corrector costs no evaluation; the last point is not corrected.
    """
    points = [_Point(a, s) for a, s in zip(grid.alpha.tolist(), grid.sigma.tolist())]
    n = grid.steps
    coefs, corr = [], []
    for k in range(n):
        q = min(order, k + 1, n - k) if (lower_order_final and n < 15) else min(order, k + 1)
        nodes = [points[k - j] for j in range(q)]
        coefs.append(_update(predict, points[k], points[k + 1], nodes))
        if corrector:
            corr.append(_update(predict, points[k], points[k + 1], [points[k + 1]] + nodes))
    pred = _predictor(score, predict)
    history: List[Tensor] = []
    x_prev: Optional[Tensor] = None

    def step(k: int, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        nonlocal x_prev
        p = pred(x, t, points[k])
        if corrector:
            if k > 0:  # redo the step that reached x_k, now with p as a node too
                A, W = corr[k - 1]
                x = _combine(x_prev, A, W, [p] + history)
            x_prev = x
        history.insert(0, p)
        del history[order:]
        A, W = coefs[k]
        return _combine(x, A, W, history)
    return step


def singlestep_stepper(score: Callable, sde: SDE, grid: Grid, like: Tensor, order: int = 2,
                       predict: str = "x0") -> _loop.Step:
    """DPM-Solver(++) singlestep of ``order`` on ``grid``: ``order`` score evaluations per step."""
    points = [_Point(a, s) for a, s in zip(grid.alpha.tolist(), grid.sigma.tolist())]
    n, r = grid.steps, STAGES[order]
    lam = torch.tensor([[a.lam + ri * (b.lam - a.lam) for ri in r] for a, b in zip(points[:-1], points[1:])],
                       dtype=torch.float64).reshape(n, len(r))
    stage_times = t_from_logsnr(sde, lam.flatten(), float(grid.t[-1]), float(grid.t[0])).reshape(n, len(r))
    stage_alpha, stage_sigma = (c.reshape(n, len(r)).tolist() for c in sde.marginal_coeffs(stage_times.flatten()))
    coefs = []
    for k in range(n):
        a, b = points[k], points[k + 1]
        stages = [_Point(al, si) for al, si in zip(stage_alpha[k], stage_sigma[k])]
        route = [a] + stages + [b]
        # stage m (and the final update, m = len(route) - 1) from a, through the line of node 0 and stage m - 1
        coefs.append([(stage, _update(predict, a, route[m], [a] if m == 1 else [a, route[m - 1]]))
                      for m, stage in enumerate(route[1:], start=1)])
    stage_t = stage_times.to(device=like.device, dtype=like.dtype)
    pred = _predictor(score, predict)

    def step(k: int, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        p0 = pred(x, t, points[k])
        prev = None
        for m, (point, (A, W)) in enumerate(coefs[k], start=1):
            x_m = _combine(x, A, W, [p0] if prev is None else [p0, prev])
            if m == len(coefs[k]):
                return x_m
            prev = pred(x_m, stage_t[k, m - 1].expand(x.shape[0]), point)
    return step


def dpm_solver(score_fn, sde: SDE, x_T: Tensor, *, steps: int = 20, order: int = 2, multistep: bool = True,
               predict: str = "x0", corrector: bool = False, eps: float = 1e-3, schedule: Schedule = "logsnr",
               timesteps=None, denoise: bool = True, generator: Optional[torch.Generator] = None,
               progress: bool = False) -> Tensor:
    """DPM-Solver (``predict="eps"``) or DPM-Solver++ (``predict="x0"``, the default) of ``order``
    1–3 on the probability-flow ODE from T to eps (see the module docstring for the update).

    NFE: ``steps`` multistep, ``order * steps`` singlestep (plus one for ``denoise``). The default
    grid is uniform in log-SNR, the authors' choice for few steps. ``timesteps`` (multistep only)
    runs on discrete chain indices as ``ddim`` does. Deterministic: ``generator`` is unused.

    ``corrector`` (multistep only) adds UniPC's idea at no extra NFE: once the prediction at a new
    point is known, the point is recomputed by the same exponential update with that prediction as
    an extra interpolation node (exponential Adams–Moulton), raising the order by one.
    """
    _checks.choice(_checks.positive_int(order, "order"), "order", (1, 2, 3))
    _checks.choice(predict, "predict", PREDICTIONS)
    if timesteps is not None and not multistep:
        raise ValueError("timesteps (discrete chain indices) needs multistep=True: singlestep stages fall between them")
    if corrector and not multistep:
        raise ValueError("corrector needs multistep=True: it reuses the next step's prediction")
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    grid = make_grid(sde, steps, eps, schedule, timesteps)
    if multistep:
        step = multistep_stepper(score, grid, order, predict, corrector=bool(corrector))
    else:
        step = singlestep_stepper(score, sde, grid, x, order, predict)
    return _loop.run(score, grid, step, x, denoise=denoise, progress=progress, desc="dpm_solver")
