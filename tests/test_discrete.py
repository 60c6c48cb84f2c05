"""Discrete-time methods reproduced exactly: DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2)
and DDIM's update (Song, Meng & Ermon 2021, Eq. 12) on the DDPM schedule, each written out by hand
here from the papers and compared with the library, step for step, with the same noise."""
import math

import pytest
import torch

import scoresde as sd
from scoresde import sampling as S

F64 = torch.float64
# The samplers evaluate index 0 at t = max(0, eps); with eps this small the hand-written
# references below, which round t back to the chain index, see index 0 there too.
EPS0 = 1e-6


@pytest.fixture
def vp():
    return sd.VPSDE()  # N = 1000, betas 1e-4 ... 0.02


def eps_model(mixture, sde):
    """An 'epsilon network' for the discrete chain: eps(x, i) = -sqrt(1 - alphā_i) score(x, t_i), the
    exact noise predictor of the continuous VP marginal at t_i = i / (N - 1)."""
    score = mixture.score_fn(sde)

    def eps(x, i):
        ab = sde.alphas_cumprod[i]
        return -math.sqrt(1 - ab) * score(x, torch.full((x.shape[0],), i / (sde.N - 1), dtype=x.dtype))
    return eps


def discrete_score(mixture, sde):
    """The score the samplers see, consistent with eps_model on the chain's times."""
    eps = eps_model(mixture, sde)

    def score(x, t):
        i = round(t[0].item() * (sde.N - 1))
        return -eps(x, i) / math.sqrt(1 - sde.alphas_cumprod[i])
    return score


def test_ancestral_on_all_indices_is_ddpm_algorithm_2(mixture, vp):
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    eps = eps_model(mixture, vp)
    betas, alphas, abar = vp.discrete_betas, vp.alphas, vp.alphas_cumprod
    g = torch.Generator().manual_seed(1)
    x = x_T.clone()
    for i in range(vp.N - 1, -1, -1):  # Algorithm 2: for t = T, ..., 1 (index i = t - 1)
        z = torch.randn(x.shape, generator=g, dtype=F64) if i > 0 else torch.zeros_like(x)
        x = (x - betas[i] / torch.sqrt(1 - abar[i]) * eps(x, i)) / torch.sqrt(alphas[i]) + torch.sqrt(betas[i]) * z
    ours = S.ancestral(discrete_score(mixture, vp), vp, x_T, timesteps=range(vp.N - 1, -1, -1),
                       eps=EPS0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)


def ddim_by_hand(eps, sde, x, timesteps, eta, g):
    """Eq. (12) of the DDIM paper with sigma_t(eta) of Eq. (16); alphā_prev = 1 after the last index."""
    abar = sde.alphas_cumprod
    ts = list(timesteps)
    for k, i in enumerate(ts):
        a_t = abar[i]
        a_prev = abar[ts[k + 1]] if k + 1 < len(ts) else torch.tensor(1.0, dtype=F64)
        e = eps(x, i)
        x0 = (x - torch.sqrt(1 - a_t) * e) / torch.sqrt(a_t)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t)) * torch.sqrt(1 - a_t / a_prev)
        x = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev - sigma ** 2) * e
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=g, dtype=F64)
    return x


@pytest.mark.parametrize("timesteps", [[999, 749, 499, 249, 0], list(range(980, -1, -20)), [999, 500, 3]])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_with_timesteps_is_the_papers_update(mixture, vp, timesteps, eta):
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = ddim_by_hand(eps_model(mixture, vp), vp, x_T.clone(), timesteps, eta, torch.Generator().manual_seed(2))
    ours = S.ddim(discrete_score(mixture, vp), vp, x_T, timesteps=timesteps, eta=eta, eps=EPS0,
                  generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_ddim_without_denoise_stops_at_last_index(mixture, vp):
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = [999, 749, 499, 249]
    expected = ddim_by_hand(eps_model(mixture, vp), vp, x_T.clone(), ts, 0.0, None)
    # stopping on the last index: the same update without the final step to alphā = 1
    x = x_T.clone()
    eps = eps_model(mixture, vp)
    abar = vp.alphas_cumprod
    for i, j in zip(ts[:-1], ts[1:]):
        e = eps(x, i)
        x = torch.sqrt(abar[j]) * (x - torch.sqrt(1 - abar[i]) * e) / torch.sqrt(abar[i]) + torch.sqrt(1 - abar[j]) * e
    ours = S.ddim(discrete_score(mixture, vp), vp, x_T, timesteps=ts, denoise=False)
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)
    # and denoising from there is the final step of the full update
    full = S.ddim(discrete_score(mixture, vp), vp, x_T, timesteps=ts, eps=EPS0)
    torch.testing.assert_close(full, expected, rtol=1e-10, atol=1e-10)


def test_ddim_eta1_is_ancestral_with_posterior_variance(mixture, vp):
    """eta = 1 draws from q(x_{t-1} | x_t, x̂_0): DDPM ancestral sampling with the posterior variance."""
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = list(range(999, -1, -37))
    score = discrete_score(mixture, vp)
    a = S.ddim(score, vp, x_T, timesteps=ts, eta=1.0, eps=EPS0, generator=torch.Generator().manual_seed(4))
    b = S.ancestral(score, vp, x_T, timesteps=ts, variance="posterior", eps=EPS0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_ve_ancestral_on_all_indices_is_smld(mixture):
    """SMLD ancestral sampling (Song et al. 2021, Eq. 47): x_{i-1} = x_i + (s_i^2 - s_{i-1}^2) score
    + sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2) z, then the noiseless denoising step from sigma_0."""
    sde = sd.VESDE(N=200)
    sig = sde.discrete_sigmas
    score = mixture.score_fn(sde)
    t_of = lambda i, x: torch.full((x.shape[0],), max(i / (sde.N - 1), EPS0), dtype=F64)
    x_T = sde.prior_sampling((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    g = torch.Generator().manual_seed(5)
    x = x_T.clone()
    for i in range(sde.N - 1, 0, -1):
        d = sig[i] ** 2 - sig[i - 1] ** 2
        x = x + d * score(x, t_of(i, x)) + torch.sqrt(sig[i - 1] ** 2 * d / sig[i] ** 2) * torch.randn(x.shape, generator=g, dtype=F64)
    x = x + sig[0] ** 2 * score(x, t_of(0, x))
    ours = S.ancestral(score, sde, x_T, timesteps=range(sde.N - 1, -1, -1), eps=EPS0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)


def test_reverse_discretize_is_ancestral_mean_to_first_order(mixture, vp):
    """The reference's reverse-diffusion predictor x - f + G^2 score and DDPM's posterior mean
    (x + beta score) / sqrt(1 - beta) agree to O(beta^2) on one step of the chain."""
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    score = mixture.score_fn(vp)
    for i in (10, 500, 999):
        t = torch.full((32,), i / (vp.N - 1), dtype=F64)
        rev_f, G = vp.reverse(score).discretize(x, t)
        beta = vp.discrete_betas[i]
        ancestral_mean = (x + beta * score(x, t)) / torch.sqrt(1 - beta)
        diff = (x - rev_f - ancestral_mean).abs().max()
        assert diff <= 2 * beta ** 2 * (x.abs().max() + score(x, t).abs().max()), (i, diff)
        torch.testing.assert_close(G, torch.sqrt(beta).expand(32))
