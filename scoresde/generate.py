"""Sampling many: a folder of atomically written, resumable shards, split across processes.

``generate(run, num_samples, out_dir, ...)`` (and ``scoresde sample RUN --num-samples N --out DIR``)
draws samples 0 .. N-1 into ``out_dir``:

- **Per-sample seeds.** Sample i is drawn from its own seed ``seed + i``
  (``scoresde.sampling.generators.SampleGenerators``, EDM's StackedRandomGenerator): its prior
  draw x_T and every noise draw of the sampler come from a generator of its own. The random
  numbers of sample i therefore do not depend on the batch it is in, the batch size or the number
  of processes; sample i of a run equals sample 0 of a one-sample run with seed ``seed + i``.
- **Shards.** The index range is cut into shards of ``shard_size`` (default 1000, independent of
  the batch size): shard k holds samples ``k*S .. min((k+1)*S, N) - 1`` in ``shard_<k:06d>.npz``
  with arrays ``samples``, ``index`` (the sample indices, int64) and ``clipped`` (a count). Image
  runs: ``samples`` is uint8 **(n, H, W, C)** (HWC, as FID tools and the ADM/EDM reference batches
  store images), the data range mapped to 0–255 with rounding and clipping exactly as
  ``scoresde.data.unscale`` does; ``clipped`` counts the values that were outside the data range.
  Toy runs: float32 (n, D), the samples as drawn, ``clipped`` 0. A shard is built in memory,
  written to a hidden temporary file beside its final name, fsynced and renamed: a shard file
  under its final name is always complete, and it is the shard's completion mark. With ``png``
  (image runs only), ``png/<i:06d>.png`` for each sample, each written atomically before its
  shard's ``.npz``.
- **Metadata and resuming.** ``generate.json`` records the settings that decide the samples
  (checkpoint and step, sampler, options, steps, eps, seed, count, shard size, PNGs, the data's
  shape and range; the batch size too for the samplers whose batches interact, below). A restart
  into the same folder skips every complete shard, removes the temporary files a killed run left
  and recomputes only the missing shards; with other settings it is refused in one line. The batch
  size, the number of processes and the device may change between restarts.
- **Processes.** Under ``torchrun`` (RANK / WORLD_SIZE in the environment) shard k goes to rank
  k mod WORLD_SIZE. Ranks never communicate: each writes the (identical) metadata and its own
  shards; rank 0 shows the progress bar (samples done by all ranks, read from the folder), then
  waits for the other ranks' shards to appear and prints one line with the count and the time.
  (torchrun stops rank 0 if another rank fails.) No ``torch.distributed`` process group is needed.

Reproducibility. Every shard is computed batch by batch from its first sample, so the batches, and
hence the samples, are bit-identical for any number of processes on a given device. Across batch
sizes the random numbers are identical; the samples are identical up to the network's own
floating-point dependence on the batch shape (a matrix product of 1–3 rows takes another kernel
than one of many on the CPU; convolution libraries choose algorithms by batch size), about 1e-7
relative per evaluation, which the rounding to 8-bit pixels almost always absorbs. Two samplers
couple the samples of a batch by design: ``predictor_corrector`` with the Langevin corrector (its
step size uses norms averaged over the batch, as in the reference) and ``probability_flow`` with
an adaptive method (one step size for the whole batch). For them the batch size is part of the
settings (a restart must use the same one) and a note says so.
"""
from __future__ import annotations

import io as _io
import json
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from . import io

#: samples per shard when none is given (independent of the batch size)
DEFAULT_SHARD_SIZE = 1000
#: samples drawn together when none is given
DEFAULT_BATCH_SIZE = 500
#: the metadata file of a samples folder
META_NAME = "generate.json"
FORMAT = "scoresde-samples/1"
SHARD_PATTERN = re.compile(r"^shard_(\d{6,})\.npz$")
#: settings that decide the samples: a restart must repeat them
IDENTITY = ("checkpoint", "step", "sampler", "options", "steps", "eps", "seed", "num_samples", "shard_size",
            "png", "data_shape", "data_range", "batch_size", "precision", "guidance", "classes", "guidance_scale",
            "classifier", "classifier_step")
