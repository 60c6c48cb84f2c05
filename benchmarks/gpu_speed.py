"""GPU speed: training steps/s and sampling images/s, with the FLOP rate achieved as a share of the peak.

Sections (``--sections``, default all four):

  train     the config's network (default configs/cifar10_ddpmpp_vp.yaml, DDPM++ cont., 58.7M
            parameters) at --batch-size (128), trained (a) by a bare loop: random batch from data
            already on the device, scoresde.dsm_loss, zero_grad, backward, Adam step; and (b) by
            scoresde's Trainer (Trainer.fit over --steps steps, as train_throughput.py runs it, with
            checkpoint writes switched off), in variants given as config overrides:
                fp32            {}
                bf16            {train.amp: true}
                bf16+cl+fused   {train.amp: true, train.channels_last: true, train.fused_optimizer: true}
                bf16+compile    {train.amp: true, train.compile: true}
            (opt-in with --variants: bf16+cl+fused+compile, bf16+ckpt (train.checkpoint_activations),
            bf16+accum2 (train.grad_accum 2)). A Trainer variant whose key TrainConfig does not have is
            skipped with a note; the bare loop implements amp, channels_last, fused_optimizer and
            compile itself and skips the other keys.
  sampling  DDIM and DPM-Solver++(2M) at --nfe (20) score evaluations on a batch of --sample-batch
            (512 on CUDA) images: fp32, bf16 (scoresde.precision.precision_score), bf16 + channels_last,
            bf16 + compile (scoresde.precision.compile_score, skipped with a note where it is missing).
  sizes     the DDPM CIFAR-10 size (~35.7M): diffusers' UNet2DModel (block_out_channels
            (128, 256, 256, 256), layers_per_block 2, attention at 16x16) and our reference DDPM net
            (configs/cifar10_ddpm_continuous_vp.yaml), bare loop, --size-variants (bf16, bf16+compile).
            Without diffusers its rows are skipped with one line.
  overhead  Trainer vs bare loop on the digits U-Net (configs/digits_vp.yaml) at batch 128, fp32.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one real forward + backward of the
loss (the backward counted as it runs, not as 2x the forward: a first convolution needs no input
gradient, elementwise work counts nothing), for sampling on one forward times the NFE. They are the
network's matmul / convolution / attention FLOPs, the same for every variant; optimizer, EMA and
elementwise ops are not counted. TFLOP/s = FLOPs per step x steps/s; share = TFLOP/s / --peak-tflops
(default 790, the H200's dense bf16 peak; fp32 rows are held against the same number).

Timing: contenders of a section are timed alternately (order rotating, _bench's rule), each call
bracketed by torch.cuda.synchronize; the first --warmup steps (one sampling run) of each are untimed
and reported separately as "warm-up s" (for compiled variants: the compilation). Peak memory (CUDA):
what the contender would need alone = its persistent tensors (weights, gradients, optimizer state,
EMA) + torch.cuda.max_memory_allocated during its first timed run above the memory allocated just
before it (all contenders of a section live side by side). On CPU: n/a, and the process's peak RSS
is reported once. --budget-s trims repeats, compiled variants and whole sections to finish in time.

    python benchmarks/gpu_speed.py --device cuda
    python benchmarks/gpu_speed.py --quick --threads 1          # CPU smoke run, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import inspect
import math
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import _bench
from _bench import ROOT, parameter_count, sync
import scoresde.train as _train_module
from scoresde import dsm_loss
from scoresde import precision as _precision
from scoresde.config import from_dict, load_config
from scoresde.config.schema import NEEDS_ROOT, TrainConfig
from scoresde.data import Dataset, scale
from scoresde.run import build_score_model, build_sde, load_data
from scoresde.sampling import ddim, dpm_solver
from scoresde.score import ScoreModel

# ---- what is measured --------------------------------------------------------------------------

#: variant name -> config overrides (the Trainer takes them as --set items; the bare loop reads them)
VARIANTS: Dict[str, Dict[str, object]] = {
    "fp32": {},
    "bf16": {"train.amp": True},
    "bf16+cl+fused": {"train.amp": True, "train.channels_last": True, "train.fused_optimizer": True},
    "bf16+compile": {"train.amp": True, "train.compile": True},
    "bf16+cl+fused+compile": {"train.amp": True, "train.channels_last": True, "train.fused_optimizer": True,
                              "train.compile": True},
    "bf16+ckpt": {"train.amp": True, "train.checkpoint_activations": True},
    "bf16+accum2": {"train.amp": True, "train.grad_accum": 2},
}
DEFAULT_VARIANTS = ("fp32", "bf16", "bf16+cl+fused", "bf16+compile")
#: the keys the bare loop implements itself
BARE_KEYS = ("train.amp", "train.channels_last", "train.fused_optimizer", "train.compile")
#: variant keys that mean nothing for sampling (the others map to precision / channels_last / compile)
SAMPLING_IGNORES = ("train.fused_optimizer",)
SECTIONS = ("train", "sampling", "sizes", "overhead")
#: seconds kept back for each section still to come when --budget-s is set (their cheapest rows)
SECTION_RESERVE = {"train": 45.0, "sampling": 30.0, "sizes": 30.0, "overhead": 15.0}
FIRST_COMPILE_GUESS_S = 90.0

DEFAULTS = dict(config="cifar10_ddpmpp_vp", batch_size=128, steps=20, warmup=3, repeats=3, nfe=20,
                variants=",".join(DEFAULT_VARIANTS), size_variants="bf16,bf16+compile", sections=",".join(SECTIONS))
QUICK = dict(config="digits_vp", batch_size=8, steps=2, warmup=1, repeats=2, nfe=4, sample_batch=8,
             variants="fp32,bf16", size_variants="bf16", sections="train,sampling,sizes")

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
#: shapes of the data sets read from a folder, for synthetic stand-ins when the folder is not there
SYNTHETIC_SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}


def train_config_keys() -> set:
    return {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}


def variant_options(overrides: Dict[str, object]) -> Dict[str, object]:
    """What the bare loop does for a variant: amp, channels_last, fused_optimizer (None: auto), compile."""
    return {"amp": bool(overrides.get("train.amp", False)),
            "channels_last": bool(overrides.get("train.channels_last", False)),
            "fused_optimizer": overrides.get("train.fused_optimizer"),
            "compile": bool(overrides.get("train.compile", False))}


def override_items(overrides: Dict[str, object]) -> List[str]:
    """Overrides as --set items (key=value, YAML spelling)."""
    def text(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return "null" if v is None else str(v)
    return [f"{k}={text(v)}" for k, v in overrides.items()]


# ---- FLOP counting -------------------------------------------------------------------------------

def train_step_flops(loss_fn: Callable[[], torch.Tensor], params=()) -> int:
    """FLOPs of one forward + backward: ``loss_fn()`` and its ``backward()`` run under
    FlopCounterMode (matmuls, convolutions, attention; elementwise ops count zero). The gradients
    it leaves on ``params`` are cleared."""
    with FlopCounterMode(display=False) as counter:
        loss = loss_fn()
        loss.backward()
    for p in params:
        p.grad = None
    return int(counter.get_total_flops())


def forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` (a forward pass) under FlopCounterMode, without autograd."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def linear_flop_check(batch: int = 16, d_in: int = 32, hidden: int = 64, d_out: int = 8) -> dict:
    """The counter against a count by hand on Linear(d_in, hidden) -> ReLU -> Linear(hidden, d_out),
    loss = mean of squares, input without grad: forward 2B(in h + h out); backward: the second layer
    its input and weight gradients (2 x 2B h out), the first only its weight gradient (2B in h), as
    the input needs none. By hand 4B in h + 6B h out (3x the forward would give 6B in h + 6B h out)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
    x = torch.randn(batch, d_in)
    counted = train_step_flops(lambda: net(x).square().mean(), net.parameters())
    by_hand = 4 * batch * d_in * hidden + 6 * batch * hidden * d_out
    return {"net": f"Linear({d_in},{hidden})-ReLU-Linear({hidden},{d_out})", "batch": batch, "d_in": d_in,
            "hidden": hidden, "d_out": d_out, "counted": counted, "by_hand": by_hand, "equal": counted == by_hand}


