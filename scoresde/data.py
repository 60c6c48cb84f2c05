"""Data: 2-D toy sets made on the fly, scikit-learn's 8x8 digits, and local image data sets (MNIST
in IDX format, CIFAR-10 in its binary format, any folder of PNG/JPEG files), with the scaling
between 8-bit pixels and model space, uniform dequantization, and a resumable minibatch stream.

Nothing here downloads anything, and nothing is ever unpickled: CIFAR-10's python version is a
pickle (loading one can run arbitrary code), so only the binary version is read.

Conventions:
    * toy samples are float32 tensors (n, 2), drawn with torch ops from an optional generator;
    * image pixels are uint8 tensors (N, C, H, W) on the 0–255 scale; model-space data are
      ``scale(pixels, data_range)``: lo + (hi - lo) p / 255, [-1, 1] by default;
    * ``load_dataset`` wraps all of them in a ``Dataset``.
"""
from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from . import _checks
from .analytic import GaussianMixture

TOYS = ("checkerboard", "moons", "swissroll", "8gaussians", "rings", "gmm")
IMAGE_SETS = ("digits", "mnist", "cifar10", "folder")
NAMES = TOYS + IMAGE_SETS
SPLITS = ("train", "test")

# Default toy sizes and seeds: different seeds per split, so the test set is a fresh draw.
TOY_SIZES = {"train": 50_000, "test": 5_000}
TOY_SEEDS = {"train": 0, "test": 1}

TOY_RANGE = (-2.0, 2.0)      # nominal extent of every toy, per coordinate

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DataRange = Tuple[float, float]


# --------------------------------------------------------------------------------------------
# Argument checks (the _checks style: one ValueError naming the argument and what was expected)
# --------------------------------------------------------------------------------------------

def _data_range(value) -> DataRange:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be two finite numbers (lo, hi) with hi > lo, got {value!r}")
    return lo, hi


def _generator_device(generator: Optional[torch.Generator]) -> torch.device:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator.device if generator is not None else torch.device("cpu")


def _directory(root, what: str) -> Path:
    if root is None:
        raise ValueError(f"root must be the folder holding {what}, got None")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ValueError(f"root {str(path)!r} is not an existing folder (expected it to hold {what})")
    return path


# --------------------------------------------------------------------------------------------
# 2-D toys
# --------------------------------------------------------------------------------------------

CHECKERBOARD_LOG_DENSITY = math.log(1 / 8)


def _black_squares() -> Tensor:
    """(8, 2) lower-left corners of the black squares: (i, j) with i + j even, corner (-2+i, -2+j)."""
    return torch.tensor([[-2.0 + i, -2.0 + j] for i in range(4) for j in range(4) if (i + j) % 2 == 0])


def _checkerboard(n: int, generator, device) -> Tensor:
    square = torch.randint(0, 8, (n,), generator=generator, device=device)
    offset = torch.rand(n, 2, generator=generator, device=device)
    return _black_squares().to(device)[square] + offset


