"""A residual MLP score network for low-dimensional data (2-D toy sets, small vectors).

    e     = Emb(c)                                    Fourier or sinusoidal features of c (B,)
    temb  = W_t2 SiLU(W_t1 e)                         shared time embedding
    h_0   = W_in x
    h_l+1 = h_l + W_l2 SiLU(W_l1 SiLU(h_l) + E_l temb),   l = 0 .. depth-1
    out   = W_out SiLU(h_depth)                       W_out zero-initialised

A class-conditional MLP (``num_classes`` K > 0) adds a learned class embedding to temb,
temb = W_t2 SiLU(W_t1 e) + E_class[y], with y in {0 .. K - 1} or the null class K (y None).

Each residual block is DDPM's two-layer residual block with the convolutions replaced by linear
maps; the time embedding enters every block through its own projection E_l. The blocks carry no
normalisation: on 2-D data, LayerNorm inside them made training slower per step and gave a worse
checkerboard likelihood at equal wall-clock time. The zero output layer makes the untrained network
the zero function, so training starts from the prediction 0 (for "eps": a zero score) rather than
from a random field of large scores.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .._checks import positive_int
from .embeddings import ClassEmbedding, add_class_embedding, check_conditioning, check_num_classes, make_embedding


class _ResidualBlock(nn.Module):
    """h + W2 SiLU(W1 SiLU(h) + E temb)."""

    def __init__(self, hidden: int, temb_dim: int):
        super().__init__()
        self.lin1 = nn.Linear(hidden, hidden)
        self.temb = nn.Linear(temb_dim, hidden)
        self.lin2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return h + self.lin2(nn.functional.silu(self.lin1(nn.functional.silu(h)) + self.temb(temb)))


def build_trunk(net: nn.Module, dim: int, hidden: int, depth: int, embed_dim: int, embedding: str,
                fourier_scale: float) -> None:
    """Check the MLP's sizes and give ``net`` what the score MLP and its classifier share: ``dim``,
    the time embedding (``embed``, ``time_mlp``), ``inp`` and the residual ``blocks``, in that order
    (so a seed draws the same initial weights in both)."""
    net.dim = positive_int(dim, "dim")
    positive_int(hidden, "hidden")
    positive_int(depth, "depth")
    net.embed = make_embedding(embedding, embed_dim, fourier_scale)
    net.time_mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
    net.inp = nn.Linear(dim, hidden)
    net.blocks = nn.ModuleList(_ResidualBlock(hidden, hidden) for _ in range(depth))


def trunk_features(net: nn.Module, x: Tensor, c: Tensor, temb_of=None) -> Tensor:
    """The trunk's last hidden features SiLU(h) (B, hidden) of x (B, ...) with ``net.dim`` elements per
    sample; ``temb_of(temb)`` may change the time embedding first (the class embedding)."""
    if not torch.is_tensor(x) or x.dim() < 2 or x[0].numel() != net.dim:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must have shape (B, {net.dim}) or (B, ...) with {net.dim} elements per sample, got {got}")
    check_conditioning(c, x)
    temb = net.time_mlp(net.embed(c))
    if temb_of is not None:
        temb = temb_of(temb)
    h = net.inp(x.reshape(x.shape[0], net.dim))
    for block in net.blocks:
        h = block(h, temb)
    return nn.functional.silu(h)


class MLP(nn.Module):
    """Residual MLP f(x, c) for data of ``dim`` elements per sample.

    Args:
        dim: number of elements per sample (x is (B, dim) or (B, ...) with prod(...) = dim).
        hidden: width of the hidden layers.
        depth: number of residual blocks (two linear layers each).
        embed_dim: size of the embedding of c.
        embedding: "fourier" (random Fourier features) or "sinusoidal".
        fourier_scale: std of the Fourier frequencies.
        num_classes: 0 (unconditional) or the number of classes K of a class-conditional network.
    ``forward(x, c, y=None)`` with c of shape (B,) returns a tensor shaped like x; y (B,) holds class
    labels in {0 .. K - 1} or the null class K, None meaning the null class (K > 0 only).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, embed_dim: int = 128,
                 embedding: str = "fourier", fourier_scale: float = 16.0, num_classes: int = 0):
        super().__init__()
        build_trunk(self, dim, hidden, depth, embed_dim, embedding, fourier_scale)
        self.num_classes = check_num_classes(num_classes)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if num_classes:
            # Only then (an unconditional network keeps its state-dict keys), and last, so the other
            # layers draw the same initial weights as the unconditional network's for a seed.
            self.class_embed = ClassEmbedding(num_classes, hidden)

    def forward(self, x: Tensor, c: Tensor, y: Optional[Tensor] = None) -> Tensor:
        h = trunk_features(self, x, c, lambda temb: add_class_embedding(self, temb, y, x))
        return self.out(h).reshape(x.shape)
