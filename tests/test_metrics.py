"""Two-sample distances (scoresde.metrics): the estimators against direct formulas, closed forms for
Gaussians, unbiasedness under P = Q, power against a shift, symmetry, and blocked summation.

Monte-Carlo checks average R independent replicates and allow 4.5 standard errors, the standard
error taken from the replicates' own spread."""
import math

import pytest
import torch

from scoresde import metrics as M

DELTA = torch.tensor([0.6, -0.3], dtype=torch.float64)


def gauss(n, seed, shift=None, d=2):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x if shift is None else x + shift


def mean_and_se(values):
    v = torch.tensor(values, dtype=torch.float64)
    return v.mean().item(), (v.std() / math.sqrt(len(v))).item()


def assert_within(values, expected, z=4.5, label=""):
    mean, se = mean_and_se(values)
    assert abs(mean - expected) <= z * se, f"{label}: mean {mean:.5f} vs {expected:.5f} (se {se:.5f})"


# ---- the estimators are the documented formulas ------------------------------------------------

def test_energy_distance_is_the_unbiased_formula():
    x, y = gauss(30, 0), gauss(41, 1, DELTA)
    dist = lambda a, b: torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")   # exact diagonal
    dxy, dxx, dyy = dist(x, y), dist(x, x), dist(y, y)
    m, n = len(x), len(y)
    expected = 2 * dxy.mean() - dxx.sum() / (m * (m - 1)) - dyy.sum() / (n * (n - 1))
    assert M.energy_distance(x, y) == pytest.approx(expected.item(), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("bandwidths", [0.7, [0.5, 2.0]])
def test_mmd_is_the_unbiased_formula(bandwidths):
    x, y = gauss(30, 0), gauss(41, 1, DELTA)
    hs = [bandwidths] if isinstance(bandwidths, float) else bandwidths

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in hs) / len(hs)

    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    expected = ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                - 2 * k(x, y).mean())
    assert M.mmd(x, y, bandwidths) == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)


def test_median_bandwidth_is_the_pooled_median_distance():
    x, y = gauss(40, 0), gauss(50, 1, DELTA)
    z = torch.cat([x, y])
    d = torch.pdist(z)
    assert M.median_bandwidth(x, y) == pytest.approx(d.median().item(), rel=1e-9)
    assert M.mmd(x, y) == pytest.approx(M.mmd(x, y, d.median().item()), rel=1e-9)


def test_blocked_sums_do_not_depend_on_the_block_size():
    # Small blocks exercise the off-diagonal doubling and the exact removal of the diagonal.
    x, y = gauss(53, 0), gauss(37, 1, DELTA)
    assert M.energy_distance(x, y, chunk=7) == pytest.approx(M.energy_distance(x, y), rel=1e-10)
    assert M.mmd(x, y, 1.0, chunk=5) == pytest.approx(M.mmd(x, y, 1.0), rel=1e-10)
    assert M.sliced_wasserstein(x, y, chunk=6) == pytest.approx(M.sliced_wasserstein(x, y), rel=1e-10)


def test_sliced_wasserstein_1d_unequal_sizes_by_hand():
    # Quantile functions of {0, 1} and {0, 0.5, 1} differ by 0.5 on (1/3, 2/3]: W2^2 = 0.25 / 3.
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [0.5], [1.0]])
    assert M.sliced_wasserstein(x, y, projections=4) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)


def test_sliced_wasserstein_unequal_sizes_match_equal_size_copies():
    # An empirical law is unchanged when every point is repeated equally often, so (m=4, n=6) must
    # equal the equal-size (12, 12) computation with the same directions.
    x, y = gauss(4, 0), gauss(6, 1, DELTA)
    got = M.sliced_wasserstein(x, y, projections=32, generator=torch.Generator().manual_seed(3))
    ref = M.sliced_wasserstein(x.repeat_interleave(3, 0), y.repeat_interleave(2, 0), projections=32,
                               generator=torch.Generator().manual_seed(3))
    assert got == pytest.approx(ref, rel=1e-12)
    assert M.sliced_wasserstein(x, x.repeat(5, 1)) == pytest.approx(0.0, abs=1e-12)


# ---- closed forms --------------------------------------------------------------------------------

