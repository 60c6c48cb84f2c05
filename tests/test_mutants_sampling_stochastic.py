"""Tests written for the survivors of mutation testing on sampling/stochastic.py (mutation/REPORT.md):
the public defaults (1,000 steps, N for ancestral, no progress bar), the per-step hook, and the
DPM-Solver predictor's options against dpm_solver itself on the same uniform grid."""
import pytest
import torch

from scoresde import VPSDE
from scoresde import sampling as S


def counting(fn):
    calls = []

    def score(x, t):
        calls.append(1)
        return fn(x, t)
    return score, calls


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


@pytest.mark.parametrize("sampler", [S.euler_maruyama, S.ancestral], ids=["euler_maruyama", "ancestral"])
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
