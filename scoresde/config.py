"""Typed run configurations, loaded from YAML and validated with one clear error per problem.

A config has five sections::

    sde:    type (vp | subvp | ve) and its parameters
    model:  name (mlp | unet), parameterization, conditioning, and the network's own keyword
            arguments (checked against the network's signature)
    data:   name, root, image_size, flip, centered (images on [-1, 1], else [0, 1]), n_train, n_test
    train:  steps, batch_size, lr, warmup, lr_schedule, grad_clip, ema_decay, loss, ..., checkpoint_every, seed
    sample: the sampler used for snapshots and as the CLI's default

Every error names its source and the dotted key: the file (``configs/toy.yaml: train.lr: expected
a number in (0, 1], got -1``), or the ``--set`` item the user typed when the problem comes from it
(``--set train.step=10: unknown key train.step (did you mean train.steps?)``). Integer keys take
integral numbers in any notation (``1e3`` is 1000; ``1.5`` is refused).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from .options import closest, parse_value
from .sampling import SAMPLERS as _SAMPLER_REGISTRY


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
SECTION_NAMES = ("sde", "model", "data", "train", "sample")
#: model keys of every network; the others are the chosen network's keyword arguments
MODEL_FIXED = ("name", "parameterization", "conditioning")
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
#: data sets read from a local folder (data.root); the toys and "digits" need none
NEEDS_ROOT = ("mnist", "cifar10", "folder")


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
    """Validate the mapping ``raw`` (named ``source`` in errors) after applying ``--set`` items.

    Each item is checked on its own first (syntax, section, key, type), so its errors name it. A
    problem that only shows in the merged config (a range, a relation between keys) is blamed on the
    item(s) that set the key, else on the first item after which it appears, else on ``source``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {SECTION_NAMES}, got {type(raw).__name__}")
    if not overrides:
        return _build(raw, source)
    items = _model_items([_parse_override(item) for item in overrides], raw)
    try:
        return _build(_merge(raw, items, source), source)
    except ConfigError as e:
        raise _blame(raw, items, source, e) from None


@dataclass
class _Override:
    item: str      # as the user typed it, for messages
    section: str
    name: str
    value: Any
    text: str      # the value as typed: string keys keep it (a folder named 1e3 stays '1e3')

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def where(self) -> str:
        return f"--set {self.item}"


def _parse_override(item: Any) -> _Override:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"--set {item}: expected key=value, e.g. --set train.lr=1e-3")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {item}: the key must be section.name, e.g. train.steps")
    section, name = parts
    if section not in SECTION_NAMES:
        raise ConfigError(f"--set {item}: unknown section {section}{closest(section, SECTION_NAMES)} "
                          f"(sections: {', '.join(SECTION_NAMES)})")
    o = _Override(item, section, name, parse_value(text), text.strip())
    if section == "model":  # typed by the network, known once every item is in (model.name may change)
        return o
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
    if name not in fields:
        raise ConfigError(f"{o.where}: unknown key {o.key}{_key_hint(section, name, fields)}")
    f = fields[name]
    o.value = _coerce(_as_typed(o, str(f.type)), f.type, f.default, o.where, o.key)
    return o


def _as_typed(o: _Override, annotation: str) -> Any:
    """A string key takes the text as typed, whatever YAML would make of it (123, true, 1e3)."""
    if "str" in annotation and o.value is not None and not isinstance(o.value, str):
        return o.text
    return o.value


def _model_items(items: List[_Override], raw: dict) -> List[_Override]:
    """Check the ``model.*`` items against the network the merged config will build."""
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    name = next((o.value for o in reversed(items) if o.key == "model.name"), model.get("name", "mlp"))
    if name not in MODEL_NAMES:  # the merged config's check names the item that set it
        return items
    from .nets import net_signature
    params = net_signature(name)
    for o in items:
        if o.section != "model":
            continue
        if o.name in MODEL_FIXED:
            o.value = _as_typed(o, "str")
        elif o.name not in params:
            raise ConfigError(f"{o.where}: unknown key {o.key} for model {name!r}"
                              f"{_key_hint('model', o.name, MODEL_FIXED + tuple(params))}")
        else:
            default = params[o.name]
            value = _as_typed(o, "str") if isinstance(default, str) else o.value
            o.value = _coerce_like(value, default, o.where, o.key)
            _check_model_value(o.name, o.value, o.where, o.key)
    return items


