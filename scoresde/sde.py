"""Forward SDEs dx = f(x, t) dt + g(t) dw of Song et al. (ICLR 2021) and their reverse-time views.

Every SDE here is *linear*: f(x, t) = c(t) x. So given x_0 the marginal is Gaussian,

    p_0t(x_t | x_0) = N(x_t; alpha(t) x_0, sigma(t)^2 I),

and the whole family is described by three scalar functions of time: ``drift_coeff`` c(t),
``diffusion`` g(t) and ``marginal_coeffs`` (alpha(t), sigma(t)). Samplers only ever need those,
which is what lets them precompute every per-step coefficient once per time grid.

Discrete views: the N-step chain behind each SDE (DDPM for VP, SMLD for VE) is indexed by
i = 0 … N-1 with continuous time t_i = T i / (N - 1); index 0 is the cleanest step.
"""
from __future__ import annotations

import abc
import math
import operator
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor

TimeLike = Union[float, Tensor]
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def batch_broadcast(c: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample vector ``c`` of shape (B,) so it broadcasts against ``x`` (B, ...)."""
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))



def _tracing() -> bool:
    """True while torch.compile traces the code (torch < 2.3 has it only under torch._dynamo)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return is_compiling() if is_compiling is not None else torch._dynamo.is_compiling()

class SDE(abc.ABC):
    """A linear forward SDE on [0, T] with an N-step discretization.

    Subclasses implement ``drift_coeff``, ``diffusion``, ``marginal_coeffs`` (continuous time),
    ``discrete_marginal_coeffs`` (the N-step chain) and ``prior_std``.
    """

    T: float = 1.0

    def __init__(self, N: int):
        try:
            n = operator.index(N) if not isinstance(N, bool) else None
        except TypeError:
            n = None
        if n is None or n < 2:
            raise ValueError(f"N must be an integer >= 2 (number of discretization steps), got {N!r}")
        self.N = int(n)
        self._tables = {}

    # ---- the three scalar functions that define the SDE -------------------------------------
    @abc.abstractmethod
    def drift_coeff(self, t: Tensor) -> Tensor:
        """c(t) with f(x, t) = c(t) x, shape (B,)."""

    @abc.abstractmethod
    def _diffusion(self, t: Tensor) -> Tensor:
        ...

    @abc.abstractmethod
    def _marginal_coeffs(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        ...

    @abc.abstractmethod
    def discrete_marginal_coeffs(self, index: Tensor) -> Tuple[Tensor, Tensor]:
        """(alpha_i, sigma_i) of the N-step chain at integer indices ``index`` (float64)."""

    prior_std: float = 1.0

    # ---- public API ---------------------------------------------------------------------------
    def time(self, t: TimeLike, like: Tensor) -> Tensor:
        """``t`` as a (B,) tensor on ``like``'s device and dtype, checked to lie in [0, T].

        Python floats and CPU tensors are range-checked; accelerator tensors are not, because the
        check would force a host synchronisation on every call inside a sampling loop; nor is t
        while ``torch.compile`` traces (a data-dependent check would split the compiled graph).
        """
        B = like.shape[0] if like.dim() > 0 else 1
        if not torch.is_tensor(t):
            t = float(t)
            if not (0.0 <= t <= self.T):
                raise ValueError(f"t must lie in [0, T] = [0, {self.T}], got {t}")
            return torch.full((B,), t, device=like.device, dtype=like.dtype)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, B)):
            raise ValueError(f"t must be a float or a tensor of shape ({B},) matching the batch, got shape {tuple(t.shape)}")
        if t.device.type == "cpu" and t.numel() and not _tracing() and not bool(((t >= 0) & (t <= self.T)).all()):
            raise ValueError(f"t must lie in [0, T] = [0, {self.T}], got values in [{t.min().item()}, {t.max().item()}]")
        return t.to(device=like.device, dtype=like.dtype).expand(B)

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """f(x, t) = c(t) x."""
        t = self.time(t, x)
        return batch_broadcast(self.drift_coeff(t), x) * x

    def diffusion(self, t: TimeLike, like: Optional[Tensor] = None) -> Tensor:
        """g(t), shape (B,)."""
        if like is None:
            like = t if torch.is_tensor(t) else torch.zeros(1)
        return self._diffusion(self.time(t, like))

    def sde(self, x: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """(f(x, t), g(t))."""
        t = self.time(t, x)
        return self.drift(x, t), self._diffusion(t)

    def marginal_coeffs(self, t: TimeLike, like: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)) with p_0t(x_t | x_0) = N(alpha x_0, sigma^2 I), each shape (B,)."""
        if like is None:
            like = t if torch.is_tensor(t) else torch.zeros(1)
        return self._marginal_coeffs(self.time(t, like))

    def marginal_prob(self, x0: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """(mean, std) of p_0t(x_t | x_0): mean = alpha(t) x0 (shaped like x0), std = sigma(t) (B,)."""
        alpha, sigma = self._marginal_coeffs(self.time(t, x0))
        return batch_broadcast(alpha, x0) * x0, sigma

    def prior_sampling(self, shape, generator: Optional[torch.Generator] = None, device=None, dtype=None) -> Tensor:
        """A draw from the prior p_T = N(0, prior_std^2 I). ``generator``: a ``torch.Generator``, or a
        per-sample one (``scoresde.sampling.generators.SampleGenerators``: row r from its own seed)."""
        if generator is not None and not isinstance(generator, torch.Generator):
            return self.prior_std * generator.randn(tuple(shape), device=device, dtype=dtype)
        if device is None and generator is not None:
            device = generator.device
        return self.prior_std * torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension, shape (B,)."""
        D = z[0].numel()
        s2 = self.prior_std ** 2
        return -0.5 * D * math.log(2 * math.pi * s2) - z.reshape(z.shape[0], -1).pow(2).sum(1) / (2 * s2)

    def index(self, t: Tensor) -> Tensor:
        """Nearest discrete index i = round(t (N - 1) / T) of the N-step chain."""
        return torch.round(t * (self.N - 1) / self.T).long().clamp(0, self.N - 1)

    def discretize(self, x: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """The chain's step into index i = round(t (N-1) / T), x_i = x_{i-1} + f + G z: returns (f, G),
        f evaluated at x = x_{i-1}, G of shape (B,).

        Default: Euler–Maruyama with dt = T / N. VP and VE override it with DDPM's and SMLD's chains.
        """
        t = self.time(t, x)
        dt = self.T / self.N
        f, g = self.sde(x, t)
        return f * dt, g * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE dx = [f - g^2 score] dt + g dw̄, or with ``probability_flow`` the
        ODE dx/dt = f - g^2 score / 2."""
        return ReverseSDE(self, score_fn, probability_flow)

    def table(self, name: str, like: Tensor) -> Tensor:
        """A cached copy of a float64 discrete table on ``like``'s device and dtype (no per-call copy)."""
        key = (name, like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = getattr(self, name).to(device=like.device, dtype=like.dtype)
        return self._tables[key]

    def __repr__(self):
        params = ", ".join(f"{k}={v}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self):
        return {"N": self.N}


class ReverseSDE:
    """Reverse-time view of a forward SDE given a score function.

    drift(x, t) = f(x, t) - lam g(t)^2 score(x, t), lam = 1 (reverse SDE) or 1/2 (probability-flow
    ODE, whose diffusion is 0). Time still runs in the forward direction; integrate from T to 0.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward_sde = sde
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.N = sde.N
        self.T = sde.T

    @property
    def _lam(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        t = self.forward_sde.time(t, x)
        g2 = batch_broadcast(self.forward_sde._diffusion(t) ** 2, x)
        return self.forward_sde.drift(x, t) - self._lam * g2 * self.score_fn(x, t)

    def diffusion(self, t: TimeLike, like: Optional[Tensor] = None) -> Tensor:
        g = self.forward_sde.diffusion(t, like)
        return torch.zeros_like(g) if self.probability_flow else g

    def sde(self, x: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        t = self.forward_sde.time(t, x)
        return self.drift(x, t), self.diffusion(t, x)

    def discretize(self, x: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """Reverse of the N-step chain: (f - lam G^2 score, G or 0)."""
        t = self.forward_sde.time(t, x)
        f, G = self.forward_sde.discretize(x, t)
        rev_f = f - self._lam * batch_broadcast(G ** 2, x) * self.score_fn(x, t)
        return rev_f, torch.zeros_like(G) if self.probability_flow else G


class _BetaLinearSDE(SDE):
    """Shared pieces of VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        beta_min, beta_max = float(beta_min), float(beta_max)
        if not (math.isfinite(beta_min) and math.isfinite(beta_max) and 0 < beta_min < beta_max):
            raise ValueError(f"beta_min and beta_max must be finite with 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        if beta_max / N >= 1:
            raise ValueError(f"beta_max / N must be < 1 so every discrete beta_i < 1 (alphas stay positive), "
                             f"got beta_max={beta_max}, N={N}")
        self.beta_min, self.beta_max = beta_min, beta_max
        #: DDPM's schedule: linspace(beta_min / N, beta_max / N, N), i.e. 1e-4 … 0.02 for the defaults.
        self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N, dtype=torch.float64)
        self.alphas = 1.0 - self.discrete_betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def beta_integral(self, t: Tensor) -> Tensor:
        """∫_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def _params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "N": self.N}


class VPSDE(_BetaLinearSDE):
    """Variance-preserving SDE (continuous DDPM): dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw.

    alpha(t) = exp(-B(t) / 2), sigma(t) = sqrt(1 - exp(-B(t))), B(t) = ∫_0^t beta.
    """

    def _diffusion(self, t):
        return torch.sqrt(self.beta(t))

    def _marginal_coeffs(self, t):
        B = self.beta_integral(t)
        return torch.exp(-0.5 * B), torch.sqrt(-torch.expm1(-B))

    def discrete_marginal_coeffs(self, index):
        ab = self.alphas_cumprod[index]
        return ab.sqrt(), (1 - ab).sqrt()

    def discretize(self, x, t):
        """DDPM's step x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z: f = (sqrt(1-beta_i) - 1) x, G = sqrt(beta_i)."""
        t = self.time(t, x)
        i = self.index(t)
        beta = self.table("discrete_betas", x)[i]
        # sqrt(1 - beta) - 1 written without cancellation (beta is as small as 1e-4)
        return batch_broadcast(-beta / (1 + torch.sqrt(1 - beta)), x) * x, torch.sqrt(beta)


class SubVPSDE(_BetaLinearSDE):
    """Sub-VP SDE: dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw.

    alpha(t) = exp(-B(t) / 2), sigma(t) = 1 - exp(-B(t)); its variance stays below VP's.
    The discrete view (``discretize``) is Euler–Maruyama with dt = T / N, as in the reference.
    """

    def _diffusion(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.beta_integral(t)))

    def _marginal_coeffs(self, t):
        B = self.beta_integral(t)
        return torch.exp(-0.5 * B), -torch.expm1(-B)

    def discrete_marginal_coeffs(self, index):
        ab = self.alphas_cumprod[index]
        return ab.sqrt(), 1 - ab


class VESDE(SDE):
    """Variance-exploding SDE (continuous SMLD / NCSN): dx = sigma(t) sqrt(2 log(sigma_max/sigma_min)) dw,
    sigma(t) = sigma_min (sigma_max / sigma_min)^t.

    As in the reference implementation the marginal std is sigma(t) itself (data are taken to carry
    sigma_min of noise at t = 0), and the prior is N(0, sigma_max^2 I).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
            raise ValueError(f"sigma_min and sigma_max must be finite with 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.prior_std = sigma_max
        #: SMLD's geometric ladder exp(linspace(log sigma_min, log sigma_max, N)); index i is sigma(t_i).
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), N, dtype=torch.float64))

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def _diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def _marginal_coeffs(self, t):
        return torch.ones_like(t), self.sigma(t)

    def discrete_marginal_coeffs(self, index):
        return torch.ones_like(self.discrete_sigmas[index]), self.discrete_sigmas[index]

    def discretize(self, x, t):
        """SMLD's step x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z (with sigma_{-1} = 0): f = 0."""
        t = self.time(t, x)
        i = self.index(t)
        sig = self.table("discrete_sigmas", x)
        prev = torch.where(i > 0, sig[(i - 1).clamp(min=0)], torch.zeros_like(sig[i]))
        return torch.zeros_like(x), torch.sqrt(sig[i] ** 2 - prev ** 2)

    def _params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}
