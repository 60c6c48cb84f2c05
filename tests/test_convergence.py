"""Convergence order of the fixed-step ODE samplers (torchdiffeq's, DDIM, DPM-Solver, Heun), measured pathwise against a tight dopri5
solution of the same probability-flow ODE from the same x_T (float64, exact mixture score).

The error e(n) after n steps behaves like C n^-p; the slope of log2 e against log2 n over two
doublings in the asymptotic range must be the promised order p (to within the O(1/n) drift of a
finite-step slope, allowed as -0.15 / +0.35)."""
import math

import pytest
import torch

from scoresde import sampling as S
from conftest import make_sdes

EPS = 1e-3

# (label, sampler, options, order, step counts in the asymptotic regime for all three SDEs)
METHODS = [
    ("euler", S.probability_flow, dict(method="euler"), 1, (512, 1024, 2048)),
    ("midpoint", S.probability_flow, dict(method="midpoint"), 2, (64, 128, 256)),
    ("heun", S.probability_flow, dict(method="heun"), 2, (64, 128, 256)),
    ("heun3", S.probability_flow, dict(method="heun3"), 3, (64, 128, 256)),
    ("rk4", S.probability_flow, dict(method="rk4"), 4, (128, 256, 512)),
    ("ddim", S.ddim, dict(), 1, (64, 128, 256)),
    ("ddim:logsnr", S.ddim, dict(schedule="logsnr"), 1, (64, 128, 256)),
    # DPM-Solver++ (x0) and DPM-Solver (eps), multistep (M) and singlestep (S), on the log-SNR grid
    ("dpm_solver:2M", S.dpm_solver, dict(order=2), 2, (128, 256, 512)),
    ("dpm_solver:3M", S.dpm_solver, dict(order=3), 3, (128, 256, 512)),
    ("dpm_solver:2S", S.dpm_solver, dict(order=2, multistep=False), 2, (128, 256, 512)),
    ("dpm_solver:3S", S.dpm_solver, dict(order=3, multistep=False), 3, (256, 512, 1024)),
    ("dpm_solver:2M,eps", S.dpm_solver, dict(order=2, predict="eps"), 2, (128, 256, 512)),
    ("dpm_solver:3M,eps", S.dpm_solver, dict(order=3, predict="eps"), 3, (256, 512, 1024)),
    ("dpm_solver:3S,eps", S.dpm_solver, dict(order=3, multistep=False, predict="eps"), 3, (256, 512, 1024)),
    ("dpm_solver:2M,uniform", S.dpm_solver, dict(order=2, schedule="uniform"), 2, (128, 256, 512)),
    # the multistep corrector raises the order by one
    ("dpm_solver:1M+corrector", S.dpm_solver, dict(order=1, corrector=True), 2, (128, 256, 512)),
    ("dpm_solver:2M+corrector", S.dpm_solver, dict(order=2, corrector=True), 3, (128, 256, 512)),
    ("dpm_solver:2M+corrector,eps,quadratic", S.dpm_solver, dict(order=2, corrector=True, predict="eps",
                                                                 schedule="quadratic"), 3, (128, 256, 512)),
    # EDM's Heun, on the Karras grid and on a uniform one
    ("heun:karras", S.heun, dict(), 2, (256, 512, 1024)),
    ("heun:uniform", S.heun, dict(schedule="uniform"), 2, (64, 128, 256)),
]


@pytest.fixture(scope="module")
def references(mixture):
    out = {}
    for name, sde in make_sdes().items():
        x_T = mixture.marginal(sde, 1.0).sample(32, torch.Generator().manual_seed(0), dtype=torch.float64)
        score = mixture.score_fn(sde)
        ref = S.probability_flow(score, sde, x_T, rtol=1e-13, atol=1e-13, eps=EPS, denoise=False)
        out[name] = (sde, score, x_T, ref)
    return out


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("label,sampler,options,order,ns", METHODS, ids=[m[0] for m in METHODS])
def test_convergence_order(references, sde_name, label, sampler, options, order, ns):
    sde, score, x_T, ref = references[sde_name]
    errors = [(sampler(score, sde, x_T, steps=n, eps=EPS, denoise=False, **options) - ref).norm(dim=1).max().item()
              for n in ns]
    slope = math.log2(errors[0] / errors[-1]) / math.log2(ns[-1] / ns[0])
    assert order - 0.15 <= slope <= order + 0.35, f"{label} on {sde_name}: errors {errors}, slope {slope:.2f}, promised {order}"
    assert errors[-1] > 1e-9, "reference solution not accurate enough to measure this order"


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("predict", ["x0", "eps"])
def test_third_order_multistep_with_corrector_is_fourth_order(references, sde_name, predict):
    """3M + corrector: order 4. Its error constant changes sign in the pre-asymptotic range (local
    slopes between 3 and 5.5 over 64–1024 steps), so only the slope over 128 -> 1024 is judged,
    and only from below."""
    sde, score, x_T, ref = references[sde_name]
    errors = [(S.dpm_solver(score, sde, x_T, steps=n, order=3, corrector=True, predict=predict, eps=EPS,
                            denoise=False) - ref).norm(dim=1).max().item() for n in (128, 1024)]
    slope = math.log2(errors[0] / errors[1]) / 3
    assert slope >= 4 - 0.15, f"errors {errors}, slope {slope:.2f}"


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_error_shrinks_with_tolerance(references, method):
    """Tolerance proportionality: 1000x tighter rtol/atol gives at least 100x smaller global error."""
    sde, score, x_T, ref = references["vp"]
    err = [(S.probability_flow(score, sde, x_T, method=method, rtol=tol, atol=tol, eps=EPS, denoise=False) - ref).abs().max().item()
           for tol in (1e-5, 1e-8)]
    assert err[1] < err[0] / 100, err
