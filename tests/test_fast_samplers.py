"""Exact checks of the samplers beyond the seeds (DPM-Solver, EDM Heun, adaptive SDE) that do not
need a sampling distribution: closed-form weights, reductions to DDIM, grids, and the Brownian
memory of the adaptive solver. Convergence orders are in test_convergence.py, distributions in
test_samplers.py."""
import math

import pytest
import torch

import scoresde as sd
from scoresde import sampling as S
from scoresde.sampling.adaptive import _BrownianStacks
from scoresde.sampling.dpm_solver import exponential_weights
from conftest import make_sdes

EPS = 1e-3


# ---- DPM-Solver's exponential-integrator weights -------------------------------------------------

def closed_form_moment(h, n, predict):
    """∫_0^h K(u) u^n du for K = e^(u-h) (x0) or e^(h-u) (eps), by repeated integration by parts."""
    if predict == "x0":  # ∫ e^(u-h) u^n = [e^(u-h) u^n] - n ∫ e^(u-h) u^(n-1)
        return h ** n - n * closed_form_moment(h, n - 1, predict) if n else -math.expm1(-h)
    # ∫ e^(h-u) u^n = [-e^(h-u) u^n] + n ∫ e^(h-u) u^(n-1)
    return -h ** n + n * closed_form_moment(h, n - 1, predict) if n else math.expm1(h)


@pytest.mark.parametrize("predict", ["x0", "eps"])
@pytest.mark.parametrize("h", [1e-3, 0.07, 0.9, 4.0, 15.0])
@pytest.mark.parametrize("nodes", [(0.0,), (0.0, -0.5), (0.0, -0.5, -1.3), (0.0, 0.4), (0.0, 1 / 3, 2 / 3)])
def test_weights_integrate_polynomials_exactly(predict, h, nodes):
    """Σ_j w_j p(u_j) = ∫_0^h K(u) p(u) du for every polynomial p of degree < len(nodes)."""
    u = [n * h for n in nodes]
    w = exponential_weights(h, u, predict)
    for degree in range(len(nodes)):
        exact = closed_form_moment(h, degree, predict)
        got = sum(wj * uj ** degree for wj, uj in zip(w, u))
        assert got == pytest.approx(exact, rel=1e-11, abs=1e-14 * max(1.0, abs(exact))), (degree, got, exact)


def point_mass(sde, m=(0.7, -1.2)):
    """Data that is a point mass at m: (score, x_T, the exact PF-ODE solution at EPS, (alpha_T,
    sigma_T, sigma_eps)). The solution is x_eps = alpha_eps m + (sigma_eps / sigma_T)(x_T - alpha_T m)."""
    m = torch.tensor([m], dtype=torch.float64)

    def score(x, t):
        alpha, sigma = sde.marginal_coeffs(t, x)
        return -(x - alpha[:, None] * m) / sigma[:, None] ** 2
    x_T = sde.prior_sampling((4, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    aT, sT = (float(c) for c in sde.marginal_coeffs(torch.tensor([sde.T], dtype=torch.float64)))
    ae, se = (float(c) for c in sde.marginal_coeffs(torch.tensor([EPS], dtype=torch.float64)))
    return score, x_T, ae * m + se / sT * (x_T - aT * m), (aT, sT, se)


@pytest.mark.parametrize("predict", ["x0", "eps"])
@pytest.mark.parametrize("multistep", [True, False])
@pytest.mark.parametrize("schedule", ["logsnr", "uniform", "karras"])
def test_order_one_is_ddim(sde, predict, multistep, schedule):
    """First order, in either prediction, is DDIM (eta = 0) on the same grid."""
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mix = sd.GaussianMixture([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]], [[[0.1, 0.0], [0.0, 0.2]], [[0.3, 0.1], [0.1, 0.2]]])
    score = mix.score_fn(sde)
    a = S.dpm_solver(score, sde, x_T, steps=12, order=1, predict=predict, multistep=multistep, schedule=schedule)
    b = S.ddim(score, sde, x_T, steps=12, schedule=schedule)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_order_one_on_chain_timesteps_is_ddim():
    sde = sd.VPSDE()
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mix = sd.GaussianMixture([1.0], [[0.5, -0.5]], [[[0.2, 0.0], [0.0, 0.1]]])
    idx = list(range(999, -1, -111))
    a = S.dpm_solver(mix.score_fn(sde), sde, x_T, order=1, timesteps=idx)
    b = S.ddim(mix.score_fn(sde), sde, x_T, timesteps=idx)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_point_mass_is_exact_for_every_variant():
    """For data that is a point mass at m, x0_hat = m at every time, a constant that every variant
    (either solver_type: the midpoint form freezes the interpolant at a constant too) integrates
    exactly: in three steps each lands on the ODE solution
    x_eps = alpha_eps m + (sigma_eps / sigma_T) (x_T - alpha_T m)."""
    for sde in make_sdes().values():
        score, x_T, exact, _ = point_mass(sde)
        for order in (1, 2, 3):
            for multistep in (True, False):
                for solver_type in ("midpoint", "heun"):
                    out = S.dpm_solver(score, sde, x_T, steps=3, order=order, multistep=multistep, eps=EPS,
                                       denoise=False, solver_type=solver_type, lower_order_final=False)
                    torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-10)


