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
a few nodes and integrate that polynomial against the exponential (the weights are computed once
per grid in float64, before the loop; exact integrals by Gauss–Legendre quadrature):

- multistep (order q, one NFE per step): the nodes are the last q grid points; the first steps use
  lower orders while the history fills, and with ``lower_order_final`` and fewer than 15 steps so
  do the last ones, which the authors recommend for stability at very few steps;
- singlestep (order q, q NFE per step): stages at lambda_s + r h, r = 1/2 (order 2) or 1/3, 2/3
  (order 3), each stage and the final update using the line through node 0 and the previous
  stage: DPM-Solver-2 / -3 (and DPM-Solver++(2S) for data prediction).

A second-order update (two nodes: the line p(u) through them) comes in two forms, diffusers'
``solver_type``, both second order and equally cheap:

- ``"midpoint"`` (the papers' formulas): the line is frozen at the step's log-SNR midpoint, the
  integral ∫_0^h K(u) p(u) du above becoming (∫_0^h K) p(h/2). Multistep with data prediction
  this is DPM-Solver++(2M), Algorithm 2 of Lu et al. 2022: D = (1 + 1/(2r)) x0_k - 1/(2r) x0_(k-1),
  r = h_(k-1) / h_k, x_(k+1) = (sigma_(k+1) / sigma_k) x_k + alpha_(k+1) (1 - e^-h) D
  (k-diffusion's ``sample_dpmpp_2m``, diffusers' default); singlestep with r = 1/2 it is DPM-Solver-2 and
  DPM-Solver++(2S) as the papers' Algorithm 1 writes them (only the midpoint stage's prediction).
