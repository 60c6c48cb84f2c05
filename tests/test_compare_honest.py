"""``compare`` reports honest comparisons: standard errors that match the spread of repeated draws,
a noise floor that is the metric between two draws of the data distribution, and a verdict that
names a winner only beyond 2 combined standard errors; ``scoresde compare`` with --sampler and
--option as a user types it.

The reference distribution is a two-mode Gaussian mixture with exact samples; a "sampler" with a
planted error is the same mixture with weights 0.7 / 0.3 instead of 0.5 / 0.5 (a sampler losing
mass from one mode). The energy distance barely sees small shape errors (a 10% wider mode moves
it by ~1/4 of an SE at 2,000 samples), so the planted error is one it resolves at 1,000 samples.
"""
import json
import math

import pytest
import torch

import scoresde as sd
from scoresde import compare as C
from scoresde import metrics, plot
from scoresde.cli import main
from test_cli import TINY_SETS, assert_one_line_error, run_cli
from scoresde.sampling import SAMPLERS

GM = sd.GaussianMixture(weights=[0.5, 0.5], means=[[-1.5, 0.0], [1.5, 0.0]], covs=[0.25, 0.25])
PLANTED = sd.GaussianMixture(weights=[0.7, 0.3], means=[[-1.5, 0.0], [1.5, 0.0]], covs=[0.25, 0.25])


def draws(mix, n, seed):
    return mix.sample(n, torch.Generator().manual_seed(seed))


def jackknife(values):
    v = torch.tensor(values, dtype=torch.float64)
    return (len(v) - 1) / len(v) * float((v - v.mean()).square().sum())


# ---- the standard errors ------------------------------------------------------------------------

def test_energy_distance_se_is_the_two_sample_delete_one_jackknife():
    """The O(n^2) row-sum formula against leave-one-out recomputation with metrics.energy_distance."""
    x, y = draws(PLANTED, 23, 0).double(), draws(GM, 19, 1).double()
    value, se = metrics.energy_distance_se(x, y)
    assert value == pytest.approx(metrics.energy_distance(x, y), rel=1e-12)
    drop_x = [metrics.energy_distance(torch.cat([x[:i], x[i + 1:]]), y) for i in range(len(x))]
    drop_y = [metrics.energy_distance(x, torch.cat([y[:j], y[j + 1:]])) for j in range(len(y))]
    assert se == pytest.approx(math.sqrt(jackknife(drop_x) + jackknife(drop_y)), rel=1e-9)


def test_sliced_wasserstein_se_is_the_delete_a_group_jackknife():
    """Groups i mod 10 dropped one at a time, recomputed with metrics.sliced_wasserstein on the same
    directions (sizes 37 and 30: unequal groups, unequal samples)."""
    x, y = draws(PLANTED, 37, 2).double(), draws(GM, 30, 3).double()
    value, se = metrics.sliced_wasserstein_se(x, y, seed=4)
    sw = lambda a, b: metrics.sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(4))
    assert value == pytest.approx(sw(x, y), rel=1e-12)
    drop_x = [sw(x[torch.arange(len(x)) % 10 != g], y) for g in range(10)]
    drop_y = [sw(x, y[torch.arange(len(y)) % 10 != g]) for g in range(10)]
    assert se == pytest.approx(math.sqrt(jackknife(drop_x) + jackknife(drop_y)), rel=1e-9)


def _spread_and_se(fn, mix, n, reps):
    values, ses = [], []
    for r in range(reps):
        v, se = fn(draws(mix, n, 1000 + r), draws(GM, n, 5000 + r))
        values.append(v)
        ses.append(se)
    values, ses = torch.tensor(values, dtype=torch.float64), torch.tensor(ses, dtype=torch.float64)
    return float(ses.square().mean().sqrt() / values.std())


