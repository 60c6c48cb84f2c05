"""Import a diffusers ``UNet2DModel`` with its scheduler config as a scoresde run.

``from_diffusers(folder, workdir=None)`` reads either a pipeline folder (what
``DDPMPipeline.save_pretrained`` / ``ScoreSdeVePipeline.save_pretrained`` write: ``unet/config.json``,
``unet/diffusion_pytorch_model.safetensors``, ``scheduler/scheduler_config.json``) or a model folder
(``config.json`` and the weights) with the scheduler config next to it (``scheduler_config.json`` in
it, or ``../scheduler/scheduler_config.json``). Weights are read from safetensors only, never from a
pickle. The scheduler config says what the model is:

* ``DDPMScheduler`` / ``DDIMScheduler`` with ``beta_schedule="linear"``: the discrete chain of
  N = ``num_train_timesteps`` betas ``linspace(beta_start, beta_end, N)``, which is exactly
  ``VPSDE(beta_min=beta_start N, beta_max=beta_end N, N)``'s ``discrete_betas``. The UNet sees the
  chain index c = t (N - 1) (``conditioning="time_index"``; index i is t_i = i / (N - 1)) and its
  output (``prediction_type`` "epsilon", "sample" or "v_prediction") becomes the score with the
  chain's own alphā (see ``scoresde.nets.diffusers_unet``). Other beta schedules are refused.
* ``ScoreSdeVeScheduler``: ``VESDE(sigma_min, sigma_max, N = num_train_timesteps)``; the pipeline
  calls the UNet with sigma(t) = sigma_min (sigma_max / sigma_min)^t and uses its output as the score
  (``conditioning="sigma"``, the output unchanged).

Sampler settings of the scheduler (``clip_sample``, ``thresholding``, ``variance_type``,
``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``, ``snr``, ``sampling_eps``, ...) are not
properties of the model and are not imported; pick them with the sampler. diffusers' DDIM with
eta 0 and clip_sample False is ``ddim(score_fn, sde, x_T, timesteps=scheduler.timesteps,
eps=1e-9)`` (set_alpha_to_one=True; with False, append index 0 and pass ``denoise=False``), and
DDPMScheduler is ``ancestral(..., timesteps=scheduler.timesteps, variance="posterior")``
(fixed_small; "beta" for fixed_large). A tiny ``eps`` lets the UNet see index 0 as timestep ~0:
the grid evaluates the score at max(t_i, eps), and the default 1e-3 is timestep 0.999 there.

The run's data are "an image folder" of the UNet's size (``data.name: folder``, ``data.root`` unset,
``centered`` for the DDPM family's [-1, 1], not for ScoreSdeVe's [0, 1]): sampling needs nothing
more; likelihood and compare read ``data.root`` once it is set in the run's config.yaml.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, Optional, Tuple

from .. import io
from ..config import Config, DataConfig, SampleConfig, SDEConfig, TrainConfig, from_dict
from ..nets.diffusers_unet import import_diffusers, plain, unet_init_keys
from ..run import LoadedRun, build_score_model, build_sde, load
from .rundir import _check_workdir, _write_run

VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
VE_SCHEDULERS = ("ScoreSdeVeScheduler",)
SCHEDULERS = VP_SCHEDULERS + VE_SCHEDULERS
WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MODEL_NAME = "diffusers_unet2d"


def from_diffusers(folder: str, workdir: Optional[str] = None) -> LoadedRun:
    """The diffusers model in ``folder`` as what ``scoresde.load`` returns (EMA = the weights, eval
    mode, on the CPU, step 0). With ``workdir``, also a run directory there (``config.yaml`` and
    ``checkpoints/ckpt_00000000/``, written atomically) that ``scoresde.load(workdir)`` and every
    command read; the run is then loaded back from it. Any problem is one ``ValueError`` line."""
    if not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder (a diffusers pipeline or UNet2DModel folder)")
    folder = os.fspath(folder)
    if workdir is not None:
        _check_workdir(workdir)
    unet_dir, scheduler_path = _locate(folder)
    unet_config = _read_json(os.path.join(unet_dir, "config.json"))
    cls = unet_config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"{unet_dir}/config.json: a {cls}; only diffusers' UNet2DModel is supported")
    sde_cfg, model_extra, centered = _map_scheduler(scheduler_path, _read_json(scheduler_path))
    weights = _check_weights(unet_dir)

    unet = _load_unet(unet_dir)
    config = {k: plain(unet.config[k]) for k in unet_init_keys() if k in unet.config}
    channels, size = _data_shape(unet_dir, config)
    data_shape, data_range = (channels, size, size), ((-1.0, 1.0) if centered else (0.0, 1.0))
    model = dict(name=MODEL_NAME, parameterization="score",
                 conditioning="sigma" if sde_cfg.type == "ve" else "time_index", **model_extra, unet=config)
    # the data set is unknown: image folders of this size (its data.root, which likelihood and compare
    # need, is set in the run's config.yaml)
    # the samplers the pipelines use, ending where they end: DDIM (50 steps) down to index ~0 (a
    # tiny eps, since the grid evaluates the score at max(t, eps) and this network is defined at
    # index 0, t = 0), and ScoreSdeVe's predictor-corrector down to its sampling_eps 1e-5
    sample = (SampleConfig(sampler="predictor_corrector", steps=sde_cfg.N, eps=1e-5) if sde_cfg.type == "ve"
              else SampleConfig(sampler="ddim", steps=50, eps=1e-8))
    raw = Config(sde=sde_cfg, model=model, data=DataConfig(name="folder", image_size=size, centered=centered),
                 train=TrainConfig(), sample=sample).to_dict()
    cfg = from_dict(raw, source=f"the config imported from {folder}", data_root=False)
    sde = build_sde(cfg)
    score = build_score_model(cfg, sde, data_shape)  # the config alone rebuilds the network, as load() does
    score.net.unet.load_state_dict(unet.state_dict())
    del unet
    score.eval()
    if workdir is None:
        return LoadedRun(net=score.net, sde=sde, score_fn=score, config=cfg, step=0, data_shape=data_shape,
                         data_range=data_range, path=os.path.abspath(folder))
    provenance = {"format": "diffusers", "folder": os.path.abspath(folder), "weights": os.path.relpath(weights, folder),
                  "scheduler": _read_json(scheduler_path).get("_class_name"),
                  "diffusers_version": import_diffusers().__version__}
    meta = {"config": cfg.to_dict(), "data_shape": list(data_shape), "data_range": list(data_range),
            "imported_from": provenance}
    _write_run(workdir, cfg, 0, {"ema": score.net.state_dict()}, meta, io)
    return load(workdir)


# ---- the folder --------------------------------------------------------------------------------

def _locate(folder: str) -> Tuple[str, str]:
    """(the UNet's folder, its scheduler config)."""
    pipeline_unet = os.path.join(folder, "unet")
    if os.path.isfile(os.path.join(pipeline_unet, "config.json")):
        unet_dir = pipeline_unet
        candidates = [os.path.join(folder, "scheduler", "scheduler_config.json")]
    elif os.path.isfile(os.path.join(folder, "config.json")):
        unet_dir = folder
        candidates = [os.path.join(folder, "scheduler_config.json"),
                      os.path.join(folder, "scheduler", "scheduler_config.json"),
                      os.path.join(os.path.dirname(os.path.abspath(folder)), "scheduler", "scheduler_config.json")]
    else:
        raise ValueError(f"{folder}: no UNet2DModel config (expected unet/config.json in a pipeline folder, "
                         f"or config.json in a model folder)")
    for path in candidates:
        if os.path.isfile(path):
            return unet_dir, path
    raise ValueError(f"{folder}: no scheduler config (expected "
                     f"{' or '.join(os.path.relpath(p, folder) for p in candidates)})")


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_weights(unet_dir: str) -> str:
    """The safetensors weights (or their shard index); a pickle alone is refused."""
    for name in (WEIGHTS, WEIGHTS + ".index.json"):
        if os.path.isfile(os.path.join(unet_dir, name)):
            return os.path.join(unet_dir, name)
    pickles = sorted(os.path.basename(p) for p in glob.glob(os.path.join(unet_dir, "*"))
                     if p.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(f"{unet_dir}: its weights are a pickle ({', '.join(pickles)}), which scoresde never loads; "
                         f"weights must be safetensors ({WEIGHTS})")
    raise ValueError(f"{unet_dir}: no weights (expected {WEIGHTS})")


def _load_unet(unet_dir: str):
    """diffusers' UNet2DModel from the folder, safetensors only, every weight accounted for."""
    diffusers = import_diffusers()
    try:
        unet, info = diffusers.UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, low_cpu_mem_usage=False,
                                                           output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise ValueError(f"{unet_dir}: diffusers could not load the UNet2DModel "
                         f"({' '.join(str(e).split())[:300]})") from None
    problems = [f"{kind.replace('_', ' ')}: {', '.join(str(k) for k in info.get(kind, [])[:3])}"
                for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)]
    if problems:
        raise ValueError(f"{unet_dir}: the weights do not fit the config ({'; '.join(problems)})")
    return unet


def _data_shape(unet_dir: str, config: Dict[str, Any]) -> Tuple[int, int]:
    """(channels, image size) of the data the UNet models: square images, unconditional."""
    size = config.get("sample_size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"{unet_dir}/config.json: sample_size must give square images, got {config.get('sample_size')!r}")
    if config.get("out_channels") != config.get("in_channels"):
        raise ValueError(f"{unet_dir}/config.json: out_channels {config.get('out_channels')} differs from in_channels "
                         f"{config.get('in_channels')} (a learned-variance or latent model is not a score network)")
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        raise ValueError(f"{unet_dir}/config.json: a class-conditional UNet2DModel (num_class_embeds "
                         f"{config.get('num_class_embeds')}, class_embed_type {config.get('class_embed_type')!r}) "
                         f"is not supported")
    return int(config["in_channels"]), size


# ---- the scheduler -----------------------------------------------------------------------------

def _map_scheduler(path: str, sched: Dict[str, Any]) -> Tuple[SDEConfig, Dict[str, Any], bool]:
    """(the SDE config, the network's schedule keywords, whether the data are on [-1, 1])."""
    cls = sched.get("_class_name")
    if cls not in SCHEDULERS:
        raise ValueError(f"{path}: scheduler {cls!r} is not supported (supported: {', '.join(SCHEDULERS)})")
    if cls in VE_SCHEDULERS:
        N = _get(path, sched, "num_train_timesteps", 2000, int)
        sigma_min = _get(path, sched, "sigma_min", 0.01, float)
        sigma_max = _get(path, sched, "sigma_max", 1348.0, float)
        if not (N >= 2 and 0 < sigma_min < sigma_max):
            raise ValueError(f"{path}: needs num_train_timesteps >= 2 and 0 < sigma_min < sigma_max, "
                             f"got {N}, {sigma_min}, {sigma_max}")
        # the NCSN++ ports model data on [0, 1]: the pipeline clamps its samples to (0, 1)
        return SDEConfig(type="ve", sigma_min=sigma_min, sigma_max=sigma_max, N=N), {"prediction_type": "score"}, False
    schedule = sched.get("beta_schedule", "linear")
    if sched.get("trained_betas") is not None:
        raise ValueError(f"{path}: trained_betas (an explicit beta list) is not supported; only beta_schedule 'linear'")
    if schedule != "linear":
        raise ValueError(f"{path}: beta_schedule {schedule!r} is not supported; only 'linear' (the VP SDE's "
                         f"discrete betas) is")
    if sched.get("rescale_betas_zero_snr"):
        raise ValueError(f"{path}: rescale_betas_zero_snr changes the linear betas; it is not supported")
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"{path}: prediction_type {prediction!r} is not supported "
                         f"(supported: epsilon, sample, v_prediction)")
    if str(sched.get("variance_type", "")).startswith("learned"):
        raise ValueError(f"{path}: variance_type {sched['variance_type']!r}: a learned-variance model is not supported")
    N = _get(path, sched, "num_train_timesteps", 1000, int)
    beta_start = _get(path, sched, "beta_start", 0.0001, float)
    beta_end = _get(path, sched, "beta_end", 0.02, float)
    if not (N >= 2 and 0 < beta_start < beta_end < 1):
        raise ValueError(f"{path}: needs num_train_timesteps >= 2 and 0 < beta_start < beta_end < 1, "
                         f"got {N}, {beta_start}, {beta_end}")
    sde = SDEConfig(type="vp", beta_min=beta_start * N, beta_max=beta_end * N, N=N)
    extra = {"prediction_type": prediction, "beta_start": beta_start, "beta_end": beta_end, "num_train_timesteps": N}
    return sde, extra, True


def _get(path: str, sched: Dict[str, Any], key: str, default, kind):
    value = sched.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ValueError(f"{path}: {key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


__all__ = ["from_diffusers", "SCHEDULERS"]
