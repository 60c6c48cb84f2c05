"""Tests that kill the mutants of scoresde/likelihood.py that test_likelihood.py lets through
(``make mutation MODULE=likelihood``; see mutation/REPORT.md).

test_likelihood.py checks what the likelihood estimates (against exact mixture densities). These
check the plumbing around it against an independent computation: ``bits_per_dim`` is
``log_likelihood`` of its own dequantized pixels (same draws, same fields), the divergence
estimators are their formulas, the defaults are the documented ones, every bad argument is named in
its error, and the adaptive solver never evaluates the score outside [eps, T].
"""
import math

import pytest
import torch

import scoresde as sd
from scoresde import likelihood as L
from scoresde._checks import NonFiniteError

F64 = torch.float64
EPS = 1e-5


def normal_score(x, t):
    """The exact VP score of N(0, I) data: p_t = N(0, I) at every t."""
    return -x


def half_score(x, t):
    """Not any exact score, but one whose probability-flow drift (-beta x / 4 under VP) has a
    non-zero divergence, so that Hutchinson's estimate depends on the probes drawn."""
    return -0.5 * x


def pixels(shape, seed=0, dtype=F64):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---- bits_per_dim is log_likelihood of its dequantized pixels ------------------------------------
@pytest.mark.parametrize("shape", [(1, 2), (3, 2), (4,), (2, 1, 2, 2)], ids=["B=1", "B=3", "1-D", "image"])
@pytest.mark.parametrize("dequantize", [True, False])
def test_bits_per_dim_equals_log_likelihood_of_its_dequantized_pixels(shape, dequantize):
    """Recomputed by hand: u = (x + U) / 256 with U drawn first from the generator (or 0.5), y on
    [-1, 1], then log_likelihood with the same generator (the Gaussian probes come next), and
    bpd = -(log p(y) + D log(2/256)) / (D log 2). Every field must agree to rounding."""
    sde = sd.VPSDE()
    x = pixels(shape)
    kw = dict(estimator="hutchinson", noise="gaussian", probes=2, method="euler", steps=6, eps=EPS)
    res = sd.bits_per_dim(half_score, sde, x, dequantize=dequantize, generator=torch.Generator().manual_seed(5), **kw)

    g = torch.Generator().manual_seed(5)
    u = torch.rand(shape, generator=g, dtype=F64) if dequantize else torch.full(shape, 0.5, dtype=F64)
    y = -1.0 + 2.0 * (x + u) / 256.0
    ref = sd.log_likelihood(half_score, sde, y, generator=g, **kw)
    other = sd.log_likelihood(half_score, sde, y, generator=torch.Generator().manual_seed(6), **kw)
    assert not torch.equal(ref.delta_logp, other.delta_logp)          # the probes matter here
    D = math.prod(shape[1:])
    bpd = -(ref.logp + D * math.log(2.0 / 256.0)) / (D * math.log(2.0))
    assert res.bpd.dtype == F64 and res.bpd.shape == (shape[0],)
    for name in ("logp", "z", "prior_logp", "delta_logp"):
        torch.testing.assert_close(getattr(res, name), getattr(ref, name), rtol=1e-12, atol=1e-12, msg=name)
    torch.testing.assert_close(res.bpd, bpd, rtol=1e-12, atol=1e-12)
    assert res.nfe == ref.nfe == 6


def test_bits_per_dim_draws_without_a_generator():
    """generator=None: dequantization noise from the global generator, a finite answer per sample."""
    res = sd.bits_per_dim(normal_score, sd.VPSDE(), pixels((3, 2)), method="euler", steps=2)
    assert res.bpd.shape == (3,) and bool(torch.isfinite(res.bpd).all())


@pytest.mark.parametrize("value", [0.0, 255.0])
def test_bits_per_dim_accepts_the_ends_of_the_8_bit_scale(value):
    x = torch.full((2, 2), value, dtype=F64)
    res = sd.bits_per_dim(normal_score, sd.VPSDE(), x, method="euler", steps=2, dequantize=False)
    assert bool(torch.isfinite(res.bpd).all())


@pytest.mark.parametrize("bad", [-1.0, 256.0, 2.5], ids=["negative", "256", "fraction"])
def test_bits_per_dim_rejects_values_off_the_8_bit_scale(bad):
    x = pixels((2, 2))
    x[1, 0] = bad
    with pytest.raises(ValueError, match=r"^x must hold integer pixel values in \[0, 255\] \(the 8-bit scale\)$"):
        sd.bits_per_dim(normal_score, sd.VPSDE(), x)


