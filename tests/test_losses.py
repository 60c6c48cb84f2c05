"""Losses checked against exact scores of a Gaussian mixture.

Denoising score matching has a closed-form excess: for any model s = s* + delta with the exact
score s* and a constant offset delta, E[sigma s* + z | x_t] = 0, so per sample

    ||sigma (s* + delta) + z||^2 - ||sigma s* + z||^2 = sigma^2 ||delta||^2 + 2 sigma delta . (sigma s* + z)

has expectation E_t[sigma(t)^2] ||delta||^2 (likewise g^2 ||delta||^2 with the likelihood weighting,
(1 - abar_i) ||delta||^2 for DDPM, sigma_i^2 ||delta||^2 for SMLD). Evaluating both losses on the same
draws (common random numbers) and comparing the mean difference with that value within a few Monte-Carlo
standard errors checks that the loss is minimised by the true score with the right weighting.
"""
import math

import pytest
import torch

import scoresde as sd
from scoresde.losses import LOSSES, ddpm_loss, dsm_loss, likelihood_weight_table, smld_loss
from scoresde.nets import MLP
from scoresde.score import ScoreModel

DELTA = 0.1  # offset added to every coordinate of the exact score


def repeated(loss_fn, models, sde, x0_fn, reps, seed=0, **kwargs):
    """Loss of each model on the same reps draws: a (reps, len(models)) float64 tensor."""
    out = torch.empty(reps, len(models), dtype=torch.float64)
    for r in range(reps):
        x0 = x0_fn(torch.Generator().manual_seed(10_000 + seed * 1000 + r))
        for m, model in enumerate(models):
            out[r, m] = loss_fn(model, sde, x0, generator=torch.Generator().manual_seed(seed * 1000 + r), **kwargs)
    return out


def offset(score_fn, delta):
    return lambda x, t: score_fn(x, t) + delta


def quad_mean(f, a, b, n=200_001):
    """(1 / (b - a)) ∫_a^b f(t) dt by the trapezoidal rule on a log-spaced grid (f may be ~1/t near 0)."""
    u = torch.linspace(math.log(a), math.log(b), n, dtype=torch.float64)
    t = u.exp()
    h = f(t) * t
    return (torch.trapezoid(h, u) / (b - a)).item()


def assert_within(mean, expected, se, z, label):
    assert abs(mean - expected) < z * se, f"{label}: {mean:.5g} vs expected {expected:.5g} (se {se:.2g}, {z} se allowed)"


@pytest.fixture
def x0_fn(mixture):
    return lambda g: mixture.sample(256, g, dtype=torch.float64)


# ---- the exact score minimises each loss, with exactly the predicted excess ------------------------
@pytest.mark.parametrize("likelihood_weighting", [False, True], ids=["sigma2", "g2"])
def test_dsm_exact_score_is_minimal_with_the_predicted_excess(mixture, sde, x0_fn, likelihood_weighting):
    eps = 1e-3
    exact = mixture.score_fn(sde)
    losses = repeated(dsm_loss, [exact, offset(exact, DELTA), lambda x, t: 1.1 * exact(x, t)], sde, x0_fn, 40,
                      eps=eps, likelihood_weighting=likelihood_weighting)
    diff = losses[:, 1:] - losses[:, :1]                             # common random numbers
    mean, se = diff.mean(0), diff.std(0) / math.sqrt(len(diff))
    assert (mean > 5 * se).all(), f"perturbed scores not clearly worse: mean excess {mean.tolist()}, se {se.tolist()}"
    weight = (lambda t: sde.diffusion(t, t) ** 2) if likelihood_weighting else (lambda t: sde.marginal_coeffs(t, t)[1] ** 2)
    assert_within(mean[0].item(), DELTA ** 2 * quad_mean(weight, eps, sde.T), se[0].item(), 4, "offset excess")


def test_dsm_sigma_weighted_value_is_the_conditional_noise_variance(mixture):
    """At fixed t the default loss is E||z - E[z|x_t]||^2 / D; for one Gaussian N(0, v I) that is
    v alpha^2 / (v alpha^2 + sigma^2) exactly, so the loss is its average over t ~ U(eps, T)."""
    sde, v, eps = sd.VPSDE(), 0.25, 1e-3
    gauss = sd.GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [v])
    losses = repeated(dsm_loss, [gauss.score_fn(sde)], sde, lambda g: gauss.sample(512, g, dtype=torch.float64), 30, eps=eps)
    a = lambda t: sde.marginal_coeffs(t, t)[0] ** 2 * v  # noqa: E731
    expected = quad_mean(lambda t: a(t) / (a(t) + sde.marginal_coeffs(t, t)[1] ** 2), eps, sde.T)
    assert_within(losses.mean().item(), expected, losses.std().item() / math.sqrt(len(losses)), 4, "loss value")