def test_energy_distance_closed_form_1d_gaussians():
    # X ~ N(0, 1), Y ~ N(mu, 1): X - Y ~ N(-mu, 2), and E|N(mu, s^2)| = s sqrt(2/pi) exp(-mu^2/2s^2)
    # + mu (1 - 2 Phi(-mu/s)); so E = 2 E|N(mu, 2)| - 2 * 2/sqrt(pi).
    mu, s = 1.0, math.sqrt(2.0)
    phi = 0.5 * (1 + math.erf(-mu / s / math.sqrt(2)))
    e_abs = s * math.sqrt(2 / math.pi) * math.exp(-mu ** 2 / (2 * s ** 2)) + mu * (1 - 2 * phi)
    expected = 2 * e_abs - 4 / math.sqrt(math.pi)
    values = [M.energy_distance(gauss(400, 2 * r, d=1), gauss(300, 2 * r + 1, mu, d=1)) for r in range(12)]
    assert_within(values, expected, label="energy distance")


def test_mmd_closed_form_2d_gaussians():
    # For N(a, I) vs N(b, I) in D dims and k = exp(-|.|^2 / 2h^2): E k(X, X') = (h^2/(h^2+2))^{D/2} =: c and
    # E k(X, Y) = c exp(-|a-b|^2 / (2 (h^2+2))), so MMD^2 = 2c (1 - exp(-|a-b|^2 / (2 (h^2 + 2)))).
    h, D = 1.0, 2
    c = (h * h / (h * h + 2)) ** (D / 2)
    expected = 2 * c * (1 - math.exp(-DELTA.pow(2).sum().item() / (2 * (h * h + 2))))
    values = [M.mmd(gauss(400, 2 * r), gauss(300, 2 * r + 1, DELTA), h) for r in range(12)]
    assert_within(values, expected, label="mmd")


def test_sliced_wasserstein_of_a_shift():
    # y = x + delta exactly: every projection is shifted by u.delta, so SW^2 = mean_k (u_k.delta)^2,
    # whose expectation for u uniform on the circle is |delta|^2 / 2 (Var cos^2 = 1/8).
    x = gauss(300, 0)
    K = 4096
    sw2 = M.sliced_wasserstein(x, x + DELTA, projections=K) ** 2
    d2 = DELTA.pow(2).sum().item()
    assert abs(sw2 - d2 / 2) <= 4.5 * d2 * math.sqrt(1 / 8 / K)


def test_sliced_wasserstein_closed_form_independent_gaussians():
    # Independent samples: per direction, W2^2(x, y + d) = W2^2(x, y) + d^2 - 2 d (mean x - mean y),
    # so the excess over the same-distribution value averages |delta|^2 / 2 (equal covariances).
    values = []
    for r in range(12):
        x, y = gauss(400, 2 * r), gauss(300, 2 * r + 1)
        g = lambda: torch.Generator().manual_seed(100 + r)
        values.append(M.sliced_wasserstein(x, y + DELTA, 64, g()) ** 2 - M.sliced_wasserstein(x, y, 64, g()) ** 2)
    assert_within(values, DELTA.pow(2).sum().item() / 2, label="sliced Wasserstein")


# ---- null behaviour, power, symmetry ----------------------------------------------------------

R = 24


@pytest.mark.parametrize("metric", [M.energy_distance, M.mmd])
def test_unbiased_near_zero_under_the_null(metric):
    values = [metric(gauss(150, 2 * r), gauss(100, 2 * r + 1)) for r in range(R)]
    assert_within(values, 0.0, label=metric.__name__)


def test_the_null_check_detects_a_biased_estimator():
    # The V-statistic (diagonal included) is biased upward by O(1/n); the unbiasedness check above
    # must be able to see that, or it would prove nothing.
    def mmd_v(x, y, h):
        k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * h * h)).mean()
        return (k(x, x) + k(y, y) - 2 * k(x, y)).item()

    values = [mmd_v(gauss(150, 2 * r), gauss(100, 2 * r + 1), 1.0) for r in range(R)]
    mean, se = mean_and_se(values)
    assert mean > 4.5 * se