def on_checkerboard(x: Tensor) -> Tensor:
    """Whether each point of x (B, 2) lies on a black square, squares taken as closed sets.

    Closed, because a float32 draw from [-2 + i, -1 + i) can round onto the square's edge; edges
    have probability zero, so this does not change the density.
    """
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be a tensor of shape (B, 2), got {tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    s = x.double() + 2.0                                   # board coordinates in [0, 4]
    inside = ((s >= 0) & (s <= 4)).all(dim=1)
    # The column (row) indices of the closed unit cells holding each coordinate: one in the
    # interior of a cell, two on an edge between cells.
    lo, hi = torch.ceil(s) - 1, torch.floor(s)
    black = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for i in (lo[:, 0], hi[:, 0]):
        for j in (lo[:, 1], hi[:, 1]):
            valid = (i >= 0) & (i <= 3) & (j >= 0) & (j <= 3)
            black |= valid & ((i + j) % 2 == 0)
    return inside & black


def checkerboard_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of the checkerboard toy: log(1/8) on the black squares, -inf elsewhere, (B,)."""
    black = on_checkerboard(x)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    out = torch.full(black.shape, -math.inf, dtype=dtype, device=x.device)
    return out.masked_fill(black, CHECKERBOARD_LOG_DENSITY)


def _moons(n: int, generator, device, noise: float = 0.08) -> Tensor:
    # scikit-learn's two moons, (cos t, sin t) and (1 - cos t, 1/2 - sin t) for t in [0, pi],
    # span [-1, 2] x [-1/2, 1]; centring on (1/2, 1/4) and scaling by 4/3 gives [-2, 2] x [-1, 1].
    t = math.pi * torch.rand(n, generator=generator, device=device)
    lower = torch.rand(n, generator=generator, device=device) < 0.5
    x = torch.where(lower, 1.0 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    pts = (torch.stack([x, y], dim=1) - torch.tensor([0.5, 0.25], device=device)) * (4.0 / 3.0)
    return pts + noise * torch.randn(n, 2, generator=generator, device=device)


def _swissroll(n: int, generator, device, noise: float = 0.05) -> Tensor:
    # The 2-D swiss roll (t cos t, t sin t), t in [1.5 pi, 4.5 pi] as in scikit-learn, scaled so
    # its outer end lies on the circle of radius 2.
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator, device=device))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) * (2.0 / (4.5 * math.pi))
    return pts + noise * torch.randn(n, 2, generator=generator, device=device)


RING_RADII = (0.5, 1.0, 1.5, 2.0)


def _rings(n: int, generator, device, noise: float = 0.04) -> Tensor:
    # Ring k is chosen with probability proportional to its radius, so the density along the
    # rings is uniform in arc length.
    radii = torch.tensor(RING_RADII, device=device)
    ring = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator, device=device)
    r = radii[ring]
    pts = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    return pts + noise * torch.randn(n, 2, generator=generator, device=device)


def toy_mixture(name: str = "gmm") -> GaussianMixture:
    """The exact mixture behind a Gaussian-mixture toy: "gmm" (four unequal, correlated components in
    [-2, 2]^2) or "8gaussians" (eight equal components on the circle of radius 2, std 0.15).

    A fresh object each call, so callers cannot share its internal caches by accident.
    """
    if name == "gmm":
        return GaussianMixture(
            weights=[0.4, 0.3, 0.2, 0.1],
            means=[[-1.0, -0.6], [1.1, 0.9], [1.2, -1.2], [-1.0, 1.3]],
            covs=[[[0.20, 0.08], [0.08, 0.12]], [[0.05, 0.0], [0.0, 0.25]],
                  [[0.10, -0.06], [-0.06, 0.10]], [[0.03, 0.0], [0.0, 0.03]]],
        )
    if name == "8gaussians":
        angles = [2 * math.pi * k / 8 for k in range(8)]
        return GaussianMixture(weights=[1.0] * 8,
                               means=[[2 * math.cos(a), 2 * math.sin(a)] for a in angles],
                               covs=[0.15 ** 2] * 8)
    raise ValueError(f"name must be one of ('gmm', '8gaussians') (the toys with a mixture density), got {name!r}")


def _from_mixture(name: str):
    def sample(n: int, generator, device) -> Tensor:
        return toy_mixture(name).sample(n, generator, device=device, dtype=torch.float32)
    return sample


_TOY_SAMPLERS = {
    "checkerboard": _checkerboard,
    "moons": _moons,
    "swissroll": _swissroll,
    "8gaussians": _from_mixture("8gaussians"),
    "rings": _rings,
    "gmm": _from_mixture("gmm"),
}


def sample_toy(name: str, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """n draws from the 2-D toy ``name`` (one of TOYS), a float32 tensor (n, 2).

    Randomness comes from ``generator`` only (torch's default generator if None); the samples
    live on the generator's device.
    """
    _checks.choice(name, "name", TOYS)
    _checks.positive_int(n, "n")
    device = _generator_device(generator)
    return _TOY_SAMPLERS[name](n, generator, device).to(torch.float32)


# --------------------------------------------------------------------------------------------
# Pixels <-> model space
# --------------------------------------------------------------------------------------------

def _pixel_values(pixels, name: str = "pixels") -> Tensor:
    if not torch.is_tensor(pixels):
        raise ValueError(f"{name} must be a tensor of 8-bit pixel values, got {type(pixels).__name__}")
    if pixels.dtype != torch.uint8:
        bad = (pixels < 0) | (pixels > 255)
        if pixels.is_floating_point():
            bad |= pixels != pixels.round()
        if bool(bad.any()):
            raise ValueError(f"{name} must hold integer values in [0, 255], got dtype {pixels.dtype} with other values")
    return pixels


def scale(pixels: Tensor, data_range: Sequence[float] = (-1.0, 1.0), dtype: torch.dtype = torch.float32) -> Tensor:
    """8-bit pixels p (uint8, or integer values in [0, 255]) to model space: lo + (hi - lo) p / 255."""
    lo, hi = _data_range(data_range)
    x = _pixel_values(pixels).to(dtype, copy=True)
    # In place: a whole data set (CIFAR-10: 600 MB as float32) is scaled at once.
    return x.mul_(hi - lo).div_(255.0).add_(lo)


def unscale(x: Tensor, data_range: Sequence[float] = (-1.0, 1.0)) -> Tensor:
    """Model-space values back to uint8 pixels: round((x - lo) / (hi - lo) * 255), clipped to [0, 255].

    The exact inverse of ``scale`` on its image, and the way to turn samples into pixels.
    """
    lo, hi = _data_range(data_range)
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if torch.is_tensor(x) else ""))
    # Work in at least float32: float16 cannot hold 255 * fraction to the needed precision.
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return ((xf - lo) / (hi - lo) * 255.0).round().clamp(0, 255).to(torch.uint8)


def dequantize(pixels: Tensor, generator: Optional[torch.Generator] = None,
               data_range: Sequence[float] = (-1.0, 1.0), dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniformly dequantized pixels for likelihood evaluation: u = (p + U[0, 1)) / 256, mapped to
    lo + (hi - lo) u, so pixel value p fills the bin [lo + (hi-lo) p/256, lo + (hi-lo) (p+1)/256).

    The same map as ``scoresde.bits_per_dim`` uses (the reference implementation's), whose
    change-of-variables term turns a density of this y into bits/dim on the 0–255 scale. Note the
    bins are p/256 while ``scale`` uses p/255, also as in the reference implementation.
    """
    lo, hi = _data_range(data_range)
    p = _pixel_values(pixels).to(dtype)
    gdev = _generator_device(generator) if generator is not None else p.device
    u = torch.rand(p.shape, generator=generator, device=gdev, dtype=dtype).to(p.device)
    return lo + (hi - lo) * (p + u) / 256.0


def _resize_pixels(pixels: Tensor, image_size: Optional[int]) -> Tensor:
    """Square uint8 images (N, C, S, S) resized to image_size (bilinear, antialiased when shrinking)."""
    if image_size is None or pixels.shape[-1] == image_size == pixels.shape[-2]:
        return pixels
    resized = torch.nn.functional.interpolate(pixels.float(), size=(image_size, image_size), mode="bilinear",
                                              antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------
# Digits (scikit-learn's bundled copy of the UCI 8x8 digits)
# --------------------------------------------------------------------------------------------

DIGITS_TEST_SIZE = 300
DIGITS_SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _digits_all() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)    # 0..16 -> 0..255
    return pixels[:, None], bunch.target.astype(np.int64)


def read_digits(split: str = "train") -> Tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 digits as (pixels uint8 (N, 1, 8, 8) on 0..255, labels int64 (N,)).

    The split is fixed: a permutation from numpy's legacy RandomState(0) (whose stream numpy keeps
    stable across versions), the first 1,497 for "train" and the last 300 for "test".
    """
    _checks.choice(split, "split", SPLITS)
    pixels, labels = _digits_all()
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(pixels))
    cut = len(pixels) - DIGITS_TEST_SIZE
    idx = np.sort(order[:cut] if split == "train" else order[cut:])
    return torch.from_numpy(pixels[idx].copy()), torch.from_numpy(labels[idx].copy())


# --------------------------------------------------------------------------------------------
# MNIST (IDX format)
# --------------------------------------------------------------------------------------------

# IDX type codes (third magic byte) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped if its name ends in .gz (a damaged archive is a ValueError)."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{str(path)!r} is not a complete gzip file ({e})") from None


def read_idx(path) -> np.ndarray:
    """An array from a file in the IDX format (optionally gzipped), validated against its header.

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions d, then d
    big-endian uint32 sizes, then the data, big-endian, row-major. A wrong magic number, a
    truncated file or trailing bytes is a ValueError naming the file.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise ValueError(f"{str(path)!r} is truncated: {len(buf)} bytes, shorter than the 4-byte IDX magic number")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES or buf[3] == 0:
        raise ValueError(f"{str(path)!r} is not an IDX file: bad magic number 0x{buf[:4].hex()} "
                         "(expected 0x0000TTDD, TT a type code such as 08 for uint8, DD the number of dimensions)")
    dtype, ndim = _IDX_DTYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{str(path)!r} is truncated: {len(buf)} bytes, shorter than its {header}-byte IDX header")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(buf) != expected:
        problem = "truncated" if len(buf) < expected else "longer than its header says"
        raise ValueError(f"{str(path)!r} is {problem}: the IDX header gives shape {dims}, {expected} bytes "
                         f"in all, but the file has {len(buf)}")
    data = np.frombuffer(buf, dtype=dtype, count=int(np.prod(dims, dtype=np.int64)), offset=header)
    return data.reshape(dims).astype(dtype.newbyteorder("="))    # native byte order, writable copy


def _find_file(folders: Sequence[Path], names: Sequence[str]) -> Optional[Path]:
    for folder in folders:
        for name in names:
            for candidate in (folder / name, folder / (name + ".gz")):
                if candidate.is_file():
                    return candidate
    return None


def read_mnist(root, split: str = "train") -> Tuple[Tensor, Tensor]:
    """MNIST (or any data set in MNIST's IDX layout, e.g. Fashion-MNIST) from a local folder.

    Looks in ``root``, ``root/MNIST/raw`` (torchvision's layout) and ``root/raw`` for
    ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (split "train") or ``t10k-...``
    (split "test"), each optionally gzipped (.gz) and also accepted with a dot before "idx".
    Returns (pixels uint8 (N, 1, H, W), labels int64 (N,)).
    """
    _checks.choice(split, "split", SPLITS)
    root = _directory(root, "MNIST's IDX files (train-images-idx3-ubyte, ...)")
    prefix = "train" if split == "train" else "t10k"
    folders = [root, root / "MNIST" / "raw", root / "raw"]
    found = {}
    for kind, ext in (("images", "idx3-ubyte"), ("labels", "idx1-ubyte")):
        names = [f"{prefix}-{kind}-{ext}", f"{prefix}-{kind}.{ext}"]
        found[kind] = _find_file(folders, names)
        if found[kind] is None:
            raise ValueError(f"no MNIST {split} {kind} in {str(root)!r} (also looked in MNIST/raw and raw): expected "
                             f"{names[0]} or {names[0]}.gz, in the IDX format of http://yann.lecun.com/exdb/mnist/")
    images, labels = read_idx(found["images"]), read_idx(found["labels"])
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{str(found['images'])!r} must hold uint8 images (IDX magic 0x00000803, shape (N, H, W)), "
                         f"got {images.dtype} of shape {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{str(found['labels'])!r} must hold uint8 labels (IDX magic 0x00000801, shape (N,)), "
                         f"got {labels.dtype} of shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{str(found['images'])!r} holds {len(images)} images but {str(found['labels'])!r} "
                         f"holds {len(labels)} labels")
    return torch.from_numpy(images[:, None]), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------------------------
