"""Guidance as score transforms: each function takes score functions and returns a new
``score_fn(x, t)``, so every sampler and the likelihood use it unchanged.

Classifier guidance (Dhariwal & Nichol 2021; Song et al. 2021, section 5): by Bayes' rule

    ∇x log p_t(x | y) = ∇x log p_t(x) + ∇x log p_t(y | x),

so a time-dependent classifier p_t(y | x_t) turns an unconditional score into a conditional one;
``scale`` > 1 sharpens towards the class (the distribution ∝ p_t(x) p_t(y | x)^scale).

Classifier-free guidance (Ho & Salimans 2022): a network trained with its label dropped part of
the time gives both s(x, t, y) and s(x, t) = s(x, t, None), and

    s_w(x, t) = (1 - w) s(x, t) + w s(x, t, y),

which is the conditional score at w = 1, the unconditional one at w = 0, and for w > 1 the score of
∝ p_t(x)^(1-w) p_t(x | y)^w = p_t(x) p_t(y | x)^w, the same target as classifier guidance.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

from .sde import TimeLike

Labels = Union[int, Tensor]


def _scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale or abs(scale) == float("inf"):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return float(scale)


def _batch_labels(y: Labels, x: Tensor) -> Tensor:
    """y as (B,) int64 on x's device: an int is every sample's class; a tensor must have one label per row."""
    if isinstance(y, int) and not isinstance(y, bool):
        return torch.full((x.shape[0],), y, dtype=torch.long, device=x.device)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have one label per sample, shape ({x.shape[0]},), got {tuple(y.shape)}")
    return y.to(device=x.device)


def _check_labels(y: Labels) -> Labels:
    if isinstance(y, int) and not isinstance(y, bool):
        if y < 0:
            raise ValueError(f"y must be a class index >= 0, got {y}")
        return y
    if not torch.is_tensor(y) or y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        got = f"a {y.dtype} tensor of shape {tuple(y.shape)}" if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must be an int or a 1-D integer tensor of class labels, got {got}")
    if y.device.type == "cpu" and (y < 0).any():
        raise ValueError(f"y must hold class indices >= 0, got {y.tolist()}")
    return y.long()


def classifier(score_fn: Callable, classifier_logp: Callable, y: Labels, scale: float = 1.0) -> Callable:
    """``score_fn(x, t) + scale · ∇x log p_t(y | x)``.

    Args:
        score_fn: the unconditional score ``score_fn(x, t)``.
        classifier_logp: ``classifier_logp(x, t) -> (B, K)`` log-probabilities log p_t(k | x) of a
            time-dependent classifier (e.g. ``GaussianMixture.class_log_prob`` or a trained noisy
            classifier's ``classifier_logp``). It must treat the rows of a batch independently (no
            batch statistics), since the gradient of the summed log-probabilities is taken.
        y: the class of every sample, an int or a (B,) integer tensor.
        scale: the guidance weight (1: the conditional score; 0: ``score_fn`` itself).

    The gradient is taken with autograd enabled locally (the samplers run under ``no_grad``); the
    graph is dropped after each call.
    """
    y, scale = _check_labels(y), _scale(scale)

    def guided(x: Tensor, t: TimeLike) -> Tensor:
        score = score_fn(x, t)
        if scale == 0:
            return score
        labels = _batch_labels(y, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = classifier_logp(xg, t)
            if not torch.is_tensor(logp) or logp.dim() != 2 or logp.shape[0] != x.shape[0]:
                got = tuple(logp.shape) if torch.is_tensor(logp) else type(logp).__name__
                raise ValueError(f"classifier_logp must return (B, K) = ({x.shape[0]}, K) log-probabilities, got {got}")
            grad, = torch.autograd.grad(logp.gather(1, labels[:, None]).sum(), xg)
        return score + scale * grad.to(score.dtype)

    return guided


def classifier_free(cond_score_fn: Callable, y: Labels, scale: float = 1.0) -> Callable:
    """``(1 - scale) · s(x, t) + scale · s(x, t, y)`` with ``s = cond_score_fn``.

    Args:
        cond_score_fn: ``cond_score_fn(x, t, y)``, the conditional score; ``y=None`` gives the
            unconditional one (e.g. ``ScoreModel.cond_score_fn`` of a model trained with label
            dropout, or ``GaussianMixture.class_score_fn(sde)``).
        y: the class of every sample, an int or a (B,) integer tensor.
        scale: the guidance weight w: 1 is the conditional score (one call), 0 the unconditional
            one (one call), anything else costs two calls.
    """
    y, scale = _check_labels(y), _scale(scale)

    def guided(x: Tensor, t: TimeLike) -> Tensor:
        if scale == 0:
            return cond_score_fn(x, t, None)
        cond = cond_score_fn(x, t, _batch_labels(y, x))
        if scale == 1:
            return cond
        return cond + (1 - scale) * (cond_score_fn(x, t, None) - cond)

    return guided


__all__ = ["classifier", "classifier_free"]
