"""FIR up/down-sampling of images (StyleGAN2's upfirdn2d), as NCSN++ uses it, in plain PyTorch.

``upfirdn2d(x, k, up, down, pad)`` is, per channel: insert ``up - 1`` zeros after every pixel along
each axis, zero-pad ``pad = (p0, p1)`` pixels before / after along each axis (a negative pad crops),
convolve with the 2-D filter ``k`` (a true convolution: k flipped, then correlated), and keep every
``down``-th pixel starting at 0. Every step is one batched tensor op (reshape + pad, then one
depthwise ``conv2d`` with stride ``down``), so it runs on any device without a compiled extension.

On top of it, with the filter normalised to sum 1 (times ``factor ** 2`` when upsampling):
``upsample_2d`` / ``downsample_2d`` (filter only), and the fused ``upsample_conv_2d`` (zero
insertion, a 2-D convolution with w, then the filter, padding once) and ``conv_downsample_2d``
(the filter, then a strided convolution with w). ``FIRConv2d`` holds w and its bias under the
reference's parameter names (``weight``, ``bias``).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def make_kernel(k: Sequence[float]) -> Tensor:
    """The normalised 2-D filter of a 1-D (separable: outer product) or 2-D ``k``: float32, sum 1."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.dim() == 1:
        k = torch.outer(k, k)
    if k.dim() != 2 or k.shape[0] != k.shape[1] or k.numel() == 0:
        raise ValueError(f"fir_kernel must be a non-empty 1-D sequence or a square 2-D array, got shape {tuple(k.shape)}")
    return k / k.sum()


def upfirdn2d(x: Tensor, k: Tensor, up: int = 1, down: int = 1, pad: Tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample (zero insertion) by ``up``, pad by ``pad`` = (before, after), filter with ``k``,
    downsample by ``down``; x (N, C, H, W), k (kh, kw). The same (up, down, pad) on both axes."""
    N, C, H, W = x.shape
    y = x
    if up > 1:
        # (N, C, H, 1, W, 1) -> pad the two singleton axes with up - 1 zeros -> (N, C, H up, W up)
        y = F.pad(x.reshape(N, C, H, 1, W, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(N, C, H * up, W * up)
    p0, p1 = pad
    if p0 or p1:
        y = F.pad(y, [p0, p1, p0, p1])  # negative values crop
    # one depthwise convolution: the same flipped filter on every channel
    weight = torch.flip(k, [0, 1]).to(device=y.device, dtype=y.dtype)[None, None].expand(C, 1, *k.shape).contiguous()
    return F.conv2d(y, weight, stride=down, groups=C)


def upsample_2d(x: Tensor, k: Tensor, factor: int = 2) -> Tensor:
    """(N, C, H, W) -> (N, C, H factor, W factor) through the filter k (sum 1), gain factor^2."""
    p = k.shape[0] - factor
    return upfirdn2d(x, k * factor ** 2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Tensor, k: Tensor, factor: int = 2) -> Tensor:
    """(N, C, H, W) -> (N, C, H / factor, W / factor) through the filter k (sum 1)."""
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: Tensor, w: Tensor, k: Tensor, factor: int = 2) -> Tensor:
    """Zero-insertion upsampling, the 2-D convolution (cross-correlation, as conv2d) with w of shape
    (out, in, r, r), then the filter k (gain factor^2), padded once: (N, in, H, W) -> (N, out, H factor, W factor).

    Zero insertion followed by a full correlation with w is exactly ``conv_transpose2d`` with w flipped
    in space and its two channel axes swapped."""
    r = w.shape[-1]
    if w.shape[-2] != r:
        raise ValueError(f"the convolution kernel must be square, got {tuple(w.shape)}")
    y = F.conv_transpose2d(x, torch.flip(w, [2, 3]).transpose(0, 1), stride=factor)
    p = (k.shape[0] - factor) - (r - 1)
    return upfirdn2d(y, k * factor ** 2, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: Tensor, w: Tensor, k: Tensor, factor: int = 2) -> Tensor:
    """The filter k, then the 2-D convolution with w (out, in, r, r) at stride ``factor``, padded once."""
    r = w.shape[-1]
    p = (k.shape[0] - factor) + (r - 1)
    return F.conv2d(upfirdn2d(x, k, pad=((p + 1) // 2, p // 2)), w, stride=factor)


def naive_upsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    """Nearest-neighbour upsampling (each pixel repeated factor x factor times)."""
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def naive_downsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    """Mean over non-overlapping factor x factor blocks."""
    N, C, H, W = x.shape
    return x.reshape(N, C, H // factor, factor, W // factor, factor).mean(dim=(3, 5))


class FIRConv2d(nn.Module):
    """A square convolution fused with FIR upsampling (``up``) or downsampling (``down``), or plain
    ('same' padding) when neither. Parameters ``weight`` (out, in, r, r) and ``bias`` (out,)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, up: bool = False, down: bool = False,
                 resample_kernel: Sequence[float] = (1, 3, 3, 1), use_bias: bool = True, kernel_init=None):
        super().__init__()
        if up and down:
            raise ValueError("FIRConv2d: up and down are exclusive")
        if kernel < 1 or kernel % 2 != 1:
            raise ValueError(f"kernel must be an odd positive integer, got {kernel!r}")
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kernel, kernel))
        if kernel_init is not None:
            self.weight.data = kernel_init(self.weight.shape)
        self.bias = nn.Parameter(torch.zeros(out_ch)) if use_bias else None
        self.up, self.down, self.kernel = up, down, kernel
        self.register_buffer("fir", make_kernel(resample_kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            x = upsample_conv_2d(x, self.weight, self.fir)
        elif self.down:
            x = conv_downsample_2d(x, self.weight, self.fir)
        else:
            x = F.conv2d(x, self.weight, padding=self.kernel // 2)
        return x if self.bias is None else x + self.bias[None, :, None, None]
