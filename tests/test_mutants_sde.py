"""Tests that kill the mutants of scoresde/sde.py the closed-form tests in test_sde.py let through
(``make mutation MODULE=sde``; see mutation/REPORT.md).

They pin down contracts rather than values: where results live (device, dtype), what shape a
scalar time gives, the defaults of the reference implementation, the edges of the argument checks,
and identities with exact answers (the sub-VP chain's marginals, the index of a grid time).
The "meta" device stands in for an accelerator: a tensor there has a device but no data, so a
result that silently falls back to the CPU is caught without a GPU.
"""
import math

import pytest
import torch

from scoresde import SDE, ReverseSDE, SubVPSDE, VESDE, VPSDE

F64 = torch.float64
SDES = [VPSDE, SubVPSDE, VESDE]
META = torch.device("meta")


def _ids(classes):
    return [c.__name__ for c in classes]


# ---- devices and dtypes follow `like` ---------------------------------------------------------------
@pytest.mark.parametrize("cls", SDES, ids=_ids(SDES))
def test_time_lives_on_the_device_and_dtype_of_like(cls):
    sde = cls()
    like = torch.zeros(3, 2, device=META, dtype=F64)
    for t in (0.5, torch.tensor([0.5]), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32)):
        out = sde.time(t, like)
        assert out.device == META and out.dtype == F64 and out.shape == (3,)
    # a float32 CPU time used against float64 data is converted, not passed through
    out = sde.time(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32), torch.zeros(3, 2, dtype=F64))
    assert out.dtype == F64
    torch.testing.assert_close(out, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32).double(), rtol=0, atol=0)


@pytest.mark.parametrize("cls", SDES, ids=_ids(SDES))
def test_tables_follow_like_and_are_cached_per_device_and_dtype(cls):
    sde = cls(N=50)
    name = "discrete_sigmas" if cls is VESDE else "discrete_betas"
    ref = getattr(sde, name)
    t32 = sde.table(name, torch.zeros(1, dtype=torch.float32))
    t64 = sde.table(name, torch.zeros(1, dtype=F64))
    assert t32.dtype == torch.float32 and t64.dtype == F64
    torch.testing.assert_close(t64, ref, rtol=0, atol=0)
    torch.testing.assert_close(t32, ref.float(), rtol=0, atol=0)
    assert sde.table(name, torch.zeros(1, device=META)).device == META
    assert sde.table(name, torch.zeros(2, dtype=torch.float32)) is t32  # cached, no copy per call


@pytest.mark.parametrize("cls", SDES, ids=_ids(SDES))
def test_prior_sampling_device(cls):
    sde = cls()
    # an explicit device wins over the generator's
    assert sde.prior_sampling((2, 3), device="meta").device == META
    assert sde.prior_sampling((2, 3), generator=torch.Generator(), device="meta").device == META
    # without one the draw is made where the generator lives, whatever the default device is
    with torch.device("meta"):
        z = sde.prior_sampling((2, 3), generator=torch.Generator().manual_seed(0))
    assert z.device.type == "cpu"
    torch.testing.assert_close(z, sde.prior_sampling((2, 3), generator=torch.Generator().manual_seed(0)))


# ---- a scalar time is a batch of one ---------------------------------------------------------------
@pytest.mark.parametrize("cls", SDES, ids=_ids(SDES))
def test_scalar_time_without_like_gives_one_value(cls):
    sde = cls()
    for t in (0.5, torch.tensor(0.5, dtype=F64)):
        g = sde.diffusion(t)
        alpha, sigma = sde.marginal_coeffs(t)
        assert g.shape == alpha.shape == sigma.shape == (1,)
        assert sde.time(t, torch.tensor(0.0)).shape == (1,)
    # and the values are the ones of a batch evaluated at that time
    tb = torch.tensor([0.5, 0.5])
    torch.testing.assert_close(sde.diffusion(0.5), sde.diffusion(tb)[:1], rtol=0, atol=0)
    a1, s1 = sde.marginal_coeffs(0.5)
    a2, s2 = sde.marginal_coeffs(tb)
    torch.testing.assert_close((a1, s1), (a2[:1], s2[:1]), rtol=0, atol=0)


