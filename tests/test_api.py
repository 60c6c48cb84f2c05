"""The public contract of the samplers and the likelihood (DESIGN.md), checked with the exact score of
a Gaussian mixture and no training:

1. the score is only ever evaluated at times in [eps, T] (adaptive solvers included), at (B,) times
   in x's dtype, and discrete ``timesteps`` map to t_i = T i / (N - 1);
2. outputs keep the input's dtype and shape (also image-shaped data);
3. randomness comes from ``generator`` only (bit-identical reruns, different seeds differ);
4. ``progress`` shows a tqdm bar named after the routine, and nothing otherwise;
5. no host synchronisation inside the sampling loops;
6. bad input is one ValueError naming the argument;
7. explicit and built-in time grids.

All runs are tiny (8 samples, a handful of steps, loose ODE tolerances).
"""
import contextlib
import sys

import pytest
import torch

import scoresde as sd
from scoresde import sampling as S
from conftest import make_sdes

T = 1.0
EPS = 2.0 ** -10      # sampler eps, exactly representable in float32
EPS_LL = 2.0 ** -17   # likelihood eps, exactly representable in float32
BATCH = 8
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]
SDE_NAMES = ["vp", "subvp", "ve"]

ADAPTIVE = ["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"]
FIXED = ["euler", "midpoint", "rk4", "heun", "heun3"]
PC_PAIRS = [(p, c) for p in ["reverse_diffusion", "euler_maruyama", "ancestral", None]
            for c in ["langevin", "annealed_langevin", None] if (p, c) != (None, None)]
RSDE_METHODS = ["euler", "milstein", "srk", "reversible_heun"]

MIX2 = sd.GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.5, -0.5]],
                          covs=[[[0.2, 0.05], [0.05, 0.3]], [[0.1, 0.0], [0.0, 0.4]]])
MIX4 = sd.GaussianMixture(weights=[0.6, 0.4], means=[[-1.0, 0.0, 0.5, 1.0], [1.0, 0.5, -0.5, 0.0]],
                          covs=[[0.2, 0.3, 0.1, 0.25], [0.3, 0.1, 0.2, 0.15]])


def sde_of(name):
    return make_sdes()[name]


