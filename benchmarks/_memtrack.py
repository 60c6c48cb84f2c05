"""The measuring machinery of benchmarks/memory.py: one training step's peak tensor memory.

Holds the MemTracker subclass and ``track`` (the count), the config and synthetic-data helpers,
``trainer_patches`` / ``build_trainer`` / ``advance`` (scoresde's Trainer built and stepped under
FakeTensorMode), ``trainer_step_memory`` (the estimate) and ``cuda_step_memory`` (the GPU's own
count). The method, what is changed to run under fake mode and the caveats are in memory.py's
module docstring.
"""
from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import time
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.mem_tracker import MemTracker

import _bench
from _bench import ROOT
import scoresde.sde as _sde_module
import scoresde.train as _train_module
from scoresde import _checks
from scoresde.config import load_config
from scoresde.data import Dataset, TOYS
from scoresde.losses import likelihood_weight_table

DEEP = "cifar10_ddpmpp_deep_continuous_vp"
#: configs that configs/ lacks: name -> (the config file it is made from, overrides)
DERIVED = {DEEP: ("cifar10_ddpmpp_continuous_vp", ["model.num_res_blocks=8"])}
#: one sample's shape for the data sets a config names (a synthetic set of it replaces the data)
SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28), "digits": (1, 8, 8)}
#: MemTracker category -> column
CATEGORIES = {"Parameter": "params", "Buffer": "buffers", "Gradient": "grads", "Optstate": "opt_state",
              "Other": "ema", "Activation": "activations", "Temp": "temp"}


# ---- counting -------------------------------------------------------------------------------------

class StepMemTracker(MemTracker):
    """torch's MemTracker keeping only the global peak, its breakdown and the phase it fell in.

    MemTracker also keeps a peak per module, updated after every operation for every module seen
    (a loop over hundreds of modules per operation); nothing here reads it. And it refuses a root
    module's second forward pass in one tracking (it takes it for the next iteration): with
    ``train.grad_accum`` one step calls the model once per micro-batch, so the module statistics
    (only those) are reset at each such call. Storage accounting is MemTracker's own."""

    def __init__(self) -> None:
        super().__init__()
        self.peak_phase: Dict[torch.device, str] = {}

    def _phase(self) -> str:
        if self._in_opt:
            return "optimizer step"
        if self._mod_tracker.is_bw:
            return "backward"
        if set(self._mod_tracker.parents) - {"Global"}:
            return "forward"
        return "outside the model"  # loss terms, clipping, EMA

    def _update_peak_stats(self, peak_state) -> None:  # noqa: ARG002 (MemTracker's signature)
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap["Total"]:
                self._peak_mem[dev] = snap["Total"]
                self._peak_mem_snap[dev] = dict(snap)
                self.peak_phase[dev] = self._phase()

    def _pre_fw_hook(self, module: nn.Module, inputs) -> None:
        if module in self.memory_tracking and not self._mod_tracker.is_bw:
            name = self._mod_tracker.get_known_fqn(module)
            if set(self._mod_tracker.parents) - {name} == {"Global"}:  # a root module called again
                self.reset_mod_stats()
        super()._pre_fw_hook(module, inputs)


def track(step: Callable[[], object], *, modules: Iterable[nn.Module] = (),
          optimizers: Iterable[torch.optim.Optimizer] = (), others: Iterable[torch.Tensor] = ()) -> dict:
    """Run ``step()`` under a ``StepMemTracker`` and return its peak: {"total": bytes, "phase": where
    the peak fell, and per category (``CATEGORIES``' columns) the bytes alive at the peak}.

    Tensors made before ``step`` are counted only if given: ``modules`` (their parameters, buffers
    and existing gradients), ``optimizers`` (their state), ``others`` (any tensors: "Other", the EMA
    column). One device only."""
    mt = StepMemTracker()
    mt.track_external(*modules, *optimizers, *others)
    with mt:
        step()
    peak = mt.get_tracker_snapshot("peak")
    if len(peak) != 1:
        raise RuntimeError(f"expected tensors on one device, got {sorted(map(str, peak))}")
    (device, snap), = peak.items()
    out = {"total": int(snap["Total"]), "phase": mt.peak_phase.get(device, "")}
    for category, column in CATEGORIES.items():
        out[column] = int(sum(v for k, v in snap.items() if str(getattr(k, "value", k)) == category))
    return out


# ---- the trainer under fake mode ------------------------------------------------------------------

def config_for(name: str, batch_size: int, overrides: Sequence[str] = ()):
    """The config ``name`` (configs/NAME.yaml or a DERIVED one) at ``batch_size`` with ``overrides``."""
    base, extra = DERIVED.get(name, (name, []))
    path = os.path.join(ROOT, "configs", base + ".yaml")
    if not os.path.exists(path):
        _bench.fail(f"no config {name!r}: neither configs/{base}.yaml nor one of {sorted(DERIVED)}")
    return load_config(path, list(extra) + [f"train.batch_size={batch_size}"] + list(overrides))


def sample_shape(cfg) -> tuple:
    d = cfg.data
    if d.name in TOYS:
        return (2,)
    if d.name not in SHAPES:
        _bench.fail(f"data.name {d.name!r}: no known sample shape for a synthetic stand-in (known: {sorted(SHAPES)})")
    c, h, w = SHAPES[d.name]
    return (c, d.image_size, d.image_size) if d.image_size else (c, h, w)


