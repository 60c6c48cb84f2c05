"""dpm_solver against independent references: the published DPM-Solver++(2M) and (2S) updates as
k-diffusion runs them (written here from the paper, in EDM's variables) and diffusers'
DPMSolverMultistepScheduler; plus the convergence order of both second-order forms
(``solver_type``) against the closed-form flow of Gaussian data.

How a reference run in EDM's variables corresponds to ours (VP and VE alike): with the noise level
s = sigma / alpha = exp(-lambda) and x~ = x / alpha, the probability-flow ODE is the one EDM and
k-diffusion solve, their "t" is -log s = lambda, and their denoiser D(x~, s) is our data prediction
x0_hat = (x + sigma^2 score(x, t)) / alpha at the time t with sigma(t) / alpha(t) = s. Our
``schedule="karras"`` grid of ``steps`` steps is k-diffusion's get_sigmas_karras(steps + 1, s(eps),
s(T), rho=7) in s, and the trailing sigma = 0 of k-diffusion's schedule is our ``denoise`` step:
its last update, first order to sigma = 0, returns D at s(eps), which is our Tweedie step at eps.
At sigma = 0 alpha = 1, so both results are in the data's scale and are compared directly.
"""
import math

import pytest
import torch

import scoresde as sd
from scoresde import sampling as S
from scoresde.sampling.dpm_solver import midpoint_weights

EPS = 1e-3
MIX = sd.GaussianMixture([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]],
                         [[[0.1, 0.0], [0.0, 0.2]], [[0.3, 0.1], [0.1, 0.2]]])


def rel_diff(a, b):
    """max |a - b| relative to the largest |a|, the measure the overhead benchmark reports."""
    return ((a - b).abs().max() / a.abs().max()).item()


# ---- references in EDM's variables (x~ = x / alpha, noise level s = sigma / alpha) --------------

def noise_level(sde, t):
    """s(t) = sigma(t) / alpha(t) in closed form."""
    if isinstance(sde, sd.VESDE):
        return sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    B = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t ** 2
    return math.sqrt(math.expm1(B))


def time_of(sde, s):
    """The inverse of ``noise_level``, in closed form (VE: geometric; VP: a quadratic in t)."""
    if isinstance(sde, sd.VESDE):
        return math.log(s / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
    B, b0, db = math.log1p(s * s), sde.beta_min, sde.beta_max - sde.beta_min
    return (-b0 + math.sqrt(b0 * b0 + 2 * db * B)) / db


def edm_denoiser(score, sde):
    """D(x~, s): the data prediction at noise level s, from our score, through EDM's scaling."""
    def D(xe, s):
        alpha = 1.0 if isinstance(sde, sd.VESDE) else 1 / math.sqrt(1 + s * s)
        sigma = s * alpha
        t = torch.full((xe.shape[0],), time_of(sde, s), dtype=xe.dtype)
        x = alpha * xe
        return (x + sigma ** 2 * score(x, t)) / alpha
    return D


def karras_noise_levels(sde, steps, rho=7.0):
    """k-diffusion's get_sigmas_karras(steps + 1, s(eps), s(T), rho) with its trailing 0."""
    hi, lo = noise_level(sde, sde.T) ** (1 / rho), noise_level(sde, EPS) ** (1 / rho)
    return [(hi + i / steps * (lo - hi)) ** rho for i in range(steps + 1)] + [0.0]


def dpmpp_2m_reference(D, x, sigmas, first_order_last=False):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, in k-diffusion's form (t = -log sigma):
    x' = (sigma'/sigma) x - (e^-h - 1) D_k, D_k = (1 + 1/(2r)) d_k - 1/(2r) d_(k-1), r = h_(k-1)/h.
    The first step is first order (no history) and so is the step to sigma = 0, which returns d_k.
    ``first_order_last``: the last step before sigma = 0 is first order too."""
    d_prev = h_prev = None
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = D(x, s)
        if s_next == 0:
            return d  # (0 / s) x + (1 - e^-inf) d
        h = math.log(s) - math.log(s_next)
        if d_prev is None or (first_order_last and sigmas[i + 2] == 0):
            Dk = d
        else:
            r = h_prev / h
            Dk = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
        x = (s_next / s) * x - math.expm1(-h) * Dk
        d_prev, h_prev = d, h
    return x


def dpmpp_2s_reference(D, x, sigmas):
    """DPM-Solver++(2S), Lu et al. 2022 Algorithm 1 with r = 1/2, as k-diffusion's
    sample_dpmpp_2s_ancestral at eta = 0: a first-order half step (in t = -log sigma) to the
    midpoint, then the whole step with the midpoint's prediction only; sigma = 0 returns d."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = D(x, s)
        if s_next == 0:
            return d
        h = math.log(s) - math.log(s_next)
        s_mid = math.exp(math.log(s) - h / 2)
        x_mid = (s_mid / s) * x - math.expm1(-h / 2) * d
        x = (s_next / s) * x - math.expm1(-h) * D(x_mid, s_mid)
    return x


