"""Exact tests of sampling/odeint.py (probability_flow) and sampling/sdeint.py (reverse_sde), written for
mutation testing (mutation/REPORT.md): the statistical sampler tests are too slow to run per mutant and
too weak to see a small error in one step, so each solver is written out here by hand.

* reverse_sde with method "euler" (and "milstein", which equals it for additive noise) is
  Euler–Maruyama in forward time tau = T - t on the very Brownian path torchsde draws, rebuilt from
  the same seed: y_{k+1} = y_k - [f(y_k, t_k) - g(t_k)^2 s(y_k, t_k)] dtau + g(t_k) (W(tau_{k+1}) - W(tau_k)).
* probability_flow with each fixed-step method is that Runge–Kutta scheme over the time grid (torchdiffeq's
  tableaux: "rk4" is the 3/8 rule, "heun" is Heun's trapezoidal method, "heun3" Heun's third order).
* On one Gaussian N(m, s^2 I) the probability-flow map is known in closed form,
  x_eps = alpha_eps m + std_eps / std_T (x_T - alpha_T m), std_t^2 = alpha_t^2 s^2 + sigma_t^2,
  which the adaptive solvers must reach to their tolerance.
"""
import math

import pytest
import torch
import torchsde

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.analytic import GaussianMixture
from scoresde.sampling import odeint as odeint_mod
from scoresde.sampling import _ode
from scoresde.sampling import probability_flow, reverse_sde
from scoresde.sampling.generators import SampleGenerators
from scoresde.sampling.grids import time_grid
from scoresde.sampling.sdeint import _StackedBrownian

from conftest import counting

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
EPS = 1e-3
D = torch.float64


def mixture():
    return GaussianMixture(torch.tensor([0.4, 0.6], dtype=D), torch.tensor([[1.5, -0.5], [-1.0, 1.0]], dtype=D),
                           torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.25, -0.05], [-0.05, 0.4]]], dtype=D))


def prior(sde, n=5, seed=0):
    return sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(seed), dtype=D)


def reverse_rhs(sde, score, x, t):
    """dy/dtau of the reverse SDE in forward time: -(f - g^2 s), from the SDE's public sde()."""
    tb = torch.full((x.shape[0],), float(t), dtype=D)
    drift, g = sde.sde(x, tb)
    g = g.reshape(-1, 1) if g.dim() == 1 else g
    return -(drift - g ** 2 * score(x, tb)), g


def tweedie(sde, score, x, eps):
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(torch.tensor([eps], dtype=D)))
    return (x + sigma ** 2 * score(x, torch.full((x.shape[0],), eps, dtype=D))) / alpha


def hand_euler_maruyama(sde, score, x_T, steps, paths):
    """Euler–Maruyama as torchsde steps it: dtau = span / steps, the last step cut at span. ``paths`` maps
    (tau_a, tau_b) to the Brownian increment, one (B, D) tensor."""
    span = float(torch.tensor([0.0, sde.T - EPS], dtype=D)[-1])
    dt = span / steps
    tau, y, n = torch.tensor(0.0, dtype=D), x_T.clone(), 0
    end = torch.tensor(span, dtype=D)
    while tau < end:
        nxt = torch.min(tau + dt, end)
        f, g = reverse_rhs(sde, score, y, sde.T - float(tau))
        y = y + f * (nxt - tau) + g * paths(tau, nxt)
        tau, n = nxt, n + 1
    return y, span, n


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("method", ["euler", "milstein"])
@pytest.mark.parametrize("denoise", [False, True])
def test_reverse_sde_is_euler_maruyama_on_torchsdes_path(sde_name, method, denoise):
    sde, mix = SDES[sde_name](), mixture()
    score = mix.score_fn(sde)
    x_T = prior(sde)
    steps = 6
    got = reverse_sde(score, sde, x_T, method=method, steps=steps, eps=EPS, denoise=denoise,
                      generator=torch.Generator().manual_seed(11))
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=torch.Generator().manual_seed(11)))
    span = float(torch.tensor([0.0, sde.T - EPS], dtype=D)[-1])
    bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=x_T.shape, dtype=D, entropy=seed,
                                   levy_area_approximation="none")
    want, _, n = hand_euler_maruyama(sde, score, x_T, steps, lambda a, b: bm(a, b))
    assert n in (steps, steps + 1)  # torchsde's accumulated tau may leave a last step of one ulp
    if denoise:
        want = tweedie(sde, score, want, EPS)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_reverse_sde_per_sample_paths_are_each_rows_own(sde_name):
    """With SampleGenerators each row follows a Brownian path seeded from its own generator, so a row's
    result is Euler–Maruyama on that path alone, whatever else is in the batch."""
    sde, mix = SDES[sde_name](), mixture()
    score = mix.score_fn(sde)
    x_T = prior(sde, n=3, seed=4)
    seeds = [5, 17, 99]
    got = reverse_sde(score, sde, x_T, method="euler", steps=5, eps=EPS, denoise=False,
                      generator=SampleGenerators(seeds))
    entropies = SampleGenerators(seeds).randint(2 ** 62).tolist()
    span = float(torch.tensor([0.0, sde.T - EPS], dtype=D)[-1])
    rows = [torchsde.BrownianInterval(t0=0.0, t1=span, size=(1, 2), dtype=D, entropy=int(e),
                                      levy_area_approximation="none") for e in entropies]
    want, _, _ = hand_euler_maruyama(sde, score, x_T, 5, lambda a, b: torch.cat([bm(a, b) for bm in rows]))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    alone = reverse_sde(score, sde, x_T[1:2], method="euler", steps=5, eps=EPS, denoise=False,
                        generator=SampleGenerators(seeds[1:2]))
    torch.testing.assert_close(got[1:2], alone, rtol=1e-12, atol=1e-12)


