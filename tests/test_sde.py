"""Tests of the forward SDEs (VP, sub-VP, VE) against the closed forms of Song et al. (ICLR 2021).

Every expected value below is written out independently with the ``math`` module in float64.
Tolerances: a float64 closed form evaluated through a handful of elementary operations is exact
to a few ulps (eps = 2.2e-16); the worst case here is sigma(t) = smin * r**t with t * log r <= 9,
whose relative error is <= ~10 eps. RTOL64 = 1e-13 (~450 eps) leaves a wide margin for rounding
while any formula error (a wrong sign, factor or exponent) is orders of magnitude larger.
"""
import math

import pytest
import torch

from scoresde import ReverseSDE, SubVPSDE, VESDE, VPSDE

RTOL64 = 1e-13
F64 = torch.float64

# (kind, constructor kwargs, closed-form parameters)
CASES = [
    ("vp", {}, (0.1, 20.0)),
    ("vp", {"beta_min": 0.3, "beta_max": 7.5, "N": 50}, (0.3, 7.5)),
    ("subvp", {}, (0.1, 20.0)),
    ("subvp", {"beta_min": 0.3, "beta_max": 7.5, "N": 50}, (0.3, 7.5)),
    ("ve", {}, (0.01, 50.0)),
    ("ve", {"sigma_min": 0.05, "sigma_max": 20.0, "N": 100}, (0.05, 20.0)),
]
CLASSES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
IDS = ["vp-default", "vp-custom", "subvp-default", "subvp-custom", "ve-default", "ve-custom"]

TIMES = [0.0, 1e-4, 0.013, 0.25, 0.5, 0.77, 1.0]


def make(kind, kwargs):
    return CLASSES[kind](**kwargs)


def closed_form(kind, params, t):
    """(c, g, alpha, std) at scalar time t: f = c x, diffusion g, p_0t = N(alpha x0, std^2)."""
    if kind in ("vp", "subvp"):
        b0, b1 = params
        beta = b0 + t * (b1 - b0)
        B = b0 * t + 0.5 * (b1 - b0) * t * t
        c = -0.5 * beta
        alpha = math.exp(-0.5 * B)
        if kind == "vp":
            g = math.sqrt(beta)
            std = math.sqrt(-math.expm1(-B))          # sqrt(1 - exp(-B))
        else:
            g = math.sqrt(beta * -math.expm1(-2.0 * B))  # sqrt(beta (1 - exp(-2B)))
            std = -math.expm1(-B)                     # 1 - exp(-B)
        return c, g, alpha, std
    smin, smax = params
    sig = smin * (smax / smin) ** t
    return 0.0, sig * math.sqrt(2.0 * math.log(smax / smin)), 1.0, sig


def closed_discrete(kind, params, N, i):
    """(f/x, G) of the N-step chain's step into index i (DDPM for VP, SMLD for VE, Euler for sub-VP)."""
    if kind == "vp":
        b0, b1 = params
        beta = b0 / N + i * (b1 - b0) / (N * (N - 1))
        return -beta / (1.0 + math.sqrt(1.0 - beta)), math.sqrt(beta)   # = sqrt(1-beta) - 1, stably
    if kind == "ve":
        smin, smax = params
        sig = lambda j: smin * (smax / smin) ** (j / (N - 1))
        prev = sig(i - 1) if i > 0 else 0.0
        return 0.0, math.sqrt(sig(i) ** 2 - prev ** 2)
    c, g, _, _ = closed_form(kind, params, i / (N - 1))
    return c / N, g / math.sqrt(N)


def col(values, like):
    """A per-sample vector shaped to broadcast against ``like`` (B, ...)."""
    v = torch.as_tensor(values, dtype=like.dtype)
    return v.reshape(v.shape + (1,) * (like.dim() - 1))