def synthetic_dataset(cfg, n: int) -> Dataset:
    """``n`` samples of the config's shape (and labels where the model takes classes), values in
    [-1, 1]: under fake mode a fake one (no data), else real random pixels."""
    shape = sample_shape(cfg)
    g = torch.Generator().manual_seed(cfg.train.seed)
    data = torch.rand((n,) + shape, generator=g) * 2 - 1
    num_classes = int(cfg.model.get("num_classes") or 0)
    labels = torch.randint(0, num_classes, (n,), generator=g) if num_classes else None
    return Dataset(data=data, pixels=None, shape=shape, is_image=len(shape) == 3, data_range=(-1.0, 1.0),
                   name=cfg.data.name, labels=labels)


@contextlib.contextmanager
def trainer_patches(dataset: Dataset, fake: Optional[FakeTensorMode]):
    """What building and stepping ``scoresde.train.Trainer`` here needs (see memory.py's docstring):
    ``load_data`` gives ``dataset``; t's range check is skipped (as on CUDA); under ``fake``, deep
    copies keep the fake mode and ``Module.to`` of a CPU module to the CPU returns the module."""
    saved = (_train_module.load_data, _sde_module._tracing, nn.Module.to)
    original_to = nn.Module.to

    def to_cpu_noop(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], (str, torch.device)) \
                and torch.device(args[0]).type == "cpu" \
                and all(t.device.type == "cpu" for t in list(self.parameters()) + list(self.buffers())):
            return self
        return original_to(self, *args, **kwargs)

    _train_module.load_data = lambda cfg, split="train", n=None, generator=None: dataset
    _sde_module._tracing = lambda: True
    if fake is not None:
        nn.Module.to = to_cpu_noop
        fake.__deepcopy__ = lambda memo: fake  # a FakeTensor's deepcopy copies its __dict__, fake_mode included
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            yield
    finally:
        _train_module.load_data, _sde_module._tracing, nn.Module.to = saved
        if fake is not None:
            del fake.__deepcopy__


def build_trainer(cfg, workdir: str):
    """A Trainer with checkpoint writes and the loss report (a host read) switched off. The table of
    importance sampling (``losses.likelihood_weight_table``: made once per SDE, ending in a host
    read) is made here on real tensors, outside any fake mode, as the first real step would make it."""
    trainer = _train_module.Trainer(cfg, workdir, progress=False)
    trainer.save = lambda: None
    trainer._report = lambda mean, since, writer, bar: since
    if trainer.loss_kwargs.get("importance_sampling"):
        with unset_fake_temporarily():
            likelihood_weight_table(trainer.sde, _checks.eps(trainer.sde, trainer.loss_kwargs["eps"]))
    return trainer


def advance(trainer, steps: int = 1) -> None:
    trainer.cfg.train.steps = trainer.step + steps
    trainer.fit()


def ema_tensors(trainer) -> List[torch.Tensor]:
    ema = trainer.ema
    return list(ema.module.parameters()) + list(ema.module.buffers()) + [ema.n_averaged]


def trainer_step_memory(cfg, fake: bool = True) -> dict:
    """The peak of the Trainer's second step on the CPU for ``cfg`` (its train.device is set to cpu):
    under FakeTensorMode with ``fake``, else on real tensors. ``track``'s dict plus "parameters"
    (count), "opt_state_bytes" (Adam's state after the step), "seconds" (the measured step)."""
    cfg.train.device = "cpu"
    # real tensors made before the step (importance sampling's table) enter it as constants
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    with tempfile.TemporaryDirectory(prefix="scoresde-mem-") as workdir, \
            (mode if mode is not None else contextlib.nullcontext()):
        dataset = synthetic_dataset(cfg, cfg.train.batch_size)
        with trainer_patches(dataset, mode):
            trainer = build_trainer(cfg, workdir)
            advance(trainer)  # step 1 makes Adam's state: every later step starts with it
            t0 = time.perf_counter()
            out = track(lambda: advance(trainer), modules=[trainer.net], optimizers=[trainer.opt],
                        others=ema_tensors(trainer))
            out["seconds"] = time.perf_counter() - t0
            out["parameters"] = sum(p.numel() for p in trainer.net.parameters())
            out["opt_state_bytes"] = sum(v.untyped_storage().nbytes() for st in trainer.opt.state.values()
                                         for v in st.values() if torch.is_tensor(v))
    return out


def cuda_step_memory(cfg) -> dict:
    """The same step for real on the GPU: {"max_allocated": torch.cuda.max_memory_allocated over
    the second step minus what was allocated before the trainer was built, "reserved": likewise
    for memory_reserved}."""
    cfg.train.device = "cuda"
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    with tempfile.TemporaryDirectory(prefix="scoresde-mem-") as workdir:
        dataset = synthetic_dataset(cfg, max(4 * cfg.train.batch_size, 512))
        with trainer_patches(dataset, None):
            trainer = build_trainer(cfg, workdir)
            advance(trainer)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            advance(trainer)
            torch.cuda.synchronize()
            out = {"max_allocated": torch.cuda.max_memory_allocated() - base,
                   "max_reserved": torch.cuda.max_memory_reserved()}
        del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return out

