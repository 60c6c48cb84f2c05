"""Training objectives: continuous-time denoising score matching and the discrete DDPM / SMLD losses.

Continuous time (Song et al. 2021, Eq. 7): with t ~ U(eps, T), z ~ N(0, I), x_t = alpha(t) x_0 + sigma(t) z,

    L(theta) = E_t E_x0 E_z [ lambda(t) || s_theta(x_t, t) + z / sigma(t) ||^2 ],

minimised by the true score because the conditional score of p_0t is -z / sigma. Two weightings:

* lambda = sigma^2 (default):           per-sample loss || sigma s + z ||^2
* lambda = g(t)^2 (likelihood weighting; Song, Durkan, Murray & Ermon 2021): g^2 || s + z / sigma ||^2,
  which makes L an upper bound on the negative log-likelihood up to a constant.

The likelihood weighting is heavy near t = 0 (g^2 / sigma^2 ~ 1 / t for VP), so its Monte-Carlo
estimate is noisy. ``importance_sampling`` draws t from p(t) = (g^2 / sigma^2) / Z on [eps, T] instead
and uses (Z / (T - eps)) || sigma s + z ||^2, whose expectation is exactly that of the uniform-t
likelihood-weighted loss: E_p[(Z / (T - eps)) q(t)] = (1 / (T - eps)) ∫ (g^2 / sigma^2) q(t) dt.

Discrete: ``ddpm_loss`` is Ho et al.'s simple loss || eps_hat - z ||^2 on the VP chain,
``smld_loss`` the sigma_i^2-weighted loss of NCSN on the VE ladder; both draw a step index
i ~ U{0 .. N-1} and give the model the continuous time t_i = T i / (N - 1).

All losses return the batch mean of the per-sample loss, where ``reduce`` = "mean" averages and "sum"
adds over the data dimensions. All randomness comes from ``generator`` (drawn on its device and
moved to x0's), so a loss is reproducible.

Class-conditional training (Ho & Salimans 2021): the score losses take class labels ``y`` (B,), passed
to the model as ``model(x, t, y=y)``; ``drop_labels`` replaces each label by the null class with
probability p, so that one network learns both s(x, t, y) and s(x, t).

``noisy_classifier_loss`` trains a time-dependent classifier p_t(y | x_t) for classifier guidance
(Song et al. 2021, appendix I): the cross-entropy of the labels at x_t ~ p_0t(x_t | x_0), t ~ U(eps, T).
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from . import _checks
from .score import ScoreModel
from .sde import SDE, VESDE, VPSDE, batch_broadcast

REDUCTIONS = ("mean", "sum")

# Importance-sampling tables per SDE and eps: (log t grid, cumulative integral, Z), float64 on CPU.
_IS_TABLES: "weakref.WeakKeyDictionary[SDE, dict]" = weakref.WeakKeyDictionary()
_IS_DEVICE_TABLES: "weakref.WeakKeyDictionary[SDE, dict]" = weakref.WeakKeyDictionary()
_IS_GRID = 20001


# ---- shared helpers ---------------------------------------------------------------------------
def _check_common(model, sde, x0, reduce, sde_type=SDE, loss_name="dsm_loss") -> None:
    if not callable(model):
        raise ValueError(f"model must be callable as model(x, t) -> score, got {type(model).__name__}")
    if not isinstance(sde, sde_type):
        raise ValueError(f"sde must be a {sde_type.__name__} for {loss_name}, got {type(sde).__name__}")
    # Shape and dtype only: a finiteness check would cost a host synchronisation every training step.
    if not torch.is_tensor(x0) or not x0.is_floating_point() or x0.dim() < 2 or x0.shape[0] == 0:
        got = f"shape {tuple(x0.shape)}, dtype {x0.dtype}" if torch.is_tensor(x0) else type(x0).__name__
        raise ValueError(f"x0 must be a floating-point tensor of shape (B, ...) with B >= 1, got {got}")
    _checks.choice(reduce, "reduce", REDUCTIONS)


def _uniform(n: int, like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _normal(like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _index(n: int, N: int, like: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randint(N, (n,), generator=generator, device=device).to(like.device)


def _step_time(i: Tensor, sde: SDE, like: Tensor) -> Tensor:
    """t_i = T i / (N - 1), in at least float32 (which holds every index exactly; i / (N - 1) is exactly 1
    at the last index), so a half-precision x0 never gets a time above T."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    return (i.to(dtype) / (sde.N - 1) * sde.T).to(like.dtype)


