"""NCSN++ / DDPM++: the ``ncsnpp`` model of Song et al.'s reference implementation (score_sde_pytorch).

One class covers both families of the paper's configs: DDPM++ (``fir=False``, positional embedding of
the time index, no input/output pyramid) and NCSN++ (FIR up/downsampling, an input pyramid merged
by "input_skip" or "residual", an output pyramid "output_skip" or "residual", Gaussian Fourier
features of log sigma). Called as ``net(x, c)``, c the reference's label: the time index t (N - 1)
for its continuous VP / sub-VP models (``ScoreModel(..., conditioning="time_index")``) or sigma(t)
for its continuous VE models (``conditioning="sigma"``, the Fourier embedding takes log sigma
itself, and ``scale_by_sigma`` divides the output by sigma).

The modules sit, in order of use, in one ``nn.ModuleList`` named ``all_modules``, as in the
reference, so that its checkpoints load by name and the order of ``parameters()`` is its EMA order.
The constructor takes every key of a reference config's ``model`` section (except ``name``), and
``image_size``, ``num_channels``, ``centered`` of its ``data`` section: see ``NCSNpp.__init__``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from . import refblocks as rb

_CHOICES = {"resblock_type": ("ddpm", "biggan"), "progressive": ("none", "output_skip", "residual"),
            "progressive_input": ("none", "input_skip", "residual"), "progressive_combine": ("sum", "cat"),
            "embedding_type": ("positional", "fourier"), "normalization": ("GroupNorm",),
            "attention_type": ("ddpm",), "conv_size": (3,)}


class NCSNpp(rb.ReferenceConfigMixin, nn.Module):
    """The reference's NCSN++ / DDPM++ score network (see the module docstring).

    Architecture: nf, ch_mult, num_res_blocks, attn_resolutions, dropout, resamp_with_conv, conditional,
    fir, fir_kernel, skip_rescale, resblock_type, progressive, progressive_input, progressive_combine,
    embedding_type, fourier_scale, init_scale, scale_by_sigma, nonlinearity ("swish", "elu", "relu",
    "lrelu"), normalization ("GroupNorm" only), attention_type ("ddpm" only), conv_size (3 only);
    data: image_size, num_channels, centered (False: the net maps x in [0, 1] to 2 x - 1 first).
    sigma_min, sigma_max, num_scales make the ``sigmas`` buffer (the discrete noise levels, largest
    first), which a positional-embedding model with scale_by_sigma indexes by the label. beta_min,
    beta_max, ema_rate, sigma_begin are training / SDE settings, accepted and not used.
    """

    def __init__(self, nf: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resamp_with_conv: bool = True,
                 conditional: bool = True, fir: bool = False, fir_kernel: Sequence[int] = (1, 3, 3, 1),
                 skip_rescale: bool = True, resblock_type: str = "biggan", progressive: str = "none",
                 progressive_input: str = "none", progressive_combine: str = "sum",
                 embedding_type: str = "positional", fourier_scale: float = 16.0, init_scale: float = 0.0,
                 scale_by_sigma: bool = False, nonlinearity: str = "swish", normalization: str = "GroupNorm",
                 attention_type: str = "ddpm", conv_size: int = 3, sigma_min: float = 0.01, sigma_max: float = 50.0,
                 num_scales: int = 1000, beta_min: float = 0.1, beta_max: float = 20.0, ema_rate: float = 0.9999,
                 sigma_begin: Optional[float] = None,
                 image_size: int = 32, num_channels: int = 3, centered: bool = True):
        super().__init__()
        resblock_type, progressive, progressive_input, progressive_combine, embedding_type = (
            str(v).lower() for v in (resblock_type, progressive, progressive_input, progressive_combine, embedding_type))
        for key, value in dict(resblock_type=resblock_type, progressive=progressive, progressive_input=progressive_input,
                               progressive_combine=progressive_combine, embedding_type=embedding_type,
                               normalization=normalization, attention_type=attention_type, conv_size=conv_size).items():
            if value not in _CHOICES[key]:
                raise ValueError(f"{key} must be one of {_CHOICES[key]}, got {value!r}")
        self.act = act = rb.get_act(nonlinearity)
        self.register_buffer("sigmas", rb.sigma_table(sigma_min, sigma_max, num_scales))
        self.nf, self.num_res_blocks, self.image_size, self.num_channels = nf, num_res_blocks, image_size, num_channels
        self.num_resolutions = L = len(ch_mult)
        self.resolutions = [image_size // 2 ** i for i in range(L)]
        self.attn_levels = [r in tuple(attn_resolutions) for r in self.resolutions]
        self.conditional, self.skip_rescale, self.centered = conditional, skip_rescale, centered
        self.resblock_type, self.progressive, self.progressive_input = resblock_type, progressive, progressive_input
        self.embedding_type, self.scale_by_sigma = embedding_type, scale_by_sigma
        fir_kernel = tuple(fir_kernel)

        def resblock(in_ch, out_ch=None, up=False, down=False):
            if resblock_type == "ddpm":
                return rb.ResnetBlockDDPM(act, in_ch, out_ch, temb_dim=4 * nf, dropout=dropout,
                                          skip_rescale=skip_rescale, init_scale=init_scale)
            return rb.ResnetBlockBigGAN(act, in_ch, out_ch, temb_dim=4 * nf, up=up, down=down, dropout=dropout,
                                        fir=fir, fir_kernel=fir_kernel, skip_rescale=skip_rescale, init_scale=init_scale)

        def attn(ch):
            return rb.AttnBlock(ch, skip_rescale=skip_rescale, init_scale=init_scale)

        def resample(cls, in_ch, out_ch=None, with_conv=resamp_with_conv):
            return cls(in_ch=in_ch, out_ch=out_ch, with_conv=with_conv, fir=fir, fir_kernel=fir_kernel)

        if progressive == "output_skip":
            self.pyramid_upsample = rb.Upsample(with_conv=False, fir=fir, fir_kernel=fir_kernel)
        if progressive_input == "input_skip":
            self.pyramid_downsample = rb.Downsample(with_conv=False, fir=fir, fir_kernel=fir_kernel)

        mods = []
        if embedding_type == "fourier":
            mods.append(rb.FourierProjection(embedding_size=nf, scale=fourier_scale))
        if conditional:
            mods += [rb.dense(2 * nf if embedding_type == "fourier" else nf, 4 * nf), rb.dense(4 * nf, 4 * nf)]

        C = num_channels
        mods.append(rb.conv3x3(C, nf))
        skips, ch, pyramid_in = [nf], nf, C
        for level in range(L):  # downsampling path
            for _ in range(num_res_blocks):
                mods.append(resblock(ch, nf * ch_mult[level]))
                ch = nf * ch_mult[level]
                if self.attn_levels[level]:
                    mods.append(attn(ch))
                skips.append(ch)
            if level != L - 1:
                mods.append(resample(rb.Downsample, ch) if resblock_type == "ddpm" else resblock(ch, down=True))
                if progressive_input == "input_skip":
                    mods.append(rb.Combine(pyramid_in, ch, method=progressive_combine))
                    ch = 2 * ch if progressive_combine == "cat" else ch
                elif progressive_input == "residual":
                    mods.append(resample(rb.Downsample, pyramid_in, ch, with_conv=True))
                    pyramid_in = ch
                skips.append(ch)

        ch = skips[-1]
        mods += [resblock(ch), attn(ch), resblock(ch)]

        pyramid_ch = 0
        for level in reversed(range(L)):  # upsampling path
            for _ in range(num_res_blocks + 1):
                mods.append(resblock(ch + skips.pop(), nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            if self.attn_levels[level]:
                mods.append(attn(ch))
            if progressive != "none":
                if level == L - 1 or progressive == "output_skip":
                    mods.append(rb.group_norm(ch))
                    if progressive == "output_skip":
                        mods.append(rb.conv3x3(ch, C, init_scale=init_scale))
                        pyramid_ch = C
                    else:
                        mods.append(rb.conv3x3(ch, ch))
                        pyramid_ch = ch
                else:  # residual, below the top level
                    mods.append(resample(rb.Upsample, pyramid_ch, ch, with_conv=True))
                    pyramid_ch = ch
            if level != 0:
                mods.append(resample(rb.Upsample, ch) if resblock_type == "ddpm" else resblock(ch, up=True))
        assert not skips

        if progressive != "output_skip":
            mods += [rb.group_norm(ch), rb.conv3x3(ch, C, init_scale=init_scale)]
        self.all_modules = nn.ModuleList(mods)

    def _merge(self, a: Tensor, b: Tensor) -> Tensor:
        return (a + b) / math.sqrt(2.0) if self.skip_rescale else a + b

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        rb.check_input(self, x, c)
        it = iter(self.all_modules)
        if self.embedding_type == "fourier":
            temb = next(it)(torch.log(c))
        else:
            temb = rb.timestep_embedding(c, self.nf, dtype=rb.embedding_dtype(x))
        if self.conditional:
            temb = next(it)(temb)
            temb = next(it)(self.act(temb))
        else:
            temb = None
        if not self.centered:
            x = 2 * x - 1.0

        L, ddpm_blocks = self.num_resolutions, self.resblock_type == "ddpm"
        pyramid_in = x if self.progressive_input != "none" else None
        hs = [next(it)(x)]
        for level in range(L):
            for _ in range(self.num_res_blocks):
                h = next(it)(hs[-1], temb)
                if self.attn_levels[level]:
                    h = next(it)(h)
                hs.append(h)
            if level != L - 1:
                h = next(it)(hs[-1]) if ddpm_blocks else next(it)(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    pyramid_in = self.pyramid_downsample(pyramid_in)
                    h = next(it)(pyramid_in, h)
                elif self.progressive_input == "residual":
                    pyramid_in = h = self._merge(next(it)(pyramid_in), h)
                hs.append(h)

        h = next(it)(hs[-1], temb)
        h = next(it)(h)
        h = next(it)(h, temb)

        pyramid = None
        for level in reversed(range(L)):
            for _ in range(self.num_res_blocks + 1):
                h = next(it)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_levels[level]:
                h = next(it)(h)
            if self.progressive != "none":
                if level == L - 1 or self.progressive == "output_skip":
                    norm, conv = next(it), next(it)
                    out = conv(self.act(norm(h)))
                    pyramid = out if pyramid is None else self.pyramid_upsample(pyramid) + out
                else:
                    pyramid = h = self._merge(next(it)(pyramid), h)
            if level != 0:
                h = next(it)(h) if ddpm_blocks else next(it)(h, temb)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            norm, conv = next(it), next(it)
            h = conv(self.act(norm(h)))
        if self.scale_by_sigma:  # the label is sigma (Fourier), or an index into the sigma table
            used_sigmas = c if self.embedding_type == "fourier" else self.sigmas[c.long()]
            h = h / used_sigmas.to(h.dtype).reshape(-1, *([1] * (h.dim() - 1)))
        return h
