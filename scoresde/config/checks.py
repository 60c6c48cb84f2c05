"""Coercion and value checks: a raw mapping (read from YAML, or merged with ``--set`` items)
becomes a ``Config``, or a ``ConfigError`` naming its source and the dotted key (``configs/toy.yaml:
train.lr: expected a number in (0, 1], got -1``).

Each value is checked against its field's declared type (a network's keys against the types of its
defaults), then the values against their ranges and against each other. Integer keys take integral
numbers in any notation (``1e3`` is 1000; ``1.5`` is refused).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict

from ..options import closest
from .schema import (CHECKPOINTABLE_MODELS, CONDITIONAL_MODELS, CONDITIONINGS, DEVICES, HUGE, LOSS_NAMES,
                     LR_SCHEDULES, MAX_WIDTH, MODEL_FIXED, NEEDS_ROOT, OBJECTIVES, PARAMETERIZATIONS, SAMPLERS,
                     SDE_TYPES, SECTION_NAMES, SECTIONS, Config, _error, model_names)


def _key_hint(section: str, name: str, names) -> str:
    """' (did you mean train.steps?)' for the closest accepted key, else the accepted keys."""
    hint = closest(name, names)  # ' (did you mean steps?)' or ''
    if hint:
        return hint.replace("(did you mean ", f"(did you mean {section}.", 1)
    return f" (accepted: {', '.join(names)})"


def _build(raw: dict, source: str, data_root: bool = True) -> Config:
    """``data_root``: require data.root for the data sets read from a folder (NEEDS_ROOT), as where
    the data is read (training); False to load a run for sampling, which reads no data."""
    unknown = sorted(str(k) for k in set(raw) - set(SECTION_NAMES))
    if unknown:
        raise _error(source, unknown[0], f"unknown section{closest(unknown[0], SECTION_NAMES)} "
                                         f"(sections: {', '.join(SECTION_NAMES)})")
    cfg = Config()
    for name, cls in SECTIONS.items():
        setattr(cfg, name, _section(cls, raw.get(name), source, name))
    cfg.model = _model_section(raw.get("model"), source)
    _check_values(cfg, source, data_root)
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
    from ..nets import net_signature  # lazy: configs load without building anything

    raw = {"name": "mlp"} if raw is None else raw
    if not isinstance(raw, dict):
        raise _error(source, "model", f"expected a mapping, got {type(raw).__name__}")
    name = raw.get("name", "mlp")
    names = model_names()
    if not isinstance(name, str) or name not in names:
        raise _error(source, "model.name", f"expected one of {names}{closest(str(name), names)}, got {name!r}")
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
    elif key == "num_classes":
        ok, what = 0 <= value <= MAX_WIDTH, f"an integer in [0, {MAX_WIDTH}] (0: unconditional)"
    elif key == "fourier_scale":
        ok, what = 0 < value <= 1e6, "a number in (0, 1e6]"
    elif isinstance(value, list) and all(isinstance(v, int) for v in value):
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
        # a list like the default's: of strings where the default's are strings, else of integers
        # (ch_mult, attn_resolutions, fir_kernel)
        if default and all(isinstance(v, str) for v in default):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise _error(source, key, f"expected a list of strings, got {value!r}")
            return list(value)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise _error(source, key, f"expected a list of integers, got {value!r}")
        return list(value)
    return value


def _check_values(cfg: Config, source: str, data_root: bool = True) -> None:
    from ..data import NAMES as DATA_NAMES  # lazy: the data modules are not needed to read a config

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
    _check_fast_paths(cfg, need)
    if data_root and d.root is None and d.name in NEEDS_ROOT:  # found here, the error names the key (not the reader's 'root')
        raise _error(source, "data.root", f"required for data.name {d.name!r} (the folder holding its files), "
                                          f"e.g. --set data.root=/path/to/{d.name}")
    need(d.image_size is None or 1 <= d.image_size <= 4096, "data.image_size", "a positive integer", d.image_size)
    # a network that rescales its input itself (the reference's: 2x - 1 when not centered) must be
    # told the data's range, or it silently sees the wrong one
    need(cfg.model.get("centered", d.centered) == d.centered, "model.centered",
         f"the value of data.centered, {d.centered} (the network maps [0, 1] input to [-1, 1] itself "
         f"unless centered)",
         cfg.model.get("centered"))
    for key in ("n_train", "n_test"):
        v = getattr(d, key)
        need(v is None or 1 <= v <= 10 ** 8, f"data.{key}", "an integer in [1, 1e8] or null", v)
    _check_conditional(cfg, need)
    need(smp.sampler in SAMPLERS, "sample.sampler", f"one of {SAMPLERS}", smp.sampler)
    need(smp.steps >= 1, "sample.steps", "a positive integer", smp.steps)
    need(0 < smp.eps < 1, "sample.eps", "a number in (0, 1)", smp.eps)
    need(smp.num >= 1, "sample.num", "a positive integer", smp.num)



def _check_fast_paths(cfg: Config, need) -> None:
    """train.compile_mode, grad_accum, checkpoint_activations, fused_optimizer, channels_last
    (scoresde.train_fast)."""
    import torch

    from ..precision import COMPILE_MODES
    from ..data import IMAGE_SETS  # lazy, as above
    from ..train_fast import fused_adam_supported

    t, name = cfg.train, cfg.model["name"]
    need(t.compile_mode in COMPILE_MODES, "train.compile_mode", f"one of {', '.join(COMPILE_MODES)}", t.compile_mode)
    need(t.compile or t.compile_mode == "default", "train.compile_mode",
         "'default' unless train.compile is true (the mode of a compilation that is not asked for)", t.compile_mode)
    need(1 <= t.grad_accum <= t.batch_size and t.batch_size % t.grad_accum == 0, "train.grad_accum",
         f"a positive integer dividing train.batch_size ({t.batch_size})", t.grad_accum)
    need(not t.checkpoint_activations or name in CHECKPOINTABLE_MODELS, "train.checkpoint_activations",
         f"false for model.name {name!r} (only {', '.join(CHECKPOINTABLE_MODELS)} have blocks to checkpoint)",
         t.checkpoint_activations)
    need(not t.channels_last or cfg.data.name in IMAGE_SETS, "train.channels_last",
         f"false for data.name {cfg.data.name!r}, which is not image data (channels_last is a layout of "
         f"4-D image batches: {', '.join(IMAGE_SETS)})", t.channels_last)
    need(not (t.fused_optimizer and t.device != "auto" and not fused_adam_supported(t.device)),
         "train.fused_optimizer", f"false or null: this torch ({torch.__version__}) has no fused Adam on "
         f"train.device {t.device!r}", t.fused_optimizer)


def _check_conditional(cfg: Config, need) -> None:
    """model.num_classes, train.label_dropout, train.objective and data.class_folders against each
    other and the data."""
    t, d = cfg.train, cfg.data
    k = cfg.model.get("num_classes", 0)
    need(not d.class_folders or d.name == "folder", "data.class_folders",
         f"false for data.name {d.name!r} (class folders, root/<class name>/..., label data.name 'folder' only)",
         d.class_folders)
    need(t.objective in OBJECTIVES, "train.objective", f"one of {OBJECTIVES}", t.objective)
    need(0 <= t.label_dropout < 1, "train.label_dropout", "a number in [0, 1)", t.label_dropout)
    if t.objective == "classifier":
        name = cfg.model["name"]
        need(name in CONDITIONAL_MODELS, "model.name",
             f"one of {CONDITIONAL_MODELS} for train.objective classifier (its encoder becomes the classifier)", name)
        _check_classes(d, k, True, need)
        need(t.label_dropout == 0, "train.label_dropout", "0 for train.objective classifier (it is the score "
             "model's classifier-free guidance)", t.label_dropout)
        need(t.loss == "dsm" and not t.likelihood_weighting, "train.loss/likelihood_weighting",
             "the defaults (dsm, false) for train.objective classifier, whose loss is the cross-entropy", 
             (t.loss, t.likelihood_weighting))
        need(t.snapshot_every == 0, "train.snapshot_every", "0 for train.objective classifier (it draws no samples)",
             t.snapshot_every)
        return
    if k:
        _check_classes(d, k, False, need)
    need(t.label_dropout == 0 or k > 0, "train.label_dropout", "0 unless model.num_classes > 0 (a conditional model)",
         t.label_dropout)


def _check_classes(d, k: int, classifier: bool, need) -> None:
    """The data of a run that uses labels (a noisy classifier, or a class-conditional score model:
    k = model.num_classes > 0) has them, and k is its number of classes. A folder's is only known
    when it is read (at least 2): ``run.load_data`` checks k against its class folders."""
    from ..data import LABELLED_SETS  # lazy, as above

    classes = LABELLED_SETS.get(d.name)
    labelled = ", ".join(LABELLED_SETS) + ", folder with data.class_folders true"
    what = "train.objective classifier" if classifier else "model.num_classes > 0 (a class-conditional model)"
    if d.name == "folder":
        need(d.class_folders, "data.class_folders", f"true for {what} on data.name 'folder' (the labels are its "
             "class subfolders, data.root/<class name>/...)", d.class_folders)
        need(k >= 2, "model.num_classes", f"the number of class folders in data.root (at least 2) for {what}", k)
    elif classifier:
        need(classes is not None, "data.name", f"a data set with class labels for {what} (labelled: {labelled})",
             d.name)
        need(k == classes, "model.num_classes", f"{classes}, the classes of {d.name!r}, for {what}", k)
    else:
        need(classes is not None, "model.num_classes", f"0 for data.name {d.name!r}, which has no class labels "
             f"(labelled: {labelled})", k)
        need(k == classes, "model.num_classes", f"{classes} (or 0), the classes of {d.name!r}", k)