def discrete_vp(sde):
    """A stand-in SDE whose marginals at t_i are the DDPM chain's: alpha_i = sqrt(abar_i), sigma_i = sqrt(1 - abar_i)."""
    class Discrete:
        def marginal_coeffs(self, t, like):
            a, s = sde.discrete_marginal_coeffs(sde.index(sde.time(t, like)))
            return a.to(like.dtype), s.to(like.dtype)
    return Discrete()


def test_ddpm_loss_exact_discrete_score_is_minimal(mixture, x0_fn):
    sde = sd.VPSDE()
    exact = mixture.score_fn(discrete_vp(sde))
    losses = repeated(ddpm_loss, [exact, offset(exact, DELTA), lambda x, t: 1.1 * exact(x, t)], sde, x0_fn, 40)
    diff = losses[:, 1:] - losses[:, :1]
    mean, se = diff.mean(0), diff.std(0) / math.sqrt(len(diff))
    assert (mean > 5 * se).all(), f"perturbed scores not clearly worse: {mean.tolist()} (se {se.tolist()})"
    # eps_hat moves by -sqrt(1 - abar_i) delta: expected excess delta^2 E_i[1 - abar_i]
    assert_within(mean[0].item(), DELTA ** 2 * (1 - sde.alphas_cumprod).mean().item(), se[0].item(), 4, "offset excess")


def test_ddpm_loss_uses_the_score_models_own_noise_prediction(mixture):
    """With a ScoreModel the loss is Ho et al.'s ||net(x_i, t_i) - z||^2 on the raw network output: an
    eps-"network" that is the exact discrete noise prediction gives the same loss as the exact score."""
    sde = sd.VPSDE()
    dsde = discrete_vp(sde)

    class ExactEps(torch.nn.Module):
        def forward(self, x, t):
            return -dsde.marginal_coeffs(t, x)[1][:, None] * mixture.score(x, t, dsde)

    class Wrapper(torch.nn.Module):
        """Stands in for DistributedDataParallel: holds the model as .module and forwards every argument."""

        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    model = ScoreModel(ExactEps(), sde, parameterization="eps")
    x0 = mixture.sample(512, torch.Generator().manual_seed(5), dtype=torch.float64)
    # 512 draws of i from 1000 steps: also exercise index 0, where sigma(t_0 = 0) = 0 makes the score infinite
    x0 = torch.cat([x0, x0[:1]])
    models = (model, Wrapper(model), mixture.score_fn(dsde))
    got = [ddpm_loss(m, sde, x0, generator=torch.Generator().manual_seed(6)) for m in models]
    assert torch.isfinite(got[0])
    torch.testing.assert_close(got[0], got[2], rtol=1e-10, atol=0)
    torch.testing.assert_close(got[1], got[0], rtol=0, atol=0)


def test_ddpm_loss_is_finite_at_step_zero():
    """Every draw at i = 0 (t = 0): the eps network's prediction is used directly, never -sigma(0) * score."""
    sde = sd.VPSDE(beta_max=1.0, N=2)  # i in {0, 1}: about half the draws hit t = 0
    model = ScoreModel(lambda x, c: torch.zeros_like(x), sde, parameterization="eps")
    assert torch.isfinite(ddpm_loss(model, sde, torch.randn(64, 2), generator=torch.Generator().manual_seed(0)))


def test_smld_loss_exact_score_is_minimal(mixture, x0_fn):
    sde = sd.VESDE()
    exact = mixture.score_fn(sde)  # the SMLD ladder is sigma(t_i) exactly
    losses = repeated(smld_loss, [exact, offset(exact, DELTA), lambda x, t: 1.1 * exact(x, t)], sde, x0_fn, 40)
    diff = losses[:, 1:] - losses[:, :1]
    mean, se = diff.mean(0), diff.std(0) / math.sqrt(len(diff))
    assert (mean > 5 * se).all(), f"perturbed scores not clearly worse: {mean.tolist()} (se {se.tolist()})"
    assert_within(mean[0].item(), DELTA ** 2 * (sde.discrete_sigmas ** 2).mean().item(), se[0].item(), 4, "offset excess")