@pytest.mark.parametrize("metric", [M.energy_distance, M.mmd, M.sliced_wasserstein])
def test_shift_is_clearly_detected(metric):
    null = [metric(gauss(300, 2 * r), gauss(300, 2 * r + 1)) for r in range(8)]
    shifted = [metric(gauss(300, 2 * r), gauss(300, 2 * r + 1, DELTA)) for r in range(8)]
    mean, sd = torch.tensor(null).mean().item(), torch.tensor(null).std().item()
    assert min(shifted) > max(null)
    assert min(shifted) > mean + 5 * sd


@pytest.mark.parametrize("metric", [M.energy_distance, M.mmd, M.sliced_wasserstein])
def test_symmetric_and_flattening(metric):
    x, y = gauss(60, 0, d=12), gauss(45, 1, 0.3, d=12)
    assert metric(x, y) == pytest.approx(metric(y, x), rel=1e-10)
    # (B, 3, 2, 2) images are flattened to (B, 12); float32 inputs are computed in float64.
    assert metric(x.reshape(-1, 3, 2, 2), y.reshape(-1, 3, 2, 2)) == pytest.approx(metric(x, y), rel=1e-10)
    assert metric(x.float(), y.float()) == pytest.approx(metric(x.float().double(), y.float().double()), rel=1e-10)


def test_sliced_wasserstein_is_deterministic_by_default_and_follows_the_generator():
    x, y = gauss(50, 0), gauss(50, 1, DELTA)
    assert M.sliced_wasserstein(x, y) == M.sliced_wasserstein(x, y)
    a = M.sliced_wasserstein(x, y, 8, torch.Generator().manual_seed(1))
    assert a == M.sliced_wasserstein(x, y, 8, torch.Generator().manual_seed(1))
    assert a != M.sliced_wasserstein(x, y, 8, torch.Generator().manual_seed(2))


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda x, y: M.mmd(x, y[:, :1]), "same number of features"),
    (lambda x, y: M.energy_distance(x[:1], y), "at least 2 samples"),
    (lambda x, y: M.mmd(x, y, bandwidths=-1.0), "bandwidths"),
    (lambda x, y: M.mmd(x, y, bandwidths=[]), "bandwidths"),
    (lambda x, y: M.sliced_wasserstein(x, y, projections=0), "projections"),
    (lambda x, y: M.energy_distance(x, y, chunk=0), "chunk"),
    (lambda x, y: M.energy_distance(x.numpy(), y), "x must be a real tensor"),
    (lambda x, y: M.sliced_wasserstein(x, torch.full_like(y, float("nan"))), "NaN"),
])
def test_bad_input_is_one_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(gauss(10, 0), gauss(10, 1))


# ---- Fréchet distance -------------------------------------------------------------------------------

def _random_spd(d, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, rank or d, generator=g, dtype=torch.float64)
    return A @ A.T / (rank or d)


def _frechet_by_scipy(mu1, s1, mu2, s2):
    """The textbook formula with scipy's general matrix square root of s1 s2 (independent code)."""
    import numpy as np
    from scipy import linalg
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy())
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d,rank1,rank2", [(2, None, None), (16, None, None), (64, None, None), (32, 31, None),
                                           (32, 20, 25)], ids=["2", "16", "64", "nearly-singular", "low-rank"])
def test_frechet_distance_matches_scipy(d, rank1, rank2):
    """Against scipy.linalg.sqrtm of sigma1 sigma2, to 1e-6 relative, for random SPD matrices, one of
    rank d - 1 and two of low rank (singular: the eigendecomposition route must still be exact)."""
    g = torch.Generator().manual_seed(d)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    s1, s2 = _random_spd(d, 1, rank1), _random_spd(d, 2, rank2)
    ours, ref = M.frechet_distance(mu1, s1, mu2, s2), _frechet_by_scipy(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= 1e-6 * max(1.0, abs(ref)), (ours, ref)


def test_frechet_distance_closed_forms():
    """Commuting covariances: |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2; identical Gaussians: 0."""
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 0.0], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = 5.0 + float(((a.sqrt() - b.sqrt()) ** 2).sum())
    assert M.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    s = _random_spd(8, 3)
    assert M.frechet_distance(torch.ones(8), s, torch.ones(8), s) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="frechet_distance needs mu"):
        M.frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))
