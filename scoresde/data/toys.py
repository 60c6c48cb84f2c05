"""2-D toy distributions drawn on the fly with torch ops: the checkerboard (with its exact density),
two moons, the swiss roll, rings, and Gaussian mixtures (exact at every t through
``scoresde.analytic``)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _checks
from ..analytic import GaussianMixture
from ._args import _generator_device

TOYS = ("checkerboard", "moons", "swissroll", "8gaussians", "rings", "gmm")

# Default toy sizes and seeds: different seeds per split, so the test set is a fresh draw.
TOY_SIZES = {"train": 50_000, "test": 5_000}
TOY_SEEDS = {"train": 0, "test": 1}

TOY_RANGE = (-2.0, 2.0)      # nominal extent of every toy, per coordinate

CHECKERBOARD_LOG_DENSITY = math.log(1 / 8)


def _black_squares() -> Tensor:
    """(8, 2) lower-left corners of the black squares: (i, j) with i + j even, corner (-2+i, -2+j)."""
    return torch.tensor([[-2.0 + i, -2.0 + j] for i in range(4) for j in range(4) if (i + j) % 2 == 0])


def _checkerboard(n: int, generator, device) -> Tensor:
    square = torch.randint(0, 8, (n,), generator=generator, device=device)
    offset = torch.rand(n, 2, generator=generator, device=device)
    return _black_squares().to(device)[square] + offset


def on_checkerboard(x: Tensor) -> Tensor:
    """Whether each point of x (B, 2) lies on a black square, squares taken as closed sets.

    Closed, because a float32 draw from [-2 + i, -1 + i) can round onto the square's edge; edges
    have probability zero, so this does not change the density.
    """
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be a tensor of shape (B, 2), got {tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    s = x.double() + 2.0                                   # board coordinates in [0, 4]
    inside = ((s >= 0) & (s <= 4)).all(dim=1)
    # The column (row) indices of the closed unit cells holding each coordinate: one in the
    # interior of a cell, two on an edge between cells.
    lo, hi = torch.ceil(s) - 1, torch.floor(s)
    black = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for i in (lo[:, 0], hi[:, 0]):
        for j in (lo[:, 1], hi[:, 1]):
            valid = (i >= 0) & (i <= 3) & (j >= 0) & (j <= 3)
            black |= valid & ((i + j) % 2 == 0)
    return inside & black


def checkerboard_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of the checkerboard toy: log(1/8) on the black squares, -inf elsewhere, (B,)."""
    black = on_checkerboard(x)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    out = torch.full(black.shape, -math.inf, dtype=dtype, device=x.device)
    return out.masked_fill(black, CHECKERBOARD_LOG_DENSITY)


def _moons(n: int, generator, device, noise: float = 0.08) -> Tensor:
    # scikit-learn's two moons, (cos t, sin t) and (1 - cos t, 1/2 - sin t) for t in [0, pi],
    # span [-1, 2] x [-1/2, 1]; centring on (1/2, 1/4) and scaling by 4/3 gives [-2, 2] x [-1, 1].
    t = math.pi * torch.rand(n, generator=generator, device=device)
    lower = torch.rand(n, generator=generator, device=device) < 0.5
    x = torch.where(lower, 1.0 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    pts = (torch.stack([x, y], dim=1) - torch.tensor([0.5, 0.25], device=device)) * (4.0 / 3.0)
    return pts + noise * torch.randn(n, 2, generator=generator, device=device)


def _swissroll(n: int, generator, device, noise: float = 0.05) -> Tensor:
    # The 2-D swiss roll (t cos t, t sin t), t in [1.5 pi, 4.5 pi] as in scikit-learn, scaled so
    # its outer end lies on the circle of radius 2.
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator, device=device))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) * (2.0 / (4.5 * math.pi))
    return pts + noise * torch.randn(n, 2, generator=generator, device=device)


RING_RADII = (0.5, 1.0, 1.5, 2.0)


def _rings(n: int, generator, device, noise: float = 0.04) -> Tensor:
    # Ring k is chosen with probability proportional to its radius, so the density along the
    # rings is uniform in arc length.
    radii = torch.tensor(RING_RADII, device=device)
    ring = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator, device=device)
    r = radii[ring]
    pts = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    return pts + noise * torch.randn(n, 2, generator=generator, device=device)


def toy_mixture(name: str = "gmm") -> GaussianMixture:
    """The exact mixture behind a Gaussian-mixture toy: "gmm" (four unequal, correlated components in
    [-2, 2]^2) or "8gaussians" (eight equal components on the circle of radius 2, std 0.15).

    A fresh object each call, so callers cannot share its internal caches by accident.
    """
    if name == "gmm":
        return GaussianMixture(
            weights=[0.4, 0.3, 0.2, 0.1],
            means=[[-1.0, -0.6], [1.1, 0.9], [1.2, -1.2], [-1.0, 1.3]],
            covs=[[[0.20, 0.08], [0.08, 0.12]], [[0.05, 0.0], [0.0, 0.25]],
                  [[0.10, -0.06], [-0.06, 0.10]], [[0.03, 0.0], [0.0, 0.03]]],
        )
    if name == "8gaussians":
        angles = [2 * math.pi * k / 8 for k in range(8)]
        return GaussianMixture(weights=[1.0] * 8,
                               means=[[2 * math.cos(a), 2 * math.sin(a)] for a in angles],
                               covs=[0.15 ** 2] * 8)
    raise ValueError(f"name must be one of ('gmm', '8gaussians') (the toys with a mixture density), got {name!r}")


def _from_mixture(name: str):
    def sample(n: int, generator, device) -> Tensor:
        return toy_mixture(name).sample(n, generator, device=device, dtype=torch.float32)
    return sample


_TOY_SAMPLERS = {
    "checkerboard": _checkerboard,
    "moons": _moons,
    "swissroll": _swissroll,
    "8gaussians": _from_mixture("8gaussians"),
    "rings": _rings,
    "gmm": _from_mixture("gmm"),
}


def sample_toy(name: str, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """n draws from the 2-D toy ``name`` (one of TOYS), a float32 tensor (n, 2).

    Randomness comes from ``generator`` only (torch's default generator if None); the samples
    live on the generator's device.
    """
    _checks.choice(name, "name", TOYS)
    _checks.positive_int(n, "n")
    device = _generator_device(generator)
    return _TOY_SAMPLERS[name](n, generator, device).to(torch.float32)

