"""Data (scoresde.data): toy distributions against their definitions, the digits split, the MNIST,
CIFAR-10 and image-folder readers on small files written here in the exact standard formats, the
pixel scaling, dequantization, and the resumable batch stream.

Frequencies are checked within 4.5 binomial standard errors, means within 4.5 standard errors."""
import gzip
import io
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import data as D


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- checkerboard ------------------------------------------------------------------------------

N_BOARD = 40_000


@pytest.fixture(scope="module")
def board():
    return D.sample_toy("checkerboard", N_BOARD, gen(0))


def test_checkerboard_samples_lie_on_black_squares(board):
    assert board.shape == (N_BOARD, 2) and board.dtype == torch.float32
    assert bool(D.on_checkerboard(board).all())
    assert bool((D.checkerboard_log_prob(board) == math.log(1 / 8)).all())


def test_checkerboard_squares_get_equal_mass_and_are_uniform(board):
    cells = torch.floor(board.double() + 2).clamp(0, 3).long()
    key = cells[:, 0] * 4 + cells[:, 1]
    counts = torch.bincount(key, minlength=16)
    black = [4 * i + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    white = [k for k in range(16) if k not in black]
    assert counts[white].sum() == 0
    p = 1 / 8
    se = math.sqrt(N_BOARD * p * (1 - p))
    assert ((counts[black].double() - N_BOARD * p).abs() <= 4.5 * se).all(), counts[black].tolist()
    # Within each square: offset from its lower-left corner is U[0, 1)^2, mean 1/2 (sd 1/sqrt(12))
    # and variance 1/12 (the variance estimate has sd sqrt(1/180 / n)).
    offset = board.double() + 2 - cells
    for k in black:
        o = offset[key == k]
        n = len(o)
        assert ((o.mean(0) - 0.5).abs() <= 4.5 / math.sqrt(12 * n)).all(), (k, o.mean(0))
        assert ((o.var(0) - 1 / 12).abs() <= 4.5 * math.sqrt(1 / 180 / n)).all(), (k, o.var(0))


def test_checkerboard_log_prob_values():
    x = torch.tensor([
        [-1.5, -1.5],   # square (0, 0): black
        [-0.5, -1.5],   # (1, 0): white
        [0.5, 1.5],     # (2, 3): white
        [1.5, 1.5],     # (3, 3): black
        [-1.0, -1.5],   # edge between black (0, 0) and white (1, 0): on the closed black square
        [2.0, 2.0],     # corner of the board, on black (3, 3)
        [2.5, 0.0],     # off the board
        [-3.0, -3.0],
    ])
    logp = D.checkerboard_log_prob(x)
    expected_black = [True, False, False, True, True, True, False, False]
    assert D.on_checkerboard(x).tolist() == expected_black
    for lp, black in zip(logp.tolist(), expected_black):
        assert lp == (pytest.approx(math.log(1 / 8), rel=1e-7) if black else -math.inf)     # float32


def test_checkerboard_density_integrates_to_one_and_nll_is_log_8(board):
    # Midpoint rule on a 0.01 grid aligned with the squares: exact for a piecewise-constant density.
    h = 0.01
    g = torch.arange(-3 + h / 2, 3, h, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    assert D.checkerboard_log_prob(grid).exp().sum().item() * h * h == pytest.approx(1.0, rel=1e-9)
    assert -D.checkerboard_log_prob(board).mean().item() == pytest.approx(math.log(8), rel=1e-6)


# ---- the other toys ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", D.TOYS)
def test_toys_shape_finite_reproducible(name):
    x = D.sample_toy(name, 2000, gen(1))
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())
    assert x.abs().max() < 3.5             # all scaled to roughly [-2, 2]^2
    assert x.std(0).min() > 0.3            # spread over that box, not collapsed
    assert torch.equal(x, D.sample_toy(name, 2000, gen(1)))
    assert not torch.equal(x, D.sample_toy(name, 2000, gen(2)))


def test_rings_lie_near_their_radii():
    r = D.sample_toy("rings", 5000, gen(0)).double().norm(dim=1)
    nearest = (r[:, None] - torch.tensor(D.RING_RADII, dtype=torch.float64)).abs().min(1).values
    assert nearest.max() < 0.25             # noise sd 0.04


@pytest.mark.parametrize("name", ["gmm", "8gaussians"])
def test_mixture_toys_match_their_mixture(name):
    mix = D.toy_mixture(name)
    n = 20_000
    x = D.sample_toy(name, n, gen(3)).double()
    w, mu, S = mix.weights, mix.means, mix.covs
    mean = (w[:, None] * mu).sum(0)
    cov = (w[:, None, None] * (S + mu[:, :, None] * mu[:, None, :])).sum(0) - mean[:, None] * mean[None, :]
    assert ((x.mean(0) - mean).abs() <= 4.5 * (cov.diagonal() / n).sqrt()).all()
    frac = torch.bincount(mix.classify(x), minlength=mix.num_components).double() / n
    assert ((frac - w).abs() <= 4.5 * (w * (1 - w) / n).sqrt()).all(), (frac, w)
    assert bool(torch.isfinite(mix.log_prob(x)).all())


def test_toy_errors():
    with pytest.raises(ValueError, match="name must be one of .*checkerboard.*gmm"):
        D.sample_toy("spirals", 10)
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            D.sample_toy("moons", n)
    with pytest.raises(ValueError, match="name must be one of"):
        D.toy_mixture("moons")


def test_load_dataset_toys():
    train, test = D.load_dataset("moons"), D.load_dataset("moons", "test")
    assert (len(train), len(test)) == (50_000, 5_000)
    assert train.shape == (2,) and not train.is_image and train.pixels is None and train.data_range == (-2.0, 2.0)
    assert torch.equal(train.data, D.load_dataset("moons").data)            # reproducible
    assert not torch.equal(train.data[:5_000], test.data)                   # different seeds per split
    small = D.load_dataset("gmm", n=100, generator=gen(5))
    assert torch.equal(small.data, D.sample_toy("gmm", 100, gen(5)))


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="name must be one of .*checkerboard.*digits.*mnist.*cifar10.*folder"):
        D.load_dataset("imagenet")
    with pytest.raises(ValueError, match="split must be one of"):
        D.load_dataset("moons", split="val")
    with pytest.raises(ValueError, match="image_size"):
        D.load_dataset("moons", image_size=8)
    with pytest.raises(ValueError, match="root must be the folder"):
        D.load_dataset("mnist")
    with pytest.raises(ValueError, match="not an existing folder"):
        D.load_dataset("cifar10", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="data_range"):
        D.load_dataset("digits", data_range=(1, -1))


