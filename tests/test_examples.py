"""Smoke tests of examples/: each script runs with --quick into a temporary directory, exits 0 and
writes the files it promises (non-empty)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import HANG_TIMEOUT

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
TIMEOUT = HANG_TIMEOUT  # only against a hang: a --quick run takes ~10-40 s, several times that on a busy machine


def run_example(name, workdir, *args):
    """Run examples/<name>.py --quick --workdir WORKDIR ARGS on one thread; return its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, f"{name}.py"), "--quick", "--workdir", str(workdir),
                           *args], cwd=str(workdir.parent), env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def assert_files(workdir, *names):
    for name in names:
        path = workdir / name
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("examples") / "train_toy"
    return workdir, run_example("train_toy", workdir, "--quiet")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("examples") / "train_digits"
    return workdir, run_example("train_digits", workdir, "--quiet")


def test_train_toy(toy_run):
    workdir, out = toy_run
    assert_files(workdir, "samples.png", "summary.json", "config.yaml")
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["train_steps"] > 0 and summary["dataset"] == "checkerboard" and "energy distance" in out


def test_train_toy_ve_moons(tmp_path):
    workdir = tmp_path / "toy_ve"
    run_example("train_toy", workdir, "--quiet", "--sde", "ve", "--dataset", "moons")
    assert_files(workdir, "samples.png", "summary.json")
    assert json.loads((workdir / "summary.json").read_text())["sampler"] == "predictor_corrector"


def test_train_digits(digits_run):
    """The example's bits/dim is the API's on the same run, test images and probes (recomputed here
    with the example's --quick settings: 8 test images, rtol = atol = 1e-3, generator seed 0)."""
    import math
    import torch
    import scoresde as sd
    from scoresde.data import load_dataset
    workdir, out = digits_run
    assert_files(workdir, "samples.png", "summary.json")
    summary = json.loads((workdir / "summary.json").read_text())
    run = sd.load(str(workdir))
    bpd = sd.bits_per_dim(run.score_fn, run.sde, load_dataset("digits", "test").pixels[:8], data_range=run.data_range,
                          estimator="hutchinson", rtol=1e-3, atol=1e-3, generator=torch.Generator().manual_seed(0)).bpd.double()
    assert summary["test_images"] == 8 and summary["train_steps"] == 30
    assert math.isclose(summary["test_bits_per_dim"], bpd.mean().item(), rel_tol=1e-9)
    assert math.isclose(summary["test_bits_per_dim_se"], bpd.std().item() / math.sqrt(8), rel_tol=1e-9)
    assert f"test bits/dim {bpd.mean().item():.3f} ± {bpd.std().item() / math.sqrt(8):.3f}" in out


def test_compare_samplers_trains_a_toy_run(tmp_path):
    workdir = tmp_path / "compare"
    out = run_example("compare_samplers", workdir, "--quiet")
    assert_files(workdir, "compare.md", "compare.json", "compare.png", "sde_vs_ode.md")
    samplers = {r["sampler"] for r in json.loads((workdir / "compare.json").read_text())["rows"]}
    assert {"euler_maruyama", "ddim", "pf_ode:dopri5"} <= samplers and "| sampler |" in out


def test_likelihood_with_a_digits_run(tmp_path, digits_run):
    workdir = tmp_path / "likelihood"
    out = run_example("likelihood", workdir, "--run", str(digits_run[0]))
    assert_files(workdir, "likelihood.md", "likelihood.json", "likelihood.png")
    result = json.loads((workdir / "likelihood.json").read_text())
    exact = next(r for r in result["rows"] if r["setting"] == "exact trace, exact p_T")
    assert exact["mean_abs_error"] < 1e-2 and result["run"]["unit"] == "bits/dim" and "bits/dim" in out


def test_ddpm_is_vpsde_with_a_toy_run(tmp_path, toy_run):
    workdir = tmp_path / "ddpm"
    out = run_example("ddpm_is_vpsde", workdir, "--run", str(toy_run[0]))
    assert_files(workdir, "ddpm_is_vpsde.md", "ddpm_is_vpsde.json", "samples.png", "samples_trained.png")
    report = json.loads((workdir / "ddpm_is_vpsde.json").read_text())
    assert report["schedule"]["betas_equal_ddpm"] and "linspace(1e-4, 0.02, 1000): True" in out
    assert len(report["exact_score"]) == 5 and len(report["trained"]["rows"]) == 5
    # The example's claim, checked: with the exact score every sampler is at the noise floor of the
    # energy distance (below mean + 5 sd of its null distribution, measured here from exact draws of
    # the same sizes) and within 4.5 binomial standard errors of the mode weights; Euler-Maruyama on
    # DDPM's noise stream stays pathwise close to DDPM (RMS 0.04 measured, DDIM's 2.1).
    import torch
    from scoresde import metrics
    from scoresde.data import toy_mixture
    gm, n, g = toy_mixture("gmm"), 500, torch.Generator().manual_seed(2024)
    null = torch.tensor([metrics.energy_distance(gm.sample(n, g), gm.sample(4 * n, g)) for _ in range(16)])
    threshold = (null.mean() + 5 * null.std()).item()
    w = gm.weights.double()
    mode_bound = 4.5 * (w * (1 - w) * (1 / n + 1 / (4 * n))).sqrt().max().item()
    for row in report["exact_score"][1:]:
        assert row["energy_distance"] < threshold, (row, threshold)
        assert row["mode_weight_error"] < mode_bound, (row, mode_bound)
    rms = {r["sampler"]: r.get("rms_to_ddpm") for r in report["exact_score"]}
    assert rms["reverse SDE, Euler-Maruyama 1000"] < 0.1 * rms["DDIM, 50 steps"]


def test_conditional_digits_reports_the_classifiers_agreement_per_scale(tmp_path):
    """The example's accuracy is the shipped classifier's agreement with the asked class on its samples
    (recomputed here from the run with the example's --quick settings)."""
    import scoresde as sd
    from scoresde.classifier import load_digits_classifier
    sys.path.insert(0, EXAMPLES)
    try:
        from conditional_digits import accuracy, guided_samples
    finally:
        sys.path.remove(EXAMPLES)
    workdir = tmp_path / "conditional_digits"
    out = run_example("conditional_digits", workdir, "--quiet", "--scales", "0,2")
    assert_files(workdir, "grid.png", "summary.json", "accuracy.md")
    summary = json.loads((workdir / "summary.json").read_text())
    assert set(summary["scales"]) == {"0", "2"} and summary["grid_scale"] == 2 and "| guidance |" in out
    run = sd.load(str(workdir))
    for scale in (0.0, 2.0):
        x = guided_samples(run, scale, 2, 5, seed=1, progress=False)
        expected = accuracy(load_digits_classifier(), x, 2, run.data_range)
        got = summary["scales"][f"{scale:g}"]
        assert got["per_class"] == expected["per_class"] and got["accuracy"] == expected["accuracy"]
    # the inpainting part: the original test digits' accuracy recomputed directly, every method reported
    inp = summary["inpainting"]
    test = sd.run.load_data(run.config, "test", n=inp["digits"], generator=torch.Generator().manual_seed(0))
    clf = load_digits_classifier()
    with torch.no_grad():
        direct = (clf.logits(test.data, data_range=run.data_range).argmax(1) == test.labels).double().mean().item()
    assert inp["accuracy"]["original"] == direct
    assert {"unconditional, replace", "class-guided 2, replace"} <= set(inp["accuracy"])
    assert_files(workdir, "inpainting.png", "inpainting.md")
