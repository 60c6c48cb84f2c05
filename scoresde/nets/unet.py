"""A U-Net score network for images in the spirit of DDPM++ / NCSN++ (Ho et al. 2020; Song et al. 2021).

    temb = W_2 SiLU(W_1 Emb(c))                           c = t or log sigma(t), Emb Fourier or sinusoidal
    h    = Conv3x3(x)
    down: per resolution, num_res_blocks x [ResBlock (+ self-attention)], then a stride-2 conv
    mid:  ResBlock, self-attention, ResBlock
    up:   per resolution, (num_res_blocks + 1) x [ResBlock on concat(h, skip) (+ attention)], then
          nearest-neighbour x2 + Conv3x3
    out  = Conv3x3(SiLU(GroupNorm(h)))                     zero-initialised

A class-conditional U-Net (``num_classes`` K > 0) adds a learned class embedding to temb (as the
guided-diffusion and classifier-free guidance U-Nets do): temb = W_2 SiLU(W_1 Emb(c)) + E_class[y],
y in {0 .. K - 1} or the null class K (y None).

ResBlock(h) = (Skip(h) + Conv(Dropout(SiLU(GN(Conv(SiLU(GN(h))) + Dense(SiLU(temb))))))) / sqrt(2),
AttnBlock(h) = (h + Proj(softmax(Q K^T / sqrt(C)) V)) / sqrt(2), with Q, K, V 1x1 convs of GN(h).
The 1/sqrt(2) ("skip_rescale", DDPM++) keeps the variance of the residual stream constant; the last
conv of every residual branch and the output conv start at zero (DDPM), so each block starts as
the identity and the network as the zero function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import positive_int
from .attention import spatial_attention
from .checkpointing import Checkpointed
from .embeddings import ClassEmbedding, add_class_embedding, check_conditioning, check_num_classes, make_embedding


def _int_tuple(value, name: str, *, allow_empty: bool) -> tuple:
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or (not items and not allow_empty) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}sequence of positive integers, got {value!r}")
    return items


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups <= num_groups that divides ``channels``."""
    groups = max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class ResBlock(Checkpointed, nn.Module):
    """Residual block with time conditioning added after the first conv (DDPM++'s ResnetBlockDDPM)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, skip_rescale: bool, num_groups: int):
        super().__init__()
        self.norm1 = group_norm(in_ch, num_groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = group_norm(out_ch, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.skip(x) + h) * self.scale


class AttnBlock(Checkpointed, nn.Module):
    """Single-head self-attention over all H*W positions."""

    def __init__(self, channels: int, skip_rescale: bool, num_groups: int):
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(spatial_attention(*self.qkv(self.norm(x)).chunk(3, dim=1)))
        return (x + h) * self.scale


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def check_unet_args(in_channels, channels, channel_mults, num_res_blocks, attn_resolutions, dropout, image_size,
                    num_groups) -> Tuple[tuple, set]:
    """Validate the U-Net's shape arguments (shared with ``UNetClassifier``); returns channel_mults as a
    tuple and attn_resolutions as a set."""
    positive_int(in_channels, "in_channels")
    positive_int(channels, "channels")
    channel_mults = _int_tuple(channel_mults, "channel_mults", allow_empty=False)
    if isinstance(num_res_blocks, bool) or not isinstance(num_res_blocks, int) or num_res_blocks < 0:
        raise ValueError(f"num_res_blocks must be a non-negative integer, got {num_res_blocks!r}")
    attn_resolutions = set(_int_tuple(attn_resolutions, "attn_resolutions", allow_empty=True))
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    positive_int(image_size, "image_size")
    factor = 2 ** (len(channel_mults) - 1)
    if image_size % factor:
        raise ValueError(f"image_size must be divisible by 2^(len(channel_mults) - 1) = {factor} so every "
                         f"downsampling halves it exactly, got image_size={image_size} with channel_mults={channel_mults}")
    positive_int(num_groups, "num_groups")
    return channel_mults, attn_resolutions


@dataclass
class Encoder:
    """What ``build_encoder`` leaves for the rest of a network: the checked ``channel_mults`` and
    ``attn_resolutions``, the layer builders ``block(in, out)`` and ``attn(ch)``, the time-embedding
    width, the channel count of every feature map kept for a skip connection, and the channel count
    and resolution at the bottom."""
    channel_mults: tuple
    attn_resolutions: set
    block: Callable[[int, int], nn.Module]
    attn: Callable[[int], nn.Module]
    temb_dim: int
    skips: List[int]
    ch: int
    res: int


def build_encoder(net: nn.Module, in_channels: int, channels: int, channel_mults: Sequence[int], num_res_blocks: int,
                  attn_resolutions: Sequence[int], dropout: float, image_size: int, embedding: str,
                  fourier_scale: float, skip_rescale: bool, num_groups: int) -> Encoder:
    """Check the U-Net's arguments (``check_unet_args``) and give ``net`` what the score U-Net and its
    classifier share: ``in_channels``, ``image_size``, the time embedding (``embed``, ``time_mlp``),
    the input conv, the down path and the middle block (``conv_in``, ``down``, ``mid``), built in
    that order (so a seed draws the same initial weights in both)."""
    channel_mults, attn_resolutions = check_unet_args(in_channels, channels, channel_mults, num_res_blocks,
                                                      attn_resolutions, dropout, image_size, num_groups)
    net.in_channels, net.image_size = in_channels, image_size
    temb_dim = 4 * channels
    net.embed = make_embedding(embedding, channels, fourier_scale)
    net.time_mlp = nn.Sequential(nn.Linear(channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))

    def block(i: int, o: int) -> nn.Module:
        return ResBlock(i, o, temb_dim, dropout, skip_rescale, num_groups)

    def attn(c: int) -> nn.Module:
        return AttnBlock(c, skip_rescale, num_groups)

    net.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
    net.down = nn.ModuleList()
    skips, ch, res = [channels], channels, image_size
    for level, mult in enumerate(channel_mults):
        for _ in range(num_res_blocks):
            layers = [block(ch, channels * mult)]
            ch = channels * mult
            if res in attn_resolutions:
                layers.append(attn(ch))
            net.down.append(nn.ModuleList(layers))
            skips.append(ch)
        if level != len(channel_mults) - 1:
            net.down.append(nn.ModuleList([Downsample(ch)]))
            skips.append(ch)
            res //= 2
    net.mid = nn.ModuleList([block(ch, ch), attn(ch), block(ch, ch)])
    return Encoder(channel_mults, attn_resolutions, block, attn, temb_dim, skips, ch, res)


def check_image(net: nn.Module, x: Tensor) -> None:
    expected = (net.in_channels, net.image_size, net.image_size)
    if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != expected:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {got}")


def run_layers(layers: nn.ModuleList, h: Tensor, temb: Tensor) -> Tensor:
    for layer in layers:
        h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
    return h


class UNet(nn.Module):
    """U-Net f(x, c) for images x of shape (B, in_channels, image_size, image_size), c of shape (B,).

    Args:
        in_channels: image channels (the output has the same).
        channels: base width; level l has channels * channel_mults[l] channels.
        channel_mults: one entry per resolution; the image is halved between levels, so image_size
            must be divisible by 2^(len(channel_mults) - 1) (28 -> 14 -> 7 for (1, 2, 2)).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: resolutions (side lengths) at which self-attention follows each block.
        dropout: dropout rate inside the residual blocks.
        image_size: side length of the (square) input.
        embedding: "fourier" or "sinusoidal" embedding of c; fourier_scale: std of its frequencies.
        skip_rescale: scale residual sums by 1/sqrt(2).
        num_groups: GroupNorm groups (the largest divisor of the channel count up to this).
        num_classes: 0 (unconditional) or the number of classes K of a class-conditional network.
    ``forward(x, c, y=None)``: y (B,) holds class labels in {0 .. K - 1} or the null class K, None
    meaning the null class (K > 0 only).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, channel_mults: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 image_size: int = 32, embedding: str = "fourier", fourier_scale: float = 16.0,
                 skip_rescale: bool = True, num_groups: int = 32, num_classes: int = 0):
        super().__init__()
        enc = build_encoder(self, in_channels, channels, channel_mults, num_res_blocks, attn_resolutions, dropout,
                            image_size, embedding, fourier_scale, skip_rescale, num_groups)
        self.num_classes = check_num_classes(num_classes)
        skips, ch, res, block, attn = enc.skips, enc.ch, enc.res, enc.block, enc.attn
        # Up path: each block consumes one skip, in reverse order.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(enc.channel_mults))):
            for _ in range(num_res_blocks + 1):
                layers = [block(ch + skips.pop(), channels * mult)]
                ch = channels * mult
                if res in enc.attn_resolutions:
                    layers.append(attn(ch))
                self.up.append(nn.ModuleList(layers))
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(ch)]))
                res *= 2
        assert not skips, "every skip connection is consumed once"
        self.norm_out = group_norm(ch, num_groups)
        self.conv_out = _zero(nn.Conv2d(ch, in_channels, 3, padding=1))
        if num_classes:
            # Only then (an unconditional network keeps its state-dict keys), and last, so the other
            # layers draw the same initial weights as the unconditional network's for a seed.
            self.class_embed = ClassEmbedding(num_classes, enc.temb_dim)

    def forward(self, x: Tensor, c: Tensor, y: Optional[Tensor] = None) -> Tensor:
        check_image(self, x)
        check_conditioning(c, x)
        temb = add_class_embedding(self, self.time_mlp(self.embed(c)), y, x)
        h = self.conv_in(x)
        hs = [h]
        for layers in self.down:
            h = run_layers(layers, h, temb)
            hs.append(h)
        h = run_layers(self.mid, h, temb)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = run_layers(layers, h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))