# ---- digits, scaling, dequantization -----------------------------------------------------------

def test_digits_split_is_a_fixed_partition():
    from sklearn.datasets import load_digits
    train, test = D.load_dataset("digits"), D.load_dataset("digits", "test")
    assert (len(train), len(test)) == (1497, 300)
    assert train.shape == (1, 8, 8) and train.is_image and train.data_range == (-1.0, 1.0)
    assert train.pixels.dtype == torch.uint8 and train.pixels.max() == 255 and train.pixels.min() == 0
    assert torch.equal(train.data, D.scale(train.pixels))
    # train + test is exactly the bundled set (as a multiset of (image, label) rows), so the two
    # splits are disjoint and complete; duplicates images in the set are allowed for.
    full = load_digits()
    rows = lambda px, lab: sorted(np.concatenate([px.reshape(len(px), -1), lab[:, None]], 1).tolist())
    ours = np.concatenate([train.pixels.numpy(), test.pixels.numpy()]).astype(np.int64)
    labels = np.concatenate([train.labels.numpy(), test.labels.numpy()])
    ref = np.rint(full.images * 255 / 16).astype(np.int64)
    assert rows(ours, labels) == rows(ref, full.target)
    again = D.load_dataset("digits", "test")
    assert torch.equal(again.pixels, test.pixels) and torch.equal(again.labels, test.labels)
    some = D.load_dataset("digits", "test", n=40, generator=gen(0))          # a random 40 of the 300
    rows40 = some.pixels.reshape(40, -1).tolist()
    assert all(r in test.pixels.reshape(300, -1).tolist() for r in rows40)
    assert not torch.equal(some.pixels, test.pixels[:40])
    assert set(test.labels.tolist()) == set(range(10))


