"""How gpu_speed.py times a section: a Spec per contender, built, warmed up and then timed in
interleaved rounds by Runner.measure within a Budget (the wall-clock allowance of --budget-s), and
what a contender's persistent tensors occupy (the base of its peak memory).

A contender (what ``Spec.build()`` returns) has ``run(units)``, the work that is timed, and
``tensors()``, the tensors it keeps between runs."""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

import _bench
from _bench import sync

#: seconds a compilation is assumed to take until the first one has been timed
FIRST_COMPILE_GUESS_S = 90.0


class Budget:
    """A wall-clock allowance for the whole run (None: unlimited)."""

    def __init__(self, seconds: Optional[float]):
        self.deadline = None if seconds is None else time.perf_counter() + seconds
        self.compile_estimate = FIRST_COMPILE_GUESS_S  # updated by every compile warm-up seen

    def left(self, reserve: float = 0.0) -> float:
        return math.inf if self.deadline is None else self.deadline - time.perf_counter() - reserve


def model_tensors(module: nn.Module, grads: bool = True) -> List[torch.Tensor]:
    """Parameters and buffers of ``module``, and with ``grads`` the gradients it holds."""
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


class Runner:
    """The rows, skipped contenders and notes of a run; ``measure`` adds one section's."""

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
    """Collect dropped contenders and, on CUDA, release the cached blocks they leave."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def millions(n: int) -> str:
    """A parameter count for a label: millions from 100k up (58.7M), thousands below (70k)."""
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"