# ---- Heun -----------------------------------------------------------------------------------------

SCHEDULE = torch.tensor([1.0, 0.7, 0.4, 0.2, 0.05, 0.01], dtype=torch.float64)


class Times:
    def __init__(self, score):
        self.score, self.times = score, []

    def __call__(self, x, t):
        assert (t == t[0]).all()
        self.times.append(t[0].item())
        return self.score(x, t)


def test_heun_steps_along_explicit_schedule(sde):
    """Two evaluations per step, at t_k and t_{k+1}, then the Tweedie step at the last time."""
    mix = sd.GaussianMixture([1.0], [[0.5, -0.5]], [[[0.2, 0.0], [0.0, 0.1]]])
    rec = Times(mix.score_fn(sde))
    S.heun(rec, sde, sde.prior_sampling((4, 2), dtype=torch.float64), schedule=SCHEDULE)
    t = SCHEDULE.tolist()
    expected = [v for a, b in zip(t[:-1], t[1:]) for v in (a, b)] + [t[-1]]
    assert rec.times == expected


def test_heun_point_mass_is_exact():
    """For a point mass x0_hat is constant and the ODE in (x/alpha, sigma/alpha) is a straight line:
    Heun (and its Euler stage) hit it exactly in one step, up to rounding. The rounding is amplified:
    the Euler stage lands at eps with an error of ~ulp * s_T * |x|, s = sigma / alpha, and the second
    score evaluation divides it by sigma_eps and multiplies it by s_T again."""
    for sde in make_sdes().values():
        score, x_T, exact, (aT, sT, se) = point_mass(sde)
        out = S.heun(score, sde, x_T, steps=1, eps=EPS, denoise=False)
        rounding = 8 * 2.0 ** -52 * (sT / aT) ** 2 * x_T.abs().max().item() / se
        torch.testing.assert_close(out, exact, rtol=0, atol=rounding)


