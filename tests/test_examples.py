"""Smoke tests of examples/: each script runs with --quick into a temporary directory, exits 0 and
writes the files it promises (non-empty)."""
import json
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
TIMEOUT = 180


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
    workdir, out = digits_run
    assert_files(workdir, "samples.png", "summary.json")
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["test_bits_per_dim"] > 0 and "bits/dim" in out


def test_compare_samplers_trains_a_toy_run(tmp_path):
    workdir = tmp_path / "compare"
    out = run_example("compare_samplers", workdir, "--quiet")
    assert_files(workdir, "compare.md", "compare.json", "compare.png", "sde_vs_ode.md")
    samplers = {r["sampler"] for r in json.loads((workdir / "compare.json").read_text())}
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
