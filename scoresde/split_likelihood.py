"""Likelihood of a whole data split: batched, with dequantization repeats, split across processes.

``split_likelihood(run, split="test")`` (and ``scoresde likelihood RUN``) computes the PF-ODE
likelihood of every point of a split (or of ``num`` of them) in batches of ``batch_size``: bits/dim
for images (``bits_per_dim``), the NLL in nats on the data's scale for the 2-D toys
(``log_likelihood``). For images, ``dequant_repeats`` = K draws of the uniform dequantization
noise per image; an image's value is the mean of its K draws (the paper averages several), and the
standard error is over images: std of the per-image means / sqrt(n).

Randomness. Point i (its position in the selected data: the split's own order, or the random
``num``-subset drawn with seed + 1) has a generator of its own seeded ``seed + i``
(``SampleGenerators``). Its draw r takes, in order, the dequantization noise and the Hutchinson
probes from it, continuing where draw r - 1 stopped. The random numbers of point i therefore depend
only on (seed, i, r): not on its batch, the batch size or the number of processes; K repeats begin
with the draws of fewer repeats.

Values. With a fixed-step method (``method="rk4", steps=...``) every point's ODE is solved on the
same grid, so the values do not depend on the batch size or the number of processes, up to the
network's floating-point dependence on the batch shape (~1e-7 relative). An adaptive method (the
default ``dopri5``, as in the paper) takes one step size for a whole batch: a point's value then
depends on its batch-mates at the level of the solver's tolerance (rtol = atol = 1e-5 by default:
up to 5e-4 bits/dim per image between batch sizes 1, 3 and 8 on an 8x8 digits model, whose standard
error over 8 images is 0.07); with ``batch_size=1`` each point has its own steps.

Processes. Under torchrun (WORLD_SIZE > 1 in the environment) point k goes to rank k mod
WORLD_SIZE; every rank computes its share, then all ranks exchange their values over a gloo
process group made from the environment (and destroyed after it, unless one already existed), so
every rank returns the whole split's result.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _checks
from .likelihood import bits_per_dim, log_likelihood
from .sampling.generators import SampleGenerators

#: points per batch when none is given: images (memory-bound), 2-D toy points (cheap)
DEFAULT_BATCH_SIZE = {"image": 256, "toy": 5000}


@dataclass
class SplitLikelihoodResult:
    """``values`` (n,) float64: per point, the mean over its draws of its bits/dim (images) or its
    NLL in nats (toys), in the data's order; ``draws`` (n, K): every draw; ``nfe``: score
    evaluations summed over batches, draws and processes; ``solves``: ODE solves (batches x draws,
    all processes); ``seconds``: wall time until every process was done."""

    values: Tensor
    draws: Tensor
    unit: str
    nfe: int
    solves: int
    seconds: float
    batch_size: int
    repeats: int
    world_size: int
    dim: int
    is_image: bool
    estimator: str
    seed: int

    @property
    def n(self) -> int:
        return int(self.values.numel())

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def se(self) -> float:
        """std of the per-point values (over draws' means) / sqrt(n); 0 for one point."""
        return float(self.values.std() / math.sqrt(self.n)) if self.n > 1 else 0.0

    @property
    def nll_8bit(self) -> Optional[Tensor]:
        """Images: the NLL in nats per image on the 0–255 scale, bits/dim · D · ln 2; toys: None."""
        return self.values * (self.dim * math.log(2.0)) if self.is_image else None


def batched_likelihood(score_fn, sde, x: Tensor, *, image: bool, data_range: Sequence[float] = (-1.0, 1.0),
                       index: Optional[Tensor] = None, batch_size: int = 256, repeats: int = 1, seed: int = 0,
                       device=None, generator_device=None, bar=None, **likelihood_kwargs):
    """(draws (n, repeats) float64, nfe, solves) of the points ``x`` (8-bit pixels for ``image``),
    point j drawn from the generator seeded ``seed + index[j]`` (default index j). ``bar``: a tqdm
    bar advanced by the points done. Other keywords go to ``bits_per_dim`` / ``log_likelihood``."""
    _checks.positive_int(batch_size, "batch_size")
    _checks.positive_int(repeats, "dequant_repeats")
    for key in ("generator", "progress", "data_range"):
        if key in likelihood_kwargs:
            raise ValueError(f"{key}: set by the split likelihood itself, not a keyword to pass on")
    _check_repeats(image, repeats)
    n = x.shape[0]
    index = torch.arange(n) if index is None else torch.as_tensor(index).reshape(-1)
    device = x.device if device is None else torch.device(device)
    generator_device = device if generator_device is None else generator_device
    draws = torch.empty(n, repeats, dtype=torch.float64)
    nfe = solves = 0
    for s in range(0, n, batch_size):
        xb = x[s: s + batch_size].to(device)
        gens = SampleGenerators([int(seed) + int(i) for i in index[s: s + batch_size]], generator_device)
        for r in range(repeats):  # draw r continues each point's stream where draw r - 1 stopped
            if image:
                res = bits_per_dim(score_fn, sde, xb, data_range=data_range, generator=gens, **likelihood_kwargs)
                draws[s: s + len(xb), r] = res.bpd.detach().double().cpu()
            else:
                res = log_likelihood(score_fn, sde, xb, generator=gens, **likelihood_kwargs)
                draws[s: s + len(xb), r] = -res.logp.detach().double().cpu()
            nfe, solves = nfe + res.nfe, solves + 1
            if bar is not None:
                bar.set_postfix_str(f"NFE {nfe}" + (f", draw {r + 1}/{repeats}" if repeats > 1 else ""))
        if bar is not None:
            bar.update(len(xb))
    return draws, nfe, solves


def split_likelihood(run, split: str = "test", num: Optional[int] = None, *, batch_size: Optional[int] = None,
                     dequant_repeats: int = 1, estimator: Optional[str] = None, seed: int = 0, progress: bool = True,
                     **likelihood_kwargs) -> SplitLikelihoodResult:
    """The likelihood of ``split`` of ``run``'s data (see the module docstring).

    Args:
        run: a ``LoadedRun`` (``scoresde.load``; it computes on the run's device) or a run directory.
        num: the whole split (None), or ``num`` points chosen with a generator seeded ``seed + 1``
            (images: a random subset; toys: fresh samples), as ``scoresde likelihood --num-samples``.
        batch_size: points per ODE solve (default 256 for images, 5000 for toys): memory, speed and,
            with an adaptive method only, the solver's shared step sizes (module docstring).
        dequant_repeats: K dequantization draws per image (image runs only).
        estimator: "exact" or "hutchinson" (default: exact for dimension <= 16, else hutchinson).
        seed: point i's draws come from the generator seeded ``seed + i``.
        progress: a progress bar over points (rank 0's share under torchrun).
        likelihood_kwargs: to ``log_likelihood`` (method, steps, rtol, atol, probes, noise, eps).
    """
    from .run import load
    if isinstance(run, (str, os.PathLike)):
        run = load(str(run))
    if estimator is None:
        estimator = "exact" if math.prod(run.data_shape) <= 16 else "hutchinson"
    if batch_size is not None:
        _checks.positive_int(batch_size, "batch_size")
    _checks.positive_int(dequant_repeats, "dequant_repeats")
    world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    data = select_points(run, split, num, seed)
    x = data.pixels if data.is_image else data.data
    _check_repeats(data.is_image, dequant_repeats)  # before the process group: one line on every rank
    batch_size = batch_size or DEFAULT_BATCH_SIZE["image" if data.is_image else "toy"]
    device = next(run.net.parameters()).device
    group = _ProcessGroup() if world > 1 else None
    try:
        t0 = time.perf_counter()
        own = torch.arange(rank, x.shape[0], world)
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(own), desc="log_likelihood", unit="image" if data.is_image else "point",
                       leave=False)
        try:
            draws, nfe, solves = batched_likelihood(
                run.score_fn, run.sde, x[own], image=data.is_image, data_range=data.data_range, index=own,
                batch_size=batch_size, repeats=dequant_repeats, seed=seed, device=device, bar=bar,
                estimator=estimator, **likelihood_kwargs)
        finally:
            if bar is not None:
                bar.close()
        parts = [(own, draws, nfe, solves)] if group is None else group.all_gather((own, draws, nfe, solves))
        seconds = time.perf_counter() - t0
    finally:
        if group is not None:
            group.close()
    all_draws = torch.empty(x.shape[0], dequant_repeats, dtype=torch.float64)
    for idx, d, _, _ in parts:
        all_draws[idx] = d
    return SplitLikelihoodResult(
        values=all_draws.mean(1), draws=all_draws, unit="bits/dim" if data.is_image else "nats",
        nfe=sum(p[2] for p in parts), solves=sum(p[3] for p in parts), seconds=seconds, batch_size=batch_size,
        repeats=dequant_repeats, world_size=world, dim=math.prod(data.shape), is_image=data.is_image,
        estimator=estimator, seed=seed)


