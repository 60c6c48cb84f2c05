"""ScoreModel: turns a network's output into a score function score_fn(x, t) for samplers.

Under p_0t(x_t | x_0) = N(alpha x_0, sigma^2 I), i.e. x_t = alpha x_0 + sigma z, the score of p_t is

    s(x_t, t) = -E[z | x_t] / sigma = (alpha E[x_0 | x_t] - x_t) / sigma^2,

so a network may predict any of the three and the others follow:

    "eps":   net ~ E[z | x_t]       s = -net / sigma
    "score": net ~ s                s = net
    "x0":    net ~ E[x_0 | x_t]     s = (alpha net - x_t) / sigma^2

The network sees (x_t, c) with c = t ("time"), c = log sigma(t) ("log_sigma", as NCSN++ does
for the VE SDE, where sigma spans four orders of magnitude), c = t (N - 1) ("time_index": the
discrete chain's index scale, which the reference implementation's continuous VP models and
diffusers' UNet2DModel see, t = 1 being index 999 for N = 1000) or c = sigma(t) ("sigma": the
reference's continuous VE models, which take log sigma themselves). The network never sees a sampler
and samplers never see the network: they only call ``score_fn(x, t)``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import _checks
from .sde import SDE, VESDE, TimeLike, batch_broadcast

PARAMETERIZATIONS = ("eps", "score", "x0")
CONDITIONINGS = ("time", "log_sigma", "time_index", "sigma")


class ScoreModel(nn.Module):
    """Score s(x, t) from a network ``net(x, c)`` trained under ``sde``.

    Args:
        net: a module ``net(x, c) -> tensor shaped like x`` with c of shape (B,).
        sde: the forward SDE (gives alpha(t), sigma(t)).
        parameterization: what the network predicts: "eps", "score" or "x0" (see module docstring).
        conditioning: "time" (c = t), "log_sigma" (c = log sigma(t)), "time_index" (c = t (N - 1))
            or "sigma" (c = sigma(t)); None picks "log_sigma" for
            a VESDE and "time" otherwise.
    ``forward(x, t)`` (t a float or a (B,) tensor) returns the score; so does ``score_fn``.
    At a time where sigma(t) = 0 (t = 0 for VP) the "eps" and "x0" scores are undefined.
    """

    def __init__(self, net: nn.Module, sde: SDE, parameterization: str = "eps", conditioning: Optional[str] = None):
        super().__init__()
        if not callable(net):
            raise ValueError(f"net must be callable as net(x, c), got {type(net).__name__}")
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be an SDE (VPSDE, SubVPSDE or VESDE), got {type(sde).__name__}")
        _checks.choice(parameterization, "parameterization", PARAMETERIZATIONS)
        if conditioning is None:
            conditioning = "log_sigma" if isinstance(sde, VESDE) else "time"
        _checks.choice(conditioning, "conditioning", CONDITIONINGS)
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.conditioning = conditioning

    @property
    def score_fn(self) -> "ScoreModel":
        """A plain callable ``score_fn(x, t)``: the model itself."""
        return self

    def _net_output(self, x: Tensor, t: TimeLike):
        """(net(x, c), t as (B,), alpha (B,), sigma (B,))."""
        t = self.sde.time(t, x)
        alpha, sigma = self.sde.marginal_coeffs(t, x)
        if self.conditioning == "time":
            c = t
        elif self.conditioning == "log_sigma":
            c = torch.log(sigma)
        elif self.conditioning == "time_index":
            c = t * (self.sde.N - 1)
        else:
            c = sigma
        out = self.net(x, c)
        if not torch.is_tensor(out) or out.shape != x.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"net must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        return out, batch_broadcast(alpha, x), batch_broadcast(sigma, x)

    def forward(self, x: Tensor, t: TimeLike, output: str = "score") -> Tensor:
        """The score s(x, t) = ∇_x log p_t(x), or with ``output`` "eps" / "x0" the same prediction as
        E[z | x_t] = -sigma s or E[x_0 | x_t] = (x + sigma^2 s) / alpha.

        The output kind is an argument of forward (not only a method) so that a wrapped model (DDP,
        torch.compile) can be asked for it through the wrapper. The network's own kind is returned
        as is, without a round trip through the score (which is infinite where sigma(t) = 0).
        """
        _checks.choice(output, "output", PARAMETERIZATIONS)
        out, alpha, sigma = self._net_output(x, t)
        if output == self.parameterization:
            return out
        if output == "score":
            return -out / sigma if self.parameterization == "eps" else (alpha * out - x) / sigma ** 2
        # "eps" or "x0" from another kind: through eps = -sigma s = (x - alpha x0) / sigma, which keeps
        # x0 = (x - sigma eps) / alpha finite at sigma = 0 for an "eps" or "score" network.
        if self.parameterization == "score":
            eps = -sigma * out
        elif self.parameterization == "x0":
            eps = (x - alpha * out) / sigma
        else:
            eps = out
        return eps if output == "eps" else (x - sigma * eps) / alpha

    def eps(self, x: Tensor, t: TimeLike) -> Tensor:
        """The noise prediction E[z | x_t] = -sigma s = (x - alpha E[x_0 | x_t]) / sigma."""
        return self(x, t, output="eps")

    def x0(self, x: Tensor, t: TimeLike) -> Tensor:
        """The denoised prediction E[x_0 | x_t] = (x + sigma^2 s) / alpha = (x - sigma eps) / alpha."""
        return self(x, t, output="x0")

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}, conditioning={self.conditioning!r}"
