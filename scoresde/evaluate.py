"""Sample quality of generated images: FID, KID, Inception Score and precision/recall, in the
Inception-v3 feature space of torch-fidelity (the optional extra ``scoresde[eval]``) or in the
feature space of any network you pass (no extra needed; the shipped digits classifier works offline).

``evaluate(samples, reference, ...)`` -> dict, and ``scoresde evaluate`` on the command line.

**Images.** ``samples`` (and ``reference`` when it is images) may be

- a folder written by ``scoresde sample --out DIR`` (``generate.json`` and ``shard_<k>.npz`` with
  ``samples`` uint8 (n, H, W, C)); every shard must be there;
- any other folder of ``.npz`` files (read in name order, hidden files skipped), or one ``.npz``
  file, each holding one image array (the key ``samples`` or ``images``, else its only array);
- a tensor or numpy array; or a ``scoresde.data`` ``Dataset`` (its ``pixels``).

Arrays are uint8 pixels, or floats in model space: then ``data_range`` (lo, hi) is needed and they
become pixels as ``scoresde.data.unscale`` makes them (rounded, clipped), the way samples are saved.
Shapes: (N, H, W) (one channel), or (N, C, H, W) / (N, H, W, C) with C = 1 or 3. The layout is
told by where the channel axis is: C on axis 1 and not on the last axis is NCHW, C last and not on
axis 1 is NHWC, and a shape that allows both (H or W of 1 or 3) needs ``layout="NCHW"`` or ``"NHWC"``.
Folders are read one file at a time, so memory holds the features, not the images.

**Reference.** Images as above; ``"train"`` / ``"test"``: that split of a run's data
(``scoresde.run.load_data(config, split)``, with ``config`` a run's ``Config`` or a run directory),
whose statistics are computed once and cached (``cache``, a folder); or a statistics file
(``.npz``, read with ``allow_pickle=False``: a file that holds pickled objects is refused):

- scoresde's own (what the cache holds): ``mu`` (D,), ``sigma`` (D, D), ``n``, and ``features``
  (n, D) float32 so that KID and precision/recall work from it too; also ``feature_name`` and
  ``fingerprint`` (the feature network's weights: a stale file is never used);
- the pytorch-fid / TTUR layout, ``mu`` and ``sigma`` only (FID only: KID and precision/recall
  need the reference's features);
- score_sde's ``assets/stats/cifar10_stats.npz`` (its ``evaluation.load_dataset_stats``): raw
  Inception activations ``pool_3`` (n, 2048), from which ``mu`` and ``sigma`` are computed; KID
  and precision/recall work from it. (Its activations come from TF-GAN's Inception in TensorFlow;
  torch-fidelity runs a port of the same 2015-12-05 graph in PyTorch, so an FID against that file
  is close to score_sde's own but not bit for bit: compare numbers computed the same way.)

**Feature networks.** ``feature_net=None`` is Inception-v3 as torch-fidelity ships it ("2048"
pool features for FID/KID/precision/recall, the 1008 bias-free logits for IS; grayscale images are
repeated to RGB; torch-fidelity resizes to 299x299). Any ``nn.Module`` (or callable) can replace
it: it receives a batch of images (B, C, H, W) as they are (no resizing), uint8 0..255 by default,
or floats on [lo, hi] with ``feature_input=(lo, hi)`` (or a ``feature_input`` attribute on the
module); it returns features (B, D), or a tuple (features (B, D), logits (B, K)) when it can also
classify, which makes an Inception-Score analogue. The report then names the space:
``FD-<name>``, ``KID-<name>``, ``IS-<name>`` (``feature_name``, else the module's ``name``
attribute, else its class name). It runs in eval mode on the device of its parameters.

**Metrics.** FID / FD-<name>: ``scoresde.metrics.frechet_distance`` of the Gaussians fitted to the
two feature sets (mean, covariance with 1/(n-1)). KID: the unbiased MMD² with the cubic polynomial
kernel k(x, y) = (x.y / D + 1)^3, averaged over ``kid_subsets`` random subsets of ``kid_subset_size``
from each set (or all of the smaller set), reported as mean ± the standard deviation over subsets;
near 0, slightly negative even, for equal distributions. IS: exp(E KL(p(y|x) || p(y))) over
``is_splits`` splits of the (shuffled) samples, mean ± standard deviation over splits. Precision /
recall (Kynkäänniemi et al. 2019, k = ``pr_k`` = 3): the fraction of samples inside the reference's
k-NN balls, and of reference images inside the samples'. These are torch-fidelity's definitions to
the letter, subset draws and shuffles included (the same seed gives the same numbers; the test
suite checks it against torch-fidelity's own functions), computed here in float64 so that they also
run in any feature space without the extra.

**Sample counts.** FID is biased upward by O(D/N) (Chong & Forsyth 2020), so numbers are
comparable only at equal sample counts (papers: 50,000 samples against the 50,000 training images).
The report warns when either set is below ``fd_min_samples(D)``: 10,000 for Inception (Heusel et
al.'s minimum) and 5·D for a D-dimensional feature network (the same ratio, 10,000 ≈ 5 x 2048).
"""
from __future__ import annotations

