"""Image readers: scikit-learn's bundled 8x8 digits, MNIST in IDX format, CIFAR-10's binary version
and folders of PNG/JPEG files (labelled by their class subfolders with ``read_class_folders``), all
as uint8 tensors (N, C, H, W).

Nothing here downloads anything, and nothing is ever unpickled: CIFAR-10's python version is a
pickle (loading one can run arbitrary code), so only the binary version is read."""
from __future__ import annotations

import gzip
import zlib
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import _checks
from ._args import SPLITS, _directory

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


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
#: the names of CIFAR-10's labels 0..9, as its batches.meta.txt lists them
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
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


def _folder_files(root, image_size: Optional[int], channels: Optional[int], what: str) -> Tuple[Path, List[Path]]:
    """The folder ``root`` (a ValueError saying it should hold ``what`` if it is none) and its image
    files, after checking ``image_size`` and ``channels``."""
    root = _directory(root, what)
    if image_size is not None:
        _checks.positive_int(image_size, "image_size")
    if channels is not None:
        _checks.choice(channels, "channels", (1, 3))
    return root, _image_files(root)


def _read_images(root: Path, files: List[Path], image_size: Optional[int], channels: Optional[int]) -> Tensor:
    """``files`` (images under ``root``) as uint8 (N, C, S, S), in the given order (see ``read_image_folder``)."""
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


def read_image_folder(root, image_size: Optional[int] = None, channels: Optional[int] = None) -> Tensor:
    """Every PNG/JPEG under ``root`` (recursively, in sorted path order) as uint8 (N, C, S, S).

    ``channels``: 1 (grayscale, "L") or 3 ("RGB"); None picks 1 if every image is grayscale, else 3.
    ``image_size``: each image is scaled so its shorter side is image_size and centre-cropped to a
    square; None keeps the images as they are, which then must all share one size.
    """
    root, files = _folder_files(root, image_size, channels, "image files (" + ", ".join(IMAGE_EXTENSIONS) + ")")
    return _read_images(root, files, image_size, channels)


def class_folder_names(root) -> List[str]:
    """The class names of a folder in torchvision's ImageFolder layout: the names of the immediate
    subfolders of ``root``, sorted (class k is the k-th name). Nothing is read but the listing."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir())


def read_class_folders(root, image_size: Optional[int] = None,
                       channels: Optional[int] = None) -> Tuple[Tensor, Tensor, List[str]]:
    """A labelled image folder in torchvision's ImageFolder layout, ``root/<class name>/**/*.png``:
    returns (pixels uint8 (N, C, S, S), labels int64 (N,), class names).

    The immediate subfolders of ``root`` are the classes, labelled 0..K-1 in sorted name order
    (``class_folder_names``); an image's label is that of the class folder it lies in, at any depth.
    The images are those ``read_image_folder(root, image_size, channels)`` reads, in the same
    (sorted path) order. A ValueError names the path at fault for an image directly in ``root``
    (outside every class folder), a class folder without images, or fewer than 2 class folders.
    """
    root, files = _folder_files(root, image_size, channels,
                                "one subfolder of images per class (root/<class name>/...)")
    loose = [p for p in files if p.parent == root]
    if loose:
        raise ValueError(f"image {str(loose[0])!r} lies directly in the class root {str(root)!r}: with class folders "
                         "every image must be inside the subfolder of its class (root/<class name>/...)")
    names = class_folder_names(root)
    if len(names) < 2:
        raise ValueError(f"{str(root)!r} has {len(names)} class folder(s) ({', '.join(names) or 'none'}): expected "
                         "at least 2 subfolders, one per class (root/<class name>/...)")
    index = {name: k for k, name in enumerate(names)}
    labels = torch.tensor([index[p.relative_to(root).parts[0]] for p in files], dtype=torch.int64)
    counts = torch.bincount(labels, minlength=len(names))
    if (counts == 0).any():
        empty = root / names[int((counts == 0).nonzero()[0])]
        raise ValueError(f"class folder {str(empty)!r} holds no images: expected files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)} (searched recursively); remove the folder or add its images")
    return _read_images(root, files, image_size, channels), labels, names
