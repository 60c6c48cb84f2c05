"""The digits classifier (scoresde.classifier): the shipped weights' test accuracy, reproducible
training, safetensors round trips, FD-digits ordering real < degraded < noise, the class histogram,
and the ``train-classifier`` command."""
import os

import pytest
import torch
from safetensors.torch import save_file

from scoresde import classifier as C
from scoresde.cli import main
from scoresde.data import load_dataset


@pytest.fixture(scope="module")
def net():
    return C.load_digits_classifier()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def uniform_noise(n, seed):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- the shipped classifier ---------------------------------------------------------------------

def test_shipped_classifier_reaches_97_percent_on_the_test_split(net, digits):
    _, test = digits
    with torch.no_grad():
        pred = net.logits(test.pixels).argmax(1)
    accuracy = (pred == test.labels).double().mean().item()
    assert accuracy >= 0.97
    assert C.digits_accuracy(net) == pytest.approx(accuracy, abs=1e-12)
    assert net.metadata["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)      # what the file says is true
    assert net.metadata["seed"] == C.DEFAULT_SEED and net.metadata["steps"] == C.DEFAULT_STEPS
    assert C.SHIPPED_WEIGHTS.stat().st_size < 1_000_000
    assert not net.training


def test_pixels_and_model_space_floats_are_one_input(net, digits):
    _, test = digits
    x = test.pixels[:50]
    with torch.no_grad():
        f_pixels = net.features(x)
        assert f_pixels.shape == (50, net.feature_dim) == (50, 64)
        torch.testing.assert_close(net.features(test.data[:50]), f_pixels)                     # [-1, 1]
        torch.testing.assert_close(net.features(x.float() / 255, data_range=(0, 1)), f_pixels)
        torch.testing.assert_close(net.features(x[:, 0]), f_pixels)                            # (N, 8, 8)
        assert net.logits(x).shape == net(x).shape == (50, 10)
        # floats outside the data range are clipped, as a sample is when it becomes an image
        torch.testing.assert_close(net.features(test.data[:50] * 3), net.features(test.data[:50].mul(3).clamp(-1, 1)))


def test_digits_features_is_a_plain_module_of_the_features(net, digits):
    _, test = digits
    module = C.DigitsFeatures(net)
    with torch.no_grad():
        torch.testing.assert_close(module(test.pixels[:20]), net.features(test.pixels[:20]))
    assert module.feature_dim == 64 and not module.training
    assert not any(p.requires_grad for p in module.parameters())
    default = C.DigitsFeatures()                                       # the shipped classifier
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), module.state_dict().values()))


@pytest.mark.parametrize("bad", [torch.zeros(3, 1, 7, 7), torch.zeros(3, 64), torch.zeros(0, 1, 8, 8),
                                 torch.full((3, 1, 8, 8), 300, dtype=torch.int64),
                                 torch.full((2, 1, 8, 8), float("nan")), "images"])
def test_bad_images_are_one_value_error(net, bad):
    with pytest.raises(ValueError):
        net.features(bad)


# ---- training and files -------------------------------------------------------------------------

def test_training_is_reproducible_and_round_trips_through_safetensors(tmp_path):
    path = tmp_path / "clf.safetensors"
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    a = C.train_digits_classifier(path, steps=15, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)                    # the global RNG is left alone
    assert torch.get_num_threads() == threads                         # and so is the thread count
    try:
        torch.set_num_threads(threads + 1)                            # it trains on one thread anyway
        b = C.train_digits_classifier(steps=15, seed=3)
    finally:
        torch.set_num_threads(threads)
    other = C.train_digits_classifier(steps=15, seed=4)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], v) for k, v in other.state_dict().items())
    assert os.listdir(tmp_path) == ["clf.safetensors"]                # written atomically: no temporary left
    loaded = C.load_digits_classifier(path)
    assert all(torch.equal(sa[k], v) for k, v in loaded.state_dict().items())
    assert loaded.metadata == a.metadata and loaded.metadata["seed"] == 3 and loaded.metadata["steps"] == 15
    assert loaded.architecture == a.architecture == C.DEFAULT_ARCHITECTURE
    # saved again, it loads the same (safetensors orders its JSON header freely: no byte comparison)
    again = C.load_digits_classifier(C.save_digits_classifier(loaded, tmp_path / "again.safetensors"))
    assert again.metadata == a.metadata and all(torch.equal(sa[k], v) for k, v in again.state_dict().items())


