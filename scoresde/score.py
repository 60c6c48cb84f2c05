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

Class-conditional networks (``num_classes`` K > 0, called ``net(x, c, y)``) give the conditional score
s(x, t, y) = ∇x log p_t(x | y) and, for the null class K (y None), the unconditional s(x, t):
``ScoreModel.cond_score_fn(x, t, y)`` is the callable classifier-free guidance takes.

``NoisyClassifier`` wraps a time-dependent classifier network ``net(x, c) -> logits (B, K)`` with the
same conditioning c, so that ``classifier_logp(x, t)`` = log p_t(y | x) for classifier guidance.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from . import _checks
from .sde import SDE, VESDE, TimeLike, batch_broadcast

PARAMETERIZATIONS = ("eps", "score", "x0")
CONDITIONINGS = ("time", "log_sigma", "time_index", "sigma")
Labels = Union[None, int, Tensor]


def _conditioning_choice(sde: SDE, conditioning: Optional[str]) -> str:
    if conditioning is None:
        conditioning = "log_sigma" if isinstance(sde, VESDE) else "time"
    _checks.choice(conditioning, "conditioning", CONDITIONINGS)
    return conditioning


def network_input(sde: SDE, conditioning: str, t: Tensor, sigma: Tensor) -> Tensor:
    """The network's c for times t (B,) with sigma = sigma(t): t, log sigma, t (N - 1) or sigma."""
    if conditioning == "time":
        return t
    if conditioning == "log_sigma":
        return torch.log(sigma)
    if conditioning == "time_index":
        return t * (sde.N - 1)
    return sigma


def _labels(y: Labels, x: Tensor, num_classes: int, net) -> Optional[Tensor]:
    """y as a (B,) long tensor on x's device (an int means every sample), None kept; refused for an
    unconditional network. Only a Python int is range-checked here: a tensor's range would cost a
    host synchronisation at every step (the network's embedding refuses an index out of range)."""
    if y is None:
        return None
    if num_classes < 1:
        raise ValueError(f"y: the network ({type(net).__name__}) is unconditional (num_classes=0): it takes no "
                         "class labels")
    if isinstance(y, int) and not isinstance(y, bool):
        if not 0 <= y <= num_classes:
            raise ValueError(f"y must be a class in 0..{num_classes - 1} (or {num_classes}, the null class), got {y}")
        return torch.full((x.shape[0],), y, dtype=torch.long, device=x.device)
    if not torch.is_tensor(y) or y.shape != x.shape[:1] or y.is_floating_point() or y.is_complex() \
            or y.dtype == torch.bool:
        got = f"shape {tuple(y.shape)}, dtype {y.dtype}" if torch.is_tensor(y) else repr(y)
        raise ValueError(f"y must be None, an int or an integer tensor of shape ({x.shape[0]},), got {got}")
    return y.to(device=x.device, dtype=torch.long)


