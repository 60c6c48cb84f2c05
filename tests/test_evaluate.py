"""scoresde.evaluate and `scoresde evaluate`: FD/FID, KID, IS and precision/recall in a feature
network's space, the readers of sample folders and statistics files, the statistics cache, and the
wiring to torch-fidelity's Inception up to its weights (which cannot be downloaded here).

The numbers are checked in small linear feature spaces, where the answer is known: FD of Gaussian
images against the closed form, KID's unbiasedness over many independent draws. With torch-fidelity
importable (the optional extra), KID, IS and precision/recall are also checked against its own
functions; without it those tests are skipped.
"""
import json
import math
import os
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from scoresde import evaluate as ev
from scoresde.cli import main
from scoresde.metrics import frechet_distance


def _torch_fidelity():
    try:
        import torch_fidelity
        return torch_fidelity
    except Exception:  # not installed, or a torchvision that does not match torch
        return None


TF = _torch_fidelity()
needs_tf = pytest.mark.skipif(TF is None, reason="torch-fidelity (scoresde[eval]) is not importable")


class Linear(nn.Module):
    """features = A p + b of the flattened pixel values p (0..255); logits optional; counts its calls."""

    def __init__(self, A, b, logits: bool = False, name: str = "lin"):
        super().__init__()
        self.register_buffer("A", torch.as_tensor(A, dtype=torch.float64))
        self.register_buffer("b", torch.as_tensor(b, dtype=torch.float64))
        self.with_logits, self.name, self.calls = logits, name, 0

    def forward(self, x):
        self.calls += 1
        f = x.flatten(1).double() @ self.A.T + self.b
        return (f, f[:, :2] / 10) if self.with_logits else f


def gaussian_images(n, mean, cov, shape, seed):
    """uint8 images whose pixel values are N(mean, cov) rounded to integers (no clipping: every
    mean lies more than 5 standard deviations inside 0..255)."""
    g = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(torch.as_tensor(cov, dtype=torch.float64))
    x = torch.as_tensor(mean, dtype=torch.float64) + torch.randn(n, len(mean), generator=g, dtype=torch.float64) @ L.T
    assert float(x.min()) > 0 and float(x.max()) < 255
    return x.round().to(torch.uint8).reshape(n, *shape)


def random_net(d_in, d_out, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return Linear(torch.randn(d_out, d_in, generator=g, dtype=torch.float64) / 50, torch.zeros(d_out), **kw)


def pixels(n, shape=(1, 4, 4), seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=g) * 20 + 128 + shift).round().clamp(0, 255).to(torch.uint8)


# ---- the numbers ---------------------------------------------------------------------------------

def test_fd_of_a_sample_set_against_itself_is_zero():
    x = pixels(500)
    net = random_net(16, 6)
    r = ev.evaluate(x, x.clone(), feature_net=net, metrics="fid")
    mu, sigma = ev.feature_statistics(net(x).float())
    assert r["FD-lin"] == pytest.approx(0.0, abs=1e-9 * np.trace(sigma))
    assert r["num_samples"] == r["num_reference"] == 500 and r["feature_dim"] == 6


