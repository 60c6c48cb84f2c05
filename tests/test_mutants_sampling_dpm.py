"""Tests written for the survivors of mutation testing on sampling/dpm_solver.py (mutation/REPORT.md):
the public defaults (20 steps, no progress bar) and the multistep stepper's defaults as the
predictor–corrector sampler uses them (first-order final steps, no corrector, no extra step)."""
import pytest
import torch

from scoresde import VPSDE, VESDE
from scoresde import sampling as S

from conftest import counting


def test_default_dpm_solver_is_20_multistep_steps_plus_the_denoising_step(mixture):
    sde = VPSDE()
    score, calls = counting(mixture.score_fn(sde))
    S.dpm_solver(score, sde, sde.prior_sampling((4, 2), generator=torch.Generator().manual_seed(0)))
    assert len(calls) == 21


def test_dpm_solver_shows_no_progress_bar_by_default(mixture, capfd):
    sde = VPSDE()
    S.dpm_solver(mixture.score_fn(sde), sde, sde.prior_sampling((4, 2)), steps=3)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("steps", [4, 8])
def test_multistep_predictor_without_corrector_is_dpm_solver(mixture, sde, steps):
    """predictor_corrector with the multistep DPM-Solver predictor and no corrector runs exactly
    dpm_solver's default multistep update (lower-order final steps below 15 steps, no corrector, no
    extra step) on the same uniform grid."""
    x_T = mixture.marginal(sde, 1.0).sample(64, torch.Generator().manual_seed(1), dtype=torch.float64)
    a = S.predictor_corrector(mixture.score_fn(sde), sde, x_T, steps=steps, predictor="dpm_solver",
                              predictor_options={"multistep": True}, corrector=None)
    b = S.dpm_solver(mixture.score_fn(sde), sde, x_T, steps=steps, schedule="uniform")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
