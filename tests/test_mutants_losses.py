"""Tests that kill the mutants of scoresde/losses.py the statistical tests in test_losses.py let through
(``make mutation MODULE=losses``; see mutation/REPORT.md).

test_losses.py checks what the losses estimate. These check each loss draw by draw: its documented
formula evaluated on its documented draws (t or i first, then z, from the same generator), with the
coefficients written out with the ``math`` module; the importance-sampling table against the closed
form of its integral; and where the draws and times live (device, dtype). The "meta" device stands
in for an accelerator: something made on, or left on, the wrong device is caught without a GPU.
"""
import math

import pytest
import torch

import scoresde as sd
from scoresde.losses import _importance_times, _is_score_model, ddpm_loss, dsm_loss, likelihood_weight_table, smld_loss
from scoresde.score import ScoreModel

F64 = torch.float64
META = torch.device("meta")
B0, B1, N = 0.3, 7.5, 50          # a small VP chain whose products are cheap to write out
SMIN, SMAX = 0.05, 20.0


def model(x, t):
    """A deterministic stand-in for a network, neither odd nor even in x, that depends on t."""
    return torch.sin(x + 0.3) * (1.0 + t).reshape(-1, *([1] * (x.dim() - 1)))


def x0_of(shape, dtype=F64, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reduce_(sq, reduce):
    per = [row.mean().item() if reduce == "mean" else row.sum().item() for row in sq.flatten(1)]
    return sum(per) / len(per)


# ---- each loss is its formula on its draws ----------------------------------------------------------
@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(5, 3), (1, 2, 2)], ids=["B5", "B1"])
@pytest.mark.parametrize("weighting", ["sigma2", "g2"])
def test_dsm_loss_is_its_formula(reduce, shape, weighting):
    eps, seed = 1e-3, 11
    sde = sd.VPSDE(beta_min=B0, beta_max=B1, N=N)
    x0 = x0_of(shape)
    got = dsm_loss(model, sde, x0, eps=eps, likelihood_weighting=weighting == "g2", reduce=reduce,
                   generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape[0], generator=g, dtype=F64)
    z = torch.randn(shape, generator=g, dtype=F64)
    rows = []
    for b in range(shape[0]):
        t = eps + (1 - eps) * u[b].item()
        Bt = B0 * t + 0.5 * (B1 - B0) * t * t
        alpha, sigma = math.exp(-Bt / 2), math.sqrt(-math.expm1(-Bt))
        s = model((alpha * x0[b] + sigma * z[b])[None], torch.tensor([t], dtype=F64))[0]
        if weighting == "sigma2":
            rows.append((sigma * s + z[b]) ** 2)
        else:
            rows.append((B0 + t * (B1 - B0)) * (s + z[b] / sigma) ** 2)
    assert got.dim() == 0 and got.dtype == F64
    assert got.item() == pytest.approx(reduce_(torch.stack(rows), reduce), rel=1e-12)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_ddpm_loss_is_its_formula(reduce):
    sde = sd.VPSDE(beta_min=B0, beta_max=B1, N=N)
    x0 = x0_of((6, 2, 2))
    got = ddpm_loss(model, sde, x0, reduce=reduce, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    i = torch.randint(N, (6,), generator=g)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    rows = []
    for b, ib in enumerate(i.tolist()):
        abar = math.prod(1 - (B0 / N + j * (B1 - B0) / (N * (N - 1))) for j in range(ib + 1))
        x = math.sqrt(abar) * x0[b] + math.sqrt(1 - abar) * z[b]
        eps_hat = -math.sqrt(1 - abar) * model(x[None], torch.tensor([ib / (N - 1)], dtype=F64))[0]
        rows.append((eps_hat - z[b]) ** 2)
    assert got.item() == pytest.approx(reduce_(torch.stack(rows), reduce), rel=1e-12)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_smld_loss_is_its_formula(reduce):
    sde = sd.VESDE(sigma_min=SMIN, sigma_max=SMAX, N=N)
    x0 = x0_of((6, 3))
    got = smld_loss(model, sde, x0, reduce=reduce, generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    i = torch.randint(N, (6,), generator=g)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    rows = []
    for b, ib in enumerate(i.tolist()):
        sig = SMIN * (SMAX / SMIN) ** (ib / (N - 1))
        s = model((x0[b] + sig * z[b])[None], torch.tensor([ib / (N - 1)], dtype=F64))[0]
        rows.append((sig * s + z[b]) ** 2)
    assert got.item() == pytest.approx(reduce_(torch.stack(rows), reduce), rel=1e-12)


# ---- the times the model sees ---------------------------------------------------------------------
class Recorder:
    """A zero score that records the times it is called with and checks them against x."""

    def __init__(self):
        self.ts = []

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype and t.device == x.device
        self.ts.append(t)
        return torch.zeros_like(x)


def test_discrete_times_are_exact_grid_points():
    # float64 data: t_i = i / (N - 1) to the last bit, not a float32 rounding of it
    for loss, sde in ((ddpm_loss, sd.VPSDE()), (smld_loss, sd.VESDE())):
        rec = Recorder()
        loss(rec, sde, torch.zeros(64, 2, dtype=F64), generator=torch.Generator().manual_seed(2))
        k = rec.ts[0] * (sde.N - 1)
        assert torch.equal(rec.ts[0], k.round() / (sde.N - 1))


def test_discrete_times_scale_with_T():
    class LongVE(sd.VESDE):
        T = 2.0

    rec = Recorder()
    smld_loss(rec, LongVE(N=11), torch.zeros(64, 1, dtype=F64), generator=torch.Generator().manual_seed(0))
    i = torch.randint(11, (64,), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rec.ts[0], 2.0 * i.double() / 10, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_times_have_the_data_dtype(dtype):
    x0 = torch.zeros(16, 2, dtype=dtype)
    for loss, sde, kw in ((ddpm_loss, sd.VPSDE(), {}), (smld_loss, sd.VESDE(), {}), (dsm_loss, sd.VPSDE(), {}),
                          (dsm_loss, sd.VPSDE(), {"likelihood_weighting": True, "importance_sampling": True})):
        rec = Recorder()
        out = loss(rec, sde, x0, generator=torch.Generator().manual_seed(0), **kw)
        assert out.dtype == dtype and len(rec.ts) == 1


VP, SUBVP, VE = sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()
ALL_LOSSES = [
    ("dsm", lambda m, x, g: dsm_loss(m, VP, x, generator=g)),
    ("dsm-g2", lambda m, x, g: dsm_loss(m, SUBVP, x, likelihood_weighting=True, generator=g)),
    ("dsm-is", lambda m, x, g: dsm_loss(m, VP, x, likelihood_weighting=True, importance_sampling=True, generator=g)),
    ("ddpm", lambda m, x, g: ddpm_loss(m, VP, x, generator=g)),
    ("smld", lambda m, x, g: smld_loss(m, VE, x, generator=g)),
]


@pytest.mark.parametrize("name,loss", ALL_LOSSES, ids=[n for n, _ in ALL_LOSSES])
def test_losses_run_where_the_data_lives(name, loss):
    # data on another device than the generator: draws are moved to the data, and the model sees t there
    for gen in (torch.Generator().manual_seed(0), None):
        out = loss(Recorder(), torch.zeros(4, 3, device=META), gen)
        assert out.device == META and out.dim() == 0


@pytest.mark.parametrize("name,loss", ALL_LOSSES, ids=[n for n, _ in ALL_LOSSES])
def test_draws_are_made_on_the_generators_device(name, loss):
    # whatever the default device is, a CPU generator draws on the CPU: the same loss as without it
    # (the SDEs and the importance-sampling table, built on the default device, are made before)
    x0 = x0_of((8, 2))
    ref = loss(model, x0, torch.Generator().manual_seed(4))
    with torch.device("meta"):
        out = loss(model, x0, torch.Generator().manual_seed(4))
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("name,loss", ALL_LOSSES, ids=[n for n, _ in ALL_LOSSES])
def test_losses_without_a_generator(name, loss):
    out = loss(model, x0_of((8, 2)), None)
    assert out.dim() == 0 and torch.isfinite(out)


def test_importance_tables_are_kept_per_device():
    sde = sd.VPSDE()
    x = torch.zeros(4, 2)
    kw = dict(eps=2e-3, likelihood_weighting=True, importance_sampling=True)
    first = dsm_loss(model, sde, x, generator=torch.Generator().manual_seed(0), **kw)
    assert dsm_loss(Recorder(), sde, x.to(META), **kw).device == META
    again = dsm_loss(model, sde, x, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


# ---- input checks ---------------------------------------------------------------------------------
def test_bad_data_and_model_outputs_are_value_errors():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="x0"):
        dsm_loss(model, sde, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="x0"):
        dsm_loss(model, sde, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="model"):
        dsm_loss(lambda x, t: x.tolist(), sde, torch.zeros(3, 2))


def test_score_model_behind_wrappers_is_recognised():
    net = ScoreModel(lambda x, c: torch.zeros_like(x), sd.VPSDE(), parameterization="eps")

    class Compiled:            # what torch.compile returns: the module as ._orig_mod
        def __init__(self, m):
            self._orig_mod = m

    class Parallel:            # what DistributedDataParallel is: the module as .module
        def __init__(self, m):
            self.module = m

    class Endless:             # a .module chain that never reaches a ScoreModel
        @property
        def module(self):
            return self

    assert _is_score_model(net) and _is_score_model(Compiled(net)) and _is_score_model(Parallel(Compiled(net)))
    assert _is_score_model(Compiled(Parallel(net)))
    assert not _is_score_model(Endless()) and not _is_score_model(Compiled(Endless()))
    assert not _is_score_model(model)


# ---- importance sampling of t ---------------------------------------------------------------------
def _closed_C(sde, t, eps):
    """C(t) = ∫_eps^t g^2 / sigma^2: 2 log(smax/smin) (t - eps) for VE, log(expm1 B(t)) - log(expm1 B(eps)) for VP."""
    if isinstance(sde, sd.VESDE):
        return 2 * math.log(sde.sigma_max / sde.sigma_min) * (t - eps)
    B = lambda s: sde.beta_min * s + 0.5 * (sde.beta_max - sde.beta_min) * s * s  # noqa: E731
    return torch.log(torch.expm1(B(t))) - math.log(math.expm1(B(eps)))


# the tables are cached per SDE object: each test builds its own, so that it computes them
@pytest.mark.parametrize("make", [lambda: sd.VESDE(), lambda: sd.VPSDE(beta_min=B0, beta_max=B1)], ids=["ve", "vp"])
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_likelihood_weight_table_is_the_integral_at_every_grid_point(make, eps):
    sde = make()
    u, cum, Z = likelihood_weight_table(sde, eps)
    assert u.dtype == cum.dtype == F64 and len(u) == len(cum)
    assert u[0].item() == math.log(eps) and u[-1].item() == 0.0
    t = u.exp()
    t[0], t[-1] = eps, 1.0
    ref = _closed_C(sde, t, eps)
    # trapezoid rule in log t with step 11.5 / 20000: relative error below 1e-7 at every point
    assert cum[0].item() == 0.0
    torch.testing.assert_close(cum[1:], ref[1:], rtol=1e-7, atol=0)
    assert Z == cum[-1].item()


@pytest.mark.parametrize("make", [sd.VESDE, sd.VPSDE], ids=["ve", "vp"])
def test_importance_times_invert_the_cdf(make):
    sde, eps = make(), 1e-5
    u = torch.tensor([0.0, 1e-9, 0.25, 0.5, 0.9, 1 - 1e-12], dtype=F64)
    t, w = _importance_times(sde, eps, u)
    Z = likelihood_weight_table(sde, eps)[2]
    assert w == pytest.approx(Z / (1 - eps), rel=1e-15)
    # the end points map to [eps, T] exactly, never outside
    assert t[0].item() == eps and t[-1].item() == pytest.approx(1.0, abs=1e-9) and t[-1].item() <= 1.0
    # and C(t) = u Z in between
    torch.testing.assert_close(_closed_C(sde, t, eps) if not isinstance(sde, sd.VESDE) else
                               torch.as_tensor(_closed_C(sde, t, eps)), u * Z, rtol=1e-6, atol=1e-9)
    # float32 uniforms give float32 times
    t32, _ = _importance_times(sde, eps, u.float())
    assert t32.dtype == torch.float32
