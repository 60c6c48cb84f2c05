"""Exact ground truth: a Gaussian mixture pushed through a linear SDE stays a Gaussian mixture.

If p_0 = sum_k w_k N(mu_k, S_k) and p_0t(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I), then

    p_t = sum_k w_k N(alpha mu_k, C_k(t)),   C_k(t) = alpha^2 S_k + sigma^2 I,

so its log-density and its score  ∇ log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - alpha mu_k)  (r_k the
posterior responsibilities) are exact at every t. Each covariance is diagonalised once,
S_k = U_k diag(lam_k) U_k^T, so C_k(t)^{-1} costs O(D^2) per point at any t, with no per-t
factorisation.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .sde import SDE, TimeLike


def _as_tensor(value, name: str) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be numeric (a tensor or nested sequence of numbers): {e}") from None


class GaussianMixture:
    """A mixture of K Gaussians in D dimensions with exact density and score under any SDE here.

    Args:
        weights: (K,) non-negative mixture weights (normalised to sum to 1).
        means: (K, D) component means.
        covs: (K, D, D) covariances, or (K, D) diagonal variances, or (K,) isotropic variances.
    Data are (B, D), or (B, ...) with prod(...) = D (flattened internally).
    """

    def __init__(self, weights, means, covs):
        w = _as_tensor(weights, "weights")
        mu = _as_tensor(means, "means")
        if w.dim() != 1 or w.numel() == 0:
            raise ValueError(f"weights must be a non-empty 1-D sequence (K,), got shape {tuple(w.shape)}")
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        K = w.numel()
        if mu.dim() == 1 and K == mu.numel():
            mu = mu[:, None]
        if mu.dim() != 2 or mu.shape[0] != K:
            raise ValueError(f"means must have shape (K, D) = ({K}, D) to match weights, got {tuple(mu.shape)}")
        D = mu.shape[1]
        S = _as_tensor(covs, "covs")
        if S.shape == (K,):
            S = S[:, None, None] * torch.eye(D, dtype=torch.float64)
        elif S.shape == (K, D):
            S = torch.diag_embed(S)
        if S.shape != (K, D, D):
            raise ValueError(f"covs must have shape ({K}, {D}, {D}), ({K}, {D}) or ({K},), got {tuple(S.shape)}")
        if not torch.isfinite(mu).all() or not torch.isfinite(S).all():
            raise ValueError("means and covs must be finite")
        if (S - S.transpose(1, 2)).abs().max() > 1e-10 * (1 + S.abs().max()):
            raise ValueError("covs must be symmetric")
        lam, U = torch.linalg.eigh(S)
        if (lam < -1e-12 * (1 + lam.abs().max())).any():
            raise ValueError("covs must be positive semi-definite")
        self.weights = w / w.sum()
        self.means = mu
        self.covs = S
        self._lam = lam.clamp(min=0)
        self._singular = bool((self._lam == 0).any())
        self._U = U
        self._cache = {}

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.weights.numel()

    def _on(self, like: Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(p.to(device=like.device, dtype=like.dtype)
                                     for p in (self.weights.log(), self.means, self._lam, self._U))
        return self._cache[key]

    def _flat(self, x: Tensor, name: str = "x") -> Tensor:
        if x.dim() < 2 or x[0].numel() != self.dim:
            raise ValueError(f"{name} must have shape (B, {self.dim}) (or (B, ...) with {self.dim} elements per sample), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    def _terms(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """Per-component log(w_k N(x; alpha mu_k, C_k)) (B, K) and C_k^{-1}(x - alpha mu_k) (B, K, D)."""
        logw, mu, lam, U = self._on(x)
        if self._singular and sigma.device.type == "cpu" and bool((sigma == 0).any()):
            raise ValueError("the density is undefined where a covariance is singular and sigma(t) = 0 "
                             "(e.g. log_prob of a mixture with a zero-variance direction): use t > 0")
        a = alpha[:, None, None]
        r = x[:, None, :] - a * mu[None]                                 # (B, K, D)
        y = torch.einsum("kdj,bkd->bkj", U, r)                           # eigenbasis coordinates
        v = a ** 2 * lam[None] + sigma[:, None, None] ** 2               # eigenvalues of C_k(t)
        logn = -0.5 * (self.dim * math.log(2 * math.pi) + v.log().sum(-1) + (y ** 2 / v).sum(-1))
        prec_r = torch.einsum("kdj,bkj->bkd", U, y / v)
        return logw[None] + logn, prec_r

    def _coeffs(self, x: Tensor, t: Optional[TimeLike], sde: Optional[SDE]):
        if sde is None:  # t = 0 of the data itself
            return torch.ones(x.shape[0], device=x.device, dtype=x.dtype), torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        return sde.marginal_coeffs(t, x)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p_0(x), shape (B,)."""
        xf = self._flat(x)
        return torch.logsumexp(self._terms(xf, *self._coeffs(xf, None, None))[0], dim=1)

    def log_prob_t(self, x: Tensor, t: TimeLike, sde: SDE) -> Tensor:
        """log p_t(x) under ``sde`` (exact), shape (B,)."""
        xf = self._flat(x)
        return torch.logsumexp(self._terms(xf, *self._coeffs(xf, t, sde))[0], dim=1)

    def score(self, x: Tensor, t: TimeLike, sde: SDE) -> Tensor:
        """∇_x log p_t(x) under ``sde`` (exact), shaped like x."""
        xf = self._flat(x)
        logits, prec_r = self._terms(xf, *self._coeffs(xf, t, sde))
        resp = torch.softmax(logits, dim=1)
        return -(resp[..., None] * prec_r).sum(1).reshape(x.shape)

    def score_fn(self, sde: SDE):
        """The exact score of p_t as a ``score_fn(x, t)`` for samplers and the likelihood."""
        def score_fn(x: Tensor, t: TimeLike) -> Tensor:
            return self.score(x, t, sde)
        return score_fn

    def marginal(self, sde: SDE, t: float) -> "GaussianMixture":
        """p_t itself, as a GaussianMixture (for a scalar time t)."""
        alpha, sigma = (float(c) for c in sde.marginal_coeffs(float(t), torch.zeros(1, dtype=torch.float64)))
        covs = alpha ** 2 * self.covs + sigma ** 2 * torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, alpha * self.means, covs)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32,
               return_components: bool = False):
        """n exact draws, shape (n, D); with ``return_components`` also the component index of each."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        gdev = generator.device if generator is not None else torch.device("cpu")
        k = torch.multinomial(self.weights.to(gdev), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=gdev, dtype=torch.float64)
        kc = k.cpu()
        L = self._U * self._lam.sqrt()[:, None, :]                         # S_k = L L^T
        x = self.means[kc] + torch.einsum("nde,ne->nd", L[kc], z.cpu())
        x = x.to(device=device if device is not None else gdev, dtype=dtype)
        return (x, k.to(x.device)) if return_components else x

    def classify(self, x: Tensor) -> Tensor:
        """Index of the most responsible component under p_0 for each point (for mode-weight checks)."""
        xf = self._flat(x)
        return self._terms(xf, *self._coeffs(xf, None, None))[0].argmax(dim=1)

    def __repr__(self):
        return f"GaussianMixture(K={self.num_components}, D={self.dim})"