import hashlib
import io as _io
import json
import math
import os
import socket
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from . import io
from .metrics import frechet_distance

EXTRA_HINT = "scoresde[eval] is needed: pip install 'scoresde[eval]'"
#: torch-fidelity's Inception-v3 weights (converted from TF's 2015-12-05 graph)
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
INCEPTION_HASH_PREFIX = "6726825d"       # sha256 prefix, as torch.hub checks it
INCEPTION_NAME = "inception-v3-compat"   # torch-fidelity's name for it
DOWNLOAD_TIMEOUT = 60.0                  # seconds without an answer before the download fails
METRICS = ("fid", "kid", "is", "pr")
ALIASES = {"fd": "fid", "isc": "is", "precision": "pr", "recall": "pr", "prc": "pr"}
DEFAULT_METRICS = ("fid", "kid", "is")
DEFAULT_BATCH_SIZE = 200
DEFAULT_SEED = 2020                      # torch-fidelity's rng_seed
STATS_FORMAT = "scoresde-feature-stats/1"
SAMPLES_META = "generate.json"           # scoresde.generate's folder metadata
ImageLike = Union[str, os.PathLike, Tensor, np.ndarray]


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
        from .classifier import load_digits_classifier
    except ImportError as e:
        raise ValueError(f"--feature-net digits: the digits classifier is not available ({e})") from None
    return _DigitsNet(load_digits_classifier(device=device))


# ---- images ----------------------------------------------------------------------------------------

def _layout(shape, layout: Optional[str], what: str) -> str:
    if layout is not None:
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        return layout
    first, last = shape[1] in (1, 3), shape[-1] in (1, 3)
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    if first and last:
        raise ValueError(f"{what}: images of shape {tuple(shape)} may be NCHW or NHWC; pass layout='NCHW' or 'NHWC'")
    raise ValueError(f"{what}: expected images (N, C, H, W) or (N, H, W, C) with C = 1 or 3, got shape {tuple(shape)}")


def as_pixels(x, *, data_range: Optional[Sequence[float]] = None, layout: Optional[str] = None,
              what: str = "images") -> Tensor:
    """An image array as uint8 pixels (N, C, H, W) on the CPU (see the module docstring)."""
    from .data import unscale
    if isinstance(x, np.ndarray):
        if x.dtype == object or not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"{what}: expected uint8 pixels or float images, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not torch.is_tensor(x):
        raise ValueError(f"{what}: expected an image array, got {type(x).__name__}")
    x = x.detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
        layout = "NCHW"
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty batch of images (N, H, W), (N, C, H, W) or (N, H, W, C), "
                         f"got shape {tuple(x.shape)}")
    if _layout(x.shape, layout, what) == "NHWC":
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise ValueError(f"{what}: expected uint8 pixels or float images, got dtype {x.dtype}")
    if data_range is None:
        raise ValueError(f"{what} are floats ({x.dtype}): their data range is needed to make them pixels "
                         "(data_range=(lo, hi); on the command line, pass the RUN_DIR they were sampled from)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contain NaN or infinite values")
    return unscale(x, data_range).contiguous()


def _image_key(z, path: str) -> str:
    """The image array of an .npz: 'samples', else 'images', else its only array."""
    for key in ("samples", "images"):
        if key in z.files:
            return key
    if len(z.files) == 1:
        return z.files[0]
    raise ValueError(f"{path}: no image array (expected the key 'samples' or 'images', or a single array; "
                     f"it holds {', '.join(z.files) or 'nothing'})")