- ``"heun"``: the line integrated exactly against the kernel K, ∫_0^h K(u) p(u) du (the
  phi-function form, diffusers' ``solver_type="heun"``).

Third-order updates have one form, the exact integral of the quadratic interpolant (3S: the first
paper's DPM-Solver-3); the corrector is always the exact integral. The 3M update of the authors'
code and of diffusers is not this one: its second divided difference D2 = (D1_0 - D1_1) / (r0 + r1)
approximates h^2 x0''/2 but is weighted by phi_3, the coefficient of h^2 x0'', so it carries half
the quadratic term and is second order; ``order=3`` therefore differs from diffusers'
``solver_order=3`` (by 1e-3 to 1e-2 relative at 5–20 steps, tests/test_dpm_references.py).

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
#: forms of the second-order update (diffusers' names), see the module docstring
SOLVER_TYPES = ("midpoint", "heun")
#: lower_order_final only acts on runs of fewer steps than this (the authors' and diffusers' threshold)
LOWER_ORDER_FINAL_BELOW = 15
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


def midpoint_weights(h: float, nodes: Sequence[float], predict: str) -> List[float]:
    """(∫_0^h K(u) du) L_j(h/2): the interpolant of ``nodes`` frozen at the step's midpoint u = h/2
    instead of integrated. With the nodes 0 and -h_prev (multistep, r = h_prev / h) the weights are
    (∫K) (1 + 1/(2r), -1/(2r)), DPM-Solver(++)'s "midpoint" second-order update."""
    total = -np.expm1(-h) if predict == "x0" else np.expm1(h)
    out = []
    for j, nj in enumerate(nodes):
        basis = 1.0
        for m, nm in enumerate(nodes):
            if m != j:
                basis *= (0.5 * h - nm) / (nj - nm)
        out.append(float(total * basis))
    return out


class _Point:
    """A time with its marginal coefficients and log-SNR, as Python floats."""

    __slots__ = ("alpha", "sigma", "lam")

    def __init__(self, alpha: float, sigma: float):
        self.alpha, self.sigma = alpha, sigma
        self.lam = float(np.log(alpha) - np.log(sigma))


def _update(predict: str, a: _Point, b: _Point, nodes: Sequence[_Point],
            solver_type: str = "heun") -> Tuple[float, List[float]]:
    """(A, W) of x_b = A x_a + sum_j W_j pred_j, pred_j the prediction at ``nodes[j]``. Two nodes
    with ``solver_type="midpoint"`` take the midpoint form, everything else the exact integral."""
    weights = midpoint_weights if (solver_type == "midpoint" and len(nodes) == 2) else exponential_weights
    w = weights(b.lam - a.lam, [n.lam - a.lam for n in nodes], predict)
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
                      corrector: bool = False, lower_order_final: bool = True, solver_type: str = "midpoint",
                      final_zero_step: bool = False) -> _loop.Step:
    """DPM-Solver(++) multistep of ``order`` on ``grid``: one score evaluation per step.

    Second-order updates (every step after the first at order 2; the second step, and with
    ``lower_order_final`` the last but one, at order 3) take the form ``solver_type``.
    ``lower_order_final``: on runs of fewer than 15 steps the last step is first order and the one
    before at most second order. ``final_zero_step``: the run goes on past the grid with a
    first-order step to sigma = 0 (the caller's Tweedie step), which then counts as the run's last
    step, as diffusers counts its final step to sigma = 0.

    With ``corrector``, each new point is corrected once the prediction there is known, by the
    same update with that prediction added as a node (an exponential Adams–Moulton step, one order
    higher, as in UniPC's corrector; always the exact integral, whatever ``solver_type``). The
    prediction made before the correction is the one kept in the history, so the corrector costs
    no evaluation; the last point is not corrected.
    """
    _checks.choice(solver_type, "solver_type", SOLVER_TYPES)
    _checks.choice(lower_order_final, "lower_order_final", (True, False))
    points = [_Point(a, s) for a, s in zip(grid.alpha.tolist(), grid.sigma.tolist())]
    n = grid.steps
    total = n + 1 if final_zero_step else n
    lower_final = lower_order_final and total < LOWER_ORDER_FINAL_BELOW
    coefs, corr = [], []
    for k in range(n):
        q = min(order, k + 1, total - k) if lower_final else min(order, k + 1)
        nodes = [points[k - j] for j in range(q)]
        coefs.append(_update(predict, points[k], points[k + 1], nodes, solver_type))
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
                       predict: str = "x0", solver_type: str = "midpoint") -> _loop.Step:
    """DPM-Solver(++) singlestep of ``order`` on ``grid``: ``order`` score evaluations per step.

    ``solver_type`` sets the final update of order 2 (DPM-Solver-2 / DPM-Solver++(2S)); order 3
    is DPM-Solver-3, whose stages and final update are exact integrals whatever its value (its
    third order rests on them)."""
    _checks.choice(solver_type, "solver_type", SOLVER_TYPES)
    form = solver_type if order == 2 else "heun"
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
        coefs.append([(stage, _update(predict, a, route[m], [a] if m == 1 else [a, route[m - 1]], form))
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


@torch.no_grad()
def dpm_solver(score_fn, sde: SDE, x_T: Tensor, *, steps: int = 20, order: int = 2, multistep: bool = True,
               predict: str = "x0", solver_type: str = "midpoint", lower_order_final: bool = True,
               corrector: bool = False, eps: float = 1e-3, schedule: Schedule = "logsnr",
               timesteps=None, denoise: bool = True, generator: Optional[torch.Generator] = None,
               progress: bool = False, project: Optional[_loop.Project] = None) -> Tensor:
    """DPM-Solver (``predict="eps"``) or DPM-Solver++ (``predict="x0"``, the default) of ``order``
    1–3 on the probability-flow ODE from T to eps (see the module docstring for the update).

    NFE: ``steps`` multistep, ``order * steps`` singlestep (plus one for ``denoise``). The default
    grid is uniform in log-SNR, the authors' choice for few steps. ``timesteps`` (multistep only)
    runs on discrete chain indices as ``ddim`` does. Deterministic: ``generator`` is unused.

    ``solver_type`` (diffusers' names) is the form of the second-order updates: every multistep
    step after the first at ``order=2`` (and the second-order steps of an ``order=3`` run: its
    second step, and with ``lower_order_final`` its last but one), and the final update of
    singlestep ``order=2``. ``"midpoint"``, the default, is the papers' formula, so that
    ``order=2, multistep=True, predict="x0"`` is DPM-Solver++(2M) as published and as k-diffusion's
    ``sample_dpmpp_2m`` and diffusers' default DPMSolverMultistepScheduler compute it (the same
    numbers across libraries); ``"heun"`` integrates the linear interpolant of the predictions
    exactly against the exponential kernel, the form this function used before the option existed.
    Both are second order at the same cost, and neither is more accurate in general (which has
    the smaller error constant depends on the method and the data); "midpoint" is the default
    because it is the published method that the name DPM-Solver++(2M) promises and that other
    libraries' numbers come from. Order 3 updates and the corrector have one form (the exact
    integral) and ignore it; see the module docstring for how order 3 relates to diffusers'.

    ``lower_order_final`` (default True, the authors' and diffusers' default): on a run of fewer
    than 15 steps, the last step is first order and the last but one at most second order, for
    stability at very few steps; False keeps the full order to the end. On a continuous grid the
    steps counted are the grid's (the ``denoise`` step comes on top, as in the authors' code). With
    ``timesteps`` and ``denoise``, the Tweedie step, which is exactly the first-order step to
    sigma = 0 (alpha-bar = 1), counts as the last step, as in diffusers (``final_sigmas_type=
    "zero"``, whose step to sigma = 0 is always first order): the defaults then reproduce
    DPMSolverMultistepScheduler's defaults on its timesteps at every step count. Without
    ``denoise`` the run ends on the grid, which is diffusers' ``final_sigmas_type="sigma_min"``
    with the index 0 appended to its timesteps.

    ``corrector`` (multistep only) adds UniPC's idea at no extra NFE: once the prediction at a new
    point is known, the point is recomputed by the same exponential update with that prediction as
    an extra interpolation node (exponential Adams–Moulton, the exact integral), raising the order
    by one.

    ``project``: optional per-step hook ``project(k, x, t_next) -> x``, called after step k (after
    all stages of a singlestep step) with x at t_{k+1} (see ``_loop.run``); its result replaces x.
    The multistep solver keeps its history of predictions: each was made at a point as projected
    then, and the next step combines them with the projected x_{k+1}, so the interpolant mixes
    predictions from before and after later projections (the price of one NFE per step; a
    projection that moves x little, like re-noising observed values, hardly disturbs it).
    ``corrector=True`` does not take ``project``: it recomputes x_{k+1} from x_k after the fact and
    would undo the projection of x_{k+1}.
    """
    _checks.choice(_checks.positive_int(order, "order"), "order", (1, 2, 3))
    _checks.choice(predict, "predict", PREDICTIONS)
    _checks.choice(solver_type, "solver_type", SOLVER_TYPES)
    _checks.choice(lower_order_final, "lower_order_final", (True, False))
    if timesteps is not None and not multistep:
        raise ValueError("timesteps (discrete chain indices) needs multistep=True: singlestep stages fall between them")
    if corrector and not multistep:
        raise ValueError("corrector needs multistep=True: it reuses the next step's prediction")
    if corrector and project is not None:
        raise ValueError("project needs corrector=False: the corrector recomputes each point from the previous "
                         "one after the step and would undo the projection")
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    grid = make_grid(sde, steps, eps, schedule, timesteps)
    if multistep:
        step = multistep_stepper(score, grid, order, predict, corrector=bool(corrector),
                                 lower_order_final=bool(lower_order_final), solver_type=solver_type,
                                 final_zero_step=bool(denoise) and timesteps is not None)
    else:
        step = singlestep_stepper(score, sde, grid, x, order, predict, solver_type)
    return _loop.run(score, grid, step, x, denoise=denoise, progress=progress, desc="dpm_solver", project=project)