# CIFAR-10 (binary format only)
# --------------------------------------------------------------------------------------------

CIFAR_RECORD = 1 + 3 * 32 * 32          # one label byte, then the 32x32 R, G and B planes
CIFAR_FILES = {"train": [f"data_batch_{k}.bin" for k in range(1, 6)], "test": ["test_batch.bin"]}
_CIFAR_PICKLE_SIGNS = ("cifar-10-batches-py", "cifar-10-python.tar.gz", "data_batch_1", "test_batch")


def _refuse_cifar_pickle(root: Path, folder: Path) -> None:
    """Refuse the python (pickle) version by its file names alone: its files are never opened."""
    signs = [root / name for name in _CIFAR_PICKLE_SIGNS] + [folder / "data_batch_1", folder / "test_batch"]
    if any(p.exists() for p in signs):
        raise ValueError(
            f"{str(root)!r} holds the python (pickle) version of CIFAR-10, which scoresde refuses to read: "
            "unpickling a file can run arbitrary code. Use the binary version instead (cifar-10-binary.tar.gz "
            "from https://www.cs.toronto.edu/~kriz/cifar.html, extracted to cifar-10-batches-bin/)")


def _read_cifar_file(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    buf = path.read_bytes()
    if len(buf) == 0 or len(buf) % CIFAR_RECORD:
        raise ValueError(f"{str(path)!r} is truncated or not in CIFAR-10's binary format: {len(buf)} bytes is not "
                         f"a positive multiple of the {CIFAR_RECORD}-byte record (1 label byte + 3072 pixel bytes)")
    records = np.frombuffer(buf, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{str(path)!r} is not in CIFAR-10's binary format: found label {labels.max()}, "
                         "expected 0..9 in the first byte of each record")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar10(root, split: str = "train") -> Tuple[Tensor, Tensor]:
    """CIFAR-10 from its binary version: ``root`` is cifar-10-batches-bin/ or the folder holding it.

    Split "train" reads data_batch_1.bin .. data_batch_5.bin, "test" test_batch.bin; each is a
    sequence of 3,073-byte records (a label byte 0..9, then 3,072 pixel bytes in CHW order).
    Returns (pixels uint8 (N, 3, 32, 32), labels int64 (N,)). The python (pickle) version is
    refused with a ValueError and none of its files is opened.
    """
    _checks.choice(split, "split", SPLITS)
    root = _directory(root, "CIFAR-10's binary version (cifar-10-batches-bin/)")
    folder = root / "cifar-10-batches-bin" if (root / "cifar-10-batches-bin").is_dir() else root
    paths = [folder / name for name in CIFAR_FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        _refuse_cifar_pickle(root, folder)
        hint = (" (cifar-10-binary.tar.gz is there: extract it first)"
                if (root / "cifar-10-binary.tar.gz").exists() else "")
        raise ValueError(f"no CIFAR-10 {split} data in {str(folder)!r}{hint}: missing {', '.join(missing)}; expected "
                         f"{', '.join(CIFAR_FILES[split])} from the binary version (cifar-10-batches-bin/)")
    parts = [_read_cifar_file(p) for p in paths]
    pixels = np.concatenate([p for p, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    return torch.from_numpy(pixels), torch.from_numpy(labels)


# --------------------------------------------------------------------------------------------
# A folder of images
# --------------------------------------------------------------------------------------------

_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _image_files(folder: Path) -> List[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images in {str(folder)!r}: expected files ending in {', '.join(IMAGE_EXTENSIONS)} "
                         "(searched recursively)")
    return files


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(path)
        im.load()
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from None
    return im


def _resize_and_crop(im, image_size: int):
    """Scale so the shorter side is image_size (bicubic), then cut the central square."""
    from PIL import Image
    w, h = im.size
    s = image_size / min(w, h)
    nw, nh = max(image_size, round(w * s)), max(image_size, round(h * s))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), getattr(Image, "Resampling", Image).BICUBIC)
    left, top = (nw - image_size) // 2, (nh - image_size) // 2
    return im.crop((left, top, left + image_size, top + image_size))


def read_image_folder(root, image_size: Optional[int] = None, channels: Optional[int] = None) -> Tensor:
    """Every PNG/JPEG under ``root`` (recursively, in sorted path order) as uint8 (N, C, S, S).

    ``channels``: 1 (grayscale, "L") or 3 ("RGB"); None picks 1 if every image is grayscale, else 3.
    ``image_size``: each image is scaled so its shorter side is image_size and centre-cropped to a
    square; None keeps the images as they are, which then must all share one size.
    """
    root = _directory(root, "image files (" + ", ".join(IMAGE_EXTENSIONS) + ")")
    if image_size is not None:
        _checks.positive_int(image_size, "image_size")
    if channels is not None:
        _checks.choice(channels, "channels", (1, 3))
    files = _image_files(root)
    images = [_open_image(p) for p in files]
    if channels is None:
        channels = 1 if all(im.mode in _GRAY_MODES for im in images) else 3
    arrays = []
    for path, im in zip(files, images):
        im = im.convert("L" if channels == 1 else "RGB")
        if image_size is not None:
            im = _resize_and_crop(im, image_size)
        elif im.size != images[0].size:
            raise ValueError(f"images in {str(root)!r} differ in size ({files[0].name} is {images[0].size[0]}x"
                             f"{images[0].size[1]}, {path.name} is {im.size[0]}x{im.size[1]}): pass image_size")
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays))