def test_fd_in_a_linear_feature_space_is_the_closed_form_of_the_transformed_gaussians():
    """Images with Gaussian pixel values N(m_i, S_i), rounded to integers, in the feature space
    f = A p + b. Rounding adds independent U(-1/2, 1/2) noise (Sheppard: exact here up to
    exp(-2 pi^2 sigma^2)), so the features are Gaussian with mean A m_i + b and covariance
    A (S_i + I/12) A^T, and the exact FD is frechet_distance of those.

    Tolerance: the estimate from n images per set differs from the exact value by a bias of order
    D/n and a noise of order 1/sqrt(n). Both are measured here by 300 replicate estimates from
    exact Gaussian features of the same moments and sizes (numpy covariances, no pipeline), and the
    pipeline's single estimate must lie within |bias| + 4 standard deviations of the exact value."""
    n = 4000
    m1 = np.array([128.0, 120.0, 135.0, 128.0])
    m2 = m1 + np.array([6.0, -4.0, 0.0, 3.0])
    B1 = np.array([[15, 0, 0, 0], [6, 14, 0, 0], [-3, 2, 16, 0], [4, -5, 3, 18.0]])
    B2 = np.array([[17, 0, 0, 0], [2, 15, 0, 0], [-1, 5, 14, 0], [6, -2, 1, 15.0]])
    S1, S2 = B1 @ B1.T, B2 @ B2.T
    A = np.array([[1.0, 0.5, -0.3, 0.2], [0.0, 1.2, 0.4, -0.6], [0.3, -0.2, 0.9, 0.7]])
    b = np.array([1.0, -2.0, 0.5])
    net = Linear(A, b)
    x1 = gaussian_images(n, m1, S1, (1, 2, 2), seed=1)
    x2 = gaussian_images(n, m2, S2, (1, 2, 2), seed=2)
    got = ev.evaluate(x1, x2, feature_net=net, metrics="fid")["FD-lin"]

    C1, C2 = A @ (S1 + np.eye(4) / 12) @ A.T, A @ (S2 + np.eye(4) / 12) @ A.T
    exact = frechet_distance(A @ m1 + b, C1, A @ m2 + b, C2)
    rng = np.random.default_rng(0)
    reps = []
    for _ in range(300):
        f1 = rng.multivariate_normal(A @ m1 + b, C1, n)
        f2 = rng.multivariate_normal(A @ m2 + b, C2, n)
        reps.append(frechet_distance(f1.mean(0), np.cov(f1.T), f2.mean(0), np.cov(f2.T)))
    bias, sd = np.mean(reps) - exact, np.std(reps)
    assert abs(bias) < 0.2 * exact          # the check has power: the estimator is close to unbiased here
    assert abs(got - exact) <= abs(bias) + 4 * sd, (got, exact, bias, sd)


def test_kid_is_unbiased_for_two_draws_of_one_distribution_and_positive_for_shifted_ones():
    """KID is the unbiased MMD^2: its mean over many independent pairs of sets of one distribution
    is 0 within 3 standard errors of that mean; a mean shift of 0.3 sd per dimension is far above."""
    g = torch.Generator().manual_seed(0)
    R, n, d = 200, 300, 8
    same, shifted = [], []
    for _ in range(R):
        a, b, c = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
        same.append(ev.kid(a, b, subsets=10, subset_size=150, seed=int(torch.randint(1 << 30, (1,), generator=g)))[0])
        shifted.append(ev.kid(a, c + 0.3, subsets=10, subset_size=150)[0])
    same, shifted = np.array(same), np.array(shifted)
    se = same.std(ddof=1) / math.sqrt(R)
    assert abs(same.mean()) <= 3 * se, (same.mean(), se)
    assert shifted.mean() > 20 * se and (shifted > 0).mean() > 0.95


def test_kid_is_precision_recall_through_the_pipeline_equal_the_functions_on_the_features():
    x, y = pixels(400, seed=1), pixels(300, seed=2, shift=5.0)
    net = random_net(16, 5, logits=True)
    r = ev.evaluate(x, y, feature_net=net, metrics="fid,kid,is,pr", kid_subsets=7, kid_subset_size=100, is_splits=4)
    fx, lx = (t.float() for t in net(x))
    fy = net(y)[0].float()
    mean, std, size = ev.kid(fx, fy, subsets=7, subset_size=100)
    assert r["KID-lin"] == {"mean": mean, "std": std, "subsets": 7, "subset_size": 100}
    assert r["KID-lin"]["mean"] > 0
    assert r["IS-lin"] == dict(zip(("mean", "std"), ev.inception_score(lx, splits=4)), splits=4)
    assert (r["precision-lin"], r["recall-lin"]) == ev.precision_recall(fx, fy)
    assert r["FD-lin"] == pytest.approx(frechet_distance(*ev.feature_statistics(fx), *ev.feature_statistics(fy)), rel=1e-12)


def test_inception_score_of_known_class_probabilities():
    """One split whose images are each certain of one of K equally used classes: IS = K exactly; all
    images certain of the same class: IS = 1."""
    K, n = 5, 50
    sure = torch.full((n, K), -1e4, dtype=torch.float64)
    sure[torch.arange(n), torch.arange(n) % K] = 0.0
    assert ev.inception_score(sure, splits=1)[0] == pytest.approx(K, rel=1e-12)
    one = torch.full((n, K), -1e4, dtype=torch.float64)
    one[:, 0] = 0.0
    assert ev.inception_score(one, splits=5) == pytest.approx((1.0, 0.0), abs=1e-12)