def select_points(run, split: str = "test", num: Optional[int] = None, seed: int = 0):
    """The data ``split_likelihood`` uses (a ``Dataset``): the whole split, or ``num`` points chosen
    with a generator seeded ``seed + 1``; point i of it is drawn from seed + i."""
    from .run import load_data
    return load_data(run.config, split, n=num, generator=None if num is None else torch.Generator().manual_seed(seed + 1))


def _check_repeats(image: bool, repeats: int) -> None:
    if not image and repeats > 1:
        raise ValueError(f"dequant_repeats={repeats}: repeats average the dequantization noise of 8-bit images; "
                         "a toy run's points are continuous (use 1)")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text) if text else default
    except ValueError:
        raise ValueError(f"{name}={text!r} in the environment: expected an integer") from None


class _ProcessGroup:
    """torch.distributed's default group from torchrun's environment (gloo: CPU tensors and pickled
    objects on any device), unless one exists; ``close`` destroys only a group made here."""

    def __init__(self):
        import torch.distributed as dist
        self.dist, self.created = dist, not dist.is_initialized()
        if self.created:
            dist.init_process_group("gloo")

    def all_gather(self, obj) -> list:
        out = [None] * self.dist.get_world_size()
        self.dist.all_gather_object(out, obj)
        return out

    def close(self):
        if self.created and self.dist.is_initialized():
            self.dist.destroy_process_group()
