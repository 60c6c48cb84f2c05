"""Reduced precision and memory format for sampling: run the network's forward pass under bf16
autocast, and image networks in channels_last, while the sampler's own arithmetic (the x updates,
the SDE coefficients) stays in the sample's dtype.

``precision_score(score_fn, precision="bf16")`` wraps a ``score_fn(x, t)``. For a ``ScoreModel``
(a run's ``score_fn``) only its network ``net(x, c)`` runs under
``torch.autocast(x.device.type, dtype=torch.bfloat16)``, its output cast back to x's dtype; the
parameterization's arithmetic and the sampler's stay in x's dtype (bf16 keeps 8 significant bits:
a relative error of about 4e-3 per network output value). Any other callable runs under autocast
as a whole, its result cast back to ``x.dtype`` (the exact ``GaussianMixture`` score has
autocast-eligible ops, so it changes at bf16's precision there). Nothing here reads a tensor back
to the host.

``to_channels_last(net)`` converts a network with 4-D (convolution) weights to
``torch.channels_last`` in place; ``precision_score(..., channels_last=True)`` then also hands the
network 4-D inputs in that format and returns the score in the default (contiguous) layout.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"bf16": torch.bfloat16}


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def autocast_score(score_fn: Callable, precision: str = "bf16", device_type: Optional[str] = None) -> Callable:
    """``score_fn`` run under autocast at ``precision`` ("fp32": returned unchanged), its output
    cast back to x's dtype. ``device_type`` defaults to each call's ``x.device.type``."""
    return precision_score(score_fn, precision, device_type=device_type)


def precision_score(score_fn: Callable, precision: str = "fp32", *, channels_last: bool = False,
                    device_type: Optional[str] = None) -> Callable:
    """``score_fn`` with its forward pass under bf16 autocast (``precision="bf16"``) and/or with
    4-D inputs in channels_last (``channels_last=True``); the result has x's dtype and the default
    memory format. With "fp32" and no channels_last, ``score_fn`` itself is returned."""
    _check(precision)
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable, got {type(score_fn).__name__}")
    if precision == "fp32" and not channels_last:
        return score_fn
    dtype = _DTYPES.get(precision)
    from .score import ScoreModel
    if isinstance(score_fn, ScoreModel) and device_type is None:
        # only the network under autocast: the parameterization's arithmetic (-eps / sigma) stays in x's dtype
        return ScoreModel(_PrecisionNet(score_fn.net, dtype, channels_last), score_fn.sde,
                          parameterization=score_fn.parameterization, conditioning=score_fn.conditioning)

    def score(x: Tensor, t, *args, **kwargs) -> Tensor:
        xin = x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
        if dtype is None:
            s = score_fn(xin, t, *args, **kwargs)
        else:
            with torch.autocast(device_type or x.device.type, dtype=dtype):
                s = score_fn(xin, t, *args, **kwargs)
        return s.to(dtype=x.dtype, memory_format=torch.contiguous_format)

    score.__wrapped__ = score_fn
    score.precision = precision
    score.channels_last = channels_last
    return score


class _PrecisionNet(nn.Module):
    """``net(x, c)`` under autocast / with channels_last inputs, its output in x's dtype and layout."""

    def __init__(self, net: nn.Module, dtype: Optional[torch.dtype], channels_last: bool):
        super().__init__()
        self.net, self.dtype, self.channels_last = net, dtype, channels_last

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        xin = x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x
        if self.dtype is None:
            out = self.net(xin, c)
        else:
            with torch.autocast(x.device.type, dtype=self.dtype):
                out = self.net(xin, c)
        return out.to(dtype=x.dtype, memory_format=torch.contiguous_format)


def to_channels_last(net: nn.Module) -> nn.Module:
    """``net`` with its 4-D parameters and buffers in ``torch.channels_last`` (in place; returned).
    A network without 4-D weights (an MLP) is left as it is."""
    if any(p.dim() == 4 for p in list(net.parameters()) + list(net.buffers())):
        net.to(memory_format=torch.channels_last)
    return net
