"""The ``--set section.key=value`` overrides: each item is parsed and checked on its own first
(syntax, section, key, type), so its errors name it (``--set train.step=10: unknown key train.step
(did you mean train.steps?)``); then the items are merged into the raw config, and a problem that
only shows in the merged config (a range, a relation between keys) is blamed on the item that
caused it.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, List

from ..options import closest, parse_value
from .checks import _build, _check_model_value, _coerce, _coerce_like, _key_hint
from .schema import MODEL_FIXED, SECTION_NAMES, SECTIONS, ConfigError, _error, model_names


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
    if not isinstance(name, str) or name not in model_names():  # the merged config's check names the item that set it
        return items
    from ..nets import net_signature
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


def _blame(raw: dict, items: List[_Override], source: str, e: ConfigError, data_root: bool = True) -> ConfigError:
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
            _build(_merge(raw, items[:k], source), source, data_root)
        except ConfigError as e2:
            if e2.key == e.key:
                return e2 if k == 0 else ConfigError(f"{items[k - 1].where}: {e2.key}: {e2.detail}",
                                                     key=e2.key, detail=e2.detail)
    return e

