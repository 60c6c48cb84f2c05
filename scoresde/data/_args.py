"""Argument checks shared by the data modules (the _checks style: one ValueError naming the
argument and what was expected)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Tuple

import torch

SPLITS = ("train", "test")
DataRange = Tuple[float, float]


def _data_range(value) -> DataRange:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be two finite numbers (lo, hi) with hi > lo, got {value!r}")
    return lo, hi


def _generator_device(generator: Optional[torch.Generator]) -> torch.device:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator.device if generator is not None else torch.device("cpu")


def _directory(root, what: str) -> Path:
    if root is None:
        raise ValueError(f"root must be the folder holding {what}, got None")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ValueError(f"root {str(path)!r} is not an existing folder (expected it to hold {what})")
    return path

