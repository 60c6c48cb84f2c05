"""Inverse problems (``scoresde.sampling.inpaint`` / ``colorize``) against exact posteriors.

Ground truth: ``GaussianMixture.condition(A, y)`` is the exact posterior of x_0 given A x_0 = y,
and its ``score_fn(sde)`` the exact conditional score ∇ log p_t(x_t | y). Under that posterior the
observed part of x_t is alpha y + sigma z independently of the rest, so replacing it by a fresh
such draw after each step changes nothing in law: with the exact posterior score, every
fixed-grid sampler run through ``inpaint``/``colorize`` with ``method="replace"`` must give exact
posterior draws (the plumbing of the hook and of colorize's decoupling; energy distance against the
same-distribution threshold of ``conftest.TwoSampleCheck`` and binomial mode-weight checks).

With the unconditional score, replacement is *not* the posterior; on a mixture whose observed
coordinates identify the mode it keeps nearly the prior's mode weights. ΠGDM ("pigdm") must be
closer to the exact posterior by more than the Monte-Carlo error, and its guidance term is checked
pointwise where it is exact (isotropic Gaussian data of the given variance).
"""
import inspect
import math

import pytest
import torch

import scoresde as sd
from scoresde import sampling as S
from scoresde.metrics import energy_distance_se
from scoresde.sampling.generators import SampleGenerators
from scoresde.sampling.inverse import COLOR_DECOUPLING, METHODS, SAMPLERS_BY_NAME, pigdm_score
from conftest import TwoSampleCheck, assert_mode_weights

EPS = 1e-3
N_SAMPLES = 3000
Z = 5.0

# 4-D inpainting: coordinates 0, 1 observed (small within-mode variance, so y identifies the mode),
# coordinates 2, 3 to fill (modes far apart there).
INPAINT_MIXTURE = dict(weights=[0.3, 0.5, 0.2],
                       means=[[-0.3, -0.3, -2.0, 1.5], [0.3, 0.3, 2.0, -1.5], [0.3, -0.3, 0.0, 2.5]],
                       covs=[[0.02, 0.02, 0.1, 0.1]] * 3)
MASK = torch.tensor([1.0, 1.0, 0.0, 0.0])
Y_MIXED = torch.tensor([0.05, 0.0])     # posterior weights ~ (0.09, 0.65, 0.26): unlike the prior's
Y_DECISIVE = torch.tensor([0.25, 0.25])  # posterior weight of component 1 ~ 0.9998


def _pixels(p0, p1):
    """Two RGB pixels as data (3, 2) flattened channel-major, the GaussianMixture layout of (B, 3, 2)."""
    return [p0[0], p1[0], p0[1], p1[1], p0[2], p1[2]]


# 6-D colorization: (B, 3, 2) images, gray = channel mean of each pixel known
COLOR_MIXTURE = dict(weights=[0.3, 0.4, 0.3],
                     means=[_pixels((0.6, -0.6, -0.6), (-0.6, -0.6, 0.6)),
                            _pixels((-0.4, 0.8, -0.4), (0.8, 0.8, -0.4)),
                            _pixels((0.3, 0.3, 0.3), (-0.3, -0.3, -0.3))],
                     covs=[0.03] * 3)
GRAY = torch.tensor([0.1, 0.0])          # posterior weights ~ (0.46, 0.08, 0.46)
GRAY_A = torch.zeros(2, 6)
for _p in range(2):
    for _c in range(3):
        GRAY_A[_p, 2 * _c + _p] = 1 / 3

# fixed-grid samplers with step counts whose discretisation error 3,000 samples cannot resolve
# (as in test_samplers.py); each runs through the per-step hook
FIXED_GRID = [
    ("euler_maruyama", S.euler_maruyama, dict(steps=500)),
    ("ancestral", S.ancestral, dict(steps=500)),
    ("pc:reverse_diffusion+langevin", S.predictor_corrector, dict(steps=500)),
    ("ddim", S.ddim, dict(steps=100)),
    ("ddim:eta=0.5,logsnr", S.ddim, dict(steps=200, eta=0.5, schedule="logsnr")),
    ("heun", S.heun, dict(steps=18)),
    ("heun:churn", S.heun, dict(steps=50, churn=10.0)),
    ("dpm_solver:2M", S.dpm_solver, dict(steps=25)),
    ("dpm_solver:3S", S.dpm_solver, dict(steps=10, order=3, multistep=False)),
]


