"""``load_dataset``: one entry point for every data set, held in memory as a ``Dataset``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _checks
from ._args import SPLITS, DataRange, _data_range, _directory, _generator_device
from .images import (CIFAR10_CLASSES, IMAGE_EXTENSIONS, class_folder_names, read_cifar10, read_class_folders,
                     read_digits, read_image_folder, read_mnist)
from .pixels import _resize_pixels, scale
from .toys import TOY_RANGE, TOY_SEEDS, TOY_SIZES, TOYS, sample_toy

IMAGE_SETS = ("digits", "mnist", "cifar10", "folder")
NAMES = TOYS + IMAGE_SETS
#: the data sets with class labels (``Dataset.labels``), and their number of classes; "folder" has
#: labels too when read with ``class_folders`` (one class per subfolder, so their number is the folder's)
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
        class_names: the names of labels 0..K-1, in label order, where the data set names them: a
            folder read with ``class_folders`` (its class folders' names, sorted) and CIFAR-10
            (CIFAR10_CLASSES); None for digits and MNIST (the label is the digit; MNIST's reader
            also reads other sets in its layout, e.g. Fashion-MNIST) and the unlabelled sets.
    """
    data: Tensor
    pixels: Optional[Tensor]
    shape: Tuple[int, ...]
    is_image: bool
    data_range: DataRange
    name: str
    labels: Optional[Tensor] = None
    split: str = "train"
    class_names: Optional[Tuple[str, ...]] = None

    def __len__(self) -> int:
        return self.data.shape[0]


def _image_pixels(name: str, split: str, root, image_size, channels,
                  class_folders: bool) -> Tuple[Tensor, Optional[Tensor], Optional[Tuple[str, ...]]]:
    """(pixels, labels or None, class names or None) of an image set."""
    names = None
    if name == "digits":
        pixels, labels = read_digits(split)
    elif name == "mnist":
        pixels, labels = read_mnist(root, split)
    elif name == "cifar10":
        (pixels, labels), names = read_cifar10(root, split), CIFAR10_CLASSES
    else:
        base = _directory(root, "image files (" + ", ".join(IMAGE_EXTENSIONS) + ")")
        folder = base / split
        if not folder.is_dir():
            if split != "train":
                raise ValueError(f"split {split!r} of an image folder needs a subfolder {str(folder)!r}; "
                                 "without one the whole folder is the train split")
            folder = base
        if not class_folders:
            return read_image_folder(folder, image_size, channels), None, None
        pixels, labels, found = read_class_folders(folder, image_size, channels)
        if folder != base:
            _check_split_classes(base, split, found)
        return pixels, labels, tuple(found)
    return _resize_pixels(pixels, image_size), labels, names


def _check_split_classes(base, split: str, names: List[str]) -> None:
    """The train and test folders of a class-folder set (where both exist) hold the same classes, so
    that a label means the same class in both."""
    for other in SPLITS:
        if other != split and (base / other).is_dir():
            theirs = class_folder_names(base / other)
            if theirs != names:
                only = sorted(set(names) ^ set(theirs))[0]
                raise ValueError(f"the class folders of {str(base / split)!r} ({len(names)}) and {str(base / other)!r} "
                                 f"({len(theirs)}) differ: {only!r} is in only one of them; both splits must hold the "
                                 "same class subfolders, so that a label means the same class in both")


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
                 data_range: Sequence[float] = (-1.0, 1.0), channels: Optional[int] = None,
                 class_folders: bool = False) -> Dataset:
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

    ``class_folders`` (folders only) labels a folder in torchvision's ImageFolder layout,
    ``root/<class name>/...`` (or ``root/<split>/<class name>/...``): see ``read_class_folders``;
    the train and test folders must then hold the same class folders.
    """
    _checks.choice(name, "name", NAMES)
    _checks.choice(split, "split", SPLITS)
    if class_folders and name != "folder":
        raise ValueError(f"class_folders applies to the image folder (name 'folder') only, got it for {name!r}")
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
    pixels, labels, class_names = _image_pixels(name, split, root, image_size, channels, class_folders)
    keep = _subset(n, len(pixels), generator)
    if keep is not None:
        pixels = pixels[keep]
        labels = labels[keep] if labels is not None else None
    return Dataset(data=scale(pixels, lo_hi), pixels=pixels, shape=tuple(pixels.shape[1:]), is_image=True,
                   data_range=lo_hi, name=name, labels=labels, split=split, class_names=class_names)

