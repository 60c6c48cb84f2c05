"""Tests of scoresde.analytic.GaussianMixture: exact density, p_t under the linear SDEs, score, sampling.

Reference values are computed independently: torch.distributions.MultivariateNormal with the
covariance matrices written out in the test, p_t's coefficients alpha(t), sigma(t) from the
closed forms of Song et al. (2021) in the ``math`` module, and 1-D / 2-D integrals by trapezoid
quadrature. For a Gaussian integrand of width s the trapezoid rule with step h has error
~exp(-2 pi^2 s^2 / h^2) (spectral accuracy), negligible for s/h >= 5; the tolerances below are
therefore set by float64 summation rounding (~1e-13 relative) with a safety margin.
Monte-Carlo checks use 5 standard errors, each SE derived in the test.
"""
import math

import pytest
import torch

from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.analytic import GaussianMixture

F64 = torch.float64


def coeffs(sde, t):
    """(alpha(t), sigma(t)) of p_0t(x_t | x_0) = N(alpha x_0, sigma^2 I), from the closed forms."""
    if isinstance(sde, VESDE):
        return 1.0, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    b0, b1 = sde.beta_min, sde.beta_max
    B = b0 * t + 0.5 * (b1 - b0) * t * t
    alpha = math.exp(-0.5 * B)
    if isinstance(sde, SubVPSDE):
        return alpha, -math.expm1(-B)
    return alpha, math.sqrt(-math.expm1(-B))


SDES = [VPSDE(), SubVPSDE(), VESDE(), VESDE(sigma_min=0.05, sigma_max=20.0, N=100)]
SDE_IDS = ["vp", "subvp", "ve", "ve-custom"]

# three parameterizations of the covariances: full (K,D,D), diagonal (K,D), isotropic (K,)
W_RAW = [1.0, 2.5, 1.5]
MEANS = [[-2.0, 1.0], [1.5, -0.5], [0.0, 3.0]]
FULL = [[[0.5, 0.2], [0.2, 0.3]], [[1.0, -0.4], [-0.4, 0.6]], [[0.2, 0.0], [0.0, 0.8]]]
DIAG = [[0.5, 0.3], [1.0, 0.6], [0.2, 0.8]]
ISO = [0.5, 1.0, 0.2]


def full_covs(kind):
    if kind == "full":
        return torch.tensor(FULL, dtype=F64)
    if kind == "diag":
        return torch.stack([torch.diag(torch.tensor(d, dtype=F64)) for d in DIAG])
    return torch.stack([v * torch.eye(2, dtype=F64) for v in ISO])


def raw_covs(kind):
    return {"full": FULL, "diag": DIAG, "iso": ISO}[kind]


def ref_log_prob(x, weights, means, covs):
    """Independent log sum_k w_k N(x; means_k, covs_k), float64."""
    w = torch.as_tensor(weights, dtype=F64)
    logw = (w / w.sum()).log()
    mu = torch.as_tensor(means, dtype=F64)
    comps = [torch.distributions.MultivariateNormal(mu[k], covariance_matrix=covs[k]).log_prob(x) + logw[k]
             for k in range(len(w))]
    return torch.logsumexp(torch.stack(comps, dim=1), dim=1)


def points(n=64, D=2, seed=0, scale=2.5):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, D, generator=g, dtype=F64) + torch.tensor([0.0, 1.0], dtype=F64)[:D]


# ---------------------------------------------------------------------------------------------
# log_prob of the data distribution
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["full", "diag", "iso"])
def test_log_prob_matches_multivariate_normal(kind):
    gm = GaussianMixture(W_RAW, MEANS, raw_covs(kind))
    assert gm.dim == 2 and gm.num_components == 3
    torch.testing.assert_close(gm.weights, torch.tensor(W_RAW, dtype=F64) / 5.0, rtol=1e-15, atol=0)
    torch.testing.assert_close(gm.covs, full_covs(kind), rtol=0, atol=0)
    x = points()
    ref = ref_log_prob(x, W_RAW, MEANS, full_covs(kind))
    lp = gm.log_prob(x)
    assert lp.shape == (64,) and lp.dtype == F64
    torch.testing.assert_close(lp, ref, rtol=1e-12, atol=1e-12)
    # float32 input: float32 output, equal to float32 rounding (values O(10), a few ulps of 10)
    lp32 = gm.log_prob(x.float())
    assert lp32.dtype == torch.float32
    torch.testing.assert_close(lp32.double(), ref, rtol=1e-5, atol=1e-5)


