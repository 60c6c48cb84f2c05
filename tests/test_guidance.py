"""Guidance as score transforms, against the exact conditionals of a Gaussian mixture (the component is
the class): pointwise, the guided scores equal their formulas with the exact class score
∇ log p_t(x | k) = ∇ log p_t(x) + ∇ log p_t(k | x); through five samplers, guidance at scale 1 samples
exactly component k and scale 0 the whole mixture."""
import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, guidance
from scoresde import sampling as S
from conftest import TwoSampleCheck, assert_mode_weights

EPS = 1e-3
N_PER_CLASS = 1000
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
SAMPLERS = [
    ("euler_maruyama", S.euler_maruyama, dict(steps=500)),
    ("predictor_corrector", S.predictor_corrector, dict(steps=500)),
    ("probability_flow", S.probability_flow, dict()),
    ("ddim", S.ddim, dict(steps=100)),
    ("dpm_solver", S.dpm_solver, dict(steps=25)),
]


def guided(kind, mixture, sde, y, scale):
    if kind == "classifier":
        return guidance.classifier(mixture.score_fn(sde), lambda x, t: mixture.class_log_prob(x, t, sde), y, scale)
    return guidance.classifier_free(mixture.class_score_fn(sde), y, scale)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5, -0.5])
@pytest.mark.parametrize("kind", ["classifier", "classifier_free"])
def test_guided_score_is_its_formula(mixture, sde_name, scale, kind):
    """Both guidances equal s + w (s_y - s), with s_y the exact class score: for classifier guidance
    ∇ log p_t(y | x) = s_y - s by Bayes' rule, for classifier-free guidance it is the definition."""
    sde = SDES[sde_name]
    g = torch.Generator().manual_seed(0)
    x = mixture.marginal(sde, 0.2).sample(60, g, dtype=torch.float64)
    y = torch.arange(60) % 3
    t = torch.rand(60, generator=g, dtype=torch.float64) * 0.9 + 0.05
    s = mixture.score(x, t, sde)
    s_y = mixture.class_score(x, t, sde, y)
    torch.testing.assert_close(guided(kind, mixture, sde, y, scale)(x, t), s + scale * (s_y - s), rtol=0, atol=1e-9)


def test_classifier_free_calls_the_network_once_at_scale_0_and_1(mixture):
    calls = []

    def cond(x, t, y):
        calls.append(y)
        return mixture.class_score(x, t, VPSDE(), y)

    x = torch.zeros(4, 2)
    for scale, expected in ((0.0, [None]), (1.0, ["y"]), (3.0, ["y", None])):
        calls.clear()
        guidance.classifier_free(cond, 1, scale)(x, 0.5)
        assert [None if c is None else "y" for c in calls] == expected


def test_classifier_gradient_leaves_no_graph_and_works_under_no_grad(mixture):
    sde = VPSDE()
    fn = guided("classifier", mixture, sde, 2, 1.0)
    with torch.no_grad():
        out = fn(torch.zeros(3, 2), 0.5)
    assert not out.requires_grad
    torch.testing.assert_close(out, mixture.class_score(torch.zeros(3, 2), 0.5, sde, 2))


@pytest.fixture(scope="module")
def class_problems(mixture):
    """Labels 0, 1, 2 repeated; x_T drawn from each label's component at T; per class the check
    against exact draws of that component at eps, and for scale 0 the whole mixture's."""
    out = {}
    for name in ("vp", "ve"):
        sde = SDES[name]
        g = torch.Generator().manual_seed(11)
        y = torch.arange(3 * N_PER_CLASS) % 3
        x_T = torch.empty(3 * N_PER_CLASS, 2)
        for k in range(3):
            x_T[y == k] = mixture.component(k).marginal(sde, 1.0).sample(N_PER_CLASS, g)
        checks = [TwoSampleCheck(mixture.component(k).marginal(sde, EPS), N_PER_CLASS, g) for k in range(3)]
        out[name] = sde, y, x_T, checks
    return out


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("kind", ["classifier", "classifier_free"])
@pytest.mark.parametrize("label,sampler,options", SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_scale_1_samples_the_exact_class(mixture, class_problems, sde_name, kind, label, sampler, options):
    sde, y, x_T, checks = class_problems[sde_name]
    x = sampler(guided(kind, mixture, sde, y, 1.0), sde, x_T, eps=EPS, denoise=False,
                generator=torch.Generator().manual_seed(5), **options)
    assigned = mixture.classify(x)
    # the components overlap by ~1e-9: an exact sample lands in another class's region with that probability
    assert (assigned != y).sum() == 0, f"{label}: {(assigned != y).sum()} samples outside their class's mode"
    for k in range(3):
        checks[k].assert_matches(x[y == k], f"{kind} guidance, {label} on {sde_name}, class {k}")


@pytest.fixture(scope="module")
def mixture_problem(mixture):
    sde = SDES["vp"]
    g = torch.Generator().manual_seed(12)
    n = 3 * N_PER_CLASS
    return sde, n, mixture.marginal(sde, 1.0).sample(n, g), TwoSampleCheck(mixture.marginal(sde, EPS), n, g)


@pytest.mark.parametrize("kind", ["classifier", "classifier_free"])
@pytest.mark.parametrize("label,sampler,options", [SAMPLERS[1], SAMPLERS[4]], ids=["predictor_corrector", "dpm_solver"])
def test_scale_0_samples_the_whole_mixture(mixture, mixture_problem, kind, label, sampler, options):
    sde, n, x_T, check = mixture_problem
    x = sampler(guided(kind, mixture, sde, torch.arange(n) % 3, 0.0), sde, x_T, eps=EPS, denoise=False,
                generator=torch.Generator().manual_seed(5), **options)
    check.assert_matches(x, f"{kind} at scale 0, {label}")
    assert_mode_weights(mixture, x, f"{kind} at scale 0, {label}")


@pytest.mark.parametrize("call,message", [
    (lambda m: guidance.classifier(m.score_fn(VPSDE()), None, 1, scale=float("nan")), "scale must be a finite number"),
    (lambda m: guidance.classifier_free(None, 1.5, 1.0), "y must be an int or a 1-D integer tensor"),
    (lambda m: guidance.classifier_free(None, torch.tensor([[1]]), 1.0), "y must be an int or a 1-D integer tensor"),
    (lambda m: guidance.classifier_free(None, -1, 1.0), "y must be a class index >= 0"),
    (lambda m: guidance.classifier_free(None, True, 1.0), "y must be an int or a 1-D integer tensor"),
    (lambda m: guidance.classifier_free(m.class_score_fn(VPSDE()), torch.tensor([0, 1]), 2.0)(torch.zeros(3, 2), 0.5),
     "y must have one label per sample, shape (3,)"),
    (lambda m: guidance.classifier(m.score_fn(VPSDE()), lambda x, t: x.sum(1), 0)(torch.zeros(3, 2), 0.5),
     "classifier_logp must return (B, K) = (3, K)"),
])
def test_guidance_rejects_bad_input(mixture, call, message):
    with pytest.raises(ValueError) as e:
        call(mixture)
    assert message in str(e.value)