def test_digits_resized():
    d = D.load_dataset("digits", "test", image_size=16, n=20)
    assert d.pixels.shape == (20, 1, 16, 16) and d.shape == (1, 16, 16) and d.pixels.dtype == torch.uint8
    small = D.load_dataset("digits", "test", n=20).pixels.double()
    assert (d.pixels.double().mean((1, 2, 3)) - small.mean((1, 2, 3))).abs().max() < 4


@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_scale_unscale_round_trip_is_exact(data_range):
    p = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    x = D.scale(p, data_range)
    assert x.dtype == torch.float32
    assert x.min().item() == data_range[0] and x.max().item() == data_range[1]
    assert torch.equal(D.unscale(x, data_range), p)
    assert torch.equal(D.unscale(x.double(), data_range), p)
    assert D.unscale(torch.tensor([-5.0, 5.0]), data_range).tolist() == [0, 255]      # clipped


def test_dequantize_fills_each_bin_uniformly():
    p = torch.arange(256, dtype=torch.uint8).repeat(200)
    lo, hi = -1.0, 1.0
    y = D.dequantize(p, gen(0), (lo, hi)).double()
    u = (y - lo) / (hi - lo) * 256 - p.double()          # position inside the pixel's bin
    assert ((u >= -1e-5) & (u < 1 + 1e-5)).all()
    n = len(u)
    assert abs(u.mean().item() - 0.5) <= 4.5 / math.sqrt(12 * n)
    assert abs(u.var().item() - 1 / 12) <= 4.5 * math.sqrt(1 / 180 / n)
    assert torch.equal(D.dequantize(p, gen(0)), D.dequantize(p, gen(0)))
    with pytest.raises(ValueError, match="pixels must hold integer values"):
        D.dequantize(torch.tensor([0.5]))


# ---- MNIST (IDX) -------------------------------------------------------------------------------

def idx_bytes(array, type_code=0x08):
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload, gz=False):
    path.write_bytes(gzip.compress(payload) if gz else payload)


def make_mnist(folder, split="train", n=5, gz=False, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
    labels = rng.randint(0, 10, size=n).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    ext = ".gz" if gz else ""
    write(folder / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(images), gz)
    write(folder / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels), gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_reads_back_exactly(tmp_path, split, gz):
    images, labels = make_mnist(tmp_path, split, gz=gz, seed=1 if split == "train" else 2)
    d = D.load_dataset("mnist", split, root=tmp_path)
    assert d.pixels.shape == (5, 1, 28, 28) and d.pixels.dtype == torch.uint8
    assert np.array_equal(d.pixels[:, 0].numpy(), images)
    assert np.array_equal(d.labels.numpy(), labels.astype(np.int64))
    assert torch.equal(d.data, D.scale(d.pixels))


def test_mnist_in_torchvision_layout_and_resized(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    make_mnist(raw, "train", gz=True)
    d = D.load_dataset("mnist", root=tmp_path, image_size=32)
    assert d.pixels.shape == (5, 1, 32, 32)


def test_read_idx_other_types(tmp_path):
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 1000
    (tmp_path / "a").write_bytes(idx_bytes(a, 0x0C))
    assert np.array_equal(D.read_idx(tmp_path / "a"), a)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b[:3], "truncated"),
    (lambda b: b + b"\x00", "longer than its header"),
    (lambda b: b"\x00\x01" + b[2:], "bad magic number"),
    (lambda b: b[:2] + b"\x07" + b[3:], "bad magic number"),
])
def test_mnist_damaged_files_are_value_errors(tmp_path, damage, match):
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=match):
        D.load_dataset("mnist", root=tmp_path)


def test_mnist_wrong_contents_are_value_errors(tmp_path):
    make_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros((5, 2), np.uint8)))       # labels with 2 dimensions
    with pytest.raises(ValueError, match="labels"):
        D.load_dataset("mnist", root=tmp_path)
    labels.write_bytes(idx_bytes(np.zeros(4, np.uint8)))            # 4 labels for 5 images
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        D.load_dataset("mnist", root=tmp_path)
    gz = tmp_path / "gz"
    gz.mkdir()
    make_mnist(gz, gz=True)
    path = gz / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])                       # a cut-off gzip stream
    with pytest.raises(ValueError, match="gzip"):
        D.load_dataset("mnist", root=gz)


