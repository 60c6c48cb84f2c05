"""The feature networks of ``scoresde.evaluate`` and the pass that runs one over images:
torch-fidelity's Inception-v3 (the optional extra ``scoresde[eval]``), its weights taken from a
given file, torch.hub's cache or a download with a timeout, and refused unless they are plain
tensors; the shipped digits classifier; and any module or callable images -> features (or
(features, logits)), with the name its feature space is reported under."""
from __future__ import annotations

import math
import os
import socket
import sys
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor

from .images import _Images

EXTRA_HINT = "scoresde[eval] is needed: pip install 'scoresde[eval]'"
#: torch-fidelity's Inception-v3 weights (converted from TF's 2015-12-05 graph)
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
INCEPTION_HASH_PREFIX = "6726825d"       # sha256 prefix, as torch.hub checks it
INCEPTION_NAME = "inception-v3-compat"   # torch-fidelity's name for it
DOWNLOAD_TIMEOUT = 60.0                  # seconds without an answer before the download fails
DEFAULT_BATCH_SIZE = 200


# ---- the optional extra and Inception ---------------------------------------------------------------

def _torch_fidelity():
    """The torch_fidelity module, or one RuntimeError line saying how to get it."""
    try:
        import torch_fidelity
    except ImportError:
        raise RuntimeError(EXTRA_HINT) from None
    except Exception as e:  # e.g. a torchvision built for another torch
        raise RuntimeError(f"torch-fidelity is installed but does not import ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]}); its torchvision must be the build that matches "
                           f"torch {torch.__version__}") from None
    return torch_fidelity


def inception_weights_path() -> str:
    """Where torch.hub (and so torch-fidelity) keeps the Inception weights: ``$TORCH_HOME/hub/
    checkpoints/`` (default ``~/.cache/torch/hub/checkpoints/``) and the file's own name."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)


def _weights_hint() -> str:
    return (f"download {INCEPTION_URL} and put it at {inception_weights_path()} (torch.hub's cache: "
            f"$TORCH_HOME/hub/checkpoints/), or pass its path with --inception-weights PATH "
            f"(inception_weights=PATH)")


def _download_inception(dst: str) -> None:
    """torch.hub's download (temporary file, sha256 prefix check, rename), with a socket timeout so
    that a silent network fails instead of hanging. Any failure: one RuntimeError line."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, dst, hash_prefix=INCEPTION_HASH_PREFIX, progress=False)
    except Exception as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise RuntimeError(f"the Inception-v3 weights are not on this machine and could not be downloaded "
                           f"({type(e).__name__}: {reason}): {_weights_hint()}") from None
    finally:
        socket.setdefaulttimeout(previous)


def inception_feature_net(weights: Optional[str] = None, device="cpu", download: bool = True):
    """torch-fidelity's Inception-v3 (``FeatureExtractorInceptionV3``) returning ("2048" features,
    "logits_unbiased") for uint8 (B, 3, H, W). The weights: ``weights`` (a path), else torch.hub's
    cache (``inception_weights_path()``), else downloaded there (``download=True``). The file is
    first read with ``torch.load(weights_only=True)``: one that needs more than tensors is refused
    before torch-fidelity opens it. Every failure is one RuntimeError/ValueError line."""
    tf = _torch_fidelity()
    path = inception_weights_path() if weights is None else os.path.expanduser(os.fspath(weights))
    if not os.path.isfile(path):
        if weights is not None:
            raise ValueError(f"--inception-weights {weights}: no such file; {_weights_hint()}")
        if not download:
            raise RuntimeError(f"the Inception-v3 weights are not on this machine: {_weights_hint()}")
        _download_inception(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"Inception weights {path}: not a plain tensor file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]}); {_weights_hint()}") from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise ValueError(f"Inception weights {path}: not torch-fidelity's Inception-v3 state dict; {_weights_hint()}")
    try:
        net = tf.FeatureExtractorInceptionV3(INCEPTION_NAME, ["2048", "logits_unbiased"],
                                             feature_extractor_weights_path=path)
    except Exception as e:
        raise ValueError(f"Inception weights {path}: torch-fidelity cannot use them ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]})") from None
    return net.to(device).eval()