@pytest.mark.parametrize("x,got", [([[1, 2]], "list"), (torch.tensor(3.0), "Tensor"), (torch.zeros(0, 2), "Tensor")],
                         ids=["list", "0-dim", "empty"])
def test_bits_per_dim_rejects_what_is_not_a_batch(x, got):
    with pytest.raises(ValueError, match=rf"^x must be a tensor of 8-bit pixel values, shape \(B, \.\.\.\), got {got}$"):
        sd.bits_per_dim(normal_score, sd.VPSDE(), x)


@pytest.mark.parametrize("data_range", [(1.0, 1.0), (1.0, -1.0)])
def test_bits_per_dim_rejects_an_empty_data_range(data_range):
    with pytest.raises(ValueError, match=r"^data_range must be \(lo, hi\) with hi > lo"):
        sd.bits_per_dim(normal_score, sd.VPSDE(), pixels((2, 2)), data_range=data_range)


# ---- log_likelihood: defaults, batch of one, progress, methods -----------------------------------
def test_documented_defaults(capsys):
    """The defaults are the documented ones: 1 probe, eps = 1e-5, 100 steps for fixed-step methods,
    no progress bar."""
    sde, x = sd.VPSDE(), torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    a = sd.log_likelihood(normal_score, sde, x, noise="gaussian", generator=torch.Generator().manual_seed(2))
    b = sd.log_likelihood(normal_score, sde, x, noise="gaussian", probes=1, eps=1e-5,
                          generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=0)
    assert sd.log_likelihood(normal_score, sde, x, method="euler").nfe == 100
    assert capsys.readouterr().err == ""


def test_batch_of_one_with_the_exact_trace():
    """B = 1, exact trace: log N(x; 0, I) (the VP marginal of N(0, I) data) to solver accuracy."""
    sde, x = sd.VPSDE(), torch.tensor([[0.3, -1.2, 0.5]], dtype=F64)
    res = sd.log_likelihood(normal_score, sde, x, estimator="exact", eps=EPS, rtol=1e-8, atol=1e-8)
    exact = -0.5 * (x ** 2).sum() - 1.5 * math.log(2 * math.pi)
    assert res.logp.shape == (1,) and abs(res.logp.item() - exact.item()) < 1e-6


def test_progress_bar_names_the_routine_and_counts_nfe(capsys):
    sd.log_likelihood(normal_score, sd.VPSDE(), torch.zeros(2, 2, dtype=F64), method="rk4", steps=3, progress=True)
    err = capsys.readouterr().err
    assert "log_likelihood" in err and "/12 " in err, err


@pytest.mark.parametrize("method,stages,order", [("euler", 1, 1), ("heun", 2, 2), ("midpoint", 2, 2), ("rk4", 4, 4)])
def test_fixed_step_methods_reach_the_solver(mixture, method, stages, order):
    """Each fixed method runs (heun is torchdiffeq's "heun2"), costs steps x stages score calls, and
    its error against the exact log-density falls at its order from 50 to 100 steps (measured
    log2 ratios: 0.94, 2.03, 2.00, 4.06), so a method silently swapped for another is caught."""
    sde = sd.VPSDE()
    x = mixture.sample(20, torch.Generator().manual_seed(3), dtype=F64)
    err = {}
    for steps in (50, 100):
        res = sd.log_likelihood(mixture.score_fn(sde), sde, x, estimator="exact", eps=EPS, method=method, steps=steps,
                                prior_logp=lambda z: mixture.log_prob_t(z, 1.0, sde))
        assert res.nfe == steps * stages
        err[steps] = (res.logp - mixture.log_prob_t(x, EPS, sde)).abs().mean().item()
    assert abs(math.log2(err[50] / err[100]) - order) < 0.3, err


def test_adaptive_methods_are_the_ones_named(mixture):
    """bosh3 (3 stages, order 3) needs more score calls than dopri5 (order 5) at the same tolerance:
    the name reaches torchdiffeq rather than its default."""
    sde = sd.VPSDE()
    x = mixture.sample(8, torch.Generator().manual_seed(4), dtype=F64)
    nfe = {m: sd.log_likelihood(mixture.score_fn(sde), sde, x, estimator="exact", eps=EPS, method=m,
                                rtol=1e-7, atol=1e-7).nfe for m in ("dopri5", "bosh3")}
    assert nfe["bosh3"] > nfe["dopri5"], nfe


