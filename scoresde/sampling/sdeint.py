"""Reverse-SDE sampling through torchsde."""
from __future__ import annotations

from typing import Optional

import torch
import torchsde
from torch import Tensor

from ..sde import SDE
from .. import _checks
from ._loop import end_coeffs, tweedie_at
from .generators import SampleGenerators
from ._ode import Counter, clamped_time, reverse_drift

METHODS = ("euler", "milstein", "srk", "reversible_heun")


class _ReverseTime(torch.nn.Module):
    """The reverse SDE in forward time tau = T - t, on flattened states (B, D), diagonal noise:
    dy = -[c y - g^2 score(y, T - tau)] dtau + g(T - tau) dW. The noise is additive, so the Itô
    and Stratonovich forms coincide and either solver family applies unchanged."""

    noise_type = "diagonal"

    def __init__(self, sde: SDE, score, shape, eps: float, sde_type: str):
        super().__init__()
        self.sde, self.score, self.shape, self.eps = sde, score, shape, eps
        self.sde_type = sde_type

    def _t(self, tau: Tensor, y: Tensor) -> Tensor:
        return clamped_time(self.sde.T - tau, self.eps, self.sde.T, y.shape[0], y)

    def f(self, tau, y):
        return -reverse_drift(self.sde, self.score, y.reshape(self.shape), self._t(tau, y)).reshape(y.shape)

    def g(self, tau, y):
        return self.sde._diffusion(self._t(tau, y))[:, None].expand_as(y)


class _StackedBrownian(torchsde.BaseBrownian):
    """One Brownian motion per row (each of shape (1, D)), queried together and stacked: row r's
    increments depend only on its own path, whatever the batch."""

    def __init__(self, paths):
        self.paths = paths

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        parts = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.paths]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p) for p in zip(*parts))
        return torch.cat(parts)

    def __repr__(self):
        return f"_StackedBrownian({len(self.paths)} x {self.paths[0]!r})"

    @property
    def dtype(self):
        return self.paths[0].dtype

    @property
    def device(self):
        return self.paths[0].device

    @property
    def shape(self):
        return torch.Size((len(self.paths),) + tuple(self.paths[0].shape[1:]))

    @property
    def levy_area_approximation(self):
        return self.paths[0].levy_area_approximation


@torch.no_grad()
def reverse_sde(score_fn, sde: SDE, x_T: Tensor, *, method: str = "euler", steps: int = 1000,
                eps: float = 1e-3, denoise: bool = True, generator: Optional[torch.Generator] = None,
                progress: bool = False) -> Tensor:
    """Solve the reverse SDE dx = [f - g^2 score] dt + g dw̄ from T to eps with torchsde.

    ``method``: "euler" (Euler–Maruyama), "milstein", "srk" (strong order 1.5 for additive noise),
    "reversible_heun"; fixed step (T - eps) / steps. The Brownian path is a torchsde
    ``BrownianInterval`` seeded from ``generator``, so a run is reproducible; with per-sample generators
    (``SampleGenerators``) each row has a path of its own, seeded from its generator.

    Caution with "reversible_heun": on y' = lambda y its two roots are mu ± sqrt(1 + mu^2), mu =
    lambda h, so for contracting dynamics (lambda < 0, as the reverse drift is near every mode) the
    parasitic one has modulus ≈ 1 + |lambda| h and grows like exp(∫|lambda| dt) *whatever the step*.
    It needs thousands of steps on VP / sub-VP and diverges on VE (∫|lambda| dt ≈ 2 log(sigma_max /
    sigma_min) ≈ 17); prefer the other methods unless you need its reversibility.
    """
    _checks.choice(method, "method", METHODS)
    steps = _checks.positive_int(steps)
    eps = _checks.eps(sde, eps)
    score = _checks.score_function(score_fn)
    x = _checks.batch(x_T)
    shape = x.shape
    y0 = x.reshape(shape[0], -1)
    counted = Counter(score, progress, "reverse_sde", steps * (2 if method in ("srk",) else 1))
    end = end_coeffs(sde, eps)
    sde_type = "stratonovich" if method == "reversible_heun" else "ito"
    system = _ReverseTime(sde, counted, shape, eps, sde_type)
    ts = torch.tensor([0.0, sde.T - eps], device=y0.device, dtype=y0.dtype)
    span = float(ts[-1])  # the Brownian interval must end exactly where the solver does, in y's dtype
    levy = "space-time" if method == "srk" else "none"
    if isinstance(generator, SampleGenerators):  # one Brownian path per row, seeded from the row's generator
        if len(generator) != y0.shape[0]:
            raise ValueError(f"reverse_sde: {len(generator)} per-sample generators for a batch of {y0.shape[0]}")
        bm = _StackedBrownian([torchsde.BrownianInterval(t0=0.0, t1=span, size=(1,) + tuple(y0.shape[1:]),
                                                         dtype=y0.dtype, device=y0.device, entropy=int(seed),
                                                         levy_area_approximation=levy)
                               for seed in generator.randint(2 ** 62).tolist()])
    else:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                 device=generator.device if generator else "cpu"))
        bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=y0.shape, dtype=y0.dtype, device=y0.device,
                                       entropy=seed, levy_area_approximation=levy)
    try:
        y = torchsde.sdeint(system, y0, ts, method=method, dt=span / steps, bm=bm)[-1]
    finally:
        counted.close()
    x = y.reshape(shape)
    if denoise:
        x = tweedie_at(score, sde, x, eps, coeffs=end)
    return _checks.finite_result(x, "reverse_sde")