def _open_npz(path: str):
    """np.load with allow_pickle=False; a file that needs pickles, or no zip, is one ValueError line."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({' '.join(str(e).split())[:160]})") from None


def _read_npz_array(z, key: str, path: str) -> np.ndarray:
    try:
        return z[key]
    except ValueError:   # an object array: np.load refuses to unpickle it
        raise ValueError(f"{path}: array {key!r} holds pickled objects; refused (read with allow_pickle=False)") from None
    except Exception as e:    # a damaged member
        raise ValueError(f"{path}: array {key!r} is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


@dataclass
class _Images:
    """A source of images read in pieces: ``parts()`` yields uint8 (n, C, H, W) tensors."""

    describe: str
    parts: Callable[[], Iterator[Tensor]]
    count: Optional[int] = None
    shape: Optional[tuple] = None


def _array_images(x, data_range, layout, describe: str) -> _Images:
    pixels = as_pixels(x, data_range=data_range, layout=layout, what=describe)
    return _Images(describe, lambda: iter([pixels]), len(pixels), tuple(pixels.shape[1:]))


def _file_part(path: str, data_range, layout) -> Tensor:
    with _open_npz(path) as z:
        arr = _read_npz_array(z, _image_key(z, path), path)
    return as_pixels(arr, data_range=data_range, layout=layout, what=path)


def _samples_folder(folder: str, data_range) -> _Images:
    """A folder written by scoresde.generate: every shard, in index order."""
    path = os.path.join(folder, SAMPLES_META)
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
        num, size = int(meta["num_samples"]), int(meta["shard_size"])
        shape = tuple(int(v) for v in meta["data_shape"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{folder}: {SAMPLES_META} is not readable samples metadata") from None
    if len(shape) != 3:
        raise ValueError(f"{folder}: holds samples of shape {shape}, not images; evaluate measures images "
                         "(for 2-D toy runs use `scoresde compare`)")
    shards = [os.path.join(folder, f"shard_{k:06d}.npz") for k in range(math.ceil(num / size))]
    missing = [p for p in shards if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{folder}: {len(missing)} of {len(shards)} shards missing (first: "
                         f"{os.path.basename(missing[0])}); finish it by rerunning the same `scoresde sample` command")
    c, h, w = shape

    def parts():
        for p in shards:
            x = _file_part(p, data_range, "NHWC")
            if tuple(x.shape[1:]) != (c, h, w):
                raise ValueError(f"{p}: images of shape {tuple(x.shape[1:])}, expected {shape} ({SAMPLES_META})")
            yield x
    return _Images(f"{folder} ({num} samples)", parts, num, shape)


def image_source(x, *, data_range=None, layout: Optional[str] = None, what: str = "samples") -> _Images:
    """``x`` (a folder, a .npz file, an array, or a Dataset) as a source of uint8 image batches."""
    if hasattr(x, "pixels") and not torch.is_tensor(x) and not isinstance(x, np.ndarray):
        if x.pixels is None:
            raise ValueError(f"{what}: the data set {getattr(x, 'name', '')!r} holds points, not images")
        return _array_images(x.pixels, None, "NCHW", f"{what} ({getattr(x, 'name', 'data')})")
    if torch.is_tensor(x) or isinstance(x, np.ndarray):
        return _array_images(x, data_range, layout, what)
    if not isinstance(x, (str, os.PathLike)):
        raise ValueError(f"{what}: expected a folder, a .npz file, a tensor or an array, got {type(x).__name__}")
    path = os.fspath(x)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, SAMPLES_META)):
            return _samples_folder(path, data_range)
        files = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if n.endswith(".npz") and not n.startswith("."))
        if not files:
            raise ValueError(f"{what} {path}: a folder without .npz files")

        def parts():
            shape = None
            for p in files:
                part = _file_part(p, data_range, layout)
                if shape is not None and tuple(part.shape[1:]) != shape:
                    raise ValueError(f"{p}: images of shape {tuple(part.shape[1:])}, the folder's first file has {shape}")
                shape = tuple(part.shape[1:])
                yield part
        return _Images(f"{path} ({len(files)} files)", parts)
    if os.path.isfile(path):
        part = _file_part(path, data_range, layout)
        return _Images(path, lambda: iter([part]), len(part), tuple(part.shape[1:]))
    raise ValueError(f"{what} {path}: no such file or folder")


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


def fingerprint(feature_net, feature_input=None) -> str:
    """What identifies a feature network for the cache: the sha256 of its class and its weights
    (names, dtypes, shapes, values); a network without weights is known by its class and repr."""
    h = hashlib.sha256()
    h.update(f"{type(feature_net).__module__}.{type(feature_net).__qualname__}|{feature_input!r}".encode())
    state = feature_net.state_dict() if isinstance(feature_net, torch.nn.Module) else {}
    if not state:   # a module's repr names its layers; a function is known by its qualified name
        h.update((repr(feature_net) if isinstance(feature_net, torch.nn.Module)
                  else str(getattr(feature_net, "__qualname__", type(feature_net).__qualname__))).encode())
    for key, value in state.items():
        v = value.detach().cpu().contiguous()
        h.update(f"|{key}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


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


# ---- statistics and their files --------------------------------------------------------------------

@dataclass
class Stats:
    """A Gaussian fit of features (mean ``mu`` (D,), covariance ``sigma`` (D, D), float64), the count
    ``n`` when known, and the ``features`` themselves when available (KID and precision/recall need them)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: Optional[int] = None
    features: Optional[Tensor] = None
    feature_name: Optional[str] = None
    fingerprint: Optional[str] = None
    source: str = ""

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def feature_statistics(features: Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, covariance with 1/(n-1)) of features (n, D), in float64 (two passes, no float64 copy
    of all of them at once)."""
    f = torch.as_tensor(features)
    n = f.shape[0]
    if f.dim() != 2 or n < 2:
        raise ValueError(f"statistics need features (n, D) with n >= 2, got shape {tuple(f.shape)}")
    chunk = 8192
    mu = sum(f[i: i + chunk].double().sum(0) for i in range(0, n, chunk)) / n
    cov = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
    for i in range(0, n, chunk):
        c = f[i: i + chunk].double().cpu() - mu
        cov += c.T @ c
    return mu.numpy(), (cov / (n - 1)).numpy()


def stats_from_features(features: Tensor, *, name=None, fp=None, source="") -> Stats:
    mu, sigma = feature_statistics(features)
    return Stats(mu, sigma, int(features.shape[0]), features, name, fp, source)


def save_stats(path: str, stats: Stats) -> str:
    """Write ``stats`` as an .npz (mu, sigma, n, features, feature_name, fingerprint), atomically."""
    arrays = {"mu": np.asarray(stats.mu, np.float64), "sigma": np.asarray(stats.sigma, np.float64),
              "n": np.int64(-1 if stats.n is None else stats.n), "format": np.str_(STATS_FORMAT)}
    if stats.features is not None:
        arrays["features"] = stats.features.to(torch.float32).numpy()
    if stats.feature_name is not None:
        arrays["feature_name"] = np.str_(stats.feature_name)
    if stats.fingerprint is not None:
        arrays["fingerprint"] = np.str_(stats.fingerprint)
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    io.atomic_write_bytes(path, buf.getvalue())
    return path


def is_stats_file(path) -> bool:
    """Whether ``path`` is an .npz holding feature statistics (mu and sigma, pool_3, or features)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return False
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            keys = set(z.files)
    except Exception:
        return False
    return {"mu", "sigma"} <= keys or "pool_3" in keys or ("features" in keys and "samples" not in keys)