def _is_score_model(model) -> bool:
    """Whether ``model`` is a ScoreModel, possibly wrapped by DDP (``.module``) or torch.compile (``._orig_mod``)."""
    for _ in range(4):
        if isinstance(model, ScoreModel):
            return True
        inner = getattr(model, "_orig_mod", None)
        model = inner if inner is not None else getattr(model, "module", None)
        if model is None:
            return False
    return False


def _score(model, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
    # without labels the call stays model(x, t): any plain score function is a model
    s = model(x, t) if y is None else model(x, t, y=y)
    if not torch.is_tensor(s) or s.shape != x.shape:
        got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
        raise ValueError(f"model must return a tensor shaped like x {tuple(x.shape)}, got {got}")
    return s


def _reduce(sq: Tensor, reduce: str) -> Tensor:
    """Per-sample reduction over the data dimensions, then the mean over the batch."""
    per_sample = sq.reshape(sq.shape[0], -1).mean(1) if reduce == "mean" else sq.reshape(sq.shape[0], -1).sum(1)
    return per_sample.mean()


# ---- importance sampling of t for the likelihood weighting ----------------------------------------
def likelihood_weight_table(sde: SDE, eps: float) -> Tuple[Tensor, Tensor, float]:
    """(log t grid, C(t) on the grid, Z) for w(t) = g(t)^2 / sigma(t)^2 on [eps, T]: C(t) = ∫_eps^t w, Z = C(T).

    The integral is taken in u = log t, where the integrand w(t) t is smooth and bounded even though
    w ~ 1/t near 0 for VP, by the trapezoidal rule on 20001 points in float64 (relative error ~1e-7).
    Cached per (sde, eps).
    """
    tables = _IS_TABLES.setdefault(sde, {})
    if eps not in tables:
        u = torch.linspace(math.log(eps), math.log(sde.T), _IS_GRID, dtype=torch.float64)
        t = u.exp()
        t[0], t[-1] = eps, sde.T  # exact end points despite exp(log(.)) rounding
        _, sigma = sde.marginal_coeffs(t, t)
        h = sde.diffusion(t, t) ** 2 / sigma ** 2 * t
        cum = torch.cat([h.new_zeros(1), torch.cumsum(0.5 * (h[1:] + h[:-1]) * torch.diff(u), 0)])
        tables[eps] = (u, cum, float(cum[-1]))
    return tables[eps]


def _importance_times(sde: SDE, eps: float, uniform: Tensor) -> Tuple[Tensor, float]:
    """Inverse-CDF draws t ~ p(t) = w(t) / Z on [eps, T] from uniforms, and Z / (T - eps)."""
    u_grid, cum, Z = likelihood_weight_table(sde, eps)
    key = (eps, uniform.device)
    if key not in _IS_DEVICE_TABLES.setdefault(sde, {}):
        # one copy per device, not one host-to-device transfer per training step
        _IS_DEVICE_TABLES[sde][key] = (u_grid.to(uniform.device), cum.to(uniform.device))
    u_grid, cum = _IS_DEVICE_TABLES[sde][key]
    target = uniform.double() * Z
    j = torch.searchsorted(cum, target, right=True).clamp(1, len(cum) - 1)
    lo, hi = cum[j - 1], cum[j]
    frac = ((target - lo) / (hi - lo)).clamp(0, 1)
    log_t = u_grid[j - 1] + frac * (u_grid[j] - u_grid[j - 1])
    t = log_t.exp().clamp(eps, sde.T).to(uniform.dtype)
    return t, Z / (sde.T - eps)


# ---- losses -------------------------------------------------------------------------------------
def dsm_loss(model: Callable[[Tensor, Tensor], Tensor], sde: SDE, x0: Tensor, *, eps: float = 1e-5,
             likelihood_weighting: bool = False, importance_sampling: bool = False, reduce: str = "mean",
             generator: Optional[torch.Generator] = None, y: Optional[Tensor] = None) -> Tensor:
    """Continuous-time denoising score matching loss (a scalar) of ``model(x, t) -> score``, or with
    class labels ``y`` (B,) of ``model(x, t, y=y)``, the conditional score s(x, t, y).

    t ~ U(eps, T) (or p(t) ∝ g^2 / sigma^2 with ``importance_sampling``), z ~ N(0, I),
    x_t = alpha x0 + sigma z; per-sample loss

        || sigma s(x_t, t) + z ||^2                          (default, lambda = sigma^2)
        g(t)^2 || s(x_t, t) + z / sigma ||^2                 (likelihood_weighting)
        (Z / (T - eps)) || sigma s(x_t, t) + z ||^2           (likelihood_weighting + importance_sampling)

    reduced over data dimensions by ``reduce`` ("mean" or "sum") and averaged over the batch. Draws:
    B uniforms for t, then z like x0, from ``generator``.
    """
    _check_common(model, sde, x0, reduce)
    _check_y(y, x0)
    eps = _checks.eps(sde, eps)
    if importance_sampling and not likelihood_weighting:
        raise ValueError("importance_sampling=True requires likelihood_weighting=True "
                         "(it samples t from the likelihood weighting g^2 / sigma^2)")
    # t first, then z: the same generator state gives the same z with or without importance sampling.
    uniform = _uniform(x0.shape[0], x0, generator)
    if importance_sampling:
        t, weight = _importance_times(sde, eps, uniform)
    else:
        t = eps + (sde.T - eps) * uniform
    z = _normal(x0, generator)
    alpha, sigma = sde.marginal_coeffs(t, x0)
    alpha, sigma = batch_broadcast(alpha, x0), batch_broadcast(sigma, x0)
    s = _score(model, alpha * x0 + sigma * z, t, y)
    if not likelihood_weighting:
        sq = (sigma * s + z) ** 2
    elif importance_sampling:
        sq = weight * (sigma * s + z) ** 2
    else:
        g2 = batch_broadcast(sde.diffusion(t, x0) ** 2, x0)
        sq = g2 * (s + z / sigma) ** 2
    return _reduce(sq, reduce)


def ddpm_loss(model: Callable[[Tensor, Tensor], Tensor], sde: VPSDE, x0: Tensor, *, reduce: str = "mean",
              generator: Optional[torch.Generator] = None, y: Optional[Tensor] = None) -> Tensor:
    """Ho et al.'s simple loss || eps_hat(x_i, t_i) - z ||^2 on the DDPM chain of a VPSDE.

    i ~ U{0 .. N-1}, x_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) z, t_i = T i / (N - 1) and
    eps_hat = -sqrt(1 - abar_i) model(x_i, t_i). For a ScoreModel, eps_hat is its own noise
    prediction ``model(x, t, output="eps")`` (the network output itself for parameterization "eps"),
    which stays finite at i = 0 where the continuous sigma(t_0 = 0) = 0 makes the score infinite.
    Class labels ``y`` go to the model as in ``dsm_loss``.
    """
    _check_common(model, sde, x0, reduce, VPSDE, "ddpm_loss")
    _check_y(y, x0)
    i = _index(x0.shape[0], sde.N, x0, generator)
    z = _normal(x0, generator)
    abar = sde.table("alphas_cumprod", x0)[i]
    a, s = batch_broadcast(abar.sqrt(), x0), batch_broadcast((1 - abar).sqrt(), x0)
    x = a * x0 + s * z
    t = _step_time(i, sde, x0)
    if _is_score_model(model):
        # through the wrapper, if any, so DDP and torch.compile see the call
        eps_hat = model(x, t, output="eps") if y is None else model(x, t, output="eps", y=y)
    else:
        eps_hat = -s * _score(model, x, t, y)
    return _reduce((eps_hat - z) ** 2, reduce)


def smld_loss(model: Callable[[Tensor, Tensor], Tensor], sde: VESDE, x0: Tensor, *, reduce: str = "mean",
              generator: Optional[torch.Generator] = None, y: Optional[Tensor] = None) -> Tensor:
    """NCSN's loss on the SMLD ladder of a VESDE: || sigma_i s(x, t_i) + z ||^2 (lambda = sigma_i^2 weighting).

    i ~ U{0 .. N-1}, sigma_i = discrete_sigmas[i] (= sigma(t_i)), x = x0 + sigma_i z, t_i = T i / (N - 1).
    Class labels ``y`` go to the model as in ``dsm_loss``.
    """
    _check_common(model, sde, x0, reduce, VESDE, "smld_loss")
    _check_y(y, x0)
    i = _index(x0.shape[0], sde.N, x0, generator)
    z = _normal(x0, generator)
    sigma = batch_broadcast(sde.table("discrete_sigmas", x0)[i], x0)
    t = _step_time(i, sde, x0)
    s = _score(model, x0 + sigma * z, t, y)
    return _reduce((sigma * s + z) ** 2, reduce)


# ---- class labels -------------------------------------------------------------------------------
def _check_y(y, x0: Tensor) -> None:
    if y is None:
        return
    if not torch.is_tensor(y) or y.shape != x0.shape[:1] or y.is_floating_point() or y.is_complex() \
            or y.dtype == torch.bool:
        got = f"shape {tuple(y.shape)}, dtype {y.dtype}" if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must be an integer tensor of shape ({x0.shape[0]},) of class labels, got {got}")


def drop_labels(y: Tensor, p: float, null_class: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Label dropout of classifier-free guidance: each label replaced by ``null_class`` with
    probability ``p``, independently. Draws B uniforms u from ``generator`` (on its device) and
    drops label i where u_i < p, so p = 0 keeps every label."""
    if not torch.is_tensor(y) or y.dim() != 1 or y.is_floating_point():
        got = f"shape {tuple(y.shape)}, dtype {y.dtype}" if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must be an integer tensor of shape (B,), got {got}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"p must be a number in [0, 1), got {p!r}")
    if isinstance(null_class, bool) or not isinstance(null_class, int) or null_class < 1:
        raise ValueError(f"null_class must be a positive integer (the number of classes K), got {null_class!r}")
    device = generator.device if generator is not None else y.device
    u = torch.rand(y.shape[0], generator=generator, device=device).to(y.device)
    return torch.where(u < p, torch.full_like(y, null_class), y)


def noisy_classifier_loss(classifier: Callable[[Tensor, Tensor], Tensor], sde: SDE, x0: Tensor, y: Tensor, *,
                          eps: float = 1e-5, generator: Optional[torch.Generator] = None) -> Tensor:
    """Cross-entropy of a time-dependent classifier ``classifier(x, t) -> logits (B, K)`` on perturbed data
    (Song et al. 2021, appendix I): t ~ U(eps, T), z ~ N(0, I), x_t = alpha(t) x0 + sigma(t) z,

        L = mean_i [ -log softmax(classifier(x_t, t))_i[y_i] ],

    minimised by the class posterior p_t(y | x_t) of the perturbed data. Draws, as ``dsm_loss``: B
    uniforms for t, then z like x0, from ``generator``.
    """
    if not callable(classifier):
        raise ValueError(f"classifier must be callable as classifier(x, t) -> logits, got {type(classifier).__name__}")
    _check_common(classifier, sde, x0, "mean", loss_name="noisy_classifier_loss")
    if y is None:
        raise ValueError("y must be an integer tensor of class labels, got None")
    _check_y(y, x0)
    eps = _checks.eps(sde, eps)
    t = eps + (sde.T - eps) * _uniform(x0.shape[0], x0, generator)
    z = _normal(x0, generator)
    alpha, sigma = sde.marginal_coeffs(t, x0)
    logits = classifier(batch_broadcast(alpha, x0) * x0 + batch_broadcast(sigma, x0) * z, t)
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] != x0.shape[0]:
        got = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ValueError(f"classifier must return logits of shape ({x0.shape[0]}, K), got {got}")
    # in float32 at least: under bf16 autocast the log-sum-exp of the logits loses the small classes
    return torch.nn.functional.cross_entropy(logits.float(), y.to(logits.device).long())


LOSSES = {"dsm": dsm_loss, "ddpm": ddpm_loss, "smld": smld_loss}
