"""Likelihood of a whole split (scoresde.split_likelihood, `scoresde likelihood`): batches that do not
change the values, per-image seeds, dequantization repeats, and torchrun's processes."""
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import scoresde
from conftest import HANG_TIMEOUT, tiny_run
from scoresde.config import from_dict
from scoresde.sampling.generators import SampleGenerators
from scoresde.split_likelihood import batched_likelihood, select_points, split_likelihood
from scoresde.train import train
from test_cli import assert_one_line_error, run_cli
from test_generate import ENV
from conftest import tiny_digits_run

#: a fixed-step solver: every point's ODE on the same grid, so batches cannot change the values
RK = dict(method="rk4", steps=2)
#: float32 rounding of a bits/dim near 14 (1 ulp = 1e-6), with room for a few ulps
ROUNDING = 1e-5


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A 2-step U-Net run on 8x8 digits (1 x 8 x 8 images on [-1, 1])."""
    return tiny_digits_run(tmp_path_factory)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy") / "run")
    train(from_dict(tiny_run(steps=2, checkpoint_every=2, log_every=1, warmup=1)), workdir, progress=False)
    return workdir


def direct_draws(run, pixels, seed, repeats, **kw):
    """(n, repeats) bits/dim from ``bits_per_dim`` on all images in one batch, image i from its own
    generator seed + i, draw r continuing that generator after draw r - 1."""
    gens = SampleGenerators.range(seed, 0, len(pixels))
    return torch.stack([scoresde.bits_per_dim(run.score_fn, run.sde, pixels, generator=gens, **kw).bpd.double()
                        for _ in range(repeats)], dim=1)


def test_sample_generators_rand_draws_row_r_from_seed_r():
    gens = SampleGenerators([5, 9])
    x = gens.rand((2, 3, 4))
    assert torch.equal(x[1], torch.rand((3, 4), generator=torch.Generator().manual_seed(9)))
    assert x.shape == (2, 3, 4) and 0 <= float(x.min()) and float(x.max()) < 1
    with pytest.raises(ValueError, match="batch dimension"):
        gens.rand((3, 4))


def test_batches_give_the_one_batch_bits_per_dim_of_the_same_draws(digits):
    """Batches of 6, 4 and 1 give bits_per_dim's values for the 6 images in one batch with
    per-image generators (to float rounding): probes and dequantization depend on the image only."""
    run = scoresde.load(digits)
    pixels = select_points(run, "test", 6, seed=3).pixels
    want = direct_draws(run, pixels, 3, 1, **RK)[:, 0]
    for b in (6, 4, 1):
        res = split_likelihood(run, "test", 6, batch_size=b, seed=3, progress=False, **RK)
        assert res.values.shape == (6,) and res.draws.shape == (6, 1) and res.unit == "bits/dim"
        np.testing.assert_allclose(res.values, want, rtol=0, atol=ROUNDING)
        assert res.solves == math.ceil(6 / b) and res.nfe == res.solves * 2 * 4  # rk4: 4 evaluations a step
    # another seed is another draw
    assert not torch.allclose(split_likelihood(run, "test", 6, seed=4, progress=False, **RK).values, want)


def test_repeats_average_k_independent_draws_and_the_se_is_over_images(digits):
    """K = 3: each image's value is the mean of 3 draws computed directly (3 calls of bits_per_dim,
    each image's generator continuing); the draws differ; K = 1 is the first draw; se = std of the
    per-image means (ddof 1) / sqrt(n), as numpy computes it."""
    run = scoresde.load(digits)
    res = split_likelihood(run, "test", 5, batch_size=2, dequant_repeats=3, progress=False, **RK)
    pixels = select_points(run, "test", 5).pixels
    want = direct_draws(run, pixels, 0, 3, **RK)
    np.testing.assert_allclose(res.draws, want, rtol=0, atol=ROUNDING)
    np.testing.assert_allclose(res.values, want.mean(1), rtol=0, atol=ROUNDING)
    assert (want[:, 0] != want[:, 1]).all() and (want[:, 1] != want[:, 2]).all()
    one = split_likelihood(run, "test", 5, batch_size=5, progress=False, **RK)
    np.testing.assert_allclose(one.values, res.draws[:, 0], rtol=0, atol=ROUNDING)
    means = res.draws.numpy().mean(axis=1)
    assert res.mean == pytest.approx(means.mean(), abs=1e-12)
    assert res.se == pytest.approx(np.std(means, ddof=1) / np.sqrt(5), abs=1e-12)
    assert res.nll_8bit.numpy() == pytest.approx(means * 64 * np.log(2), abs=1e-9)


def test_toy_points_batched_with_per_point_probes(toy):
    """A toy run: batches of 2 and 7 give the same NLL (nats) as log_likelihood on all 7 points, with
    the exact trace and with Hutchinson probes from each point's own generator."""
    run = scoresde.load(toy)
    x = select_points(run, "test", 7).data
    for estimator in ("exact", "hutchinson"):
        want = -scoresde.log_likelihood(run.score_fn, run.sde, x, estimator=estimator, **RK,
                                        generator=SampleGenerators.range(0, 0, 7)).logp.double()
        for b in (2, 7):
            res = split_likelihood(run, "test", 7, batch_size=b, estimator=estimator, progress=False, **RK)
            assert res.unit == "nats" and res.nll_8bit is None
            np.testing.assert_allclose(res.values, want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="dequant_repeats=2"):
        batched_likelihood(run.score_fn, run.sde, x, image=False, repeats=2)