def prior_draw(sde, shape=(BATCH, 2), dtype=torch.float32, seed=0):
    return sde.prior_sampling(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def data_draw(shape=(BATCH, 2), dtype=torch.float32, seed=0):
    mix = MIX2 if len(shape) == 2 else MIX4
    return mix.sample(shape[0], torch.Generator().manual_seed(seed), dtype=dtype).reshape(shape)


def mixture_for(shape):
    return MIX2 if len(shape) == 2 else MIX4


class Recorder:
    """A score function that checks and records every time it is called with."""

    def __init__(self, score_fn, dtype):
        self.score_fn, self.dtype, self.times = score_fn, dtype, []

    def __call__(self, x, t):
        assert torch.is_tensor(t), f"t must be a tensor, got {type(t).__name__}"
        assert x.dtype == self.dtype, f"x has dtype {x.dtype}, expected {self.dtype}"
        assert t.shape == (x.shape[0],), f"t has shape {tuple(t.shape)}, expected ({x.shape[0]},)"
        assert t.dtype == x.dtype, f"t has dtype {t.dtype}, x has {x.dtype}"
        self.times.append(t.detach().clone())
        return self.score_fn(x, t)

    @property
    def all_times(self):
        return torch.cat(self.times)

    def call_times(self):
        """One time per call (asserting that every sample of the batch got the same time)."""
        out = []
        for t in self.times:
            assert (t == t[0]).all(), f"a call mixed times {t.tolist()}"
            out.append(t[0])
        return torch.stack(out)


# ---- sampler configurations -------------------------------------------------------------------

FAST_SAMPLERS = [
    ("dpm_solver", S.dpm_solver, dict(steps=6)),
    ("dpm_solver:3M,eps", S.dpm_solver, dict(steps=6, order=3, predict="eps")),
    ("dpm_solver:3S,uniform", S.dpm_solver, dict(steps=3, order=3, multistep=False, schedule="uniform")),
    ("dpm_solver:2S,eps,karras", S.dpm_solver, dict(steps=3, order=2, multistep=False, predict="eps", schedule="karras")),
    ("dpm_solver:3M+corrector", S.dpm_solver, dict(steps=6, order=3, corrector=True)),
    ("dpm_solver:2M+corrector,eps,quadratic", S.dpm_solver, dict(steps=5, corrector=True, predict="eps", schedule="quadratic")),
    ("heun", S.heun, dict(steps=4)),
    ("heun:logsnr", S.heun, dict(steps=4, schedule="logsnr")),
    ("heun:churn", S.heun, dict(steps=4, churn=20.0)),
    ("heun:churn,window", S.heun, dict(steps=4, churn=5.0, churn_min=0.05, churn_max=1.0, churn_noise=1.003)),
    ("adaptive_sde", S.adaptive_sde, dict(rtol=0.05, atol=0.05)),
    ("adaptive_sde:paper", S.adaptive_sde, dict(rtol=0.05, atol=0.05, memory=False)),
    ("pc:dpm_solver+langevin", S.predictor_corrector, dict(steps=4, predictor="dpm_solver",
                                                           predictor_options=dict(order=2))),
    ("pc:dpm_solver,2M+langevin", S.predictor_corrector, dict(steps=4, predictor="dpm_solver",
                                                              predictor_options=dict(order=2, multistep=True))),
    ("pc:heun+langevin", S.predictor_corrector, dict(steps=4, predictor="heun")),
    ("pc:ddim+annealed_langevin", S.predictor_corrector, dict(steps=4, predictor="ddim", corrector="annealed_langevin",
                                                             predictor_options=dict(eta=0.5))),
]
DETERMINISTIC = {"ddim", "pc:None+None", "heun", "heun:logsnr"}

SAMPLERS = (
    [("euler_maruyama", S.euler_maruyama, dict(steps=6))]
    + [(f"euler_maruyama:{s}", S.euler_maruyama, dict(steps=6, schedule=s)) for s in ["quadratic", "logsnr", "karras"]]
    + [(f"pc:{p}+{c}", S.predictor_corrector, dict(steps=5, predictor=p, corrector=c, corrector_steps=2))
       for p, c in PC_PAIRS]
    + [("ancestral", S.ancestral, dict(steps=6)),
       ("ancestral:posterior", S.ancestral, dict(steps=6, variance="posterior")),
       ("ancestral:logsnr", S.ancestral, dict(steps=6, schedule="logsnr")),
       ("ddim", S.ddim, dict(steps=6)),
       ("ddim:eta=0.5", S.ddim, dict(steps=6, eta=0.5)),
       ("ddim:eta=1,karras", S.ddim, dict(steps=6, eta=1.0, schedule="karras"))]
    + [(f"probability_flow:{m}", S.probability_flow, dict(method=m, rtol=1e-3, atol=1e-3)) for m in ADAPTIVE]
    + [(f"probability_flow:{m}", S.probability_flow, dict(method=m, steps=4)) for m in FIXED]
    + [("probability_flow:rk4,logsnr", S.probability_flow, dict(method="rk4", steps=4, schedule="logsnr"))]
    + [(f"reverse_sde:{m}", S.reverse_sde, dict(method=m, steps=6)) for m in RSDE_METHODS]
    + FAST_SAMPLERS
)
SAMPLER_IDS = [c[0] for c in SAMPLERS]

STOCHASTIC = [c for c in SAMPLERS if not c[0].startswith(("probability_flow", "dpm_solver"))
              and c[0] not in DETERMINISTIC]

LIKELIHOODS = (
    [(f"exact:{m}", dict(estimator="exact", method=m, rtol=1e-3, atol=1e-3)) for m in ADAPTIVE]
    + [(f"hutchinson:{m}", dict(estimator="hutchinson", method=m, rtol=1e-3, atol=1e-3)) for m in ADAPTIVE]
    + [(f"exact:{m}", dict(estimator="exact", method=m, steps=4)) for m in FIXED]
    + [(f"hutchinson:{m}", dict(estimator="hutchinson", method=m, steps=4)) for m in FIXED]
    + [("hutchinson:gaussian,probes=2", dict(estimator="hutchinson", noise="gaussian", probes=2,
                                             rtol=1e-3, atol=1e-3))]
)
LIKELIHOOD_IDS = [c[0] for c in LIKELIHOODS]


# ==== 1. the score is only evaluated inside [eps, T] =============================================

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("label,sampler,options", SAMPLERS, ids=SAMPLER_IDS)
def test_sampler_score_times_inside_eps_T(label, sampler, options, sde_name, dtype):
    sde = sde_of(sde_name)
    rec = Recorder(MIX2.score_fn(sde), dtype)
    x_T = prior_draw(sde, dtype=dtype)
    sampler(rec, sde, x_T, eps=EPS, generator=torch.Generator().manual_seed(1), **options)
    t = rec.all_times
    lo, hi = t.min().item(), t.max().item()
    assert lo >= EPS, f"{label} on {sde_name}: score evaluated at t = {lo!r} < eps = {EPS!r}"
    assert hi <= T, f"{label} on {sde_name}: score evaluated at t = {hi!r} > T"
    # every grid runs from T down to eps, and denoise=True ends with a Tweedie step at eps
    assert hi == T and lo == EPS, f"{label} on {sde_name}: times span [{lo!r}, {hi!r}], not [eps, T]"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("label,options", LIKELIHOODS, ids=LIKELIHOOD_IDS)
def test_likelihood_score_times_inside_eps_T(label, options, sde_name, dtype):
    sde = sde_of(sde_name)
    rec = Recorder(MIX2.score_fn(sde), dtype)
    x = data_draw(dtype=dtype)
    res = sd.log_likelihood(rec, sde, x, eps=EPS_LL, generator=torch.Generator().manual_seed(1), **options)
    t = rec.all_times
    lo, hi = t.min().item(), t.max().item()
    assert lo >= EPS_LL, f"{label} on {sde_name}: score evaluated at t = {lo!r} < eps = {EPS_LL!r}"
    assert hi <= T, f"{label} on {sde_name}: score evaluated at t = {hi!r} > T"
    assert lo == EPS_LL, f"{label} on {sde_name}: the ODE must start at eps, first times {rec.times[0].tolist()}"
    assert res.nfe == len(rec.times)


def test_bits_per_dim_score_times_inside_eps_T():
    sde = sd.VESDE()
    rec = Recorder(MIX2.score_fn(sde), torch.float32)
    pixels = torch.tensor([[0, 255], [17, 128], [200, 3], [90, 91]], dtype=torch.uint8)
    sd.bits_per_dim(rec, sde, pixels, eps=EPS_LL, rtol=1e-3, atol=1e-3, generator=torch.Generator().manual_seed(0))
    t = rec.all_times
    assert t.min().item() >= EPS_LL and t.max().item() <= T


TIMESTEP_CASES = [
    ("ddim", S.ddim, dict()),
    ("ddim:eta=1", S.ddim, dict(eta=1.0)),
    ("ancestral", S.ancestral, dict()),
    ("dpm_solver:3M", S.dpm_solver, dict(order=3)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("label,sampler,options", TIMESTEP_CASES, ids=[c[0] for c in TIMESTEP_CASES])
@pytest.mark.parametrize("indices", [[999, 700, 456, 123, 37, 0], [998, 500, 3]], ids=["to0", "to3"])
def test_timesteps_use_exact_chain_times(label, sampler, options, sde_name, dtype, indices):
    sde = sde_of(sde_name)
    N = sde.N
    rec = Recorder(MIX2.score_fn(sde), dtype)
    x_T = prior_draw(sde, dtype=dtype)
    out = sampler(rec, sde, x_T, timesteps=indices, generator=torch.Generator().manual_seed(2), **options)
    assert out.dtype == dtype and out.shape == x_T.shape and torch.isfinite(out).all()
    # index 0 (t = 0) is evaluated at the default eps = 1e-3 instead
    expected = torch.tensor([max(T * i / (N - 1), 1e-3) for i in indices], dtype=torch.float64).to(dtype)
    # one score call per step at the step's start, then the denoising step at the last index
    got = rec.call_times()
    assert torch.equal(got, expected), f"{label}: times {got.tolist()} != {expected.tolist()}"


@pytest.mark.parametrize("sampler", [S.ddim, S.ancestral], ids=["ddim", "ancestral"])
def test_timesteps_full_small_chain(sampler):
    """All N indices of a short chain (DDPM's Algorithm 2 layout), given as a tensor and a range.
    (beta_max = 5 keeps the discrete betas beta_max / N below 1 for N = 10.)"""
    sde = sd.VPSDE(beta_max=5.0, N=10)
    for timesteps in (torch.arange(9, -1, -1), range(9, -1, -1)):
        rec = Recorder(MIX2.score_fn(sde), torch.float64)
        out = sampler(rec, sde, prior_draw(sde, dtype=torch.float64), timesteps=timesteps,
                      generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out).all()
        expected = torch.tensor([max(T * i / 9, 1e-3) for i in range(9, -1, -1)], dtype=torch.float64)
        assert torch.equal(rec.call_times(), expected)


# ==== 2. dtype and shape =========================================================================

SHAPES = [(BATCH, 2), (BATCH, 1, 2, 2)]
SHAPE_IDS = ["flat", "image"]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("label,sampler,options", SAMPLERS, ids=SAMPLER_IDS)
def test_sampler_keeps_dtype_and_shape(label, sampler, options, sde_name, dtype, shape):
    sde = sde_of(sde_name)
    x_T = prior_draw(sde, shape, dtype)
    rec = Recorder(mixture_for(shape).score_fn(sde), dtype)
    out = sampler(rec, sde, x_T, eps=EPS, generator=torch.Generator().manual_seed(3), **options)
    assert torch.is_tensor(out)
    assert out.dtype == dtype, f"{label}: {dtype} in, {out.dtype} out"
    assert out.shape == x_T.shape, f"{label}: shape {tuple(x_T.shape)} in, {tuple(out.shape)} out"
    assert out.device == x_T.device
    if label != "reverse_sde:reversible_heun":  # unstable by design on contracting dynamics (see reverse_sde)
        assert torch.isfinite(out).all(), f"{label}: non-finite samples"


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("label,options", [LIKELIHOODS[0], LIKELIHOODS[5], LIKELIHOODS[12], LIKELIHOODS[-1]],
                         ids=[LIKELIHOODS[i][0] for i in (0, 5, 12, -1)])
def test_likelihood_keeps_dtype_and_shape(label, options, dtype, shape):
    sde = sd.SubVPSDE()
    x = data_draw(shape, dtype)
    res = sd.log_likelihood(Recorder(mixture_for(shape).score_fn(sde), dtype), sde, x, eps=EPS_LL,
                            generator=torch.Generator().manual_seed(0), **options)
    assert res.logp.shape == (BATCH,) and res.logp.dtype == dtype
    assert res.z.shape == x.shape and res.z.dtype == dtype
    assert res.prior_logp.shape == (BATCH,) and res.delta_logp.shape == (BATCH,)
    assert isinstance(res.nfe, int) and res.nfe > 0
    assert torch.isfinite(res.logp).all()
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)


@pytest.mark.parametrize("pixel_dtype,out_dtype", [(torch.uint8, torch.get_default_dtype()),
                                                   (torch.float32, torch.float32),
                                                   (torch.float64, torch.float64)])
@pytest.mark.parametrize("shape", [(4, 2), (4, 1, 2, 2)], ids=SHAPE_IDS)
def test_bits_per_dim_dtype_and_shape(pixel_dtype, out_dtype, shape):
    sde = sd.VPSDE()
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, shape, generator=g).to(pixel_dtype)
    res = sd.bits_per_dim(mixture_for(shape).score_fn(sde), sde, pixels, generator=g, rtol=1e-3, atol=1e-3)
    assert res.bpd.shape == (4,) and res.bpd.dtype == out_dtype
    assert res.logp.shape == (4,) and res.z.shape == shape
    assert torch.isfinite(res.bpd).all()


# ==== 3. reproducibility =========================================================================

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("label,sampler,options", STOCHASTIC, ids=[c[0] for c in STOCHASTIC])
def test_stochastic_sampler_reproducible(label, sampler, options, dtype):
    sde = sd.VPSDE()
    x_T = prior_draw(sde, dtype=dtype)
    score = MIX2.score_fn(sde)

    def run(seed, global_seed):
        torch.manual_seed(global_seed)  # the global RNG must play no part
        return sampler(score, sde, x_T.clone(), eps=EPS, generator=torch.Generator().manual_seed(seed), **options)

    a, b, c = run(11, 0), run(11, 12345), run(12, 0)
    assert torch.equal(a, b), f"{label}: same generator seed, different samples"
    assert not torch.equal(a, c), f"{label}: different generator seeds, same samples"


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_hutchinson_likelihood_reproducible(noise, method):
    sde = sd.VPSDE()
    x = data_draw((16, 2), torch.float32)
    score = MIX2.score_fn(sde)

    def run(seed, global_seed):
        torch.manual_seed(global_seed)
        return sd.log_likelihood(score, sde, x, estimator="hutchinson", noise=noise, method=method,
                                 steps=4, rtol=1e-3, atol=1e-3, generator=torch.Generator().manual_seed(seed)).logp

    a, b, c = run(5, 0), run(5, 999), run(6, 0)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bits_per_dim_dequantization_reproducible():
    sde = sd.VPSDE()
    pixels = torch.randint(0, 256, (8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    run = lambda seed: sd.bits_per_dim(MIX2.score_fn(sde), sde, pixels, estimator="exact", rtol=1e-3, atol=1e-3,
                                       generator=torch.Generator().manual_seed(seed)).bpd
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_deterministic_samplers_ignore_generator():
    """ddim(eta=0) and the probability-flow ODE are deterministic: the seed does not matter."""
    sde = sd.VPSDE()
    x_T = prior_draw(sde)
    score = MIX2.score_fn(sde)
    for sampler, options in [(S.ddim, dict(steps=5)), (S.probability_flow, dict(method="rk4", steps=4)),
                             (S.dpm_solver, dict(steps=5, order=3)), (S.heun, dict(steps=3))]:
        a = sampler(score, sde, x_T, generator=torch.Generator().manual_seed(1), **options)
        b = sampler(score, sde, x_T, generator=torch.Generator().manual_seed(2), **options)
        assert torch.equal(a, b)


# ==== 4. progress bars ===========================================================================

def _run_named(name, progress):
    sde = sd.VPSDE()
    score = MIX2.score_fn(sde)
    x_T, x = prior_draw(sde), data_draw()
    g = torch.Generator().manual_seed(0)
    if name == "euler_maruyama":
        S.euler_maruyama(score, sde, x_T, steps=3, generator=g, progress=progress)
    elif name == "predictor_corrector":
        S.predictor_corrector(score, sde, x_T, steps=3, generator=g, progress=progress)
    elif name == "ancestral":
        S.ancestral(score, sde, x_T, steps=3, generator=g, progress=progress)
    elif name == "ddim":
        S.ddim(score, sde, x_T, steps=3, generator=g, progress=progress)
    elif name == "probability_flow":
        S.probability_flow(score, sde, x_T, rtol=1e-3, atol=1e-3, progress=progress)
    elif name == "probability_flow/fixed":
        S.probability_flow(score, sde, x_T, method="heun", steps=3, progress=progress)
    elif name == "reverse_sde":
        S.reverse_sde(score, sde, x_T, steps=3, generator=g, progress=progress)
    elif name == "dpm_solver":
        S.dpm_solver(score, sde, x_T, steps=3, progress=progress)
    elif name == "heun":
        S.heun(score, sde, x_T, steps=3, progress=progress)
    elif name == "adaptive_sde":
        S.adaptive_sde(score, sde, x_T, rtol=0.1, atol=0.1, generator=g, progress=progress)
    elif name == "log_likelihood":
        sd.log_likelihood(score, sde, x, rtol=1e-3, atol=1e-3, generator=g, progress=progress)
    elif name == "log_likelihood/fixed":
        sd.log_likelihood(score, sde, x, method="euler", steps=3, generator=g, progress=progress)
    elif name == "bits_per_dim":
        sd.bits_per_dim(score, sde, torch.zeros(4, 2, dtype=torch.uint8), rtol=1e-3, atol=1e-3, generator=g,
                        progress=progress)
    else:
        raise AssertionError(name)


PROGRESS = [("euler_maruyama", "euler_maruyama"), ("predictor_corrector", "predictor_corrector"),
            ("ancestral", "ancestral"), ("ddim", "ddim"), ("probability_flow", "probability_flow"),
            ("probability_flow/fixed", "probability_flow"), ("reverse_sde", "reverse_sde"),
            ("dpm_solver", "dpm_solver"), ("heun", "heun"), ("adaptive_sde", "adaptive_sde"),
            ("log_likelihood", "log_likelihood"), ("log_likelihood/fixed", "log_likelihood"),
            ("bits_per_dim", "log_likelihood")]


@pytest.mark.parametrize("name,desc", PROGRESS, ids=[p[0] for p in PROGRESS])
def test_progress_bar(capsys, name, desc):
    _run_named(name, progress=True)
    out, err = capsys.readouterr()
    assert out == "", f"{name}: the bar belongs on stderr, stdout got {out!r}"
    assert f"{desc}:" in err, f"{name}: no tqdm bar named {desc!r} in {err!r}"
    assert "[00:" in err, f"{name}: not a tqdm bar (no elapsed-time field): {err!r}"
    _run_named(name, progress=False)
    out, err = capsys.readouterr()
    assert out == "" and err == "", f"{name}: progress=False printed {out + err!r}"


# ==== 5. no host synchronisation inside the sampling loops =======================================

SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")
_ABSENT = object()


class HostSync(AssertionError):
    """Raised by the patched torch.Tensor methods."""


def _in_final_check():
    """Called from ``_checks.finite_result``, the one read after the loop (see
    test_final_finiteness_check_runs_once_after_the_loop)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "finite_result" and frame.f_code.co_filename.endswith("_checks.py"):
            return True
        frame = frame.f_back
    return False


def _sync_raiser(name, exempt):
    original = getattr(torch.Tensor, name)

    def raiser(self, *args, **kwargs):
        if (exempt is not None and exempt(self)) or _in_final_check():
            return original(self, *args, **kwargs)
        raise HostSync(f"host synchronisation: Tensor.{name} called on a {self.dtype} tensor of shape "
                       f"{tuple(self.shape)} inside the sampling loop")
    return raiser


class SyncGuard:
    """Replaces the Tensor methods that synchronise with the host by ones that raise, from ``arm()``
    until the ``with`` block ends (restored even on failure). ``suspended()`` lifts it for a moment
    (around the user's own score function, which is not the sampler's business)."""

    def __init__(self, exempt=None):
        self.exempt, self.saved, self.armed_calls = exempt, None, 0

    def arm(self):
        if self.saved is None:
            saved = {}
            try:
                for name in SYNC_METHODS:
                    saved[name] = vars(torch.Tensor).get(name, _ABSENT)
                    setattr(torch.Tensor, name, _sync_raiser(name, self.exempt))
            finally:
                self.saved = saved
        self.armed_calls += 1

    def disarm(self):
        saved, self.saved = self.saved, None
        if saved:
            for name, original in saved.items():
                if original is _ABSENT:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, original)

    @contextlib.contextmanager
    def suspended(self):
        was_armed = self.saved is not None
        self.disarm()
        try:
            yield
        finally:
            if was_armed:
                self.arm()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disarm()
        return False


def guarded_score(exact, guard, sync_in_score=None):
    """Arms the guard on the first call; the exact mixture score itself runs unguarded (its SDE time
    check inspects CPU tensors), unless ``sync_in_score`` is given, which then runs under the guard."""
    def score(x, t):
        guard.arm()
        with guard.suspended():
            s = exact(x, t)
        if sync_in_score is not None:
            sync_in_score(s)
        return s
    return score


def _untouched():
    return all(vars(torch.Tensor).get(n, _ABSENT) is o for n, o in _ORIGINAL_SYNC_METHODS.items())


_ORIGINAL_SYNC_METHODS = {n: vars(torch.Tensor).get(n, _ABSENT) for n in SYNC_METHODS}

SYNC_CASES = (
    [("euler_maruyama", S.euler_maruyama, dict(steps=4)),
     ("euler_maruyama:karras", S.euler_maruyama, dict(steps=4, schedule="karras"))]
    + [(f"pc:{p}+{c}", S.predictor_corrector, dict(steps=3, predictor=p, corrector=c, corrector_steps=2))
       for p, c in PC_PAIRS]
    + [("ancestral", S.ancestral, dict(steps=4)),
       ("ancestral:posterior", S.ancestral, dict(steps=4, variance="posterior")),
       ("ancestral:timesteps", S.ancestral, dict(timesteps=[999, 500, 10, 0])),
       ("ddim", S.ddim, dict(steps=4)),
       ("ddim:eta=0.7", S.ddim, dict(steps=4, eta=0.7)),
       ("ddim:timesteps", S.ddim, dict(timesteps=[999, 600, 300, 0], eta=0.3)),
       ("dpm_solver:timesteps", S.dpm_solver, dict(timesteps=[999, 600, 300, 0], order=3))]
    + [(f"probability_flow:{m}", S.probability_flow, dict(method=m, steps=3)) for m in FIXED]
    + [("probability_flow:rk4,karras", S.probability_flow, dict(method="rk4", steps=3, schedule="karras"))]
    + [c for c in FAST_SAMPLERS if not c[0].startswith("adaptive_sde")]  # adaptive: one flag read per iteration
)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("label,sampler,options", SYNC_CASES, ids=[c[0] for c in SYNC_CASES])
def test_no_host_sync_in_sampling_loop(label, sampler, options, sde_name, dtype):
    sde = sde_of(sde_name)
    x_T = prior_draw(sde, dtype=dtype)
    with SyncGuard() as guard:
        out = sampler(guarded_score(MIX2.score_fn(sde), guard), sde, x_T, denoise=False,
                      generator=torch.Generator().manual_seed(0), **options)
    assert _untouched()
    assert guard.armed_calls >= 2, f"{label}: the guard was only armed {guard.armed_calls} times"
    assert out.shape == x_T.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("label,sampler,options", SYNC_CASES, ids=[c[0] for c in SYNC_CASES])
def test_no_device_sync_with_denoising(label, sampler, options, sde_name):
    """With the final Tweedie step too: no sync on any tensor of the sampling dtype (float32 here) nor
    on bool/integer tensors; the float64 CPU tables of a precomputed grid are host data, not device."""
    sde = sde_of(sde_name)
    x_T = prior_draw(sde, dtype=torch.float32)
    with SyncGuard(exempt=lambda t: t.dtype == torch.float64 and t.device.type == "cpu") as guard:
        out = sampler(guarded_score(MIX2.score_fn(sde), guard), sde, x_T, denoise=True,
                      generator=torch.Generator().manual_seed(0), **options)
    assert _untouched()
    assert out.shape == x_T.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("label,sampler,options", SYNC_CASES[:3] + SYNC_CASES[-6:], ids=[c[0] for c in SYNC_CASES[:3] + SYNC_CASES[-6:]])
def test_final_finiteness_check_runs_once_after_the_loop(monkeypatch, label, sampler, options):
    """The guard above lets ``finite_result`` read the device; it is called once per run, after the
    last score evaluation."""
    from scoresde import _checks
    sde = sd.VPSDE()
    events = []
    real = _checks.finite_result

    def spy(value, routine):
        events.append("check")
        return real(value, routine)
    monkeypatch.setattr(_checks, "finite_result", spy)

    def score(x, t):
        events.append("score")
        return MIX2.score(x, t, sde)
    sampler(score, sde, prior_draw(sde), generator=torch.Generator().manual_seed(0), **options)
    assert events.count("check") == 1 and events[-1] == "check", events[-5:]


SYNC_CALLS = [("item", lambda t: t.sum().item()), ("tolist", lambda t: t.tolist()),
              ("__bool__", lambda t: bool(t.sum() > 0)), ("__bool__", lambda t: 1 if (t > 0).all() else 0),
              ("__float__", lambda t: float(t.sum())), ("__int__", lambda t: int(t.sum())),
              ("numpy", lambda t: t.numpy())]


@pytest.mark.parametrize("name,call", SYNC_CALLS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SYNC_CALLS)])
def test_sync_guard_catches_sync_in_score_and_restores(name, call):
    """The guard has teeth: a score function that synchronises makes every sampler of the test above
    fail, and the patched methods are back afterwards, even after the failure."""
    sde = sd.VPSDE()
    x_T = prior_draw(sde)
    for sampler, options in [(S.euler_maruyama, dict(steps=3)), (S.predictor_corrector, dict(steps=3)),
                             (S.ancestral, dict(steps=3)), (S.ddim, dict(steps=3))]:
        with pytest.raises(HostSync, match=name):
            with SyncGuard() as guard:
                sampler(guarded_score(MIX2.score_fn(sde), guard, sync_in_score=call), sde, x_T, denoise=False,
                        generator=torch.Generator().manual_seed(0), **options)
        assert _untouched()
    call(torch.ones(2))  # works again


def test_sync_guard_catches_sync_in_sampler_loop():
    """A sync in sampler-side code around the score (a wrapper that reads a tensor back every step, as a
    careless sampler might) is caught: only the user's exact score itself runs with the guard lifted."""
    sde = sd.VPSDE()
    x_T = prior_draw(sde)
    calls = []

    def sampler_with_sync(score_fn, sde, x_T, **kw):
        def syncing(x, t):
            s = score_fn(x, t)
            calls.append(float(s.abs().max()))
            return s
        return S.euler_maruyama(syncing, sde, x_T, **kw)

    with pytest.raises(HostSync, match="__float__"):
        with SyncGuard() as guard:
            sampler_with_sync(guarded_score(MIX2.score_fn(sde), guard), sde, x_T, steps=3, denoise=False)
    assert calls == [] and _untouched()


# ==== 6. bad input ===============================================================================

def _expect_value_error(fn, *needles):
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"error message {msg!r} does not mention {needle!r}"
    assert "\n" not in msg.strip(), f"not a one-line message: {msg!r}"


def _env(sde_cls=sd.VPSDE):
    sde = sde_cls()
    return sde, MIX2.score_fn(sde), prior_draw(sde), data_draw()


NAME_CASES = [
    ("predictor", lambda s, f, x, d: S.predictor_corrector(f, s, x, steps=2, predictor="rk45"), "reverse_diffusion"),
    ("predictor_options", lambda s, f, x, d: S.predictor_corrector(f, s, x, steps=2, predictor="heun",
                                                                   predictor_options={"order": 2}), "order"),
    ("predictor_options", lambda s, f, x, d: S.predictor_corrector(f, s, x, steps=2, predictor="dpm_solver",
                                                                   predictor_options={"order": 4}), "order"),
    ("order", lambda s, f, x, d: S.dpm_solver(f, s, x, steps=2, order=4), "(1, 2, 3)"),
    ("order", lambda s, f, x, d: S.dpm_solver(f, s, x, steps=2, order=True), "positive integer"),
    ("predict", lambda s, f, x, d: S.dpm_solver(f, s, x, steps=2, predict="v"), "x0"),
    ("schedule", lambda s, f, x, d: S.dpm_solver(f, s, x, steps=2, schedule="cosine"), "logsnr"),
    ("schedule", lambda s, f, x, d: S.heun(f, s, x, steps=2, schedule="edm"), "karras"),
    ("timesteps", lambda s, f, x, d: S.dpm_solver(f, s, x, timesteps=[999, 500, 0], multistep=False), "multistep"),
    ("corrector", lambda s, f, x, d: S.dpm_solver(f, s, x, steps=2, corrector=True, multistep=False), "multistep"),
    ("predictor_options", lambda s, f, x, d: S.predictor_corrector(f, s, x, steps=2, predictor="dpm_solver",
                                                                   predictor_options={"corrector": True}), "corrector"),
    ("corrector", lambda s, f, x, d: S.predictor_corrector(f, s, x, steps=2, corrector="hmc"), "langevin"),
    ("method", lambda s, f, x, d: S.probability_flow(f, s, x, method="rk45"), "dopri5"),
    ("method", lambda s, f, x, d: S.reverse_sde(f, s, x, steps=2, method="heun"), "milstein"),
    ("method", lambda s, f, x, d: sd.log_likelihood(f, s, d, method="rk45"), "dopri5"),
    ("estimator", lambda s, f, x, d: sd.log_likelihood(f, s, d, estimator="skilling"), "hutchinson"),
    ("noise", lambda s, f, x, d: sd.log_likelihood(f, s, d, noise="uniform"), "rademacher"),
    ("schedule", lambda s, f, x, d: S.euler_maruyama(f, s, x, steps=2, schedule="cosine"), "uniform"),
    ("schedule", lambda s, f, x, d: S.ddim(f, s, x, steps=2, schedule="linear"), "logsnr"),
    ("schedule", lambda s, f, x, d: S.predictor_corrector(f, s, x, steps=2, schedule="cosine"), "karras"),
    ("schedule", lambda s, f, x, d: S.ancestral(f, s, x, steps=2, schedule="cosine"), "quadratic"),
    ("schedule", lambda s, f, x, d: S.probability_flow(f, s, x, method="euler", steps=2, schedule="x"), "uniform"),
    ("schedule", lambda s, f, x, d: S.time_grid(s, 4, 1e-3, "cosine"), "uniform"),
    ("variance", lambda s, f, x, d: S.ancestral(f, s, x, steps=2, variance="fixed_large"), "posterior"),
]


@pytest.mark.parametrize("arg,call,accepted", NAME_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(NAME_CASES)])
def test_unknown_names(arg, call, accepted):
    s, f, x, d = _env()
    _expect_value_error(lambda: call(s, f, x, d), arg, accepted)


def test_predictor_and_corrector_both_none():
    s, f, x, _ = _env()
    _expect_value_error(lambda: S.predictor_corrector(f, s, x, steps=2, predictor=None, corrector=None),
                        "predictor", "corrector")


# each entry: (sampler id, call(sde, score, x_T, data, **overrides)); used for eps / steps / score / x_T checks
def _calls():
    return {
        "euler_maruyama": lambda s, f, x, d, **k: S.euler_maruyama(f, s, x, **{"steps": 2, **k}),
        "predictor_corrector": lambda s, f, x, d, **k: S.predictor_corrector(f, s, x, **{"steps": 2, **k}),
        "ancestral": lambda s, f, x, d, **k: S.ancestral(f, s, x, **{"steps": 2, **k}),
        "ddim": lambda s, f, x, d, **k: S.ddim(f, s, x, **{"steps": 2, **k}),
        "probability_flow": lambda s, f, x, d, **k: S.probability_flow(f, s, x, **{"rtol": 1e-3, "atol": 1e-3, **k}),
        "probability_flow/fixed": lambda s, f, x, d, **k: S.probability_flow(f, s, x, **{"method": "rk4", "steps": 2, **k}),
        "reverse_sde": lambda s, f, x, d, **k: S.reverse_sde(f, s, x, **{"steps": 2, **k}),
        "dpm_solver": lambda s, f, x, d, **k: S.dpm_solver(f, s, x, **{"steps": 2, **k}),
        "dpm_solver/singlestep": lambda s, f, x, d, **k: S.dpm_solver(f, s, x, **{"steps": 2, "multistep": False, **k}),
        "heun": lambda s, f, x, d, **k: S.heun(f, s, x, **{"steps": 2, **k}),
        "adaptive_sde": lambda s, f, x, d, **k: S.adaptive_sde(f, s, x, **{"rtol": 0.1, "atol": 0.1, **k}),
        "log_likelihood": lambda s, f, x, d, **k: sd.log_likelihood(f, s, d, **{"rtol": 1e-3, "atol": 1e-3, **k}),
        "log_likelihood/fixed": lambda s, f, x, d, **k: sd.log_likelihood(f, s, d, **{"method": "euler", "steps": 2, **k}),
    }


CALL_NAMES = list(_calls())
STEPPED = ["euler_maruyama", "predictor_corrector", "ancestral", "ddim", "probability_flow/fixed", "reverse_sde",
           "log_likelihood/fixed", "dpm_solver", "dpm_solver/singlestep", "heun"]


@pytest.mark.parametrize("sde_cls", [sd.VPSDE, sd.VESDE], ids=["vp", "ve"])
@pytest.mark.parametrize("eps", [0.0, -1e-3, 1.0, 1.5, float("nan")])
@pytest.mark.parametrize("name", CALL_NAMES)
def test_bad_eps(name, eps, sde_cls):
    s, f, x, d = _env(sde_cls)
    _expect_value_error(lambda: _calls()[name](s, f, x, d, eps=eps), "eps")


@pytest.mark.parametrize("steps", [0, -2, 2.5, "3", True, None])
@pytest.mark.parametrize("name", STEPPED)
def test_bad_steps(name, steps):
    if steps is None and name == "ancestral":
        steps = 0  # None means "N steps" for ancestral
    s, f, x, d = _env()
    _expect_value_error(lambda: _calls()[name](s, f, x, d, steps=steps), "steps")


@pytest.mark.parametrize("corrector_steps", [0, -1, 1.5])
def test_bad_corrector_steps(corrector_steps):
    s, f, x, _ = _env()
    _expect_value_error(lambda: S.predictor_corrector(f, s, x, steps=2, corrector_steps=corrector_steps),
                        "corrector_steps")


@pytest.mark.parametrize("snr", [0.0, -0.16, float("nan"), float("inf"), "high"])
def test_bad_snr(snr):
    s, f, x, _ = _env()
    _expect_value_error(lambda: S.predictor_corrector(f, s, x, steps=2, snr=snr), "snr")


@pytest.mark.parametrize("eta", [-0.1, 1.01, 2.0, float("nan"), "one"])
def test_bad_eta(eta):
    s, f, x, _ = _env()
    _expect_value_error(lambda: S.ddim(f, s, x, steps=2, eta=eta), "eta")


@pytest.mark.parametrize("value", [0.0, -1e-5, float("nan")])
@pytest.mark.parametrize("tol", ["rtol", "atol"])
@pytest.mark.parametrize("name", ["probability_flow", "log_likelihood", "adaptive_sde"])
def test_bad_tolerances(name, tol, value):
    s, f, x, d = _env()
    _expect_value_error(lambda: _calls()[name](s, f, x, d, **{tol: value}), tol)


BAD_SCORES = [
    ("narrower", lambda x, t: x[:, :1]),
    ("flat", lambda x, t: x.reshape(-1)),
    ("per-sample", lambda x, t: x.sum(dim=tuple(range(1, x.dim())))),
    ("transposed", lambda x, t: x.t() if x.dim() == 2 else x),
    ("not a tensor", lambda x, t: x.tolist()),
]


@pytest.mark.parametrize("score_label,bad_score", BAD_SCORES, ids=[b[0] for b in BAD_SCORES])
@pytest.mark.parametrize("name", CALL_NAMES)
def test_score_fn_of_wrong_shape(name, score_label, bad_score):
    s, _, x, d = _env()
    _expect_value_error(lambda: _calls()[name](s, bad_score, x, d), "score_fn")


@pytest.mark.parametrize("bad", [
    lambda x: x.clone().index_fill_(0, torch.tensor([3]), float("nan")),
    lambda x: x.clone().index_fill_(0, torch.tensor([0]), float("inf")),
    lambda x: x.clone().index_fill_(0, torch.tensor([7]), float("-inf")),
    lambda x: x.round().long(),
    lambda x: torch.zeros(x.shape, dtype=torch.int32),
    lambda x: x > 0,
    lambda x: x.tolist(),
    lambda x: x.numpy(),
], ids=["nan", "inf", "-inf", "int64", "int32", "bool", "list", "numpy"])
@pytest.mark.parametrize("name", CALL_NAMES)
def test_bad_prior_draw(name, bad):
    s, f, x, d = _env()
    arg = "x " if name.startswith("log_likelihood") else "x_T"
    if arg == "x ":
        d = bad(d)
    else:
        x = bad(x)
    _expect_value_error(lambda: _calls()[name](s, f, x, d), arg)


BAD_TIMESTEPS = [[5, 7, 3], [9, 5, 5, 0], [0, 1, 2], [1000, 3, 0], [5, 3, -1], [9.0, 3.0, 0.0],
                 torch.tensor([9.0, 3.0]), torch.tensor([500, 200, 100]).flip(0), [], torch.tensor([True, False])]


@pytest.mark.parametrize("timesteps", BAD_TIMESTEPS, ids=[str(i) for i in range(len(BAD_TIMESTEPS))])
@pytest.mark.parametrize("sampler", [S.ddim, S.ancestral], ids=["ddim", "ancestral"])
def test_bad_timesteps(sampler, timesteps):
    s, f, x, _ = _env()
    _expect_value_error(lambda: sampler(f, s, x, timesteps=timesteps), "timesteps")


BAD_SCHEDULES = [
    torch.tensor([1.0, 0.5, 0.7, 0.1], dtype=torch.float64),   # not decreasing
    torch.tensor([1.0, 0.5, 0.5, 0.1], dtype=torch.float64),   # not strictly decreasing
    torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64),        # ascending
    torch.tensor([1.5, 0.5, 0.1], dtype=torch.float64),        # above T
    torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64),        # reaches 0
    torch.tensor([1.0, 0.5, -0.1], dtype=torch.float64),       # below 0
    torch.tensor([1.0, float("nan"), 0.1], dtype=torch.float64),
    torch.tensor([1.0], dtype=torch.float64),                  # no step
    torch.tensor([[1.0, 0.5], [0.2, 0.1]], dtype=torch.float64),
]


