"""8-bit pixels <-> model space: scaling, its inverse, uniform dequantization, resizing."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ._args import _data_range, _generator_device


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