# ---- budget --------------------------------------------------------------------------------------

class Budget:
    """A wall-clock allowance for the whole run (None: unlimited)."""

    def __init__(self, seconds: Optional[float]):
        self.deadline = None if seconds is None else time.perf_counter() + seconds
        self.compile_estimate = FIRST_COMPILE_GUESS_S  # updated by every compile warm-up seen

    def left(self, reserve: float = 0.0) -> float:
        return math.inf if self.deadline is None else self.deadline - time.perf_counter() - reserve


# ---- data ----------------------------------------------------------------------------------------

def training_data(cfg, batch: int, seed: int):
    """(Dataset, synthetic?): the config's data set, or random pixels of its shape when it is read
    from a folder that is not there (CIFAR-10 on a benchmark machine): a step's cost does not depend
    on the pixel values."""
    d = cfg.data
    if d.name in NEEDS_ROOT and (d.root is None or not os.path.isdir(d.root)):
        if d.name not in SYNTHETIC_SHAPES:
            _bench.fail(f"data.name {d.name!r} needs data.root (an existing folder), got {d.root!r}")
        c, h, w = SYNTHETIC_SHAPES[d.name]
        if d.image_size:
            h = w = d.image_size
        g = torch.Generator().manual_seed(seed)
        n = max(4 * batch, 1024)
        pixels = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g)
        return Dataset(data=scale(pixels, (-1.0, 1.0)), pixels=pixels, shape=(c, h, w), is_image=True,
                       data_range=(-1.0, 1.0), name=d.name, labels=labels), True
    return load_data(cfg, "train", n=d.n_train, generator=torch.Generator().manual_seed(seed)), False


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