def _merge(raw: dict, items: List[_Override], source: str) -> dict:
    merged = copy.deepcopy(raw)
    for o in items:
        if merged.get(o.section) is None:
            merged[o.section] = {}
        if not isinstance(merged[o.section], dict):
            raise _error(source, o.section, f"expected a mapping, got {type(merged[o.section]).__name__}")
        merged[o.section][o.name] = o.value
    return merged


def _keys_of(key: str) -> set:
    """'sde.beta_min/beta_max' -> {'sde.beta_min', 'sde.beta_max'}."""
    section, _, names = key.partition(".")
    return {f"{section}.{n}" for n in names.split("/")} if names else {key}


def _blame(raw: dict, items: List[_Override], source: str, e: ConfigError) -> ConfigError:
    if e.key is None:
        return e
    # the item that set each key involved, the last one where a key was set twice (it is the one in effect)
    last = {o.key: o for o in items}
    culprits = [o.where for o in items if o.key in _keys_of(e.key) and last[o.key] is o]
    if culprits:
        return ConfigError(f"{' '.join(culprits)}: {e.key}: {e.detail}", key=e.key, detail=e.detail)
    # a key no item set (train.loss, when --set sde.type=ve makes the file's 'ddpm' invalid): the
    # first item after which this error appears, or the file when it has it on its own
    for k in range(len(items) + 1):
        try:
            _build(_merge(raw, items[:k], source), source)
        except ConfigError as e2:
            if e2.key == e.key:
                return e2 if k == 0 else ConfigError(f"{items[k - 1].where}: {e2.key}: {e2.detail}",
                                                     key=e2.key, detail=e2.detail)
    return e


def _key_hint(section: str, name: str, names) -> str:
    """' (did you mean train.steps?)' for the closest accepted key, else the accepted keys."""
    hint = closest(name, names)  # ' (did you mean steps?)' or ''
    if hint:
        return hint.replace("(did you mean ", f"(did you mean {section}.", 1)
    return f" (accepted: {', '.join(names)})"


def _build(raw: dict, source: str) -> Config:
    unknown = sorted(str(k) for k in set(raw) - set(SECTION_NAMES))
    if unknown:
        raise _error(source, unknown[0], f"unknown section{closest(unknown[0], SECTION_NAMES)} "
                                         f"(sections: {', '.join(SECTION_NAMES)})")
    cfg = Config()
    for name, cls in SECTIONS.items():
        setattr(cfg, name, _section(cls, raw.get(name), source, name))
    cfg.model = _model_section(raw.get("model"), source)
    _check_values(cfg, source)
    return cfg


