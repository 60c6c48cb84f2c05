"""Tests that kill the mutants of scoresde/sampling/implicit.py that the DDIM tests let through
(``make mutation MODULE=sampling_implicit``; see mutation/REPORT.md): its documented defaults."""
import torch

import scoresde as sd
from scoresde.sampling import ddim


def test_ddim_defaults_are_50_steps_and_no_progress_bar(capsys):
    """50 steps (51 score calls with the final denoising step) and nothing on stderr."""
    sde, calls = sd.VPSDE(), []

    def score(x, t):
        calls.append(1)
        return -x

    x_T = sde.prior_sampling((4, 2), generator=torch.Generator().manual_seed(0))
    ddim(score, sde, x_T)
    assert len(calls) == 51
    assert capsys.readouterr().err == ""