def test_mnist_missing_files_name_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte"):
        D.load_dataset("mnist", "test", root=tmp_path)
    make_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.*IDX"):
        D.load_dataset("mnist", root=tmp_path)


# ---- CIFAR-10 (binary) -------------------------------------------------------------------------

def cifar_records(labels, pixels):
    return np.concatenate([np.asarray(labels, np.uint8)[:, None], pixels.reshape(len(pixels), -1)], 1).tobytes()


def make_cifar(folder, n=5, seed=0):
    rng = np.random.RandomState(seed)
    out = {}
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.randint(0, 10, size=n)
        pixels = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
        (folder / name).write_bytes(cifar_records(labels, pixels))
        out[name] = (labels, pixels)
    return out


@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_reads_back_exactly(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    written = make_cifar(folder)
    train, test = D.load_dataset("cifar10", root=tmp_path), D.load_dataset("cifar10", "test", root=tmp_path)
    names = [f"data_batch_{k}.bin" for k in range(1, 6)]
    assert train.pixels.shape == (25, 3, 32, 32) and test.pixels.shape == (5, 3, 32, 32)
    assert np.array_equal(train.pixels.numpy(), np.concatenate([written[k][1] for k in names]))
    assert np.array_equal(train.labels.numpy(), np.concatenate([written[k][0] for k in names]))
    assert np.array_equal(test.pixels.numpy(), written["test_batch.bin"][1])
    assert np.array_equal(test.labels.numpy(), written["test_batch.bin"][0])


def test_cifar10_record_layout(tmp_path):
    # One record by hand: label byte, then the R, G and B planes, each 32 rows of 32 bytes.
    record = bytes([7]) + bytes(range(256)) * 4 + bytes([20] * 1024) + bytes([30] * 1024)
    make_cifar(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(record)
    d = D.load_dataset("cifar10", "test", root=tmp_path)
    px = d.pixels[0]
    assert d.labels.tolist() == [7]
    assert px[0, 0, 1] == 1 and px[0, 1, 0] == 32 and px[0, 7, 31] == 255
    assert (px[1] == 20).all() and (px[2] == 30).all()


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b"", "truncated"),
    (lambda b: bytes([10]) + b[1:], "label 10"),
])
def test_cifar10_damaged_files_are_value_errors(tmp_path, damage, match):
    make_cifar(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=match):
        D.load_dataset("cifar10", root=tmp_path)