def test_se_matches_the_spread_over_independent_draws():
    """RMS reported SE / empirical SD over R independent (samples, reference) pairs. The SD of R
    values has a relative SE of 1/sqrt(2(R-1)), so a correct SE gives a ratio within
    exp(+-k/sqrt(2(R-1))) of 1 with k SDs of slack (k = 4 for the energy distance, R = 200: [0.82,
    1.22]; k = 5 for sliced W2, R = 60: [0.63, 1.58]).

    With a planted difference the statistics are non-degenerate and the jackknife consistent:
    measured ratios 1.004 (energy distance, R = 3000) and 0.95 (sliced W2). When the laws agree
    the energy distance is a degenerate U-statistic and the jackknife is conservative by up to
    sqrt(2) (Efron-Stein): measured 1.40, checked here to lie in [0.82, sqrt(2) * 1.22]."""
    slack = lambda k, reps: math.exp(k / math.sqrt(2 * (reps - 1)))
    f = slack(4, 200)
    ratio = _spread_and_se(metrics.energy_distance_se, PLANTED, 200, 200)
    assert 1 / f < ratio < f, ratio
    ratio = _spread_and_se(metrics.energy_distance_se, GM, 200, 200)
    assert 1 / f < ratio < math.sqrt(2) * f, ratio
    f = slack(5, 60)
    ratio = _spread_and_se(lambda x, y: metrics.sliced_wasserstein_se(x, y), PLANTED, 100, 60)
    assert 1 / f < ratio < f, ratio


def test_fraction_and_mode_weight_errors():
    x = draws(PLANTED, 400, 7)
    q = C.quality(x, draws(GM, 400, 8), on_target=lambda p: p[:, 0] < 0, mixture=GM)
    k = int((x[:, 0] < 0).sum())
    p = (k + 1) / 402
    assert q["on_target"] == k / 400 and q["on_target_se"] == pytest.approx(math.sqrt(p * (1 - p) / 400))
    f = (GM.classify(x) == 0).double().mean().item()
    assert q["mode_weights"] == pytest.approx([f, 1 - f]) and q["mode_tv"] == pytest.approx(abs(f - 0.5))
    # two modes: TV = |f - 1/2|, whose SE is the binomial one (s = +-1, Var(s) = 1 - (2f - 1)^2)
    assert q["mode_tv_se"] == pytest.approx(math.sqrt(f * (1 - f) / 400))
    # on the kink (f = w exactly) the SE is the one just beside it, not 0
    tie = torch.cat([GM.means[:1].repeat(100, 1), GM.means[1:].repeat(100, 1)]).float()
    q_tie = C.quality(tie, draws(GM, 400, 8), mixture=GM)
    assert q_tie["mode_tv"] == 0 and q_tie["mode_tv_se"] == pytest.approx(math.sqrt(0.25 / 200))
    lp = GM.log_prob(x.double())
    assert q["log_density"] == pytest.approx(lp.mean().item()) and q["log_density_se"] == pytest.approx(lp.std().item() / 20)


# ---- the noise floor ----------------------------------------------------------------------------

def test_noise_floor_is_the_metric_between_two_draws_of_the_data():
    ref, data = draws(GM, 300, 10), draws(GM, 500, 11)
    floor = C.noise_floor(ref, data, num=200, seed=3)
    x = data[:200].double()
    assert floor["n"] == 200 and floor["n_reference"] == 300 and floor["floor"] is True
    assert floor["energy_distance"] == pytest.approx(metrics.energy_distance(x, ref.double()), rel=1e-12)
    assert floor["sliced_wasserstein"] == pytest.approx(
        metrics.sliced_wasserstein(x, ref.double(), generator=torch.Generator().manual_seed(3)), rel=1e-12)
    asked = []
    floor = C.noise_floor(ref, lambda n: asked.append(n) or draws(GM, n, 12), num=250)
    assert asked == [250] and floor["n"] == 250 and floor["source"] == "fresh data draws"
    floor = C.noise_floor(ref)  # no independent data: the two halves of the reference
    assert (floor["n"], floor["n_reference"]) == (150, 150)
    assert floor["energy_distance"] == pytest.approx(metrics.energy_distance(ref[:150].double(), ref[150:].double()))


# ---- the verdict, through compare with two "samplers" -------------------------------------------