def start(sde, n=32, dtype=torch.float64, seed=0):
    x_T = sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(seed), dtype=dtype)
    alpha_T = 1.0 if isinstance(sde, sd.VESDE) else 1 / math.sqrt(1 + noise_level(sde, sde.T) ** 2)
    return x_T, x_T / alpha_T


SDES = {"vp": sd.VPSDE, "ve": sd.VESDE}


@pytest.mark.parametrize("steps", [3, 8, 25])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_2m_midpoint_is_k_diffusion_dpmpp_2m(sde_name, steps):
    sde = SDES[sde_name]()
    score = MIX.score_fn(sde)
    x_T, xe_T = start(sde)
    ref = dpmpp_2m_reference(edm_denoiser(score, sde), xe_T, karras_noise_levels(sde, steps))
    ours = S.dpm_solver(score, sde, x_T, steps=steps, order=2, solver_type="midpoint", lower_order_final=False,
                        schedule="karras", eps=EPS)
    assert rel_diff(ours, ref) < 1e-10
    # the exact-integral form is a different (also second-order) method: visibly different here
    heun = S.dpm_solver(score, sde, x_T, steps=steps, order=2, solver_type="heun", lower_order_final=False,
                        schedule="karras", eps=EPS)
    assert rel_diff(heun, ref) > 1e-4


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_lower_order_final_on_a_continuous_grid(sde_name):
    """On a continuous grid lower_order_final counts grid steps (the denoising step comes on top):
    below 15 steps the last grid step is first order; from 15 on nothing changes."""
    sde = SDES[sde_name]()
    score = MIX.score_fn(sde)
    x_T, xe_T = start(sde)
    D = edm_denoiser(score, sde)
    for steps in (4, 9):
        ref = dpmpp_2m_reference(D, xe_T, karras_noise_levels(sde, steps), first_order_last=True)
        lowered = S.dpm_solver(score, sde, x_T, steps=steps, schedule="karras", eps=EPS)
        assert rel_diff(lowered, ref) < 1e-10
        full = S.dpm_solver(score, sde, x_T, steps=steps, schedule="karras", eps=EPS, lower_order_final=False)
        assert rel_diff(full, ref) > 1e-4
    ref = dpmpp_2m_reference(D, xe_T, karras_noise_levels(sde, 15))
    assert rel_diff(S.dpm_solver(score, sde, x_T, steps=15, schedule="karras", eps=EPS), ref) < 1e-10


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_2s_midpoint_is_dpmpp_2s(sde_name):
    sde = SDES[sde_name]()
    score = MIX.score_fn(sde)
    x_T, xe_T = start(sde)
    ref = dpmpp_2s_reference(edm_denoiser(score, sde), xe_T, karras_noise_levels(sde, 6))
    ours = S.dpm_solver(score, sde, x_T, steps=6, order=2, multistep=False, schedule="karras", eps=EPS)
    assert rel_diff(ours, ref) < 1e-10


@pytest.mark.parametrize("h", [0.05, 0.7, 3.0])
@pytest.mark.parametrize("r", [0.3, 1.0, 2.5])
def test_midpoint_weights_are_the_papers(h, r):
    """Multistep nodes 0 and -r h: (∫K) (1 + 1/(2r), -1/(2r)), ∫K = 1 - e^-h (x0) or e^h - 1 (eps)."""
    for predict, total in (("x0", -math.expm1(-h)), ("eps", math.expm1(h))):
        w = midpoint_weights(h, [0.0, -r * h], predict)
        assert w == pytest.approx([total * (1 + 1 / (2 * r)), -total / (2 * r)], rel=1e-14)


# ---- both forms are second order: Gaussian data, whose PF-ODE flow is known in closed form ------

GAUSS_MEAN, GAUSS_VAR = [0.5, -0.3], [0.2, 0.05]


