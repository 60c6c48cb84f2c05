"""The trainer's fast paths: what ``scoresde.train.Trainer`` does for the speed and memory switches
of the ``train`` config section. Each is off by default and computes what the plain path computes
(to float rounding; tests/test_fast_paths.py checks each against it):

``train.grad_accum`` = k (default 1): the step's batch (per process ``batch_size / world``) is drawn
    from the stream once, as without accumulation, and split into k equal consecutive micro-batches
    (``micro_batches``); ``accumulate`` runs forward and backward on each with its loss divided by k,
    so the gradients add up to those of the mean loss over the whole batch. Every loss of
    ``scoresde.losses`` is a mean over the batch (``train.reduce`` only says whether the data
    dimensions are averaged or summed per sample), so 1/k is the right scale for "mean" and "sum"
    alike. Under DDP all but the last micro-batch run in ``no_sync()``: one gradient all-reduce per
    optimizer step. The step's noise (t, z, dropout, label dropout) is drawn micro-batch after
    micro-batch from the step's seeded generators, so a run stays exactly resumable; it is not the
    same draw as one big batch's (as the draws of a DDP run depend on the number of processes).
``train.checkpoint_activations``: ``scoresde.nets.enable_checkpointing`` on the trained network (not
    its EMA copy): its residual and attention blocks recompute their activations in the backward
    pass (non-reentrant ``torch.utils.checkpoint``, which replays the RNG, so dropout is unchanged).
``train.fused_optimizer``: Adam with ``fused=True`` (one kernel for the whole update) instead of
    ``foreach=True``; None picks fused on CUDA and foreach elsewhere (``build_optimizer``). A
    checkpoint saved by either kind resumes in the kind of the resuming run (``load_optimizer``;
    the checkpoint format is the same for both: ``optimizer_tensors``).
``train.channels_last``: the network's 4-D weights and the input batches in ``torch.channels_last``
    (NHWC), which convolutions on tensor cores prefer; image data only (the config check refuses it
    for toy data, which has no such layout).

``EMAUpdate`` does the per-step EMA update with one foreach kernel per (device, dtype) group and
no host synchronisation. ``torch.optim.swa_utils.AveragedModel.update_parameters`` instead
re-collects and re-groups the tensors at every step, reads its CPU counter ``n_averaged`` twice, and
copies that counter to the device (a blocking host-to-device copy on CUDA, so a stream sync).
Measured on 1 CPU thread, the update took 0.80 -> 0.24 ms for toy_vp's MLP (33 tensors) and
1.74 -> 0.27 ms for digits_vp's U-Net (111 tensors).
"""
from __future__ import annotations

from contextlib import nullcontext
from itertools import chain
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .nets.checkpointing import enable_checkpointing
from .precision import to_channels_last

Batch = Union[Tensor, Sequence[Tensor]]


def prepare_networks(net: nn.Module, ema_net: nn.Module, t, model_name: str, is_image: bool) -> None:
    """Apply ``train.channels_last`` (to the trained network and its EMA copy) and
    ``train.checkpoint_activations`` (to the trained network only: the EMA copy is only evaluated) of
    the train config ``t``; a ValueError naming the key where the data or the network has no use for it."""
    if t.channels_last:
        if not is_image:
            raise ValueError("train.channels_last: expected false for data that is not images (samples (C, H, W))")
        to_channels_last(net)  # only the 4-D (convolution) weights change layout
        to_channels_last(ema_net)
    if t.checkpoint_activations and not enable_checkpointing(net):
        raise ValueError(f"train.checkpoint_activations: expected false for model.name {model_name!r}, "
                         f"which has no residual or attention blocks to checkpoint")


# ---- fused Adam -----------------------------------------------------------------------------------

def fused_adam_supported(device_type: str) -> bool:
    """Whether this torch has fused Adam kernels for parameters on ``device_type`` ("cpu", "cuda")."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        return device_type in _get_fused_kernels_supported_devices()
    except ImportError:  # an older torch: fused Adam on CUDA only
        return device_type == "cuda"


def build_optimizer(params, lr: float, fused: Optional[bool], device: torch.device) -> torch.optim.Adam:
    """Adam over ``params``: fused with ``fused`` True, foreach with False; None: fused on CUDA
    (where supported for every parameter), foreach elsewhere. True where this torch has no fused
    Adam for the parameters' device or dtype is a ValueError naming ``train.fused_optimizer``."""
    params = list(params)
    possible = fused_adam_supported(device.type) and all(p.is_floating_point() for p in params)
    if fused is None:
        fused = device.type == "cuda" and possible
    elif fused and not possible:
        raise ValueError(f"train.fused_optimizer: expected false or null: this torch ({torch.__version__}) has "
                         f"no fused Adam for the parameters on {device.type}")
    return torch.optim.Adam(params, lr=lr, fused=True) if fused else torch.optim.Adam(params, lr=lr, foreach=True)