def _line(out):
    m = re.search(r"test: (\d+) images, bits/dim (\d+\.\d+) ± (\d+\.\d+); NLL on the 0–255 scale (\d+\.\d+) ± "
                  r"(\d+\.\d+) nats per image \(= bits/dim · D · ln 2, D = 64\); hutchinson trace, NFE (\d+)", out)
    assert m, out
    return m.groups()


def test_cli_prints_the_api_result_and_writes_the_per_image_values(capsys, digits, tmp_path):
    """`scoresde likelihood --batch-size --dequant-repeats --out`: the printed mean ± se are the API's;
    the count, draws, batches and time on a second line; the JSON holds every value and draw."""
    run = scoresde.load(digits)
    res = split_likelihood(run, "test", 5, dequant_repeats=2, progress=False, **RK)
    argv = ["likelihood", digits, "--num-samples", "5", "--dequant-repeats", "2", "--method", "rk4", "--steps", "2",
            "--device", "cpu", "--quiet"]
    code, out, err = run_cli(capsys, *argv, "--batch-size", "2", "--out", str(tmp_path / "v.json"))
    assert code == 0, err
    n, bpd, se, _, _, nfe = _line(out)
    assert (int(n), bpd, se, int(nfe)) == (5, f"{res.mean:.4f}", f"{res.se:.4f}", 6 * 8)
    assert re.search(r"^5 images × 2 dequantization draws .*seeds 0\.\.4, batches of 2 on 1 process, rk4, 2 steps: "
                     r"\d+\.\d s, \S+ s per image per process$", out, re.M), out
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc["n"] == 5 and doc["dequant_repeats"] == 2 and doc["unit"] == "bits/dim" and doc["nfe"] == 48
    np.testing.assert_allclose(doc["draws"], res.draws, rtol=0, atol=ROUNDING)
    np.testing.assert_allclose(doc["values"], res.values, rtol=0, atol=ROUNDING)
    code, out5, err = run_cli(capsys, *argv)  # one batch (the default 256): the same printed numbers
    assert code == 0, err
    assert _line(out5)[:5] == _line(out)[:5]


def test_torchrun_two_processes_print_the_one_process_result(digits, tmp_path):
    """Under torchrun (2 CPU processes, gloo) point k goes to rank k mod 2 and rank 0 alone prints
    the totals: the same line and values as one process with another batch size."""
    common = ["likelihood", digits, "--num-samples", "5", "--method", "rk4", "--steps", "2", "--dequant-repeats", "2",
              "--device", "cpu", "--quiet"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scoresde",
           *common, "--batch-size", "2", "--out", str(tmp_path / "two.json")]
    two = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=HANG_TIMEOUT)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "scoresde", *common, "--out", str(tmp_path / "one.json")],
                         capture_output=True, text=True, env=ENV, timeout=HANG_TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.stdout.count("test: 5 images") == 1 and "on 2 processes" in two.stdout, two.stdout
    assert _line(two.stdout)[:5] == _line(one.stdout)[:5]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("two.json", "one.json"))
    assert a["processes"] == 2 and a["nfe"] == 6 * 8 and b["nfe"] == 2 * 8  # (2 + 1 batches) x 2 draws vs 1 x 2
    np.testing.assert_allclose(a["draws"], b["draws"], rtol=0, atol=ROUNDING)


def test_one_line_errors(capsys, digits, toy, tmp_path):
    base = ["likelihood", digits, "--num-samples", "2", "--device", "cpu", "--quiet"]
    for flag in ("--batch-size", "--dequant-repeats"):
        with pytest.raises(SystemExit) as e:  # argparse's check: one line, status 2
            run_cli(capsys, *base, flag, "0")
        assert_one_line_error(e.value.code, capsys.readouterr().err, flag, "positive integer")
    code, _, err = run_cli(capsys, "likelihood", toy, "--num", "2", "--dequant-repeats", "3", "--device", "cpu")
    assert_one_line_error(code, err, "dequant_repeats=3", "toy")
    code, _, err = run_cli(capsys, *base, "--steps", "3")
    assert_one_line_error(code, err, "--steps", "dopri5")
    code, _, err = run_cli(capsys, *base, "--out", str(tmp_path / "v.txt"))
    assert_one_line_error(code, err, "--out", ".json")
    assert list(tmp_path.iterdir()) == []
