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
from .schema import (CONDITIONINGS, DEVICES, HUGE, LOSS_NAMES, LR_SCHEDULES, MAX_WIDTH, MODEL_FIXED, MODEL_NAMES,
                     NEEDS_ROOT, PARAMETERIZATIONS, SAMPLERS, SDE_TYPES, SECTION_NAMES, SECTIONS, Config, ConfigError,
                     DataConfig, SampleConfig, SDEConfig, TrainConfig)

__all__ = [
    "Config", "ConfigError", "SDEConfig", "DataConfig", "TrainConfig", "SampleConfig", "SECTIONS", "SECTION_NAMES",
    "MODEL_FIXED", "SDE_TYPES", "MODEL_NAMES", "PARAMETERIZATIONS", "CONDITIONINGS", "LOSS_NAMES", "SAMPLERS",
    "DEVICES", "HUGE", "MAX_WIDTH", "LR_SCHEDULES", "NEEDS_ROOT", "PACKAGE_CONFIGS", "bundled_configs",
    "resolve_config", "load_config", "from_dict", "save_config",
]


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



def save_config(cfg: Config, path: str) -> None:
    """Write the config as YAML, atomically."""
    from ..io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
