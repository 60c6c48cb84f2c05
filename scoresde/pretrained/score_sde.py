"""Official score_sde_pytorch checkpoints (Song et al. 2021's reference implementation) -> a run.

``from_score_sde(checkpoint, config, overrides=None, workdir=None)`` and ``scoresde import
score-sde CHECKPOINT --config NAME [--set KEY=VALUE]... --workdir RUN_DIR [--data-root DIR]``.

``NAME`` is the reference config the checkpoint was trained with, as a path under the reference's
``configs/`` (``vp/cifar10_ddpmpp_continuous``, ``ve/cifar10_ncsnpp_continuous``, ...). The values
of those configs that decide what the checkpoint means are written below as a table
(``REFERENCE_CONFIGS``): the network (its ``model`` section), the SDE (``training.sde`` and the
model section's ``beta_min``/``beta_max``, ``sigma_min``/``sigma_max``, ``num_scales``), the data
(dataset, image size, channels, ``centered``: [-1, 1] or [0, 1]) and the training
hyperparameters (so that the run's config says how the weights were trained). ``--set KEY=VALUE``
changes a key of the config's ``model`` section, e.g. ``--set nf=32 --set ch_mult=[1,2]``.

What the network sees and returns follows the reference's ``get_score_fn(sde, model,
continuous=True)`` (models/utils.py):

    VP, sub-VP: the network sees t * 999 (``conditioning: time_index``, t (N - 1) with N = 1000)
                and its output is -std(t) * score (``parameterization: eps``)
    VE:         the network sees sigma(t) (``conditioning: sigma``; NCSN++ takes its log itself)
                and its output is the score (``parameterization: score``; with scale_by_sigma the
                network divides by sigma(t) inside)

The checkpoint is read with ``torch.load(path, map_location="cpu", weights_only=True)`` and nothing
else: a file that needs more than tensors and plain containers is refused, and its payload never
runs. The EMA weights are used: ``ema["shadow_params"]`` lists the tensors of the network's
parameters that require grad, in the network's order; the rest of the state (non-trainable
parameters such as the Fourier features' ``W``, buffers) comes from ``model`` (keys without the
``module.`` prefix of ``torch.nn.DataParallel``). Every count and shape is checked.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .reference_configs import REFERENCE_CONFIGS, _DATASETS, _FIXED_VALUES, _NOT_NET, _SDE_KEYS, _SDE_TYPES, _normalize, reference_config
from .rundir import _check_workdir, _write_run

__all__ = ["REFERENCE_CONFIGS", "reference_config", "run_config", "read_checkpoint", "from_score_sde"]

# ---- --set on the reference model section -------------------------------------------------------

def _parse_overrides(items: Optional[Sequence[str]], ref_model: dict) -> List[Tuple[str, str, Any]]:
    """``["nf=32", "ch_mult=[1,2]"]`` -> [(item, key, value)], each value typed like the reference's
    own (YAML scalars and lists, as ``--option`` reads them); ValueError naming the item."""
    from ..options import closest, parse_value
    out = []
    for item in items or []:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"--set {item}: expected KEY=VALUE with KEY a key of the reference config's model "
                             f"section, e.g. --set nf=32")
        key, _, text = item.partition("=")
        key = key.strip()
        if key.startswith("model."):
            key = key[len("model."):]
        if key not in ref_model:
            raise ValueError(f"--set {item}: unknown key {key!r} of the reference config's model section"
                             f"{closest(key, ref_model)} (keys: {', '.join(sorted(ref_model))})")
        out.append((item, key, _typed_like(parse_value(text), ref_model[key], item, key)))
    return out


def _typed_like(value: Any, like: Any, item: str, key: str) -> Any:
    def bad(what: str):
        return ValueError(f"--set {item}: model.{key}: expected {what}, got {value!r}")

    if isinstance(like, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(like, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if isinstance(like, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if isinstance(like, (list, tuple)):
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]  # ch_mult=2 or attn_resolutions=16: a one-element list
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad("a list of integers, e.g. [1,2]")
        return list(value)
    if not isinstance(value, str):
        value = str(value)
    return value


# ---- reference config -> scoresde config ---------------------------------------------------------

def _net_kwargs(ref: dict) -> Dict[str, Any]:
    """The scoresde network's keyword arguments for the reference model section (and its data)."""
    from ..nets import net_signature
    model, data = ref["model"], ref["data"]
    name = model["name"]
    accepted = net_signature(name)
    kwargs: Dict[str, Any] = {}
    for key, value in model.items():
        if key in _NOT_NET:
            continue
        if key in accepted:
            kwargs[key] = value
        elif key in _FIXED_VALUES:
            if value != _FIXED_VALUES[key]:
                raise ValueError(f"model.{key}={value!r}: scoresde's {name!r} network supports only "
                                 f"{key} {_FIXED_VALUES[key]!r}")
        elif name == "ddpm" and key in ("embedding_type", "fourier_scale"):
            continue  # the defaults file's; models/ddpm.py always embeds the time index sinusoidally
        else:
            raise ValueError(f"model.{key}={value!r}: scoresde's {name!r} network has no such setting "
                             f"(its settings: {', '.join(accepted)})")
    # what the reference's networks read from outside their model section
    if "centered" in accepted:
        kwargs["centered"] = bool(data["centered"])
    for key in _SDE_KEYS:
        if key in accepted:
            kwargs[key] = model[key]
    return kwargs