@pytest.mark.parametrize("predict", ["x0", "eps"])
@pytest.mark.parametrize("multistep", [True, False], ids=["M", "S"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_second_order_forms_converge_at_order_two(solver_type, multistep, predict):
    """For N(m, diag v) data, (x_t - alpha_t m) / sqrt(alpha_t^2 v + sigma_t^2) is constant along
    the flow; both forms of 2M and 2S must reach it with error ~ n^-2 (VP, log-SNR grid)."""
    sde = sd.VPSDE()
    m, v = torch.tensor(GAUSS_MEAN, dtype=torch.float64), torch.tensor(GAUSS_VAR, dtype=torch.float64)
    score = sd.GaussianMixture([1.0], [GAUSS_MEAN], [GAUSS_VAR]).score_fn(sde)
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (aT, ae), (sT, se) = sde.marginal_coeffs(torch.tensor([sde.T, EPS], dtype=torch.float64))
    exact = ae * m + (x_T - aT * m) * torch.sqrt(ae ** 2 * v + se ** 2) / torch.sqrt(aT ** 2 * v + sT ** 2)
    ns = (32, 64, 128)
    errors = [(S.dpm_solver(score, sde, x_T, steps=n, order=2, multistep=multistep, predict=predict,
                            solver_type=solver_type, eps=EPS, denoise=False) - exact).abs().max().item() for n in ns]
    slope = math.log2(errors[0] / errors[-1]) / math.log2(ns[-1] / ns[0])
    assert 1.85 <= slope <= 2.35, (errors, slope)


@pytest.mark.parametrize("predict", ["x0", "eps"])
def test_third_order_singlestep_ignores_solver_type(predict):
    """DPM-Solver-3's stages and final update are exact integrals (its third order rests on them):
    solver_type changes nothing there, while it does change 2S."""
    sde = sd.VPSDE()
    x_T = sde.prior_sampling((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = {(order, st): S.dpm_solver(MIX.score_fn(sde), sde, x_T, steps=4, order=order, multistep=False,
                                      predict=predict, solver_type=st)
            for order in (2, 3) for st in ("midpoint", "heun")}
    assert torch.equal(runs[3, "midpoint"], runs[3, "heun"])
    assert rel_diff(runs[2, "midpoint"], runs[2, "heun"]) > 1e-4


@pytest.mark.parametrize("kwargs,match", [
    (dict(solver_type="rk4"), r"solver_type must be one of \('midpoint', 'heun'\), got 'rk4'"),
    (dict(solver_type=None), "solver_type"),
    (dict(lower_order_final="yes"), "lower_order_final"),
    (dict(solver_type="heun", multistep=False, lower_order_final=None), "lower_order_final"),
])
def test_bad_options(kwargs, match):
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match=match):
        S.dpm_solver(MIX.score_fn(sde), sde, sde.prior_sampling((4, 2)), steps=3, **kwargs)


# ---- diffusers' DPMSolverMultistepScheduler ------------------------------------------------------

def diffusers_run(sde, score, x_T, steps, **config):
    """diffusers' canonical loop on the VP-SDE's DDPM schedule (linear betas 1e-4 … 0.02 over
    1000), its eps-prediction model being our score: eps = -sigma_i score(x, t_i) at the chain's
    sigma_i and t_i = T i / (N - 1) raised to EPS, exactly the (t, alpha, sigma) that
    ``dpm_solver(timesteps=...)`` uses. Returns the sample and the timesteps it visited."""
    # 0.26 added final_sigmas_type (default "zero"); before it the last step went to index 0
    diffusers = pytest.importorskip("diffusers", minversion="0.26")
    try:
        scheduler = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=sde.N, beta_start=sde.beta_min / sde.N, beta_end=sde.beta_max / sde.N,
            beta_schedule="linear", prediction_type="epsilon", **config)
    except (ValueError, TypeError) as e:  # e.g. algorithm_type="dpmsolver" once diffusers drops it
        pytest.skip(f"this diffusers rejects {config}: {e}")
    scheduler.set_timesteps(steps)
    _, sigma = sde.discrete_marginal_coeffs(torch.arange(sde.N))
    x = x_T * scheduler.init_noise_sigma
    for i in scheduler.timesteps.tolist():
        t = torch.full((x.shape[0],), max(i * sde.T / (sde.N - 1), EPS), dtype=x.dtype)
        x = scheduler.step(-float(sigma[i]) * score(x, t), i, x).prev_sample
    return x, scheduler.timesteps.tolist()


#: (id, diffusers' config, our options). diffusers' default final_sigmas_type="zero"
#: ends with a first-order step to sigma = 0 from its last timestep: our denoising step, which our
#: lower_order_final then counts as the last step. "sigma_min" (required by algorithm_type
#: "dpmsolver") ends at the chain's index 0 instead: our timesteps + [0] without denoising.
DIFFUSERS_CASES = [
    ("defaults: dpmsolver++ midpoint", dict(), dict()),
    ("dpmsolver++ heun", dict(solver_type="heun"), dict(solver_type="heun")),
    ("dpmsolver++ midpoint, full order to the end", dict(lower_order_final=False), dict(lower_order_final=False)),
    ("dpmsolver++ midpoint, sigma_min", dict(final_sigmas_type="sigma_min"), dict(denoise=False)),
    ("dpmsolver++ heun, sigma_min", dict(solver_type="heun", final_sigmas_type="sigma_min"),
     dict(solver_type="heun", denoise=False)),
    ("dpmsolver midpoint", dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
     dict(predict="eps", denoise=False)),
    ("dpmsolver heun", dict(algorithm_type="dpmsolver", solver_type="heun", final_sigmas_type="sigma_min"),
     dict(predict="eps", solver_type="heun", denoise=False)),
]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers deprecates algorithm_type="dpmsolver"
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' own numpy call
@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("label,config,options", DIFFUSERS_CASES, ids=[c[0] for c in DIFFUSERS_CASES])
def test_2m_equals_diffusers(label, config, options, steps):
    """Float32, as diffusers computes (it casts the sample to float32 in every step and keeps its
    sigmas in float32): the samples agree to float32 rounding (measured: at most 5e-7 relative with
    final sigma = 0, 8e-6 with "sigma_min", whose long last step amplifies diffusers' float32 sigma
    table; given float64 sigmas, diffusers agrees to 4e-7 in every case). 5 and 10 steps exercise
    lower_order_final (below 15), 20 does not."""
    sde = sd.VPSDE()
    score = MIX.score_fn(sde)
    x_T = sde.prior_sampling((256, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    theirs, idx = diffusers_run(sde, score, x_T, steps, **config)
    if options.get("denoise", True) is False:
        idx = idx + [0]
    ours = S.dpm_solver(score, sde, x_T, timesteps=idx, order=2, eps=EPS, **options)
    assert rel_diff(ours, theirs) < 2e-5, label


def diffusers_3m_weights(h, nodes, predict):
    """The third-order update of diffusers and of the authors' code, as weights on the three
    predictions (nodes 0, -h0, -h0-h1): D1 ~ h m' and D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 m''/2,
    but D2 is weighted by phi_3, the coefficient of h^2 m'' -- half the quadratic term."""
    import numpy as np
    h0, h1 = nodes[0] - nodes[1], nodes[1] - nodes[2]
    r0, r1 = h0 / h, h1 / h
    d0 = np.array([1.0, 0.0, 0.0])
    d10, d11 = np.array([1.0, -1.0, 0.0]) / r0, np.array([0.0, 1.0, -1.0]) / r1
    d1, d2 = d10 + r0 / (r0 + r1) * (d10 - d11), (d10 - d11) / (r0 + r1)
    if predict == "x0":
        p1 = math.expm1(-h)
        p2 = p1 / h + 1
        return list(-p1 * d0 + p2 * d1 - (p2 / h - 0.5) * d2)
    p1 = math.expm1(h)
    p2 = p1 / h - 1
    return list(p1 * d0 + p2 * d1 + (p2 / h - 0.5) * d2)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_order_three_differs_from_diffusers_only_by_its_quadratic_term(monkeypatch, solver_type):
    """Our order 3 integrates the quadratic interpolant exactly (third order, test_convergence).
    diffusers' solver_order=3 (the authors' code too) weights the second divided difference by
    half of that, which makes it second order: the samples differ by ~1e-3 at 5–20 steps. With
    that one update replaced by diffusers' own formula, everything else -- the second-order warm-up
    step in ``solver_type`` form, lower_order_final lowering the last but one step to order 2 below
    15 timesteps, the first-order step to sigma = 0 -- agrees to float32 rounding."""
    import sys
    dpm = sys.modules["scoresde.sampling.dpm_solver"]
    sde = sd.VPSDE()
    score = MIX.score_fn(sde)
    x_T = sde.prior_sampling((256, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    for steps in (5, 10, 20):
        theirs, idx = diffusers_run(sde, score, x_T, steps, solver_order=3, solver_type=solver_type)
        ours = S.dpm_solver(score, sde, x_T, timesteps=idx, order=3, solver_type=solver_type, eps=EPS)
        assert rel_diff(ours, theirs) > 3e-4, steps
        exact = dpm.exponential_weights
        with monkeypatch.context() as mp:
            mp.setattr(dpm, "exponential_weights",
                       lambda h, nodes, predict: diffusers_3m_weights(h, nodes, predict) if len(nodes) == 3
                       else exact(h, nodes, predict))
            replica = S.dpm_solver(score, sde, x_T, timesteps=idx, order=3, solver_type=solver_type, eps=EPS)
        assert rel_diff(replica, theirs) < 2e-5, steps
