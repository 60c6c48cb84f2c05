"""scoresde: continuous-time score-based generative models (Song et al., ICLR 2021)."""
from . import analytic, data, guidance, losses, metrics, nets, run, sampling, train
from ._checks import NonFiniteError
from .analytic import GaussianMixture
from .losses import ddpm_loss, dsm_loss, smld_loss
from .score import ScoreModel
from .run import load
from .likelihood import BitsPerDimResult, LikelihoodResult, bits_per_dim, log_likelihood
from .sde import SDE, ReverseSDE, SubVPSDE, VESDE, VPSDE

__version__ = "0.1.0"

__all__ = [
    "SDE", "ReverseSDE", "VPSDE", "SubVPSDE", "VESDE", "GaussianMixture", "analytic", "sampling",
    "log_likelihood", "bits_per_dim", "LikelihoodResult", "BitsPerDimResult", "ScoreModel",
    "dsm_loss", "ddpm_loss", "smld_loss", "load", "data", "losses", "metrics", "nets", "run", "train",
    "NonFiniteError",
]