def run_config(ref: dict, data_root: Optional[str] = None) -> dict:
    """The scoresde config (a raw mapping, unvalidated) of the reference config ``ref``."""
    tr, data, model, optim = ref["training"], ref["data"], ref["model"], ref["optim"]
    sde_type = _SDE_TYPES[tr["sde"]]
    vp_like = sde_type in ("vp", "subvp")
    if vp_like and model["num_scales"] != 1000:
        raise ValueError(f"model.num_scales={model['num_scales']}: the reference's continuous VP and sub-VP "
                         f"networks see t * 999, which is scoresde's t (N - 1) only for N = 1000")
    sde = {"type": sde_type, "N": int(model["num_scales"])}
    if vp_like:
        sde.update(beta_min=float(model["beta_min"]), beta_max=float(model["beta_max"]))
    else:
        sde.update(sigma_min=float(model["sigma_min"]), sigma_max=float(model["sigma_max"]))
    out_model = {"name": model["name"],
                 # VP / sub-VP: net(x, t * 999) ~ -std * score; VE: net(x, sigma) ~ score (models/utils.py)
                 "parameterization": "eps" if vp_like else "score",
                 "conditioning": "time_index" if vp_like else "sigma"}
    out_model.update(_net_kwargs(ref))
    # the reference's samplers: Euler-Maruyama (VP) / reverse diffusion + Langevin (VE) over all N
    # steps, ending at its sampling eps (1e-3 for VP and sub-VP, 1e-5 for VE: sde_lib.py)
    if vp_like:
        sampler = {"sampler": "euler_maruyama", "steps": int(model["num_scales"]), "eps": 1e-3}
    else:
        sampler = {"sampler": "predictor_corrector", "steps": int(model["num_scales"]), "eps": 1e-5}
    return {
        "sde": sde,
        "model": out_model,
        "data": {"name": _DATASETS[data["dataset"]], "root": data_root, "image_size": int(data["image_size"]),
                 "flip": bool(data["random_flip"]), "centered": bool(data["centered"])},
        "train": {"steps": int(tr["n_iters"]) - 1, "batch_size": int(tr["batch_size"]), "lr": float(optim["lr"]),
                  "warmup": int(optim["warmup"]), "grad_clip": float(optim["grad_clip"]),
                  "ema_decay": float(model["ema_rate"]), "loss": "dsm",
                  "likelihood_weighting": bool(tr["likelihood_weighting"]),
                  "reduce": "mean" if tr["reduce_mean"] else "sum",
                  "checkpoint_every": int(tr["snapshot_freq_for_preemption"]),
                  "snapshot_every": int(tr["snapshot_freq"]), "seed": int(ref["seed"])},
        "sample": sampler,
    }


# ---- reading the checkpoint ----------------------------------------------------------------------

