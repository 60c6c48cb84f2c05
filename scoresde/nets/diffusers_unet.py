"""diffusers' ``UNet2DModel`` as a scoresde network ``net(x, c) -> score``.

The network is diffusers' own class, built from its config (the ``unet`` mapping: the keys of
``UNet2DModel.__init__``, as in a saved ``config.json``); this module only calls it and turns its
output into the score, so that ``ScoreModel(net, sde, parameterization="score", ...)`` needs nothing
diffusers-specific. ``prediction_type`` says what the UNet predicts:

* "score": the output is the score itself, as for ``ScoreSdeVeScheduler`` models (NCSN++ ports),
  which the pipeline calls with c = sigma(t) and whose output it uses as the score unchanged (a
  ``time_embedding_type="fourier"`` UNet2DModel divides by that sigma itself).
* "epsilon", "sample", "v_prediction": a DDPM-family model trained on the discrete chain of
  ``num_train_timesteps`` = N linear betas ``linspace(beta_start, beta_end, N)``, called with the
  chain index c = t (N - 1). With the chain's own coefficients a_c = sqrt(alphā_c), s_c =
  sqrt(1 - alphā_c) (a^2 + s^2 = 1; log alphā interpolated linearly between integer indices, so
  they are the chain's exact values at every index) the score is

      epsilon:       -out / s_c
      sample:        (a_c out - x) / s_c^2
      v_prediction:  -(s_c x + a_c out) / s_c          (v = a eps - s x0, so eps = s x + a v)

  The chain's s_c, not the continuous VP-SDE's sigma(t), is the divisor, as in the reference
  implementation's score function for its discrete (``continuous=False``) DDPM models: the two
  differ by 41% at index 1, 5% at index 10, 0.05% at index 100, so only the chain's value makes
  ``ddim(..., timesteps=...)`` / ``ancestral(..., timesteps=...)`` reproduce diffusers' schedulers.

diffusers is optional: it is imported when a network is built, and its absence is one error line.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

PREDICTION_TYPES = ("score", "epsilon", "sample", "v_prediction")
MISSING = "scoresde[diffusers] is needed: pip install 'scoresde[diffusers]'"


class DiffusersMissing(ImportError, ValueError):
    """diffusers is not installed (a ValueError too, so the command line reports it in one line)."""


def import_diffusers():
    """The ``diffusers`` module, or ``DiffusersMissing`` with the one line saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise DiffusersMissing(MISSING) from None
    return diffusers


def unet_init_keys() -> tuple:
    """The keyword arguments of the installed diffusers' ``UNet2DModel.__init__``."""
    import inspect
    params = inspect.signature(import_diffusers().UNet2DModel.__init__).parameters
    return tuple(k for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)


def plain(value: Any) -> Any:
    """Tuples as lists, recursively (for YAML and JSON)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class DiffusersUNet2D(nn.Module):
    """``net(x, c)``: the score from diffusers' ``UNet2DModel`` (see the module docstring).

    Args:
        in_channels, image_size: from the data shape (C, H, H); they must agree with ``unet``'s
            ``in_channels``, ``out_channels`` and (when it is an integer) ``sample_size``.
        unet: the ``UNet2DModel`` config (its ``__init__`` keywords).
        prediction_type: "score", "epsilon", "sample" or "v_prediction".
        beta_start, beta_end, num_train_timesteps: the linear discrete schedule (not used for "score").
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, unet: Optional[Dict[str, Any]] = None,
                 prediction_type: str = "epsilon", beta_start: float = 1e-4, beta_end: float = 0.02,
                 num_train_timesteps: int = 1000):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        config = dict(unet or {})
        config.setdefault("in_channels", in_channels)
        config.setdefault("out_channels", in_channels)
        config.setdefault("sample_size", image_size)
        if config["in_channels"] != in_channels or config["out_channels"] != in_channels:
            raise ValueError(f"the UNet2DModel maps {config['in_channels']} to {config['out_channels']} channels; "
                             f"a score network maps the data's {in_channels} channels to as many")
        size = config["sample_size"]
        if isinstance(size, int) and size != image_size:
            raise ValueError(f"the UNet2DModel's sample_size {size} differs from the image size {image_size}")
        if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
            raise ValueError("a class-conditional UNet2DModel (num_class_embeds / class_embed_type) is not supported")
        accepted = unet_init_keys()
        unknown = sorted(set(config) - set(accepted))
        if unknown:
            raise ValueError(f"the installed diffusers' UNet2DModel does not take {', '.join(unknown)}")
        self.unet = import_diffusers().UNet2DModel(**config)
        self.prediction_type = prediction_type
        self.learned_embedding = config.get("time_embedding_type") == "learned"
        if prediction_type != "score":
            N = int(num_train_timesteps)
            if not (N >= 2 and 0 < beta_start < beta_end < 1):
                raise ValueError(f"the discrete schedule needs num_train_timesteps >= 2 and 0 < beta_start < beta_end < 1, "
                                 f"got {N}, {beta_start}, {beta_end}")
            betas = torch.linspace(float(beta_start), float(beta_end), N, dtype=torch.float64)
            # log alphā_i, float64 then stored at the module's precision (not in the state dict)
            self.register_buffer("log_alphas_cumprod", torch.cumsum(torch.log1p(-betas), 0).float(), persistent=False)

    def chain_coeffs(self, c: Tensor):
        """(a_c, s_c) of the discrete chain at (fractional) indices c, shape (B,)."""
        table = self.log_alphas_cumprod
        N = table.shape[0]
        c = c.to(table.dtype).clamp(0, N - 1)
        lo = c.floor().long().clamp(max=N - 2)
        w = c - lo.to(c.dtype)
        log_ab = table[lo] * (1 - w) + table[lo + 1] * w
        return torch.exp(0.5 * log_ab), torch.sqrt(-torch.expm1(log_ab))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        timestep = c.round().long() if self.learned_embedding else c
        out = self.unet(x, timestep).sample
        if self.prediction_type == "score":
            return out
        a, s = (v.to(out.dtype).reshape(-1, *([1] * (x.dim() - 1))) for v in self.chain_coeffs(c))
        if self.prediction_type == "epsilon":
            return -out / s
        if self.prediction_type == "sample":
            return (a * out - x) / s ** 2
        return -(s * x + a * out) / s

    def extra_repr(self) -> str:
        return f"prediction_type={self.prediction_type!r}"


__all__ = ["DiffusersUNet2D", "DiffusersMissing", "PREDICTION_TYPES", "MISSING", "import_diffusers", "plain"]
