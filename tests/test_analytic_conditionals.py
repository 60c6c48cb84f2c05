"""The exact conditionals of GaussianMixture (class posterior, class score, component, linear-observation
posterior), each against an independent computation: multivariate normal densities and autograd,
Bayes' rule pointwise, and the textbook partitioned-Gaussian (Schur complement) formulas."""
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.analytic import GaussianMixture

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}


def mixture_4d(seed=0):
    g = torch.Generator().manual_seed(seed)
    K, D = 3, 4
    B = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    covs = B @ B.transpose(1, 2) / D + 0.1 * torch.eye(D, dtype=torch.float64)
    means = 2 * torch.randn(K, D, generator=g, dtype=torch.float64)
    return GaussianMixture([0.5, 0.3, 0.2], means, covs)


def component_log_densities(gm, x, t, sde):
    """log w_k N(x; alpha mu_k, alpha^2 S_k + sigma^2 I) by torch.distributions, (B, K)."""
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
    eye = torch.eye(gm.dim, dtype=torch.float64)
    return torch.stack([math.log(gm.weights[k]) + MultivariateNormal(alpha * gm.means[k], alpha ** 2 * gm.covs[k]
                                                                    + sigma ** 2 * eye).log_prob(x)
                        for k in range(gm.num_components)], dim=1)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_class_log_prob_is_bayes_rule_on_the_noisy_components(sde_name, t):
    gm, sde = mixture_4d(), SDES[sde_name]
    x = gm.marginal(sde, t).sample(64, torch.Generator().manual_seed(1), dtype=torch.float64)
    logj = component_log_densities(gm, x, t, sde)
    expected = logj - torch.logsumexp(logj, dim=1, keepdim=True)
    got = gm.class_log_prob(x, t, sde)
    assert got.shape == (64, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_class_score_is_the_gradient_of_the_component_density(sde_name):
    gm, sde, t = mixture_4d(), SDES[sde_name], 0.3
    x = gm.marginal(sde, t).sample(16, torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_(True)
    y = torch.arange(16) % 3
    picked = component_log_densities(gm, x, t, sde).gather(1, y[:, None]).sum()
    expected, = torch.autograd.grad(picked, x)
    torch.testing.assert_close(gm.class_score(x.detach(), t, sde, y), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(gm.class_score(x.detach(), t, sde, None), gm.score(x.detach(), t, sde))
    cond = gm.class_score_fn(sde)
    torch.testing.assert_close(cond(x.detach(), t, 2), gm.class_score(x.detach(), t, sde, torch.full((16,), 2)))


def test_component_is_that_gaussian_alone():
    gm = mixture_4d()
    x = torch.randn(10, 4, dtype=torch.float64)
    for k in range(3):
        c = gm.component(k)
        assert c.num_components == 1
        torch.testing.assert_close(c.log_prob(x), MultivariateNormal(gm.means[k], gm.covs[k]).log_prob(x),
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("noise_std", [0.3, 1e-2])
def test_condition_is_bayes_rule_pointwise(noise_std):
    """log p(x | y) - log p(x' | y) = [log p(x) + log N(y; A x, s^2)] - [the same at x'] for any two points,
    and the posterior is normalised (a GaussianMixture is): together they pin it down."""
    gm = mixture_4d()
    g = torch.Generator().manual_seed(3)
    A = torch.randn(2, 4, generator=g, dtype=torch.float64)
    y = A @ gm.means[1] + 0.1
    post = gm.condition(A, y, noise_std=noise_std)
    x = post.sample(32, g, dtype=torch.float64)
    lik = MultivariateNormal(x @ A.T, noise_std ** 2 * torch.eye(2, dtype=torch.float64)).log_prob(y)
    unnorm = gm.log_prob(x) + lik
    got = post.log_prob(x)
    torch.testing.assert_close(got - got[0], unnorm - unnorm[0], rtol=0, atol=1e-8)


@pytest.mark.parametrize("known", [[0, 2], [1], [0, 1, 3]])
def test_noiseless_inpainting_posterior_is_the_partitioned_gaussian(known):
    """A = rows of the identity: per component the Schur-complement conditional, weights w_k N(y; mu_o, S_oo)."""
    gm = mixture_4d()
    free = [i for i in range(4) if i not in known]
    y = gm.means[0, known] + 0.5
    post = gm.condition(torch.eye(4, dtype=torch.float64)[known], y)
    logw = []
    for k in range(3):
        mu, S = gm.means[k], gm.covs[k]
        S_oo, S_fo = S[known][:, known], S[free][:, known]
        gain = torch.linalg.solve(S_oo, S_fo.T).T
        mean = mu.clone()
        mean[known] = y
        mean[free] = mu[free] + gain @ (y - mu[known])
        cov = torch.zeros(4, 4, dtype=torch.float64)
        cov[torch.tensor(free)[:, None], torch.tensor(free)[None]] = S[free][:, free] - gain @ S_fo.T
        torch.testing.assert_close(post.means[k], mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(post.covs[k], cov, rtol=0, atol=1e-10)
        logw.append(math.log(gm.weights[k]) + MultivariateNormal(mu[known], S_oo).log_prob(y))
    torch.testing.assert_close(post.weights, torch.softmax(torch.stack(logw), 0), rtol=0, atol=1e-10)
    draws = post.sample(100, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(draws[:, known], y.expand(100, -1), rtol=0, atol=1e-10)


def test_condition_moves_the_mode_weights_towards_the_observed_component():
    gm = mixture_4d()
    post = gm.condition(torch.eye(4, dtype=torch.float64)[:2], gm.means[2, :2])
    assert post.weights[2] > 0.9 > gm.weights[2]


@pytest.mark.parametrize("call,message", [
    (lambda gm: gm.component(3), "k must be an integer in [0, 3)"),
    (lambda gm: gm.component(True), "k must be an integer"),
    (lambda gm: gm.condition(torch.ones(2, 3), [0.0, 0.0]), "A must have shape (M, 4)"),
    (lambda gm: gm.condition(torch.eye(4)[:2], [0.0]), "y must have 2 entries"),
    (lambda gm: gm.condition(torch.eye(4)[:2], [0.0, 1.0], noise_std=-1.0), "noise_std must be"),
    (lambda gm: gm.condition(torch.ones(2, 4), [0.0, 1.0]), "degenerate under component 0"),
    (lambda gm: gm.condition(torch.eye(4)[:1], [float("nan")]), "A and y must be finite"),
    (lambda gm: gm.class_score(torch.zeros(2, 4), 0.5, VPSDE(), torch.tensor([0, 3])), "class indices in [0, 3)"),
    (lambda gm: gm.class_score(torch.zeros(2, 4), 0.5, VPSDE(), torch.tensor([0.0, 1.0])), "integer tensor of shape (2,)"),
    (lambda gm: gm.class_score(torch.zeros(2, 4), 0.5, VPSDE(), torch.tensor([0, 1, 2])), "integer tensor of shape (2,)"),
    (lambda gm: gm.class_score(torch.zeros(2, 4), 0.5, VPSDE(), 1.5), "y must be an int or an integer tensor"),
    (lambda gm: gm.condition(torch.zeros(0, 4), []), "A must have shape (M, 4) with M >= 1"),
    # singular relative to its own scale (eigenvalues 1e6 and 1e-7 of A S A^T): numerically degenerate
    (lambda gm: GaussianMixture([1.0], [[0.0, 0.0]], [[1e6, 1e-7]]).condition(torch.eye(2), [0.0, 0.0]),
     "degenerate under component 0"),
])
def test_conditionals_reject_bad_input(call, message):
    with pytest.raises(ValueError) as e:
        call(mixture_4d())
    assert message in str(e.value)


def test_a_single_row_observation_may_be_given_as_a_vector():
    gm = mixture_4d()
    a, b = gm.condition(torch.eye(4)[0], [0.5]), gm.condition(torch.eye(4)[:1], [0.5])
    torch.testing.assert_close(a.means, b.means, rtol=0, atol=0)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [1.0, 1e6])
def test_noiseless_posterior_draws_satisfy_the_observation_at_any_scale(scale):
    """The observed directions of a noiseless posterior have zero variance; eigenvalues at round-off level
    (relative to the covariance's scale) are zeroed, so draws meet A x = y to round-off at any scale."""
    gm0 = mixture_4d()
    gm = GaussianMixture(gm0.weights, gm0.means * math.sqrt(scale), gm0.covs * scale)
    A = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]], dtype=torch.float64)
    y = A @ gm.means[1]
    draws = gm.condition(A, y).sample(200, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(draws @ A.T, y.expand(200, -1), rtol=1e-12, atol=1e-12 * math.sqrt(scale))