class _Fixed:
    """Draws of ``target`` with the observed part set to its exact value by ``fix`` (the law of an
    inpainting result at eps with ``denoise=False``: x_eps's free part, the observation exactly)."""

    def __init__(self, target, fix):
        self.target, self.fix = target, fix

    def sample(self, n, generator, dtype=torch.float32):
        return self.fix(self.target.sample(n, generator, dtype=dtype))


def _fix_inpaint(y):
    def fix(x):
        return torch.where(MASK.bool(), torch.cat([y, torch.zeros(2)]).to(x.dtype), x)
    return fix


def _fix_gray(gray):
    def fix(x):
        img = x.reshape(-1, 3, 2)
        return (img - img.mean(1, keepdim=True) + gray.to(x.dtype)).reshape(x.shape)
    return fix


@pytest.fixture(scope="module")
def inpainting():
    gm = sd.GaussianMixture(**INPAINT_MIXTURE)
    sde = sd.VPSDE()
    post = gm.condition(torch.eye(4)[:2], Y_MIXED)
    g = torch.Generator().manual_seed(11)
    x_T = sde.prior_sampling((N_SAMPLES, 4), generator=g)
    target = post.marginal(sde, EPS)
    return dict(sde=sde, post=post, x_T=x_T, target=target,
                check=TwoSampleCheck(_Fixed(target, _fix_inpaint(Y_MIXED)), N_SAMPLES, g))


@pytest.fixture(scope="module")
def colorization():
    gm = sd.GaussianMixture(**COLOR_MIXTURE)
    sde = sd.VPSDE()
    post = gm.condition(GRAY_A, GRAY)
    g = torch.Generator().manual_seed(12)
    x_T = sde.prior_sampling((N_SAMPLES, 3, 2), generator=g)
    target = post.marginal(sde, EPS)
    return dict(sde=sde, post=post, x_T=x_T, target=target,
                check=TwoSampleCheck(_Fixed(target, _fix_gray(GRAY)), N_SAMPLES, g))


# ---- the per-step hook ---------------------------------------------------------------------------

HOOKED = [
    ("euler_maruyama", S.euler_maruyama, dict(schedule="quadratic")),
    ("ancestral", S.ancestral, dict(schedule="uniform")),
    ("pc", S.predictor_corrector, dict(schedule="uniform")),
    ("pc:dpm_solver", S.predictor_corrector, dict(schedule="uniform", predictor="dpm_solver",
                                                  predictor_options=dict(multistep=True))),
    ("ddim:eta=0.5", S.ddim, dict(eta=0.5, schedule="uniform")),
    ("heun:churn", S.heun, dict(churn=5.0, schedule="karras")),
    ("dpm_solver:2M", S.dpm_solver, dict(schedule="logsnr")),
    ("dpm_solver:3S", S.dpm_solver, dict(order=3, multistep=False, schedule="logsnr")),
]


@pytest.mark.parametrize("label,sampler,options", HOOKED, ids=[h[0] for h in HOOKED])
def test_project_called_once_per_step_at_t_next(label, sampler, options):
    sde, steps, B = sd.VPSDE(), 7, 5
    calls = []

    def project(k, x, t_next):
        assert x.shape == (B, 4) and t_next.shape == (B,) and t_next.device == x.device
        calls.append((k, t_next.clone()))
        return x

    gm = sd.GaussianMixture(**INPAINT_MIXTURE)
    x_T = sde.prior_sampling((B, 4), generator=torch.Generator().manual_seed(0))
    sampler(gm.score_fn(sde), sde, x_T, steps=steps, eps=EPS, project=project,
            generator=torch.Generator().manual_seed(1), **options)
    grid = S.make_grid(sde, steps, EPS, options["schedule"])
    assert [k for k, _ in calls] == list(range(steps))
    for k, t_next in calls:
        assert torch.equal(t_next, grid.t[k + 1].float().expand(B)), (k, t_next, grid.t[k + 1])