def _fake(mix, offset):
    """A sampler that ignores the score and returns exact draws of ``mix``, its own stream per offset."""
    def sampler(score_fn, sde, x_T, *, eps, generator, steps):
        return mix.sample(len(x_T), torch.Generator().manual_seed(offset + generator.initial_seed()))
    return sampler


def _compare_fakes(monkeypatch, fakes, n=1000):
    for name, (mix, offset) in fakes.items():
        monkeypatch.setitem(SAMPLERS, name, _fake(mix, offset))
    methods = [C.Method(name, name, {}) for name in fakes]
    return C.compare(None, sd.VPSDE(), draws(GM, n, 20), num=n, steps=(1,), methods=methods, mixture=GM,
                     floor_data=lambda k: draws(GM, k, 21))


def test_verdict_names_the_planted_winner(monkeypatch):
    """Exact samples against samples with mode weights 0.7 / 0.3, 1,000 of each. Over 200 seeds
    the planted gap was 4.41 +- 0.53 combined SE (energy distance) and 8.7 +- 0.8 (mode TV), so
    missing it (gap < 2) has probability ~1e-5 or less."""
    rows = _compare_fakes(monkeypatch, {"exact": (GM, 0), "mode_loss": (PLANTED, 100)})
    for metric in ("energy_distance", "mode_tv"):
        v = C.verdict(rows, metric)
        assert v["best"] == "exact" and v["tied"] == ["exact"], v
        assert v["text"].startswith(f"{C.NAMES[metric]}: best exact")
    # the floor is what a perfect sampler scores: exact samples are at it, the planted error is not
    v = C.verdict(rows, "energy_distance", floor=rows.floor)
    assert v["at_floor"] == ["exact"], v
    assert C.verdict(rows, "mode_tv", candidates=["mode_loss"])["best"] == "mode_loss"
    with pytest.raises(ValueError, match="log_density"):
        C.verdict(rows, "log_density")


def test_verdict_between_two_exact_samplers_is_indistinguishable(monkeypatch):
    """Two independent exact sample sets: over 200 seeds their gap was 0.00 +- 0.47 combined SE
    (energy distance; the SE is conservative and the shared reference cancels in the difference)
    and 0.07 +- 0.58 (mode TV), so a false "best" (|gap| > 2) has probability ~1e-5 and ~1e-3."""
    rows = _compare_fakes(monkeypatch, {"exact_a": (GM, 0), "exact_b": (GM, 100)})
    for metric in ("energy_distance", "mode_tv"):
        v = C.verdict(rows, metric)
        assert v["best"] is None and sorted(v["tied"]) == ["exact_a", "exact_b"], v
        assert "indistinguishable: " in v["text"]
    text = C.report(rows)
    assert "- steps 1, energy dist.: indistinguishable: " in text and "Noise floor: 1000 data points" in text


def test_verdict_rule_and_labels():
    """Exactly the 2-combined-SE rule, in the metric's direction, with settings in the labels
    when a sampler appears more than once."""
    row = lambda name, v, se, steps=10: {"sampler": name, "steps": steps, "tolerance": None, "on_target": v,
                                         "on_target_se": se, "energy_distance": v, "energy_distance_se": se}
    rows = [row("a", 0.50, 0.03), row("b", 0.40, 0.04)]  # gap 0.10 = 2 * 0.05: not more than 2 SE
    assert C.verdict(rows, "energy_distance")["best"] is None
    rows[1]["energy_distance"] = rows[1]["on_target"] = 0.399
    assert C.verdict(rows, "energy_distance")["best"] == "b" and C.verdict(rows, "on_target")["best"] == "a"
    v = C.verdict(rows + [row("b", 0.9, 0.01, steps=20)], "on_target")
    assert v["best"] == "b (steps 20)"


# ---- tables and figure --------------------------------------------------------------------------

