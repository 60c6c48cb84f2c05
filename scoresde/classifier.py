"""A small CNN classifier of scikit-learn's 8x8 digits, and the sample-quality measures built on it:
FD-digits (the Fréchet distance in its feature space, FID's recipe with this network in place of
Inception) and the class histogram of generated samples (mode coverage and confidence).

It runs offline on a CPU: the trained weights ship with the package
(``scoresde/weights/digits_classifier.safetensors``, 150 kB, test accuracy in its metadata) and
``scoresde train-classifier digits`` (or ``train_digits_classifier``) retrains it in about
5 seconds on one CPU core.

Inputs. Every function here takes images (N, 1, 8, 8) (or (N, 8, 8)) either as 8-bit pixels
(uint8, or another integer dtype with values in [0, 255]: ``Dataset.pixels``), scaled with
``scoresde.data.scale`` to the classifier's data range (-1, 1); or as floats in model space,
``data_range`` (default (-1, 1), that of ``Dataset.data`` and of a digits run's samples), mapped
linearly onto (-1, 1) and clamped to it, as a sample is clipped when it becomes an image
(``data_range`` applies to floats only: pixels are always 0..255).

Files are safetensors only (never unpickled): the tensors, and in the file's metadata the format,
the architecture, the data range and how it was trained (seed, steps, test accuracy). Writes are
atomic (a temporary file and a rename).

Training is deterministic on the CPU for a given seed (same seed and torch build: identical
weights; it runs on one thread whatever the core count); it draws from its own generators and
leaves torch's global RNG as it found it.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .data import load_dataset, scale
from .data._args import _data_range
from .io import atomic_write_bytes
from .metrics import frechet_distance

FORMAT = "scoresde-digits-classifier"
FORMAT_VERSION = 1
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
CLASSIFIER_RANGE = (-1.0, 1.0)
DEFAULT_ARCHITECTURE = {"channels": [16, 32], "feature_dim": 64, "num_classes": NUM_CLASSES}
DEFAULT_STEPS = 500
DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 3e-3
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits_classifier.safetensors"
_BATCH = 1024  # images per forward pass when extracting features


# ---- the network ---------------------------------------------------------------------------------

class DigitsClassifier(nn.Module):
    """conv 3x3 (1 -> c1) + ReLU, conv 3x3 (c1 -> c2) + ReLU, 2x2 max-pool (8x8 -> 4x4), linear
    (c2*16 -> feature_dim) + ReLU: the features; a linear layer (feature_dim -> 10): the logits.

    ``features(x)`` (N, feature_dim) and ``logits(x)`` (N, 10) take pixels or model-space floats
    (see the module docstring); ``forward`` is ``logits``. ``metadata`` holds what the weights
    file says about how it was trained (empty for a fresh network)."""

    def __init__(self, channels: Sequence[int] = (16, 32), feature_dim: int = 64, num_classes: int = NUM_CLASSES):
        super().__init__()
        c1, c2 = (_checks.positive_int(int(c), "channels") for c in channels)
        self.architecture = {"channels": [c1, c2], "feature_dim": _checks.positive_int(int(feature_dim), "feature_dim"),
                             "num_classes": _checks.positive_int(int(num_classes), "num_classes")}
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * 16, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.metadata: Dict[str, object] = {}

    @property
    def feature_dim(self) -> int:
        return self.architecture["feature_dim"]

    def prepare(self, x: Tensor, data_range: Optional[Sequence[float]] = None) -> Tensor:
        """Images as the network's float32 input (N, 1, 8, 8) on [-1, 1], on its device."""
        return _prepare(x, data_range, self.conv1.weight.device)

    def _features(self, z: Tensor) -> Tensor:
        h = F.relu(self.conv1(z))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def features(self, x: Tensor, data_range: Optional[Sequence[float]] = None) -> Tensor:
        """The penultimate layer (N, feature_dim): what FD-digits compares."""
        return self._features(self.prepare(x, data_range))

    def logits(self, x: Tensor, data_range: Optional[Sequence[float]] = None) -> Tensor:
        return self.head(self.features(x, data_range))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)


class DigitsFeatures(nn.Module):
    """A plain module images -> features (N, D) of a digits classifier (by default the shipped one),
    e.g. a ``feature_net`` for an evaluation: ``forward(x)`` is ``classifier.features(x,
    data_range)``. Put in eval mode; its parameters do not require gradients."""

    name = "digits"

    def __init__(self, classifier: Optional[DigitsClassifier] = None, data_range: Optional[Sequence[float]] = None):
        super().__init__()
        self.classifier = load_digits_classifier() if classifier is None else classifier
        self.data_range = None if data_range is None else _data_range(data_range)
        self.requires_grad_(False)
        self.eval()

    @property
    def feature_dim(self) -> int:
        return self.classifier.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x, self.data_range)