@pytest.mark.parametrize("schedule", BAD_SCHEDULES, ids=[str(i) for i in range(len(BAD_SCHEDULES))])
@pytest.mark.parametrize("name", ["euler_maruyama", "predictor_corrector", "ddim", "ancestral",
                                  "probability_flow/fixed", "dpm_solver", "dpm_solver/singlestep", "heun", "time_grid"])
def test_bad_explicit_schedule(name, schedule):
    s, f, x, d = _env()
    if name == "time_grid":
        call = lambda: S.time_grid(s, 3, 1e-3, schedule)
    else:
        call = lambda: _calls()[name](s, f, x, d, schedule=schedule)
    _expect_value_error(call, "schedule")


@pytest.mark.parametrize("probes", [0, -1, 1.5])
def test_bad_probes(probes):
    s, f, _, d = _env()
    _expect_value_error(lambda: sd.log_likelihood(f, s, d, probes=probes), "probes")


@pytest.mark.parametrize("pixels", [
    torch.tensor([[12.5, 3.0], [0.0, 1.0]]),
    torch.tensor([[-1.0, 3.0], [0.0, 1.0]]),
    torch.tensor([[256.0, 3.0], [0.0, 1.0]]),
    torch.tensor([[255.0, 3.0], [0.0, float("nan")]]),
    torch.tensor([[300, 3], [0, 1]], dtype=torch.int64),
    torch.tensor([[-5, 3], [0, 1]], dtype=torch.int32),
], ids=["fraction", "negative", "256", "nan", "int-300", "int-negative"])
def test_bits_per_dim_bad_pixels(pixels):
    s, f, _, _ = _env()
    _expect_value_error(lambda: sd.bits_per_dim(f, s, pixels), "x", "[0, 255]")