@needs_tf
def test_kid_is_precision_recall_and_fid_are_torch_fidelitys():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(700, 12, generator=g, dtype=torch.float64)
    f2 = torch.randn(500, 12, generator=g, dtype=torch.float64) * 1.1 + 0.2
    theirs = kid_features_to_metric(f1, f2, kid_subsets=9, kid_subset_size=200, rng_seed=7, verbose=False)
    mean, std, _ = ev.kid(f1, f2, subsets=9, subset_size=200, seed=7)
    assert (mean, std) == pytest.approx((theirs["kernel_inception_distance_mean"],
                                         theirs["kernel_inception_distance_std"]), rel=1e-9, abs=1e-12)
    logits = torch.randn(230, 10, generator=g, dtype=torch.float64) * 3
    theirs = isc_features_to_metric(logits, splits=6, shuffle=True, rng_seed=11)
    assert ev.inception_score(logits, splits=6, seed=11) == pytest.approx(
        (theirs["inception_score_mean"], theirs["inception_score_std"]), rel=1e-12)
    a, b = f1.float(), f2.float()
    s1, s2 = fid_features_to_statistics(f1), fid_features_to_statistics(f2)
    mine = frechet_distance(*ev.feature_statistics(f1), *ev.feature_statistics(f2))
    assert mine == pytest.approx(fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"], rel=1e-9)
    try:
        from torch_fidelity.metric_prc import prc_features_to_metric
    except ImportError:
        pytest.skip("this torch-fidelity has no precision/recall (it came in 0.4)")
    theirs = prc_features_to_metric(a, b, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    p, r = ev.precision_recall(a, b, k=3, batch=128)
    assert abs(p - theirs["precision"]) <= 1 / len(a) and abs(r - theirs["recall"]) <= 1 / len(b)


def test_inception_score_alone_needs_no_reference():
    net = random_net(16, 4, logits=True)
    r = ev.evaluate(pixels(40), None, feature_net=net, metrics="is", is_splits=4)
    assert set(r["IS-lin"]) == {"mean", "std", "splits"} and r["num_reference"] is None
    with pytest.raises(ValueError, match="a reference is needed"):
        ev.evaluate(pixels(40), None, feature_net=net, metrics="fid")
    assert "IS-lin" in ev.evaluate(pixels(40), None, feature_net=random_net(16, 4), metrics="is")["skipped"]


# ---- images: arrays, files, folders --------------------------------------------------------------

def test_layouts_files_and_folders_give_the_same_numbers(tmp_path):
    x, y = pixels(90, (3, 4, 4), seed=1), pixels(80, (3, 4, 4), seed=2)
    net = random_net(48, 4)
    want = ev.evaluate(x, y, feature_net=net, metrics="fid,kid", kid_subsets=3, kid_subset_size=50)
    nhwc = x.permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "one.npz", samples=nhwc)
    (tmp_path / "generic").mkdir()
    np.savez(tmp_path / "generic" / "a.npz", images=x[:50].numpy())      # NCHW, key 'images'
    np.savez(tmp_path / "generic" / "b.npz", x[50:].numpy())             # a single unnamed array
    np.savez(tmp_path / "generic" / ".hidden.npz", samples=nhwc[:3])     # skipped, as a temporary file
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "generate.json").write_text(json.dumps({"format": "scoresde-samples/1", "num_samples": 90,
                                                      "shard_size": 40, "data_shape": [3, 4, 4]}))
    for k in range(3):
        np.savez(folder / f"shard_{k:06d}.npz", samples=nhwc[40 * k: 40 * (k + 1)],
                 index=np.arange(40 * k, min(40 * (k + 1), 90)), clipped=np.int64(0))
    for source in (nhwc, str(tmp_path / "one.npz"), str(tmp_path / "generic"), str(folder)):
        got = ev.evaluate(source, y, feature_net=net, metrics="fid,kid", kid_subsets=3, kid_subset_size=50)
        assert got["FD-lin"] == want["FD-lin"] and got["KID-lin"] == want["KID-lin"], source
    os.unlink(folder / "shard_000001.npz")
    with pytest.raises(ValueError, match="1 of 3 shards missing"):
        ev.evaluate(str(folder), y, feature_net=net, metrics="fid")


