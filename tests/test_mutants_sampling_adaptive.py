"""Exact tests of sampling/adaptive.py (adaptive_sde), written for mutation testing (mutation/REPORT.md).

The statistical tests of adaptive_sde (tests/test_samplers.py, test_sampler_distributions.py) take
minutes per run and cannot see a small change in one rule of the step-size controller. Here the
algorithm of the module docstring is written out again, plainly, one sample at a time with Python
lists for the Brownian stacks, and run on the very normal draws the sampler makes (the same
generator, drawn as ``randn_like`` draws them); the vectorised sampler must give the same samples, the
same accepted and rejected counts per sample and the same NFE, with and without Brownian memory.
The cases are chosen so that steps are rejected and stacks are split, so every branch runs.
"""
import math

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.analytic import GaussianMixture
from scoresde.sampling import adaptive as adaptive_mod
from scoresde.sampling import adaptive_sde
from scoresde.sampling._loop import randn_like
from scoresde.sampling.adaptive import _BrownianStacks

D = torch.float64
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def mixture():
    return GaussianMixture(torch.tensor([0.3, 0.7], dtype=D), torch.tensor([[1.2, -0.4], [-0.8, 0.9]], dtype=D),
                           torch.tensor([[[0.05, 0.01], [0.01, 0.04]], [[0.2, -0.05], [-0.05, 0.1]]], dtype=D))


def reference(score, sde, x_T, generator, *, rtol, atol, eps, h_init, safety, exponent, memory, denoise):
    """adaptive_sde written out: the step sizes, the Brownian stacks (Python lists) and the accept /
    reject rules one sample at a time; the drift and error arithmetic on the whole batch, as the
    sampler evaluates the score (so that both round alike: over hundreds of steps a last-bit
    difference can move an error estimate across 1 and change the path)."""
    B, n = x_T.shape[0], x_T[0].numel()
    x = x_T.clone()
    span = [sde.T - eps] * B
    h = [min(s, h_init) for s in span]
    stacks = [[] for _ in range(B)]  # per sample: unused pieces (h, dW) of its path, the top one last
    accepted, rejected, iters = [0] * B, [0] * B, 0
    tiny = torch.finfo(x.dtype).tiny

    def reverse_drift(y, t):  # f - g^2 score at per-sample times t, and g
        f, g = sde.sde(y, t)
        return f - g[:, None] ** 2 * score(y, t), g[:, None]

    while any(s > 0 for s in span):
        iters += 1
        xi = randn_like(x, generator)
        dw = torch.empty_like(x)
        for i in range(B):
            if memory and stacks[i]:
                h_top, w_top = stacks[i][-1]
                if h[i] >= h_top:  # the whole top piece
                    h[i], dw[i] = h_top, w_top
                    stacks[i].pop()
                else:  # W at h inside the piece, by the Brownian bridge; the rest stays on top
                    q = h[i] / h_top
                    dw[i] = q * w_top + math.sqrt(h[i] * (1 - q)) * xi[i]
                    stacks[i][-1] = (h_top - h[i], w_top - dw[i])
            else:
                dw[i] = math.sqrt(h[i]) * xi[i]
        hs = torch.tensor(h, dtype=D)[:, None]
        t_now = eps + torch.tensor(span, dtype=D)
        t_next = eps + (torch.tensor(span, dtype=D) - hs[:, 0])
        drift, g_now = reverse_drift(x, t_now)
        x_em = x - hs * drift + g_now * dw
        drift, g_next = reverse_drift(x_em, t_next)
        x_heun = (x_em + (x - hs * drift + g_next * dw)) / 2
        delta = torch.clamp(rtol * torch.maximum(x_em.abs(), x.abs()), min=atol)
        errs = ((x_em - x_heun) / delta).norm(dim=1) / math.sqrt(n)
        for i in range(B):
            if span[i] == 0:
                continue
            if errs[i] <= 1:
                x[i] = x_heun[i]
                span[i] -= h[i]
                accepted[i] += 1
            else:
                if memory:
                    stacks[i].append((h[i], dw[i].clone()))
                rejected[i] += 1
        # the next proposal, batched as the sampler computes it (torch's vectorised pow may differ from
        # a scalar one in the last bit, and a step one ulp short of the end means one more step)
        h = torch.minimum(torch.tensor(span, dtype=D), safety * hs[:, 0] * errs.clamp(min=tiny) ** -exponent).tolist()
    nfe = 2 * iters
    if denoise:
        alpha, sigma = (float(c) for c in sde.marginal_coeffs(torch.tensor([eps], dtype=D)))
        x = (x + sigma ** 2 * score(x, torch.full((B,), eps, dtype=D))) / alpha
        nfe += 1
    return x, accepted, rejected, nfe


