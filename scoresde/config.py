"""Typed run configurations, loaded from YAML and validated with one clear error per problem.

A config has five sections::

    sde:    type (vp | subvp | ve) and its parameters
    model:  name (mlp | unet), parameterization, conditioning, and the network's own keyword
            arguments (checked against the network's signature)
    data:   name, root, image_size, flip, centered (images on [-1, 1], else [0, 1]), n_train, n_test
    train:  steps, batch_size, lr, warmup, lr_schedule, grad_clip, ema_decay, loss, ..., checkpoint_every, seed
    sample: the sampler used for snapshots and as the CLI's default

Every error names the file and the dotted key: ``configs/toy.yaml: train.lr: expected a positive
number, got -1``. ``--set train.lr=1e-3`` overrides go through the same checks.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from .sampling import SAMPLERS as _SAMPLER_REGISTRY


class ConfigError(ValueError):
    """A bad configuration: the message names the source and the key."""


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
    name: str = "checkerboard"
    root: Optional[str] = None
    image_size: Optional[int] = None
    flip: bool = False
    centered: bool = True
    n_train: Optional[int] = None
    n_test: Optional[int] = None


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
    tensorboard: bool = False


@dataclass
class SampleConfig:
    sampler: str = "probability_flow"
    steps: int = 100
    eps: float = 1e-3
    num: int = 64


SECTIONS = {"sde": SDEConfig, "data": DataConfig, "train": TrainConfig, "sample": SampleConfig}
SDE_TYPES = ("vp", "subvp", "ve")
MODEL_NAMES = ("mlp", "unet")
PARAMETERIZATIONS = ("eps", "score", "x0")
CONDITIONINGS = (None, "time", "log_sigma")
LOSS_NAMES = ("dsm", "ddpm", "smld")
SAMPLERS = tuple(_SAMPLER_REGISTRY)
DEVICES = ("auto", "cpu", "cuda")
HUGE = 10 ** 9
#: network keys that are sizes or counts (at least 1, at most MAX_WIDTH), and the other numeric ones
MAX_WIDTH = 2 ** 16
LR_SCHEDULES = ("constant", "cosine")


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


# ---- loading -----------------------------------------------------------------------------------

#: the configs shipped with scoresde, usable by name
PACKAGE_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def bundled_configs() -> List[str]:
    """Names of the configs shipped with scoresde (``toy_vp``, ``digits_vp``, ...)."""
    return sorted(f[:-5] for f in os.listdir(PACKAGE_CONFIGS) if f.endswith(".yaml"))


def resolve_config(name: str) -> str:
    """A path, or the name of a config shipped with scoresde (``toy_vp`` -> scoresde/configs/toy_vp.yaml)."""
    if os.path.exists(name):
        return name
    bundled = os.path.join(PACKAGE_CONFIGS, name if name.endswith(".yaml") else name + ".yaml")
    if os.path.exists(bundled):
        return bundled
    raise ConfigError(f"{name}: no such config file (bundled configs: {', '.join(bundled_configs())})")


def load_config(path: str, overrides: Optional[List[str]] = None) -> Config:
    """Read a YAML config, apply ``key=value`` overrides, validate."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        with open(path, "r", encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(e)})") from None
    raw = {} if raw is None else raw
    return from_dict(raw, source=path, overrides=overrides)


def from_dict(raw: Any, source: str = "config", overrides: Optional[List[str]] = None) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {('sde', 'model', 'data', 'train', 'sample')}, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        _apply_override(raw, item, source)
    unknown = set(raw) - set(SECTIONS) - {"model"}
    if unknown:
        raise ConfigError(f"{source}: unknown section {sorted(unknown)[0]!r} (sections: sde, model, data, train, sample)")
    cfg = Config()
    for name, cls in SECTIONS.items():
        setattr(cfg, name, _section(cls, raw.get(name), f"{source}: {name}"))
    cfg.model = _model_section(raw.get("model"), f"{source}: model")
    _check_values(cfg, source)
    return cfg


