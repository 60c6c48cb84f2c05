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


def _labels(y, batch: int, num_classes: int) -> Tensor:
    """y as a (batch,) int64 tensor of component indices (an int is every row's)."""
    if isinstance(y, int) and not isinstance(y, bool):
        y = torch.full((batch,), y, dtype=torch.long)
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (batch,):
        got = f"{y.dtype} of shape {tuple(y.shape)}" if torch.is_tensor(y) else repr(y)
        raise ValueError(f"y must be an int or an integer tensor of shape ({batch},), got {got}")
    if y.device.type == "cpu" and ((y < 0) | (y >= num_classes)).any():  # no host sync on an accelerator
        raise ValueError(f"y must hold class indices in [0, {num_classes}), got {y.tolist()}")
    return y.long()


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
        # eigenvalues within eigh's round-off (a small multiple of eps ||S||) are zero, e.g. the
        # observed directions of a noiseless posterior (`condition`): its draws then satisfy the
        # observation exactly
        round_off = 64 * torch.finfo(torch.float64).eps * (1 + lam.abs().max())
        self._lam = torch.where(lam > round_off, lam, 0.0)
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

    # ---- exact conditionals (the component is the class) -------------------------------------

    def class_log_prob(self, x: Tensor, t: TimeLike, sde: SDE) -> Tensor:
        """log p_t(k | x_t) = log w_k N(x_t; alpha mu_k, C_k(t)) - log p_t(x_t), shape (B, K): the
        exact noisy classifier of classifier guidance, with the component as the class."""
        xf = self._flat(x)
        return torch.log_softmax(self._terms(xf, *self._coeffs(xf, t, sde))[0], dim=1)

    def class_score(self, x: Tensor, t: TimeLike, sde: SDE, y: Optional[Tensor]) -> Tensor:
        """∇_x log p_t(x | k = y) = -C_y(t)^{-1} (x - alpha mu_y) for each row's class y (a (B,) tensor
        of component indices); with y None the mixture's score ``score``."""
        if y is None:
            return self.score(x, t, sde)
        xf = self._flat(x)
        y = _labels(y, xf.shape[0], self.num_components)
        y = y.to(xf.device)
        prec_r = self._terms(xf, *self._coeffs(xf, t, sde))[1]                # (B, K, D)
        return -prec_r[torch.arange(xf.shape[0], device=xf.device), y].reshape(x.shape)

    def class_score_fn(self, sde: SDE):
        """The exact conditional score as ``cond_score_fn(x, t, y)`` (y None: unconditional), the
        signature ``scoresde.guidance.classifier_free`` takes."""
        def cond_score_fn(x: Tensor, t: TimeLike, y: Optional[Tensor] = None) -> Tensor:
            return self.class_score(x, t, sde, y)
        return cond_score_fn

    def component(self, k: int) -> "GaussianMixture":
        """Component k alone, as a mixture of one: the exact class-conditional p_0(x | k)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_components:
            raise ValueError(f"k must be an integer in [0, {self.num_components}), got {k!r}")
        return GaussianMixture(self.weights.new_ones(1), self.means[k:k + 1], self.covs[k:k + 1])

    def condition(self, A, y, noise_std: float = 0.0) -> "GaussianMixture":
        """The exact posterior p_0(x | A x + n = y), n ~ N(0, noise_std^2 I), for one observation y (M,)
        of a linear map A (M, D): again a Gaussian mixture, with (G_k = A S_k A^T + noise_std^2 I,
        K_k = S_k A^T G_k^{-1})

            w_k' ∝ w_k N(y; A mu_k, G_k),   mu_k' = mu_k + K_k (y - A mu_k),   S_k' = S_k - K_k A S_k.

        An inpainting mask is a row selection (``A = torch.eye(D)[mask]``); colorization observes the
        gray projection. ``.score_fn(sde)`` of the result is the exact conditional score
        ∇ log p_t(x_t | y). For a batch of observations, condition once per y. With noise_std = 0 the
        posterior is degenerate (zero variance along the rows of A), which sampling and the score at
        t > 0 handle; G_k must be non-singular (A of full row rank on every component)."""
        A = _as_tensor(A, "A")
        if A.dim() == 1:
            A = A[None]
        if A.dim() != 2 or A.shape[1] != self.dim or A.shape[0] == 0:
            raise ValueError(f"A must have shape (M, {self.dim}) with M >= 1, got {tuple(A.shape)}")
        y = _as_tensor(y, "y").reshape(-1)
        if y.numel() != A.shape[0]:
            raise ValueError(f"y must have {A.shape[0]} entries (one per row of A), got shape {tuple(y.shape)}: "
                             "condition takes a single observation")
        if not (isinstance(noise_std, (int, float)) and not isinstance(noise_std, bool)
                and math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        if not torch.isfinite(A).all() or not torch.isfinite(y).all():
            raise ValueError("A and y must be finite")
        S, mu = self.covs, self.means
        SAt = S @ A.T                                                         # (K, D, M)
        G = A @ SAt + noise_std ** 2 * torch.eye(A.shape[0], dtype=torch.float64)
        ev = torch.linalg.eigvalsh(G)                                         # ascending, (K, M)
        bad = ev[:, 0] <= 1e-12 * ev[:, -1]
        if bad.any():
            k = int(bad.nonzero()[0])
            raise ValueError(f"the observation is degenerate under component {k}: A S_k A^T + noise_std^2 I is "
                             "singular (rows of A dependent, or observing a zero-variance direction): "
                             "use noise_std > 0 or independent rows")
        L = torch.linalg.cholesky(G)
        r = y[None] - mu @ A.T                                                # (K, M)
        Ginv_r = torch.cholesky_solve(r[..., None], L)[..., 0]
        log_lik = -0.5 * ((r * Ginv_r).sum(-1) + 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
                          + A.shape[0] * math.log(2 * math.pi))
        logits = self.weights.log() + log_lik
        mean = mu + (SAt @ Ginv_r[..., None])[..., 0]
        cov = S - SAt @ torch.cholesky_solve(SAt.transpose(1, 2), L)
        cov = 0.5 * (cov + cov.transpose(1, 2))  # exact symmetry; round-off only
        return GaussianMixture(torch.softmax(logits, 0), mean, cov)

    def classify(self, x: Tensor) -> Tensor:
        """Index of the most responsible component under p_0 for each point (for mode-weight checks)."""
        xf = self._flat(x)
        return self._terms(xf, *self._coeffs(xf, None, None))[0].argmax(dim=1)

    def __repr__(self):
        return f"GaussianMixture(K={self.num_components}, D={self.dim})"
