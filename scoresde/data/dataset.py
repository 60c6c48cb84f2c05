"""``load_dataset``: one entry point for every data set, held in memory as a ``Dataset``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _checks
from ._args import SPLITS, DataRange, _data_range, _directory, _generator_device
from .images import IMAGE_EXTENSIONS, read_cifar10, read_digits, read_image_folder, read_mnist
from .pixels import _resize_pixels, scale
from .toys import TOY_RANGE, TOY_SEEDS, TOY_SIZES, TOYS, sample_toy

IMAGE_SETS = ("digits", "mnist", "cifar10", "folder")
NAMES = TOYS + IMAGE_SETS
#: the data sets with class labels (``Dataset.labels``), and their number of classes
LABELLED_SETS = {"digits": 10, "mnist": 10, "cifar10": 10}


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

