"""Per-sample random streams: sample i's noise comes from its own seed, whatever batch it is in.

``SampleGenerators(seeds, device)`` holds one ``torch.Generator`` per row of a batch (EDM's
``StackedRandomGenerator``). Every sampler takes it where it takes a ``torch.Generator``
(``generator=``): the prior draw (``SDE.prior_sampling``) and every noise draw inside the samplers
(``_loop.randn_like``) draw row r from generator r and stack the rows, so the random numbers that
sample i sees depend only on its seed, never on which other samples share its batch, how large the
batch is, or how many processes split the work. ``reverse_sde`` gives each row a Brownian path of
its own (one torchsde ``BrownianInterval`` per row, seeded from that row's generator).

The cost is one small draw per row instead of one per batch: on the CPU a few microseconds per row
and step, on a GPU one kernel launch per row and step (as in EDM).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor


class SampleGenerators:
    """One ``torch.Generator`` per sample, seeded with ``seeds`` (row r of every draw uses ``seeds[r]``).

    ``SampleGenerators.range(seed, start, stop, device)`` seeds rows with ``seed + start`` ...
    ``seed + stop - 1``: sample i of a run with base seed s is drawn from seed s + i.
    Draws must have one row per generator (``randn(shape)`` with ``shape[0] == len(self)``).
    """

    def __init__(self, seeds: Iterable[int], device="cpu"):
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("SampleGenerators: needs at least one seed")
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    @classmethod
    def range(cls, seed: int, start: int, stop: int, device="cpu") -> "SampleGenerators":
        """Generators for samples start .. stop-1 of a run with base seed ``seed`` (seeds seed + i)."""
        return cls(range(int(seed) + int(start), int(seed) + int(stop)), device)

    def __len__(self) -> int:
        return len(self.generators)

    def __repr__(self) -> str:
        s = self.seeds
        return f"SampleGenerators(seeds {s[0]}..{s[-1]}, device={self.device})" if len(s) > 1 else \
            f"SampleGenerators(seeds [{s[0]}], device={self.device})"

    def _check_rows(self, shape: Sequence[int], what: str) -> None:
        if len(shape) == 0 or shape[0] != len(self):
            raise ValueError(f"{what}: a draw of shape {tuple(shape)} from {len(self)} per-sample generators "
                             f"(the batch dimension must equal the number of generators)")

    def randn(self, shape: Sequence[int], *, device=None, dtype: Optional[torch.dtype] = None) -> Tensor:
        """Standard normal noise of ``shape``, row r from generator r, put on ``device`` (default: theirs)."""
        shape = tuple(int(n) for n in shape)
        self._check_rows(shape, "randn")
        rows = [torch.randn(shape[1:], generator=g, device=self.device, dtype=dtype) for g in self.generators]
        x = torch.stack(rows)
        return x if device is None else x.to(device)

    def rand(self, shape: Sequence[int], *, device=None, dtype: Optional[torch.dtype] = None) -> Tensor:
        """Uniform [0, 1) noise of ``shape``, row r from generator r, put on ``device`` (default: theirs)."""
        shape = tuple(int(n) for n in shape)
        self._check_rows(shape, "rand")
        rows = [torch.rand(shape[1:], generator=g, device=self.device, dtype=dtype) for g in self.generators]
        x = torch.stack(rows)
        return x if device is None else x.to(device)

    def randint(self, high: int, *, device=None) -> Tensor:
        """One integer in [0, high) per row, shape (B,), int64."""
        x = torch.cat([torch.randint(0, high, (1,), generator=g, device=self.device) for g in self.generators])
        return x if device is None else x.to(device)