@pytest.mark.parametrize("label,sampler,options", HOOKED, ids=[h[0] for h in HOOKED])
def test_identity_project_is_byte_identical(label, sampler, options):
    sde = sd.VESDE()
    gm = sd.GaussianMixture(**INPAINT_MIXTURE)
    x_T = sde.prior_sampling((64, 4), generator=torch.Generator().manual_seed(0))
    run = lambda **kw: sampler(gm.score_fn(sde), sde, x_T, steps=12, eps=EPS,
                               generator=torch.Generator().manual_seed(3), **options, **kw)
    assert torch.equal(run(), run(project=lambda k, x, t: x))


@pytest.mark.parametrize("label,sampler,options", HOOKED, ids=[h[0] for h in HOOKED])
def test_project_result_replaces_x(label, sampler, options):
    """What the hook returns is what the next step (and the end of the run) sees."""
    sde, steps = sd.VPSDE(), 6
    gm = sd.GaussianMixture(**INPAINT_MIXTURE)
    x_T = sde.prior_sampling((8, 4), generator=torch.Generator().manual_seed(0))
    marker = torch.arange(32, dtype=torch.float32).reshape(8, 4)
    out = sampler(gm.score_fn(sde), sde, x_T, steps=steps, eps=EPS, denoise=False,
                  generator=torch.Generator().manual_seed(3),
                  project=lambda k, x, t: marker if k == steps - 1 else x, **options)
    assert torch.equal(out, marker)


def test_samplers_by_name_are_the_packages():
    assert SAMPLERS_BY_NAME == S.SAMPLERS


def test_fixed_grid_samplers_take_the_hook():
    hooked = {name for name, fn in S.SAMPLERS.items() if "project" in inspect.signature(fn).parameters}
    assert hooked == {"euler_maruyama", "ancestral", "predictor_corrector", "ddim", "heun", "dpm_solver"}


def test_dpm_solver_corrector_refuses_project():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="project needs corrector=False"):
        S.dpm_solver(lambda x, t: -x, sde, torch.zeros(2, 2), corrector=True, project=lambda k, x, t: x)


# ---- exact posterior score through the hook and colorize: exact posterior draws ------------------

@pytest.mark.parametrize("label,sampler,options", FIXED_GRID, ids=[c[0] for c in FIXED_GRID])
def test_inpaint_with_exact_posterior_score_is_exact(inpainting, label, sampler, options):
    p = inpainting
    known = torch.cat([Y_MIXED, torch.zeros(2)]).expand(N_SAMPLES, 4)
    x = S.inpaint(sampler, p["post"].score_fn(p["sde"]), p["sde"], p["x_T"], known=known, mask=MASK,
                  eps=EPS, denoise=False, generator=torch.Generator().manual_seed(7), **options)
    assert torch.equal(x[:, :2], known[:, :2])
    p["check"].assert_matches(x, f"inpaint {label}")
    assert_mode_weights(p["target"], x, f"inpaint {label}")


def test_probability_flow_with_exact_posterior_score_is_exact(inpainting):
    """The ODE sampler has no hook: the exact conditional score alone gives the posterior at eps. Its
    observed part is alpha y + sigma z, independent of the rest, so it is checked on its own
    (standardised mean and variance) and the rest with the observed part set to y."""
    p = inpainting
    sde = p["sde"]
    x = S.probability_flow(p["post"].score_fn(sde), sde, p["x_T"], eps=EPS, denoise=False)
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(torch.tensor([EPS], dtype=torch.float64)))
    z = (x[:, :2].double() - alpha * Y_MIXED.double()) / sigma
    assert (z.mean(0).abs() < Z / math.sqrt(N_SAMPLES)).all(), z.mean(0)
    assert ((z.var(0) - 1).abs() < Z * math.sqrt(2 / N_SAMPLES)).all(), z.var(0)
    fixed = _fix_inpaint(Y_MIXED)(x)
    p["check"].assert_matches(fixed, "probability_flow")
    assert_mode_weights(p["target"], fixed, "probability_flow")


