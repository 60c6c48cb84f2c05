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

``compile_score(score_fn)`` compiles the network with ``torch.compile`` (see its docstring): the
fixed-step samplers and the fixed-step likelihood call it with the same shapes, dtypes and
strides at every step, so it compiles once, on the first call, and is never recompiled.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16")
_DTYPES = {"bf16": torch.bfloat16}
#: ``torch.compile`` modes (None is "default")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the modes whose compiled code runs as CUDA graphs on a GPU (outputs in memory reused by the next replay)
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


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


def compile_score(score_fn: Callable, *, mode: Optional[str] = None, backend="inductor",
                  dynamic: Optional[bool] = False) -> Callable:
    """``score_fn`` with its network compiled by ``torch.compile(mode=, backend=, dynamic=)``.

    What is compiled: for a ``ScoreModel`` only its network ``net(x, c[, y])``; the result is a
    new ``ScoreModel`` (same SDE, parameterization and conditioning; ``score_fn`` itself is left
    as it was) whose ``net`` is the compiled module, sharing the original's parameters (save
    the original's ``state_dict``: the compiled one's keys carry torch.compile's ``_orig_mod.``). The time
    checks and the parameterization's arithmetic (c from t, -eps / sigma) and the sampler's loop
    stay eager: the compiled graph is the network alone and sees the same input shapes at every
    step. Any other callable ``score_fn(x, t)`` is compiled whole (its Python float or CPU-tensor
    checks, if any, become graph breaks).

    Why fixed shapes matter: with ``dynamic=False`` (the default) the graph is specialised to the
    shapes, dtypes and strides of its first call; a call with other ones compiles a new graph
    (seconds to minutes), and after ``torch._dynamo.config.recompile_limit`` (8) of them the
    function falls back to eager. The fixed-step samplers (``ddim``, ``dpm_solver``, ``heun``,
    ``euler_maruyama``, ``ancestral``, ``predictor_corrector``, ``probability_flow`` and
    ``reverse_sde``), the adaptive ones (whose batch keeps its shape too) and ``log_likelihood``
    hand the score x of one shape and t as a (B,) tensor of x's dtype, laid out alike, at every
    step (never a Python float, which dynamo would bake into the graph as a constant and recompile
    for at every step), so a run compiles once, on its first network call, and the next run with
    the same batch shape reuses the graph. Compile time is paid on the first call
    (the first batch is slower); a last, smaller batch compiles once more. ``dynamic=True``
    compiles one graph for any batch size instead (symbolic shapes, usually slower code).

    ``mode``: torch.compile's mode (None: "default"). On a GPU "reduce-overhead" (and
    "max-autotune") also capture the compiled network as a CUDA graph, which removes the kernel
    launch overhead of small batches; a CUDA graph replays fixed shapes, so it needs a fixed batch
    size (each new shape is captured anew). A CUDA graph's outputs live in memory that its next
    replay overwrites, so in these modes the output is cloned before it is returned (samplers
    keep earlier scores across later calls: Heun's two stages, the multistep solver's history).
    On the CPU these modes are inductor's default code. ``backend``: "inductor" (default), or
    "eager" / "aot_eager" (no code generation: checks that the network traces, as the tests do),
    or a backend function.

    Autograd works through the compiled network (AOTAutograd compiles its backward too), so
    ``log_likelihood`` takes the result for its divergence (exact or Hutchinson).

    With ``precision_score``: compile last, ``compile_score(precision_score(model, "bf16",
    channels_last=True))``: the autocast region, the channels_last input conversion and the
    output cast then lie inside the compiled graph. The other order, ``precision_score(
    compile_score(model), ...)``, gives the same values (dynamo guards on the autocast state and
    traces the network's casts under it) with the output cast outside the graph; the command line
    uses it, compiling the run's network once for the guided and unguided scores alike.
    """
    if not callable(score_fn):
        raise ValueError(f"score_fn must be callable, got {type(score_fn).__name__}")
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"mode must be None or one of {COMPILE_MODES}, got {mode!r}")
    clone = mode in CUDAGRAPH_MODES
    from .score import ScoreModel
    if isinstance(score_fn, ScoreModel):
        net = torch.compile(score_fn.net, mode=mode, backend=backend, dynamic=dynamic)
        if clone:
            net = _ClonedOutput(net, int(getattr(score_fn.net, "num_classes", 0) or 0))
        return ScoreModel(net, score_fn.sde, parameterization=score_fn.parameterization,
                          conditioning=score_fn.conditioning)
    compiled = torch.compile(score_fn, mode=mode, backend=backend, dynamic=dynamic)
    if not clone:
        return compiled

    def score(x: Tensor, t, *args, **kwargs) -> Tensor:
        return compiled(x, t, *args, **kwargs).clone()

    score.__wrapped__ = score_fn
    return score


class _ClonedOutput(nn.Module):
    """A compiled network whose output is cloned out of a CUDA graph's reused output memory."""

    def __init__(self, compiled: Callable, num_classes: int):
        super().__init__()
        self.compiled, self.num_classes = compiled, num_classes

    def forward(self, x: Tensor, c: Tensor, *args) -> Tensor:
        return self.compiled(x, c, *args).clone()
