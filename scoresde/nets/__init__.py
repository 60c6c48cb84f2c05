"""Score networks: time embeddings, an MLP for low-dimensional data, a U-Net for images.

Every network is called as ``net(x, c)`` with x of shape (B, ...) and the conditioning c of shape
(B,) (time t or log sigma(t), chosen by ``scoresde.score.ScoreModel``), and returns a tensor
shaped like x. ``MLP`` and ``UNet`` may be class-conditional (``num_classes`` K > 0), then called as
``net(x, c, y)`` with y (B,) class labels, K (or y None) the null class.

``build_classifier`` builds the time-dependent classifiers of ``classifier`` (the same two families'
encoders with a linear head: logits (B, K)) from the same keyword arguments.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Sequence

from torch import nn

from .embeddings import GaussianFourierProjection, SinusoidalEmbedding
from .ddpm_ref import DDPM
from .mlp import MLP
from .ncsnpp import NCSNpp
from .unet import UNet
from .classifier import CLASSIFIERS, MLPClassifier, UNetClassifier
from .checkpointing import enable_checkpointing
from .diffusers_unet import DiffusersUNet2D  # diffusers itself is imported only when one is built

# Arguments build_net derives from data_shape, so they are not accepted as keywords.
_DERIVED = {"mlp": ("dim",), "unet": ("in_channels", "image_size"), "ncsnpp": ("num_channels", "image_size"),
            "ddpm": ("num_channels", "image_size"),
            "diffusers_unet2d": ("in_channels", "image_size")}
NETS = {"mlp": MLP, "unet": UNet, "ncsnpp": NCSNpp, "ddpm": DDPM, "diffusers_unet2d": DiffusersUNet2D}


def net_signature(name: str) -> Dict[str, Any]:
    """The keyword arguments ``build_net(name, ...)`` accepts, with their defaults (those that follow
    from data_shape left out), e.g. for typing config values without building a network."""
    if name not in NETS:
        raise ValueError(f"name must be one of {tuple(NETS)}, got {name!r}")
    params = inspect.signature(NETS[name].__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and k not in _DERIVED[name]}


def build_net(name: str, data_shape: Sequence[int], **kwargs) -> nn.Module:
    """A network for data of shape ``data_shape`` (one sample, no batch dimension).

    "mlp": MLP(dim=prod(data_shape), **kwargs); "unet": data_shape = (C, H, H) gives
    UNet(in_channels=C, image_size=H, **kwargs); "ncsnpp" / "ddpm" (the reference implementation's
    NCSN++ / DDPM++ and DDPM, checkpoint-compatible): NCSNpp / DDPM(num_channels=C, image_size=H, **kwargs).
    """
    if name not in NETS:
        raise ValueError(f"name must be one of {tuple(NETS)}, got {name!r}")
    try:
        shape = tuple(int(d) for d in data_shape)
        ok = len(shape) >= 1 and all(d >= 1 and d == s for d, s in zip(shape, data_shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"data_shape must be a non-empty sequence of positive integers, got {data_shape!r}")
    accepted = tuple(net_signature(name))
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        derived = [k for k in unknown if k in _DERIVED[name]]
        hint = f" ({', '.join(derived)}: derived from data_shape)" if derived else ""
        raise ValueError(f"unknown keyword argument(s) for {name!r}: {', '.join(unknown)}{hint}; "
                         f"accepted: {', '.join(accepted)}")
    if name == "mlp":
        return MLP(math.prod(shape), **kwargs)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"data_shape must be (C, H, W) with H = W for {name!r}, got {tuple(data_shape)}")
    channels_key, size_key = _DERIVED[name]
    return NETS[name](**{channels_key: shape[0], size_key: shape[1]}, **kwargs)


def build_classifier(name: str, data_shape: Sequence[int], **kwargs) -> nn.Module:
    """A time-dependent classifier for data of shape ``data_shape``: "mlp" -> MLPClassifier, "unet" ->
    UNetClassifier, taking the keyword arguments of the score network of that name (``num_classes``
    the number of classes K >= 2)."""
    if name not in CLASSIFIERS:
        raise ValueError(f"name must be one of {tuple(CLASSIFIERS)} for a classifier, got {name!r}")
    accepted = tuple(net_signature(name))
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"unknown keyword argument(s) for a {name!r} classifier: {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted)}")
    shape = tuple(int(d) for d in data_shape)
    if name == "mlp":
        return MLPClassifier(math.prod(shape), **kwargs)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"data_shape must be (C, H, W) with H = W for {name!r}, got {tuple(data_shape)}")
    return UNetClassifier(in_channels=shape[0], image_size=shape[1], **kwargs)


__all__ = ["GaussianFourierProjection", "SinusoidalEmbedding", "MLP", "UNet", "NCSNpp", "DDPM", "build_net",
           "net_signature", "NETS", "MLPClassifier", "UNetClassifier", "CLASSIFIERS", "build_classifier",
           "enable_checkpointing"]