def _prepare(x, data_range, device) -> Tensor:
    if not torch.is_tensor(x):
        raise ValueError(f"images must be a tensor (N, 1, 8, 8), got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE or x.shape[0] == 0:
        raise ValueError(f"images must have shape (N, 1, 8, 8) or (N, 8, 8) with N >= 1, got {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"images must be 8-bit pixels or real floats, got dtype {x.dtype}")
    if not x.is_floating_point():       # pixels: scoresde's own scaling (which checks the 0..255 range)
        return scale(x, CLASSIFIER_RANGE).to(device)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or infinite values")
    lo, hi = _data_range(CLASSIFIER_RANGE if data_range is None else data_range)
    z = x.to(device=device, dtype=torch.float32)
    if (lo, hi) != CLASSIFIER_RANGE:
        z = (z - lo) * (2.0 / (hi - lo)) - 1.0
    return z.clamp(*CLASSIFIER_RANGE)


def _images(x):
    """A Dataset's pixels, else x itself."""
    pixels = getattr(x, "pixels", None)
    return pixels if pixels is not None and not torch.is_tensor(x) else x


@torch.no_grad()
def _batched(net: DigitsClassifier, x, data_range, fn: Callable[[Tensor], Tensor]) -> Tensor:
    x = _images(x)
    was_training = net.training
    net.eval()
    try:
        if torch.is_tensor(x) and x.dim() in (3, 4) and x.shape[0] > _BATCH:
            return torch.cat([fn(net.prepare(x[i: i + _BATCH], data_range)).cpu() for i in range(0, len(x), _BATCH)])
        return fn(net.prepare(x, data_range)).cpu()
    finally:
        net.train(was_training)


# ---- files ---------------------------------------------------------------------------------------

def save_digits_classifier(net: DigitsClassifier, path, metadata: Optional[dict] = None) -> str:
    """Write the weights and metadata (``net.metadata`` updated by ``metadata``) to one safetensors
    file, atomically. Returns the path."""
    from safetensors.torch import save
    meta = {**net.metadata, **(metadata or {})}
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
              "architecture": json.dumps(net.architecture, sort_keys=True),
              "data_range": json.dumps(list(CLASSIFIER_RANGE)),
              "training": json.dumps(meta, sort_keys=True)}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    path = os.fspath(path)
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def load_digits_classifier(path=None, device="cpu") -> DigitsClassifier:
    """A classifier from a file written by ``save_digits_classifier`` (default: the shipped weights),
    in eval mode, with the file's training metadata in ``.metadata`` (seed, steps, test_accuracy,
    ...). Only safetensors is read; a file of another kind or format is a ValueError naming it."""
    from safetensors import SafetensorError, safe_open
    path = SHIPPED_WEIGHTS if path is None else Path(os.fspath(path)).expanduser()
    if not path.is_file():
        hint = (" (the package was installed without its weights: reinstall it, or write them with "
                "`scoresde train-classifier digits --out PATH` and pass that path)" if path == SHIPPED_WEIGHTS else "")
        raise ValueError(f"digits classifier {str(path)!r}: no such file{hint}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"digits classifier {str(path)!r} is not a readable safetensors file ({e})") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a digits classifier: its safetensors metadata has format "
                         f"{header.get('format')!r}, expected {FORMAT!r}")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"{str(path)!r}: digits classifier format version {header.get('format_version')!r}, "
                         f"this scoresde reads version {FORMAT_VERSION}")
    try:
        arch = json.loads(header["architecture"])
        training = json.loads(header.get("training", "{}"))
        net = DigitsClassifier(arch["channels"], arch["feature_dim"], arch["num_classes"])
        net.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{str(path)!r}: damaged digits classifier ({type(e).__name__}: {e})") from None
    net.metadata = training
    return net.to(device).eval()


# ---- training ------------------------------------------------------------------------------------