def test_float_samples_become_pixels_as_they_are_saved_and_need_their_range():
    x = pixels(60, seed=4)
    net = random_net(16, 3)
    floats = x.float() / 127.5 - 1.0
    with pytest.raises(ValueError, match="data range is needed"):
        ev.evaluate(floats, x, feature_net=net, metrics="fid")
    r = ev.evaluate(floats, x, feature_net=net, metrics="fid", data_range=(-1, 1))
    assert r["FD-lin"] == pytest.approx(0.0, abs=1e-8)


def test_a_layout_that_is_ambiguous_must_be_named():
    x = pixels(10, (3, 5, 3))
    with pytest.raises(ValueError, match="layout="):
        ev.as_pixels(x)
    assert ev.as_pixels(x, layout="NCHW").shape == (10, 3, 5, 3)
    assert ev.as_pixels(x, layout="NHWC").shape == (10, 3, 3, 5)


def test_feature_input_range_reaches_the_network():
    seen = []

    class Probe(nn.Module):
        feature_input = (-1.0, 1.0)

        def forward(self, x):
            seen.append(x)
            return x.flatten(1).float()

    x = torch.tensor([0, 255, 51], dtype=torch.uint8).reshape(3, 1, 1, 1).repeat(1, 1, 2, 2)
    ev.evaluate(x, x, feature_net=Probe(), metrics="fid")
    assert seen[0].dtype == torch.float32
    assert seen[0][:, 0, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1])


# ---- statistics files and the cache --------------------------------------------------------------

@pytest.fixture
def digits_run(tmp_path):
    """A run directory with only its config (a digits config): enough for --reference train/test."""
    from scoresde.config import load_config, resolve_config, save_config
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(resolve_config("digits_vp")), str(run / "config.yaml"))
    return run


def test_split_statistics_are_computed_once_and_cached(digits_run, tmp_path):
    from scoresde.data import load_dataset
    net = random_net(64, 5)
    samples = load_dataset("digits", "train").pixels[:200]
    cache = tmp_path / "cache"
    first = ev.evaluate(samples, "test", feature_net=net, config=str(digits_run), cache=str(cache),
                        metrics="fid,kid", kid_subsets=3, kid_subset_size=100)
    calls = net.calls
    assert calls == 1 + math.ceil(300 / ev.DEFAULT_BATCH_SIZE)   # the samples, then the 300 test images
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("stats_digits_test_lin_")
    second = ev.evaluate(samples, "test", feature_net=net, config=str(digits_run), cache=str(cache),
                         metrics="fid,kid", kid_subsets=3, kid_subset_size=100)
    assert net.calls - calls == 1                      # the samples only: the split came from the cache
    assert second["FD-lin"] == first["FD-lin"] and second["KID-lin"] == first["KID-lin"]
    with np.load(cache / files[0], allow_pickle=False) as z:
        test = load_dataset("digits", "test").pixels
        mu, sigma = ev.feature_statistics(net(test).float())
        assert np.allclose(z["mu"], mu) and np.allclose(z["sigma"], sigma) and int(z["n"]) == len(test)
    other = random_net(64, 5, seed=1)                  # other weights: another file, computed afresh
    ev.evaluate(samples, "test", feature_net=other, config=str(digits_run), cache=str(cache), metrics="fid")
    assert other.calls == calls and len(os.listdir(cache)) == 2


def test_the_cache_key_changes_with_the_data_files_and_the_network(tmp_path):
    from types import SimpleNamespace
    root = tmp_path / "images"
    root.mkdir()
    (root / "a.png").write_bytes(b"one")
    cfg = SimpleNamespace(data=SimpleNamespace(name="folder", root=str(root), image_size=8))
    key = ev._split_key(cfg, "train", "net")
    assert ev._split_key(cfg, "train", "net") == key
    assert ev._split_key(cfg, "test", "net") != key and ev._split_key(cfg, "train", "other") != key
    (root / "b.png").write_bytes(b"two")
    assert ev._split_key(cfg, "train", "net") != key
    assert ev.fingerprint(random_net(4, 2)) == ev.fingerprint(random_net(4, 2))
    assert ev.fingerprint(random_net(4, 2)) != ev.fingerprint(random_net(4, 2, seed=1))