def test_log_prob_3d_full_and_diag():
    g = torch.Generator().manual_seed(11)
    A = torch.randn(2, 3, 3, generator=g, dtype=F64)
    covs = A @ A.transpose(1, 2) + 0.3 * torch.eye(3, dtype=F64)
    means = torch.randn(2, 3, generator=g, dtype=F64)
    x = torch.randn(40, 3, generator=g, dtype=F64) * 2
    gm = GaussianMixture(torch.tensor([0.4, 0.6]), means, covs)
    torch.testing.assert_close(gm.log_prob(x), ref_log_prob(x, torch.tensor([0.4, 0.6]).double(), means, covs), rtol=1e-12, atol=1e-12)
    d = torch.tensor([[0.3, 1.2, 0.7], [2.0, 0.1, 0.5]], dtype=F64)
    gm = GaussianMixture([0.4, 0.6], means, d)
    torch.testing.assert_close(gm.log_prob(x), ref_log_prob(x, [0.4, 0.6], means, torch.diag_embed(d)),
                               rtol=1e-12, atol=1e-12)


def test_normalization_1d_quadrature():
    # weights deliberately unnormalised; widths 0.3 .. 1.1, grid step 0.005 (s/h >= 60),
    # range +-15 leaves tails < 1e-40.
    gm = GaussianMixture([2.0, 6.0, 1.0], [[-3.0], [0.5], [4.0]], [0.09, 1.21, 0.49])
    x = torch.linspace(-15, 15, 6001, dtype=F64)[:, None]
    p = gm.log_prob(x).exp()
    assert abs(torch.trapezoid(p, x[:, 0]).item() - 1.0) < 1e-11