def test_adaptive_solver_stays_inside_eps_T(mixture, monkeypatch):
    """The solver lands on T (step_t) instead of stepping past it and interpolating back: every time
    it evaluates the drift at lies in [eps, T], before any clamping."""
    seen = []
    original = L.clamped_time

    def recording(t, lo, hi, batch, like):
        seen.append(float(t))
        return original(t, lo, hi, batch, like)

    monkeypatch.setattr(L, "clamped_time", recording)
    sde = sd.VESDE()
    x = mixture.sample(8, torch.Generator().manual_seed(5), dtype=F64)
    sd.log_likelihood(mixture.score_fn(sde), sde, x, estimator="exact", eps=EPS, rtol=1e-3, atol=1e-3)
    assert seen and min(seen) >= EPS and max(seen) <= sde.T, (min(seen), max(seen))


# ---- the divergence estimators and the probes ----------------------------------------------------
def _linear_drift(A):
    def f_of(x):
        return x @ A.T
    return f_of


def test_exact_divergence_is_the_trace_for_a_batch_of_one():
    A = torch.tensor([[1.0, 2.0, 0.0], [0.5, -3.0, 1.0], [0.0, 4.0, 0.25]], dtype=F64)
    x = torch.randn(1, 3, dtype=F64, requires_grad=True)
    div = L._divergence_fn("exact", None)(_linear_drift(A)(x), x)
    torch.testing.assert_close(div, torch.tensor([A.trace()], dtype=F64))


@pytest.mark.parametrize("P", [2, 3])
def test_hutchinson_averages_its_probes(P):
    """With P probes the estimate is (1/P) sum_i v_i^T A v_i, not the sum."""
    A = torch.tensor([[1.0, 2.0], [0.5, -3.0]], dtype=F64)
    x = torch.randn(4, 2, dtype=F64, requires_grad=True)
    v = torch.randn(P, 4, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    div = L._divergence_fn("hutchinson", v)(_linear_drift(A)(x), x)
    expected = torch.einsum("pbi,ij,pbj->b", v, A, v) / P
    torch.testing.assert_close(div, expected)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_probes_follow_the_generator_and_x(noise):
    """Probes come from the given generator (not the global one), in x's dtype, on x's device (the
    meta device stands in for an accelerator), and Rademacher probes are exactly +-1."""
    x = torch.zeros(3, 2, dtype=F64)
    a = L._draw_probes(noise, 4, x, torch.Generator().manual_seed(7))
    torch.manual_seed(123)
    b = L._draw_probes(noise, 4, x, torch.Generator().manual_seed(7))
    assert a.shape == (4, 3, 2) and a.dtype == F64
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if noise == "rademacher":
        assert bool((a.abs() == 1).all())
    on_meta = L._draw_probes(noise, 2, torch.zeros(3, 2, dtype=F64, device="meta"), torch.Generator().manual_seed(7))
    assert on_meta.device.type == "meta" and on_meta.dtype == F64


# ---- every bad argument is named ------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    (dict(estimator="trace"), r"^estimator must be one of \('hutchinson', 'exact'\), got 'trace'$"),
    (dict(noise="uniform"), r"^noise must be one of \('rademacher', 'gaussian'\), got 'uniform'$"),
    (dict(method="rk45"), r"^method must be one of \("),
    (dict(probes=0), r"^probes must be a positive integer, got 0$"),
    (dict(rtol=0.0), r"^rtol must be"),
    (dict(atol=2.0), r"^atol must be"),
    (dict(method="euler", steps=0), r"^steps must be a positive integer, got 0$"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sd.log_likelihood(normal_score, sd.VPSDE(), torch.zeros(2, 2), **kwargs)


def test_bad_x_is_named():
    with pytest.raises(ValueError, match=r"^x must be a floating-point tensor"):
        sd.log_likelihood(normal_score, sd.VPSDE(), torch.zeros(2, 2, dtype=torch.int64))


@pytest.mark.parametrize("method", ["euler", "dopri5"])
def test_non_finite_score_is_reported_as_log_likelihood(method):
    def nan_score(x, t):
        return x * float("nan")

    with pytest.raises(NonFiniteError, match=r"^log_likelihood: "):
        sd.log_likelihood(nan_score, sd.VPSDE(), torch.ones(2, 2), method=method, steps=3)