def optimizer_groups(opt: torch.optim.Optimizer, saved_groups: List[dict]) -> List[dict]:
    """``saved_groups`` (a checkpoint's optimizer param_groups) with ``opt``'s implementation flags
    (foreach, fused, capturable): ``load_state_dict`` would otherwise put back the saving run's
    kind, and a run resumed with another ``train.fused_optimizer`` would silently keep the old one."""
    kind = ("foreach", "fused", "capturable")
    return [dict(saved, **{k: now[k] for k in kind if k in now}) for saved, now in zip(saved_groups, opt.param_groups)]


def optimizer_tensors(opt: torch.optim.Optimizer) -> Tuple[Dict[str, Tensor], dict]:
    """The optimizer's state as tensors {"<param index>.<name>": tensor} and JSON (param_groups and
    the non-tensor state): what a checkpoint stores, without pickle."""
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in state["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: Dict[str, Tensor], meta: dict) -> None:
    """Load what ``optimizer_tensors`` saved into ``opt``; the implementation (foreach or fused) stays
    ``opt``'s (``optimizer_groups``), the state tensors move to where that one keeps them."""
    state: Dict[int, dict] = {}
    for key, value in tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": optimizer_groups(opt, meta["param_groups"])})


# ---- gradient accumulation ------------------------------------------------------------------------

def check_grad_accum(per_process: int, k: int) -> None:
    """The per-process batch must split into ``k`` equal micro-batches (a ValueError naming the key)."""
    if k < 1 or per_process % k:
        raise ValueError(f"train.grad_accum: expected a positive integer dividing the batch per process "
                         f"({per_process} = train.batch_size / processes), got {k}")


def micro_batches(batch: Batch, k: int) -> List[Batch]:
    """``batch`` (a tensor (B, ...) or a tuple of them, e.g. images and labels) as ``k`` consecutive
    equal parts (views): part i holds samples i B/k .. (i + 1) B/k - 1."""
    if k == 1:
        return [batch]
    if torch.is_tensor(batch):
        return list(batch.chunk(k))
    return list(zip(*(v.chunk(k) for v in batch)))


def accumulate(loss_of: Callable[[Batch], Tensor], parts: List[Batch], ddp: Optional[nn.Module] = None) -> Tensor:
    """Backward of mean_i loss_of(parts[i]): each micro-batch's loss divided by k = len(parts), its
    gradients added to ``.grad`` (which the caller zeroes first). ``ddp``: the DistributedDataParallel
    module, whose gradient all-reduce is skipped (``no_sync``) for all but the last micro-batch.
    Returns the detached mean loss (for k = 1 the loss itself, with no extra operation)."""
    k = len(parts)
    if k == 1:
        loss = loss_of(parts[0])
        loss.backward()
        return loss.detach()
    total = None
    for i, part in enumerate(parts):
        with ddp.no_sync() if ddp is not None and i < k - 1 else nullcontext():
            loss = loss_of(part) / k
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


# ---- channels_last --------------------------------------------------------------------------------

def channels_last(x: Tensor) -> Tensor:
    """A 4-D batch in ``torch.channels_last`` memory layout (same values); other tensors unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


# ---- EMA ------------------------------------------------------------------------------------------

class EMAUpdate:
    """The per-step EMA update of ``averaged`` (an ``AveragedModel(net, use_buffers=True)``) from
    ``net``, as ``averaged.update_parameters(net)`` with a lerp ``multi_avg_fn`` computes it: the first
    update copies the weights (and buffers), every later one does
    ``avg <- avg + (1 - decay) (current - avg)``. The tensor lists are collected and grouped by
    (device, dtype) once; the update count is kept on the host (``count``) and mirrored into
    ``averaged.n_averaged`` (a CPU tensor, as AveragedModel makes it) so checkpoints keep their
    format. Set ``count`` after loading a checkpoint into ``averaged``. Build it after anything that
    replaces the networks' tensors (``.to(...)``, e.g. channels_last): it holds views of them."""

    def __init__(self, averaged: nn.Module, net: nn.Module):
        self.averaged = averaged
        groups: dict = {}
        pairs = zip(chain(averaged.module.parameters(), averaged.module.buffers()), chain(net.parameters(), net.buffers()))
        for avg, cur in pairs:
            key = (avg.device, avg.dtype) if avg.is_floating_point() else "copy"
            pair = groups.setdefault(key, ([], []))
            pair[0].append(avg.detach())
            pair[1].append(cur.detach())
        self.copy_only = groups.pop("copy", ([], []))  # integer buffers are copied, never averaged
        self.groups = list(groups.values())
        self.count = int(averaged.n_averaged)

    @torch.no_grad()
    def __call__(self, decay: float) -> None:
        for avg, cur in self.groups:
            if self.count == 0:
                torch._foreach_copy_(avg, cur)
            else:
                torch._foreach_lerp_(avg, cur, 1.0 - decay)
        if self.copy_only[0]:
            torch._foreach_copy_(*self.copy_only)
        self.count += 1
        self.averaged.n_averaged.fill_(self.count)
