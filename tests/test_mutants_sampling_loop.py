"""Tests written for the survivors of mutation testing on sampling/_loop.py and _ode.py (mutation/REPORT.md):
the linear samplers' coefficient tables against their closed forms written out by hand, the linear
step's use of its coefficients and of the noise source, the noise source's shapes and dtypes, the
Tweedie step's precision, the ODE solver's failure message and the NFE counter's defaults."""
import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde._checks import NonFiniteError
from scoresde.sampling import _loop, _ode
from scoresde.sampling.generators import SampleGenerators
from scoresde.sampling.grids import make_grid


def vp_beta(sde, t):
    return sde.beta_min + t * (sde.beta_max - sde.beta_min)


@pytest.mark.parametrize("probability_flow", [False, True])
def test_euler_maruyama_table_is_the_closed_form_vp(probability_flow):
    """VP: f = -beta x / 2, g^2 = beta; A = 1 + beta h / 2, B = beta h (1/2 for the ODE), C = sqrt(beta h) (0)."""
    sde = VPSDE()
    grid = make_grid(sde, 7, 1e-3)
    steps = _loop.euler_maruyama_steps(sde, grid, probability_flow=probability_flow)
    t = grid.t.tolist()
    for k in range(7):
        h = t[k] - t[k + 1]
        beta = vp_beta(sde, t[k])
        assert steps.A[k] == pytest.approx(1 + 0.5 * beta * h, rel=1e-12)
        assert steps.B[k] == pytest.approx((0.5 if probability_flow else 1.0) * beta * h, rel=1e-12)
        assert steps.C[k] == (0.0 if probability_flow else pytest.approx(math.sqrt(beta * h), rel=1e-12))


def test_euler_maruyama_table_is_the_closed_form_ve():
    """VE: f = 0, g^2 = d sigma^2 / dt = 2 sigma^2 log(sigma_max / sigma_min)."""
    sde = VESDE()
    grid = make_grid(sde, 5, 1e-3)
    steps = _loop.euler_maruyama_steps(sde, grid)
    t = grid.t.tolist()
    for k in range(5):
        h = t[k] - t[k + 1]
        sigma = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t[k]
        g2 = 2 * sigma ** 2 * math.log(sde.sigma_max / sde.sigma_min)
        assert steps.A[k] == 1.0
        assert steps.B[k] == pytest.approx(g2 * h, rel=1e-10)
        assert steps.C[k] == pytest.approx(math.sqrt(g2 * h), rel=1e-10)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_reverse_diffusion_table_is_the_closed_form(sde):
    """x' = (2 - a) x + b^2 s + b z with a = alpha_k / alpha_{k+1}, b^2 = sigma_k^2 - a^2 sigma_{k+1}^2."""
    grid = make_grid(sde, 6, 1e-3)
    steps = _loop.reverse_diffusion_steps(grid)
    al, si = grid.alpha.tolist(), grid.sigma.tolist()
    for k in range(6):
        a = al[k] / al[k + 1]
        b2 = si[k] ** 2 - a ** 2 * si[k + 1] ** 2
        assert steps.A[k] == pytest.approx(2 - a, rel=1e-12)
        assert steps.B[k] == pytest.approx(b2, rel=1e-10)
        assert steps.C[k] == pytest.approx(math.sqrt(b2), rel=1e-10)


def test_linear_step_uses_a_unit_score_coefficient():
    step = _loop.linear_stepper(lambda x, t: torch.full_like(x, 3.0), _loop.LinearSteps([1.0], [1.0], [0.0]), None)
    x = torch.ones(2, 2)
    torch.testing.assert_close(step(0, x, torch.ones(2), torch.zeros(2)), torch.full((2, 2), 4.0))


def test_a_deterministic_step_draws_no_noise():
    """C = 0: no noise is drawn, so the generator's stream is left for whoever comes next."""
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    step = _loop.linear_stepper(lambda x, t: x, _loop.LinearSteps([0.5], [0.25], [0.0]), g)
    step(0, torch.ones(3, 2), torch.ones(3), torch.zeros(3))
    assert torch.equal(g.get_state(), before)


def test_run_linear_runs_the_corrector():
    grid = make_grid(VPSDE(), 4, 1e-3)
    seen = []
    _loop.run_linear(lambda x, t: x, grid, _loop.LinearSteps([1.0] * 4, [0.0] * 4, [0.0] * 4), torch.zeros(2, 1),
                     denoise=False, generator=None, progress=False, desc="t",
                     corrector=lambda k, x, t: seen.append(k) or x)
    assert seen == [0, 1, 2, 3]


