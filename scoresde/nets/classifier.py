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

from torch import Tensor, nn
from torch.nn import functional as F

from .embeddings import check_conditioning
from .mlp import build_trunk, trunk_features
from .unet import _zero, build_encoder, check_image, group_norm, run_layers


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
        build_trunk(self, dim, hidden, depth, embed_dim, embedding, fourier_scale)
        self.num_classes = _classes(num_classes)
        self.head = _zero(nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.head(trunk_features(self, x, c))


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
        ch = build_encoder(self, in_channels, channels, channel_mults, num_res_blocks, attn_resolutions, dropout,
                           image_size, embedding, fourier_scale, skip_rescale, num_groups).ch
        self.num_classes = _classes(num_classes)
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
