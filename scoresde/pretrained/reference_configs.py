"""The score_sde_pytorch configs an official checkpoint can come with, as data.

The values of the reference implementation's ``configs/`` (Song et al. 2021) that decide what a
checkpoint means: the network (its ``model`` section), the SDE, the data and the training
hyperparameters. Facts read from the reference's config files, written as a table.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any, Dict, Optional

# ---- the reference configs (facts from score_sde_pytorch's configs/) -----------------------------
#
# Each entry holds the values of one reference config after its defaults file is applied: the
# sections ``training`` (sde, batch size, iterations, loss reduction), ``sampling`` (the PC
# predictor / corrector and snr), ``data``, ``model`` and ``optim``. Only what decides what a
# checkpoint means or how it was trained is listed.

_CIFAR10 = {  # configs/default_cifar10_configs.py
    "training": {"batch_size": 128, "n_iters": 1300001, "snapshot_freq": 50000,
                 "snapshot_freq_for_preemption": 10000, "likelihood_weighting": False, "continuous": True,
                 "reduce_mean": False},
    "sampling": {"n_steps_each": 1, "noise_removal": True, "probability_flow": False, "snr": 0.16},
    "data": {"dataset": "CIFAR10", "image_size": 32, "random_flip": True, "centered": False,
             "uniform_dequantization": False, "num_channels": 3},
    "model": {"sigma_min": 0.01, "sigma_max": 50.0, "num_scales": 1000, "beta_min": 0.1, "beta_max": 20.0,
              "dropout": 0.1, "embedding_type": "fourier"},
    "optim": {"weight_decay": 0.0, "optimizer": "Adam", "lr": 2e-4, "beta1": 0.9, "eps": 1e-8, "warmup": 5000,
              "grad_clip": 1.0},
    "seed": 42,
}
_LSUN = {  # configs/default_lsun_configs.py (also the 256x256 CelebA-HQ and FFHQ configs)
    "training": {"batch_size": 64, "n_iters": 2400001, "snapshot_freq": 50000,
                 "snapshot_freq_for_preemption": 5000, "likelihood_weighting": False, "continuous": True,
                 "reduce_mean": False},
    "sampling": {"n_steps_each": 1, "noise_removal": True, "probability_flow": False, "snr": 0.075},
    "data": {"dataset": "LSUN", "image_size": 256, "random_flip": True, "centered": False,
             "uniform_dequantization": False, "num_channels": 3},
    "model": {"sigma_min": 0.01, "sigma_max": 378.0, "num_scales": 2000, "beta_min": 0.1, "beta_max": 20.0,
              "dropout": 0.0, "embedding_type": "fourier"},
    "optim": {"weight_decay": 0.0, "optimizer": "Adam", "lr": 2e-4, "beta1": 0.9, "eps": 1e-8, "warmup": 5000,
              "grad_clip": 1.0},
    "seed": 42,
}
_HQ1024 = {  # configs/ve/{celebahq,ffhq}_ncsnpp_continuous.py define every value themselves
    "training": {"batch_size": 8, "n_iters": 2400001, "snapshot_freq": 50000,
                 "snapshot_freq_for_preemption": 5000, "likelihood_weighting": False, "continuous": True,
                 "reduce_mean": False},
    "sampling": {"n_steps_each": 1, "noise_removal": True, "probability_flow": False, "snr": 0.15},
    "data": {"dataset": "CelebAHQ", "image_size": 1024, "random_flip": True, "centered": False,
             "uniform_dequantization": False, "num_channels": 3},
    "model": {"sigma_min": 0.01, "sigma_max": 1348.0, "num_scales": 2000, "beta_min": 0.1, "beta_max": 20.0,
              "dropout": 0.0, "embedding_type": "fourier"},
    "optim": {"weight_decay": 0.0, "optimizer": "Adam", "lr": 2e-4, "beta1": 0.9, "eps": 1e-8, "warmup": 5000,
              "grad_clip": 1.0},
    "seed": 42,
}

#: the model keys every NCSN++ / DDPM++ config sets (models/ncsnpp.py), before its own changes
_NCSNPP = {"name": "ncsnpp", "normalization": "GroupNorm", "nonlinearity": "swish", "nf": 128,
           "ch_mult": [1, 2, 2, 2], "num_res_blocks": 4, "attn_resolutions": [16], "resamp_with_conv": True,
           "conditional": True, "fir": True, "fir_kernel": [1, 3, 3, 1], "skip_rescale": True,
           "resblock_type": "biggan", "progressive": "none", "progressive_input": "residual",
           "progressive_combine": "sum", "attention_type": "ddpm", "init_scale": 0.0, "fourier_scale": 16.0,
           "conv_size": 3}
#: DDPM++ (the NCSN++ code without FIR resampling and without the input pyramid, positional time
#: embedding of t * 999): the VP and sub-VP "ddpmpp" configs
_DDPMPP = dict(_NCSNPP, fir=False, progressive_input="none", embedding_type="positional")
#: DDPM (models/ddpm.py): Ho et al.'s U-Net
_DDPM = {"name": "ddpm", "normalization": "GroupNorm", "nonlinearity": "swish", "nf": 128, "ch_mult": [1, 2, 2, 2],
         "num_res_blocks": 2, "attn_resolutions": [16], "resamp_with_conv": True, "conditional": True}
_VP_TRAINING = {"reduce_mean": True}
_VP_SAMPLING = {"method": "pc", "predictor": "euler_maruyama", "corrector": "none"}
_VE_SAMPLING = {"method": "pc", "predictor": "reverse_diffusion", "corrector": "langevin"}
_HQ256_MODEL = dict(_NCSNPP, ch_mult=[1, 1, 2, 2, 2, 2, 2], num_res_blocks=2, progressive="output_skip",
                    progressive_input="input_skip")


def _config(base: dict, sde: str, *, training=None, sampling=None, data=None, model=None) -> dict:
    out = copy.deepcopy(base)
    out["training"].update(dict(training or {}, sde=sde))
    out["sampling"].update(sampling or {})
    out["data"].update(data or {})
    out["model"].update(copy.deepcopy(model or {}))
    return out


def _vp(sde: str, model: dict, **training) -> dict:
    return _config(_CIFAR10, sde, training=dict(_VP_TRAINING, **training), sampling=_VP_SAMPLING,
                   data={"centered": True}, model=dict(model, scale_by_sigma=False, ema_rate=0.9999))


def _ve_cifar(num_res_blocks: int = 4, **training) -> dict:
    return _config(_CIFAR10, "vesde", training=training, sampling=_VE_SAMPLING,
                   model=dict(_NCSNPP, num_res_blocks=num_res_blocks, scale_by_sigma=True, ema_rate=0.999))


def _ve_256(dataset: str, sigma_max: Optional[float], **data) -> dict:
    model = dict(_HQ256_MODEL, scale_by_sigma=True, ema_rate=0.999)
    if sigma_max is not None:
        model["sigma_max"] = sigma_max
    return _config(_LSUN, "vesde", sampling=_VE_SAMPLING, data=dict(data, dataset=dataset), model=model)


def _ve_1024(dataset: str, reduce_mean: bool) -> dict:
    model = dict(_NCSNPP, nf=16, ch_mult=[1, 2, 4, 8, 16, 32, 32, 32], num_res_blocks=1, progressive="output_skip",
                 progressive_input="input_skip", scale_by_sigma=True, ema_rate=0.9999)
    return _config(_HQ1024, "vesde", training={"reduce_mean": reduce_mean}, sampling=_VE_SAMPLING,
                   data={"dataset": dataset}, model=model)


_NCSNPP_VP = dict(_NCSNPP, embedding_type="positional")  # NCSN++ with the VP / sub-VP SDE

#: the reference configs of continuously trained models, by their path under configs/ (no .py)
REFERENCE_CONFIGS: Dict[str, dict] = {
    # DDPM++ cont. (VP, sub-VP), and the deep variants: 8 residual blocks, 950k iterations
    "vp/cifar10_ddpmpp_continuous": _vp("vpsde", _DDPMPP),
    "vp/cifar10_ddpmpp_deep_continuous": _vp("vpsde", dict(_DDPMPP, num_res_blocks=8), n_iters=950001),
    "subvp/cifar10_ddpmpp_continuous": _vp("subvpsde", _DDPMPP),
    "subvp/cifar10_ddpmpp_deep_continuous": _vp("subvpsde", dict(_DDPMPP, num_res_blocks=8), n_iters=950001),
    # NCSN++ cont. with the VP and sub-VP SDEs
    "vp/cifar10_ncsnpp_continuous": _vp("vpsde", _NCSNPP_VP),
    "vp/cifar10_ncsnpp_deep_continuous": _vp("vpsde", dict(_NCSNPP_VP, num_res_blocks=8), n_iters=950001),
    "subvp/cifar10_ncsnpp_continuous": _vp("subvpsde", _NCSNPP_VP),
    "subvp/cifar10_ncsnpp_deep_continuous": _vp("subvpsde", dict(_NCSNPP_VP, num_res_blocks=8), n_iters=950001),
    # DDPM cont. (Ho et al.'s architecture trained with the continuous VP / sub-VP objective)
    "vp/ddpm/cifar10_continuous": _vp("vpsde", _DDPM),
    "subvp/cifar10_ddpm_continuous": _vp("subvpsde", _DDPM),
    # NCSN++ cont. (VE)
    "ve/cifar10_ncsnpp_continuous": _ve_cifar(),
    "ve/cifar10_ncsnpp_deep_continuous": _ve_cifar(num_res_blocks=8, n_iters=950001),
    "ve/celebahq_256_ncsnpp_continuous": _ve_256("CelebAHQ", 348.0),
    "ve/ffhq_256_ncsnpp_continuous": _ve_256("FFHQ", 348.0),
    "ve/bedroom_ncsnpp_continuous": _ve_256("LSUN", None, category="bedroom"),
    "ve/church_ncsnpp_continuous": _ve_256("LSUN", 380.0, category="church_outdoor"),
    "ve/celebahq_ncsnpp_continuous": _ve_1024("CelebAHQ", reduce_mean=False),
    "ve/ffhq_ncsnpp_continuous": _ve_1024("FFHQ", reduce_mean=True),
}

_SDE_TYPES = {"vpsde": "vp", "subvpsde": "subvp", "vesde": "ve"}
#: reference data sets -> scoresde's readers (the large ones are image folders)
_DATASETS = {"CIFAR10": "cifar10", "CelebAHQ": "folder", "FFHQ": "folder", "LSUN": "folder"}
#: model keys that are not the network's: the SDE's (read into sde.*), the EMA rate (train.ema_decay)
_SDE_KEYS = ("sigma_min", "sigma_max", "num_scales", "beta_min", "beta_max")
_NOT_NET = ("name", "ema_rate") + _SDE_KEYS
#: reference model keys with one value only in scoresde's networks: accepted at that value
_FIXED_VALUES = {"normalization": "GroupNorm", "nonlinearity": "swish", "conditional": True,
                 "attention_type": "ddpm", "resamp_with_conv": True, "conv_size": 3}


def reference_config(name: str) -> dict:
    """The reference config ``name`` (e.g. ``vp/cifar10_ddpmpp_continuous``; ``configs/`` and ``.py``
    may be included), a copy. ValueError naming the closest names for an unknown one."""
    key = _normalize(name)
    if key not in REFERENCE_CONFIGS:
        close = difflib.get_close_matches(key, list(REFERENCE_CONFIGS), n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(f"--config {name}: not a known score_sde_pytorch config{hint}; known: "
                         f"{', '.join(REFERENCE_CONFIGS)}")
    return copy.deepcopy(REFERENCE_CONFIGS[key])


def _normalize(name: Any) -> str:
    text = str(name).strip().replace("\\", "/")
    if text.startswith("configs/"):
        text = text[len("configs/"):]
    return text[:-3] if text.endswith(".py") else text


