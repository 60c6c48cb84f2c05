"""Layers of the reference score networks (Song et al.'s score_sde_pytorch: DDPM, DDPM++, NCSN++).

Written here from the reference's definitions; what must match it exactly is (1) the computation,
(2) the attribute names and the order in which parameters are registered, which make the
state-dict keys and the order of ``parameters()`` (the reference's EMA stores its weights as a list
in that order), and (3) the initialisation: DDPM's ``default_init``, a variance-scaling uniform
initialiser with fan_avg (weights ~ U(-a, a), a = sqrt(3 scale / ((fan_in + fan_out) / 2))), zero
biases, and a scale of 0 read as 1e-10 so that "zero-initialised" layers still carry a direction.

Blocks (h the input, e = Dense(act(temb)) broadcast over space, GN GroupNorm with eps 1e-6):
    ResnetBlockDDPM:   y = skip(h) + Conv_1(Dropout(act(GN_1(Conv_0(act(GN_0(h))) + e))))
    ResnetBlockBigGAN: the same with FIR or naive up/downsampling of both branches after act(GN_0)
    AttnBlock:         y = h + NIN_3(softmax(q k^T / sqrt(C)) v), q, k, v = NIN_0,1,2(GN_0(h))
(``skip_rescale`` divides each y by sqrt(2)). NIN is a 1x1 convolution stored as W (in, out), b.
"""
from __future__ import annotations

import inspect
import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import fir as _fir
from .attention import spatial_attention
from .checkpointing import Checkpointed

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2), "swish": nn.SiLU}