@pytest.mark.parametrize("label,sampler,options", FIXED_GRID, ids=[c[0] for c in FIXED_GRID])
def test_colorize_with_exact_posterior_score_is_exact(colorization, label, sampler, options):
    p = colorization
    gray = GRAY.reshape(1, 1, 2).expand(N_SAMPLES, 1, 2)
    x = S.colorize(sampler, p["post"].score_fn(p["sde"]), p["sde"], p["x_T"], gray=gray, eps=EPS,
                   denoise=False, generator=torch.Generator().manual_seed(7), **options)
    assert x.shape == (N_SAMPLES, 3, 2)
    assert (x.mean(1, keepdim=True) - gray).abs().max() < 1e-6
    flat = x.reshape(N_SAMPLES, 6)
    p["check"].assert_matches(flat, f"colorize {label}")
    assert_mode_weights(p["target"], flat, f"colorize {label}")


def test_color_decoupling_is_orthogonal_with_gray_first():
    M = COLOR_DECOUPLING
    assert torch.allclose(M @ M.T, torch.eye(3, dtype=M.dtype), atol=1e-15)
    assert torch.allclose(M[0], torch.full((3,), 1 / math.sqrt(3), dtype=M.dtype))


# ---- replacement: the observed part is re-noised to the time of the next score call --------------

@pytest.mark.parametrize("sampler,options", [(S.euler_maruyama, {}), (S.ddim, dict(eta=1.0)),
                                             (S.ancestral, dict(schedule="logsnr"))],
                         ids=["euler_maruyama", "ddim:eta=1", "ancestral"])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_replacement_draws_the_forward_marginal_at_each_score_time(sampler, options, sde_name):
    """Every score call after the first (at t_k, k >= 1, and the Tweedie call at eps) sees an
    observed part distributed as alpha(t_k) y + sigma(t_k) z: per time and coordinate, the
    standardised mean is within Z / sqrt(n) of 0 and the variance within Z sqrt(2 / n) of 1."""
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE()}[sde_name]
    gm = sd.GaussianMixture(**INPAINT_MIXTURE)
    n, steps = 4000, 20
    seen = []

    def score(x, t):
        seen.append((t[0].item(), x[:, :2].double()))
        return gm.score_fn(sde)(x, t)

    x_T = sde.prior_sampling((n, 4), generator=torch.Generator().manual_seed(0))
    known = torch.cat([Y_DECISIVE, torch.zeros(2)]).expand(n, 4)
    S.inpaint(sampler, score, sde, x_T, known=known, mask=MASK, steps=steps, eps=EPS,
              generator=torch.Generator().manual_seed(1), **options)
    assert len(seen) == steps + 1
    previous = None
    for t, obs in seen[1:]:
        alpha, sigma = (float(c) for c in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
        z = (obs - alpha * Y_DECISIVE.double()) / sigma
        assert (z.mean(0).abs() < Z / math.sqrt(n)).all(), (t, z.mean(0))
        assert ((z.var(0) - 1).abs() < Z * math.sqrt(2 / n)).all(), (t, z.var(0))
        if previous is not None:  # fresh noise each step: consecutive draws uncorrelated
            assert ((z * previous).mean(0).abs() < Z / math.sqrt(n)).all(), (t, (z * previous).mean(0))
        previous = z


def test_sample_generators_make_rows_independent_of_the_batch():
    sde = sd.VPSDE()
    gm = sd.GaussianMixture(**INPAINT_MIXTURE)
    known = torch.cat([Y_MIXED, torch.zeros(2)])

    def run(seeds):
        gen = SampleGenerators(seeds)
        x_T = sde.prior_sampling((len(seeds), 4), generator=gen)
        return S.inpaint("ddim", gm.score_fn(sde), sde, x_T, known=known, mask=MASK, steps=10, eta=1.0, generator=gen)

    assert torch.equal(run([0, 1, 2, 3])[2:], run([2, 3]))


# ---- ΠGDM ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_pigdm_guidance_is_exact_for_isotropic_gaussian_data(sde_name):
    """For data N(mu, v I), p(x_0 | x_t) = N(x̂_0, r_t^2 I) exactly, so ΠGDM's score equals the exact
    conditional score ∇ log p_t(x_t | A x_0 = y) at every (x, t)."""
    sde = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}[sde_name]
    v = 0.4
    gm = sd.GaussianMixture([1.0], [[0.3, -0.2, 1.0, 0.5]], [v])
    y = torch.tensor([0.7, 0.1], dtype=torch.float64)
    exact = gm.condition(torch.eye(4)[:2], y).score_fn(sde)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(256, 4, generator=g, dtype=torch.float64)
    t = EPS + (1 - EPS) * torch.rand(256, generator=g, dtype=torch.float64)
    known = torch.cat([y, torch.zeros(2, dtype=torch.float64)])
    guided = pigdm_score(gm.score_fn(sde), sde, known, MASK.bool(), data_var=v)
    with torch.no_grad():  # as inside a sampler: the transform enables gradients itself
        got, want = guided(x, t), exact(x, t)
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-7 * want.abs().max()), (got - want).abs().max()


