"""Embeddings of the scalar conditioning c (time t, or log sigma(t)) into a feature vector.

Both map c of shape (B,) to (B, embed_dim): the first half sines, the second half cosines.

* ``GaussianFourierProjection`` (Tancik et al. 2020; NCSN++ of Song et al. 2021):
      e(c) = [sin(2 pi W c), cos(2 pi W c)],   W_k ~ N(0, scale^2)  fixed at construction.
* ``SinusoidalEmbedding`` (Vaswani et al. 2017; DDPM of Ho et al. 2020):
      e(c) = [sin(w_k s c), cos(w_k s c)],   w_k = max_period^(-k / half),  k = 0 .. half - 1,
  with s = ``scale`` (1000 maps t in [0, 1] onto DDPM's integer step range).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _even_dim(embed_dim) -> int:
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 2 or embed_dim % 2:
        raise ValueError(f"embed_dim must be an even integer >= 2 (half sines, half cosines), got {embed_dim!r}")
    return embed_dim


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _conditioning(c: Tensor) -> Tensor:
    if not torch.is_tensor(c) or c.dim() != 1:
        got = tuple(c.shape) if torch.is_tensor(c) else type(c).__name__
        raise ValueError(f"c must be a tensor of shape (B,), got {got}")
    return c


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of c: [sin(2 pi W c), cos(2 pi W c)] with W ~ N(0, scale^2).

    W is not trained (as in NCSN++): it is a buffer, so it is saved in the state_dict and a
    reloaded network sees exactly the features it was trained with.
    """

    def __init__(self, embed_dim: int, scale: float = 16.0):
        super().__init__()
        self.embed_dim = _even_dim(embed_dim)
        self.scale = _positive(scale, "scale")
        self.register_buffer("W", torch.randn(embed_dim // 2) * self.scale)

    def forward(self, c: Tensor) -> Tensor:
        c = _conditioning(c)
        proj = (2 * math.pi) * c[:, None] * self.W.to(c.dtype)[None, :]
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, scale={self.scale}"


class SinusoidalEmbedding(nn.Module):
    """Transformer/DDPM sinusoidal embedding of scale * c with geometric frequencies max_period^(-k/half)."""

    def __init__(self, embed_dim: int, scale: float = 1000.0, max_period: float = 10000):
        super().__init__()
        self.embed_dim = _even_dim(embed_dim)
        self.scale = _positive(scale, "scale")
        self.max_period = _positive(max_period, "max_period")
        half = embed_dim // 2
        # Deterministic, so recomputed rather than saved: old checkpoints stay loadable if it changes.
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        c = _conditioning(c)
        arg = (self.scale * c)[:, None] * self.freqs.to(c.dtype)[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, scale={self.scale}, max_period={self.max_period}"


EMBEDDINGS = {"fourier": GaussianFourierProjection, "sinusoidal": SinusoidalEmbedding}


def make_embedding(kind: str, embed_dim: int, fourier_scale: float = 16.0) -> nn.Module:
    """The embedding named ``kind`` ("fourier" or "sinusoidal"); ``fourier_scale`` applies to "fourier"."""
    if kind not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {tuple(EMBEDDINGS)}, got {kind!r}")
    if kind == "fourier":
        return GaussianFourierProjection(embed_dim, scale=fourier_scale)
    return SinusoidalEmbedding(embed_dim)


def check_conditioning(c, x) -> None:
    """Networks take one conditioning value per sample: c of shape (B,) for x of shape (B, ...)."""
    if not torch.is_tensor(c) or c.shape != x.shape[:1]:
        got = tuple(c.shape) if torch.is_tensor(c) else type(c).__name__
        raise ValueError(f"c must be a tensor of shape ({x.shape[0]},) matching the batch, got {got}")


def check_num_classes(num_classes) -> int:
    """num_classes: 0 (an unconditional network) or the number of classes K >= 1 (then index K is the
    null class, the unconditional score of classifier-free guidance)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative integer (0: unconditional), got {num_classes!r}")
    return num_classes


class ClassEmbedding(nn.Module):
    """e(y) for class labels y in {0 .. K - 1} and the null class K (Ho & Salimans 2021: one network
    learns the conditional scores s(x, t, y) and, through the null class, the unconditional s(x, t)).

    The table starts at zero, so an untrained conditional network is exactly its unconditional
    counterpart and the labels' influence grows from nothing, as the zero-initialised output layers
    make the networks start from the zero function.
    """

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for a ClassEmbedding, got {num_classes!r}")
        self.embedding = nn.Embedding(num_classes + 1, embed_dim)
        nn.init.zeros_(self.embedding.weight)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, y, x: Tensor) -> Tensor:
        """e(y) of shape (B, embed_dim); y None means the null class for every sample of x."""
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        else:
            check_labels(y, x)
        # The range is not checked here: that would cost a host synchronisation in every training and
        # sampling step; nn.Embedding itself refuses an index outside [0, K].
        return self.embedding(y.long())

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes} (+ null class {self.num_classes})"


def check_labels(y, x) -> None:
    """Class labels: an integer tensor of shape (B,) for x of shape (B, ...)."""
    if not torch.is_tensor(y) or y.shape != x.shape[:1] or y.is_floating_point() or y.is_complex() \
            or y.dtype == torch.bool:
        got = f"shape {tuple(y.shape)}, dtype {y.dtype}" if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must be an integer tensor of shape ({x.shape[0]},) of class labels, got {got}")


def add_class_embedding(module: nn.Module, temb: Tensor, y, x: Tensor) -> Tensor:
    """temb + e(y) for a conditional network (``module.class_embed`` set), temb for an unconditional
    one, which refuses labels: silently ignoring y would sample the wrong distribution."""
    embed = getattr(module, "class_embed", None)
    if embed is None:
        if y is not None:
            raise ValueError(f"y: this {type(module).__name__} is unconditional (num_classes=0) and takes no class "
                             "labels")
        return temb
    return temb + embed(y, x)