class ScoreModel(nn.Module):
    """Score s(x, t) from a network ``net(x, c)`` trained under ``sde``.

    Args:
        net: a module ``net(x, c) -> tensor shaped like x`` with c of shape (B,); a class-conditional
            one has ``num_classes`` K > 0 and is called ``net(x, c, y)`` (y None: the null class).
        sde: the forward SDE (gives alpha(t), sigma(t)).
        parameterization: what the network predicts: "eps", "score" or "x0" (see module docstring).
        conditioning: "time" (c = t), "log_sigma" (c = log sigma(t)), "time_index" (c = t (N - 1))
            or "sigma" (c = sigma(t)); None picks "log_sigma" for
            a VESDE and "time" otherwise.
    ``forward(x, t, y=None)`` (t a float or a (B,) tensor) returns the score; so does ``score_fn``.
    ``cond_score_fn(x, t, y)`` is s(x, t, y), y None the unconditional score (classifier-free guidance).
    At a time where sigma(t) = 0 (t = 0 for VP) the "eps" and "x0" scores are undefined.
    """

    def __init__(self, net: nn.Module, sde: SDE, parameterization: str = "eps", conditioning: Optional[str] = None):
        super().__init__()
        if not callable(net):
            raise ValueError(f"net must be callable as net(x, c), got {type(net).__name__}")
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be an SDE (VPSDE, SubVPSDE or VESDE), got {type(sde).__name__}")
        _checks.choice(parameterization, "parameterization", PARAMETERIZATIONS)
        conditioning = _conditioning_choice(sde, conditioning)
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.conditioning = conditioning

    @property
    def score_fn(self) -> "ScoreModel":
        """A plain callable ``score_fn(x, t)``: the model itself."""
        return self

    @property
    def num_classes(self) -> int:
        """K of a class-conditional network (its ``num_classes``), 0 for an unconditional one."""
        return int(getattr(self.net, "num_classes", 0) or 0)

    def cond_score_fn(self, x: Tensor, t: TimeLike, y: Labels = None) -> Tensor:
        """The conditional score s(x, t, y) = ∇x log p_t(x | y); y None (or the null class K) gives
        the unconditional score. y: a (B,) integer tensor or one int for every sample. This is the
        ``cond_score_fn`` of ``scoresde.guidance.classifier_free``."""
        return self(x, t, y=y)

    def _net_output(self, x: Tensor, t: TimeLike, y: Labels = None):
        """(net(x, c[, y]), t as (B,), alpha (B,), sigma (B,))."""
        y = _labels(y, x, self.num_classes, self.net)
        t = self.sde.time(t, x)
        alpha, sigma = self.sde.marginal_coeffs(t, x)
        c = network_input(self.sde, self.conditioning, t, sigma)
        # an unconditional call keeps net(x, c): networks without a y argument work unchanged
        out = self.net(x, c) if y is None else self.net(x, c, y)
        if not torch.is_tensor(out) or out.shape != x.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"net must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        return out, batch_broadcast(alpha, x), batch_broadcast(sigma, x)

    def forward(self, x: Tensor, t: TimeLike, output: str = "score", y: Labels = None) -> Tensor:
        """The score s(x, t) = ∇_x log p_t(x), or with ``output`` "eps" / "x0" the same prediction as
        E[z | x_t] = -sigma s or E[x_0 | x_t] = (x + sigma^2 s) / alpha. With class labels ``y`` (a (B,)
        integer tensor or one int; a class-conditional network only) the same for p_t(x | y).

        The output kind is an argument of forward (not only a method) so that a wrapped model (DDP,
        torch.compile) can be asked for it through the wrapper. The network's own kind is returned
        as is, without a round trip through the score (which is infinite where sigma(t) = 0).
        """
        _checks.choice(output, "output", PARAMETERIZATIONS)
        out, alpha, sigma = self._net_output(x, t, y)
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

    def eps(self, x: Tensor, t: TimeLike, y: Labels = None) -> Tensor:
        """The noise prediction E[z | x_t] = -sigma s = (x - alpha E[x_0 | x_t]) / sigma."""
        return self(x, t, output="eps", y=y)

    def x0(self, x: Tensor, t: TimeLike, y: Labels = None) -> Tensor:
        """The denoised prediction E[x_0 | x_t] = (x + sigma^2 s) / alpha = (x - sigma eps) / alpha."""
        return self(x, t, output="x0", y=y)

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}, conditioning={self.conditioning!r}"


class NoisyClassifier(nn.Module):
    """A time-dependent classifier p_t(y | x_t) from a network ``net(x, c) -> logits (B, K)`` trained on
    x_t ~ p_0t(x_t | x_0) (``scoresde.losses.noisy_classifier_loss``; Song et al. 2021, appendix I).

    The network sees c computed from t exactly as a ScoreModel's does (``conditioning``: None picks
    "log_sigma" for a VESDE and "time" otherwise). ``forward(x, t)`` returns the logits,
    ``classifier_logp(x, t)`` their log_softmax, log p_t(y | x) for every class y: the
    ``classifier_logp`` of ``scoresde.guidance.classifier``.
    """

    def __init__(self, net: nn.Module, sde: SDE, conditioning: Optional[str] = None):
        super().__init__()
        if not callable(net):
            raise ValueError(f"net must be callable as net(x, c) -> logits, got {type(net).__name__}")
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be an SDE (VPSDE, SubVPSDE or VESDE), got {type(sde).__name__}")
        self.net = net
        self.sde = sde
        self.conditioning = _conditioning_choice(sde, conditioning)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.net, "num_classes", 0) or 0)

    def forward(self, x: Tensor, t: TimeLike) -> Tensor:
        """Logits (B, K) of p_t(y | x)."""
        t = self.sde.time(t, x)
        _, sigma = self.sde.marginal_coeffs(t, x)
        logits = self.net(x, network_input(self.sde, self.conditioning, t, sigma))
        if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            got = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
            raise ValueError(f"net must return logits of shape ({x.shape[0]}, K), got {got}")
        return logits

    def classifier_logp(self, x: Tensor, t: TimeLike) -> Tensor:
        """log p_t(y | x) for every class: (B, K) log-probabilities (log_softmax of the logits)."""
        return torch.log_softmax(self(x, t), dim=-1)

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, conditioning={self.conditioning!r}"