# what a metadata file written before a key existed meant by its absence
_IDENTITY_DEFAULTS = {"precision": "fp32", "guidance": None, "classes": None, "guidance_scale": None,
                      "classifier": None, "classifier_step": None}


def shard_name(k: int) -> str:
    return f"shard_{k:06d}.npz"


def png_name(i: int) -> str:
    return f"{i:06d}.png"


@dataclass
class GenerateResult:
    """What ``generate`` did. ``generated``/``skipped`` count shards (this process's, all of them
    on rank 0 after the wait); ``seconds`` is this process's wall time."""

    out_dir: str
    num_samples: int
    shards: int
    skipped: int
    generated: int
    seconds: float
    clipped: Optional[int]
    nfe: Optional[float]
    rank: int
    world_size: int


def batch_coupling(sampler: str, options: Optional[dict] = None) -> Optional[str]:
    """Why the samples of one batch depend on each other under ``sampler`` (None when they do not)."""
    from .sampling import ADAPTIVE_METHODS, SAMPLERS
    import inspect
    options = options or {}

    def value(key):
        return options[key] if key in options else inspect.signature(SAMPLERS[sampler]).parameters[key].default

    if sampler == "predictor_corrector" and value("corrector") == "langevin":
        return "its Langevin corrector takes its step size from norms averaged over the batch"
    if sampler == "probability_flow" and value("method") in ADAPTIVE_METHODS:
        return f"the adaptive ODE solver ({value('method')}) takes one step size for the whole batch"
    return None


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r}: expected an integer") from None