class _DigitsNet(torch.nn.Module):
    """The shipped digits classifier as a feature net: (features (B, 64), logits (B, 10)) of pixels."""

    name = "digits"

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier.eval()

    def forward(self, x):
        f = self.classifier.features(x)
        return f, self.classifier.head(f)


def digits_feature_net(device="cpu") -> torch.nn.Module:
    """``scoresde.classifier.load_digits_classifier()`` as a feature net named "digits" (features
    and logits); a ValueError line when that module or its weights are missing."""
    try:
        from ..classifier import load_digits_classifier
    except ImportError as e:
        raise ValueError(f"--feature-net digits: the digits classifier is not available ({e})") from None
    return _DigitsNet(load_digits_classifier(device=device))


# ---- features --------------------------------------------------------------------------------------

@dataclass
class Features:
    """Per-image features (n, D) and, where the network classifies, logits (n, K), float32 on the CPU."""

    features: Tensor
    logits: Optional[Tensor] = None
    shape: Optional[tuple] = None     # the images' (C, H, W)


def net_name(feature_net, name: Optional[str] = None) -> str:
    """The name a feature space is reported under: ``name``, else the module's ``name``, else its class."""
    if feature_net is None:
        return "inception"
    return name or getattr(feature_net, "name", None) or type(feature_net).__name__


def _net_device(net) -> torch.device:
    if isinstance(net, torch.nn.Module):
        for p in list(net.parameters()) + list(net.buffers()):
            return p.device
    return torch.device("cpu")


def _feature_input(feature_net, feature_input):
    value = feature_input if feature_input is not None else getattr(feature_net, "feature_input", "uint8")
    if value == "uint8":
        return "uint8"
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"feature_input must be 'uint8' or a float range (lo, hi) with hi > lo, got {value!r}")
    return (lo, hi)


@torch.no_grad()
def extract_features(images: _Images, feature_net, *, batch_size: int = DEFAULT_BATCH_SIZE,
                     feature_input=None, inception: bool = False, progress: bool = False,
                     what: str = "images") -> Features:
    """Run ``feature_net`` over every image of ``images`` in batches of ``batch_size``."""
    from tqdm import tqdm
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    mode = "uint8" if inception else _feature_input(feature_net, feature_input)
    device = _net_device(feature_net)
    was_training = getattr(feature_net, "training", None)
    if was_training:
        feature_net.eval()
    feats: List[Tensor] = []
    logits: List[Tensor] = []
    shape = None
    bar = tqdm(total=images.count, desc=f"features of {what}", unit="img", disable=not progress,
               leave=False, file=sys.stderr)
    try:
        for part in images.parts():
            if shape is None:
                shape = tuple(part.shape[1:])
            elif tuple(part.shape[1:]) != shape:
                raise ValueError(f"{what}: images of shapes {shape} and {tuple(part.shape[1:])} mixed")
            if inception and part.shape[1] != 3:
                part = part.expand(-1, 3, -1, -1) if part.shape[1] == 1 else part
                if part.shape[1] != 3:
                    raise ValueError(f"{what}: Inception takes 1- or 3-channel images, got {part.shape[1]} channels")
            for i in range(0, len(part), batch_size):
                x = part[i: i + batch_size].to(device)
                if mode != "uint8":
                    lo, hi = mode
                    x = x.to(torch.float32) * ((hi - lo) / 255.0) + lo
                out = feature_net(x)
                f, lg = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
                name = net_name(feature_net)
                if not torch.is_tensor(f) or f.dim() != 2 or f.shape[0] != len(x):
                    raise ValueError(f"feature net {name}: expected features (B, D) for a batch of {len(x)}, got "
                                     f"{tuple(f.shape) if torch.is_tensor(f) else type(f).__name__}")
                if not bool(torch.isfinite(f).all()):
                    raise ValueError(f"feature net {name}: returned NaN or infinite features")
                feats.append(f.detach().to("cpu", torch.float32))
                if lg is not None:
                    if not torch.is_tensor(lg) or lg.dim() != 2 or lg.shape[0] != len(x):
                        raise ValueError(f"feature net {name}: expected logits (B, K) as its second output")
                    logits.append(lg.detach().to("cpu", torch.float32))
                bar.update(len(x))
    finally:
        bar.close()
        if was_training:
            feature_net.train()
    if not feats:
        raise ValueError(f"{what}: no images")
    return Features(torch.cat(feats), torch.cat(logits) if logits else None, shape)