# --------------------------------------------------------------------------------------------
# The common entry point
# --------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """A data set held in memory.

    Attributes:
        data: float32 tensor (N, *shape) in model space (for images ``scale(pixels, data_range)``).
        pixels: uint8 tensor (N, C, H, W) on the 0–255 scale for image data, else None.
        shape: the shape of one sample, e.g. (2,) or (C, H, W).
        is_image: whether samples are images (then ``pixels`` is set and flips make sense).
        data_range: (lo, hi): for images the model-space values of pixel values 0 and 255 (what
            ``scale``/``unscale``/``dequantize`` take); for the toys, which are not scaled, the
            nominal extent TOY_RANGE = (-2, 2) of the box they are drawn on (samples may fall
            slightly outside it).
        name: the name given to ``load_dataset``.
        labels: int64 class labels (N,) where the data set has them, else None.
        split: "train" or "test".
    """
    data: Tensor
    pixels: Optional[Tensor]
    shape: Tuple[int, ...]
    is_image: bool
    data_range: DataRange
    name: str
    labels: Optional[Tensor] = None
    split: str = "train"

    def __len__(self) -> int:
        return self.data.shape[0]


def _image_pixels(name: str, split: str, root, image_size, channels) -> Tuple[Tensor, Optional[Tensor]]:
    if name == "digits":
        pixels, labels = read_digits(split)
    elif name == "mnist":
        pixels, labels = read_mnist(root, split)
    elif name == "cifar10":
        pixels, labels = read_cifar10(root, split)
    else:
        folder = _directory(root, "image files (" + ", ".join(IMAGE_EXTENSIONS) + ")")
        if (folder / split).is_dir():
            folder = folder / split
        elif split != "train":
            raise ValueError(f"split {split!r} of an image folder needs a subfolder {str(folder / split)!r}; "
                             "without one the whole folder is the train split")
        return read_image_folder(folder, image_size, channels), None
    return _resize_pixels(pixels, image_size), labels


def _subset(n, total: int, generator) -> Optional[Tensor]:
    """Indices of min(n, total) examples: the first ones, or a random choice from ``generator``."""
    if n is None:
        return None
    n = min(_checks.positive_int(n, "n"), total)
    if generator is None:
        return torch.arange(n)
    return torch.randperm(total, generator=generator, device=_generator_device(generator))[:n].cpu()


def load_dataset(name: str, split: str = "train", root=None, image_size: Optional[int] = None,
                 n: Optional[int] = None, generator: Optional[torch.Generator] = None, *,
                 data_range: Sequence[float] = (-1.0, 1.0), channels: Optional[int] = None) -> Dataset:
    """Load a data set by name: one of TOYS, "digits", "mnist", "cifar10" or "folder".

    Toys: ``n`` fresh samples (default 50,000 for "train", 5,000 for "test") from ``generator``,
    or, if None, from a fixed seed per split (0 for train, 1 for test), so the default data are
    reproducible and the test split is independent of the train split.

    Images: "digits" needs nothing; "mnist", "cifar10" and "folder" read the local folder
    ``root`` (see ``read_mnist``, ``read_cifar10``, ``read_image_folder``; a folder with a
    ``train``/``test`` subfolder uses the one named by ``split``). ``image_size`` resizes (square
    sets: bilinear, antialiased; folders: shorter side then centre crop), ``n`` keeps at most n
    examples (the first ones, or a random choice if a generator is given), ``channels`` (1 or 3)
    applies to folders. The data are ``scale(pixels, data_range)``.
    """
    _checks.choice(name, "name", NAMES)
    _checks.choice(split, "split", SPLITS)
    if image_size is not None:
        _checks.positive_int(image_size, "image_size")
    if name in TOYS:
        if image_size is not None or channels is not None:
            raise ValueError(f"image_size and channels apply to image data sets only, got them for the toy {name!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(TOY_SEEDS[split])
        samples = sample_toy(name, TOY_SIZES[split] if n is None else n, generator)
        return Dataset(data=samples, pixels=None, shape=(2,), is_image=False, data_range=TOY_RANGE, name=name,
                       split=split)
    lo_hi = _data_range(data_range)
    pixels, labels = _image_pixels(name, split, root, image_size, channels)
    keep = _subset(n, len(pixels), generator)
    if keep is not None:
        pixels = pixels[keep]
        labels = labels[keep] if labels is not None else None
    return Dataset(data=scale(pixels, lo_hi), pixels=pixels, shape=tuple(pixels.shape[1:]), is_image=True,
                   data_range=lo_hi, name=name, labels=labels, split=split)


# --------------------------------------------------------------------------------------------
# Minibatches
# --------------------------------------------------------------------------------------------

class BatchStream:
    """An endless stream of random minibatches (B, *shape) that can be saved and resumed exactly.

    The stream is a concatenation of epochs; each epoch is a fresh ``torch.randperm`` of the data
    (and, with ``flip``, one fair coin per position for a horizontal flip), both drawn from the
    generator when the epoch starts. Batches are consecutive slices of that stream, so every batch
    has exactly ``batch_size`` samples (a batch may straddle two epochs) and every sample is seen
    exactly once per epoch.

    Because an epoch is fixed by the generator's state at its start, ``state_dict()`` is just
    (epoch, position, that state as a uint8 tensor): a stream restored with ``load_state_dict``
    yields exactly the batches the saved one would have yielded next.

    Args:
        dataset: a Dataset, or a tensor (N, ...) of samples (4-D counts as images).
        batch_size: samples per batch.
        seed: seeds a private CPU generator (ignored if ``generator`` is given).
        flip: flip each image left-right with probability 1/2 (image data only).
        generator: draw from this generator instead (it is advanced by the stream). For an exact
            resume the stream should own its generator: ``load_state_dict`` rewinds it to the
            current epoch's start and replays that epoch's draws, undoing any other use since.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, flip: bool = False, *,
                 generator: Optional[torch.Generator] = None):
        if isinstance(dataset, Dataset):
            self.data, is_image = dataset.data, dataset.is_image
        elif torch.is_tensor(dataset) and dataset.dim() >= 1:
            self.data, is_image = dataset, dataset.dim() == 4
        else:
            raise ValueError(f"dataset must be a Dataset or a tensor (N, ...), got {type(dataset).__name__}")
        if len(self.data) == 0:
            raise ValueError("dataset must hold at least one sample, got an empty one")
        self.batch_size = _checks.positive_int(batch_size, "batch_size")
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be True or False, got {flip!r}")
        if flip and not is_image:
            raise ValueError("flip=True needs image data (samples of shape (C, H, W))")
        self.flip = flip
        if generator is None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"seed must be an integer, got {seed!r}")
            generator = torch.Generator().manual_seed(seed)
        _generator_device(generator)
        self.generator = generator
        self.epoch = 0                      # epochs started so far
        self.position = 0                   # samples of the current epoch already yielded
        self._epoch_state: Optional[Tensor] = None     # generator state where the current epoch began
        self._order: Optional[Tensor] = None
        self._flips: Optional[Tensor] = None

    def __len__(self) -> int:
        """Number of samples in the data set (batches never run out)."""
        return len(self.data)

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def _draw_epoch(self) -> None:
        """Draw the current epoch's order (and flips) from the generator, advancing it."""
        g = self.generator
        self._order = torch.randperm(len(self.data), generator=g, device=g.device).to(self.data.device)
        self._flips = (torch.rand(len(self.data), generator=g, device=g.device) < 0.5).to(self.data.device) \
            if self.flip else None

    def _start_epoch(self) -> None:
        self._epoch_state = self.generator.get_state()
        self._draw_epoch()
        self.epoch += 1
        self.position = 0

    def __next__(self) -> Tensor:
        pieces, need = [], self.batch_size
        while need > 0:
            if self._order is None or self.position == len(self.data):
                self._start_epoch()
            k = min(need, len(self.data) - self.position)
            sl = slice(self.position, self.position + k)
            x = self.data[self._order[sl]]
            if self._flips is not None:
                x = torch.where(self._flips[sl].view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
            pieces.append(x)
            self.position += k
            need -= k
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def state_dict(self) -> Dict[str, object]:
        """{"epoch", "position", "generator" (uint8 state at the current epoch's start), "num_samples", "flip"}."""
        # Before the first batch no epoch has been drawn: the generator's current state starts it.
        gstate = self.generator.get_state() if self._order is None else self._epoch_state.clone()
        return {"epoch": self.epoch, "position": self.position, "generator": gstate,
                "num_samples": len(self.data), "flip": self.flip}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Continue exactly where the stream that made ``state`` was. The batch size may differ (the
        stream of samples is the same), the data set's size and ``flip`` may not."""
        try:
            epoch, position, gstate = int(state["epoch"]), int(state["position"]), state["generator"]
            num_samples, flip = int(state["num_samples"]), bool(state["flip"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"state must be a BatchStream.state_dict(), got one without a valid {e}") from None
        if num_samples != len(self.data) or flip != self.flip:
            raise ValueError(f"state was saved for {num_samples} samples with flip={flip}, but this stream has "
                             f"{len(self.data)} samples with flip={self.flip}")
        if not (0 <= position <= num_samples) or epoch < 0 or (epoch == 0 and position != 0):
            raise ValueError(f"state has an impossible position: epoch {epoch}, position {position} of {num_samples}")
        if not torch.is_tensor(gstate) or gstate.dtype != torch.uint8:
            raise ValueError("state['generator'] must be a uint8 tensor (a torch.Generator state)")
        try:
            self.generator.set_state(gstate.cpu())      # generator states are CPU byte tensors on every device
        except RuntimeError as e:
            raise ValueError(f"state['generator'] does not fit this stream's generator: {e}") from None
        self._epoch_state = gstate.clone()
        self.epoch, self.position = epoch, position
        self._order = self._flips = None
        if epoch > 0:
            self._draw_epoch()     # replays the epoch's draws, leaving the generator where it was


def batches(dataset, batch_size: int, generator: torch.Generator, flip: bool = False) -> BatchStream:
    """An endless iterator of random minibatches drawn from ``generator`` (see BatchStream)."""
    if generator is None:
        raise ValueError("generator must be a torch.Generator (use BatchStream(dataset, batch_size, seed) for a seed)")
    return BatchStream(dataset, batch_size, flip=flip, generator=generator)
