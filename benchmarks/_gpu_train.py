"""Training contenders of gpu_speed.py, the bare loop and scoresde's Trainer, and the Specs of its
train and overhead sections (a config at a batch size, both loops, per variant) and of its sizes
section (our reference DDPM net against diffusers' UNet2DModel at the DDPM CIFAR-10 size, bare loop)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import List, Optional

import torch
from torch import nn

from _bench import parameter_count
from _flops import train_step_flops
from _gpu_config import (BARE_KEYS, VARIANTS, base_overrides, config_path, override_items, train_config_keys,
                         training_data, variant_options)
from _gpu_runner import Runner, Spec, free, millions, model_tensors, optimizer_tensors
import scoresde.train as _train_module
from scoresde import dsm_loss
from scoresde import precision as _precision
from scoresde.config import from_dict, load_config
from scoresde.data import Dataset
from scoresde.run import build_score_model, build_sde
from scoresde.score import ScoreModel

#: diffusers' UNet2DModel with the DDPM CIFAR-10 architecture (google/ddpm-cifar10-32's config): 35.7M
DIFFUSERS_DDPM_CIFAR10 = dict(
    block_out_channels=[128, 256, 256, 256], layers_per_block=2,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1)
#: tiny stand-ins for --quick (8x8 grey images): the same code paths in seconds on a CPU
DIFFUSERS_TINY = dict(block_out_channels=[32, 32], layers_per_block=1, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                      up_block_types=["AttnUpBlock2D", "UpBlock2D"], attention_head_dim=None, norm_num_groups=8)
DDPM_TINY = {"model.nf": 32, "model.ch_mult": [1, 2], "model.num_res_blocks": 1, "model.attn_resolutions": [4]}


@contextlib.contextmanager
def trainer_data(dataset: Optional[Dataset]):
    """Trainers built inside get ``dataset`` instead of reading their config's (None: unchanged)."""
    if dataset is None:
        yield
        return
    original = _train_module.load_data
    _train_module.load_data = lambda cfg, split="train", n=None, generator=None: dataset
    try:
        yield
    finally:
        _train_module.load_data = original