def _plain(value):
    """``value`` as JSON would give it back (tuples -> lists, odd scalars -> strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _shard_bounds(k: int, shard_size: int, num_samples: int):
    return k * shard_size, min((k + 1) * shard_size, num_samples)


def _describe(value) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def _check_meta(out_dir: str, settings: dict) -> None:
    """Refuse ``out_dir`` if its metadata records other settings (or it holds shards without any)."""
    path = os.path.join(out_dir, META_NAME)
    shards = [n for n in os.listdir(out_dir) if SHARD_PATTERN.match(n)]  # listed first: the metadata precedes shards
    if not os.path.exists(path):
        if shards:
            raise ValueError(f"--out {out_dir}: holds {len(shards)} shard files but no {META_NAME}; "
                             "use another --out")
        return
    try:
        with open(path, "r", encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("format") != FORMAT:
            raise ValueError
    except (OSError, ValueError, AttributeError):
        raise ValueError(f"--out {out_dir}: {META_NAME} is not a scoresde samples file; use another --out") from None
    diffs = [f"{key} {_describe(saved.get(key))} (now {_describe(settings[key])})"
             for key in IDENTITY if saved.get(key, _IDENTITY_DEFAULTS.get(key)) != settings[key]]
    if diffs:
        raise ValueError(f"--out {out_dir} holds samples made with other settings: " + "; ".join(diffs)
                         + "; resume with the same settings or use another --out")


def _remove_leftovers(out_dir: str, mine: Sequence[int], shard_size: int, num_samples: int, png: bool) -> None:
    """Delete the temporary files a killed run left for this process's shards (only its own: other
    ranks may be writing theirs)."""
    wanted = {shard_name(k) for k in mine}
    for name in os.listdir(out_dir):
        if name.startswith(".shard_") and name.endswith(".tmp") and name[1:].split(".npz.")[0] + ".npz" in wanted:
            _unlink(os.path.join(out_dir, name))
    folder = os.path.join(out_dir, "png")
    if png and os.path.isdir(folder):
        mine_set = set(mine)
        for name in os.listdir(folder):
            m = re.match(r"^\.(\d+)\.png\..*\.tmp$", name)
            if m and int(m.group(1)) // shard_size in mine_set:
                _unlink(os.path.join(folder, name))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _done_shards(out_dir: str, num_shards: int) -> set:
    done = set()
    for name in os.listdir(out_dir):
        m = SHARD_PATTERN.match(name)
        if m and int(m.group(1)) < num_shards:
            done.add(int(m.group(1)))
    return done


def _to_arrays(x: torch.Tensor, image: bool, data_range):
    """Samples -> (numpy array to store, clipped count)."""
    from .data import unscale
    x = x.detach().cpu()
    if not image:
        return x.to(torch.float32).numpy(), 0
    lo, hi = data_range
    clipped = int(((x < lo) | (x > hi)).sum())
    return unscale(x, data_range).permute(0, 2, 3, 1).contiguous().numpy(), clipped


def _write_pngs(folder: str, images: np.ndarray, start: int) -> None:
    from PIL import Image
    for j, img in enumerate(images):
        buf = _io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
        io.atomic_write_bytes(os.path.join(folder, png_name(start + j)), buf.getvalue())


def generate(run, num_samples: int, out_dir: str, *, sampler: str = "probability_flow", steps: Optional[int] = None,
             batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, options: Optional[dict] = None,
             shard_size: Optional[int] = None, png: bool = False, eps: Optional[float] = None, device=None, rank: Optional[int] = None,
             world_size: Optional[int] = None, progress: bool = True, log: Optional[Callable[[str], None]] = print,
             on_shard: Optional[Callable[[int], None]] = None, precision: str = "fp32",
             channels_last: bool = False, guidance=None) -> GenerateResult:
    """Draw ``num_samples`` samples of ``run`` (a ``scoresde.load`` result or a run directory) into
    the folder ``out_dir`` as shards (see the module docstring); resumes a folder made with the
    same settings. ``steps`` defaults to the run's ``sample.steps`` (ignored by adaptive samplers),
    ``eps`` to its ``sample.eps``; ``device`` to the run's. ``rank``/``world_size`` default to the
    RANK/WORLD_SIZE environment variables (torchrun's). ``log`` (rank 0 only) receives the notes
    and the final line; ``on_shard(k)`` is called after shard k is published. ``precision`` "bf16"
    runs the network under bf16 autocast (the sampler stays float32; recorded in the folder's
    settings), ``channels_last`` feeds an image network channels_last inputs (see
    ``scoresde.precision``). ``guidance`` (a ``scoresde.cli.guided.Guidance``: classifier-free or
    classifier guidance towards the classes of sample i, ``classes[i mod len]``) replaces the run's
    score batch by batch and is recorded in the folder's settings."""
    from .options import accepted_keywords
    from .precision import PRECISIONS, precision_score
    from .run import load
    from .sampling import ADAPTIVE, ADAPTIVE_METHODS, SAMPLERS, sample
    from .sampling._ode import Counter
    from .sampling.generators import SampleGenerators

    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)) + \
            ((("shard_size", shard_size),) if shard_size is not None else ()):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (sample i uses seed + i), got {seed!r}")
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(accepted_keywords(SAMPLERS[sampler])))
    if unknown:
        raise ValueError(f"{sampler} has no option {unknown[0]!r}; its options: "
                         f"{', '.join(accepted_keywords(SAMPLERS[sampler])) or 'none'}")
    if "return_stats" in options:
        raise ValueError("option return_stats: not available when generating shards")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    rank = _env_int("RANK", 0) if rank is None else int(rank)
    world_size = _env_int("WORLD_SIZE", 1) if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: expected 0 <= rank < world size")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir}: exists and is not a folder")

    if isinstance(run, (str, os.PathLike)):
        run = load(os.fspath(run), device=device or "cpu")
    if getattr(run, "objective", "score") != "score":
        raise ValueError(f"run {run.path}: a noisy-classifier run (train.objective {run.objective}) draws no samples")
    if device is None:
        params = list(run.net.parameters())
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    image = len(run.data_shape) == 3
    if png and not image:
        raise ValueError("--png: only for image runs (this run's samples are points of shape "
                         f"{tuple(run.data_shape)})")
    adaptive = sampler in ADAPTIVE or (sampler == "probability_flow"
                                       and options.get("method", "dopri5") in ADAPTIVE_METHODS)
    steps = None if adaptive else int(steps or run.config.sample.steps)
    eps = float(run.config.sample.eps if eps is None else eps)
    coupled = batch_coupling(sampler, options)
    batch = min(batch_size, shard_size)
    num_shards = math.ceil(num_samples / shard_size)
    settings = {
        "format": FORMAT,
        "checkpoint": os.path.realpath(run.path), "step": int(run.step), "sampler": sampler,
        "options": _plain(options), "steps": steps, "eps": eps, "seed": seed, "num_samples": num_samples,
        "shard_size": shard_size, "png": bool(png), "data_shape": list(run.data_shape),
        "data_range": list(run.data_range) if image else None,
        # the batch size decides the samples only where a batch's samples interact
        "batch_size": batch if coupled else None,
        "shards": num_shards, "shard_names": "shard_<k:06d>.npz holds samples k*shard_size .. (k+1)*shard_size-1",
        "layout": ("samples: uint8 (n, H, W, C), the data range mapped to 0-255 (rounded, clipped); "
                   "index: int64 sample indices; clipped: values outside the data range") if image else
                  "samples: float32 (n, D); index: int64 sample indices",
        "seeds": f"sample i is drawn from seed {seed} + i",
    }
    settings["precision"] = precision  # bf16 changes the samples (slightly): a resume must match
    settings.update(guidance=None, classes=None, guidance_scale=None, classifier=None, classifier_step=None)
    if guidance is not None:
        settings.update(guidance.settings())
    main = rank == 0
    say = log if (main and log is not None) else (lambda text: None)

    os.makedirs(out_dir, exist_ok=True)
    _check_meta(out_dir, settings)
    # every rank writes the same file (atomically) before its first shard: no rank waits for another
    io.atomic_write_text(os.path.join(out_dir, META_NAME), json.dumps(settings, indent=1, sort_keys=True) + "\n")
    if png:
        os.makedirs(os.path.join(out_dir, "png"), exist_ok=True)
    if coupled:
        say(f"note: {sampler}: {coupled}, so the samples depend on the batch size ({batch}), not only on the "
            "seeds (still not on the number of processes); a restart must use the same --batch-size")

    mine = list(range(rank, num_shards, world_size))
    _remove_leftovers(out_dir, mine, shard_size, num_samples, png)
    done_at_start = _done_shards(out_dir, num_shards)
    sizes = [_shard_bounds(k, shard_size, num_samples)[1] - _shard_bounds(k, shard_size, num_samples)[0]
             for k in range(num_shards)]
    todo = [k for k in mine if k not in done_at_start]

    bar = None
    if main and progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=num_samples, unit="sample", desc="sample",
                   initial=sum(sizes[k] for k in done_at_start))

    def show(partial: int = 0) -> None:
        if bar is not None:
            bar.n = sum(sizes[k] for k in _done_shards(out_dir, num_shards)) + partial
            bar.refresh()

    counted = Counter(precision_score(run.score_fn, precision, channels_last=channels_last))
    batches = 0
    t0 = time.perf_counter()
    try:
        for k in todo:
            a, b = _shard_bounds(k, shard_size, num_samples)
            parts, clipped = [], 0
            for s in range(a, b, batch):
                e = min(s + batch, b)
                gens = SampleGenerators.range(seed, s, e, device)
                if guidance is not None:  # the classes of samples s .. e - 1, whatever the batching
                    counted.score = guidance.score_fn(run, s, e, device, precision, channels_last)
                with torch.no_grad():
                    x = sample(sampler, counted, run.sde, (e - s,) + tuple(run.data_shape), steps=steps, eps=eps,
                               generator=gens, device=device, dtype=torch.float32, progress=False, **options)
                arr, c = _to_arrays(x, image, run.data_range)
                parts.append(arr)
                clipped += c
                batches += 1
                show(e - a)
            samples = np.concatenate(parts)
            if png:
                _write_pngs(os.path.join(out_dir, "png"), samples, a)
            buf = _io.BytesIO()
            np.savez(buf, samples=samples, index=np.arange(a, b, dtype=np.int64), clipped=np.int64(clipped))
            io.atomic_write_bytes(os.path.join(out_dir, shard_name(k)), buf.getvalue())
            show()
            if on_shard is not None:
                on_shard(k)
        if main and world_size > 1:  # the other ranks' shards: wait for their files (the bar moves on)
            while len(_done_shards(out_dir, num_shards)) < num_shards:
                time.sleep(0.2)
                show()
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    mine_sizes = [sizes[k] for k in todo]
    # this process's counts: [skipped shards, generated shards, samples made, score evaluations, batches]
    counts = [len(mine) - len(todo), len(todo), sum(mine_sizes), counted.nfe, batches]
    totals, everyone = _sum_over_ranks(counts, world_size)
    skipped, generated, made, nfe_sum, batches_sum = totals
    nfe = nfe_sum / batches_sum if batches_sum else None
    if not main:
        return GenerateResult(out_dir, num_samples, num_shards, skipped, generated, seconds, None, nfe,
                              rank, world_size)
    clipped_total = sum(_shard_clipped(out_dir, k) for k in range(num_shards)) if image else 0
    who = (f" by {world_size} processes" if everyone else " by rank 0 (no process group: the other ranks' counts "
           "are not known here)") if world_size > 1 else ""
    rate = f", {made / seconds:.1f} samples/s" if made and seconds > 0 else ""
    cost = f", NFE {nfe:g} per batch of up to {batch}" if nfe is not None else ""
    skip = f"; {skipped} complete shard{'s' if skipped != 1 else ''} skipped" if skipped else ""
    if made == 0 and everyone:
        say(f"{sampler}: all {num_samples} samples already in {out_dir} ({num_shards} shards); nothing to do")
    else:
        say(f"{sampler}: {num_samples} samples in {num_shards} shard{'s' if num_shards != 1 else ''} -> {out_dir}: "
            f"{made} generated{who} in {seconds:.1f} s{rate}{cost}{skip}")
    if clipped_total:
        total = num_samples * math.prod(run.data_shape)
        lo, hi = run.data_range
        say(f"clipped {clipped_total} of {total} values ({clipped_total / total:.2%}) to the data range "
            f"[{lo:g}, {hi:g}]")
    return GenerateResult(out_dir, num_samples, num_shards, skipped, generated, seconds, clipped_total, nfe,
                          rank, world_size)