@pytest.mark.parametrize("kind", ["full", "diag", "iso"])
def test_normalization_2d_quadrature(kind):
    # smallest std 0.3 over a step of 0.04 (s/h = 7.5: trapezoid error ~exp(-1100)); range covers
    # > 12 std of every component.
    gm = GaussianMixture(W_RAW, MEANS, raw_covs(kind))
    u = torch.linspace(-9, 11, 501, dtype=F64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    p = gm.log_prob(torch.stack([X.flatten(), Y.flatten()], 1)).exp().reshape(501, 501)
    total = torch.trapezoid(torch.trapezoid(p, u, dim=1), u).item()
    assert abs(total - 1.0) < 1e-10


# ---------------------------------------------------------------------------------------------
# p_t under the SDEs
# ---------------------------------------------------------------------------------------------
def ref_log_prob_t(x, t, sde, kind):
    a, s = coeffs(sde, t)
    covs = a * a * full_covs(kind) + s * s * torch.eye(2, dtype=F64)
    return ref_log_prob(x, W_RAW, a * torch.tensor(MEANS, dtype=F64), covs)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("kind", ["full", "diag", "iso"])
def test_log_prob_t_and_marginal(sde, kind):
    gm = GaussianMixture(W_RAW, MEANS, raw_covs(kind))
    x = points(n=20, seed=1, scale=4.0)
    for t in [0.0, 1e-3, 0.3, 1.0]:
        ref = ref_log_prob_t(x, t, sde, kind)
        torch.testing.assert_close(gm.log_prob_t(x, t, sde), ref, rtol=1e-12, atol=1e-12)
        m = gm.marginal(sde, t)
        assert isinstance(m, GaussianMixture)
        a, s = coeffs(sde, t)
        torch.testing.assert_close(m.weights, gm.weights, rtol=1e-15, atol=0)
        torch.testing.assert_close(m.means, a * torch.tensor(MEANS, dtype=F64), rtol=1e-13, atol=0)
        torch.testing.assert_close(m.covs, a * a * full_covs(kind) + s * s * torch.eye(2, dtype=F64),
                                   rtol=1e-13, atol=0)
        torch.testing.assert_close(m.log_prob(x), ref, rtol=1e-12, atol=1e-12)
    # per-sample times as a (B,) tensor
    ts = torch.linspace(0, 1, 20, dtype=F64)
    ref = torch.stack([ref_log_prob_t(x[i:i + 1], float(ts[i]), sde, kind)[0] for i in range(20)])
    torch.testing.assert_close(gm.log_prob_t(x, ts, sde), ref, rtol=1e-12, atol=1e-12)


def test_log_prob_t_at_zero_is_log_prob_vp():
    gm = GaussianMixture(W_RAW, MEANS, FULL)
    x = points(n=10, seed=2)
    torch.testing.assert_close(gm.log_prob_t(x, 0.0, VPSDE()), gm.log_prob(x), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_point_masses_at_positive_t(sde):
    # covs = 0 (Dirac masses, PSD but singular): p_t is the mixture of N(alpha mu_k, sigma^2 I).
    gm = GaussianMixture([0.25, 0.75], [[1.0, -1.0], [-2.0, 0.5]], [0.0, 0.0])
    x = points(n=16, seed=3)
    for t in [0.05, 0.6, 1.0]:
        a, s = coeffs(sde, t)
        covs = torch.stack([s * s * torch.eye(2, dtype=F64)] * 2)
        ref = ref_log_prob(x, [0.25, 0.75], a * torch.tensor([[1.0, -1.0], [-2.0, 0.5]], dtype=F64), covs)
        torch.testing.assert_close(gm.log_prob_t(x, t, sde), ref, rtol=1e-12, atol=1e-12)
        xg = x.clone().requires_grad_(True)
        g, = torch.autograd.grad(gm.log_prob_t(xg, t, sde).sum(), xg)
        torch.testing.assert_close(gm.score(x, t, sde), g, rtol=1e-10, atol=1e-12)


def test_convolution_by_quadrature_1d():
    # p_t(y) = ∫ p_0(x) N(y; alpha x, sigma^2) dx, p_0 written out by hand. Narrowest integrand
    # width: min(sigma/alpha, 0.5) >= 0.01 (VE at t = 0) against h = 1e-3.
    w, mu, var = [0.3, 0.7], [-1.5, 2.0], [0.25, 0.6]
    gm = GaussianMixture(w, [[m] for m in mu], var)
    x = torch.linspace(-12, 12, 24001, dtype=F64)

    def npdf(z, m, v):
        return torch.exp(-0.5 * (z - m) ** 2 / v) / math.sqrt(2 * math.pi * v)

    p0 = sum(wk * npdf(x, mk, vk) for wk, mk, vk in zip(w, mu, var))
    ys = [-3.0, -1.0, 0.5, 2.2, 4.0]
    for sde in SDES:
        for t in [0.0, 0.05, 0.4, 1.0]:
            a, s = coeffs(sde, t)
            if s == 0.0:
                continue  # VP / sub-VP at t = 0: the kernel is a Dirac mass
            quad = torch.stack([torch.trapezoid(p0 * npdf(torch.tensor(y, dtype=F64), a * x, s * s), x) for y in ys])
            got = gm.log_prob_t(torch.tensor(ys, dtype=F64)[:, None], t, sde).exp()
            torch.testing.assert_close(got, quad, rtol=1e-9, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------
def ref_score(x, t, sde, kind):
    """-sum_k r_k C_k^{-1} (x - alpha mu_k), written out with linalg.solve."""
    a, s = coeffs(sde, t)
    C = a * a * full_covs(kind) + s * s * torch.eye(2, dtype=F64)
    mu = a * torch.tensor(MEANS, dtype=F64)
    logw = (torch.tensor(W_RAW, dtype=F64) / 5.0).log()
    logn = torch.stack([torch.distributions.MultivariateNormal(mu[k], C[k]).log_prob(x) for k in range(3)], 1)
    r = torch.softmax(logw + logn, 1)
    prec = torch.stack([torch.linalg.solve(C[k], (x - mu[k]).T).T for k in range(3)], 1)   # (B, K, D)
    return -(r[..., None] * prec).sum(1)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("kind", ["full", "diag", "iso"])
def test_score_is_gradient_of_log_prob_t(sde, kind):
    gm = GaussianMixture(W_RAW, MEANS, raw_covs(kind))
    x = points(n=24, seed=4, scale=3.0)
    sf = gm.score_fn(sde)
    for t in [0.0, 1e-5, 1e-3, 0.1, 0.5, 1.0]:
        xg = x.clone().requires_grad_(True)
        g, = torch.autograd.grad(gm.log_prob_t(xg, t, sde).sum(), xg)
        sc = gm.score(x, t, sde)
        assert sc.shape == x.shape and sc.dtype == F64
        # values are O(1e-4 .. 1e2); both sides are float64 evaluations of the same function
        torch.testing.assert_close(sc, g, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(sc, ref_score(x, t, sde, kind), rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(sf(x, t), sc, rtol=0, atol=0)
        tt = torch.full((24,), t, dtype=F64)
        torch.testing.assert_close(sf(x, tt), sc, rtol=0, atol=0)


def test_score_image_shaped_data():
    D = 12
    g = torch.Generator().manual_seed(5)
    means = torch.randn(3, D, generator=g, dtype=F64)
    variances = 0.2 + torch.rand(3, D, generator=g, dtype=F64)
    gm = GaussianMixture([0.2, 0.3, 0.5], means, variances)
    sde = VPSDE()
    x = torch.randn(6, 3, 2, 2, generator=g, dtype=F64)
    t = torch.tensor([0.0, 0.01, 0.2, 0.5, 0.8, 1.0], dtype=F64)
    sc = gm.score(x, t, sde)
    assert sc.shape == (6, 3, 2, 2)
    torch.testing.assert_close(sc.reshape(6, D), gm.score(x.reshape(6, D), t, sde), rtol=0, atol=0)
    xg = x.clone().requires_grad_(True)
    lp = gm.log_prob_t(xg, t, sde)
    assert lp.shape == (6,)
    grad, = torch.autograd.grad(lp.sum(), xg)
    torch.testing.assert_close(sc, grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gm.score_fn(sde)(x, t), sc, rtol=0, atol=0)
    # against the independent density of the flattened data
    a = torch.tensor([coeffs(sde, float(s))[0] for s in t], dtype=F64)
    s2 = torch.tensor([coeffs(sde, float(s))[1] ** 2 for s in t], dtype=F64)
    for i in range(6):
        covs = torch.diag_embed(a[i] ** 2 * variances + s2[i])
        ref = ref_log_prob(x[i].reshape(1, D), [0.2, 0.3, 0.5], a[i] * means, covs)
        torch.testing.assert_close(lp[i:i + 1].detach(), ref, rtol=1e-12, atol=1e-12)


def test_score_float32():
    gm = GaussianMixture(W_RAW, MEANS, FULL)
    x = points(n=8, seed=6)
    sc = gm.score(x.float(), 0.3, VPSDE())
    assert sc.dtype == torch.float32
    # scores here are O(1..10); float32 rounding of a few ops: rtol 1e-4 / atol 1e-5 (~1e3 ulps at worst)
    torch.testing.assert_close(sc.double(), ref_score(x.float().double(), 0.3, VPSDE(), "full"), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# sampling and classification
# ---------------------------------------------------------------------------------------------
def test_sample_reproducible_and_dtype():
    gm = GaussianMixture(W_RAW, MEANS, FULL)
    a = gm.sample(50, generator=torch.Generator().manual_seed(1))
    b = gm.sample(50, generator=torch.Generator().manual_seed(1))
    c = gm.sample(50, generator=torch.Generator().manual_seed(2))
    assert a.shape == (50, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    d, k = gm.sample(50, generator=torch.Generator().manual_seed(1), dtype=F64, return_components=True)
    assert d.dtype == F64 and k.shape == (50,) and k.dtype == torch.int64
    assert int(k.min()) >= 0 and int(k.max()) <= 2


@pytest.mark.parametrize("kind", ["full", "diag", "iso"])
def test_sample_moments(kind):
    n = 40_000
    gm = GaussianMixture(W_RAW, MEANS, raw_covs(kind))
    x, k = gm.sample(n, generator=torch.Generator().manual_seed(2024), dtype=F64, return_components=True)
    w = torch.tensor(W_RAW, dtype=F64) / 5.0
    mu = torch.tensor(MEANS, dtype=F64)
    S = full_covs(kind)
    # component fractions: binomial SE sqrt(w (1 - w) / n)
    frac = torch.bincount(k, minlength=3).double() / n
    assert ((frac - w).abs() < 5 * (w * (1 - w) / n).sqrt()).all(), (frac, w)
    for j in range(3):
        xj = x[k == j]
        nj = xj.shape[0]
        # mean: SE sqrt(S_dd / n_j)
        assert ((xj.mean(0) - mu[j]).abs() < 5 * (S[j].diagonal() / nj).sqrt()).all()
        # covariance about the true mean: Var(y_a y_b) = S_aa S_bb + S_ab^2 for y ~ N(0, S)
        y = xj - mu[j]
        emp = y.T @ y / nj
        se = ((S[j].diagonal()[:, None] * S[j].diagonal()[None, :] + S[j] ** 2) / nj).sqrt()
        assert ((emp - S[j]).abs() < 5 * se).all(), (emp, S[j])
    # the whole mixture: mean m = sum w mu, covariance sum w (S + mu mu^T) - m m^T
    m = (w[:, None] * mu).sum(0)
    Sig = (w[:, None, None] * (S + mu[:, :, None] * mu[:, None, :])).sum(0) - torch.outer(m, m)
    assert ((x.mean(0) - m).abs() < 5 * (Sig.diagonal() / n).sqrt()).all()
    y = x - m
    prods = y[:, :, None] * y[:, None, :]
    se = prods.std(0) / math.sqrt(n)        # plug-in Monte-Carlo SE of each entry
    assert ((prods.mean(0) - Sig).abs() < 5 * se).all(), (prods.mean(0), Sig)


def test_classify():
    # well separated: means >= 8 apart, std 0.7: misclassification probability < 1e-8 per point
    gm = GaussianMixture([0.3, 0.3, 0.4], [[8.0, 0.0], [-8.0, 0.0], [0.0, 8.0]], [0.5, 0.5, 0.5])
    x, k = gm.sample(3000, generator=torch.Generator().manual_seed(3), dtype=F64, return_components=True)
    c = gm.classify(x)
    assert c.shape == (3000,)
    assert (c == k).double().mean().item() > 0.99
    # overlapping mixture: classify is the argmax of the posterior, computed independently
    gm = GaussianMixture(W_RAW, MEANS, FULL)
    x = points(n=200, seed=8)
    logw = (torch.tensor(W_RAW, dtype=F64) / 5.0).log()
    logn = torch.stack([torch.distributions.MultivariateNormal(torch.tensor(MEANS[j], dtype=F64),
                                                               torch.tensor(FULL[j], dtype=F64)).log_prob(x)
                        for j in range(3)], 1)
    assert torch.equal(gm.classify(x), (logw + logn).argmax(1))
    assert len(set(gm.classify(x).tolist())) == 3


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [[0.5, -0.1, 0.6], [[0.3, 0.3, 0.4]], [], [0.0, 0.0, 0.0],
                                     [float("nan"), 1.0, 1.0]])
def test_bad_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(weights, MEANS, FULL)


@pytest.mark.parametrize("means", [MEANS[:2], [MEANS], [[0.0, 1.0, 2.0]] * 4, [[float("inf"), 0.0]] * 3])
def test_bad_means(means):
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(W_RAW, means, ISO)


@pytest.mark.parametrize("covs", [
    [[[1.0, 0.5], [0.0, 1.0]]] * 3,          # not symmetric
    [[[1.0, 2.0], [2.0, 1.0]]] * 3,          # eigenvalues 3, -1
    [[-1.0, 1.0]] * 3,                       # negative diagonal variance
    [1.0, -0.5, 1.0],                        # negative isotropic variance
    [[1.0, 1.0, 1.0]] * 3,                   # (K, D+1)
    [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]] * 3,  # (K, D, D+1)
    [1.0, 1.0],                              # (K-1,)
    [[[1.0, 0.0], [0.0, 1.0]]] * 2,          # (K-1, D, D)
])
def test_bad_covs(covs):
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(W_RAW, MEANS, covs)


def test_bad_x():
    gm = GaussianMixture(W_RAW, MEANS, FULL)
    sde = VPSDE()
    for x in (torch.zeros(4, 3), torch.zeros(2), torch.zeros(4, 2, 2), torch.zeros(4, 1)):
        for call in (lambda: gm.log_prob(x), lambda: gm.log_prob_t(x, 0.5, sde),
                     lambda: gm.score(x, 0.5, sde), lambda: gm.classify(x)):
            with pytest.raises(ValueError, match=r"\bx\b"):
                call()


def test_bad_t_and_n():
    gm = GaussianMixture(W_RAW, MEANS, FULL)
    with pytest.raises(ValueError, match=r"\bt\b"):
        gm.score(torch.zeros(3, 2), 1.5, VPSDE())
    with pytest.raises(ValueError, match=r"\bt\b"):
        gm.log_prob_t(torch.zeros(3, 2), torch.tensor([0.1, -0.2, 0.3]), VESDE())
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"\bn\b"):
            gm.sample(n)


def test_singular_covariance_at_sigma_zero_is_a_clear_error():
    """A zero-variance direction has no density at t = 0: one clear error, never NaN."""
    gm = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [3.0, 0.0]], [[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="singular"):
        gm.log_prob(x)
    with pytest.raises(ValueError, match="singular"):
        gm.classify(x)
    # at t > 0 the VP marginal has full rank and everything is finite
    assert torch.isfinite(gm.log_prob_t(x, 0.1, VPSDE())).all()
