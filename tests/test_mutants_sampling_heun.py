"""Tests written for the survivors of mutation testing on sampling/heun.py (mutation/REPORT.md): EDM's
stochastic sampler (Karras et al. 2022, Algorithm 2) written out by hand on the VE SDE, where
s = sigma, against ``heun(..., churn=...)`` draw for draw; the churn window's closed ends; the
argument checks' accepted values; the defaults; the per-step hook."""
import math

import pytest
import torch

from scoresde import VESDE, VPSDE
from scoresde import sampling as S
from scoresde.sampling.grids import make_grid

SIGMA = VESDE()


def edm_algorithm_2(score, sde, x, grid_t, churn, churn_min, churn_max, churn_noise, generator):
    """EDM's stochastic sampler on the VE SDE (alpha = 1, s = sigma(t)), the last step corrected too (it
    ends at eps > 0), then the Tweedie denoising step."""
    t = grid_t.tolist()
    sig = [sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** ti for ti in t]
    n = len(t) - 1
    B = x.shape[0]
    for k in range(n):
        gamma = min(churn / n, math.sqrt(2) - 1) if churn_min <= sig[k] <= churn_max else 0.0
        s_hat = min(sig[k] * (1 + gamma), sig[0])
        t_hat = t[k]
        if s_hat > sig[k]:
            x = x + churn_noise * math.sqrt(s_hat ** 2 - sig[k] ** 2) * torch.randn(x.shape, generator=generator,
                                                                                  dtype=x.dtype)
            t_hat = math.log(s_hat / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
        d = -s_hat * score(x, torch.full((B,), t_hat, dtype=x.dtype))
        x_euler = x + (sig[k + 1] - s_hat) * d
        d2 = -sig[k + 1] * score(x_euler, torch.full((B,), t[k + 1], dtype=x.dtype))
        x = x + (sig[k + 1] - s_hat) * 0.5 * (d + d2)
    return x + sig[n] ** 2 * score(x, torch.full((B,), t[n], dtype=x.dtype))


CASES = {
    # churn below the cap (gamma = churn / steps), window open at both ends, default noise
    "small churn": dict(steps=10, churn=1.0),
    # churn above the cap (gamma = sqrt(2) - 1), a finite window, noise scaled
    "capped churn, window": dict(steps=10, churn=40.0, churn_min=0.05, churn_max=5.0, churn_noise=0.7),
}


@pytest.mark.parametrize("case", list(CASES))
def test_churned_heun_is_edm_algorithm_2(mixture, case):
    opts = CASES[case]
    sde = SIGMA
    x_T = mixture.marginal(sde, 1.0).sample(32, torch.Generator().manual_seed(0), dtype=torch.float64)
    got = S.heun(mixture.score_fn(sde), sde, x_T, generator=torch.Generator().manual_seed(3), **opts)
    grid = make_grid(sde, opts["steps"], 1e-3, "karras")
    expected = edm_algorithm_2(mixture.score_fn(sde), sde, x_T, grid.t, opts["churn"], opts.get("churn_min", 0.0),
                               opts.get("churn_max", math.inf), opts.get("churn_noise", 1.0),
                               torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("end", ["churn_min", "churn_max"])
def test_the_churn_window_includes_its_ends(mixture, end):
    """EDM's S_tmin <= s <= S_tmax: a window whose end is exactly a grid level churns that level."""
    sde = SIGMA
    grid = make_grid(sde, 6, 1e-3, "karras")
    level = float(grid.sigma[2])
    window = dict(churn_min=level, churn_max=level * 1.5) if end == "churn_min" else dict(churn_min=level / 1.5,
                                                                                           churn_max=level)
    x_T = mixture.marginal(sde, 1.0).sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    got = S.heun(mixture.score_fn(sde), sde, x_T, steps=6, churn=2.0, generator=torch.Generator().manual_seed(1),
                 **window)
    expected = edm_algorithm_2(mixture.score_fn(sde), sde, x_T, grid.t, 2.0, window["churn_min"], window["churn_max"],
                               1.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-11)
    unchurned = S.heun(mixture.score_fn(sde), sde, x_T, steps=6)
    assert not torch.allclose(got, unchurned)


def test_boundary_values_of_the_churn_arguments_are_accepted(mixture):
    sde = VPSDE()
    x_T = torch.zeros(2, 2)
    for opts in (dict(churn_noise=0.0), dict(churn_noise=0.5), dict(churn_max=0.5), dict(churn_min=0.3, churn_max=0.3)):
        S.heun(mixture.score_fn(sde), sde, x_T, steps=2, churn=1.0, **opts)


def test_defaults_are_18_deterministic_steps_without_a_bar(mixture, capfd):
    sde = VPSDE()
    calls = []

    def score(x, t):
        calls.append(1)
        return mixture.score(x, t, sde)

    x_T = mixture.marginal(sde, 1.0).sample(8, torch.Generator().manual_seed(0))
    a = S.heun(score, sde, x_T)
    assert len(calls) == 2 * 18 + 1
    assert torch.equal(a, S.heun(mixture.score_fn(sde), sde, x_T, steps=18, churn=0.0))
    assert capfd.readouterr().err == ""


def test_heun_predictor_defaults_to_no_churn(mixture):
    """predictor_corrector's "heun" predictor without options is the deterministic Heun step."""
    sde = VPSDE()
    x_T = mixture.marginal(sde, 1.0).sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    a = S.predictor_corrector(mixture.score_fn(sde), sde, x_T, steps=6, predictor="heun", corrector=None,
                              generator=torch.Generator().manual_seed(2))
    b = S.heun(mixture.score_fn(sde), sde, x_T, steps=6, schedule="uniform")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_heun_calls_the_hook_after_every_step(mixture):
    sde = VPSDE()
    seen = []
    S.heun(mixture.score_fn(sde), sde, torch.zeros(2, 2), steps=4, project=lambda k, x, t: seen.append(k) or x)
    assert seen == [0, 1, 2, 3]


def test_heun_predictor_with_churn_is_heun_with_churn(mixture):
    """The predictor's options reach heun_stepper with its own defaults for the rest (churn_min 0,
    churn_max inf, churn_noise 1): the same draws and the same samples as heun itself."""
    sde = VPSDE()
    x_T = mixture.marginal(sde, 1.0).sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    a = S.predictor_corrector(mixture.score_fn(sde), sde, x_T, steps=6, predictor="heun", corrector=None,
                              predictor_options={"churn": 2.0}, generator=torch.Generator().manual_seed(4))
    b = S.heun(mixture.score_fn(sde), sde, x_T, steps=6, schedule="uniform", churn=2.0,
               generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