# ---- contenders ----------------------------------------------------------------------------------

class ChannelsLastInput(nn.Module):
    """``net(x, c)`` with 4-D x handed over in channels_last (the net's weights converted separately)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, c, *args, **kwargs):
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x, c, *args, **kwargs)


def model_tensors(module: nn.Module, grads: bool = True) -> List[torch.Tensor]:
    out = list(module.parameters()) + list(module.buffers())
    if grads:
        out += [p.grad for p in module.parameters() if p.grad is not None]
    return out


def optimizer_tensors(opt: torch.optim.Optimizer) -> List[torch.Tensor]:
    return [v for state in opt.state.values() for v in state.values() if torch.is_tensor(v)]


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen, total = set(), 0
    for t in tensors:
        if not torch.is_tensor(t):
            continue
        s = t.untyped_storage()
        key = (s.device, s.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += s.nbytes()
    return total


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


class SampleRun:
    """One sampling run of ``sampler(score_fn, x_T)`` under inference_mode."""

    def __init__(self, sampler: Callable, score_fn: Callable, x_T: torch.Tensor, net: nn.Module):
        self.sampler, self.score_fn, self.x_T, self.net = sampler, score_fn, x_T, net

    def run(self, _units: int = 1) -> None:
        with torch.inference_mode():
            self.sampler(self.score_fn, self.x_T)

    def tensors(self) -> List[torch.Tensor]:
        return model_tensors(self.net, grads=False)


@dataclass
class Spec:
    """A contender before it is built: what it is, how to build it, how much work one timed call does."""
    section: str
    what: str
    loop: str
    variant: str
    unit: str                      # "steps/s" or "images/s"
    per_call: int                  # steps or images per timed call
    warm_units: int                # steps (or runs) of the untimed warm-up
    timed_units: int               # what run() is given per timed call
    build: Callable[[], object]
    compiled: bool = False
    flops_per_unit: Optional[float] = None
    info: dict = field(default_factory=dict)
    compiles: Optional[bool] = None  # whether its warm-up pays a compilation (None: = compiled)

    def __post_init__(self):
        if self.compiles is None:
            self.compiles = self.compiled


# ---- one section ---------------------------------------------------------------------------------

class Runner:
    def __init__(self, args, device: torch.device, budget: Budget):
        self.args, self.device, self.budget = args, device, budget
        self.rows: List[dict] = []
        self.skipped: List[dict] = []
        self.notes: List[str] = []

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})
        print(f"  skipped: {what}: {reason}", flush=True)

    def measure(self, specs: List[Spec], reserve: float) -> None:
        """Build and warm up each contender, then time them in interleaved rounds."""
        device, budget, args = self.device, self.budget, self.args
        built, no_time = [], set()  # no_time: compiled variants skipped for time (the rest of them too)
        for spec in specs:
            if spec.compiled and (spec.section, spec.variant) in no_time:
                self.skip(spec.what, "--budget-s: its variant's compilation was skipped")
                continue
            if spec.compiles and budget.left(reserve) < budget.compile_estimate + 10:
                self.skip(spec.what, f"--budget-s: {budget.left(reserve):.0f} s left, a compile took "
                                     f"~{budget.compile_estimate:.0f} s")
                no_time.add((spec.section, spec.variant))
                continue
            if budget.left(reserve) < 5:
                self.skip(spec.what, "--budget-s exhausted")
                continue
            try:
                contender = spec.build()
                t_warm = _bench.timed(lambda: contender.run(spec.warm_units), device)
            except Exception as e:  # a variant the installed code cannot build or run is a note, not a crash
                self.skip(spec.what, f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
                contender = None
                free(device)
                continue
            if spec.compiles:
                budget.compile_estimate = t_warm
            print(f"  {spec.what}: warm-up {t_warm:.1f} s", flush=True)
            built.append((spec, contender, t_warm))
        if not built:
            return
        times: Dict[int, List[float]] = {i: [] for i in range(len(built))}
        peaks: Dict[int, Optional[int]] = {i: None for i in range(len(built))}
        rounds = 0
        for r in range(args.repeats):
            t_round = time.perf_counter()
            k = r % len(built)
            for i in list(range(k, len(built))) + list(range(k)):
                spec, contender, _ = built[i]
                if device.type == "cuda" and r == 0:
                    sync(device)
                    before = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    times[i].append(_bench.timed(lambda: contender.run(spec.timed_units), device))
                    peaks[i] = storage_bytes(contender.tensors()) + torch.cuda.max_memory_allocated(device) - before
                else:
                    times[i].append(_bench.timed(lambda: contender.run(spec.timed_units), device))
            rounds += 1
            t_round = time.perf_counter() - t_round
            print(f"  round {r + 1}: " + ", ".join(f"{built[i][0].what.split(': ')[-1]} "
                                                   f"{built[i][0].per_call / times[i][-1]:.3g}" for i in times),
                  flush=True)
            if r + 1 < args.repeats and budget.left(reserve) < t_round:
                self.notes.append(f"{specs[0].section}: {rounds} of {args.repeats} rounds (--budget-s)")
                print(f"  --budget-s: stopping after {rounds} round(s)", flush=True)
                break
        for i, (spec, contender, t_warm) in enumerate(built):
            med = _bench.median(times[i])
            rate = spec.per_call / med
            tflops = None if spec.flops_per_unit is None else rate * spec.flops_per_unit / 1e12
            self.rows.append(dict(
                section=spec.section, what=spec.what, loop=spec.loop, variant=spec.variant, unit=spec.unit,
                rate=rate, rates=[spec.per_call / t for t in times[i]], seconds=times[i], per_call=spec.per_call,
                rounds=rounds, warmup_seconds=t_warm, warmup_units=spec.warm_units, compiled=spec.compiled,
                flops_per_unit=spec.flops_per_unit, tflops=tflops,
                share_of_peak=None if tflops is None else tflops / args.peak_tflops,
                peak_memory_bytes=peaks[i], **spec.info))
        del built, contender
        free(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


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


# ---- sections ------------------------------------------------------------------------------------

def config_path(name: str) -> str:
    if os.path.isfile(name):
        return name
    path = os.path.join(ROOT, "configs", name + ".yaml")
    if not os.path.isfile(path):
        _bench.fail(f"--config {name!r}: neither a file nor a config in configs/")
    return path


def base_overrides(args, batch: int) -> List[str]:
    return [f"train.device={args.device}", f"train.batch_size={batch}", "train.log_every=100",
            f"train.checkpoint_every={10 ** 9}", "train.keep_checkpoints=1", "train.snapshot_every=0",
            "train.tensorboard=false"]


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


def sampling_options(overrides: Dict[str, object]) -> Optional[dict]:
    """(precision, channels_last, compile) for a variant, None for a training-only one."""
    keys = set(overrides) - set(SAMPLING_IGNORES)
    if keys - {"train.amp", "train.channels_last", "train.compile"}:
        return None
    o = variant_options(overrides)
    return {"precision": "bf16" if o["amp"] else "fp32", "channels_last": o["channels_last"], "compile": o["compile"]}


def sampling_label(o: dict) -> str:
    return o["precision"] + (" + channels_last" if o["channels_last"] else "") + (" + compile" if o["compile"] else "")


def compiled_score(model: ScoreModel, o: dict):
    """scoresde.precision.compile_score on the variant's score function (None if there is none)."""
    compile_score = getattr(_precision, "compile_score", None)
    if compile_score is None:
        return None
    params = inspect.signature(compile_score).parameters
    if "precision" in params and (not o["channels_last"] or "channels_last" in params):
        kwargs = {"precision": o["precision"]}
        if o["channels_last"]:
            kwargs["channels_last"] = True
        return compile_score(model, **kwargs)
    return compile_score(_precision.precision_score(model, o["precision"], channels_last=o["channels_last"]))