def test_reverse_sde_refuses_a_generator_count_that_is_not_the_batch():
    sde = VPSDE()
    with pytest.raises(ValueError, match="3 per-sample generators for a batch of 2"):
        reverse_sde(lambda x, t: -x, sde, prior(sde, n=2), generator=SampleGenerators([1, 2, 3]))


def test_stacked_brownian_describes_the_stacked_batch():
    paths = [torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(1, 3), dtype=D, entropy=s,
                                       levy_area_approximation="space-time") for s in (1, 2)]
    bm = _StackedBrownian(paths)
    assert bm.shape == torch.Size((2, 3))
    assert bm.dtype == D and bm.device == paths[0].device
    assert bm.levy_area_approximation == "space-time"
    assert repr(bm) == f"_StackedBrownian(2 x {paths[0]!r})"
    W, U = bm(0.2, 0.7, return_U=True)
    for r, p in enumerate(paths):
        w, u = p(0.2, 0.7, return_U=True)
        assert torch.equal(W[r:r + 1], w) and torch.equal(U[r:r + 1], u)
    assert torch.equal(bm(0.1, 0.3), torch.cat([p(0.1, 0.3) for p in paths]))


class Bar:
    """Records what the NFE progress bar is told."""
    made = []

    def __init__(self, total=None, desc="", unit="", leave=False):
        self.total, self.desc, self.n, self.closed = total, desc, 0, False
        Bar.made.append(self)

    def update(self, k):
        self.n += k

    def close(self):
        self.closed = True


def with_bar_and_counter(monkeypatch, score):
    """Progress bars recorded (Bar.made), and ``score`` with its calls counted."""
    monkeypatch.setattr(_ode, "tqdm", Bar)
    Bar.made = []
    return counting(score)


@pytest.mark.parametrize("method, per_step", [("euler", 1), ("srk", 2)])
def test_reverse_sde_progress_bar_counts_every_score_call(monkeypatch, method, per_step):
    sde = VPSDE()
    counted, calls = with_bar_and_counter(monkeypatch, mixture().score_fn(sde))
    reverse_sde(counted, sde, prior(sde), method=method, steps=4, denoise=False, progress=True,
                generator=torch.Generator().manual_seed(0))
    (bar,) = Bar.made
    assert bar.desc == "reverse_sde" and bar.closed
    assert bar.total == 4 * per_step
    assert bar.n == len(calls) >= bar.total


# -- probability_flow -------------------------------------------------------------------------------
def rk_step(f, t0, t1, y, method):
    h = t1 - t0
    if method == "euler":
        return y + h * f(t0, y)
    if method == "midpoint":
        return y + h * f(t0 + h / 2, y + h / 2 * f(t0, y))
    if method == "heun":
        k1 = f(t0, y)
        return y + h / 2 * (k1 + f(t0 + h, y + h * k1))
    if method == "heun3":
        k1 = f(t0, y)
        k2 = f(t0 + h / 3, y + h / 3 * k1)
        k3 = f(t0 + 2 * h / 3, y + 2 * h / 3 * k2)
        return y + h * (k1 / 4 + 3 * k3 / 4)
    if method == "rk4":  # torchdiffeq's "rk4": Kutta's 3/8 rule
        k1 = f(t0, y)
        k2 = f(t0 + h / 3, y + h * k1 / 3)
        k3 = f(t0 + 2 * h / 3, y + h * (k2 - k1 / 3))
        k4 = f(t1, y + h * (k1 - k2 + k3))
        return y + h * (k1 + 3 * (k2 + k3) + k4) / 8
    raise AssertionError(method)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "heun3", "rk4"])