def default_init(scale: float = 1.0):
    """DDPM's initialiser: ``init(shape)`` -> variance-scaling (fan_avg) uniform weights. For a weight of
    shape (out, in, *kernel) fan_in = in * prod(kernel), fan_out = out * prod(kernel)."""
    scale = 1e-10 if scale == 0 else scale

    def init(shape) -> Tensor:
        shape = tuple(shape)
        receptive = math.prod(shape[2:])
        fan_avg = (shape[0] + shape[1]) * receptive / 2
        bound = math.sqrt(3 * scale / fan_avg)
        return (torch.rand(*shape) * 2 - 1) * bound

    return init


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0, padding: int = 1):
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=padding, bias=bias)
    conv.weight.data = default_init(init_scale)(conv.weight.shape)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, bias: bool = True, init_scale: float = 1.0):
    conv = nn.Conv2d(in_ch, out_ch, 1, bias=bias)
    conv.weight.data = default_init(init_scale)(conv.weight.shape)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def dense(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    layer.weight.data = default_init()(layer.weight.shape)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int, groups: Optional[int] = None) -> nn.GroupNorm:
    """DDPM: 32 groups; DDPM++ / NCSN++ (groups None): min(channels // 4, 32) groups."""
    return nn.GroupNorm(min(channels // 4, 32) if groups is None else groups, channels, eps=1e-6)


def timestep_embedding(timesteps: Tensor, dim: int, max_positions: int = 10000, dtype=torch.float32) -> Tensor:
    """DDPM's sinusoidal embedding: [sin(t f_j), cos(t f_j)], f_j = max_positions^(-j / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=timesteps.device) * -(math.log(max_positions) / (half - 1)))
    args = timesteps.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 == 1 else emb


def embedding_dtype(x: Tensor):
    """The reference embeds labels in float32; a float64 network does it in float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class FourierProjection(nn.Module):
    """Gaussian Fourier features [sin(2 pi x W), cos(2 pi x W)] with fixed W ~ N(0, scale^2), stored as a
    parameter ``W`` that does not require grad (as the reference stores it)."""

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        proj = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class NIN(nn.Module):
    """A 1x1 convolution with weight ``W`` of shape (in, out) and bias ``b``."""

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(default_init(init_scale)((in_dim, num_units)))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.W.t()[:, :, None, None], self.b)


class AttnBlock(Checkpointed, nn.Module):
    """Self-attention over the H W positions (one head, C channels)."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0, groups: Optional[int] = None):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels, groups)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        h = self.GroupNorm_0(x)
        h = self.NIN_3(spatial_attention(self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockDDPM(Checkpointed, nn.Module):
    """DDPM's residual block (DDPM: groups 32, init_scale 0, no rescale; DDPM++: the defaults here)."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: Optional[int] = None, temb_dim: Optional[int] = None,
                 conv_shortcut: bool = False, dropout: float = 0.1, skip_rescale: bool = False,
                 init_scale: float = 0.0, groups: Optional[int] = None):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch, groups)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, groups)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.act = act
        self.in_ch, self.out_ch, self.skip_rescale = in_ch, out_ch, skip_rescale

    def forward(self, x: Tensor, temb: Optional[Tensor] = None) -> Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch:
            x = self.Conv_2(x) if hasattr(self, "Conv_2") else self.NIN_0(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGAN(Checkpointed, nn.Module):
    """BigGAN-style residual block of NCSN++, optionally resampling (``up`` / ``down``) both branches."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: Optional[int] = None, temb_dim: Optional[int] = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.has_shortcut = in_ch != out_ch or up or down
        if self.has_shortcut:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.act = act
        self.up, self.down, self.use_fir, self.skip_rescale = up, down, fir, skip_rescale
        self.register_buffer("fir", _fir.make_kernel(fir_kernel), persistent=False)

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return _fir.upsample_2d(x, self.fir) if self.use_fir else _fir.naive_upsample_2d(x)
        if self.down:
            return _fir.downsample_2d(x, self.fir) if self.use_fir else _fir.naive_downsample_2d(x)
        return x

    def forward(self, x: Tensor, temb: Optional[Tensor] = None) -> Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.has_shortcut:
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Combine(nn.Module):
    """Merges the input pyramid into the main path: Conv_0 (1x1) on it, then concatenation or sum."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"progressive_combine must be 'cat' or 'sum', got {method!r}")
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class Upsample(nn.Module):
    """x2 upsampling: nearest (+ Conv_0 3x3), or FIR (+ the fused FIR convolution Conv2d_0)."""

    def __init__(self, in_ch: Optional[int] = None, out_ch: Optional[int] = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch)
        elif with_conv:
            self.Conv2d_0 = _fir.FIRConv2d(in_ch, out_ch, 3, up=True, resample_kernel=fir_kernel, kernel_init=default_init())
        self.with_conv, self.use_fir = with_conv, fir
        self.register_buffer("fir", _fir.make_kernel(fir_kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_fir:
            return self.Conv2d_0(x) if self.with_conv else _fir.upsample_2d(x, self.fir)
        h = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """/2 downsampling: average pooling or a stride-2 Conv_0 (padded right/bottom), or FIR (+ Conv2d_0)."""

    def __init__(self, in_ch: Optional[int] = None, out_ch: Optional[int] = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        elif with_conv:
            self.Conv2d_0 = _fir.FIRConv2d(in_ch, out_ch, 3, down=True, resample_kernel=fir_kernel, kernel_init=default_init())
        self.with_conv, self.use_fir = with_conv, fir
        self.register_buffer("fir", _fir.make_kernel(fir_kernel), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_fir:
            return self.Conv2d_0(x) if self.with_conv else _fir.downsample_2d(x, self.fir)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, stride=2)


def get_act(nonlinearity: str) -> nn.Module:
    name = str(nonlinearity).lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"nonlinearity must be one of {tuple(ACTIVATIONS)}, got {nonlinearity!r}")
    return ACTIVATIONS[name]()


def sigma_table(sigma_min: float, sigma_max: float, num_scales: int) -> Tensor:
    """The reference's ``sigmas`` buffer: exp(linspace(log sigma_max, log sigma_min, num_scales)), float64."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales, dtype=torch.float64))


class ReferenceConfigMixin:
    """``from_reference_config(config)``: build from a reference config given as nested dicts (its
    ``model`` section, and ``data``'s image_size / num_channels / centered), e.g. a checkpoint's config.json."""

    @classmethod
    def from_reference_config(cls, config: dict):
        kwargs = {k: v for k, v in dict(config["model"]).items() if k != "name"}
        data = dict(config.get("data", {}))
        kwargs.update({k: data[k] for k in ("image_size", "num_channels", "centered") if k in data})
        accepted = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown reference config key(s) {unknown}")
        return cls(**kwargs)


def check_input(net: nn.Module, x: Tensor, c: Tensor) -> None:
    size = net.image_size
    if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != (net.num_channels, size, size):
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (B, {net.num_channels}, {size}, {size}), got {got}")
    if not torch.is_tensor(c) or c.shape != x.shape[:1]:
        got = tuple(c.shape) if torch.is_tensor(c) else type(c).__name__
        raise ValueError(f"c must be a tensor of shape ({x.shape[0]},) matching the batch, got {got}")
