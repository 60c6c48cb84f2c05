"""Tests written for the survivors of mutation testing on sampling/stochastic.py (mutation/REPORT.md):
the public defaults (1,000 steps, N for ancestral, no progress bar), the per-step hook, and the
DPM-Solver predictor's options against dpm_solver itself on the same uniform grid."""
import math

import pytest
import torch

from scoresde import VPSDE
from scoresde import sampling as S

from conftest import counting


@pytest.mark.parametrize("sampler,kwargs,nfe", [
    (S.euler_maruyama, {}, 1001),
    (S.predictor_corrector, {"corrector": None}, 1001),
    (S.ancestral, {}, 51),            # the SDE's own N = 50 steps, plus the denoising step
], ids=["euler_maruyama", "predictor_corrector", "ancestral"])
def test_default_step_counts(mixture, sampler, kwargs, nfe):
    sde = VPSDE(N=50)
    score, calls = counting(mixture.score_fn(sde))
    sampler(score, sde, torch.zeros(2, 2), generator=torch.Generator().manual_seed(0), **kwargs)
    assert len(calls) == nfe


def test_ancestral_default_is_the_full_chain(mixture):
    sde = VPSDE(N=50)
    x_T = mixture.marginal(sde, 1.0).sample(8, torch.Generator().manual_seed(0))
    a = S.ancestral(mixture.score_fn(sde), sde, x_T, generator=torch.Generator().manual_seed(1))
    b = S.ancestral(mixture.score_fn(sde), sde, x_T, steps=50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", [S.euler_maruyama, S.ancestral, S.predictor_corrector],
                         ids=["euler_maruyama", "ancestral", "predictor_corrector"])
def test_no_progress_bar_by_default_and_the_hook_is_called(mixture, sampler, capfd):
    sde = VPSDE(N=50)
    seen = []
    sampler(mixture.score_fn(sde), sde, torch.zeros(2, 2), steps=5, project=lambda k, x, t: seen.append(k) or x)
    assert seen == [0, 1, 2, 3, 4]
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("options", [{}, {"order": 1}, {"predict": "eps"}, {"multistep": True, "predict": "eps"}],
                         ids=["default", "order 1", "eps", "multistep eps"])
def test_dpm_solver_predictor_is_dpm_solver(mixture, options):
    """predictor_corrector's "dpm_solver" predictor without a corrector is dpm_solver on the same uniform
    grid: singlestep order 2, x0-prediction unless told otherwise."""
    sde = VPSDE()
    x_T = mixture.marginal(sde, 1.0).sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    a = S.predictor_corrector(mixture.score_fn(sde), sde, x_T, steps=6, predictor="dpm_solver", corrector=None,
                              predictor_options=options)
    b = S.dpm_solver(mixture.score_fn(sde), sde, x_T, steps=6, schedule="uniform",
                     **{"multistep": False, "order": 2, **options})
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def vp_alpha(sde, t):
    return math.exp(-0.25 * t ** 2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min)


@pytest.mark.parametrize("corrector", ["langevin", "annealed_langevin"])
def test_corrector_steps_are_their_formula(mixture, corrector):
    """Three grid times, no predictor: x <- x + delta s + sqrt(2 delta) z at t_0 and t_1 (and t_2 is the
    end), with a_k^2 = (alpha(t_k) / alpha(t_{k+1}))^2 from the closed-form alpha, and delta =
    2 a_k^2 (snr ||z|| / ||s||)^2 (norms averaged over the batch) or 2 a_k^2 (snr sigma(t_k))^2."""
    sde, snr, steps = VPSDE(), 0.16, 2
    x_T = mixture.marginal(sde, 1.0).sample(32, torch.Generator().manual_seed(0), dtype=torch.float64)
    got = S.predictor_corrector(mixture.score_fn(sde), sde, x_T, steps=steps, predictor=None, corrector=corrector,
                                snr=snr, denoise=False, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    eps = 1e-3
    t = [1.0 + (eps - 1.0) * k / steps for k in range(steps + 1)]
    x = x_T.clone()
    for k in range(steps):
        a2 = (vp_alpha(sde, t[k]) / vp_alpha(sde, t[k + 1])) ** 2
        s = mixture.score(x, torch.full((32,), t[k], dtype=torch.float64), sde)
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        if corrector == "langevin":
            delta = 2 * a2 * (snr * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2
        else:
            delta = 2 * a2 * (snr * math.sqrt(1 - vp_alpha(sde, t[k]) ** 2)) ** 2
        x = x + delta * s + (2 * delta) ** 0.5 * z
    torch.testing.assert_close(got, x, rtol=1e-10, atol=1e-10)


def test_predictor_corrector_shows_no_bar_by_default(mixture, capfd):
    sde = VPSDE()
    S.predictor_corrector(mixture.score_fn(sde), sde, torch.zeros(2, 2), steps=3)
    assert capfd.readouterr().err == ""