# ---- importance sampling ---------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.5])
def test_importance_table_normaliser(sde, eps):
    """Z = ∫_eps^T g^2 / sigma^2 dt in closed form: VE 2 log(smax/smin) (T - eps); VP log(e^B - 1) at the
    end points; sub-VP [log(e^B - 1) + log(1 - e^-B)] = the integral of beta (1 + e^-B) / (1 - e^-B)."""
    _, cum, Z = likelihood_weight_table(sde, eps)
    assert Z == cum[-1].item() and bool((torch.diff(cum) > 0).all())
    t = torch.tensor([eps, sde.T], dtype=torch.float64)
    if isinstance(sde, sd.VESDE):
        exact = 2 * math.log(sde.sigma_max / sde.sigma_min) * (sde.T - eps)
    else:
        B = sde.beta_integral(t)
        F = torch.log(torch.expm1(B))
        if isinstance(sde, sd.SubVPSDE):
            F = F + torch.log(-torch.expm1(-B))
        exact = (F[1] - F[0]).item()
    assert abs(Z - exact) < 1e-6 * exact  # trapezoid error on the log-t grid is ~1e-7 relative


def test_importance_sampling_is_exact_for_ve(mixture, x0_fn):
    """For VE, g^2 / sigma^2 is constant: p(t) is uniform and the weight Z / (T - eps) = g^2 / sigma^2, so with
    the same draws the importance-sampled loss equals the plain likelihood-weighted one up to rounding."""
    sde = sd.VESDE()
    x0 = x0_fn(torch.Generator().manual_seed(7))
    kw = dict(likelihood_weighting=True, eps=1e-5)
    a = dsm_loss(mixture.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(8), **kw)
    b = dsm_loss(mixture.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(8), importance_sampling=True, **kw)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize("sde_name", ["vp", "subvp"])
def test_importance_sampling_unbiased_and_lower_variance(mixture, x0_fn, sde_name):
    sde = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE()}[sde_name]
    score = offset(mixture.score_fn(sde), DELTA)  # an imperfect model: its loss varies more with t
    kw = dict(likelihood_weighting=True, eps=1e-3)
    plain = repeated(dsm_loss, [score], sde, x0_fn, 60, seed=1, **kw)[:, 0]
    weighted = repeated(dsm_loss, [score], sde, x0_fn, 60, seed=2, importance_sampling=True, **kw)[:, 0]
    se = math.sqrt(plain.var() / len(plain) + weighted.var() / len(weighted))
    assert_within(weighted.mean().item(), plain.mean().item(), se, 4, "importance-sampled mean")
    # The true variance ratio here is ~13 (VP) and ~18 (sub-VP), measured over 4000 draws each; the plain
    # loss is heavy-tailed (kurtosis ~8), so the ratio of 60-draw sample variances spreads widely, but in
    # 66 independent trials it never fell below 5.6. Demand a factor of 3.
    assert weighted.var() < plain.var() / 3, f"variance {weighted.var():.3g} vs {plain.var():.3g} without importance sampling"


