"""Argument checks shared by the samplers and the likelihood: each failure is one ValueError that
names the argument and what was expected. All run once, before any loop."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor


def choice(value, name: str, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def positive_int(value, name: str = "steps") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def number(value, name: str, lo: float, hi: float, *, closed: bool = False) -> float:
    """A finite float in the open interval (lo, hi), or in [lo, hi] with ``closed``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    inside = lo <= v <= hi if closed else lo < v < hi
    if not inside:
        brackets = "[]" if closed else "()"
        raise ValueError(f"{name} must be a number in {brackets[0]}{lo}, {hi}{brackets[1]}, got {value!r}")
    return v


def eps(sde, value) -> float:
    """The smallest time: in (0, T)."""
    return number(value, "eps", 0.0, sde.T)


def tolerance(value, name: str) -> float:
    return number(value, name, 0.0, 1.0)


def batch(x, name: str = "x_T") -> Tensor:
    """A floating tensor (B, ...) with B >= 1 and finite values (one host read, before any loop)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape (B, ...), got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if torch.is_tensor(x) else ""))
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def score_function(score_fn: Callable) -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap a score function so a wrongly shaped output is one clear error (a shape test, no sync)."""
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn).__name__}")

    def score(x: Tensor, t: Tensor) -> Tensor:
        s = score_fn(x, t)
        if not torch.is_tensor(s) or s.shape != x.shape:
            got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
            raise ValueError(f"score_fn must return a tensor shaped like x {tuple(x.shape)}, got {got}")
        return s

    return score


class NonFiniteError(FloatingPointError):
    """A sampler or likelihood produced NaN or inf: the score function returned non-finite values
    or the solver diverged."""


def finite_result(value: Tensor, routine: str) -> Tensor:
    """The one host read of a sampling or likelihood run, after its loop: NaN propagates through
    every update here, so checking the result catches a non-finite score at any step."""
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(f"{routine}: the result contains NaN or inf; the score function returned non-finite "
                             "values (or the solver diverged), so nothing is returned")
    return value