def read_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor], int]:
    """(model state without the ``module.`` prefix, EMA shadow params, step) of a score_sde_pytorch
    checkpoint, read with ``torch.load(weights_only=True)`` only; ValueError naming the file else."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ValueError(f"{path}: refused: loading it needs more than tensors (a pickle that would create "
                             f"arbitrary objects or run code); scoresde reads checkpoints with "
                             f"torch.load(weights_only=True) only") from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or damaged? {_short(e)})") from None
    except Exception as e:  # torch.load raises many kinds on a damaged file (RuntimeError, EOFError, ...)
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or damaged? "
                         f"{type(e).__name__}: {_short(e)})") from None
    what = "a score_sde_pytorch checkpoint (a dict with 'model', 'ema' and 'step')"
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not {what}: it holds a {type(ckpt).__name__}")
    for key in ("ema", "model"):
        if not isinstance(ckpt.get(key), dict):
            raise ValueError(f"{path}: not {what}: no {key!r} entry" if key not in ckpt else
                             f"{path}: not {what}: {key!r} is a {type(ckpt[key]).__name__}, not a dict")
    shadow = ckpt["ema"].get("shadow_params")
    if not isinstance(shadow, (list, tuple)) or not all(torch.is_tensor(p) for p in shadow):
        raise ValueError(f"{path}: not {what}: ema['shadow_params'] is not a list of tensors")
    model = {}
    for key, value in ckpt["model"].items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise ValueError(f"{path}: not {what}: model[{key!r}] is not a tensor")
        model[key[len("module."):] if key.startswith("module.") else key] = value
    step = ckpt.get("step", 0)
    try:
        step = int(step)
    except (TypeError, ValueError, RuntimeError):
        step = 0
    return model, list(shadow), max(step, 0)


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


def _first_conv_channels(tensors, channels: int) -> Optional[int]:
    """The output channels of the first 3x3 convolution that reads the image (the network's nf)."""
    for t in tensors:
        if t.dim() == 4 and t.shape[1] == channels and t.shape[2] == t.shape[3] == 3:
            return int(t.shape[0])
    return None


def _shape_hint(ref: dict, model_state: Dict[str, torch.Tensor], shadow: List[torch.Tensor], net) -> str:
    """Which ``--set`` probably makes the network fit the checkpoint."""
    channels = int(ref["data"]["num_channels"])
    nf = int(ref["model"]["nf"])
    theirs = _first_conv_channels(list(model_state.values()) or shadow, channels)
    if theirs is None:
        theirs = _first_conv_channels(shadow, channels)
    if theirs is not None and theirs != nf:
        return f"model.nf? the checkpoint's first convolution has {theirs} channels, the config {nf}: try --set nf={theirs}"
    return ("a checkpoint of another architecture or size? check --config, and --set num_res_blocks=..., "
            "ch_mult=[...] or attn_resolutions=[...] (the config has "
            f"num_res_blocks={ref['model']['num_res_blocks']}, ch_mult={ref['model']['ch_mult']}, "
            f"attn_resolutions={ref['model']['attn_resolutions']})")


def _ema_state(net, model_state: Dict[str, torch.Tensor], shadow: List[torch.Tensor], path: str, ref: dict,
               what: str) -> Dict[str, torch.Tensor]:
    """The network's full state dict with the EMA weights: ``shadow`` in the order of its parameters
    that require grad, every other entry from the checkpoint's ``model``. ValueError naming the
    first tensor that does not fit."""
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    state = {}
    for i, ((name, p), q) in enumerate(zip(trainable, shadow)):
        if tuple(q.shape) != tuple(p.shape):
            raise ValueError(f"{path}: does not fit {what}: EMA tensor {i} ({name}) has shape {tuple(q.shape)}, "
                             f"the network's {tuple(p.shape)}; {_shape_hint(ref, model_state, shadow, net)}")
        if name in model_state and tuple(model_state[name].shape) != tuple(q.shape):
            raise ValueError(f"{path}: its EMA tensors are not in the order of the model's: EMA tensor {i} has "
                             f"shape {tuple(q.shape)}, model[{name!r}] {tuple(model_state[name].shape)}")
        state[name] = q.to(p.dtype)
    if len(shadow) != len(trainable):
        raise ValueError(f"{path}: does not fit {what}: the checkpoint has {len(shadow)} EMA tensors, the network "
                         f"{len(trainable)} trainable ones; {_shape_hint(ref, model_state, shadow, net)}")
    params = dict(net.named_parameters())
    for name, own in net.state_dict().items():
        if name in state:
            continue
        if name not in model_state:
            if name in params:  # a non-trainable parameter (Fourier features' W): only the checkpoint has it
                raise ValueError(f"{path}: does not fit {what}: model[{name!r}] (non-trainable) is missing")
            state[name] = own  # a buffer the reference does not store: computed from the config
            continue
        theirs = model_state[name]
        if tuple(theirs.shape) != tuple(own.shape):
            raise ValueError(f"{path}: does not fit {what}: model[{name!r}] has shape {tuple(theirs.shape)}, the "
                             f"network's {tuple(own.shape)}; {_shape_hint(ref, model_state, shadow, net)}")
        state[name] = theirs.to(own.dtype)
    return state


# ---- the import --------------------------------------------------------------------------------

def from_score_sde(checkpoint: str, config: str, overrides: Optional[Sequence[str]] = None,
                   workdir: Optional[str] = None, data_root: Optional[str] = None):
    """An official score_sde_pytorch checkpoint as a scoresde run (what ``scoresde.load`` returns).

    Args:
        checkpoint: the reference's ``checkpoint_<k>.pth`` (a dict with ``model``, ``ema``,
            ``optimizer``, ``step``), read with ``torch.load(weights_only=True)`` only.
        config: the reference config it was trained with, e.g. ``"vp/cifar10_ddpmpp_continuous"``
            (see ``REFERENCE_CONFIGS``).
        overrides: ``["nf=32", "ch_mult=[1,2]", ...]``: keys of the reference config's ``model``
            section, values as YAML scalars or lists.
        workdir: write a run directory there (``config.yaml`` and ``checkpoints/ckpt_<step>/`` in the
            trainer's format, atomically), which every command and ``scoresde.load`` read; refused
            if it already holds a run. None: only return the loaded run.
        data_root: the folder of the data set (``data.root``): needed by ``likelihood`` and
            ``compare``, not to sample.

    Returns a ``scoresde.run.LoadedRun`` (``.net`` with the EMA weights in eval mode, ``.sde``,
    ``.score_fn``, ``.config``, ``.step``). Every problem is one ValueError line, before anything is
    written: an unknown config name, a bad ``--set``, a file that is not a plain-tensor checkpoint
    (refused unread), a truncated one, one without ``ema``/``model``, one of another architecture
    (naming the first tensor that does not fit and the ``--set`` that probably fixes it).
    """
    from .. import io
    from ..config import ConfigError, from_dict
    from ..run import LoadedRun, build_sde, build_score_model, load

    ref = reference_config(config)
    name = _normalize(config)
    items = _parse_overrides(overrides, ref["model"])
    for _, key, value in items:
        ref["model"][key] = value
    if data_root is not None:
        if not os.path.isdir(os.path.expanduser(str(data_root))):
            raise ValueError(f"--data-root {data_root}: not an existing folder")
        data_root = os.path.abspath(os.path.expanduser(str(data_root)))  # the run works from any folder
    if workdir is not None:
        _check_workdir(workdir)
    source = f"score_sde config {name}"
    try:
        raw = run_config(ref, data_root)
    except ValueError as e:
        raise _blame(e, items) from None
    try:
        cfg = from_dict(raw, source=source, data_root=False)
    except ConfigError as e:
        raise _blame(e, items) from None
    data_shape = (int(ref["data"]["num_channels"]), cfg.data.image_size, cfg.data.image_size)
    data_range = (-1.0, 1.0) if cfg.data.centered else (0.0, 1.0)
    sde = build_sde(cfg)
    try:
        model = build_score_model(cfg, sde, data_shape)
    except ValueError as e:
        raise _blame(e, items) from None
    model_state, shadow, step = read_checkpoint(checkpoint)
    what = name + "".join(f" --set {item}" for item, _, _ in items)
    state = _ema_state(model.net, model_state, shadow, checkpoint, ref, what)
    model.net.load_state_dict(state)
    model.eval()
    provenance = {"format": "score_sde_pytorch", "checkpoint": os.path.abspath(checkpoint),
                  "reference_config": name, "overrides": [item for item, _, _ in items],
                  "weights": "ema", "ema_rate": float(ref["model"]["ema_rate"]), "step": step}
    if workdir is None:
        return LoadedRun(net=model.net, sde=sde, score_fn=model, config=cfg, step=step, data_shape=data_shape,
                         data_range=data_range, path=os.path.abspath(checkpoint))
    meta = {"config": cfg.to_dict(), "data_shape": list(data_shape), "data_range": list(data_range),
            "imported_from": provenance}
    header = (f"Imported from the score_sde_pytorch checkpoint {provenance['checkpoint']} (step {step}, EMA weights),\n"
              f"reference config {name}" + "".join(f" --set {item}" for item, _, _ in items) + "\n"
              "by `scoresde import score-sde` (also in checkpoints/ckpt_*/meta.json: imported_from).")
    _write_run(workdir, cfg, step, {"ema": model.net.state_dict()}, meta, io, header=header)
    return load(workdir)


def _blame(e: Exception, items) -> ValueError:
    """An error about a model key told as the --set item that set it: a config error keyed
    model.<key>, or a message that names the key (``model.num_scales=...``, the network's own
    ``nf = 16 must be ...``)."""
    import re
    text = str(e)
    key = getattr(e, "key", None) or ""
    detail = getattr(e, "detail", None)
    for item, k, _ in reversed(items):
        if key and key.split("/")[0] == f"model.{k}" and detail:
            return ValueError(f"--set {item}: {key}: {detail}")
        if not key:
            prefix = f"model.{k}={_value_text(text, k)}: "
            if text.startswith(prefix):
                return ValueError(f"--set {item}: model.{k}: {text[len(prefix):]}")
            if re.search(rf"(?<![\w.]){re.escape(k)}\b", text):
                return ValueError(f"--set {item}: {text}")
    return ValueError(text)


def _value_text(text: str, key: str) -> str:
    """The value printed after 'model.<key>=' at the start of ``text`` (up to ': ')."""
    start = len(f"model.{key}=")
    end = text.find(": ", start)
    return text[start:end] if text.startswith(f"model.{key}=") and end > 0 else ""