def test_importance_sampled_times_follow_the_weight(x0_fn):
    """The draws of t have the density g^2 / sigma^2 / Z: compare the fraction in [eps, t_mid] with C(t_mid) / Z."""
    sde, eps = sd.VPSDE(), 1e-3
    seen = []

    def record(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    for r in range(20):
        dsm_loss(record, sde, torch.zeros(500, 1), eps=eps, likelihood_weighting=True, importance_sampling=True,
                 generator=torch.Generator().manual_seed(r))
    t = torch.cat(seen).double()
    assert bool((t >= eps).all() and (t <= sde.T).all())
    B = sde.beta_integral(torch.tensor([eps, 0.1, sde.T], dtype=torch.float64))
    F = torch.log(torch.expm1(B))
    p = ((F[1] - F[0]) / (F[2] - F[0])).item()
    frac = (t <= 0.1).double().mean().item()
    assert_within(frac, p, math.sqrt(p * (1 - p) / len(t)), 4.5, "fraction of t below 0.1")


# ---- reductions, reproducibility, registry ---------------------------------------------------------
@pytest.mark.parametrize("name", ["dsm", "ddpm", "smld"])
def test_sum_is_dimension_times_mean(mixture, name):
    sde = {"dsm": sd.SubVPSDE(), "ddpm": sd.VPSDE(), "smld": sd.VESDE()}[name]
    x0 = mixture.sample(64, torch.Generator().manual_seed(9), dtype=torch.float64)
    score = offset(mixture.score_fn(sde), DELTA)
    m = LOSSES[name](score, sde, x0, reduce="mean", generator=torch.Generator().manual_seed(1))
    s = LOSSES[name](score, sde, x0, reduce="sum", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s, x0.shape[1] * m, rtol=1e-12, atol=0)
    assert s.dim() == 0


@pytest.mark.parametrize("name", ["dsm", "ddpm", "smld"])
def test_reproducible_with_a_generator(mixture, name):
    sde = {"dsm": sd.VPSDE(), "ddpm": sd.VPSDE(), "smld": sd.VESDE()}[name]
    x0 = mixture.sample(32, torch.Generator().manual_seed(9))
    score = offset(mixture.score_fn(sde), DELTA)
    a, b, c = (LOSSES[name](score, sde, x0, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_images_and_float32(mixture):
    """Data of any shape (B, C, H, W) and float32 work; the per-sample mean is over C*H*W elements."""
    sde = sd.VPSDE()
    x0 = torch.randn(4, 2, 3, 3)
    z_only = dsm_loss(lambda x, t: torch.zeros_like(x), sde, x0, generator=torch.Generator().manual_seed(0))
    # a zero score leaves ||z||^2 / D, whose mean over 4 x 18 standard normals has sd sqrt(2 / 72)
    assert z_only.dtype == torch.float32 and abs(z_only.item() - 1) < 5 * math.sqrt(2 / 72)


@pytest.mark.parametrize("call, word", [
    (lambda s, x: ddpm_loss(s, sd.VESDE(), x), "sde"),
    (lambda s, x: ddpm_loss(s, sd.SubVPSDE(), x), "sde"),
    (lambda s, x: smld_loss(s, sd.VPSDE(), x), "sde"),
    (lambda s, x: dsm_loss(s, "vp", x), "sde"),
    (lambda s, x: dsm_loss(s, sd.VPSDE(), x, reduce="max"), "reduce"),
    (lambda s, x: ddpm_loss(s, sd.VPSDE(), x, reduce="none"), "reduce"),
    (lambda s, x: dsm_loss(s, sd.VPSDE(), x, importance_sampling=True), "importance_sampling"),
    (lambda s, x: dsm_loss(s, sd.VPSDE(), x, eps=0.0), "eps"),
    (lambda s, x: dsm_loss(s, sd.VPSDE(), x, eps=1.0), "eps"),
    (lambda s, x: dsm_loss(s, sd.VPSDE(), x, eps=-1e-3), "eps"),
    (lambda s, x: dsm_loss(s, sd.VPSDE(), x.long()), "x0"),
    (lambda s, x: dsm_loss(s, sd.VPSDE(), x[0]), "x0"),
    (lambda s, x: dsm_loss("score", sd.VPSDE(), x), "model"),
    (lambda s, x: dsm_loss(lambda x, t: x[:, :1], sd.VPSDE(), x), "model"),
])
def test_bad_input_raises_value_error_naming_it(call, word):
    with pytest.raises(ValueError, match=word):
        call(lambda x, t: torch.zeros_like(x), torch.randn(8, 2))


# ---- a short training run ----------------------------------------------------------------------------
def test_training_reduces_the_loss():
    torch.manual_seed(0)
    sde = sd.VPSDE()
    data = sd.GaussianMixture([0.5, 0.5], [[-1.5, 0.0], [1.5, 0.0]], [0.05, 0.05])
    model = ScoreModel(MLP(2, hidden=64, depth=2, embed_dim=32), sde)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        loss = dsm_loss(model, sde, data.sample(256, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = torch.tensor(losses[:20]), torch.tensor(losses[-20:])
    drop = first.mean() - last.mean()
    se = math.sqrt(first.var() / 20 + last.var() / 20)
    # The untrained (zero) network's loss is E||z||^2 / D = 1 and the exact score's about 0.15 here:
    # demand the loss at least halve, by more than 5 standard errors of the two window means.
    assert drop > 0.5 * first.mean() and drop > 5 * se, f"loss {first.mean():.3f} -> {last.mean():.3f} (se {se:.3f})"
