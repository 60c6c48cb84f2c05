"""Typed run configurations, loaded from YAML and validated with one clear error per problem.

This module reads a config (a path, or the name of one shipped in scoresde/configs/), applies the
``--set`` items and writes one back; the rest lives in:

    schema:     the sections' dataclasses, the accepted values, ``Config`` and ``ConfigError``
    checks:     coercion of raw values to the declared types, and the checks of their values
    overrides:  the ``--set section.key=value`` items: parsing, merging, and blaming the item at fault

Every error names its source and the dotted key: the file (``configs/toy.yaml: train.lr: expected
a number in (0, 1], got -1``), or the ``--set`` item the user typed when the problem comes from it
(``--set train.step=10: unknown key train.step (did you mean train.steps?)``). Integer keys take
integral numbers in any notation (``1e3`` is 1000; ``1.5`` is refused).
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

import yaml

from .checks import _build
from .overrides import _blame, _merge, _model_items, _parse_override
from .schema import (CONDITIONINGS, DEVICES, HUGE, LOSS_NAMES, LR_SCHEDULES, MAX_WIDTH, MODEL_FIXED, NEEDS_ROOT,
                     OBJECTIVES, PARAMETERIZATIONS, SAMPLERS, SDE_TYPES, SECTION_NAMES, SECTIONS, Config, ConfigError, DataConfig,
                     SampleConfig, SDEConfig, TrainConfig, model_names)

__all__ = [
    "Config", "ConfigError", "SDEConfig", "DataConfig", "TrainConfig", "SampleConfig", "SECTIONS", "SECTION_NAMES",
    "MODEL_FIXED", "SDE_TYPES", "MODEL_NAMES", "PARAMETERIZATIONS", "CONDITIONINGS", "LOSS_NAMES", "OBJECTIVES", "SAMPLERS",
    "DEVICES", "HUGE", "MAX_WIDTH", "LR_SCHEDULES", "NEEDS_ROOT", "PACKAGE_CONFIGS", "bundled_configs",
    "resolve_config", "load_config", "from_dict", "save_config", "model_names", "missing_data_root",
]


def __getattr__(name: str):
    # MODEL_NAMES follows scoresde.nets.NETS, read when asked (see schema.model_names)
    if name == "MODEL_NAMES":
        return model_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- loading -----------------------------------------------------------------------------------

#: the configs shipped with scoresde, usable by name
#: (scoresde/configs/, a sibling of this package's folder)
PACKAGE_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


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


def from_dict(raw: Any, source: str = "config", overrides: Optional[List[str]] = None,
              data_root: bool = True) -> Config:
    """Validate the mapping ``raw`` (named ``source`` in errors) after applying ``--set`` items.

    Each item is checked on its own first (syntax, section, key, type), so its errors name it. A
    problem that only shows in the merged config (a range, a relation between keys) is blamed on the
    item(s) that set the key, else on the first item after which it appears, else on ``source``.

    ``data_root=False`` accepts a data set read from a folder (mnist, cifar10, folder) without
    ``data.root``: what sampling from a run needs (it reads no data); whatever reads the data
    checks it then (``missing_data_root``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections {SECTION_NAMES}, got {type(raw).__name__}")
    if not overrides:
        return _build(raw, source, data_root)
    items = _model_items([_parse_override(item) for item in overrides], raw)
    try:
        return _build(_merge(raw, items, source), source, data_root)
    except ConfigError as e:
        raise _blame(raw, items, source, e, data_root) from None


def missing_data_root(cfg: Config, source: str = "the run's config") -> Optional[ConfigError]:
    """The error for reading ``cfg``'s data without its folder (data.root null for mnist, cifar10 or
    folder), naming the key and how to set it; None when the data can be read."""
    d = cfg.data
    if d.root is not None or d.name not in NEEDS_ROOT:
        return None
    detail = (f"required to read the data of data.name {d.name!r} (the folder holding its files): set it in "
              f"the run's config.yaml (data.root: /path/to/{d.name}), or for an imported run pass "
              f"--data-root DIR to `scoresde import`")
    return ConfigError(f"{source}: data.root: {detail}", key="data.root", detail=detail)



def save_config(cfg: Config, path: str) -> None:
    """Write the config as YAML, atomically."""
    from ..io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