def sampling_specs(runner: Runner, args, variants: List[str]) -> List[Spec]:
    device = runner.device
    cfg = load_config(config_path(args.config), base_overrides(args, args.batch_size))
    dataset, _ = training_data(cfg, 8, cfg.train.seed)
    shape = tuple(dataset.shape)
    sde = build_sde(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_score_model(cfg, sde, shape).to(device).eval()
    B, nfe = args.sample_batch, args.nfe
    x_T = sde.prior_sampling((B,) + shape, generator=torch.Generator(device=device).manual_seed(args.seed),
                             device=device)
    samplers = {
        "DDIM": lambda fn, x: ddim(fn, sde, x, steps=nfe, denoise=False),
        "DPM-Solver++(2M)": lambda fn, x: dpm_solver(fn, sde, x, steps=nfe, order=2, multistep=True, denoise=False),
    }
    # NFE counted on a batch of 2, and the forward FLOPs on the timed batch
    counts = {}
    for name, sampler in samplers.items():
        calls = [0]

        def counting(x, t, calls=calls):
            calls[0] += 1
            return model(x, t)
        with torch.inference_mode():
            sampler(counting, x_T[:2].clone())
        counts[name] = calls[0]
    t_mid = torch.full((B,), 0.5, device=device)
    fwd = forward_flops(lambda: model(x_T, t_mid))
    n_params = parameter_count(model)
    name = os.path.splitext(os.path.basename(config_path(args.config)))[0]
    print(f"sampling {name} ({millions(n_params)}), batch {B}: {fwd / B / 1e9:.4g} GFLOP per image and evaluation, "
          f"NFE {counts}", flush=True)
    specs, scores = [], {}
    for v in variants:
        o = sampling_options(VARIANTS[v])
        label = None if o is None else sampling_label(o)
        if o is None or label in scores:
            continue  # training-only, or the same sampling setting as an earlier variant

        def make(o=o):
            if not (o["channels_last"] or o["compile"]):
                return model, _precision.precision_score(model, o["precision"])
            torch.manual_seed(cfg.train.seed)
            own = build_score_model(cfg, sde, shape).to(device).eval()  # converted / compiled: its own copy
            if o["channels_last"]:
                _precision.to_channels_last(own.net)
            if o["compile"]:
                fn = compiled_score(own, o)
                if fn is None:
                    raise RuntimeError("scoresde.precision.compile_score is not there yet")
                return own, fn
            return own, _precision.precision_score(own, o["precision"], channels_last=o["channels_last"])

        if o["compile"] and getattr(_precision, "compile_score", None) is None:
            runner.skip(f"sampling {name}, {label}", "scoresde.precision.compile_score is not there yet")
            continue
        scores[label] = make
        shared = {}

        def build(sampler, make=make, shared=shared):
            if "fn" not in shared:  # both samplers of a variant share its score function (one compile)
                shared["net"], shared["fn"] = make()
            return SampleRun(sampler, shared["fn"], x_T, shared["net"])

        for j, (sname, sampler) in enumerate(samplers.items()):
            specs.append(Spec("sampling", f"sampling {name}, {sname} {counts[sname]} NFE, batch {B}: {label}",
                              sname, label, "images/s", B, 1, 1, lambda s=sampler, b=build: b(s), o["compile"],
                              fwd / B * counts[sname],
                              dict(config=name, parameters=n_params, batch_size=B, nfe=counts[sname], sampler=sname),
                              compiles=o["compile"] and j == 0))  # the samplers of a variant share one compile
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


# ---- output --------------------------------------------------------------------------------------

def gib(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 2 ** 30:.2f} GiB"


def rate_text(row: dict) -> str:
    unit = "steps/s" if row["unit"] == "steps/s" else "images/s"
    v = row["rate"]
    return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"


def table(rows: List[dict], peak: float) -> str:
    return _bench.markdown_table(
        ["what", "steps/s or images/s", "TFLOP/s", f"share of {peak:g} TFLOP/s", "peak memory", "warm-up s"],
        [[r["what"], rate_text(r), "–" if r["tflops"] is None else f"{r['tflops']:.3g}",
          "–" if r["share_of_peak"] is None else f"{100 * r['share_of_peak']:.3g}%",
          gib(r["peak_memory_bytes"]), f"{r['warmup_seconds']:.1f}"] for r in rows],
        [False, True, True, True, True, True])


def figure(rows: List[dict], title: str, peak: float):
    fig = _bench.new_figure(9, 1.6 + 0.32 * max(len(rows), 1))
    ax = fig.add_subplot()
    colors = {"train": "tab:blue", "sampling": "tab:green", "sizes": "tab:orange", "overhead": "0.5"}
    ys = list(range(len(rows)))[::-1]
    values = [r["tflops"] or 0.0 for r in rows]
    ax.barh(ys, values, color=[colors.get(r["section"], "0.5") for r in rows])
    for y, v, r in zip(ys, values, rows):
        ax.annotate(" " + rate_text(r), (v, y), va="center", fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["what"] for r in rows], fontsize=6)
    ax.set_xlim(0, 1.3 * max(values + [1e-12]))
    top = ax.secondary_xaxis("top", functions=(lambda x: 100 * x / peak, lambda s: s * peak / 100))
    top.set_xlabel(f"% of {peak:g} TFLOP/s", fontsize=8)
    ax.set_xlabel("TFLOP/s achieved (counted FLOPs x rate); labels: steps/s or images/s")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_common_args(p)
    p.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", help=f"training config (name in configs/ or a path; default {DEFAULTS['config']})")
    p.add_argument("--batch-size", type=int, help="training batch (default 128)")
    p.add_argument("--steps", type=int, help="timed steps per run (default 20)")
    p.add_argument("--warmup", type=int, help="untimed steps per contender first, compile included (default 3)")
    p.add_argument("--repeats", type=int, help="interleaved timed rounds (default 3)")
    p.add_argument("--variants", help=f"comma list of {', '.join(VARIANTS)} (default {DEFAULTS['variants']})")
    p.add_argument("--size-variants", help=f"variants of the sizes section (default {DEFAULTS['size_variants']})")
    p.add_argument("--sections", help=f"comma list of {', '.join(SECTIONS)} (default all)")
    p.add_argument("--sample-batch", type=int, help="sampling batch (default 512 on cuda, --batch-size on cpu)")
    p.add_argument("--nfe", type=int, help="sampler steps (= score evaluations; default 20)")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="peak to report shares of (default 790)")
    p.add_argument("--budget-s", type=float, help="wall-clock allowance: trims repeats, compiled variants, sections")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sample_batch is None:
        args.sample_batch = 512 if args.device == "cuda" else args.batch_size
    if min(args.batch_size, args.steps, args.repeats, args.nfe, args.sample_batch) < 1 or args.warmup < 1:
        _bench.fail("--batch-size, --steps, --warmup, --repeats, --nfe and --sample-batch must be positive")
    if args.peak_tflops <= 0 or (args.budget_s is not None and args.budget_s <= 0):
        _bench.fail("--peak-tflops and --budget-s must be positive")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    size_variants = [v.strip() for v in args.size_variants.split(",") if v.strip()]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for v in variants + size_variants:
        if v not in VARIANTS:
            _bench.fail(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    for s in sections:
        if s not in SECTIONS:
            _bench.fail(f"unknown section {s!r}; known: {', '.join(SECTIONS)}")
    device = _bench.setup(args)
    budget = Budget(args.budget_s)
    runner = Runner(args, device, budget)
    env = _bench.environment(device)
    precision_info = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn.benchmark": torch.backends.cudnn.benchmark,
                      "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                      "float32_matmul_precision": torch.get_float32_matmul_precision()}
    flop_check = linear_flop_check()
    print(f"gpu_speed on {_bench.environment_line(env)}; peak {args.peak_tflops:g} TFLOP/s; "
          f"FLOP counter check (Linear net): counted {flop_check['counted']}, by hand {flop_check['by_hand']}",
          flush=True)
    if not flop_check["equal"]:
        runner.notes.append(f"FLOP counter check failed: counted {flop_check['counted']}, by hand {flop_check['by_hand']}")
    missing_keys = sorted({k for v in variants for k in VARIANTS[v]} - train_config_keys())
    name = f"gpu_speed_{args.device}" + ("_quick" if args.quick else "")
    settings = {k: getattr(args, k) for k in ("config", "batch_size", "steps", "warmup", "repeats", "nfe",
                                               "sample_batch", "peak_tflops", "budget_s", "seed", "quick")}
    settings.update(variants=variants, size_variants=size_variants, sections=sections)

    def write(final: bool):
        header = (f"GPU speed, {env['device']} ({env['device_name']}), torch {env['torch']}: median of up to "
                  f"{args.repeats} interleaved runs of {args.steps} steps (sampling: of one run) after "
                  f"{args.warmup} warm-up steps (one run); share of {args.peak_tflops:g} TFLOP/s"
                  + ("" if final else " (partial: sections still running)") + ".\n\n")
        notes = ["FLOPs: FlopCounterMode on one real forward + backward (sampling: forward x NFE); matmul, "
                 "convolution and attention FLOPs of the network, the same for every variant.",
                 "Trainer rows: Trainer.fit with checkpoint writes off; batches come from host memory, the "
                 "bare loop's from data on the device."]
        if device.type == "cuda":
            notes.append(f"fp32 rows: cuDNN TF32 {precision_info['cudnn.allow_tf32']}, matmul TF32 "
                         f"{precision_info['cuda.matmul.allow_tf32']}, cudnn.benchmark "
                         f"{precision_info['cudnn.benchmark']} (torch's defaults unless changed).")
        if any(r.get("synthetic_data") for r in runner.rows):
            notes.append("Training data: random pixels of the data set's shape (its folder is not on this machine).")
        if device.type == "cuda":
            notes.append("Peak memory: the contender's weights, gradients, optimizer state and EMA + its first timed "
                         "run's torch.cuda.max_memory_allocated above what was allocated before it.")
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            notes.append(f"Peak memory: n/a on CPU (per contender); the whole process peaked at {gib(rss)} RSS.")
            notes.append("On CPU the bare loop's bf16 runs under CPU autocast; the Trainer applies train.amp only "
                         "where it autocasts (CUDA at the time of writing), so its bf16 rows may be fp32.")
        notes += runner.notes
        skipped = [f"skipped: {s['what']}: {s['reason']}" for s in runner.skipped]
        markdown = header + table(runner.rows, args.peak_tflops) + "\n" + "\n".join(
            f"- {line}" for line in notes + skipped) + f"\n\n{_bench.environment_line(env)}\n"
        result = {"settings": settings, "rows": runner.rows, "skipped": runner.skipped, "notes": runner.notes,
                  "flop_check": flop_check, "precision": precision_info, "missing_train_keys": missing_keys,
                  "complete": final, "environment": env,
                  "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        fig = figure(runner.rows, f"gpu_speed, {env['device_name']}, torch {env['torch']}", args.peak_tflops)
        paths = _bench.write_results(args.out, name, result, markdown, fig)
        return markdown, paths

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scoresde-gpu-speed-") as workdir:
        for i, section in enumerate(sections):
            # time kept for the sections still to come, at most half of what is left
            reserve = min(sum(SECTION_RESERVE[s] for s in sections[i + 1:]), 0.5 * budget.left())
            if budget.left() < 10:
                runner.skip(f"section {section}", "--budget-s exhausted")
                continue
            print(f"\n== {section}", flush=True)
            if section == "train":
                specs = training_specs(runner, args, "train", args.config, args.batch_size, variants, workdir)
            elif section == "sampling":
                specs = sampling_specs(runner, args, variants)
            elif section == "sizes":
                specs = size_specs(runner, args, size_variants)
            else:
                specs = training_specs(runner, args, "overhead", "digits_vp", 128, ["fp32"], workdir)
            runner.measure(specs, reserve)
            del specs
            free(device)
            write(final=False)
    markdown, paths = write(final=True)
    print("\n" + markdown)
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
