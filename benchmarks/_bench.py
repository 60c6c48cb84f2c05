"""What the benchmark scripts share: device and thread setup, honest timing, run metadata, results.

Timing rules kept here so that every benchmark follows them:
- on CUDA, work is queued asynchronously, so a clock read is only meaningful right after
  ``torch.cuda.synchronize``: ``timed`` synchronises before starting and before stopping;
- contenders are timed alternately, the order rotating each repeat, so that background load
  (another process on a shared machine, thermal throttling) hits each of them alike; the median
  of the repeats is reported together with every sample.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as `python benchmarks/x.py` from a checkout without installing
    sys.path.insert(0, ROOT)

from scoresde.config import load_config  # noqa: E402
from scoresde.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from scoresde.run import build_score_model, build_sde  # noqa: E402

# next to the scripts, wherever they are run from
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results")
#: the two reference networks of the benchmarks: config name and the shape of one sample
NETS = {"mlp": ("toy_vp", (2,)), "unet": ("digits_vp", (1, 8, 8))}


# ---- command line and device ---------------------------------------------------------------------

def add_common_args(parser: argparse.ArgumentParser, quick: bool = True) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on CPU (default: torch's choice)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="results folder (default benchmarks/results)")
    if quick:
        parser.add_argument("--quick", action="store_true",
                            help="tiny sizes for a smoke run (seconds); results get a _quick suffix")


def setup(args) -> torch.device:
    """Check and apply --device / --threads; exits with one line on a bad value."""
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is available")
    if args.threads is not None:
        if args.threads < 1:
            sys.exit("error: --threads must be positive")
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def fail(message: str) -> None:
    sys.exit(f"error: {message}")


# ---- timing --------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, including all device work it queued."""
    sync(device)  # do not charge fn for work queued before it
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(contenders: Dict[str, Callable[[], object]], device: torch.device, repeats: int,
                warmup: int = 0, on_repeat: Optional[Callable[[int, Dict[str, List[float]]], None]] = None
                ) -> Dict[str, List[float]]:
    """Time each contender ``repeats`` times, alternating between them with a rotating order.

    ``warmup`` untimed calls of each come first (allocator, caches, lazy initialisation).
    ``on_repeat(r, times)`` is called after each round, e.g. to print progress.
    Returns name -> list of seconds, one per repeat, in repeat order.
    """
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(contenders[name], device))
        if on_repeat is not None:
            on_repeat(r, times)
    return times


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


# ---- models --------------------------------------------------------------------------------------

def build_model(net: str, device: torch.device, run: Optional[str] = None, seed: int = 0):
    """(ScoreModel in eval mode, SDE, sample shape, config) for ``net`` ("mlp" or "unet").

    Without ``run`` the network is the bundled config's, randomly initialised from ``seed``: a
    network's cost does not depend on its weights, but an adaptive solver's NFE and any likelihood
    value do, so ``run`` (a trained run directory or checkpoint, see ``scoresde.load``) can supply
    real weights.
    """
    if run is not None:
        import scoresde
        loaded = scoresde.load(run, device=str(device))
        return loaded.score_fn.eval(), loaded.sde, tuple(loaded.data_shape), loaded.config
    config, shape = NETS[net]
    cfg = load_config(os.path.join(ROOT, "configs", config + ".yaml"))
    torch.manual_seed(seed)
    sde = build_sde(cfg)
    model = build_score_model(cfg, sde, shape)
    # Both networks zero-initialise their output layer, so untrained they return exactly 0: the
    # score would be identically zero, adaptive solvers would see the plain linear ODE and any
    # cross-check of two samplers would compare nothing. Draw that layer's weights. (The U-Net's
    # zero-initialised residual branches stay as they are: drawn too, they make the untrained
    # network so rough that its probability-flow ODE is ill-conditioned.)
    out_weight = [p for p in model.parameters() if p.dim() >= 2][-1]
    if not out_weight.any():
        with torch.no_grad():
            out_weight.normal_(0.0, out_weight[0].numel() ** -0.5)
    return model.to(device).eval(), sde, shape, cfg


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- metadata and results ------------------------------------------------------------------------

def git_commit() -> Optional[str]:
    """HEAD of the checkout, with "-dirty" when the working tree differs from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def environment(device: torch.device) -> dict:
    """Everything a reader needs to judge where the numbers come from."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": device_name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


def environment_line(env: dict) -> str:
    return (f"{env['device']} ({env['device_name']}), {env['threads']} threads of {env['cpu_count']} CPUs, "
            f"torch {env['torch']}, Python {env['python']}, {env['date']}, commit {env['git_commit']}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool]) -> str:
    """A GitHub markdown table; ``right[i]`` right-aligns column i (numbers)."""
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def new_figure(width: float = 8.0, height: float = 4.5):
    """A matplotlib Figure outside pyplot: no global figure registry, no GUI backend needed."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def write_results(out_dir: str, name: str, payload: dict, markdown: str, figure) -> List[str]:
    """Write ``name``.json, .md and .png into ``out_dir``, each atomically; returns the paths."""
    stem = os.path.join(out_dir, name)
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=120)
    atomic_write_text(stem + ".json", json.dumps(payload, indent=1, default=_jsonable) + "\n")
    atomic_write_text(stem + ".md", markdown if markdown.endswith("\n") else markdown + "\n")
    atomic_write_bytes(stem + ".png", buf.getvalue())
    return [stem + ext for ext in (".json", ".md", ".png")]


def _jsonable(value):
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, (torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def grouped_bars(ax, labels: Sequence[str], series: Dict[str, Sequence[float]], ylabel: str) -> None:
    """Bars for each label, one coloured bar per series side by side (NaN leaves a gap)."""
    n = max(len(series), 1)
    width = 0.8 / n
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
