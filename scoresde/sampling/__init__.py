"""Samplers: each a plain function ``sampler(score_fn, sde, x_T, **options) -> samples``.

All start from the given prior draw ``x_T``, run on a time grid from T down to ``eps`` and, with
``denoise=True`` (the default), finish with one Tweedie step to E[x_0 | x_eps]. With the exact
score they all converge to the same distribution, and the ODE ones to the same path.

Randomness: ``generator=`` is a ``torch.Generator`` (one stream for the batch) or a
``generators.SampleGenerators`` (one generator per sample, EDM's StackedRandomGenerator): then the
prior draw and every noise draw give row r numbers from its own seed only, so a sample does not
depend on the batch it is drawn in. Every sampler draws through ``_loop.randn_like``;
``reverse_sde`` gives each row its own torchsde Brownian path. Two samplers still couple the rows
of a batch by design: ``predictor_corrector``'s "langevin" corrector (step size from batch-averaged
norms) and ``probability_flow`` with an adaptive method (one step size per batch).
``scoresde.generate`` draws many samples this way, sample i from seed + i.

Inverse problems (``inverse``): ``inpaint`` and ``colorize`` run any sampler on an observation;
the fixed-grid samplers take a per-step hook ``project(k, x, t_next) -> x`` for that (``_loop.run``).
"""
import torch

from .adaptive import AdaptiveStats, adaptive_sde
from .dpm_solver import dpm_solver
from .grids import SCHEDULES, Grid, logsnr, make_grid, time_grid
from .heun import heun
from .implicit import ddim
from .inverse import colorize, inpaint
from .odeint import ADAPTIVE_METHODS, probability_flow
from .sdeint import reverse_sde
from .stochastic import CORRECTORS, PREDICTORS, ancestral, euler_maruyama, predictor_corrector

#: name -> sampler, as the command line and configs name them
SAMPLERS = {
    "euler_maruyama": euler_maruyama, "predictor_corrector": predictor_corrector, "ancestral": ancestral,
    "probability_flow": probability_flow, "reverse_sde": reverse_sde, "ddim": ddim,
    "dpm_solver": dpm_solver, "heun": heun, "adaptive_sde": adaptive_sde,
}
#: samplers whose cost is set by rtol/atol, not steps
ADAPTIVE = {"adaptive_sde"}


def sample(name, score_fn, sde, shape, *, steps=None, eps=1e-3, generator=None, device=None,
           dtype=torch.float32, progress=False, **options):
    """Draw x_T from the SDE's prior with ``generator`` and run the sampler called ``name``.

    ``steps`` is ignored by adaptive methods (they use rtol/atol)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {name!r}")
    x_T = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    adaptive = name in ADAPTIVE or (name == "probability_flow" and options.get("method", "dopri5") in ADAPTIVE_METHODS)
    if steps is not None and not adaptive:
        options["steps"] = steps
    return SAMPLERS[name](score_fn, sde, x_T, eps=eps, generator=generator, progress=progress, **options)


__all__ = [
    "sample", "SAMPLERS",
    "euler_maruyama", "predictor_corrector", "ancestral", "probability_flow", "reverse_sde", "ddim",
    "dpm_solver", "heun", "adaptive_sde", "AdaptiveStats", "inpaint", "colorize",
    "time_grid", "make_grid", "Grid", "logsnr", "SCHEDULES", "PREDICTORS", "CORRECTORS",
]
