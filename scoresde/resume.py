"""What ``scoresde train CONFIG --workdir RUN --resume [--set KEY=VALUE]...`` trains with.

A resumed run keeps its own saved config (RUN/config.yaml): values change only through ``--set``,
never silently from the CONFIG file, and never in what the checkpoints were trained for (the SDE,
the network, the data set). ``plan_resume`` works this out before anything is built, so that the
command can say what it resumes and what it changes.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import yaml

from . import io
from .config import SECTIONS, Config, ConfigError, from_dict, load_config

#: what a resumed run may not change: the weights were trained for this SDE and network, and the
#: saved data stream indexes this data set. data.root (where the files are, not which) and
#: data.n_test (never read by training) may change.
FROZEN = ("sde", "model", "data")
MAY_CHANGE = ("data.root", "data.n_test")


def frozen_part(section: str, values):
    """The values of ``section`` a resumed run may not change. A key of sde or data missing from
    ``values`` (a checkpoint saved before the key existed) has its default, as loading that config does."""
    if not isinstance(values, dict):
        return values
    if section in SECTIONS:
        values = dict(dataclasses.asdict(SECTIONS[section]()), **values)
    return {k: v for k, v in values.items() if f"{section}.{k}" not in MAY_CHANGE}


@dataclass
class ResumePlan:
    """What ``scoresde train CONFIG --workdir RUN --resume --set ...`` trains with.

    config: the values in use: the run's saved config, then the --set items on top.
    saved_from: the file the saved config came from (RUN/config.yaml), None when the run has no
        checkpoint yet (then ``config`` is CONFIG with the --set items, as for a new run).
    changes: (key, saved value, value in use) for every value the --set items changed.
    ignored: (key, CONFIG's value, the run's value) for every value where CONFIG differs from the
        run and no --set item gives the key: never applied, only reported.
    """
    config: Config
    saved_from: Optional[str]
    changes: List[Tuple[str, Any, Any]] = field(default_factory=list)
    ignored: List[Tuple[str, Any, Any]] = field(default_factory=list)


def config_diff(old: Config, new: Config) -> List[Tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every value that differs, section by section."""
    out = []
    a, b = old.to_dict(), new.to_dict()
    for section in a:
        for key in list(a[section]) + [k for k in b[section] if k not in a[section]]:
            x, y = a[section].get(key), b[section].get(key)
            if x != y:
                out.append((f"{section}.{key}", x, y))
    return out


def _saved_config(workdir: str) -> Tuple[Optional[dict], str]:
    """The run's saved config as a mapping, and where it came from: RUN/config.yaml (the values the
    run last trained with), else the newest checkpoint whose meta.json holds one."""
    path = os.path.join(workdir, "config.yaml")
    if os.path.isfile(path):
        try:
            with open(path, "r", encoding="utf-8") as f:
                return yaml.safe_load(f), path
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    for _, ckpt in io.list_checkpoints(os.path.join(workdir, "checkpoints")):
        meta = os.path.join(ckpt, "meta.json")
        try:
            with open(meta, "r", encoding="utf-8") as f:
                saved = json.load(f).get("config")
        except (OSError, ValueError, AttributeError):
            continue  # a damaged checkpoint: the trainer reports it (or skips it) when resuming
        if isinstance(saved, dict):
            return saved, meta
    return None, path


def plan_resume(config_path: str, workdir: str, overrides: Optional[List[str]] = None) -> ResumePlan:
    """The config of ``--resume``: the run's saved config wins over CONFIG, values change only
    through ``--set``; --set changes to sde, model or data (but data.root, data.n_test) are refused,
    one ConfigError naming the items. With no checkpoint in ``workdir`` nothing is resumed, and
    CONFIG with the --set items applies as for a new run."""
    raw, source = None, None
    if io.list_checkpoints(os.path.join(workdir, "checkpoints")):
        raw, source = _saved_config(workdir)
    if raw is None:  # nothing to resume (or no readable config: the trainer says what is wrong)
        return ResumePlan(load_config(config_path, overrides), None)
    file_cfg = load_config(config_path)  # CONFIG's own errors name it, even though its values are not used
    saved = from_dict(raw, source=source)
    cfg = from_dict(raw, source=source, overrides=overrides)
    changes = config_diff(saved, cfg)
    set_keys = {item.partition("=")[0].strip(): item for item in overrides or []}
    frozen = [(k, old, new) for k, old, new in changes if k.split(".")[0] in FROZEN and k not in MAY_CHANGE]
    if frozen:
        # the items that caused them; model.name=... also changes keys it does not name
        sections = {k.split(".")[0] for k, _, _ in frozen}
        items = [set_keys[k] for k, _, _ in frozen if k in set_keys] or \
                [item for k, item in set_keys.items() if k.split(".")[0] in sections]
        what = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in frozen)
        raise ConfigError(f"{' '.join('--set ' + i for i in dict.fromkeys(items))}: --resume cannot change "
                          f"sde, model or data ({what}): the checkpoints in {workdir} were trained with "
                          f"the old values; train a new run in another --workdir")
    ignored = [(k, new, old) for k, old, new in config_diff(saved, file_cfg) if k not in set_keys]
    return ResumePlan(cfg, source, changes, ignored)