def test_fixed_step_probability_flow_is_its_runge_kutta_scheme(sde_name, method):
    sde, mix = SDES[sde_name](), mixture()
    score = mix.score_fn(sde)
    x_T = prior(sde, seed=2)
    grid = time_grid(sde, 5, EPS, "quadratic").tolist()

    def pf(t, y):
        tb = torch.full((y.shape[0],), min(max(t, EPS), sde.T), dtype=D)
        drift, g = sde.sde(y, tb)
        return drift - 0.5 * g.reshape(-1, 1) ** 2 * score(y, tb)

    want = x_T.clone()
    for t0, t1 in zip(grid[:-1], grid[1:]):
        want = rk_step(pf, t0, t1, want, method)
    got = probability_flow(score, sde, x_T, method=method, steps=5, eps=EPS, schedule="quadratic", denoise=False)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    got = probability_flow(score, sde, x_T, method=method, steps=5, eps=EPS, schedule="quadratic")
    torch.testing.assert_close(got, tweedie(sde, score, want, EPS), rtol=1e-9, atol=1e-9)


def gaussian_flow(sde, m, s, x_T, eps):
    """The probability-flow map of N(m, s^2 I) from T to eps, in closed form."""
    def coeffs(t):
        a, sig = (float(c) for c in sde.marginal_coeffs(torch.tensor([t], dtype=D)))
        return a, math.sqrt(a ** 2 * s ** 2 + sig ** 2)
    a_T, std_T = coeffs(sde.T)
    a_e, std_e = coeffs(eps)
    return a_e * m + std_e / std_T * (x_T - a_T * m)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("method", ["dopri5", "dopri8", "bosh3"])
def test_adaptive_probability_flow_reaches_the_closed_form_map(sde_name, method):
    sde = SDES[sde_name]()
    m, s = torch.tensor([0.7, -1.2], dtype=D), 0.5
    gauss = GaussianMixture(torch.ones(1, dtype=D), m[None], (s ** 2 * torch.eye(2, dtype=D))[None])
    x_T = prior(sde, n=4, seed=3)
    want = gaussian_flow(sde, m, s, x_T, EPS)
    tol = 1e-8
    got = probability_flow(gauss.score_fn(sde), sde, x_T, method=method, rtol=tol, atol=tol, eps=EPS, denoise=False)
    # the local tolerance accumulates over the accepted steps; 1e-5 is 1000x the tolerance and far
    # below any wrong end time (eps off by 1e-3 moves x_eps by ~1e-3 relative)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    loose = probability_flow(gauss.score_fn(sde), sde, x_T, method=method, rtol=1e-3, atol=1e-3, eps=EPS,
                             denoise=False)
    assert (loose - want).abs().max() > (got - want).abs().max()  # the tolerances reach the solver


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_probability_flow_ends_at_eps_not_before(method):
    """Evaluated at times inside [eps, T] only, and the last one at eps exactly."""
    sde, seen = VPSDE(), []
    score = mixture().score_fn(sde)

    def spy(x, t):
        seen.append(t.clone())
        return score(x, t)

    probability_flow(spy, sde, prior(sde), method=method, steps=4, eps=0.01, denoise=False)
    times = torch.cat(seen)
    assert times.min() >= 0.01 - 1e-12 and times.max() <= sde.T
    assert times.min() == pytest.approx(0.01, abs=1e-12 if method == "rk4" else 2e-2)


@pytest.mark.parametrize("method", sorted(odeint_mod.FIXED_METHODS))
def test_probability_flow_progress_bar_counts_every_score_call(monkeypatch, method):
    sde = VESDE()
    counted, calls = with_bar_and_counter(monkeypatch, mixture().score_fn(sde))
    probability_flow(counted, sde, prior(sde), method=method, steps=3, denoise=False, progress=True)
    (bar,) = Bar.made
    assert bar.desc == "probability_flow" and bar.closed
    assert bar.total == 3 * odeint_mod.STAGES[method] == bar.n == len(calls)


# -- defaults, messages and the per-sample paths of srk ---------------------------------------------
def test_no_progress_bar_unless_asked(monkeypatch):
    sde = VPSDE()
    score = mixture().score_fn(sde)
    with_bar_and_counter(monkeypatch, score)
    probability_flow(score, sde, prior(sde), method="euler", steps=2, denoise=False)
    reverse_sde(score, sde, prior(sde), steps=2, denoise=False, generator=torch.Generator().manual_seed(0))
    assert Bar.made == []


