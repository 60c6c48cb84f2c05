"""Tests that kill the mutants of scoresde/analytic.py the tests in test_analytic.py let through
(``make mutation MODULE=analytic``; see mutation/REPORT.md).

Expected densities are written out with the ``math`` module (univariate normals, and a 2x2
covariance's determinant and inverse by hand). The "meta" device stands in for an accelerator:
a result computed on, or moved to, the wrong device is caught without a GPU.
"""
import math

import pytest
import torch

from scoresde import VPSDE
from scoresde.analytic import GaussianMixture

F64 = torch.float64
META = torch.device("meta")


def log_normal_1d(x, mu, var):
    return -0.5 * (math.log(2 * math.pi * var) + (x - mu) ** 2 / var)


def log_normal_2d(x, mu, S):
    (a, b), (_, d) = S
    det = a * d - b * b
    u, v = x[0] - mu[0], x[1] - mu[1]
    quad = (d * u * u - 2 * b * u * v + a * v * v) / det
    return -0.5 * (2 * math.log(2 * math.pi) + math.log(det) + quad)


POINTS = [[0.3, -0.7], [1.0, -1.0], [-2.0, 0.5]]


# ---- shapes of the parameters that the main tests do not use ------------------------------------
def test_single_component_is_one_gaussian():
    S = [[2.0, 0.5], [0.5, 1.0]]
    mix = GaussianMixture([2.0], [[1.0, -1.0]], [S])
    assert mix.num_components == 1 and mix.weights.tolist() == [1.0]
    lp = mix.log_prob(torch.tensor(POINTS, dtype=F64))
    expected = [log_normal_2d(p, [1.0, -1.0], S) for p in POINTS]
    torch.testing.assert_close(lp, torch.tensor(expected, dtype=F64), rtol=1e-13, atol=0)


def test_zero_weight_component_is_allowed_and_ignored():
    mix = GaussianMixture([0.0, 3.0], [[5.0, 5.0], [0.0, 0.0]], [1.0, 0.5])
    assert mix.weights.tolist() == [0.0, 1.0]
    lp = mix.log_prob(torch.tensor(POINTS, dtype=F64))
    expected = [log_normal_1d(p[0], 0.0, 0.5) + log_normal_1d(p[1], 0.0, 0.5) for p in POINTS]
    torch.testing.assert_close(lp, torch.tensor(expected, dtype=F64), rtol=1e-13, atol=0)


def test_one_dimensional_means_as_a_flat_list():
    # K scalar means are K components in D = 1
    mix = GaussianMixture([0.25, 0.75], [-1.0, 2.0], [0.5, 2.0])
    assert mix.dim == 1 and mix.means.shape == (2, 1)
    xs = [-1.3, 0.0, 2.5]
    lp = mix.log_prob(torch.tensor(xs, dtype=F64)[:, None])
    expected = [math.log(0.25 * math.exp(log_normal_1d(x, -1.0, 0.5)) + 0.75 * math.exp(log_normal_1d(x, 2.0, 2.0)))
                for x in xs]
    torch.testing.assert_close(lp, torch.tensor(expected, dtype=F64), rtol=1e-13, atol=0)


def test_a_batch_of_one_point():
    mix = GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 2.0]])
    lp = mix.log_prob(torch.tensor([[1.0, 2.0]], dtype=F64))
    assert lp.shape == (1,)
    assert lp.item() == pytest.approx(log_normal_1d(1.0, 0, 1.0) + log_normal_1d(2.0, 0, 2.0), rel=1e-14)


# ---- the symmetry and definiteness checks are relative to the covariance's scale --------------------
def test_covariance_checks_scale_with_the_covariance():
    # an asymmetry of 1e-11 relative (rounding of a large covariance) is accepted ...
    big = [[1e6, 3e5 + 1e-5], [3e5, 2e6]]
    GaussianMixture([1.0], [[0.0, 0.0]], [big])
    # ... but not an asymmetry of 1e-6 relative on a covariance of order 1
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.3 + 1e-6], [0.3, 2.0]]])
    # a tiny eigenvalue next to a large one is fine, a slightly negative one is taken as rounding (0)
    for tiny in (1e-7, -1e-7):
        mix = GaussianMixture([1.0], [[0.0, 0.0]], [[1e6, tiny]])
        assert mix._lam.min().item() == max(tiny, 0.0)
    # a clearly negative eigenvalue is not
    with pytest.raises(ValueError, match="semi-definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, -1e-6]])


# ---- device and dtype follow the data ---------------------------------------------------------------
@pytest.fixture
def mix():
    return GaussianMixture([0.2, 0.8], [[-1.0, 0.0], [1.0, 0.5]], [[[0.3, 0.1], [0.1, 0.2]], [[0.5, 0.0], [0.0, 0.4]]])


def test_low_precision_data_keep_their_dtype(mix):
    x = torch.tensor(POINTS, dtype=F64)
    ref = mix.log_prob(x)
    for dtype, tol in ((torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
        lp = mix.log_prob(x.to(dtype))
        assert lp.dtype == dtype
        torch.testing.assert_close(lp.double(), ref, rtol=tol, atol=tol)
        assert mix.classify(x.to(dtype)).tolist() == mix.classify(x).tolist()


def test_results_live_on_the_device_of_the_data(mix):
    x = torch.zeros(3, 2, device=META)
    sde = VPSDE()
    assert mix.log_prob(x).device == META and mix.log_prob(x).shape == (3,)
    assert mix.classify(x).device == META
    assert mix.log_prob_t(x, 0.5, sde).device == META
    assert mix.score(x, 0.5, sde).device == META and mix.score(x, 0.5, sde).shape == (3, 2)


def test_sample_without_generator_and_of_one_point(mix):
    x = mix.sample(7)
    assert x.shape == (7, 2) and x.dtype == torch.float32 and x.device.type == "cpu" and torch.isfinite(x).all()
    one, k = mix.sample(1, torch.Generator().manual_seed(0), return_components=True)
    assert one.shape == (1, 2) and k.shape == (1,)


def test_sample_device(mix):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    ref, kref = mix.sample(6, g(), dtype=F64, return_components=True)
    # an explicit device is where the draws end up
    for gen in (None, g()):
        x, k = mix.sample(6, gen, device="meta", return_components=True)
        assert x.device == META and k.device == META
    # without one they are made where the generator lives, whatever the default device is
    with torch.device("meta"):
        x, k = mix.sample(6, g(), dtype=F64, return_components=True)
    assert x.device.type == "cpu" and k.device.type == "cpu"
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    assert torch.equal(k, kref)