def _shift(z: Tensor, generator: torch.Generator) -> Tensor:
    """Each image translated by up to one pixel in each direction (background filled in)."""
    n = z.shape[0]
    padded = F.pad(z, (1, 1, 1, 1), value=CLASSIFIER_RANGE[0])
    dy, dx = (torch.randint(0, 3, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(n, 8, 8)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def digits_accuracy(net: Optional[DigitsClassifier] = None, split: str = "test") -> float:
    """The fraction of a digits split that ``net`` (default: the shipped classifier) classifies right."""
    net = load_digits_classifier() if net is None else net
    ds = load_dataset("digits", split)
    pred = _batched(net, ds.pixels, None, lambda z: net.head(net._features(z)).argmax(1))
    return (pred == ds.labels).double().mean().item()


def _fit(net: DigitsClassifier, z_all: Tensor, y_all: Tensor, steps: int, seed: int, batch_size: int, lr: float,
         log: Optional[Callable[[str], None]]) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    net.train()
    order, pos = torch.randperm(len(y_all), generator=g), 0
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(y_all), generator=g), 0
        idx = order[pos: pos + batch_size]
        pos += batch_size
        loss = F.cross_entropy(net.head(net._features(_shift(z_all[idx], g))), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and ((step + 1) % 100 == 0 or step + 1 == steps):
            log(f"step {step + 1}/{steps}: loss {loss.item():.4f}")


def train_digits_classifier(out=None, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED, *,
                            batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR,
                            log: Optional[Callable[[str], None]] = None) -> DigitsClassifier:
    """Train the digits classifier on the train split (AdamW, cosine learning-rate decay,
    one-pixel random shifts), measure it on the test split, and if ``out`` is given save it there
    (atomically). Trains on one CPU thread (restored afterwards), so that a seed gives the same
    weights whatever the core count (on one torch build and CPU type). Returns the network in eval mode
    with ``metadata`` (seed, steps, batch_size, lr, test_accuracy, train_accuracy, seconds)."""
    steps = _checks.positive_int(steps, "steps")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    lr = _checks.number(lr, "lr", 0.0, math.inf)
    start = time.perf_counter()
    train = load_dataset("digits", "train")
    z_all, y_all = scale(train.pixels, CLASSIFIER_RANGE), train.labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitsClassifier(**DEFAULT_ARCHITECTURE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # the result then does not depend on the core count (and a network this
    try:                        # small trains fastest on one thread: ~5 s, against minutes when 2 threads contend)
        _fit(net, z_all, y_all, steps, seed, batch_size, lr, log)
    finally:
        torch.set_num_threads(threads)
    net.eval()
    net.metadata = {"dataset": "digits", "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
                    "train_accuracy": round(digits_accuracy(net, "train"), 6),
                    "test_accuracy": round(digits_accuracy(net, "test"), 6),
                    "seconds": round(time.perf_counter() - start, 2), "torch": torch.__version__}
    if out is not None:
        save_digits_classifier(net, out)
    return net


# ---- sample quality ------------------------------------------------------------------------------

class ClassHistogram(NamedTuple):
    """``counts``: int64 (10,), how many images the classifier assigns to each digit; ``confidence``:
    the mean over images of the largest softmax probability (near 1 for clean digits)."""
    counts: Tensor
    confidence: float


def class_histogram(samples, classifier: Optional[DigitsClassifier] = None,
                    data_range: Optional[Sequence[float]] = None) -> ClassHistogram:
    """Mode coverage of generated digits: predicted-class counts and the mean max-softmax confidence."""
    net = load_digits_classifier() if classifier is None else classifier
    probs = _batched(net, samples, data_range, lambda z: net.head(net._features(z)).softmax(1))
    counts = torch.bincount(probs.argmax(1), minlength=net.architecture["num_classes"])
    return ClassHistogram(counts=counts, confidence=probs.max(1).values.double().mean().item())


def feature_statistics(images, classifier: Optional[DigitsClassifier] = None,
                       data_range: Optional[Sequence[float]] = None) -> Tuple[Tensor, Tensor]:
    """(mean (D,), covariance (D, D)) in float64 of the classifier's features of ``images`` (at least 2)."""
    net = load_digits_classifier() if classifier is None else classifier
    f = _batched(net, images, data_range, net._features).double()
    if f.shape[0] < 2:
        raise ValueError(f"feature statistics need at least 2 images, got {f.shape[0]}")
    return f.mean(0), torch.cov(f.T)


def fd_digits(samples, reference, classifier: Optional[DigitsClassifier] = None,
              data_range: Optional[Sequence[float]] = None) -> float:
    """FD-digits: ``metrics.frechet_distance`` between Gaussians fitted to the classifier's features
    of ``samples`` and of ``reference`` (each images, pixels or model-space floats in ``data_range``,
    or a digits ``Dataset``; at least 2 of each). Like FID it is biased upwards for small sets:
    compare numbers computed with the same sizes."""
    net = load_digits_classifier() if classifier is None else classifier
    mu1, s1 = feature_statistics(samples, net, data_range)
    mu2, s2 = feature_statistics(reference, net, data_range)
    return frechet_distance(mu1, s1, mu2, s2)