def test_load_refuses_what_is_not_a_digits_classifier(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something else"})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x80\x04not a safetensors file")
    for path, words in ((other, "not a digits classifier"), (garbage, "not a readable safetensors"),
                        (tmp_path / "missing.safetensors", "no such file")):
        with pytest.raises(ValueError, match=words):
            C.load_digits_classifier(path)
    good = C.save_digits_classifier(C.DigitsClassifier(), tmp_path / "fresh.safetensors")
    broken = tmp_path / "broken.safetensors"
    from safetensors import safe_open
    with safe_open(good, framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if k != "head.bias"}
    save_file(tensors, str(broken), metadata=meta)
    with pytest.raises(ValueError, match="damaged"):
        C.load_digits_classifier(broken)


# ---- FD-digits and the class histogram ----------------------------------------------------------

def test_fd_digits_orders_real_degraded_and_noise(net, digits):
    """FD-digits against the train split: held-out digits < test digits with Gaussian noise of std
    0.3 (a stand-in for a briefly trained model's samples) < uniform noise, each by a wide margin
    (measured: about 4, 13 and 320)."""
    train, test = digits
    noisy = test.data + 0.3 * torch.randn(test.data.shape, generator=torch.Generator().manual_seed(1))
    fd_real = C.fd_digits(test.pixels, train, net)
    fd_degraded = C.fd_digits(noisy, train.pixels, net)
    fd_noise = C.fd_digits(uniform_noise(300, 2), train.data, net)
    assert 2 * fd_real < fd_degraded and 5 * fd_degraded < fd_noise, (fd_real, fd_degraded, fd_noise)
    assert C.fd_digits(test.pixels, test.pixels, net) == pytest.approx(0.0, abs=1e-6)
    assert C.fd_digits(test.data, train.data, net) == pytest.approx(fd_real, rel=1e-9)    # pixels = floats
    assert C.fd_digits(test.pixels, train) == pytest.approx(fd_real, rel=1e-9)            # default: shipped net


def test_feature_statistics_are_the_features_mean_and_covariance(net, digits):
    _, test = digits
    mu, sigma = C.feature_statistics(test, net)
    with torch.no_grad():
        f = net.features(test.pixels).double()
    torch.testing.assert_close(mu, f.mean(0))
    torch.testing.assert_close(sigma, (f - f.mean(0)).T @ (f - f.mean(0)) / (len(f) - 1))
    with pytest.raises(ValueError, match="at least 2"):
        C.feature_statistics(test.pixels[:1], net)


def test_class_histogram_of_test_digits_and_of_noise(net, digits):
    _, test = digits
    hist = C.class_histogram(test.pixels, net)
    true = torch.bincount(test.labels, minlength=10)
    wrong = round((1 - C.digits_accuracy(net)) * len(test))
    assert hist.counts.dtype == torch.int64 and hist.counts.shape == (10,)
    assert hist.counts.sum() == len(test) and bool((hist.counts > 0).all())
    assert (hist.counts - true).abs().sum() <= 2 * wrong <= 18       # each mistake moves one count
    assert hist.confidence > 0.95
    noise = C.class_histogram(uniform_noise(300, 3), net)
    assert noise.confidence < hist.confidence - 0.1
    assert C.class_histogram(test.data, net).counts.tolist() == hist.counts.tolist()


# ---- the command --------------------------------------------------------------------------------

def test_cli_train_classifier_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "sub" / "clf.safetensors"
    assert main(["train-classifier", "digits", "--out", str(out), "--steps", "5", "--seed", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    net = C.load_digits_classifier(out)
    assert net.metadata["steps"] == 5 and net.metadata["seed"] == 1
    assert f"{100 * net.metadata['test_accuracy']:.2f}%" in printed and str(out) in printed


def test_cli_train_classifier_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train-classifier", "mnist"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["train-classifier", "digits", "--steps", "0"])
    assert e.value.code == 2
    assert main(["train-classifier", "digits", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert "is a folder" in capsys.readouterr().err
