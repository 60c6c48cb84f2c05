"""Faults: non-finite scores, untrusted checkpoints, killed and resumed training, failing disks,
bad configs and arguments, a dying rank. Each case checks that the failure is one clear error and
that nothing is lost beyond the last checkpoint."""
import math

import pytest
import torch

import scoresde as sd
from scoresde import sampling as S
from scoresde._checks import NonFiniteError

MIX = sd.GaussianMixture([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]], [[[0.1, 0.0], [0.0, 0.2]], [[0.3, 0.1], [0.1, 0.2]]])


# ==== numerical faults ============================================================================

class FaultyScore:
    """The exact score, but NaN (or inf) for one sample once t drops below ``below``."""

    def __init__(self, sde, value=math.nan, below=0.5):
        self.sde, self.value, self.below, self.calls = sde, value, below, 0

    def __call__(self, x, t):
        self.calls += 1
        s = MIX.score(x, t, self.sde)
        bad = (t < self.below)[:, None] & (torch.arange(x.shape[0])[:, None] == 3)
        return torch.where(bad, torch.full_like(s, self.value), s)


FAULT_RUNS = [
    ("euler_maruyama", lambda f, s, x: S.euler_maruyama(f, s, x, steps=20, generator=torch.Generator().manual_seed(0))),
    ("predictor_corrector", lambda f, s, x: S.predictor_corrector(f, s, x, steps=10, generator=torch.Generator().manual_seed(0))),
    ("ancestral", lambda f, s, x: S.ancestral(f, s, x, steps=20, generator=torch.Generator().manual_seed(0))),
    ("ddim", lambda f, s, x: S.ddim(f, s, x, steps=20)),
    ("dpm_solver", lambda f, s, x: S.dpm_solver(f, s, x, steps=10, order=3, corrector=True)),
    ("heun", lambda f, s, x: S.heun(f, s, x, steps=10)),
    ("probability_flow", lambda f, s, x: S.probability_flow(f, s, x)),
    ("probability_flow", lambda f, s, x: S.probability_flow(f, s, x, method="rk4", steps=5)),
    ("reverse_sde", lambda f, s, x: S.reverse_sde(f, s, x, steps=20, generator=torch.Generator().manual_seed(0))),
    ("adaptive_sde", lambda f, s, x: S.adaptive_sde(f, s, x, generator=torch.Generator().manual_seed(0))),
    ("log_likelihood", lambda f, s, x: sd.log_likelihood(f, s, MIX.sample(8, torch.Generator().manual_seed(0)))),
    ("log_likelihood", lambda f, s, x: sd.log_likelihood(f, s, MIX.sample(8, torch.Generator().manual_seed(0)),
                                                         method="rk4", steps=5, estimator="exact")),
]


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("routine,run", FAULT_RUNS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(FAULT_RUNS)])
def test_non_finite_score_is_one_clear_error(routine, run, value):
    """A score that turns NaN/inf midway makes the routine raise NonFiniteError naming itself (a
    FloatingPointError), after a bounded number of evaluations, instead of returning NaN."""
    sde = sd.VPSDE()
    score = FaultyScore(sde, value)
    x_T = sde.prior_sampling((8, 2), generator=torch.Generator().manual_seed(1))
    with pytest.raises(NonFiniteError) as info:
        run(score, sde, x_T)
    msg = str(info.value)
    assert msg.startswith(routine) and "non-finite" in msg and "\n" not in msg, msg
    assert score.calls < 2000, f"{routine} took {score.calls} score calls to give up"


def test_finite_runs_are_untouched():
    sde = sd.VPSDE()
    x_T = sde.prior_sampling((8, 2), generator=torch.Generator().manual_seed(1))
    for _, run in FAULT_RUNS:
        run(FaultyScore(sde, below=-1.0), sde, x_T)  # never faulty: no error