class ChannelsLastInput(nn.Module):
    """``net(x, c)`` with 4-D x handed over in channels_last (the net's weights converted separately)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, c, *args, **kwargs):
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x, c, *args, **kwargs)


class BareTrain:
    """Bare training loop: batch from data on the device, dsm_loss (under bf16 autocast with amp),
    zero_grad, backward, Adam step (fused or foreach). channels_last converts the network and its
    inputs; compile wraps the ScoreModel in torch.compile, as the Trainer does."""

    def __init__(self, cfg, shape, pool: torch.Tensor, device: torch.device, options: dict):
        torch.manual_seed(cfg.train.seed)
        model = build_score_model(cfg, build_sde(cfg), shape).to(device)
        self.params = list(model.parameters())
        self.net = model.net
        if options["channels_last"] and len(shape) == 3:
            _precision.to_channels_last(model.net)
            model = ScoreModel(ChannelsLastInput(model.net), model.sde, parameterization=model.parameterization,
                               conditioning=model.conditioning)
        self.model, self.sde = model, model.sde
        self.train_model = torch.compile(model) if options["compile"] else model
        fused = options["fused_optimizer"]
        if fused is None:
            fused = device.type == "cuda"
        self.opt = torch.optim.Adam(self.params, lr=cfg.train.lr, **({"fused": True} if fused else {"foreach": True}))
        self.pool, self.batch, self.device, self.amp = pool, cfg.train.batch_size, device, options["amp"]
        self.eps, self.reduce = cfg.train.eps, cfg.train.reduce

    def run(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            x = self.pool[torch.randint(len(self.pool), (self.batch,), device=self.device)]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = dsm_loss(self.train_model, self.sde, x, eps=self.eps, reduce=self.reduce)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def tensors(self) -> List[torch.Tensor]:
        return model_tensors(self.net) + optimizer_tensors(self.opt)


class TrainerTrain:
    """scoresde's Trainer advanced by ``steps`` per call (fit() resumes from its in-memory step).
    Checkpoint writes are switched off (``save`` a no-op): they are I/O, see train_throughput.py."""

    def __init__(self, cfg, workdir: str, dataset: Optional[Dataset]):
        with trainer_data(dataset):
            self.trainer = _train_module.Trainer(cfg, workdir, progress=False)
        self.trainer.save = lambda: None

    def run(self, steps: int) -> None:
        self.trainer.cfg.train.steps = self.trainer.step + steps
        self.trainer.fit()

    def tensors(self) -> List[torch.Tensor]:
        t = self.trainer
        return model_tensors(t.net) + optimizer_tensors(t.opt) + model_tensors(t.ema, grads=False)


def count_train_flops(cfg, shape, pool: torch.Tensor, device: torch.device) -> tuple:
    """(FLOPs of one fp32 forward + backward of dsm_loss at the config's batch size, parameters)."""
    torch.manual_seed(cfg.train.seed)
    model = build_score_model(cfg, build_sde(cfg), shape).to(device).train()
    x = pool[: cfg.train.batch_size]
    if len(x) < cfg.train.batch_size:
        x = pool[torch.randint(len(pool), (cfg.train.batch_size,), device=device)]
    flops = train_step_flops(lambda: dsm_loss(model, model.sde, x, eps=cfg.train.eps, reduce=cfg.train.reduce),
                             model.parameters())
    n = parameter_count(model)
    del model
    free(device)
    return flops, n


def training_specs(runner: Runner, args, section: str, config: str, batch: int, variants: List[str],
                   workdir: str, loops=("bare", "trainer")) -> List[Spec]:
    """Bare and Trainer contenders of ``config`` at ``batch`` for each variant."""
    device = runner.device
    path = config_path(config)
    cfg0 = load_config(path, base_overrides(args, batch))
    dataset, synthetic = training_data(cfg0, batch, cfg0.train.seed)
    shape = tuple(dataset.shape)
    pool = dataset.data.to(device)
    flops, n_params = count_train_flops(cfg0, shape, pool, device)
    name = os.path.splitext(os.path.basename(path))[0]
    head = f"{section} {name} ({millions(n_params)}), batch {batch}"
    info = dict(config=name, net=cfg0.model["name"], parameters=n_params, batch_size=batch, data_shape=list(shape),
                synthetic_data=synthetic)
    print(f"{head}: {flops / 1e9:.4g} GFLOP per step (forward + backward), "
          f"{'synthetic data' if synthetic else 'data ' + cfg0.data.name}", flush=True)
    known = train_config_keys()
    specs = []
    for v in variants:
        overrides = VARIANTS[v]
        options = variant_options(overrides)
        compiled = options["compile"]
        if "bare" in loops:
            extra = sorted(set(overrides) - set(BARE_KEYS))
            if extra:
                runner.skip(f"{head}: bare, {v}", f"the bare loop does not implement {', '.join(extra)} (trainer only)")
            else:
                cfg = load_config(path, base_overrides(args, batch))
                specs.append(Spec(section, f"{head}: bare, {v}", "bare", v, "steps/s", args.steps, args.warmup,
                                  args.steps, lambda cfg=cfg, o=options: BareTrain(cfg, shape, pool, device, o),
                                  compiled, flops, dict(info)))
        if "trainer" in loops:
            missing = sorted(set(overrides) - known)
            if missing:
                runner.skip(f"{head}: trainer, {v}", f"TrainConfig has no {', '.join(missing)} yet")
                continue
            cfg = load_config(path, base_overrides(args, batch) + override_items(overrides))
            wd = tempfile.mkdtemp(prefix=f"trainer-{v.replace('+', '-')}-", dir=workdir)
            specs.append(Spec(section, f"{head}: trainer, {v}", "trainer", v, "steps/s", args.steps, args.warmup,
                              args.steps, lambda cfg=cfg, wd=wd: TrainerTrain(cfg, wd, dataset if synthetic else None),
                              compiled, flops, dict(info)))
    return specs


def size_specs(runner: Runner, args, variants: List[str]) -> List[Spec]:
    """Bare-loop contenders for our reference DDPM net and diffusers' UNet2DModel at the DDPM size."""
    device = runner.device
    path = config_path("cifar10_ddpm_continuous_vp")
    extra = [f"{k}={v}" for k, v in DDPM_TINY.items()] if args.quick else []
    batch = args.batch_size
    ours = load_config(path, base_overrides(args, batch) + extra)
    shape = (1, 8, 8) if args.quick else (3, 32, 32)
    nets = {"ours: ddpm ref. net (cifar10_ddpm_continuous_vp" + (", tiny)" if args.quick else ")"): ours}
    try:
        from scoresde.nets.diffusers_unet import import_diffusers
        diffusers = import_diffusers()
        raw = ours.to_dict()
        raw["model"] = dict(name="diffusers_unet2d", parameterization="score", conditioning="time_index",
                            prediction_type="epsilon",
                            unet=dict(DIFFUSERS_TINY if args.quick else DIFFUSERS_DDPM_CIFAR10))
        nets[f"diffusers {diffusers.__version__} UNet2DModel (DDPM CIFAR-10" + (", tiny)" if args.quick else ")")] = \
            from_dict(raw, source="diffusers UNet2DModel")
    except ImportError:
        runner.skip("sizes: diffusers UNet2DModel", "diffusers is not installed (pip install -e '.[bench]')")
    g = torch.Generator(device=device).manual_seed(args.seed)
    pool = torch.rand((max(4 * batch, 256),) + shape, generator=g, device=device) * 2 - 1
    specs = []
    for label, cfg in nets.items():
        flops, n_params = count_train_flops(cfg, shape, pool, device)
        head = f"sizes {label}, {millions(n_params)}, batch {batch}"
        print(f"{head}: {flops / 1e9:.4g} GFLOP per step (forward + backward)", flush=True)
        for v in variants:
            options = variant_options(VARIANTS[v])
            extra_keys = sorted(set(VARIANTS[v]) - set(BARE_KEYS))
            if extra_keys:
                runner.skip(f"{head}: bare, {v}", f"the bare loop does not implement {', '.join(extra_keys)}")
                continue
            specs.append(Spec("sizes", f"{head}: bare, {v}", "bare", v, "steps/s", args.steps, args.warmup,
                              args.steps, lambda cfg=cfg, o=options: BareTrain(cfg, shape, pool, device, o),
                              options["compile"], flops,
                              dict(config=label, net=cfg.model["name"], parameters=n_params, batch_size=batch,
                                   data_shape=list(shape))))
    return specs