def test_a_pickled_statistics_file_is_refused_unread(tmp_path):
    trap = tmp_path / "created-by-unpickling"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(trap),))

    np.savez(tmp_path / "evil.npz", mu=np.array([Payload()], dtype=object), sigma=np.eye(1))
    with pytest.raises(ValueError, match="pickled objects; refused"):
        ev.evaluate(pixels(10), str(tmp_path / "evil.npz"), feature_net=random_net(16, 1), metrics="fid")
    assert not trap.exists()


def test_score_sde_pool_3_and_mu_sigma_statistics_files(tmp_path):
    """score_sde's cifar10_stats.npz holds raw activations `pool_3` (n, D): FD and KID against it
    equal those against the images themselves; a mu/sigma-only file (pytorch-fid's) gives the same
    FD and says why KID cannot be computed from it."""
    x, y = pixels(300, seed=1), pixels(250, seed=2, shift=3.0)
    net = random_net(16, 4)
    want = ev.evaluate(x, y, feature_net=net, metrics="fid,kid", kid_subsets=4, kid_subset_size=100)
    fy = net(y).float().numpy()
    np.savez(tmp_path / "cifar10_stats.npz", pool_3=fy)
    got = ev.evaluate(x, str(tmp_path / "cifar10_stats.npz"), feature_net=net, metrics="fid,kid",
                      kid_subsets=4, kid_subset_size=100)
    assert got["FD-lin"] == pytest.approx(want["FD-lin"], rel=1e-12) and got["KID-lin"] == want["KID-lin"]
    assert got["num_reference"] == 250
    mu, sigma = ev.feature_statistics(torch.from_numpy(fy))
    np.savez(tmp_path / "mu_sigma.npz", mu=mu, sigma=sigma)
    got = ev.evaluate(x, str(tmp_path / "mu_sigma.npz"), feature_net=net, metrics="fid,kid")
    assert got["FD-lin"] == pytest.approx(want["FD-lin"], rel=1e-12)
    assert "KID-lin" not in got and "only mu and sigma" in got["skipped"]["KID-lin"]
    with pytest.raises(ValueError, match="4-dimensional features"):
        ev.evaluate(x, str(tmp_path / "mu_sigma.npz"), feature_net=random_net(16, 3), metrics="fid")


def test_small_sets_warn_with_the_rule():
    r = ev.evaluate(pixels(40), pixels(30, seed=1), feature_net=random_net(16, 10), metrics="fid")
    assert any("below 50" in w and "samples 40" in w and "reference 30" in w for w in r["warnings"])
    assert ev.fd_min_samples(2048, inception=True) == 10_000 and ev.fd_min_samples(64) == 320


# ---- the command line ----------------------------------------------------------------------------

def _one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    return err


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, samples=pixels(12, (3, 8, 8)).permute(0, 2, 3, 1).numpy())
    return str(path)


def test_without_torch_fidelity_one_line_names_the_extra(capsys, monkeypatch, npz):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)   # import torch_fidelity -> ImportError
    _one_line_error(capsys, ["evaluate", "--samples", npz, "--reference", npz, "--metrics", "fid"],
                    "scoresde[eval] is needed: pip install 'scoresde[eval]'")


@pytest.mark.parametrize("argv, needle", [
    (["--reference", "train"], "pass the RUN_DIR"),
    ([], "--reference is needed"),
    (["--reference", "SELF", "--metrics", "fid,bogus"], "unknown metric 'bogus'"),
    (["--reference", "SELF", "--feature-net", "digits", "--inception-weights", "w.pth"], "--inception-weights"),
])
def test_bad_arguments_are_one_line(capsys, npz, argv, needle):
    argv = [npz if a == "SELF" else a for a in argv]
    _one_line_error(capsys, ["evaluate", "--samples", npz] + argv, needle)


