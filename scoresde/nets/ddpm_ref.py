"""DDPM: the ``ddpm`` model of Song et al.'s reference implementation (score_sde_pytorch), itself the
PyTorch port of Ho et al.'s U-Net (diffusion_tf).

    temb = Dense(act(Dense(Emb(c))))          Emb DDPM's sinusoidal embedding of the label c
    h    = Conv3x3(x)                        (x mapped to 2 x - 1 first unless ``centered``)
    down: per resolution num_res_blocks x [ResnetBlock (+ attention)], then Downsample
    mid:  ResnetBlock, attention, ResnetBlock
    up:   per resolution (num_res_blocks + 1) x ResnetBlock on concat(h, skip), (+ attention), Upsample
    out  = Conv3x3(act(GroupNorm(h)))         (divided by sigmas[c] with scale_by_sigma)

GroupNorm with 32 groups throughout (channel counts must be multiples of 32), no skip rescaling,
zero-initialised (scale 1e-10) last convolutions. c is the reference's label: t (N - 1) for its
continuous VP / sub-VP models (``ScoreModel(..., conditioning="time_index")``), an index into the
``sigmas`` table for its discrete VE models. The modules sit in the reference's ``all_modules`` list,
so its checkpoints load by name. The constructor takes a reference config's ``model`` keys (except
``name``) and ``data``'s image_size, num_channels, centered.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from . import refblocks as rb


class DDPM(rb.ReferenceConfigMixin, nn.Module):
    """The reference's DDPM score network (see the module docstring).

    Architecture: nf, ch_mult, num_res_blocks, attn_resolutions, dropout, resamp_with_conv, conditional,
    scale_by_sigma, nonlinearity ("swish", "elu", "relu", "lrelu"), normalization ("GroupNorm" only);
    data: image_size, num_channels, centered. sigma_min, sigma_max, num_scales make the ``sigmas``
    buffer. embedding_type is accepted and not used (the reference's ddpm always embeds its label
    sinusoidally); beta_min, beta_max, ema_rate, sigma_begin are training / SDE settings, not used.
    """

    def __init__(self, nf: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resamp_with_conv: bool = True,
                 conditional: bool = True, scale_by_sigma: bool = False, nonlinearity: str = "swish",
                 normalization: str = "GroupNorm", embedding_type: str = "positional", sigma_min: float = 0.01,
                 sigma_max: float = 50.0, num_scales: int = 1000, beta_min: float = 0.1, beta_max: float = 20.0,
                 ema_rate: float = 0.9999, sigma_begin: Optional[float] = None,
                 image_size: int = 32, num_channels: int = 3, centered: bool = True):
        super().__init__()
        if normalization != "GroupNorm":
            raise ValueError(f"normalization must be 'GroupNorm', got {normalization!r}")
        if str(embedding_type).lower() not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier' (unused by ddpm), got {embedding_type!r}")
        for name, ch in (("nf", nf), *((f"nf * ch_mult[{i}]", nf * m) for i, m in enumerate(ch_mult))):
            if ch % 32:
                raise ValueError(f"ddpm uses GroupNorm with 32 groups: {name} = {ch} must be a multiple of 32")
        self.act = act = rb.get_act(nonlinearity)
        self.register_buffer("sigmas", rb.sigma_table(sigma_min, sigma_max, num_scales))
        self.nf, self.num_res_blocks, self.image_size, self.num_channels = nf, num_res_blocks, image_size, num_channels
        self.num_resolutions = L = len(ch_mult)
        self.attn_levels = [image_size // 2 ** i in tuple(attn_resolutions) for i in range(L)]
        self.conditional, self.centered, self.scale_by_sigma = conditional, centered, scale_by_sigma

        def resblock(in_ch, out_ch=None):
            return rb.ResnetBlockDDPM(act, in_ch, out_ch, temb_dim=4 * nf, dropout=dropout, skip_rescale=False,
                                      init_scale=0.0, groups=32)

        def attn(ch):
            return rb.AttnBlock(ch, skip_rescale=False, init_scale=0.0, groups=32)

        mods = [rb.dense(nf, 4 * nf), rb.dense(4 * nf, 4 * nf)] if conditional else []
        mods.append(rb.conv3x3(num_channels, nf))
        skips, ch = [nf], nf
        for level in range(L):
            for _ in range(num_res_blocks):
                mods.append(resblock(ch, nf * ch_mult[level]))
                ch = nf * ch_mult[level]
                if self.attn_levels[level]:
                    mods.append(attn(ch))
                skips.append(ch)
            if level != L - 1:
                mods.append(rb.Downsample(in_ch=ch, with_conv=resamp_with_conv))
                skips.append(ch)
        mods += [resblock(ch), attn(ch), resblock(ch)]
        for level in reversed(range(L)):
            for _ in range(num_res_blocks + 1):
                mods.append(resblock(ch + skips.pop(), nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            if self.attn_levels[level]:
                mods.append(attn(ch))
            if level != 0:
                mods.append(rb.Upsample(in_ch=ch, with_conv=resamp_with_conv))
        assert not skips
        mods += [rb.group_norm(ch, 32), rb.conv3x3(ch, num_channels, init_scale=0.0)]
        self.all_modules = nn.ModuleList(mods)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        rb.check_input(self, x, c)
        it = iter(self.all_modules)
        temb = None
        if self.conditional:
            temb = next(it)(rb.timestep_embedding(c, self.nf, dtype=rb.embedding_dtype(x)))
            temb = next(it)(self.act(temb))
        h = x if self.centered else 2 * x - 1.0

        L = self.num_resolutions
        hs = [next(it)(h)]
        for level in range(L):
            for _ in range(self.num_res_blocks):
                h = next(it)(hs[-1], temb)
                if self.attn_levels[level]:
                    h = next(it)(h)
                hs.append(h)
            if level != L - 1:
                hs.append(next(it)(hs[-1]))
        h = next(it)(hs[-1], temb)
        h = next(it)(h)
        h = next(it)(h, temb)
        for level in reversed(range(L)):
            for _ in range(self.num_res_blocks + 1):
                h = next(it)(torch.cat([h, hs.pop()], dim=1), temb)
            if self.attn_levels[level]:
                h = next(it)(h)
            if level != 0:
                h = next(it)(h)
        norm, conv = next(it), next(it)
        h = conv(self.act(norm(h)))
        if self.scale_by_sigma:
            h = h / self.sigmas[c.long()].to(h.dtype).reshape(-1, 1, 1, 1)
        return h