def test_marginal_coeffs_float_time_closed_form():
    a, s = VPSDE(beta_min=0.3, beta_max=7.5).marginal_coeffs(0.5)
    B = 0.3 * 0.5 + 0.5 * 7.2 * 0.25
    assert a.item() == pytest.approx(math.exp(-B / 2), rel=1e-6)
    assert s.item() == pytest.approx(math.sqrt(1 - math.exp(-B)), rel=1e-6)


@pytest.mark.parametrize("cls", SDES, ids=_ids(SDES))
def test_prior_logp_of_a_single_sample(cls):
    # batch of one: D comes from the sample, not from a second row
    sde = cls()
    s2 = sde.prior_std ** 2
    z = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64) * sde.prior_std
    expected = -1.5 * math.log(2 * math.pi * s2) - (0.25 + 1.0 + 4.0) / 2
    lp = sde.prior_logp(z)
    assert lp.shape == (1,)
    assert lp.item() == pytest.approx(expected, rel=1e-14)


# ---- discrete views ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", SDES, ids=_ids(SDES))
def test_index_clamps_to_the_chain(cls):
    sde = cls(N=11) if cls is VESDE else cls(beta_max=5.0, N=11)
    t = torch.tensor([-0.3, -0.04, 0.0, 0.04, 0.06, 0.5, 0.96, 1.0, 1.04, 1.7], dtype=F64)
    assert sde.index(t).tolist() == [0, 0, 0, 0, 1, 5, 10, 10, 10, 10]


def test_index_scales_with_T():
    # t_i = T i / (N - 1) maps back to i for any horizon T
    class LongVP(VPSDE):
        T = 2.0

    sde = LongVP(beta_max=5.0, N=11)
    t = 2.0 * torch.arange(11, dtype=F64) / 10
    assert sde.index(t).tolist() == list(range(11))


def test_subvp_discrete_marginal_coeffs():
    # the sub-VP chain uses DDPM's schedule: alpha_i = sqrt(prod_{j<=i} (1 - beta_j)), std_i = 1 - prod
    N, b0, b1 = 50, 0.3, 7.5
    sde = SubVPSDE(beta_min=b0, beta_max=b1, N=N)
    idx = [0, 1, 17, N - 1]
    a, s = sde.discrete_marginal_coeffs(torch.tensor(idx))
    for k, i in enumerate(idx):
        prod = math.prod(1 - (b0 / N + j * (b1 - b0) / (N * (N - 1))) for j in range(i + 1))
        assert a[k].item() == pytest.approx(math.sqrt(prod), rel=1e-13)
        assert s[k].item() == pytest.approx(1 - prod, rel=1e-12)


# ---- defaults and argument checks ---------------------------------------------------------------
def test_reference_defaults():
    # Song et al.'s defaults: N = 1000 steps, beta in [0.1, 20], sigma in [0.01, 50]
    for sde in (VPSDE(), SubVPSDE()):
        assert (sde.N, sde.beta_min, sde.beta_max) == (1000, 0.1, 20.0)
    ve = VESDE()
    assert (ve.N, ve.sigma_min, ve.sigma_max, ve.prior_std) == (1000, 0.01, 50.0, 50.0)
    assert len(ve.discrete_sigmas) == 1000


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE], ids=_ids([VPSDE, SubVPSDE]))
def test_beta_checks_at_their_edges(cls):
    with pytest.raises(ValueError, match="beta_min"):
        cls(beta_min=0.0, beta_max=1.0)
    # beta_max / N = 1 gives beta_{N-1} = 1 (alpha_bar = 0), 1.5 gives a negative alpha
    for beta_max in (10.0, 15.0):
        with pytest.raises(ValueError, match="beta_max / N"):
            cls(beta_max=beta_max, N=10)
    assert cls(beta_max=9.99, N=10).discrete_betas[-1].item() == pytest.approx(0.999)