def test_missing_samples_are_one_line_before_any_network_is_built(capsys, tmp_path, npz):
    _one_line_error(capsys, ["evaluate", "--samples", str(tmp_path / "nope"), "--reference", npz],
                    "no such file or folder")


@needs_tf
def test_inception_weights_that_cannot_be_downloaded_are_one_line_with_the_instructions(capsys, monkeypatch, tmp_path, npz):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    err = _one_line_error(capsys, ["evaluate", "--samples", npz, "--reference", npz, "--metrics", "fid"],
                          ev.INCEPTION_URL)
    assert os.path.join(str(tmp_path / "torch-home"), "hub", "checkpoints", ev.INCEPTION_FILE) in err
    assert "--inception-weights PATH" in err


@needs_tf
def test_a_real_download_attempt_fails_fast_offline(tmp_path, npz):
    """No monkeypatching: a proxy on a closed local port refuses the connection at once (whatever the
    machine's network), and the command ends in one line, exit status 2."""
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "th"), https_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="")
    p = subprocess.run([sys.executable, "-m", "scoresde", "evaluate", "--samples", npz, "--reference", npz,
                        "--metrics", "fid", "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stdout == "", p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and ev.INCEPTION_URL in p.stderr


@needs_tf
def test_a_pickled_inception_weights_file_is_refused_unread(capsys, tmp_path, npz):
    trap = tmp_path / "created-by-unpickling"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(trap),))

    torch.save({"fc.weight": Payload()}, tmp_path / "w.pth")
    _one_line_error(capsys, ["evaluate", "--samples", npz, "--reference", npz, "--metrics", "fid",
                             "--inception-weights", str(tmp_path / "w.pth")], "not a plain tensor file")
    assert not trap.exists()


@needs_tf
def test_inception_path_with_stand_in_weights(tmp_path):
    """The wiring to torch-fidelity's Inception-v3, with randomly initialised weights in its format
    (the real ones cannot be downloaded here): 2048-d features, 1008 logits for IS, grayscale
    images repeated to RGB, the small-count warning with Heusel et al.'s 10,000."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state, *a, **k: None
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as m
        fetch = m.load_state_dict_from_url
        m.load_state_dict_from_url = lambda *a, **k: {}
        try:
            torch.manual_seed(0)
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        finally:
            m.load_state_dict_from_url = fetch
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original
    torch.save(net.state_dict(), tmp_path / "stand-in.pth")
    x, y = pixels(6, (1, 8, 8), seed=1), pixels(6, (1, 8, 8), seed=2)
    r = ev.evaluate(x, y, metrics="fid,kid,is", inception_weights=str(tmp_path / "stand-in.pth"), is_splits=2,
                    batch_size=6)
    assert r["feature_net"] == "inception" and r["feature_dim"] == 2048
    assert r["FID"] >= 0 and set(r["KID"]) == {"mean", "std", "subsets", "subset_size"} and r["IS"]["splits"] == 2
    assert any("below 10,000" in w for w in r["warnings"])


def _has_digits():
    try:
        from scoresde.classifier import load_digits_classifier
        load_digits_classifier()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _has_digits(), reason="the digits classifier or its shipped weights are not there yet")
def test_cli_digits_feature_net_against_a_split_prints_the_table_and_caches(capsys, digits_run):
    from scoresde.data import load_dataset
    samples = load_dataset("digits", "train").pixels[:400]
    path = digits_run / "samples.npz"
    np.savez(path, samples=samples.permute(0, 2, 3, 1).numpy())
    argv = ["evaluate", str(digits_run), "--samples", str(path), "--reference", "test", "--feature-net", "digits",
            "--metrics", "fid,kid,is", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "samples: 400 images; reference: 300 images" in out
    fd = float(next(line.split()[1] for line in out.splitlines() if line.startswith("FD-digits")))
    assert "KID-digits" in out and "IS-digits" in out and " ± " in out
    assert "warning: FD-digits from reference 300 images: below 320" in err
    cached = os.listdir(digits_run / "eval")
    assert len(cached) == 1 and cached[0].startswith("stats_digits_test_digits_")
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert float(next(line.split()[1] for line in again.splitlines() if line.startswith("FD-digits"))) == fd