def test_default_step_counts():
    """probability_flow's fixed-step methods take 100 steps and reverse_sde 1000 unless told."""
    sde = VESDE()
    score = mixture().score_fn(sde)
    x_T = prior(sde, n=2)
    torch.testing.assert_close(probability_flow(score, sde, x_T, method="euler"),
                               probability_flow(score, sde, x_T, method="euler", steps=100), rtol=0, atol=0)
    assert not torch.equal(probability_flow(score, sde, x_T, method="euler"),
                           probability_flow(score, sde, x_T, method="euler", steps=101))
    run = lambda **k: reverse_sde(score, sde, x_T, generator=torch.Generator().manual_seed(5), **k)  # noqa: E731
    torch.testing.assert_close(run(), run(steps=1000), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, name", [(dict(method="rk45"), "method"), (dict(rtol=-1.0), "rtol"),
                                          (dict(atol=0.0), "atol")])
def test_probability_flow_errors_name_the_argument(kwargs, name):
    sde = VPSDE()
    with pytest.raises(ValueError, match=rf"\b{name}\b") as e:
        probability_flow(lambda x, t: -x, sde, prior(sde), **kwargs)
    assert "XX" not in str(e.value) and name.upper() not in str(e.value)


def test_reverse_sde_errors_name_the_argument():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"\bmethod\b") as e:
        reverse_sde(lambda x, t: -x, sde, prior(sde), method="heun")
    assert "XX" not in str(e.value)
    x = sde.prior_sampling((2, 3), generator=torch.Generator().manual_seed(0), dtype=D)
    with pytest.raises(ValueError, match="reverse_sde: 4 per-sample generators for a batch of 2$"):
        reverse_sde(lambda x, t: -x, sde, x, generator=SampleGenerators([1, 2, 3, 4]))


def nan_score(x, t):
    return torch.full_like(x, float("nan"))


@pytest.mark.parametrize("run, routine", [
    (lambda s, x: probability_flow(nan_score, s, x, method="euler", steps=3), "probability_flow"),
    (lambda s, x: probability_flow(nan_score, s, x, method="dopri5"), "probability_flow"),
    (lambda s, x: reverse_sde(nan_score, s, x, steps=3, generator=torch.Generator().manual_seed(0)), "reverse_sde"),
])
def test_a_nan_score_is_reported_by_the_routine(run, routine):
    from scoresde._checks import NonFiniteError
    sde = VPSDE()
    with pytest.raises(NonFiniteError) as e:
        run(sde, prior(sde))
    assert str(e.value).startswith(routine + ":")


def test_srk_per_sample_paths_are_each_rows_own():
    """srk needs the space-time Lévy area of every row's own path (torchsde refuses a path without it)."""
    sde = VPSDE()
    score = mixture().score_fn(sde)
    x_T = prior(sde, n=3, seed=8)
    seeds = [3, 4, 5]
    got = reverse_sde(score, sde, x_T, method="srk", steps=4, denoise=False, generator=SampleGenerators(seeds))
    for r in range(3):
        alone = reverse_sde(score, sde, x_T[r:r + 1], method="srk", steps=4, denoise=False,
                            generator=SampleGenerators(seeds[r:r + 1]))
        torch.testing.assert_close(got[r:r + 1], alone, rtol=1e-12, atol=1e-12)


def test_adaptive_probability_flow_gives_torchdiffeq_only_options_it_knows():
    """An option torchdiffeq does not know is ignored with a warning: the end-time option would be lost."""
    import warnings
    sde = VPSDE()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probability_flow(mixture().score_fn(sde), sde, prior(sde), method="dopri5", rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", ["bosh3", "adaptive_heun", "fehlberg2", "dopri8"])
def test_adaptive_method_is_the_one_named(method):
    """Each adaptive method reaches torchdiffeq as itself (an unknown name would fall back to dopri5): at a
    loose tolerance the solvers differ by ~1e-3, the same solver on a rounding-different drift by ~1e-12."""
    from torchdiffeq import odeint
    sde = VPSDE()
    score = mixture().score_fn(sde)
    x_T = prior(sde, n=3, seed=6)

    def pf(t, y):
        tb = t.clamp(EPS, sde.T).expand(y.shape[0])
        drift, g = sde.sde(y, tb)
        return drift - 0.5 * g.reshape(-1, 1) ** 2 * score(y, tb)

    ends = torch.tensor([sde.T, EPS], dtype=D)
    want = odeint(pf, x_T, ends, method=method, rtol=1e-3, atol=1e-3, options={"step_t": [EPS]})[-1]
    got = probability_flow(score, sde, x_T, method=method, rtol=1e-3, atol=1e-3, eps=EPS, denoise=False)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
