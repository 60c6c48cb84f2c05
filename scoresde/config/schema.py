"""The config schema: the sections' dataclasses with their defaults, the accepted values, and
``Config``; also ``ConfigError``, the one exception every config problem raises.

A config has five sections::

    sde:    type (vp | subvp | ve) and its parameters
    model:  name (a network of scoresde.nets.NETS: mlp, unet, and the reference architectures
            ncsnpp, ddpm, ...), parameterization, conditioning, and the network's own keyword
            arguments (checked against the network's signature; list values where its defaults are lists);
            num_classes (mlp, unet; default 0) K > 0 makes the network class-conditional, or with
            train.objective classifier is the number of classes of the classifier
    data:   name, root, image_size, flip, centered (images on [-1, 1], else [0, 1]), n_train, n_test;
            class_folders (data.name folder): label the images by their class subfolders
    train:  steps, batch_size, lr, warmup, lr_schedule, grad_clip, ema_decay, loss, ..., checkpoint_every, seed;
            objective: "score" (a score model, default) or "classifier" (a time-dependent classifier
            p_t(y | x_t) for classifier guidance: model.name mlp or unet builds its encoder with a linear
            head of model.num_classes logits); label_dropout: the probability of training a conditional
            score model's step on the null class instead of the label (classifier-free guidance);
            the speed and memory switches, each computing what the plain path computes (see
            scoresde.train_fast): amp (bf16 autocast of the forward pass, on any device), compile
            and compile_mode (torch.compile of the network and its mode), grad_accum (micro-batches
            per optimizer step), checkpoint_activations (recompute the residual / attention blocks'
            activations in the backward pass: unet, ncsnpp, ddpm, diffusers_unet2d), fused_optimizer
            (fused Adam; null: fused on CUDA, foreach elsewhere), channels_last (NHWC memory layout:
            image data only)
    sample: the sampler used for snapshots and as the CLI's default

Everything the other config modules share lives here, and this module imports none of them.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from ..sampling import SAMPLERS as _SAMPLER_REGISTRY
from ..score import CONDITIONINGS as _SCORE_CONDITIONINGS


class ConfigError(ValueError):
    """A bad configuration: the message names the source and the key. ``key`` (dotted, e.g.
    ``train.lr``, or ``sde.beta_min/beta_max`` for a relation) and ``detail`` (the message after the
    key) let an error found in the merged config be re-worded for the ``--set`` item that caused it."""

    def __init__(self, message: str, key: Optional[str] = None, detail: Optional[str] = None):
        super().__init__(message)
        self.key, self.detail = key, detail


def _error(source: str, key: str, detail: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {detail}", key=key, detail=detail)


# ---- sections ----------------------------------------------------------------------------------

@dataclass
class SDEConfig:
    type: str = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000


@dataclass
class DataConfig:
    """What a run trains on.

    name: a toy (checkerboard, ...), "digits", "mnist", "cifar10" or "folder" (every PNG/JPEG under
        root, recursively; a train/test subfolder, where there is one, is the split).
    root: the folder holding the files of mnist, cifar10 and folder (None for the others).
    image_size: resize images to this size (folders: shorter side, then centre crop); None keeps them.
    flip: random horizontal flips in training. centered: images on [-1, 1], else [0, 1].
    n_train, n_test: keep at most this many examples of each split (None: all).
    class_folders: data.name "folder" only: the folder is in torchvision's ImageFolder layout,
        root/<class name>/**/*.png (or root/<split>/<class name>/...): its immediate subfolders are
        the classes, labelled 0..K-1 in sorted name order, what a class-conditional model
        (model.num_classes K) or a noisy classifier (train.objective classifier) needs. Every image
        must lie in a class folder, every class folder must hold images, K >= 2, and the train and
        test folders must hold the same classes. The class names are saved with the checkpoints
        (``scoresde.load(run).class_names``).
    """
    name: str = "checkerboard"
    root: Optional[str] = None
    image_size: Optional[int] = None
    flip: bool = False
    centered: bool = True
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    class_folders: bool = False


@dataclass
class TrainConfig:
    steps: int = 10000
    batch_size: int = 512
    lr: float = 1e-3
    warmup: int = 100
    lr_schedule: str = "constant"
    grad_clip: Optional[float] = 1.0
    ema_decay: float = 0.999
    loss: str = "dsm"
    likelihood_weighting: bool = False
    importance_sampling: bool = False
    reduce: str = "mean"
    eps: float = 1e-5
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 100
    snapshot_every: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    compile_mode: str = "default"      # torch.compile's mode (reduce-overhead: CUDA graphs on a GPU)
    grad_accum: int = 1                 # micro-batches per optimizer step (divides the batch per process)
    checkpoint_activations: bool = False  # recompute block activations in backward (CHECKPOINTABLE_MODELS)
    fused_optimizer: Optional[bool] = None  # fused Adam; None: fused on CUDA, foreach elsewhere
    channels_last: bool = False         # NHWC weights and batches (image data only)
    tensorboard: bool = False
    objective: str = "score"
    label_dropout: float = 0.0


@dataclass
class SampleConfig:
    sampler: str = "probability_flow"
    steps: int = 100
    eps: float = 1e-3
    num: int = 64


SECTIONS = {"sde": SDEConfig, "data": DataConfig, "train": TrainConfig, "sample": SampleConfig}
SECTION_NAMES = ("sde", "model", "data", "train", "sample")
#: model keys of every network; the others are the chosen network's keyword arguments
MODEL_FIXED = ("name", "parameterization", "conditioning")
SDE_TYPES = ("vp", "subvp", "ve")
PARAMETERIZATIONS = ("eps", "score", "x0")
#: None picks ScoreModel's default (log_sigma for VE, time otherwise); time_index (t (N - 1)) and
#: sigma are what the reference implementation's continuous VP / VE networks see
CONDITIONINGS = (None,) + tuple(_SCORE_CONDITIONINGS)
LOSS_NAMES = ("dsm", "ddpm", "smld")
#: what a run trains: a score model, or a time-dependent (noisy) classifier for classifier guidance
OBJECTIVES = ("score", "classifier")
#: the networks that can be class-conditional (model.num_classes) or be built as a noisy classifier
CONDITIONAL_MODELS = ("mlp", "unet")
#: the networks with residual / attention blocks that train.checkpoint_activations checkpoints
CHECKPOINTABLE_MODELS = ("unet", "ncsnpp", "ddpm", "diffusers_unet2d")
SAMPLERS = tuple(_SAMPLER_REGISTRY)
DEVICES = ("auto", "cpu", "cuda")
HUGE = 10 ** 9
#: network keys that are sizes or counts (at least 1, at most MAX_WIDTH), and the other numeric ones
MAX_WIDTH = 2 ** 16
LR_SCHEDULES = ("constant", "cosine")
#: data sets read from a local folder (data.root); the toys and "digits" need none. data.root is
#: required where the data is read (training, likelihood, compare), not to sample from a run
NEEDS_ROOT = ("mnist", "cifar10", "folder")


def model_names() -> tuple:
    """The accepted ``model.name`` values: the networks registered in ``scoresde.nets.NETS`` now."""
    from ..nets import NETS  # lazy: this module imports nothing that builds networks
    return tuple(NETS)


def __getattr__(name: str):
    # MODEL_NAMES follows scoresde.nets.NETS (a network registered later is accepted too)
    if name == "MODEL_NAMES":
        return model_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Config:
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: Dict[str, Any] = field(default_factory=lambda: {"name": "mlp"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> Dict[str, Any]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out["model"] = copy.deepcopy(self.model)
        return {k: out[k] for k in ("sde", "model", "data", "train", "sample")}

    @property
    def net_kwargs(self) -> Dict[str, Any]:
        return {k: v for k, v in self.model.items() if k not in ("name", "parameterization", "conditioning")}