def _apply_override(raw: dict, item: str, source: str) -> None:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-3")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: the key must be section.name, e.g. train.steps")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: {parts[0]}: expected a mapping")
    section[parts[1]] = value


def _section(cls, raw: Any, where: str):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key (accepted: {', '.join(names)})")
        default = names[key].default
        values[key] = _coerce(value, names[key].type, default, f"{where}.{key}")
    return cls(**values)


def _coerce(value: Any, annotation: Any, default: Any, where: str):
    """Check ``value`` against the field's declared type; ints are accepted where floats are."""
    text = str(annotation)
    optional = "Optional" in text or default is None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be null")
    kind = "float" if "float" in text else "int" if "int" in text else "bool" if "bool" in text else "str"
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if abs(value) > HUGE:  # beyond any sensible setting: a typo, and some would exhaust memory
            raise ConfigError(f"{where}: expected an integer of magnitude at most 1e9, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value) or abs(value) > HUGE:
            raise ConfigError(f"{where}: expected a finite number of magnitude at most 1e9, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _model_section(raw: Any, where: str) -> Dict[str, Any]:
    from .nets import net_signature  # lazy: configs load without building anything

    raw = {"name": "mlp"} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    name = raw.get("name", "mlp")
    if name not in MODEL_NAMES:
        raise ConfigError(f"{where}.name: expected one of {MODEL_NAMES}, got {name!r}")
    model = {"name": name, "parameterization": raw.get("parameterization", "eps"),
             "conditioning": raw.get("conditioning")}
    if model["parameterization"] not in PARAMETERIZATIONS:
        raise ConfigError(f"{where}.parameterization: expected one of {PARAMETERIZATIONS}, got {model['parameterization']!r}")
    if model["conditioning"] not in CONDITIONINGS:
        raise ConfigError(f"{where}.conditioning: expected one of {CONDITIONINGS}, got {model['conditioning']!r}")
    params = net_signature(name)
    for key, value in raw.items():
        if key in model:
            continue
        if key not in params:
            raise ConfigError(f"{where}.{key}: unknown key for model {name!r} "
                              f"(accepted: name, parameterization, conditioning, {', '.join(params)})")
        model[key] = _coerce_like(value, params[key], f"{where}.{key}")
        _check_model_value(key, model[key], f"{where}.{key}")
    return model


def _check_model_value(key: str, value: Any, where: str) -> None:
    """Network settings: sizes and counts in [1, 2^16], dropout in [0, 1), Fourier scale in (0, 1e6]."""
    if key == "dropout":
        ok, what = 0 <= value < 1, "a number in [0, 1)"
    elif key == "fourier_scale":
        ok, what = 0 < value <= 1e6, "a number in (0, 1e6]"
    elif isinstance(value, list):
        ok = all(1 <= v <= MAX_WIDTH for v in value) and (bool(value) or key == "attn_resolutions")
        what = f"a list of integers in [1, {MAX_WIDTH}]"
    elif isinstance(value, int) and not isinstance(value, bool):
        ok, what = 1 <= value <= MAX_WIDTH, f"an integer in [1, {MAX_WIDTH}]"
    else:
        return
    if not ok:
        raise ConfigError(f"{where}: expected {what}, got {value!r}")


def _coerce_like(value: Any, default: Any, where: str):
    """Model keys are typed by the network's default values."""
    if isinstance(default, bool):
        return _coerce(value, "bool", default, where)
    if isinstance(default, int):
        return _coerce(value, "int", default, where)
    if isinstance(default, float):
        return _coerce(value, "float", default, where)
    if isinstance(default, str):
        return _coerce(value, "str", default, where)
    if isinstance(default, (tuple, list)):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: expected a list of integers, got {value!r}")
        return list(value)
    return value


def _check_values(cfg: Config, source: str) -> None:
    def need(ok: bool, key: str, what: str, value: Any):
        if not ok:
            raise ConfigError(f"{source}: {key}: expected {what}, got {value!r}")

    s, t, d, smp = cfg.sde, cfg.train, cfg.data, cfg.sample
    need(s.type in SDE_TYPES, "sde.type", f"one of {SDE_TYPES}", s.type)
    need(0 < s.beta_min < s.beta_max, "sde.beta_min/beta_max", "0 < beta_min < beta_max", (s.beta_min, s.beta_max))
    need(0 < s.sigma_min < s.sigma_max, "sde.sigma_min/sigma_max", "0 < sigma_min < sigma_max", (s.sigma_min, s.sigma_max))
    need(2 <= s.N <= 10 ** 6, "sde.N", "an integer in [2, 1e6]", s.N)
    need(s.sigma_max <= 1e5 and s.beta_max <= 1e4, "sde.sigma_max/beta_max", "sigma_max <= 1e5 and beta_max <= 1e4",
         (s.sigma_max, s.beta_max))
    if s.type in ("vp", "subvp"):
        need(s.beta_max / s.N < 1, "sde.N", f"N > beta_max = {s.beta_max}", s.N)
    for key in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
        need(getattr(t, key) >= 1, f"train.{key}", "a positive integer", getattr(t, key))
    need(t.steps <= 10 ** 9, "train.steps", "at most 1e9", t.steps)
    need(t.batch_size <= 10 ** 6, "train.batch_size", "at most 1e6", t.batch_size)
    need(0 < t.lr <= 1, "train.lr", "a number in (0, 1]", t.lr)
    need(t.warmup >= 0, "train.warmup", "a non-negative integer", t.warmup)
    need(t.lr_schedule in LR_SCHEDULES, "train.lr_schedule", f"one of {LR_SCHEDULES}", t.lr_schedule)
    need(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "a positive number or null", t.grad_clip)
    need(0 <= t.ema_decay < 1, "train.ema_decay", "a number in [0, 1)", t.ema_decay)
    need(t.loss in LOSS_NAMES, "train.loss", f"one of {LOSS_NAMES}", t.loss)
    need(t.loss != "ddpm" or s.type == "vp", "train.loss", "'ddpm' only with sde.type vp", t.loss)
    need(t.loss != "smld" or s.type == "ve", "train.loss", "'smld' only with sde.type ve", t.loss)
    need(not t.importance_sampling or t.likelihood_weighting, "train.importance_sampling",
         "false unless train.likelihood_weighting is true", t.importance_sampling)
    need(t.reduce in ("mean", "sum"), "train.reduce", "'mean' or 'sum'", t.reduce)
    need(0 < t.eps < 1, "train.eps", "a number in (0, 1)", t.eps)
    need(t.snapshot_every >= 0, "train.snapshot_every", "a non-negative integer", t.snapshot_every)
    need(0 <= t.seed < 2 ** 31, "train.seed", "an integer in [0, 2^31)", t.seed)
    need(t.device in DEVICES, "train.device", f"one of {DEVICES}", t.device)
    need(d.image_size is None or 1 <= d.image_size <= 4096, "data.image_size", "a positive integer", d.image_size)
    for key in ("n_train", "n_test"):
        v = getattr(d, key)
        need(v is None or 1 <= v <= 10 ** 8, f"data.{key}", "an integer in [1, 1e8] or null", v)
    need(smp.sampler in SAMPLERS, "sample.sampler", f"one of {SAMPLERS}", smp.sampler)
    need(smp.steps >= 1, "sample.steps", "a positive integer", smp.steps)
    need(0 < smp.eps < 1, "sample.eps", "a number in (0, 1)", smp.eps)
    need(smp.num >= 1, "sample.num", "a positive integer", smp.num)


def save_config(cfg: Config, path: str) -> None:
    """Write the config as YAML, atomically."""
    from .io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