def load_stats(path) -> Stats:
    """Read a statistics .npz (scoresde's, pytorch-fid's mu/sigma, or score_sde's pool_3) with
    ``allow_pickle=False``; every problem is one ValueError line naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such statistics file")
    with _open_npz(path) as z:
        keys = set(z.files)
        get = lambda k: _read_npz_array(z, k, path)
        feats = get("features") if "features" in keys else (get("pool_3") if "pool_3" in keys else None)
        text = lambda k: str(get(k)) if k in keys else None
        name, fp = text("feature_name"), text("fingerprint")
        if {"mu", "sigma"} <= keys:
            mu, sigma = np.asarray(get("mu"), np.float64), np.asarray(get("sigma"), np.float64)
            n = int(get("n")) if "n" in keys else (None if feats is None else len(feats))
        elif feats is not None:
            mu = sigma = None
            n = len(feats)
        else:
            raise ValueError(f"{path}: not a statistics file (expected mu and sigma, or pool_3 / features; it holds "
                             f"{', '.join(sorted(keys)) or 'nothing'})")
    if feats is not None:
        feats = np.asarray(feats)
        if feats.ndim != 2 or len(feats) < 2 or not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(f"{path}: features must be a float array (n >= 2, D), got {feats.dtype} {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError(f"{path}: features contain NaN or infinite values")
        feats = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
        if mu is None:
            mu, sigma = feature_statistics(feats)
    d = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or sigma.shape != (d, d) or (feats is not None and feats.shape[1] != d):
        raise ValueError(f"{path}: inconsistent shapes (mu {mu.shape}, sigma {sigma.shape}"
                         + (f", features {tuple(feats.shape)})" if feats is not None else ")"))
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu or sigma contain NaN or infinite values")
    if n is not None and n < 0:
        n = None
    return Stats(mu, sigma, n, feats, name, fp, path)


# ---- the metrics -----------------------------------------------------------------------------------

def kid(f1: Tensor, f2: Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = DEFAULT_SEED,
        device=None) -> Tuple[float, float, int]:
    """KID as torch-fidelity computes it (``kid_features_to_metric``, polynomial kernel of degree 3,
    gamma 1/D, coef0 1, unbiased MMD²), over ``subsets`` draws of min(subset_size, n1, n2) from each
    set without replacement (numpy RandomState(seed), the same draws as torch-fidelity), in float64.
    Returns (mean, standard deviation over subsets, the subset size used)."""
    f1, f2 = torch.as_tensor(f1), torch.as_tensor(f2)
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if f2.shape[1] != d:
        raise ValueError(f"KID: features of different dimensions ({d} and {f2.shape[1]})")
    m = min(int(subset_size), n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {n1} and {n2}")
    device = torch.device(device) if device is not None else f1.device
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)

    def kernel_sum(a: Tensor, b: Tensor, same: bool) -> Tensor:
        k = (a @ b.T).div_(d).add_(1.0).pow_(3)   # in place: one m x m buffer
        return k.sum() - k.diagonal().sum() if same else k.sum()

    for s in range(subsets):
        i1 = torch.from_numpy(rng.choice(n1, m, replace=False))
        i2 = torch.from_numpy(rng.choice(n2, m, replace=False))
        x = f1[i1].to(device, torch.float64)
        y = f2[i2].to(device, torch.float64)
        within = (kernel_sum(x, x, True) + kernel_sum(y, y, True)) / (m * (m - 1))
        values[s] = float(within - 2 * kernel_sum(x, y, False) / (m * m))
    return float(values.mean()), float(values.std()), m


def inception_score(logits: Tensor, *, splits: int = 10, seed: int = DEFAULT_SEED, shuffle: bool = True
                    ) -> Tuple[float, float]:
    """IS as torch-fidelity computes it (``isc_features_to_metric``): the samples shuffled with
    RandomState(seed), cut into ``splits`` parts, exp(mean KL(p(y|x) || mean p(y))) per part, in
    float64. Returns (mean, standard deviation over splits)."""
    lg = torch.as_tensor(logits)
    n = lg.shape[0]
    if lg.dim() != 2 or n < splits:
        raise ValueError(f"IS needs logits (n, K) with n >= splits = {splits}, got shape {tuple(lg.shape)}")
    if shuffle:
        lg = lg[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    lg = lg.double()
    p, log_p = lg.softmax(1), lg.log_softmax(1)
    scores = []
    for i in range(splits):
        a, b = i * n // splits, (i + 1) * n // splits
        # log of the split's mean p(y), through logsumexp: finite even where p(y) underflows to 0
        log_q = torch.logsumexp(log_p[a:b], 0, keepdim=True) - math.log(b - a)
        scores.append(float((p[a:b] * (log_p[a:b] - log_q)).sum(1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def _knn_radii(f: Tensor, k: int, batch: int) -> Tensor:
    return torch.cat([torch.cdist(f[i: i + batch], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), batch)])


def _inside(points: Tensor, centres: Tensor, radii: Tensor, batch: int) -> float:
    hits = [(torch.cdist(points[i: i + batch], centres) <= radii[None]).any(1) for i in range(0, len(points), batch)]
    return torch.cat(hits).double().mean().item()


def precision_recall(f_gen: Tensor, f_ref: Tensor, *, k: int = 3, batch: int = 2048, device=None) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) as torch-fidelity computes them
    (``prc_features_to_metric``, float32 distances): precision, the fraction of generated samples
    within the k-NN radius of some reference feature; recall, the fraction of reference features
    within the k-NN radius of some generated one. O(n²) distances, in row blocks of ``batch``."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    g, r = (torch.as_tensor(f).to(device, torch.float32) for f in (f_gen, f_ref))
    if min(len(g), len(r)) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} images in each set, got {len(g)} and {len(r)}")
    radii_g, radii_r = _knn_radii(g, k, batch), _knn_radii(r, k, batch)
    return _inside(g, r, radii_r, batch), _inside(r, g, radii_g, batch)


def fd_min_samples(dim: int, inception: bool = False) -> int:
    """Below this many images per set the report warns that FID/FD means little: 10,000 for
    Inception (Heusel et al. 2017), else 5 x the feature dimension (the same ratio)."""
    return 10_000 if inception else 5 * int(dim)


def _metric_list(metrics) -> Tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",")]
    out: List[str] = []
    for m in metrics:
        key = ALIASES.get(str(m).strip().lower(), str(m).strip().lower())
        if key not in METRICS:
            raise ValueError(f"unknown metric {m!r}: choose from fid, kid, is, pr (precision/recall)")
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError("no metric requested: choose from fid, kid, is, pr")
    return tuple(out)


# ---- the reference ---------------------------------------------------------------------------------

def run_config(run_dir: str):
    """A run directory's config (its config.yaml, else its newest checkpoint's), without its network."""
    import yaml
    from .config import from_dict
    path = os.path.join(os.fspath(run_dir), "config.yaml")
    if os.path.isfile(path):
        try:
            with open(path, "r", encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable config ({' '.join(str(e).split())[:160]})") from None
        return from_dict(raw if raw is not None else {}, source=path, data_root=False)
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir}: no such run directory")
    from .run import load
    return load(run_dir).config


def _config(config):
    if config is None:
        raise ValueError("reference 'train'/'test' is a split of a run's data: pass config= (a run's Config or "
                         "its directory); on the command line, the RUN_DIR")
    return run_config(config) if isinstance(config, (str, os.PathLike)) else config


def data_range_of(config) -> Tuple[float, float]:
    """The model-space range of a config's images: (-1, 1) when data.centered, else (0, 1)."""
    return (-1.0, 1.0) if config.data.centered else (0.0, 1.0)