def _tv_and_se(target_weights, x, classify):
    """Total-variation error of the mode fractions and a bound on its standard error (sum of the
    fractions' binomial SEs, halved: sd of a sum <= sum of sds, and |.| is 1-Lipschitz)."""
    n = x.shape[0]
    f = torch.bincount(classify(x), minlength=len(target_weights)).double() / n
    tv = 0.5 * float((f - target_weights).abs().sum())
    se = 0.5 * float((f * (1 - f) / n).sqrt().sum())
    return tv, se


@pytest.mark.parametrize("sampler,options", [(S.ddim, dict(steps=50)), (S.euler_maruyama, dict(steps=200))],
                         ids=["ddim", "euler_maruyama"])
def test_pigdm_is_closer_to_the_posterior_than_replacement(sampler, options):
    """Observed coordinates that identify the mode (posterior weight 0.9998 on component 1):
    replacement keeps nearly the prior weights (0.3, 0.5, 0.2); ΠGDM, with data_var the observed
    coordinates' variance under the prior (no tuning on the answer), must have a smaller
    mode-weight error and energy distance by more than Z combined standard errors."""
    gm = sd.GaussianMixture(**INPAINT_MIXTURE)
    sde = sd.VPSDE()
    post = gm.condition(torch.eye(4)[:2], Y_DECISIVE)
    n = 2000
    ref = post.sample(2 * n, torch.Generator().manual_seed(5))
    classify = post.marginal(sde, EPS).classify
    w, mu = gm.weights, gm.means
    var = (w[:, None] * (gm.covs.diagonal(dim1=1, dim2=2) + mu ** 2)).sum(0) - (w[:, None] * mu).sum(0) ** 2
    data_var = float(var[:2].mean())
    x_T = sde.prior_sampling((n, 4), generator=torch.Generator().manual_seed(1))
    known = torch.cat([Y_DECISIVE, torch.zeros(2)]).expand(n, 4)
    res = {}
    for method in METHODS:
        x = S.inpaint(sampler, gm.score_fn(sde), sde, x_T, known=known, mask=MASK, method=method,
                      data_var=data_var, generator=torch.Generator().manual_seed(2), eps=EPS, **options)
        res[method] = _tv_and_se(post.weights, x, classify), energy_distance_se(x, ref)
    (tv_r, se_r), (ed_r, ed_se_r) = res["replace"]
    assert tv_r > Z * se_r, f"replacement should be measurably biased here: TV {tv_r:.3f} ± {se_r:.3f}"
    for method in ("pigdm", "pigdm+replace"):
        (tv, se), (ed, ed_se) = res[method]
        assert tv_r - tv > Z * math.hypot(se, se_r), f"{method}: TV {tv:.3f} ± {se:.3f} vs replace {tv_r:.3f} ± {se_r:.3f}"
        assert ed_r - ed > Z * math.hypot(ed_se, ed_se_r), f"{method}: energy {ed:.4f} ± {ed_se:.4f} vs replace {ed_r:.4f}"


def test_pigdm_runs_with_ode_samplers():
    """A score transform needs no hook: probability_flow takes it; the observation is exact at the end."""
    gm = sd.GaussianMixture(**INPAINT_MIXTURE)
    sde = sd.VPSDE()
    x_T = sde.prior_sampling((16, 4), generator=torch.Generator().manual_seed(1))
    known = torch.cat([Y_DECISIVE, torch.zeros(2)])
    x = S.inpaint("probability_flow", gm.score_fn(sde), sde, x_T, known=known, mask=MASK.bool(), method="pigdm",
                  rtol=1e-3, atol=1e-3)
    assert torch.equal(x[:, :2], Y_DECISIVE.expand(16, 2)) and torch.isfinite(x).all()