def data(shape, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


SHAPES = [(len(TIMES), 3), (len(TIMES), 2, 3, 2)]


# ---------------------------------------------------------------------------------------------
# continuous-time coefficients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=["BD", "BCHW"])
def test_closed_forms_tensor_t(kind, kwargs, params, shape):
    sde = make(kind, kwargs)
    x = data(shape)
    t = torch.tensor(TIMES, dtype=F64)
    cf = [closed_form(kind, params, s) for s in TIMES]
    c = [v[0] for v in cf]
    g = torch.tensor([v[1] for v in cf], dtype=F64)
    alpha = [v[2] for v in cf]
    std = torch.tensor([v[3] for v in cf], dtype=F64)

    exp_drift = col(c, x) * x
    torch.testing.assert_close(sde.drift(x, t), exp_drift, rtol=RTOL64, atol=0)
    torch.testing.assert_close(sde.diffusion(t), g, rtol=RTOL64, atol=0)
    f, gg = sde.sde(x, t)
    torch.testing.assert_close(f, exp_drift, rtol=RTOL64, atol=0)
    torch.testing.assert_close(gg, g, rtol=RTOL64, atol=0)
    mean, s = sde.marginal_prob(x, t)
    assert mean.shape == x.shape and s.shape == (x.shape[0],)
    torch.testing.assert_close(mean, col(alpha, x) * x, rtol=RTOL64, atol=0)
    torch.testing.assert_close(s, std, rtol=RTOL64, atol=0)


@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=["BD", "BCHW"])
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_closed_forms_float_t(kind, kwargs, params, shape, t):
    sde = make(kind, kwargs)
    x = data(shape, seed=1)
    c, g, alpha, std = closed_form(kind, params, t)
    B = x.shape[0]
    torch.testing.assert_close(sde.drift(x, t), c * x, rtol=RTOL64, atol=0)
    f, gg = sde.sde(x, t)
    torch.testing.assert_close(f, c * x, rtol=RTOL64, atol=0)
    torch.testing.assert_close(gg, torch.full((B,), g, dtype=F64), rtol=RTOL64, atol=0)
    mean, s = sde.marginal_prob(x, t)
    torch.testing.assert_close(mean, alpha * x, rtol=RTOL64, atol=0)
    torch.testing.assert_close(s, torch.full((B,), std, dtype=F64), rtol=RTOL64, atol=0)
    # a float t with an explicit `like` is broadcast to the batch
    torch.testing.assert_close(sde.diffusion(t, x), torch.full((B,), g, dtype=F64), rtol=RTOL64, atol=0)
    # a 0-dim tensor t is broadcast too
    torch.testing.assert_close(sde.drift(x, torch.tensor(t, dtype=F64)), c * x, rtol=RTOL64, atol=0)


@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
def test_float32_accuracy_and_dtype(kind, kwargs, params):
    # float32 evaluation stays within float32 rounding of the float64 closed form: t itself is
    # rounded (rel. 6e-8) and the exponents B(t), t log r reach ~10, so the relative error is
    # about 10 * 6e-8 plus a few ulps of the elementary functions -> rtol 2e-6 (~30 ulps).
    sde = make(kind, kwargs)
    x = data((len(TIMES), 4), dtype=torch.float32)
    t = torch.tensor(TIMES, dtype=torch.float32)
    cf = [closed_form(kind, params, float(s)) for s in t.double()]
    mean, std = sde.marginal_prob(x, t)
    f, g = sde.sde(x, t)
    for out in (mean, std, f, g, sde.diffusion(t)):
        assert out.dtype == torch.float32
    torch.testing.assert_close(mean.double(), col([v[2] for v in cf], x.double()) * x.double(), rtol=2e-6, atol=0)
    torch.testing.assert_close(std.double(), torch.tensor([v[3] for v in cf], dtype=F64), rtol=2e-6, atol=0)
    torch.testing.assert_close(g.double(), torch.tensor([v[1] for v in cf], dtype=F64), rtol=2e-6, atol=0)
    torch.testing.assert_close(f.double(), col([v[0] for v in cf], x.double()) * x.double(), rtol=2e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,kwargs,params", CASES[::2], ids=IDS[::2])
def test_outputs_keep_dtype(kind, kwargs, params, dtype):
    sde = make(kind, kwargs)
    x = data((3, 2, 2), dtype=dtype)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=dtype)
    outs = [sde.drift(x, t), sde.diffusion(t), *sde.sde(x, t), *sde.marginal_prob(x, t),
            *sde.discretize(x, t), sde.prior_logp(x), sde.prior_sampling((2, 3), dtype=dtype)]
    rev = sde.reverse(lambda y, s: -y)
    outs += [rev.drift(x, t), rev.diffusion(t), *rev.sde(x, t), *rev.discretize(x, t)]
    for out in outs:
        assert out.dtype == dtype
    # float t with float-typed data
    for out in (sde.drift(x, 0.5), *sde.marginal_prob(x, 0.5), *sde.discretize(x, 0.5)):
        assert out.dtype == dtype