CASES = {
    # (rtol, atol, h_init, safety, exponent): a large first step forces rejections, hence stack splits
    "default": (0.02, 0.02, 0.5, 0.9, 0.9),
    "loose": (0.1, 0.05, 0.3, 0.8, 0.5),
    "exponent 1": (0.02, 0.03, 0.1, 0.9, 1.0),
}
# Not a tight tolerance: over hundreds of steps with deep stacks, a last-bit difference between this
# plain arithmetic and the sampler's vectorised one eventually moves an error estimate across 1, and
# the two paths part (both correct).


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("memory", [True, False])
def test_adaptive_sde_is_the_algorithm_written_out(sde_name, case, memory):
    sde, mix = SDES[sde_name](), mixture()
    score = mix.score_fn(sde)
    rtol, atol, h_init, safety, exponent = CASES[case]
    x_T = sde.prior_sampling((5, 2), generator=torch.Generator().manual_seed(7), dtype=D)
    opts = dict(rtol=rtol, atol=atol, eps=1e-3, h_init=h_init, safety=safety, exponent=exponent, memory=memory)
    denoise = case != "loose"
    got, stats = adaptive_sde(score, sde, x_T, generator=torch.Generator().manual_seed(3), denoise=denoise,
                              return_stats=True, **opts)
    want, accepted, rejected, nfe = reference(score, sde, x_T, torch.Generator().manual_seed(3), denoise=denoise,
                                              **opts)
    assert sum(rejected) > 0  # the case exercises rejections (and, with memory, the stacks)
    assert stats.accepted.tolist() == accepted and stats.rejected.tolist() == rejected
    assert stats.nfe == nfe
    # last-bit differences of the two arithmetics grow along a path whose rejected pieces are split
    # again and again (measured: up to 1.5e-5 on VE with exponent 1, 1e-15 elsewhere); a wrong rule
    # changes the step counts above or the samples by 1e-3 and more
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_adaptive_sde_float32_keeps_its_dtype_and_agrees():
    sde, mix = VPSDE(), mixture()
    x_T = sde.prior_sampling((4, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    score32 = lambda x, t: mix.score_fn(sde)(x.double(), t.double()).float()  # noqa: E731
    got, stats = adaptive_sde(score32, sde, x_T, rtol=0.05, atol=0.05, generator=torch.Generator().manual_seed(2),
                              return_stats=True)
    assert got.dtype == torch.float32 and stats.accepted.dtype == torch.long
    assert stats.accepted.shape == (4,) and (stats.accepted > 0).all()


class Bar:
    made = []

    def __init__(self, desc="", unit="", leave=True):
        self.desc, self.unit, self.leave, self.n, self.closed = desc, unit, leave, 0, False
        Bar.made.append(self)

    def update(self, k):
        self.n += k

    def close(self):
        self.closed = True


def test_progress_bar_counts_iterations(monkeypatch):
    monkeypatch.setattr(adaptive_mod, "tqdm", Bar)
    Bar.made = []
    sde = VPSDE()
    x_T = sde.prior_sampling((3, 2), generator=torch.Generator().manual_seed(0), dtype=D)
    _, stats = adaptive_sde(mixture().score_fn(sde), sde, x_T, rtol=0.05, atol=0.05, progress=True, denoise=False,
                            generator=torch.Generator().manual_seed(0), return_stats=True)
    (bar,) = Bar.made
    assert bar.desc == "adaptive_sde" and bar.unit == "step" and bar.leave is False and bar.closed
    assert bar.n == stats.nfe // 2


def test_a_nan_score_is_reported_at_once():
    sde = VPSDE()
    x_T = sde.prior_sampling((3, 2), generator=torch.Generator().manual_seed(0), dtype=D)
    calls = []

    def nan_score(x, t):
        calls.append(1)
        return torch.full_like(x, float("nan"))

    with pytest.raises(Exception, match="non-finite"):
        adaptive_sde(nan_score, sde, x_T, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 2  # one iteration (two evaluations), then the check stops it


# -- the Brownian stacks, piece by piece ------------------------------------------------------------
def stacks_with(pieces):
    """Stacks for len(pieces) rows of shape (1,), row r holding pieces[r] (a list of (h, w), top last)."""
    x = torch.zeros(len(pieces), 1, dtype=D)
    st = _BrownianStacks(x)
    for level in range(max(len(p) for p in pieces)):
        st.reserve(int(st.depth.max()))
        mask = torch.tensor([len(p) > level for p in pieces])
        h = torch.tensor([p[level][0] if len(p) > level else 0.0 for p in pieces], dtype=D)
        w = torch.tensor([[p[level][1]] if len(p) > level else [0.0] for p in pieces], dtype=D)
        st.push(mask, h, w)
    return st


def test_take_without_a_piece_is_a_fresh_increment():
    st = stacks_with([[], []])
    h, dw = st.take(torch.tensor([0.25, 0.04], dtype=D), torch.tensor([[1.0], [-2.0]], dtype=D))
    assert h.tolist() == [0.25, 0.04]
    torch.testing.assert_close(dw, torch.tensor([[0.5], [-0.4]], dtype=D), rtol=1e-15, atol=0)
    assert st.depth.tolist() == [0, 0]


def test_take_a_whole_piece_and_split_one_by_the_bridge():
    st = stacks_with([[(0.3, 0.9), (0.2, -0.5)], [(0.5, 1.0)]])
    assert st.depth.tolist() == [2, 1]
    xi = torch.tensor([[0.7], [-1.3]], dtype=D)
    h, dw = st.take(torch.tensor([0.25, 0.2], dtype=D), xi)
    # row 0 asks more than its top piece (0.2): it gets that piece, the stack pops
    # row 1 asks 0.2 of 0.5: W(0.2) given W(0.5) = 1 is N(0.4, 0.2 * 0.6)
    assert h.tolist() == [0.2, 0.2]
    q = 0.2 / 0.5
    bridge = q * 1.0 + math.sqrt(0.2 * (1 - q)) * -1.3
    torch.testing.assert_close(dw, torch.tensor([[-0.5], [bridge]], dtype=D), rtol=1e-14, atol=0)
    assert st.depth.tolist() == [1, 1]
    # what is left on top: row 0's older piece unchanged; row 1's remainder (0.3, 1 - bridge)
    h2, dw2 = st.take(torch.tensor([1.0, 1.0], dtype=D), torch.zeros(2, 1, dtype=D))
    torch.testing.assert_close(h2, torch.tensor([0.3, 0.3], dtype=D), rtol=1e-14, atol=0)
    torch.testing.assert_close(dw2, torch.tensor([[0.9], [1.0 - bridge]], dtype=D), rtol=1e-14, atol=0)
    assert st.depth.tolist() == [0, 0]


def test_push_only_where_masked_and_reserve_keeps_the_pieces():
    st = stacks_with([[], []])
    cap = st.h.shape[1]
    for k in range(cap + 2):  # more pieces than the first capacity: reserve must grow and keep them
        st.reserve(int(st.depth.max()))
        st.push(torch.tensor([True, k % 2 == 0]), torch.tensor([0.1 * (k + 1), 0.5], dtype=D),
                torch.tensor([[float(k)], [-1.0]], dtype=D))
    assert st.depth.tolist() == [cap + 2, (cap + 3) // 2]
    assert st.h.shape[1] > cap + 2
    torch.testing.assert_close(st.h[0, :cap + 2], torch.tensor([0.1 * (k + 1) for k in range(cap + 2)], dtype=D))
    assert st.w[0, :cap + 2, 0].tolist() == [float(k) for k in range(cap + 2)]


def test_take_a_piece_that_exactly_fits_pops_it():
    """A step exactly as long as the top piece takes all of it: splitting would leave an empty piece on
    the stack, and the next take would return a step of length 0."""
    st = stacks_with([[(0.25, 0.5)]])
    h, dw = st.take(torch.tensor([0.25], dtype=D), torch.tensor([[3.0]], dtype=D))
    assert h.tolist() == [0.25] and dw.tolist() == [[0.5]] and st.depth.tolist() == [0]


# -- defaults, layouts and messages -----------------------------------------------------------------
def test_documented_defaults():
    import inspect
    p = inspect.signature(adaptive_sde).parameters
    assert {k: p[k].default for k in ("rtol", "atol", "eps", "h_init", "safety", "exponent", "memory", "max_iters",
                                      "denoise", "progress", "return_stats")} == dict(
        rtol=1e-2, atol=1e-2, eps=1e-3, h_init=1e-2, safety=0.9, exponent=0.9, memory=True, max_iters=100_000,
        denoise=True, progress=False, return_stats=False)


def test_no_progress_bar_unless_asked(monkeypatch):
    monkeypatch.setattr(adaptive_mod, "tqdm", Bar)
    Bar.made = []
    sde = VPSDE()
    x_T = sde.prior_sampling((2, 2), generator=torch.Generator().manual_seed(0), dtype=D)
    adaptive_sde(mixture().score_fn(sde), sde, x_T, rtol=0.1, atol=0.1, generator=torch.Generator().manual_seed(0))
    assert Bar.made == []


def test_every_score_call_gets_per_sample_times():
    """t is a (B,) tensor with one stride per sample at every call, the final denoising one included, so a
    compiled network (scoresde.precision.compile_score) sees one layout and compiles once."""
    sde, layouts = VPSDE(), []
    score = mixture().score_fn(sde)

    def spy(x, t):
        layouts.append((tuple(t.shape), t.stride(), t.dtype))
        return score(x, t)

    x_T = sde.prior_sampling((3, 2), generator=torch.Generator().manual_seed(0), dtype=D)
    adaptive_sde(spy, sde, x_T, rtol=0.1, atol=0.1, generator=torch.Generator().manual_seed(0))
    assert set(layouts) == {((3,), (1,), D)}


def test_a_batch_of_one():
    sde, mix = VESDE(), mixture()
    x_T = sde.prior_sampling((1, 2), generator=torch.Generator().manual_seed(0), dtype=D)
    got, stats = adaptive_sde(mix.score_fn(sde), sde, x_T, generator=torch.Generator().manual_seed(1), return_stats=True)
    want, accepted, rejected, nfe = reference(mix.score_fn(sde), sde, x_T, torch.Generator().manual_seed(1), rtol=1e-2,
                                              atol=1e-2, eps=1e-3, h_init=1e-2, safety=0.9, exponent=0.9, memory=True,
                                              denoise=True)
    assert stats.accepted.tolist() == accepted and stats.nfe == nfe
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arg, value", [("rtol", 0.0), ("atol", 1.5), ("h_init", -1.0), ("safety", 1.0),
                                        ("exponent", 1.5), ("max_iters", 0)])
def test_bad_parameters_are_named(arg, value):
    sde = VPSDE()
    x_T = sde.prior_sampling((2, 2), generator=torch.Generator().manual_seed(0), dtype=D)
    with pytest.raises(ValueError) as e:
        adaptive_sde(lambda x, t: -x, sde, x_T, **{arg: value})
    assert str(e.value).startswith(f"{arg} must be ")


def test_a_nan_error_estimate_is_reported_in_full():
    sde = VPSDE()
    x_T = sde.prior_sampling((2, 2), generator=torch.Generator().manual_seed(0), dtype=D)
    with pytest.raises(Exception) as e:
        adaptive_sde(lambda x, t: torch.full_like(x, float("nan")), sde, x_T, generator=torch.Generator().manual_seed(0))
    assert str(e.value) == ("adaptive_sde: the score function returned non-finite values "
                            "(NaN or inf in the error estimate)")


def test_max_iters_message_says_what_to_do():
    sde = VPSDE()
    x_T = sde.prior_sampling((2, 2), generator=torch.Generator().manual_seed(0), dtype=D)
    with pytest.raises(RuntimeError) as e:
        adaptive_sde(mixture().score_fn(sde), sde, x_T, max_iters=3, generator=torch.Generator().manual_seed(0))
    assert str(e.value) == ("adaptive_sde: samples still above eps after max_iters=3 iterations; "
                            "loosen rtol/atol or raise max_iters")


def test_a_nan_in_the_denoising_step_is_reported_by_the_sampler():
    """The loop's own check cannot see the last (Tweedie) evaluation; the result check names the sampler."""
    sde = VPSDE()
    score = mixture().score_fn(sde)
    x_T = sde.prior_sampling((2, 2), generator=torch.Generator().manual_seed(0), dtype=D)
    _, stats = adaptive_sde(score, sde, x_T, rtol=0.1, atol=0.1, generator=torch.Generator().manual_seed(0),
                            return_stats=True)
    calls = []

    def nan_last(x, t):
        calls.append(1)
        s = score(x, t)
        return torch.full_like(s, float("nan")) if len(calls) == stats.nfe else s

    with pytest.raises(Exception) as e:
        adaptive_sde(nan_last, sde, x_T, rtol=0.1, atol=0.1, generator=torch.Generator().manual_seed(0))
    assert str(e.value).startswith("adaptive_sde: the result contains NaN")
