"""``compare`` on image runs (scoresde.compare_images, ``scoresde compare`` on a digits run):
FD-digits per sampler setting equal to scoresde.evaluate / classifier.fd_digits on the same samples,
the noise floor equal to FD between the two held-out sets, the jackknife SE, and the CLI's table,
sample count and small-sample warning."""
import json
import math
import os

import pytest
import torch

from scoresde import compare as cmp
from scoresde import compare_images as ci
from scoresde.classifier import fd_digits
from scoresde.data import unscale
from scoresde.evaluate import digits_feature_net, evaluate
from scoresde.run import load, load_data
from test_cli import assert_one_line_error, run_cli
from conftest import tiny_digits_run

NUM = 24


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A 2-step U-Net run on 8x8 digits (1 x 8 x 8 images on [-1, 1])."""
    return tiny_digits_run(tmp_path_factory)


def test_fd_rows_and_floor_equal_direct_computation(digits):
    run = load(digits)
    data = load_data(run.config, "test", n=2 * NUM, generator=torch.Generator().manual_seed(1)).data
    ref, held = data[:NUM], data[NUM:]
    net = digits_feature_net()
    methods = cmp.select_methods(["ddim", "euler_maruyama"])
    rows = ci.compare_images(run.score_fn, run.sde, ref, held, feature_net=net, data_range=run.data_range,
                             num=NUM, steps=(2, 3), methods=methods, seed=0)
    assert [(r["sampler"], r["steps"]) for r in rows] == [(m.label, s) for m in methods for s in (2, 3)]
    ref_px, held_px = unscale(ref, run.data_range), unscale(held, run.data_range)
    # the floor: FD-digits between the two held-out sets, as evaluate and fd_digits compute it
    floor = rows.floor
    assert floor["n"] == NUM and floor["n_reference"] == NUM and floor["fd_label"] == "FD-digits"
    direct = evaluate(held_px, ref_px, metrics="fid", feature_net=net)
    assert floor["fd"] == pytest.approx(direct["FD-digits"], rel=1e-9, abs=1e-9)
    assert floor["fd"] == pytest.approx(fd_digits(held_px, ref_px), rel=1e-5)
    # each row: the same samples regenerated from the same prior draw and seed, made pixels like saved ones
    x_T = run.sde.prior_sampling((NUM, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    for r, (m, s) in zip(rows, [(m, s) for m in methods for s in (2, 3)]):
        x, nfe, _ = cmp.run_method(m, run.score_fn, run.sde, x_T, s, seed=0)
        px = unscale(x, run.data_range)
        assert r["nfe"] == nfe and r["n"] == NUM and r["seconds"] > 0
        assert r["fd"] == pytest.approx(evaluate(px, ref_px, metrics="fid", feature_net=net)["FD-digits"], rel=1e-9)
        assert r["fd"] == pytest.approx(fd_digits(px, ref_px), rel=1e-5)
        assert r["fd_se"] > 0 and math.isfinite(r["fd_se"])
    # 24 samples in a 64-d feature space: below evaluate's 5 x D rule, said once
    assert len(rows.warnings) == 1 and "below 320" in rows.warnings[0] and "FD-digits" in rows.warnings[0]
    text = ci.report(rows)
    assert "| ddim | 2 |" in text and f"Samples: {NUM} per sampler setting" in text and "below 320" in text
    assert "FD-digits:" in text  # the verdict names the metric


def test_fd_se_is_the_delete_a_group_jackknife():
    g = torch.Generator().manual_seed(0)
    f, r = torch.randn(40, 3, generator=g) + 0.5, torch.randn(60, 3, generator=g)
    stats = ci._stats(r)
    vals = [ci.fd(torch.cat([f[:4 * k], f[4 * k + 4:]]), stats) for k in range(10)]
    mean = sum(vals) / 10
    assert ci.fd_se(f, stats) == pytest.approx(math.sqrt(0.9 * sum((v - mean) ** 2 for v in vals)), rel=1e-12)
    assert ci.fd_se(f[:2], stats) is None  # no group can be left out and keep 2 rows


def test_cli_compare_digits_prints_table_count_and_warning(digits, capsys, tmp_path):
    out = str(tmp_path / "cmp")
    code, stdout, err = run_cli(capsys, "compare", digits, "--sampler", "ddim", "--steps", "2,3", "--num", "16",
                                "--out", out, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "| sampler | steps | rtol = atol | NFE | seconds | FD-digits |" in stdout
    assert "noise floor (data vs data)" in stdout and "Samples: 16 per sampler setting" in stdout
    assert "energy dist." not in stdout
    assert "warning: FD-digits from samples 16 and reference 16 images: below 320" in err
    saved = json.load(open(os.path.join(out, "compare.json")))
    assert [r["steps"] for r in saved["rows"]] == [2, 3] and saved["floor"]["fd"] >= 0 and saved["warnings"]
    assert os.path.getsize(os.path.join(out, "compare.png")) > 0


def test_cli_compare_inception_without_weights_is_one_line(digits, capsys, tmp_path):
    code, _, err = run_cli(capsys, "compare", digits, "--feature-net", "inception", "--inception-weights",
                           str(tmp_path / "missing.pth"), "--sampler", "ddim", "--steps", "2", "--num", "4",
                           "--out", str(tmp_path / "c"), "--quiet")
    assert_one_line_error(code, err)
    assert not os.path.exists(tmp_path / "c")  # failed before sampling or writing