def test_heun_churn_zero_outside_window_is_deterministic(sde):
    """Churn only acts where churn_min <= sigma/alpha <= churn_max: an empty window is plain Heun."""
    mix = sd.GaussianMixture([1.0], [[0.5, -0.5]], [[[0.2, 0.0], [0.0, 0.1]]])
    x_T = sde.prior_sampling((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = S.heun(mix.score_fn(sde), sde, x_T, steps=5)
    windowless = S.heun(mix.score_fn(sde), sde, x_T, steps=5, churn=30.0, churn_min=1e6,
                        generator=torch.Generator().manual_seed(3))
    churned = S.heun(mix.score_fn(sde), sde, x_T, steps=5, churn=30.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, windowless)
    assert not torch.allclose(plain, churned)


# ---- adaptive SDE ---------------------------------------------------------------------------------

def test_brownian_memory_keeps_the_path_unbiased():
    """A step rule that rejects whenever the drawn increment is large (|dW| > 0.6 sqrt(h), the worst
    case for a redraw) still yields, per path, increments summing to N(0, total time) when rejected
    pieces are kept and split by the Brownian bridge; redrawing instead shrinks the variance."""
    B, total = 20000, 1.0
    g = torch.Generator().manual_seed(0)

    def run(memory):
        x = torch.zeros(B, 1, dtype=torch.float64)
        stacks = _BrownianStacks(x)
        span = torch.full((B,), total, dtype=torch.float64)
        h = torch.full_like(span, 0.3)
        w_sum = torch.zeros(B, dtype=torch.float64)
        for _ in range(10_000):
            if not (span > 0).any():
                return w_sum
            xi = torch.randn(x.shape, generator=g, dtype=torch.float64)
            h = torch.minimum(h, span)
            if memory:
                stacks.reserve(int(stacks.depth.max()))
                h, dw = stacks.take(h, xi)
            else:
                dw = h.sqrt()[:, None] * xi
            active = span > 0
            refuse = active & (dw[:, 0].abs() > 0.6 * h.sqrt()) & (h > 1e-3)
            ok = active & ~refuse
            if memory:
                stacks.push(refuse, h, dw)
            w_sum = torch.where(ok, w_sum + dw[:, 0], w_sum)
            span = torch.where(ok, span - h, span)
            h = torch.where(refuse, h / 2, torch.full_like(h, 0.3))
        raise AssertionError("did not finish")

    for memory in (True, False):
        w = run(memory)
        mean_z = w.mean().item() / math.sqrt(total / B)
        var_z = (w.var().item() / total - 1) / math.sqrt(2 / (B - 1))
        if memory:
            assert abs(mean_z) < 4.5 and abs(var_z) < 4.5, (mean_z, var_z)
        else:
            assert var_z < -20, var_z  # the redraw visibly under-disperses


def test_adaptive_stats_account_for_every_iteration():
    sde = sd.VPSDE()
    mix = sd.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [[[0.1, 0.0], [0.0, 0.2]], [[0.3, 0.1], [0.1, 0.2]]])
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0))
    calls = []

    def score(x, t):
        calls.append(1)
        return mix.score(x, t, sde)

    for denoise in (False, True):
        calls.clear()
        x, stats = S.adaptive_sde(score, sde, x_T, rtol=0.02, atol=0.02, denoise=denoise,
                                  generator=torch.Generator().manual_seed(1), return_stats=True)
        iterations = int((stats.accepted + stats.rejected).max())
        assert stats.nfe == len(calls) == 2 * iterations + int(denoise)
        assert stats.accepted.shape == stats.rejected.shape == (64,)
        assert (stats.accepted > 0).all() and stats.rejected.sum() > 0
    # tighter tolerance: more steps
    _, tight = S.adaptive_sde(score, sde, x_T, rtol=0.002, atol=0.002, generator=torch.Generator().manual_seed(1),
                              return_stats=True)
    assert tight.accepted.float().mean() > 3 * stats.accepted.float().mean()


def test_adaptive_max_iters_is_a_clear_error():
    sde = sd.VPSDE()
    mix = sd.GaussianMixture([1.0], [[0.5, -0.5]], [[[0.2, 0.0], [0.0, 0.1]]])
    x_T = sde.prior_sampling((4, 2), generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="max_iters=5"):
        S.adaptive_sde(mix.score_fn(sde), sde, x_T, max_iters=5)


@pytest.mark.parametrize("arg,value", [("h_init", 0.0), ("h_init", -1.0), ("safety", 1.5), ("safety", 0.0),
                                       ("exponent", -0.1), ("exponent", 2.0), ("max_iters", 0)])
def test_adaptive_bad_parameters(arg, value):
    sde = sd.VPSDE()
    x_T = sde.prior_sampling((4, 2))
    with pytest.raises(ValueError, match=arg):
        S.adaptive_sde(lambda x, t: -x, sde, x_T, **{arg: value})


def test_sample_by_name_ignores_steps_for_adaptive():
    sde = sd.VESDE()
    mix = sd.GaussianMixture([1.0], [[0.5, -0.5]], [[[0.2, 0.0], [0.0, 0.1]]])
    for name in ("dpm_solver", "heun", "adaptive_sde"):
        x = S.sample(name, mix.score_fn(sde), sde, (8, 2), steps=5, generator=torch.Generator().manual_seed(0))
        assert x.shape == (8, 2) and torch.isfinite(x).all()


def test_configs_and_compare_know_every_sampler():
    from scoresde import compare, config
    assert set(config.SAMPLERS) == set(S.SAMPLERS)
    assert {m.sampler for m in compare.METHODS} >= {"dpm_solver", "heun", "adaptive_sde"}
    assert set(compare.ODE_METHODS) <= {m.label for m in compare.METHODS}