def _files_signature(root: str) -> str:
    """The names, sizes and modification times of every file under ``root``: data read from files
    that changed since the statistics were cached must not reuse them."""
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            h.update(f"{os.path.relpath(os.path.join(folder, name), root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _split_key(cfg, split: str, fp: str) -> str:
    """What decides a split's statistics: the data (name, folder and its files, image size), the
    split, and the feature network's fingerprint."""
    d = cfg.data
    root = None if d.root is None else os.path.realpath(os.path.expanduser(d.root))
    ident = json.dumps({"data": d.name, "root": root, "files": _files_signature(root) if root else None,
                        "image_size": d.image_size, "split": split, "features": fp}, sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()


def split_stats(config, split: str, feature_net, *, name: str, fp: str, cache: Optional[str] = None,
                batch_size: int = DEFAULT_BATCH_SIZE, feature_input=None, inception: bool = False,
                progress: bool = False, log: Callable[[str], None] = lambda s: None) -> Stats:
    """The statistics of one split of a run's data in ``feature_net``'s space, read from the cache
    folder when a file for this data, split and network (its weights' fingerprint) is there, else
    computed and written there atomically. A cache file that fails to load is an error naming it."""
    from .run import load_data
    cfg = _config(config)
    if split not in ("train", "test"):
        raise ValueError(f"reference split must be 'train' or 'test', got {split!r}")
    key = _split_key(cfg, split, fp)
    path = None
    if cache is not None:
        path = os.path.join(os.fspath(cache), f"stats_{cfg.data.name}_{split}_{name}_{key[:16]}.npz")
        if os.path.isfile(path):
            stats = load_stats(path)
            if stats.fingerprint == fp and stats.features is not None:
                stats.source = f"{cfg.data.name} {split} split (cached: {path})"
                return stats
            log(f"note: {path} was made by another feature network; recomputing it")
    data = load_data(cfg, split)
    if data.pixels is None:
        raise ValueError(f"data {cfg.data.name!r} holds 2-D points, not images: evaluate measures images "
                         "(for toy runs use `scoresde compare`)")
    src = _Images(f"{cfg.data.name} {split}", lambda: iter([data.pixels]), len(data.pixels), tuple(data.pixels.shape[1:]))
    feats = extract_features(src, feature_net, batch_size=batch_size, feature_input=feature_input,
                             inception=inception, progress=progress, what=f"the {split} split")
    stats = stats_from_features(feats.features, name=name, fp=fp, source=f"{cfg.data.name} {split} split")
    if path is not None:
        try:
            save_stats(path, stats)
            stats.source += f" (cached: {path})"
        except OSError as e:
            log(f"warning: could not write the statistics cache {path} ({e.strerror or e}); continuing without it")
    return stats


# ---- evaluate --------------------------------------------------------------------------------------

def evaluate(samples: ImageLike, reference=None, *, metrics=DEFAULT_METRICS, feature_net=None,
             feature_name: Optional[str] = None, feature_input=None, config=None,
             data_range: Optional[Sequence[float]] = None, layout: Optional[str] = None,
             batch_size: int = DEFAULT_BATCH_SIZE, device="cpu", cache: Optional[str] = None,
             inception_weights: Optional[str] = None, download: bool = True, kid_subsets: int = 100,
             kid_subset_size: int = 1000, is_splits: int = 10, pr_k: int = 3, seed: int = DEFAULT_SEED,
             progress: bool = False, log: Callable[[str], None] = lambda s: None) -> dict:
    """Measure ``samples`` against ``reference`` (see the module docstring for what each may be).

    ``metrics``: any of "fid", "kid", "is", "pr" (a tuple or "fid,kid"). ``feature_net``: None for
    torch-fidelity's Inception-v3 (``inception_weights``, ``download``: where its weights come from),
    or any module images -> features (``feature_name``, ``feature_input``). ``config``: a run's
    Config or directory, for a reference "train"/"test" and, when ``data_range`` is not given, the
    range of float samples. ``cache``: a folder for the statistics of data splits. ``device``: where
    Inception and the metric arithmetic run (a given feature net runs where its parameters are).

    Returns a dict: one entry per metric, named by its feature space (Inception: "FID", "KID",
    "IS", "precision", "recall"; a feature net called NAME: "FD-NAME", "KID-NAME", "IS-NAME",
    "precision-NAME", "recall-NAME"); FID/FD and precision/recall are floats, KID is {"mean", "std",
    "subsets", "subset_size"} and IS {"mean", "std", "splits"}. Also "feature_net" (the name),
    "feature_dim", "num_samples", "num_reference" (None when a statistics file does not say),
    "reference" (what it was), "warnings" (list of str) and "skipped" ({metric: why})."""
    wanted = _metric_list(metrics)
    for value, label in ((kid_subsets, "kid_subsets"), (kid_subset_size, "kid_subset_size"),
                         (is_splits, "is_splits"), (pr_k, "pr_k")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if reference is None and any(m != "is" for m in wanted):
        raise ValueError("a reference is needed for fid, kid and pr (images, 'train'/'test' with a run, or a statistics file)")
    device = torch.device(device)
    inception = feature_net is None
    cfg = _config(config) if config is not None else None
    if data_range is None and cfg is not None:
        data_range = data_range_of(cfg)
    # everything about the inputs is checked before the network is built or any image is read
    sample_src = image_source(samples, data_range=data_range, layout=layout, what="samples")
    ref_stats: Optional[Stats] = None
    ref_src = None
    split = reference if isinstance(reference, str) and reference in ("train", "test") else None
    if split is not None:
        from .config import missing_data_root
        error = missing_data_root(_config(cfg))  # a split needs the run's config and its data folder
        if error is not None:
            raise error
    elif reference is None:
        pass
    elif is_stats_file(reference):
        ref_stats = load_stats(reference)
    else:
        ref_src = image_source(reference, data_range=data_range, layout=layout, what="reference")

    net = inception_feature_net(inception_weights, device, download) if inception else feature_net
    name = "inception" if inception else net_name(net, feature_name)
    fp = fingerprint(net, None if inception else _feature_input(net, feature_input))

    smp = extract_features(sample_src, net, batch_size=batch_size, feature_input=feature_input,
                           inception=inception, progress=progress, what="samples")
    if split is not None:
        ref_stats = split_stats(cfg, split, net, name=name, fp=fp, cache=cache, batch_size=batch_size,
                                feature_input=feature_input, inception=inception, progress=progress, log=log)
    elif ref_src is not None:
        ref = extract_features(ref_src, net, batch_size=batch_size, feature_input=feature_input,
                               inception=inception, progress=progress, what="reference")
        if ref.shape != smp.shape:
            log(f"note: samples are {smp.shape} images, the reference {ref.shape}")
        ref_stats = stats_from_features(ref.features, name=name, fp=fp, source=ref_src.describe)
    dim = smp.features.shape[1]
    if ref_stats is not None:
        if ref_stats.dim != dim:
            raise ValueError(f"reference {ref_stats.source}: {ref_stats.dim}-dimensional features, but the "
                             f"{name} network gives {dim}: statistics from another feature network")
        if ref_stats.feature_name is not None and ref_stats.feature_name != name:
            raise ValueError(f"reference {ref_stats.source}: statistics of the {ref_stats.feature_name!r} feature "
                             f"network, not {name!r}")

    label = (lambda base: base) if inception else (lambda base: f"{base}-{name}")
    fd_label = "FID" if inception else f"FD-{name}"
    out: dict = {"feature_net": name, "feature_dim": dim, "num_samples": len(smp.features),
                 "num_reference": None if ref_stats is None else ref_stats.n,
                 "reference": None if ref_stats is None else (ref_stats.source or str(reference)),
                 "warnings": [], "skipped": {}}
    n_s = len(smp.features)
    for m in wanted:
        if m == "fid":
            if n_s < 2:
                out["skipped"][fd_label] = "needs at least 2 samples"
                continue
            mu, sigma = feature_statistics(smp.features)
            out[fd_label] = frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma)
            floor = fd_min_samples(dim, inception)
            small = [f"{what} {count:,}" for what, count in (("samples", n_s), ("reference", ref_stats.n))
                     if count is not None and count < floor]
            if small:
                out["warnings"].append(
                    f"{fd_label} from {' and '.join(small)} images: below {floor:,} "
                    + ("(Heusel et al.'s minimum for FID)" if inception else f"(5 x the {dim} feature dimensions)")
                    + f", {fd_label} is biased upward by O(D/N) and means little; compare only numbers computed "
                    "with the same sample counts" + (" (papers: 50,000)" if inception else ""))
        elif m in ("kid", "pr"):
            key = label("KID") if m == "kid" else label("precision")
            if ref_stats.features is None:
                out["skipped"][key if m == "kid" else f"{label('precision')}/{label('recall')}"] = (
                    f"needs the reference's features; {ref_stats.source} holds only mu and sigma")
                continue
            if m == "kid":
                mean, std, size = kid(smp.features, ref_stats.features, subsets=kid_subsets,
                                      subset_size=kid_subset_size, seed=seed, device=device)
                out[key] = {"mean": mean, "std": std, "subsets": kid_subsets, "subset_size": size}
                if size < kid_subset_size:
                    out["warnings"].append(f"{key}: subsets of {size} images (all of the smaller set), not {kid_subset_size}")
            else:
                p, r = precision_recall(smp.features, ref_stats.features, k=pr_k, device=device)
                out[label("precision")], out[label("recall")] = p, r
        else:  # is
            key = label("IS")
            if smp.logits is None:
                out["skipped"][key] = f"the feature net {name!r} returns no logits (return (features, logits) for IS)"
                continue
            if n_s < is_splits:
                out["skipped"][key] = f"needs at least {is_splits} samples (one per split)"
                continue
            mean, std = inception_score(smp.logits, splits=is_splits, seed=seed)
            out[key] = {"mean": mean, "std": std, "splits": is_splits}
    return out


def _plus_minus(mean: float, std: float) -> str:
    """'mean ± std' with the decimals that give the std two significant digits."""
    if not (std > 0 and math.isfinite(std)):
        return f"{mean:.6g}"
    decimals = max(0, 1 - math.floor(math.log10(std)))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def report_lines(result: dict, warnings: bool = True) -> List[str]:
    """The result of ``evaluate`` as printed by ``scoresde evaluate``: the counts, one line per
    metric (± the standard deviation over KID subsets / IS splits), what was not computed and why,
    then (``warnings``) the warnings."""
    ref = result["num_reference"]
    lines = [f"samples: {result['num_samples']:,} images; reference: "
             + (f"{ref:,} images" if ref is not None else "count not recorded")
             + (f" ({result['reference']})" if result.get("reference") else "")
             + f"; features: {result['feature_net']} ({result['feature_dim']}-d)"]
    rows = []
    for key, value in result.items():
        if key in ("feature_net", "feature_dim", "num_samples", "num_reference", "reference", "warnings", "skipped"):
            continue
        if isinstance(value, dict) and "subsets" in value:
            rows.append((key, _plus_minus(value["mean"], value["std"]),
                         f"mean ± std over {value['subsets']} subsets of {value['subset_size']}"))
        elif isinstance(value, dict):
            rows.append((key, _plus_minus(value["mean"], value["std"]), f"mean ± std over {value['splits']} splits"))
        else:
            rows.append((key, f"{value:.4f}", ""))
    width = max((len(k) for k, _, _ in rows), default=0)
    vwidth = max((len(v) for _, v, _ in rows), default=0)
    lines += [f"{k:<{width}}  {v:<{vwidth}}  {why}".rstrip() for k, v, why in rows]
    lines += [f"{k}: not computed ({why})" for k, why in result["skipped"].items()]
    if warnings:
        lines += [f"warning: {w}" for w in result["warnings"]]
    return lines