def test_table_shows_se_floor_and_the_sign_of_the_energy_distance(monkeypatch):
    rows = _compare_fakes(monkeypatch, {"exact": (GM, 0), "mode_loss": (PLANTED, 100)}, n=100)
    lines = C.markdown_table(rows).splitlines()
    assert lines[0].startswith("| sampler | steps | rtol = atol | NFE |") and "mode TV" in lines[0]
    assert lines[2].startswith("| *noise floor (data vs data)* |") and " ± " in lines[3]
    assert C.SIGN_NOTE in C.markdown_table(rows) and "U-statistic" in C.SIGN_NOTE


def test_plot_has_title_floor_band_error_bars_and_family_styles(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plot, "_save", lambda fig, path: figures.append(fig) or path)
    rows = [{"sampler": s, "nfe": nfe, "family": fam, "sliced_wasserstein": v, "sliced_wasserstein_se": 0.01}
            for s, fam in (("euler_maruyama", "sde"), ("ddim", "ode")) for nfe, v in ((10, 0.5), (20, 0.2))]
    plot.quality_vs_nfe(rows, str(tmp_path / "q.png"), "sliced_wasserstein", floor={"sliced_wasserstein": 0.1,
                        "sliced_wasserstein_se": 0.02}, title="quality")
    ax = figures[0].axes[0]
    assert ax.get_title() == "quality"
    band = [p for p in ax.patches if "noise floor" in p.get_label()]
    assert len(band) == 1
    corners = ax.transData.inverted().transform(band[0].get_window_extent().get_points())
    assert corners[:, 1] == pytest.approx([0.06, 0.14])  # the floor +- 2 SE
    styles = {c.get_label(): c.lines[0].get_linestyle() for c in ax.containers}  # errorbar containers
    assert styles == {"euler_maruyama (SDE)": "-", "ddim (ODE)": "--"}


# ---- the command --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("compare") / "run")
    assert main(["train", "toy_vp", "--workdir", workdir, "--quiet"] + [a for s in TINY_SETS for a in ("--set", s)]) == 0
    return workdir


def test_cli_compare_with_sampler_and_option(capsys, trained_run, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "compare", trained_run, "--steps", "2", "--num", "50", "--sampler", "ddim",
                             "--option", "eta=0.5", "--out", str(out_dir))
    assert code == 0, err
    assert "Noise floor: 50 data points vs 50 reference points" in out and "- steps 2, energy dist.: " in out
    assert "| ddim eta=0.5 | 2 | – | 3 |" in out
    entries = json.loads((out_dir / "compare.json").read_text())
    assert entries["floor"]["floor"] is True and entries["floor"]["n"] == 50
    assert [(r["sampler"], r["options"], r["family"]) for r in entries["rows"]] == [("ddim eta=0.5", {"eta": 0.5}, "sde")]


@pytest.mark.parametrize("argv,needles", [
    (["--sampler", "ddim", "--option", "etaa=0.5"], ["'etaa=0.5'", "did you mean eta"]),
    (["--sampler", "ddim", "--sampler", "euler_maruyama", "--option", "eta=0.5"], ["'eta=0.5'", "euler_maruyama"]),
    (["--sampler", "adaptive_sde", "--option", "rtol=1e-3"], ["'rtol=1e-3'"]),
    (["--option", "steps=3"], ["'steps=3'", "--steps"]),
])
def test_cli_bad_option_is_one_line_naming_it(capsys, trained_run, tmp_path, argv, needles):
    out_dir = tmp_path / "out"
    code, _, err = run_cli(capsys, "compare", trained_run, "--steps", "2", "--num", "50", "--out", str(out_dir), *argv)
    assert_one_line_error(code, err, *needles)
    assert not out_dir.exists()


def test_select_methods_merges_and_deduplicates():
    methods = C.select_methods(["probability_flow"], ["method=rk4"])
    assert [(m.label, m.options, m.adaptive) for m in methods] == [("probability_flow method=rk4", {"method": "rk4"}, None)]
    assert [m.label for m in C.select_methods(["reverse_sde"])] == ["reverse_sde"]
    assert C.family("ddim", {}) == "ode" and C.family("ddim", {"eta": 0.5}) == "sde"