# ---------------------------------------------------------------------------------------------
# consistency of marginal_prob with drift / diffusion (the moment ODEs of a linear SDE)
# ---------------------------------------------------------------------------------------------
CONSIST_T = [0.01, 0.2, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
def test_moment_odes_autograd(kind, kwargs, params):
    # For dx = c(t) x dt + g(t) dw:  d log alpha / dt = c,  d std^2 / dt = g^2 + 2 c std^2.
    sde = make(kind, kwargs)
    t = torch.tensor(CONSIST_T, dtype=F64, requires_grad=True)
    x0 = torch.ones(len(CONSIST_T), 1, dtype=F64)
    mean, std = sde.marginal_prob(x0, t)
    if mean.requires_grad:
        dlogalpha, = torch.autograd.grad(mean.log().sum(), t, retain_graph=True)
    else:  # alpha(t) constant in t (VE): its derivative is 0
        dlogalpha = torch.zeros_like(t)
    dvar, = torch.autograd.grad((std ** 2).sum(), t)
    with torch.no_grad():
        c = sde.drift(x0, t)[:, 0]
        g = sde.diffusion(t)
        var = std.detach() ** 2
    torch.testing.assert_close(dlogalpha, c, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dvar, g ** 2 + 2 * c * var, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
def test_moment_odes_finite_differences(kind, kwargs, params):
    # Central differences, h = 1e-5: truncation h^2/6 |f'''| <= ~1e-8 relative here (B(t) and
    # t log r are quadratic/linear in t with coefficients <= 20), rounding eps/h ~ 1e-11.
    sde = make(kind, kwargs)
    h = 1e-5
    t = torch.tensor(CONSIST_T[:-1], dtype=F64)
    x0 = torch.ones(len(t), 1, dtype=F64)
    (mp, sp), (mm, sm) = sde.marginal_prob(x0, t + h), sde.marginal_prob(x0, t - h)
    _, s = sde.marginal_prob(x0, t)
    c = sde.drift(x0, t)[:, 0]
    g = sde.diffusion(t)
    torch.testing.assert_close((mp[:, 0].log() - mm[:, 0].log()) / (2 * h), c, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close((sp ** 2 - sm ** 2) / (2 * h), g ** 2 + 2 * c * s ** 2, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# discrete chains (DDPM / SMLD / Euler)
# ---------------------------------------------------------------------------------------------
def test_vp_default_ddpm_schedule():
    sde = VPSDE()
    assert sde.N == 1000 and sde.T == 1.0
    ref = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    assert sde.discrete_betas.dtype == F64 and sde.discrete_betas.shape == (1000,)
    torch.testing.assert_close(sde.discrete_betas, ref, rtol=0, atol=1e-15)
    torch.testing.assert_close(sde.alphas, 1.0 - ref, rtol=0, atol=1e-15)
    # cumulative product written as exp(sum log1p(-beta)): 1000 terms, relative error <= ~1e-13
    logs = [math.log1p(-(1e-4 + i * (0.02 - 1e-4) / 999)) for i in range(1000)]
    acc, cum = 0.0, []
    for v in logs:
        acc += v
        cum.append(math.exp(acc))
    torch.testing.assert_close(sde.alphas_cumprod, torch.tensor(cum, dtype=F64), rtol=1e-12, atol=0)
    # DDPM's well-known end value, alpha_bar_T ~= 4.036e-5
    assert abs(sde.alphas_cumprod[-1].item() - 4.0358e-5) < 1e-8


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE])
def test_beta_tables_custom(cls):
    sde = cls(beta_min=0.3, beta_max=7.5, N=50)
    ref = torch.tensor([0.3 / 50 + i * (7.5 - 0.3) / (50 * 49) for i in range(50)], dtype=F64)
    torch.testing.assert_close(sde.discrete_betas, ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.alphas, 1 - ref, rtol=1e-14, atol=0)
    cum = torch.tensor([math.prod(1 - b for b in ref[: i + 1].tolist()) for i in range(50)], dtype=F64)
    torch.testing.assert_close(sde.alphas_cumprod, cum, rtol=1e-13, atol=0)


@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
def test_discretize_at_grid_points(kind, kwargs, params):
    sde = make(kind, kwargs)
    N = sde.N
    idx = [0, 1, 2, N // 2, N - 2, N - 1]
    x = data((len(idx), 2, 3))
    t = torch.tensor([i / (N - 1) for i in idx], dtype=F64)
    ref = [closed_discrete(kind, params, N, i) for i in idx]
    f, G = sde.discretize(x, t)
    assert f.shape == x.shape and G.shape == (len(idx),)
    # sqrt(1 - beta) - 1 loses ~1 ulp of 1.0 to cancellation: absolute error <= ~2e-16 |x|
    torch.testing.assert_close(f, col([r[0] for r in ref], x) * x, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(G, torch.tensor([r[1] for r in ref], dtype=F64), rtol=1e-12, atol=0)
    # the same steps with a float t, one index at a time
    for j, i in enumerate(idx):
        fj, Gj = sde.discretize(x[j:j + 1], i / (N - 1))
        torch.testing.assert_close(fj, ref[j][0] * x[j:j + 1], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(Gj, torch.tensor([ref[j][1]], dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
def test_discretize_float32(kind, kwargs, params):
    # The step x_i = x + f + G z in float32: the map x -> x + f is sqrt(1-beta_i) x (VP), x (VE),
    # (1 + c dt) x (sub-VP) to float32 rounding (rtol 1e-6 ~ 8 ulps); G to a few ulps.
    sde = make(kind, kwargs)
    N = sde.N
    idx = [0, 1, N // 3, N - 1]
    x = data((len(idx), 5), dtype=torch.float32)
    t = torch.tensor([i / (N - 1) for i in idx], dtype=torch.float32)
    ref = [closed_discrete(kind, params, N, i) for i in idx]
    f, G = sde.discretize(x, t)
    assert f.dtype == G.dtype == torch.float32
    torch.testing.assert_close((x + f).double(), col([1 + r[0] for r in ref], x.double()) * x.double(),
                               rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(G.double(), torch.tensor([r[1] for r in ref], dtype=F64), rtol=1e-5, atol=0)


def test_ve_discrete_sigmas():
    for kwargs, (smin, smax) in [({}, (0.01, 50.0)), ({"sigma_min": 0.05, "sigma_max": 20.0, "N": 100}, (0.05, 20.0))]:
        sde = VESDE(**kwargs)
        N = sde.N
        assert sde.discrete_sigmas.dtype == F64 and sde.discrete_sigmas.shape == (N,)
        ref = torch.tensor([math.exp(math.log(smin) + i * (math.log(smax) - math.log(smin)) / (N - 1))
                            for i in range(N)], dtype=F64)
        torch.testing.assert_close(sde.discrete_sigmas, ref, rtol=1e-13, atol=0)
        assert sde.discrete_sigmas[0].item() == pytest.approx(smin, rel=1e-14)
        assert sde.discrete_sigmas[-1].item() == pytest.approx(smax, rel=1e-14)
        # index i is the continuous sigma at t_i = i / (N - 1)
        t = torch.arange(N, dtype=F64) / (N - 1)
        _, std = sde.marginal_prob(torch.zeros(N, 1, dtype=F64), t)
        torch.testing.assert_close(std, sde.discrete_sigmas, rtol=1e-13, atol=0)


def _compose_chain(sde):
    """Compose the affine steps x_i = (1 + f_i/x) x_{i-1} + G_i z_i for i = 0..N-1, exactly."""
    N = sde.N
    t = torch.arange(N, dtype=F64) / (N - 1)
    f, G = sde.discretize(torch.ones(N, 1, dtype=F64), t)
    a = (1.0 + f[:, 0]).tolist()
    G = G.tolist()
    m, v, ms, vs = 1.0, 0.0, [], []
    for ai, Gi in zip(a, G):
        m, v = ai * m, ai * ai * v + Gi * Gi
        ms.append(m)
        vs.append(v)
    return torch.tensor(ms, dtype=F64), torch.tensor(vs, dtype=F64)


@pytest.mark.parametrize("kwargs", [{}, {"beta_min": 0.3, "beta_max": 7.5, "N": 50}])
def test_vp_chain_marginals(kwargs):
    # Composing the DDPM steps from x_0: mean sqrt(alpha_bar_i) x_0, variance 1 - alpha_bar_i.
    sde = VPSDE(**kwargs)
    m, v = _compose_chain(sde)
    ab = sde.alphas_cumprod
    torch.testing.assert_close(m, ab.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(v, 1 - ab, rtol=1e-12, atol=1e-15)
    # and the chain's marginals as reported by discrete_marginal_coeffs
    a_i, s_i = sde.discrete_marginal_coeffs(torch.arange(sde.N))
    torch.testing.assert_close(a_i, m, rtol=1e-12, atol=0)
    torch.testing.assert_close(s_i, v.sqrt(), rtol=1e-12, atol=1e-15)


def test_ve_chain_marginals():
    # Composing the SMLD steps: variance sigma_i^2 (telescoping sum), mean x_0.
    sde = VESDE(sigma_min=0.05, sigma_max=20.0, N=100)
    m, v = _compose_chain(sde)
    torch.testing.assert_close(m, torch.ones(100, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(v, sde.discrete_sigmas ** 2, rtol=1e-12, atol=0)
    a_i, s_i = sde.discrete_marginal_coeffs(torch.arange(100))
    torch.testing.assert_close(a_i, m, rtol=0, atol=0)
    torch.testing.assert_close(s_i, sde.discrete_sigmas, rtol=1e-14, atol=0)


def test_subvp_discretize_is_euler_off_grid():
    sde = SubVPSDE(beta_min=0.3, beta_max=7.5, N=50)
    x = data((3, 4))
    ts = [0.123, 0.5, 0.987]
    f, G = sde.discretize(x, torch.tensor(ts, dtype=F64))
    cf = [closed_form("subvp", (0.3, 7.5), s) for s in ts]
    torch.testing.assert_close(f, col([c[0] / 50 for c in cf], x) * x, rtol=RTOL64, atol=0)
    torch.testing.assert_close(G, torch.tensor([c[1] / math.sqrt(50) for c in cf], dtype=F64), rtol=RTOL64, atol=0)


# ---------------------------------------------------------------------------------------------
# prior
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
def test_prior_sampling(kind, kwargs, params):
    sde = make(kind, kwargs)
    prior_std = params[1] if kind == "ve" else 1.0
    z = sde.prior_sampling((4, 3, 2, 2))
    assert z.shape == (4, 3, 2, 2) and z.dtype == torch.float32 and z.device.type == "cpu"
    z64 = sde.prior_sampling([5, 7], dtype=F64, device="cpu")
    assert z64.shape == (5, 7) and z64.dtype == F64
    a = sde.prior_sampling((6, 3), generator=torch.Generator().manual_seed(123))
    b = sde.prior_sampling((6, 3), generator=torch.Generator().manual_seed(123))
    c = sde.prior_sampling((6, 3), generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # moments: n iid N(0, s^2) draws have SE(mean) = s / sqrt(n), SE(sample std) ~= s / sqrt(2n)
    n = 200_000
    w = sde.prior_sampling((n // 4, 4), generator=torch.Generator().manual_seed(7), dtype=F64).flatten()
    assert abs(w.mean().item()) < 5 * prior_std / math.sqrt(n)
    assert abs(w.std().item() - prior_std) < 5 * prior_std / math.sqrt(2 * n)


@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 3)], ids=["BD", "BCHW"])
def test_prior_logp(kind, kwargs, params, shape):
    sde = make(kind, kwargs)
    prior_std = params[1] if kind == "ve" else 1.0
    z = data(shape, seed=3) * prior_std * 1.3
    ref = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(prior_std, dtype=F64)) \
        .log_prob(z).flatten(1).sum(1)
    lp = sde.prior_logp(z)
    assert lp.shape == (shape[0],)
    torch.testing.assert_close(lp, ref, rtol=1e-13, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# reverse-time SDE and probability-flow ODE
# ---------------------------------------------------------------------------------------------
class _Score:
    """s(x, t) = -(1 + t) x; records the t it is called with."""

    def __init__(self):
        self.ts = []

    def __call__(self, x, t):
        self.ts.append(t)
        return -(1.0 + t).reshape(t.shape + (1,) * (x.dim() - 1)) * x


@pytest.mark.parametrize("kind,kwargs,params", CASES, ids=IDS)
@pytest.mark.parametrize("pf", [False, True], ids=["sde", "pf-ode"])
def test_reverse(kind, kwargs, params, pf):
    sde = make(kind, kwargs)
    score = _Score()
    rev = sde.reverse(score, probability_flow=pf)
    assert isinstance(rev, ReverseSDE)
    assert rev.N == sde.N and rev.T == sde.T
    lam = 0.5 if pf else 1.0
    N = sde.N
    idx = [0, 3, N // 2, N - 1]
    ts = [i / (N - 1) for i in idx]
    x = data((len(ts), 2, 3), seed=5)
    t = torch.tensor(ts, dtype=F64)
    s = -col([1 + v for v in ts], x) * x
    cf = [closed_form(kind, params, v) for v in ts]
    c = col([v[0] for v in cf], x)
    g = torch.tensor([v[1] for v in cf], dtype=F64)

    exp_drift = c * x - lam * col(g ** 2, x) * s
    exp_diff = torch.zeros_like(g) if pf else g
    torch.testing.assert_close(rev.drift(x, t), exp_drift, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rev.diffusion(t), exp_diff, rtol=RTOL64, atol=0)
    d, gg = rev.sde(x, t)
    torch.testing.assert_close(d, exp_drift, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gg, exp_diff, rtol=RTOL64, atol=0)
    # the score saw the per-sample times
    torch.testing.assert_close(score.ts[0], t, rtol=0, atol=0)

    ref = [closed_discrete(kind, params, N, i) for i in idx]
    fd = col([r[0] for r in ref], x) * x
    G = torch.tensor([r[1] for r in ref], dtype=F64)
    rf, rG = rev.discretize(x, t)
    torch.testing.assert_close(rf, fd - lam * col(G ** 2, x) * s, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(rG, torch.zeros_like(G) if pf else G, rtol=1e-12, atol=0)

    # float t goes through as well
    c1, g1, _, _ = closed_form(kind, params, 0.4)
    x1 = x[:2]
    torch.testing.assert_close(rev.drift(x1, 0.4), c1 * x1 - lam * g1 ** 2 * (-1.4 * x1), rtol=1e-12, atol=1e-14)


def test_reverse_time_check():
    rev = VPSDE().reverse(lambda x, t: -x)
    with pytest.raises(ValueError, match=r"\bt\b"):
        rev.drift(torch.zeros(2, 2), 1.5)
    with pytest.raises(ValueError, match=r"\bt\b"):
        rev.discretize(torch.zeros(2, 2), torch.tensor([0.2, -0.1]))


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE, VESDE])
@pytest.mark.parametrize("bad_t", [-0.1, 1.0001, 2.0, float("nan")])
def test_t_out_of_range_float(cls, bad_t):
    sde = cls()
    x = torch.zeros(3, 2)
    for call in (lambda: sde.drift(x, bad_t), lambda: sde.marginal_prob(x, bad_t),
                 lambda: sde.sde(x, bad_t), lambda: sde.discretize(x, bad_t),
                 lambda: sde.diffusion(bad_t)):
        with pytest.raises(ValueError, match=r"\bt\b"):
            call()


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE, VESDE])
@pytest.mark.parametrize("bad", [[0.5, -1e-6, 0.2], [0.5, 1.2, 0.2]])
def test_t_out_of_range_tensor(cls, bad):
    sde = cls()
    x = torch.zeros(3, 2)
    t = torch.tensor(bad)
    for call in (lambda: sde.drift(x, t), lambda: sde.marginal_prob(x, t),
                 lambda: sde.sde(x, t), lambda: sde.discretize(x, t), lambda: sde.diffusion(t)):
        with pytest.raises(ValueError, match=r"\bt\b"):
            call()


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE, VESDE])
def test_t_boundaries_accepted(cls):
    sde = cls()
    x = torch.zeros(2, 2)
    sde.marginal_prob(x, 0.0)
    sde.marginal_prob(x, 1.0)
    sde.discretize(x, torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE, VESDE])
def test_t_wrong_shape(cls):
    sde = cls()
    x = torch.zeros(3, 2)
    for t in (torch.full((4,), 0.5), torch.full((2,), 0.5), torch.full((3, 1), 0.5), torch.full((1, 3), 0.5)):
        for call in (lambda: sde.drift(x, t), lambda: sde.marginal_prob(x, t), lambda: sde.discretize(x, t)):
            with pytest.raises(ValueError):
                call()


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE, VESDE])
@pytest.mark.parametrize("N", [1, 0, -5, 10.0, 2.5, "100", True])
def test_bad_N(cls, N):
    with pytest.raises(ValueError, match=r"\bN\b"):
        cls(N=N)


def test_small_N_ok():
    assert VESDE(N=2).N == 2
    for cls in (VPSDE, SubVPSDE):
        assert cls(beta_max=1.5, N=2).N == 2


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE])
@pytest.mark.parametrize("b0,b1", [(20.0, 0.1), (1.0, 1.0), (-0.1, 20.0), (0.1, float("inf")), (float("nan"), 1.0)])
def test_bad_betas(cls, b0, b1):
    with pytest.raises(ValueError, match="beta_min"):
        cls(beta_min=b0, beta_max=b1)


@pytest.mark.parametrize("s0,s1", [(0.0, 50.0), (-0.01, 50.0), (50.0, 0.01), (1.0, 1.0), (0.01, float("inf"))])
def test_bad_sigmas(s0, s1):
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=s0, sigma_max=s1)


# ---- regressions found while writing the tests above ---------------------------------------------

def test_nan_tensor_time_is_rejected():
    with pytest.raises(ValueError, match="t must lie in"):
        VPSDE().marginal_prob(torch.zeros(2, 3), torch.tensor([float("nan"), 0.5]))


def test_zero_dim_float64_time_keeps_dtype():
    g = VPSDE().diffusion(torch.tensor(0.5, dtype=torch.float64))
    assert g.dtype == torch.float64
    alpha, sigma = VESDE().marginal_coeffs(torch.tensor(0.5, dtype=torch.float64))
    assert alpha.dtype == sigma.dtype == torch.float64


def test_numpy_integer_N_is_accepted():
    import numpy as np
    assert VPSDE(N=np.int64(100)).N == 100


def test_vp_discretize_float32_has_no_cancellation():
    """f = (sqrt(1 - beta) - 1) x loses ~1e-4 relative accuracy in float32 when computed naively."""
    sde = VPSDE()
    x = torch.ones(1, 1, dtype=torch.float32)
    f, _ = sde.discretize(x, 0.0)
    exact = math.sqrt(1 - 1e-4) - 1
    assert abs(f.item() - exact) <= 2 * abs(exact) * torch.finfo(torch.float32).eps


def test_vp_chain_with_beta_at_least_one_is_rejected():
    """beta_max / N >= 1 would make some beta_i >= 1: alphas <= 0 and a NaN chain."""
    for cls in (VPSDE, SubVPSDE):
        with pytest.raises(ValueError, match="beta_max / N"):
            cls(N=10)
        cls(beta_max=5.0, N=10)  # fine