def test_randn_like_per_sample_generators_keep_shape_dtype_and_rows():
    x = torch.zeros(3, 2, 2, dtype=torch.float64)
    z = _loop.randn_like(x, SampleGenerators([5, 6, 7]))
    assert z.shape == x.shape and z.dtype == torch.float64
    for r, seed in enumerate([5, 6, 7]):
        expected = torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(z[r:r + 1], expected, rtol=0, atol=0)


def test_randn_like_moves_a_draw_to_another_device():
    """A generator on one device and data on another (here the meta device): drawn there, moved here,
    with the data's shape and dtype."""
    x = torch.empty(4, 3, dtype=torch.float64, device="meta")
    z = _loop.randn_like(x, torch.Generator().manual_seed(0))
    assert z.device.type == "meta" and z.shape == (4, 3) and z.dtype == torch.float64


def test_tweedie_at_uses_float64_coefficients():
    """E[x_0 | x_eps] = (x + sigma^2 s) / alpha with alpha, sigma of the closed form to double precision."""
    sde, eps = VPSDE(), 1e-3
    log_alpha = -0.25 * eps ** 2 * (sde.beta_max - sde.beta_min) - 0.5 * eps * sde.beta_min
    alpha, sigma = math.exp(log_alpha), math.sqrt(1 - math.exp(2 * log_alpha))
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    got = _loop.tweedie_at(lambda y, t: -y, sde, x, eps)
    torch.testing.assert_close(got, (x - sigma ** 2 * x) / alpha, rtol=1e-14, atol=0)


def test_a_failing_ode_solve_reports_the_solvers_reason():
    def rhs(t, y):
        return torch.full_like(y, float("nan"))
    counted = _ode.Counter(lambda x, t: x)
    with pytest.raises(NonFiniteError) as e:
        _ode.integrate(rhs, torch.ones(2, 1), torch.tensor([1.0, 0.0], dtype=torch.float64), "dopri5", 1e-5, 1e-5,
                       counted, "here")
    msg = str(e.value)
    assert msg.startswith("here: the ODE solver failed (") and "underflow in dt" in msg


def test_the_nfe_counter_shows_no_bar_unless_asked():
    assert _ode.Counter(lambda x, t: x).bar is None
    counted = _ode.Counter(lambda x, t: x, True, total=3)
    assert counted.bar is not None and counted.bar.desc == ""
    counted.close()


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_reverse_drift_is_f_minus_g2_score(sde):
    """The reverse SDE's drift f(x, t) - g(t)^2 s(x, t) by default; the probability flow's has g^2 / 2."""
    x = torch.linspace(-2, 2, 8, dtype=torch.float64).reshape(4, 2)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    s = -x / 3 + 0.5
    f = sde.drift_coeff(t)[:, None] * x
    g2 = sde.diffusion(t)[:, None] ** 2
    torch.testing.assert_close(_ode.reverse_drift(sde, lambda y, u: s, x, t), f - g2 * s, rtol=1e-12, atol=0)
    torch.testing.assert_close(_ode.pf_drift(sde, lambda y, u: s, x, t), f - 0.5 * g2 * s, rtol=1e-12, atol=0)


def test_the_nfe_bar_counts_score_calls_in_nfe_and_is_transient():
    counted = _ode.Counter(lambda x, t: x, True, "solve", total=5)
    for _ in range(3):
        counted(torch.zeros(1), torch.zeros(1))
    bar = counted.bar
    assert (bar.n, bar.total, bar.unit, bar.leave, bar.desc) == (3, 5, "nfe", False, "solve")
    assert counted.nfe == 3
    counted.close()


def test_clamped_time_clamps_to_the_domain_in_the_datas_dtype():
    like = torch.zeros(3, 2, dtype=torch.float32)
    for t, expected in ((1.5, 1.0), (-0.5, 0.1), (float("nan"), 0.1), (0.5, 0.5)):
        got = _ode.clamped_time(torch.tensor(t, dtype=torch.float64), 0.1, 1.0, 3, like)
        assert got.dtype == torch.float32 and got.shape == (3,)
        torch.testing.assert_close(got, torch.full((3,), expected, dtype=torch.float32))


def test_the_step_bar_is_transient_and_named(monkeypatch):
    """The fixed-grid loop's progress bar: one tick per step, named by the sampler, and cleared when done
    (leave=False), so a notebook or a log does not keep one bar per sampler call."""
    seen = {}

    def fake_trange(n, **kwargs):
        seen.update(kwargs, n=n)
        return range(n)

    monkeypatch.setattr(_loop, "trange", fake_trange)
    grid = make_grid(VPSDE(), 3, 1e-3)
    _loop.run(lambda x, t: x, grid, lambda k, x, t, tn: x, torch.zeros(2, 1), denoise=False, progress=True,
              desc="ddim")
    assert seen == {"n": 3, "disable": False, "desc": "ddim", "leave": False}