@pytest.mark.parametrize("data_range", [(1.0, 1.0), (1.0, -1.0), (0.0, -0.5)])
def test_bits_per_dim_bad_data_range(data_range):
    s, f, _, _ = _env()
    pixels = torch.tensor([[12, 3], [0, 255]], dtype=torch.uint8)
    _expect_value_error(lambda: sd.bits_per_dim(f, s, pixels, data_range=data_range), "data_range")


# ==== 7. time grids ==============================================================================

SCHEDULE = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.12, 0.05, 0.01], dtype=torch.float64)
GRID_CASES = [
    ("euler_maruyama", S.euler_maruyama, dict(), 1),
    ("ddim", S.ddim, dict(), 1),
    ("ddim:eta=0.5", S.ddim, dict(eta=0.5), 1),
    ("pc:langevin", S.predictor_corrector, dict(), 2),               # corrector then predictor at each t_k
    ("pc:ancestral+annealed_langevin x2", S.predictor_corrector,
     dict(predictor="ancestral", corrector="annealed_langevin", corrector_steps=2), 3),
    ("pc:euler_maruyama+None", S.predictor_corrector, dict(predictor="euler_maruyama", corrector=None), 1),
    ("ancestral", S.ancestral, dict(), 1),
    ("probability_flow:euler", S.probability_flow, dict(method="euler"), 1),
    ("dpm_solver:3M", S.dpm_solver, dict(order=3), 1),
    ("pc:dpm_solver,2M+langevin", S.predictor_corrector, dict(predictor="dpm_solver", predictor_options=dict(multistep=True)), 2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sde_name", SDE_NAMES)
@pytest.mark.parametrize("label,sampler,options,per_step", GRID_CASES, ids=[c[0] for c in GRID_CASES])
def test_explicit_schedule_is_used_exactly(label, sampler, options, per_step, sde_name, dtype):
    sde = sde_of(sde_name)
    rec = Recorder(MIX2.score_fn(sde), dtype)
    x_T = prior_draw(sde, dtype=dtype)
    # no `steps` given (the defaults are 50-1000): the number of steps follows from the schedule
    out = sampler(rec, sde, x_T, schedule=SCHEDULE, generator=torch.Generator().manual_seed(0), **options)
    assert out.shape == x_T.shape and out.dtype == dtype
    n = SCHEDULE.numel() - 1
    assert len(rec.times) == per_step * n + 1, f"{label}: {len(rec.times)} score calls for a {n}-step schedule"
    expected = torch.cat([SCHEDULE[:-1].repeat_interleave(per_step), SCHEDULE[-1:]]).to(dtype)
    assert torch.equal(rec.call_times(), expected), f"{label}: times {rec.call_times().tolist()}"


@pytest.mark.parametrize("schedule", ["uniform", "quadratic", "logsnr", "karras"])
@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_sampler_runs_on_time_grid(sde_name, schedule):
    """A named schedule makes the sampler step along exactly time_grid(sde, steps, eps, schedule)."""
    sde = sde_of(sde_name)
    grid = S.time_grid(sde, 5, EPS, schedule)
    for sampler in (S.euler_maruyama, S.ddim):
        rec = Recorder(MIX2.score_fn(sde), torch.float64)
        sampler(rec, sde, prior_draw(sde, dtype=torch.float64), steps=5, eps=EPS, schedule=schedule,
                generator=torch.Generator().manual_seed(0))
        assert torch.equal(rec.call_times(), grid)


@pytest.mark.parametrize("eps", [1e-3, 1e-5, EPS])
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("schedule", ["uniform", "quadratic", "logsnr", "karras"])
@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_builtin_grid_endpoints_and_order(sde_name, schedule, steps, eps):
    sde = sde_of(sde_name)
    t = S.time_grid(sde, steps, eps, schedule)
    assert t.dtype == torch.float64 and t.shape == (steps + 1,)
    assert t[0].item() == sde.T, f"starts at {t[0].item()!r}"
    assert t[-1].item() == eps, f"ends at {t[-1].item()!r}"
    assert (t[1:] < t[:-1]).all(), f"not strictly decreasing: {t.tolist()}"
    h = t[:-1] - t[1:]
    if schedule == "uniform":
        assert torch.allclose(h, torch.full_like(h, (sde.T - eps) / steps), rtol=0, atol=1e-12)
    if schedule == "quadratic" and steps > 1:
        assert (h[1:] < h[:-1]).all(), "quadratic steps must shrink towards the data"


@pytest.mark.parametrize("eps", [1e-3, 1e-5])
@pytest.mark.parametrize("steps", [3, 25])
@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_logsnr_grid_has_equal_logsnr_steps(sde_name, steps, eps):
    sde = sde_of(sde_name)
    t = S.time_grid(sde, steps, eps, "logsnr")
    lam = S.logsnr(sde, t)
    # logsnr is log(alpha / sigma) of the SDE's marginal
    alpha, sigma = sde.marginal_coeffs(t)
    assert torch.allclose(lam, (alpha / sigma).log(), rtol=0, atol=1e-12)
    d = lam[1:] - lam[:-1]
    assert (d > 0).all()
    assert (d - (lam[-1] - lam[0]) / steps).abs().max().item() <= 1e-9, f"log-SNR steps {d.tolist()}"


@pytest.mark.parametrize("eps", [1e-3, 1e-5])
@pytest.mark.parametrize("steps", [3, 25])
@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_karras_grid_has_equal_rho_steps(sde_name, steps, eps):
    sde = sde_of(sde_name)
    t = S.time_grid(sde, steps, eps, "karras")
    alpha, sigma = sde.marginal_coeffs(t)
    r = (sigma / alpha) ** (1 / 7)
    d = r[:-1] - r[1:]
    assert (d > 0).all()
    assert (d - (r[0] - r[-1]) / steps).abs().max().item() <= 1e-9, f"sigma^(1/7) steps {d.tolist()}"


def test_logsnr_and_karras_grids_differ_from_uniform():
    """The grid checks above are not vacuous: a uniform grid fails both spacing criteria."""
    sde = sd.VPSDE()
    t = S.time_grid(sde, 10, 1e-3, "uniform")
    lam = S.logsnr(sde, t)
    d = lam[1:] - lam[:-1]
    assert (d - d.mean()).abs().max().item() > 1e-3
    alpha, sigma = sde.marginal_coeffs(t)
    r = (sigma / alpha) ** (1 / 7)
    assert ((r[:-1] - r[1:]) - (r[0] - r[-1]) / 10).abs().max().item() > 1e-3
