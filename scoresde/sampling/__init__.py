"""Samplers: each a plain function ``sampler(score_fn, sde, x_T, **options) -> samples``.

All start from the given prior draw ``x_T``, run on a time grid from T down to ``eps`` and, with
``denoise=True`` (the default), finish with one Tweedie step to E[x_0 | x_eps]. With the exact
score they all converge to the same distribution, and the ODE ones to the same path.
"""
from .grids import SCHEDULES, Grid, logsnr, make_grid, time_grid
from .implicit import ddim
from .odeint import probability_flow
from .sdeint import reverse_sde
from .stochastic import CORRECTORS, PREDICTORS, ancestral, euler_maruyama, predictor_corrector

__all__ = [
    "euler_maruyama", "predictor_corrector", "ancestral", "probability_flow", "reverse_sde", "ddim",
    "time_grid", "make_grid", "Grid", "logsnr", "SCHEDULES", "PREDICTORS", "CORRECTORS",
]