def test_cifar10_missing_files_name_what_was_expected(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(ValueError, match="missing data_batch_4.bin.*binary version"):
        D.load_dataset("cifar10", root=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no CIFAR-10 test data .*test_batch.bin"):
        D.load_dataset("cifar10", "test", root=empty)


class _Trap:
    """Unpickling this creates the file at ``path``: evidence that a pickle was loaded."""
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar10_pickle_version_is_refused_and_never_unpickled(tmp_path):
    # The trap is live: loading it really does create its marker file.
    decoy = tmp_path / "decoy-marker"
    pickle.loads(pickle.dumps(_Trap(decoy))).close()
    assert decoy.exists()

    marker = tmp_path / "unpickled-marker"
    payload = pickle.dumps(_Trap(marker))
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]:
        (py / name).write_bytes(payload)
    for root in (tmp_path, py):
        for split in ("train", "test"):
            with pytest.raises(ValueError, match=r"pickle.*binary version"):
                D.load_dataset("cifar10", split, root=root)
    assert not marker.exists()


# ---- image folders -----------------------------------------------------------------------------

def save(path, array, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, **kw)


def test_image_folder_center_crop_and_resize(tmp_path):
    stripes = np.zeros((4, 12, 3), np.uint8)                   # h=4, w=12: red | green | blue thirds
    stripes[:, :4, 0] = 255
    stripes[:, 4:8, 1] = 255
    stripes[:, 8:, 2] = 255
    save(tmp_path / "a.png", stripes)
    save(tmp_path / "sub" / "b.png", np.full((8, 8, 3), (10, 100, 200)))
    (tmp_path / "notes.txt").write_text("not an image")
    d = D.load_dataset("folder", root=tmp_path, image_size=4)
    assert d.pixels.shape == (2, 3, 4, 4) and d.shape == (3, 4, 4) and d.labels is None
    assert d.pixels[0, 1].eq(255).all() and d.pixels[0, [0, 2]].eq(0).all()      # the green centre
    assert d.pixels[1].reshape(3, -1).T.tolist() == [[10, 100, 200]] * 16        # constant stays constant


def test_image_folder_channels_sizes_and_splits(tmp_path):
    rng = np.random.RandomState(0)
    gray = [rng.randint(0, 256, size=(6, 6)) for _ in range(3)]
    for k, g in enumerate(gray):
        save(tmp_path / "train" / f"{k}.png", g)
    save(tmp_path / "test" / "x.jpg", np.full((6, 6, 3), 128), quality=95)
    train = D.load_dataset("folder", root=tmp_path)
    assert train.pixels.shape == (3, 1, 6, 6)                  # all grayscale: one channel
    assert np.array_equal(train.pixels[:, 0].numpy(), np.stack(gray))
    assert D.load_dataset("folder", root=tmp_path, channels=3).pixels.shape == (3, 3, 6, 6)
    test = D.load_dataset("folder", "test", root=tmp_path)
    assert test.pixels.shape == (1, 3, 6, 6) and (test.pixels.int() - 128).abs().max() <= 3
    assert len(D.load_dataset("folder", root=tmp_path, n=2)) == 2
    assert len(D.load_dataset("folder", root=tmp_path, n=50)) == 3           # at most n
    save(tmp_path / "train" / "big.png", np.zeros((6, 9)))
    with pytest.raises(ValueError, match="differ in size.*image_size"):
        D.load_dataset("folder", root=tmp_path)
    assert D.load_dataset("folder", root=tmp_path, image_size=5).pixels.shape == (4, 1, 5, 5)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no images in .*\.png"):
        D.load_dataset("folder", root=tmp_path)
    save(tmp_path / "a.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="subfolder"):
        D.load_dataset("folder", "test", root=tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        D.load_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match="channels"):
        D.read_image_folder(tmp_path, channels=2)


# ---- BatchStream -------------------------------------------------------------------------------

def indexed_images(n):
    """Images whose pixels encode their index (i * 100 + position), so order and flips are visible."""
    base = torch.arange(6, dtype=torch.float32).reshape(1, 1, 2, 3)
    return base + 100 * torch.arange(n, dtype=torch.float32).reshape(-1, 1, 1, 1)


def indices(batch):
    return (batch.reshape(len(batch), -1)[:, 0] // 100).long()


def take(stream, k):
    return [next(stream) for _ in range(k)]


def test_batch_stream_is_reproducible():
    data = indexed_images(50)
    a, b = take(D.BatchStream(data, 8, seed=1, flip=True), 20), take(D.BatchStream(data, 8, seed=1, flip=True), 20)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = take(D.BatchStream(data, 8, seed=2, flip=True), 20)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    g1, g2 = gen(7), gen(7)
    d, e = take(D.batches(data, 8, g1), 10), take(D.batches(data, 8, g2), 10)
    assert all(torch.equal(x, y) for x, y in zip(d, e))


@pytest.mark.parametrize("n, batch_size", [(10, 3), (12, 4), (5, 12)])
def test_each_epoch_is_a_permutation(n, batch_size):
    stream = D.BatchStream(indexed_images(n), batch_size, seed=0)
    batches = take(stream, 6 * n // batch_size + 1)
    assert all(len(b) == batch_size for b in batches)           # full batches, straddling epochs
    got = torch.cat([indices(b) for b in batches])
    orders = got[: (len(got) // n) * n].reshape(-1, n)
    assert len(orders) >= 6
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))
    assert len({tuple(o.tolist()) for o in orders}) > 1          # reshuffled between epochs


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("cut", [0, 1, 3, 5, 13])
def test_state_dict_resumes_the_identical_sequence(cut, flip):
    data = D.Dataset(data=indexed_images(12), pixels=None, shape=(1, 2, 3), is_image=True, data_range=(-1, 1), name="t")
    reference = D.BatchStream(data, 4, seed=3, flip=flip)
    take(reference, cut)
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)                  # a checkpoint round trip
    expected = take(reference, 10)
    resumed = D.BatchStream(data, 4, seed=99, flip=flip)
    take(resumed, 2)                                            # in some other state before loading
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    got = take(resumed, 10)
    assert all(torch.equal(x, y) for x, y in zip(got, expected))
    assert resumed.epoch == reference.epoch and resumed.position == reference.position


def test_flips_only_with_flip():
    data = indexed_images(40)
    plain, flipped = data, data.flip(-1)

    def flip_fraction(stream):
        flips = 0
        for batch in take(stream, 50):
            i = indices(batch)
            is_plain = (batch == plain[i]).flatten(1).all(1)
            is_flipped = (batch == flipped[i]).flatten(1).all(1)
            assert (is_plain | is_flipped).all()
            flips += int(is_flipped.sum())
        return flips / (50 * len(batch))

    assert flip_fraction(D.BatchStream(data, 10, seed=0)) == 0
    f, n = flip_fraction(D.BatchStream(data, 10, seed=0, flip=True)), 500
    assert abs(f - 0.5) <= 4.5 * math.sqrt(0.25 / n)


def test_batch_stream_errors():
    toy = D.load_dataset("moons", n=20)
    with pytest.raises(ValueError, match="flip=True needs image data"):
        D.BatchStream(toy, 4, flip=True)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        D.BatchStream(toy, 0)
    with pytest.raises(ValueError, match="dataset must be"):
        D.BatchStream([1, 2, 3], 2)
    state = D.BatchStream(toy, 4).state_dict()
    with pytest.raises(ValueError, match="saved for 20 samples"):
        D.BatchStream(D.load_dataset("moons", n=21), 4).load_state_dict(state)
    with pytest.raises(ValueError, match="state must be"):
        D.BatchStream(toy, 4).load_state_dict({"epoch": 1})
    assert next(D.BatchStream(toy, 4)).shape == (4, 2)


def _curve_moments(name):
    """Mean and covariance of a curve toy written from its definition: the noiseless curve's moments
    by the midpoint rule over its parameter (2e5 nodes, error ~1e-10), plus the noise variance."""
    m = 200_000
    u = (torch.arange(m, dtype=torch.float64) + 0.5) / m                    # U[0, 1) nodes
    if name == "moons":
        t = math.pi * u
        upper = torch.stack([torch.cos(t), torch.sin(t)], 1)
        lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
        pts = (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)) * (4 / 3)
        noise = 0.08
    elif name == "swissroll":
        t = 1.5 * math.pi * (1 + 2 * u)
        pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) * (2 / (4.5 * math.pi))
        noise = 0.05
    else:  # rings: ring k with probability r_k / sum r, uniform angle
        radii = torch.tensor(D.RING_RADII, dtype=torch.float64)
        angle = 2 * math.pi * u
        circle = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        w = radii / radii.sum()
        mean = torch.zeros(2, dtype=torch.float64)
        cov = (w * radii ** 2).sum() * (circle.T @ circle / m) + 0.04 ** 2 * torch.eye(2, dtype=torch.float64)
        return mean, cov
    mean = pts.mean(0)
    centred = pts - mean
    return mean, centred.T @ centred / len(pts) + noise ** 2 * torch.eye(2, dtype=torch.float64)


@pytest.mark.parametrize("name", ["moons", "swissroll", "rings"])
def test_curve_toys_have_their_exact_mean_and_covariance(name):
    """Sample mean and covariance within 4.5 standard errors (each estimated from the sample) of the
    moments of the curve the toy is defined by, noise included. Caught (checked by planting): a
    shifted or rescaled curve, a lopsided choice between the moons or rings, a noise scale 2x too
    large for the moons and 3x for the swiss roll (the noise is small next to the curves' spread)."""
    n = 40_000
    x = D.sample_toy(name, n, gen(11)).double()
    mean, cov = _curve_moments(name)
    assert ((x.mean(0) - mean).abs() <= 4.5 * (cov.diagonal() / n).sqrt()).all(), (x.mean(0), mean)
    c = x - mean
    prods = c[:, :, None] * c[:, None, :]                                     # (n, 2, 2)
    se = prods.std(0) / math.sqrt(n)
    assert ((prods.mean(0) - cov).abs() <= 4.5 * se).all(), (prods.mean(0), cov, se)