# ---- bad inputs: one clear ValueError each ------------------------------------------------------

def _inpaint_args(**change):
    sde = sd.VPSDE()
    args = dict(sampler="ddim", score_fn=lambda x, t: -x, sde=sde, x_T=torch.zeros(4, 4),
                known=torch.zeros(4, 4), mask=MASK, steps=3)
    args.update(change)
    return args


BAD_INPAINT = [
    ("known shape", dict(known=torch.zeros(4, 5)), "known must have x_T's shape"),
    ("known not a tensor", dict(known=[0.0] * 4), "known must be a floating-point tensor"),
    ("known NaN where observed", dict(known=torch.full((4, 4), math.nan)), "known contains NaN"),
    ("mask shape", dict(mask=torch.ones(3)), "mask must be broadcastable"),
    ("mask not 0/1", dict(mask=torch.tensor([1.0, 0.5, 0.0, 0.0])), "mask must hold only 0"),
    ("mask not a tensor", dict(mask=[1, 1, 0, 0]), "mask must be a tensor"),
    ("unknown sampler name", dict(sampler="nope"), "sampler must be"),
    ("sampler not callable", dict(sampler=3), "sampler must be"),
    ("unknown method", dict(method="dps"), "method must be one of"),
    ("replace with probability_flow", dict(sampler="probability_flow"), "has no per-step hook|fixed-grid"),
    ("replace with reverse_sde", dict(sampler=S.reverse_sde), "fixed-grid"),
    ("replace with adaptive_sde", dict(sampler="adaptive_sde"), "fixed-grid"),
    ("pigdm+replace with probability_flow", dict(sampler="probability_flow", method="pigdm+replace"), "fixed-grid"),
    ("project given", dict(project=lambda k, x, t: x), "project is not an option"),
    ("data_var", dict(method="pigdm", data_var=0.0), "data_var must be"),
    ("x_T", dict(x_T=torch.zeros(4, 4, dtype=torch.long)), "x_T must be"),
    ("pigdm with a score without gradient", dict(method="pigdm", score_fn=lambda x, t: -x.detach()),
     "differentiates score_fn"),
]


@pytest.mark.parametrize("label,change,message", BAD_INPAINT, ids=[b[0] for b in BAD_INPAINT])
def test_bad_inpaint_input_is_one_clear_error(label, change, message):
    args = _inpaint_args(**change)
    with pytest.raises(ValueError, match=message) as err:
        S.inpaint(args.pop("sampler"), args.pop("score_fn"), args.pop("sde"), args.pop("x_T"), **args)
    assert "\n" not in str(err.value)


BAD_COLORIZE = [
    ("x_T not 3 channels", dict(x_T=torch.zeros(4, 2, 2)), "x_T must have 3 colour channels"),
    ("gray shape", dict(gray=torch.zeros(4, 2)), "gray must be a floating-point tensor of shape"),
    ("gray not a tensor", dict(gray=0.5), "gray must be"),
    ("gray NaN", dict(gray=torch.full((4, 1, 2), math.nan)), "gray contains NaN"),
    ("replace with adaptive_sde", dict(sampler="adaptive_sde"), "fixed-grid"),
    ("score_fn not callable", dict(score_fn=None), "score_fn must be callable"),
]


@pytest.mark.parametrize("label,change,message", BAD_COLORIZE, ids=[b[0] for b in BAD_COLORIZE])
def test_bad_colorize_input_is_one_clear_error(label, change, message):
    args = dict(sampler="ddim", score_fn=lambda x, t: -x, sde=sd.VPSDE(), x_T=torch.zeros(4, 3, 2),
                gray=torch.zeros(4, 1, 2), steps=3)
    args.update(change)
    with pytest.raises(ValueError, match=message) as err:
        S.colorize(args.pop("sampler"), args.pop("score_fn"), args.pop("sde"), args.pop("x_T"), **args)
    assert "\n" not in str(err.value)