def _shard_clipped(out_dir: str, k: int) -> int:
    with np.load(os.path.join(out_dir, shard_name(k))) as z:
        return int(z["clipped"])


def _sum_over_ranks(counts: List[int], world_size: int):
    """(the counts summed over all ranks, True) through torch.distributed: an existing process group,
    or a gloo group made here from torchrun's MASTER_ADDR/MASTER_PORT and closed again (one
    all_reduce after the work, nothing else). (counts, False) where there is none (one process, or
    RANK/WORLD_SIZE set without a rendezvous address)."""
    if world_size == 1:
        return counts, True
    import torch.distributed as dist
    if not dist.is_available():
        return counts, False
    own = False
    if not dist.is_initialized():
        if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
            return counts, False
        from datetime import timedelta
        # ranks that finish early wait here for the slowest one: no short timeout
        dist.init_process_group("gloo", timeout=timedelta(days=7))
        own = True
    try:
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(counts, dtype=torch.float64, device=on)
        dist.all_reduce(t)
        return [int(v) for v in t.tolist()], True
    finally:
        if own:
            dist.destroy_process_group()


def load_samples(out_dir: str) -> np.ndarray:
    """All samples of a complete folder written by ``generate``, in index order (one array: uint8
    (N, H, W, C) for images, float32 (N, D) for toys). ValueError if a shard is missing."""
    path = os.path.join(out_dir, META_NAME)
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
        num, size = int(meta["num_samples"]), int(meta["shard_size"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{out_dir}: not a samples folder written by scoresde (no readable {META_NAME})") from None
    shards = math.ceil(num / size)
    missing = [k for k in range(shards) if not os.path.exists(os.path.join(out_dir, shard_name(k)))]
    if missing:
        raise ValueError(f"{out_dir}: {len(missing)} of {shards} shards missing (first: {shard_name(missing[0])}); "
                         "rerun the same command to finish it")
    parts: List[np.ndarray] = []
    for k in range(shards):
        with np.load(os.path.join(out_dir, shard_name(k))) as z:
            a, b = _shard_bounds(k, size, num)
            if z["samples"].shape[0] != b - a or not np.array_equal(z["index"], np.arange(a, b)):
                raise ValueError(f"{out_dir}/{shard_name(k)}: does not hold samples {a}..{b - 1}")
            parts.append(z["samples"])
    return np.concatenate(parts)