@pytest.mark.parametrize("cls", SDES, ids=_ids(SDES))
def test_repr_rebuilds_the_sde(cls):
    kwargs = {"N": 37, **({"sigma_min": 0.05, "sigma_max": 20.0} if cls is VESDE else {"beta_min": 0.3, "beta_max": 7.5})}
    sde = cls(**kwargs)
    rebuilt = eval(repr(sde), {c.__name__: c for c in SDES})
    assert type(rebuilt) is cls
    assert rebuilt._params() == sde._params() == {**kwargs, "N": 37}


class Brownian(SDE):
    """dx = dw: the simplest linear SDE, built on the base class alone (c = 0, g = 1, sigma = sqrt(t))."""

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def _diffusion(self, t):
        return torch.ones_like(t)

    def _marginal_coeffs(self, t):
        return torch.ones_like(t), t.sqrt()

    def discrete_marginal_coeffs(self, index):
        t = index.double() / (self.N - 1)
        return torch.ones_like(t), t.sqrt()


def test_a_custom_sde_gets_the_base_class_repr_and_euler_chain():
    sde = Brownian(N=8)
    assert repr(sde) == "Brownian(N=8)" and eval(repr(sde), {"Brownian": Brownian})._params() == {"N": 8}
    f, G = sde.discretize(torch.ones(3, 2, dtype=F64), 0.5)   # Euler-Maruyama with dt = T / N
    assert torch.equal(f, torch.zeros(3, 2, dtype=F64))
    torch.testing.assert_close(G, torch.full((3,), math.sqrt(1 / 8), dtype=F64), rtol=1e-15, atol=0)


# ---- reverse-time view ---------------------------------------------------------------------------
def test_reverse_defaults_to_the_reverse_sde():
    sde = VPSDE()
    score = lambda x, t: -x  # noqa: E731
    for rev in (sde.reverse(score), ReverseSDE(sde, score)):
        assert rev.probability_flow is False
        torch.testing.assert_close(rev.diffusion(torch.tensor([0.5])), sde.diffusion(torch.tensor([0.5])))
        assert rev.diffusion(0.5).item() == pytest.approx(math.sqrt(0.1 + 0.5 * 19.9), rel=1e-6)


@pytest.mark.parametrize("pf", [False, True])
def test_reverse_diffusion_with_like(pf):
    sde = VESDE()
    rev = sde.reverse(lambda x, t: -x, probability_flow=pf)
    x = torch.zeros(4, 2, dtype=F64)
    g = rev.diffusion(0.5, x)
    assert g.shape == (4,) and g.dtype == F64
    expected = 0.0 if pf else 0.01 * 5000 ** 0.5 * math.sqrt(2 * math.log(5000))
    torch.testing.assert_close(g, torch.full((4,), expected, dtype=F64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_prior_sampling_with_per_sample_generators(sde):
    """Row r of the prior draw is prior_std * randn(shape[1:]) from seed r alone, in the asked dtype,
    on the META device when asked (which stands in for an accelerator)."""
    from scoresde.sampling.generators import SampleGenerators
    x = sde.prior_sampling((3, 2, 2), generator=SampleGenerators([7, 8, 9]), dtype=torch.float64)
    rows = [sde.prior_std * torch.randn((2, 2), generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            for s in (7, 8, 9)]
    assert x.shape == (3, 2, 2) and x.dtype == torch.float64
    torch.testing.assert_close(x, torch.stack(rows), rtol=0, atol=0)
    on_meta = sde.prior_sampling((2, 3), generator=SampleGenerators([1, 2]), device="meta")
    assert on_meta.device.type == "meta" and on_meta.shape == (2, 3)