def _section(cls, raw: Any, source: str, section: str):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise _error(source, section, f"expected a mapping, got {type(raw).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        dotted = f"{section}.{key}"
        if key not in names:
            raise _error(source, dotted, "unknown key" + _key_hint(section, str(key), names))
        values[key] = _coerce(value, names[key].type, names[key].default, source, dotted)
    return cls(**values)


def _coerce(value: Any, annotation: Any, default: Any, source: str, key: str):
    """Check ``value`` against the field's declared type; ints are accepted where floats are, and
    integral numbers (1e3, 1000.0) where ints are."""
    text = str(annotation)
    optional = "Optional" in text or default is None
    if value is None:
        if optional:
            return None
        raise _error(source, key, "must not be null")
    kind = "float" if "float" in text else "int" if "int" in text else "bool" if "bool" in text else "str"
    if kind == "bool":
        if not isinstance(value, bool):
            raise _error(source, key, f"expected true or false, got {value!r}")
        return value
    if kind == "int":
        number = value
        if isinstance(number, str):  # YAML reads 1e3 (no dot) as a string
            try:
                number = float(number)
            except ValueError:
                pass
        if isinstance(number, float) and number.is_integer():  # 1e3 means 1000; 1.5 stays an error
            number = int(number)
        if isinstance(number, bool) or not isinstance(number, int):
            raise _error(source, key, f"expected an integer, got {value!r}")
        if abs(number) > HUGE:  # beyond any sensible setting: a typo, and some would exhaust memory
            raise _error(source, key, f"expected an integer of magnitude at most 1e9, got {value!r}")
        return number
    if kind == "float":
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _error(source, key, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(source, key, f"expected a number, got {value!r}")
        if not math.isfinite(value) or abs(value) > HUGE:
            raise _error(source, key, f"expected a finite number of magnitude at most 1e9, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise _error(source, key, f"expected a string, got {value!r}")
    return value


def _model_section(raw: Any, source: str) -> Dict[str, Any]:
    from .nets import net_signature  # lazy: configs load without building anything

    raw = {"name": "mlp"} if raw is None else raw
    if not isinstance(raw, dict):
        raise _error(source, "model", f"expected a mapping, got {type(raw).__name__}")
    name = raw.get("name", "mlp")
    if name not in MODEL_NAMES:
        raise _error(source, "model.name", f"expected one of {MODEL_NAMES}, got {name!r}")
    model = {"name": name, "parameterization": raw.get("parameterization", "eps"),
             "conditioning": raw.get("conditioning")}
    if model["parameterization"] not in PARAMETERIZATIONS:
        raise _error(source, "model.parameterization",
                     f"expected one of {PARAMETERIZATIONS}, got {model['parameterization']!r}")
    if model["conditioning"] not in CONDITIONINGS:
        raise _error(source, "model.conditioning", f"expected one of {CONDITIONINGS}, got {model['conditioning']!r}")
    params = net_signature(name)
    for key, value in raw.items():
        if key in model:
            continue
        dotted = f"model.{key}"
        if key not in params:
            raise _error(source, dotted, f"unknown key for model {name!r}"
                                         f"{_key_hint('model', str(key), MODEL_FIXED + tuple(params))}")
        model[key] = _coerce_like(value, params[key], source, dotted)
        _check_model_value(key, model[key], source, dotted)
    return model


def _check_model_value(key: str, value: Any, source: str, dotted: str) -> None:
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
        raise _error(source, dotted, f"expected {what}, got {value!r}")


def _coerce_like(value: Any, default: Any, source: str, key: str):
    """Model keys are typed by the network's default values."""
    if isinstance(default, bool):
        return _coerce(value, "bool", default, source, key)
    if isinstance(default, int):
        return _coerce(value, "int", default, source, key)
    if isinstance(default, float):
        return _coerce(value, "float", default, source, key)
    if isinstance(default, str):
        return _coerce(value, "str", default, source, key)
    if isinstance(default, (tuple, list)):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise _error(source, key, f"expected a list of integers, got {value!r}")
        return list(value)
    return value


def _check_values(cfg: Config, source: str) -> None:
    from .data import NAMES as DATA_NAMES  # lazy: the data modules are not needed to read a config

    def need(ok: bool, key: str, what: str, value: Any):
        if not ok:
            raise _error(source, key, f"expected {what}, got {value!r}")

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
    need(d.name in DATA_NAMES, "data.name", f"one of {DATA_NAMES}", d.name)
    if d.root is None and d.name in NEEDS_ROOT:  # found here, the error names the key (not the reader's 'root')
        raise _error(source, "data.root", f"required for data.name {d.name!r} (the folder holding its files), "
                                          f"e.g. --set data.root=/path/to/{d.name}")
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
