"""A run: what a config builds (the SDE, the data, the network wrapped in its ``ScoreModel``) and
``load``, which turns a run directory or one checkpoint back into those objects.

The trainer, the command line, ``compare``, the demo and the importers of pretrained models all
go through here, so a run directory means the same thing to each of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch

from . import io
from .config import Config, ConfigError, from_dict, missing_data_root
from .data import load_dataset
from .nets import build_classifier, build_net
from .score import NoisyClassifier, ScoreModel
from .sde import SDE, SubVPSDE, VESDE, VPSDE


def build_sde(cfg: Config) -> SDE:
    s = cfg.sde
    if s.type == "vp":
        return VPSDE(s.beta_min, s.beta_max, s.N)
    if s.type == "subvp":
        return SubVPSDE(s.beta_min, s.beta_max, s.N)
    return VESDE(s.sigma_min, s.sigma_max, s.N)


def load_data(cfg: Config, split: str = "train", n: Optional[int] = None,
              generator: Optional[torch.Generator] = None):
    """The config's data set: images scaled to [-1, 1] (``data.centered``) or [0, 1]. A data set
    read from a folder needs ``data.root`` here (a run loaded for sampling may have none). For a
    run that uses labels (model.num_classes > 0, or train.objective classifier) on class folders
    (``data.class_folders``), whose number the config cannot know, a ConfigError naming
    model.num_classes unless it is the number of class folders found."""
    error = missing_data_root(cfg)
    if error is not None:
        raise error
    d = cfg.data
    data = load_dataset(d.name, split, root=d.root, image_size=d.image_size, n=n, generator=generator,
                        data_range=(-1.0, 1.0) if d.centered else (0.0, 1.0), class_folders=d.class_folders)
    k = cfg.model.get("num_classes", 0)
    uses_labels = k > 0 or cfg.train.objective == "classifier"
    if uses_labels and d.class_folders and k != len(data.class_names):
        names = ", ".join(data.class_names[:10]) + (", ..." if len(data.class_names) > 10 else "")
        detail = (f"expected {len(data.class_names)}, the number of class folders in data.root {d.root!r} "
                  f"({split} split: {names}), got {k}")
        raise ConfigError(f"the run's config: model.num_classes: {detail}", key="model.num_classes", detail=detail)
    return data


def build_score_model(cfg: Config, sde: SDE, data_shape) -> ScoreModel:
    net = build_net(cfg.model["name"], tuple(data_shape), **cfg.net_kwargs)
    return ScoreModel(net, sde, parameterization=cfg.model["parameterization"],
                      conditioning=cfg.model.get("conditioning"))


def build_model(cfg: Config, sde: SDE, data_shape) -> Union[ScoreModel, NoisyClassifier]:
    """What the run trains: its ScoreModel (train.objective "score"), or for train.objective
    "classifier" a NoisyClassifier over the encoder of model.name (logits of model.num_classes)."""
    if cfg.train.objective == "classifier":
        net = build_classifier(cfg.model["name"], tuple(data_shape), **cfg.net_kwargs)
        return NoisyClassifier(net, sde, conditioning=cfg.model.get("conditioning"))
    return build_score_model(cfg, sde, data_shape)


def resolve_device(name, local_rank: int = 0, what: str = "device") -> torch.device:
    """"auto" (CUDA when present, else the CPU), "cpu", "cuda" (GPU ``local_rank``, the one torchrun
    gives this process) or an explicit "cuda:K"; ``what`` names the argument in errors."""
    if isinstance(name, torch.device):
        name = str(name)
    bad = ValueError(f"{what} must be 'auto', 'cpu' or 'cuda[:K]', got {name!r}")
    if not isinstance(name, str):
        raise bad
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise bad from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise bad
    if not torch.cuda.is_available():
        raise ValueError(f"{what} is {name!r} but no CUDA device is available")
    return torch.device("cuda", local_rank if dev.index is None else dev.index)


@dataclass
class LoadedRun:
    """A trained model ready for sampling: ``net`` holds the EMA weights in eval mode.

    A score run has ``score_fn`` (its ScoreModel); a class-conditional one (``num_classes`` K > 0)
    also ``cond_score_fn(x, t, y)``, y None the unconditional score. A noisy-classifier run
    (``objective`` "classifier") has no score (``score_fn`` None) but ``classifier_logp(x, t)`` ->
    (B, K) log p_t(y | x), and ``classifier``, its NoisyClassifier. ``class_names``: the names of
    labels 0..K-1 of a run that uses labels, where its data set names them (a folder read with
    data.class_folders: its class folders' names; CIFAR-10: airplane, ..., truck), else None (digits,
    MNIST, unconditional runs, and runs saved before class names were recorded)."""

    net: torch.nn.Module
    sde: SDE
    score_fn: Optional[ScoreModel]
    config: Config
    step: int
    data_shape: tuple
    data_range: tuple
    path: str
    objective: str = "score"
    num_classes: int = 0
    cond_score_fn: Optional[Callable] = None
    classifier: Optional[NoisyClassifier] = None
    classifier_logp: Optional[Callable] = None
    class_names: Optional[Tuple[str, ...]] = None


def require_objective(run: LoadedRun, objective: str, what: str) -> None:
    """A ValueError naming ``what`` (e.g. "scoresde sample RUN") unless ``run`` trained ``objective``."""
    if run.objective != objective:
        kind = "a noisy-classifier run (train.objective classifier)" if run.objective == "classifier" \
            else "a score run"
        need = "a score model" if objective == "score" else "a noisy classifier (train.objective classifier)"
        raise ValueError(f"{what}: {run.path} is {kind}; this needs {need}")


def _with_run_data_root(raw: dict, run_dir: str) -> dict:
    """``raw`` with data.root from the run's config.yaml, where the user may have set or moved it
    (where the files are, not which: the one data key a run may change, as on --resume)."""
    import yaml
    try:
        with open(os.path.join(run_dir, "config.yaml"), "r", encoding="utf-8") as f:
            saved = yaml.safe_load(f)
        root = saved["data"]["root"]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
        return raw  # no readable config.yaml (or no data.root in it): the checkpoint's own config holds
    if root is not None and not isinstance(root, str):
        return raw
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    return dict(raw, data=dict(data, root=root))


def load(path: str, device="cpu") -> LoadedRun:
    """Load a run directory (its newest readable checkpoint) or one checkpoint directory onto
    ``device`` ("cpu" by default, "auto" for CUDA when present, "cuda", "cuda:K")."""
    if not os.path.exists(path):
        raise io.CheckpointError(f"{path}: no such run directory or checkpoint")
    if os.path.isfile(os.path.join(path, "meta.json")):
        meta, tensors = io.load_checkpoint(path)
        ckpt = path
    else:
        ckpt_dir = os.path.join(path, "checkpoints")
        if not io.list_checkpoints(ckpt_dir):
            raise io.CheckpointError(f"{path}: no checkpoints found (expected {ckpt_dir}/ckpt_<step>/)")
        skipped: list = []
        found = io.newest_checkpoint(ckpt_dir, skipped)
        if found is None:
            raise io.CheckpointError(f"{ckpt_dir}: no readable checkpoint (newest: {skipped[0]})")
        meta, tensors, ckpt = found
    try:
        raw = meta["config"]
        if ckpt != path and isinstance(raw, dict):
            raw = _with_run_data_root(raw, path)
        # sampling reads no data: a run without data.root loads (likelihood and compare ask for it)
        cfg = from_dict(raw, source=os.path.join(ckpt, "meta.json"), data_root=False)
        data_shape = tuple(int(v) for v in meta["data_shape"])
        data_range = tuple(float(v) for v in meta.get("data_range", (-1.0, 1.0)))
        class_names = meta.get("class_names")
        if class_names is not None:
            k = cfg.model.get("num_classes", 0)
            if not (isinstance(class_names, list) and len(class_names) == k
                    and all(isinstance(c, str) for c in class_names)):
                raise ValueError(f"class_names must be a list of model.num_classes = {k} strings, got {class_names!r}")
            class_names = tuple(class_names)
    except (KeyError, TypeError, ValueError) as e:
        raise io.CheckpointError(f"{ckpt}/meta.json: invalid ({' '.join(str(e).split())[:200]})") from None
    if "ema" not in tensors:
        raise io.CheckpointError(f"{ckpt}: no ema.safetensors")
    sde = build_sde(cfg)
    model = build_model(cfg, sde, data_shape)
    try:
        model.net.load_state_dict(tensors["ema"])
    except RuntimeError as e:
        raise io.CheckpointError(f"{ckpt}/ema.safetensors: does not fit the configured network "
                                 f"({' '.join(str(e).split())[:300]})") from None
    model = model.to(resolve_device(device or "cpu")).eval()
    common = dict(net=model.net, sde=sde, config=cfg, step=meta["step"], data_shape=data_shape,
                  data_range=data_range, path=ckpt, objective=cfg.train.objective, num_classes=model.num_classes,
                  class_names=class_names)
    if isinstance(model, NoisyClassifier):
        return LoadedRun(score_fn=None, classifier=model, classifier_logp=model.classifier_logp, **common)
    return LoadedRun(score_fn=model, cond_score_fn=model.cond_score_fn if model.num_classes else None, **common)
