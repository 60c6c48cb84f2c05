"""The image inputs of ``scoresde.evaluate``: a folder written by ``scoresde sample``, any other
folder of .npz files, one .npz file, a tensor, an array or a Dataset, each read as uint8 pixels
(N, C, H, W) in pieces (``_Images``), with the rules that tell an NCHW layout from NHWC. The .npz
readers refuse pickled objects (``allow_pickle=False``); ``stats`` reads its files through them too."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

SAMPLES_META = "generate.json"           # scoresde.generate's folder metadata
ImageLike = Union[str, os.PathLike, Tensor, np.ndarray]


def _layout(shape, layout: Optional[str], what: str) -> str:
    if layout is not None:
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        return layout
    first, last = shape[1] in (1, 3), shape[-1] in (1, 3)
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    if first and last:
        raise ValueError(f"{what}: images of shape {tuple(shape)} may be NCHW or NHWC; pass layout='NCHW' or 'NHWC'")
    raise ValueError(f"{what}: expected images (N, C, H, W) or (N, H, W, C) with C = 1 or 3, got shape {tuple(shape)}")


def as_pixels(x, *, data_range: Optional[Sequence[float]] = None, layout: Optional[str] = None,
              what: str = "images") -> Tensor:
    """An image array as uint8 pixels (N, C, H, W) on the CPU (see the module docstring)."""
    from ..data import unscale
    if isinstance(x, np.ndarray):
        if x.dtype == object or not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"{what}: expected uint8 pixels or float images, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not torch.is_tensor(x):
        raise ValueError(f"{what}: expected an image array, got {type(x).__name__}")
    x = x.detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
        layout = "NCHW"
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty batch of images (N, H, W), (N, C, H, W) or (N, H, W, C), "
                         f"got shape {tuple(x.shape)}")
    if _layout(x.shape, layout, what) == "NHWC":
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise ValueError(f"{what}: expected uint8 pixels or float images, got dtype {x.dtype}")
    if data_range is None:
        raise ValueError(f"{what} are floats ({x.dtype}): their data range is needed to make them pixels "
                         "(data_range=(lo, hi); on the command line, pass the RUN_DIR they were sampled from)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contain NaN or infinite values")
    return unscale(x, data_range).contiguous()


def _image_key(z, path: str) -> str:
    """The image array of an .npz: 'samples', else 'images', else its only array."""
    for key in ("samples", "images"):
        if key in z.files:
            return key
    if len(z.files) == 1:
        return z.files[0]
    raise ValueError(f"{path}: no image array (expected the key 'samples' or 'images', or a single array; "
                     f"it holds {', '.join(z.files) or 'nothing'})")


def _open_npz(path: str):
    """np.load with allow_pickle=False; a file that needs pickles, or no zip, is one ValueError line."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({' '.join(str(e).split())[:160]})") from None


def _read_npz_array(z, key: str, path: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError:   # an object array: np.load refuses to unpickle it
        raise ValueError(f"{path}: array {key!r} holds pickled objects; refused (read with allow_pickle=False)") from None
    except Exception as e:    # a damaged member
        raise ValueError(f"{path}: array {key!r} is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


@dataclass
class _Images:
    """A source of images read in pieces: ``parts()`` yields uint8 (n, C, H, W) tensors."""

    describe: str
    parts: Callable[[], Iterator[Tensor]]
    count: Optional[int] = None
    shape: Optional[tuple] = None


def _array_images(x, data_range, layout, describe: str) -> _Images:
    pixels = as_pixels(x, data_range=data_range, layout=layout, what=describe)
    return _Images(describe, lambda: iter([pixels]), len(pixels), tuple(pixels.shape[1:]))


def _file_part(path: str, data_range, layout) -> Tensor:
    with _open_npz(path) as z:
        arr = _read_npz_array(z, _image_key(z, path), path)
    return as_pixels(arr, data_range=data_range, layout=layout, what=path)


def _samples_folder(folder: str, data_range) -> _Images:
    """A folder written by scoresde.generate: every shard, in index order."""
    path = os.path.join(folder, SAMPLES_META)
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
        num, size = int(meta["num_samples"]), int(meta["shard_size"])
        shape = tuple(int(v) for v in meta["data_shape"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{folder}: {SAMPLES_META} is not readable samples metadata") from None
    if len(shape) != 3:
        raise ValueError(f"{folder}: holds samples of shape {shape}, not images; evaluate measures images "
                         "(for 2-D toy runs use `scoresde compare`)")
    shards = [os.path.join(folder, f"shard_{k:06d}.npz") for k in range(math.ceil(num / size))]
    missing = [p for p in shards if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{folder}: {len(missing)} of {len(shards)} shards missing (first: "
                         f"{os.path.basename(missing[0])}); finish it by rerunning the same `scoresde sample` command")
    c, h, w = shape

    def parts():
        for p in shards:
            x = _file_part(p, data_range, "NHWC")
            if tuple(x.shape[1:]) != (c, h, w):
                raise ValueError(f"{p}: images of shape {tuple(x.shape[1:])}, expected {shape} ({SAMPLES_META})")
            yield x
    return _Images(f"{folder} ({num} samples)", parts, num, shape)


def image_source(x, *, data_range=None, layout: Optional[str] = None, what: str = "samples") -> _Images:
    """``x`` (a folder, a .npz file, an array, or a Dataset) as a source of uint8 image batches."""
    if hasattr(x, "pixels") and not torch.is_tensor(x) and not isinstance(x, np.ndarray):
        if x.pixels is None:
            raise ValueError(f"{what}: the data set {getattr(x, 'name', '')!r} holds points, not images")
        return _array_images(x.pixels, None, "NCHW", f"{what} ({getattr(x, 'name', 'data')})")
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        return _array_images(x, data_range, layout, what)
    if not isinstance(x, (str, os.PathLike)):
        raise ValueError(f"{what}: expected a folder, a .npz file, a tensor or an array, got {type(x).__name__}")
    path = os.fspath(x)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, SAMPLES_META)):
            return _samples_folder(path, data_range)
        files = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if n.endswith(".npz") and not n.startswith("."))
        if not files:
            raise ValueError(f"{what} {path}: a folder without .npz files")

        def parts():
            shape = None
            for p in files:
                part = _file_part(p, data_range, layout)
                if shape is not None and tuple(part.shape[1:]) != shape:
                    raise ValueError(f"{p}: images of shape {tuple(part.shape[1:])}, the folder's first file has {shape}")
                shape = tuple(part.shape[1:])
                yield part
        return _Images(f"{path} ({len(files)} files)", parts)
    if os.path.isfile(path):
        part = _file_part(path, data_range, layout)
        return _Images(path, lambda: iter([part]), len(part), tuple(part.shape[1:]))
    raise ValueError(f"{what} {path}: no such file or folder")
