"""Time-dependent ("noisy") classifiers p_t(y | x_t) for classifier guidance (Song et al. 2021, appendix I;
Dhariwal & Nichol 2021).

A noisy classifier sees a perturbed sample x_t ~ p_0t(x_t | x_0) and the same conditioning c of t as the
score network (t, log sigma(t), ...; chosen by ``scoresde.score.NoisyClassifier``) and returns logits
(B, K); log_softmax of them estimates log p_t(y | x_t), whose input gradient is what classifier guidance
adds to the score. Both networks are the score networks' encoders with their time embedding:

* ``UNetClassifier``: the downsampling half of ``UNet`` (residual blocks with the time embedding,
  self-attention, stride-2 convs) and its middle block, then GroupNorm, SiLU, global average pooling
  and a linear head;
* ``MLPClassifier``: the residual blocks of ``MLP``, then SiLU and a linear head.

The head starts at zero, so an untrained classifier is the uniform distribution over the K classes
(cross-entropy log K), as the score networks start as the zero function.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import positive_int
from .embeddings import check_conditioning, make_embedding
from .mlp import _ResidualBlock
from .unet import AttnBlock, ResBlock, _zero, build_encoder, check_image, check_unet_args, group_norm, run_layers


def _classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (the classes a classifier tells apart), "
                         f"got {num_classes!r}")
    return num_classes


class MLPClassifier(nn.Module):
    """Logits f(x, c) (B, K) for data of ``dim`` elements per sample: MLP's trunk with a linear head.

    Args: as ``MLP`` (dim, hidden, depth, embed_dim, embedding, fourier_scale), and num_classes K >= 2.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, embed_dim: int = 128,
                 embedding: str = "fourier", fourier_scale: float = 16.0, num_classes: int = 2):
        super().__init__()
        self.dim = positive_int(dim, "dim")
        positive_int(hidden, "hidden")
        positive_int(depth, "depth")
        self.num_classes = _classes(num_classes)
        self.embed = make_embedding(embedding, embed_dim, fourier_scale)
        self.time_mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, hidden) for _ in range(depth))
        self.head = _zero(nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if not torch.is_tensor(x) or x.dim() < 2 or x[0].numel() != self.dim:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.dim}) or (B, ...) with {self.dim} elements per sample, got {got}")
        check_conditioning(c, x)
        temb = self.time_mlp(self.embed(c))
        h = self.inp(x.reshape(x.shape[0], self.dim))
        for block in self.blocks:
            h = block(h, temb)
        return self.head(F.silu(h))


class UNetClassifier(nn.Module):
    """Logits f(x, c) (B, K) for images (B, in_channels, image_size, image_size): UNet's encoder.

    Args: as ``UNet`` (in_channels, channels, channel_mults, num_res_blocks, attn_resolutions, dropout,
    image_size, embedding, fourier_scale, skip_rescale, num_groups), and num_classes K >= 2. The
    same keys build the same encoder as a U-Net score network's down path and middle block.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, channel_mults: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 image_size: int = 32, embedding: str = "fourier", fourier_scale: float = 16.0,
                 skip_rescale: bool = True, num_groups: int = 32, num_classes: int = 10):
        super().__init__()
        channel_mults, attn_resolutions = check_unet_args(in_channels, channels, channel_mults, num_res_blocks,
                                                          attn_resolutions, dropout, image_size, num_groups)
        self.in_channels, self.image_size = in_channels, image_size
        self.num_classes = _classes(num_classes)

        temb_dim = 4 * channels
        self.embed = make_embedding(embedding, channels, fourier_scale)
        self.time_mlp = nn.Sequential(nn.Linear(channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        _, ch, _ = build_encoder(self, in_channels, channels, channel_mults, num_res_blocks, attn_resolutions,
                                 image_size, lambda i, o: ResBlock(i, o, temb_dim, dropout, skip_rescale, num_groups),
                                 lambda c: AttnBlock(c, skip_rescale, num_groups))
        self.norm_out = group_norm(ch, num_groups)
        self.head = _zero(nn.Linear(ch, num_classes))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        check_image(self, x)
        check_conditioning(c, x)
        temb = self.time_mlp(self.embed(c))
        h = self.conv_in(x)
        for layers in list(self.down) + [self.mid]:
            h = run_layers(layers, h, temb)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))


CLASSIFIERS = {"mlp": MLPClassifier, "unet": UNetClassifier}
