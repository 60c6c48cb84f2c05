"""What gpu_speed.py measures: the variants (dicts of config overrides, read by the bare loop, handed
to the Trainer as --set items, mapped to score functions for sampling), the configs they apply to,
and a config's training data (random pixels of its shape when its folder is not on the machine)."""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List

import torch

import _bench
from _bench import ROOT
from scoresde.config.schema import NEEDS_ROOT, TrainConfig
from scoresde.data import Dataset, scale
from scoresde.run import load_data

#: variant name -> config overrides (the Trainer takes them as --set items; the bare loop reads them)
VARIANTS: Dict[str, Dict[str, object]] = {
    "fp32": {},
    "bf16": {"train.amp": True},
    "bf16+cl+fused": {"train.amp": True, "train.channels_last": True, "train.fused_optimizer": True},
    "bf16+compile": {"train.amp": True, "train.compile": True},
    "bf16+cl+fused+compile": {"train.amp": True, "train.channels_last": True, "train.fused_optimizer": True,
                              "train.compile": True},
    "bf16+ckpt": {"train.amp": True, "train.checkpoint_activations": True},
    "bf16+accum2": {"train.amp": True, "train.grad_accum": 2},
}
DEFAULT_VARIANTS = ("fp32", "bf16", "bf16+cl+fused", "bf16+compile")
#: the keys the bare loop implements itself
BARE_KEYS = ("train.amp", "train.channels_last", "train.fused_optimizer", "train.compile")
#: variant keys that mean nothing for sampling (the others map to precision / channels_last / compile)
SAMPLING_IGNORES = ("train.fused_optimizer",)
#: shapes of the data sets read from a folder, for synthetic stand-ins when the folder is not there
SYNTHETIC_SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}


def train_config_keys() -> set:
    """The override keys the installed TrainConfig has (``train.<field>``)."""
    return {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}


def variant_options(overrides: Dict[str, object]) -> Dict[str, object]:
    """What the bare loop does for a variant: amp, channels_last, fused_optimizer (None: auto), compile."""
    return {"amp": bool(overrides.get("train.amp", False)),
            "channels_last": bool(overrides.get("train.channels_last", False)),
            "fused_optimizer": overrides.get("train.fused_optimizer"),
            "compile": bool(overrides.get("train.compile", False))}


def override_items(overrides: Dict[str, object]) -> List[str]:
    """Overrides as --set items (key=value, YAML spelling)."""
    def text(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return "null" if v is None else str(v)
    return [f"{k}={text(v)}" for k, v in overrides.items()]


def config_path(name: str) -> str:
    """``name`` if it is a file, else configs/<name>.yaml; exits with one line if neither is there."""
    if os.path.isfile(name):
        return name
    path = os.path.join(ROOT, "configs", name + ".yaml")
    if not os.path.isfile(path):
        _bench.fail(f"--config {name!r}: neither a file nor a config in configs/")
    return path


def base_overrides(args, batch: int) -> List[str]:
    """--set items of every measured config: device, batch size, and logging, checkpoints and
    TensorBoard thinned out or off."""
    return [f"train.device={args.device}", f"train.batch_size={batch}", "train.log_every=100",
            f"train.checkpoint_every={10 ** 9}", "train.keep_checkpoints=1", "train.snapshot_every=0",
            "train.tensorboard=false"]


def training_data(cfg, batch: int, seed: int):
    """(Dataset, synthetic?): the config's data set, or random pixels of its shape when it is read
    from a folder that is not there (CIFAR-10 on a benchmark machine): a step's cost does not depend
    on the pixel values."""
    d = cfg.data
    if d.name in NEEDS_ROOT and (d.root is None or not os.path.isdir(d.root)):
        if d.name not in SYNTHETIC_SHAPES:
            _bench.fail(f"data.name {d.name!r} needs data.root (an existing folder), got {d.root!r}")
        c, h, w = SYNTHETIC_SHAPES[d.name]
        if d.image_size:
            h = w = d.image_size
        g = torch.Generator().manual_seed(seed)
        n = max(4 * batch, 1024)
        pixels = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g)
        return Dataset(data=scale(pixels, (-1.0, 1.0)), pixels=pixels, shape=(c, h, w), is_image=True,
                       data_range=(-1.0, 1.0), name=d.name, labels=labels), True
    return load_data(cfg, "train", n=d.n_train, generator=torch.Generator().manual_seed(seed)), False

