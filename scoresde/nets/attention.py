"""Self-attention over the positions of a feature map, shared by the U-Net's and the reference
networks' attention blocks."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def spatial_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q^T k / sqrt(C)) v over the H W positions of (B, C, H, W) maps, one head; the result
    has shape (B, C, H, W).

    The maps go to ``F.scaled_dot_product_attention`` as (B, 1, HW, C) with the channels contiguous
    (a copy only where they are not, i.e. for NCHW maps): SDPA runs its fused kernels (flash or
    memory-efficient on a GPU, flash on the CPU) only for 4-D inputs whose last dimension has
    stride 1, and otherwise falls back to an unfused bmm, softmax and bmm."""
    B, C, H, W = q.shape

    def positions_by_channels(a: Tensor) -> Tensor:
        a = a.reshape(B, 1, C, H * W).transpose(-1, -2)
        return a if a.stride(-1) == 1 else a.contiguous()

    h = F.scaled_dot_product_attention(positions_by_channels(q), positions_by_channels(k), positions_by_channels(v))
    return h.squeeze(1).transpose(-1, -2).reshape(B, C, H, W)
