"""The commands that run a trained model: ``scoresde sample`` (a plot, an array or resumable
shards), ``scoresde likelihood`` (PF-ODE NLL, bits/dim for images) and ``scoresde compare`` (every
sampler at several step counts), with what they print (the NFE, mean ± standard error, the exact
NLL of the toys whose density is known)."""
from __future__ import annotations

import io as _io
import math
import os
import sys
from typing import List

import torch

from .. import io


def cmd_sample(args) -> int:
    import time
    from ..options import parse_options
    from ..plot import save_samples
    from ..run import load
    from ..sampling import SAMPLERS, sample
    from ..sampling._ode import Counter
    out = args.out
    # --out: one .png (plot) or .npz (array) drawn in one batch, or a folder of resumable shards
    folder = not out.endswith((".png", ".npz"))
    if folder and os.path.splitext(os.path.basename(os.path.normpath(out)))[1] and not os.path.isdir(out):
        raise ValueError(f"--out {out!r}: expected a .png or .npz file, or a folder of shards (an existing folder "
                         "or a name without an extension)")
    if not folder:
        for flag, given in (("--batch-size", args.batch_size is not None),
                            ("--shard-size", args.shard_size is not None), ("--png", args.png)):
            if given:
                raise ValueError(f"{flag}: only with a folder --out (a name without .png/.npz); {out} is one file "
                                 "drawn in one batch")
    fn = SAMPLERS[args.sampler]
    options = parse_options(args.option, args.sampler, fn)
    if "return_stats" in options:  # it changes what the sampler returns; the NFE is printed anyway
        raise ValueError("--option return_stats: not available from the command line (the NFE is printed anyway)")
    adaptive = _adaptive(args.sampler, fn, options)
    device = args.device
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("LOCAL_RANK")
    if folder and world > 1 and local_rank is not None and device.type == "cuda" and device.index == 0:
        # under torchrun: each process on its own GPU (processes share GPUs when there are fewer GPUs)
        device = torch.device("cuda", int(local_rank) % torch.cuda.device_count())
    main_rank = int(os.environ.get("RANK", "0")) == 0
    run = load(args.run_dir, device=device)
    from .guided import plan as plan_guidance
    guide = plan_guidance(args, run, device)
    precision = getattr(args, "precision", "fp32")
    channels_last = bool(getattr(args, "channels_last", False))
    if channels_last:
        if not _is_image_run(run):
            raise ValueError("--channels-last: only for image runs (this run's samples are points of shape "
                             f"{tuple(run.data_shape)})")
        from ..precision import to_channels_last
        to_channels_last(run.net)
    if adaptive:
        rtol, atol = _option_or_default(fn, options, "rtol"), _option_or_default(fn, options, "atol")
        if args.steps is not None and main_rank:
            print(f"scoresde: warning: --steps is ignored by {_sampler_label(args.sampler, fn, options)}, an adaptive "
                  f"solver: rtol={rtol:g}, atol={atol:g} set its cost (--option rtol=... --option atol=...)",
                  file=sys.stderr)
        steps = None
    else:
        steps = args.steps or run.config.sample.steps
    run = _compiled_run(run, args)  # after channels_last (the compiled network sees its weights' layout)
    if folder:
        from ..generate import DEFAULT_BATCH_SIZE, generate
        generate(run, args.num, out, sampler=args.sampler, steps=steps,
                 batch_size=args.batch_size or DEFAULT_BATCH_SIZE, seed=args.seed, options=options,
                 shard_size=args.shard_size, png=args.png, eps=run.config.sample.eps, device=device,
                 progress=not args.quiet, precision=precision, channels_last=channels_last, guidance=guide)
        return 0
    # NFE counted around the score on the host (no device sync): every sampler, denoising step included
    from ..precision import precision_score
    if guide is None:
        counted = Counter(precision_score(run.score_fn, precision, channels_last=channels_last))
    else:
        counted = Counter(guide.score_fn(run, 0, args.num, args.device, precision, channels_last))
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = sample(args.sampler, counted, run.sde, (args.num,) + run.data_shape, steps=steps,
                   eps=run.config.sample.eps, generator=g, device=args.device, progress=not args.quiet, **options)
    x = x.cpu()  # waits for the device, so the time below is the sampling's
    seconds = time.perf_counter() - t0
    clipped = 0
    if _is_image_run(run):
        # an image's values outside the data range are not pixels; a toy's are just points
        lo, hi = run.data_range
        clipped = int(((x < lo) | (x > hi)).sum())
        x = x.clamp(lo, hi)
    if out.endswith(".npz"):
        import numpy as np
        buf = _io.BytesIO()
        np.savez(buf, samples=x.numpy())
        io.atomic_write_bytes(out, buf.getvalue())
    else:
        from types import SimpleNamespace
        cost = f"rtol={rtol:g}, atol={atol:g}, NFE {counted.nfe}" if adaptive else f"{steps} steps"
        title = f"{_sampler_label(args.sampler, fn, options)}, {cost}"
        save_samples(x, SimpleNamespace(data_range=run.data_range), out,
                     title=title if guide is None else f"{title}; {guide.describe()}")
    how = f" ({guide.describe()})" if guide is not None else ""
    print(f"{args.sampler}: {args.num} samples{how}, NFE {counted.nfe}, {seconds:.2f} s -> {out}")
    if clipped:
        lo, hi = run.data_range
        print(f"clipped {clipped} of {x.numel()} values ({clipped / x.numel():.2%}) to the data range [{lo:g}, {hi:g}]")
    return 0


def cmd_likelihood(args) -> int:
    from ..run import load, require_objective
    from ..sampling.odeint import ADAPTIVE_METHODS
    from ..split_likelihood import select_points, split_likelihood
    if args.out is not None and not args.out.endswith(".json"):
        raise ValueError(f"--out {args.out!r}: expected a .json file (the per-point values)")
    if args.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise ValueError(f"--out {args.out!r}: its folder does not exist")
    if args.steps is not None and args.method in ADAPTIVE_METHODS:
        raise ValueError(f"--steps: only with a fixed-step --method (rk4, euler, midpoint, ...); {args.method} is "
                         "adaptive: its tolerance (rtol = atol = 1e-5) sets its steps")
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("LOCAL_RANK")
    device = args.device
    if world > 1 and local_rank is not None and device.type == "cuda" and device.index == 0:
        device = torch.device("cuda", int(local_rank) % torch.cuda.device_count())  # one GPU per process
    run = load(args.run_dir, device=device)
    require_objective(run, "score", "scoresde likelihood RUN_DIR")
    run = _compiled_run(run, args)
    options = {"method": args.method} if args.steps is None else {"method": args.method, "steps": args.steps}
    res = split_likelihood(run, args.split, args.num, batch_size=args.batch_size, dequant_repeats=args.dequant_repeats,
                           estimator=args.estimator, seed=args.seed, progress=not args.quiet, **options)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 prints the totals of all processes
    how = f"{res.estimator} trace"
    if res.n == 1:
        how = "one example, so no standard error; " + how
    noun = "image" if res.is_image else "point"
    solves = f" in {res.solves} ODE solves" if res.solves > 1 else ""
    if res.is_image:
        # the model's own NLL depends on its data range; on the 8-bit scale it is comparable across runs
        print(f"{args.split}: {_count(res.n, 'image')}, bits/dim {_mean_se(res.values, 4)}; NLL on the 0–255 scale "
              f"{_mean_se(res.nll_8bit, 2)} nats per image (= bits/dim · D · ln 2, D = {res.dim}); {how}, "
              f"NFE {res.nfe}{solves}")
    else:
        print(f"{args.split}: {_count(res.n, 'point')}, NLL {_mean_se(res.values, 4)} nats on the data scale; "
              f"{how}, NFE {res.nfe}{solves}")
        exact = _exact_toy_nll(run.config.data.name, select_points(run, args.split, args.num, args.seed).data)
        if exact is not None:
            values, why = exact
            print(f"exact: {_mean_se(values, 4)} nats ({why})")
    draws = (f" × {_count(res.repeats, 'dequantization draw')} (an image's bits/dim is the mean of its draws, the "
             f"standard error is over images)" if res.is_image else "")
    solver = args.method + (f", {args.steps} steps" if args.steps is not None else "")
    seeds = f", seeds {args.seed}..{args.seed + res.n - 1}" if res.is_image or res.estimator == "hutchinson" else ""
    print(f"{_count(res.n, noun)}{draws}{seeds}, batches of {res.batch_size} "
          f"on {res.world_size} process{'es' if res.world_size > 1 else ''}, {solver}: {res.seconds:.1f} s, "
          f"{res.seconds * res.world_size / res.n:.3g} s per {noun} per process")
    if args.out is not None:
        _write_likelihood_json(args, run, res)
        print(f"per-{noun} values -> {args.out}")
    return 0


def _write_likelihood_json(args, run, res) -> None:
    import json
    doc = {"run": os.path.abspath(args.run_dir), "step": run.step, "split": args.split, "num_samples": args.num,
           "n": res.n, "unit": res.unit, "mean": res.mean, "se": res.se, "dequant_repeats": res.repeats,
           "estimator": res.estimator, "method": args.method, "steps": args.steps, "seed": args.seed,
           "batch_size": res.batch_size, "processes": res.world_size, "nfe": res.nfe, "seconds": res.seconds,
           "values": res.values.tolist(), "draws": res.draws.tolist()}
    if res.is_image:
        doc.update(dim=res.dim, nll_8bit_mean=float(res.nll_8bit.mean()))
    io.atomic_write_text(args.out, json.dumps(doc) + "\n")


def cmd_compare(args) -> int:
    from ..compare import compare, report, select_methods, write_outputs
    from ..data import on_checkerboard, toy_mixture
    from ..run import load, load_data, require_objective
    steps = _int_list(args.steps, "--steps")
    methods = select_methods(args.sampler, args.option)  # checked before anything is loaded or written
    feature_net = getattr(args, "feature_net", None)
    weights = getattr(args, "inception_weights", None)
    if weights is not None and feature_net not in (None, "inception"):
        raise ValueError(f"--inception-weights: only for --feature-net inception (not {feature_net})")
    run = load(args.run_dir, device=args.device)
    require_objective(run, "score", "scoresde compare RUN_DIR")
    name = run.config.data.name
    image = _is_image_run(run) and feature_net != "pixels"  # pixels: the toys' metrics on flattened images
    if not _is_image_run(run) and (feature_net is not None or weights is not None):
        raise ValueError(f"--feature-net/--inception-weights: only for image runs ({name} is a toy run)")
    if image:  # the feature net first: a missing extra or weights fails before any sampling
        from .. import compare_images as ci
        net, inception = ci.load_feature_net(feature_net or ci.default_feature_net(name), args.device, weights)
    # held-out data: the reference, and a disjoint set of the same size for the noise floor
    data = load_data(run.config, "test", n=2 * args.num, generator=torch.Generator().manual_seed(args.seed + 1)).data
    half = min(args.num, len(data) // 2)
    if image:
        if half < args.num:
            print(f"scoresde: note: the test split has {len(data)} images: reference and noise floor of {half} "
                  f"each, samples {args.num}", file=sys.stderr)
        rows = ci.compare_images(run.score_fn, run.sde, data[:half], data[half: 2 * half], feature_net=net,
                                 inception=inception, data_range=run.data_range, num=args.num, steps=steps,
                                 methods=methods, seed=args.seed, device=args.device, progress=not args.quiet)
        paths = ci.write_outputs(rows, args.out or os.path.join(args.run_dir, "compare"))
        print(ci.report(rows))
        for w in rows.warnings:
            print(f"scoresde: warning: {w}", file=sys.stderr)
        print(f"wrote {paths['table']}, {paths['json']}, {paths['plot']}")
        return 0
    rows = compare(run.score_fn, run.sde, data[:half], num=args.num, steps=steps, methods=methods, seed=args.seed,
                   device=args.device, on_target=on_checkerboard if name == "checkerboard" else None,
                   mixture=toy_mixture(name) if name in ("gmm", "8gaussians") else None,
                   floor_data=data[half: 2 * half], progress=not args.quiet)
    paths = write_outputs(rows, args.out or os.path.join(args.run_dir, "compare"))
    print(report(rows))
    print(f"wrote {paths['table']}, {paths['json']}, {paths['plot']}")
    return 0


# ---- plumbing ----------------------------------------------------------------------------------


def _compiled_run(run, args):
    """``run`` with its score network compiled (``--compile``, ``--compile-mode``) by
    ``scoresde.precision.compile_score``, else ``run`` itself. The compiled ScoreModel replaces
    ``score_fn`` (and ``cond_score_fn``), so every score the command builds from it (precision and
    channels_last wrappers, guidance, each batch of a folder) calls the one compiled network:
    compiled once, and again only for another input shape (a last, smaller batch)."""
    mode = getattr(args, "compile_mode", None)
    if not (getattr(args, "compile", False) or mode is not None):
        return run
    import dataclasses
    from ..precision import compile_score
    compiled = compile_score(run.score_fn, mode=mode)
    return dataclasses.replace(run, score_fn=compiled,
                               cond_score_fn=compiled.cond_score_fn if run.cond_score_fn is not None else None)


def _adaptive(name: str, fn, options: dict) -> bool:
    """Whether the sampler's cost is set by rtol/atol rather than --steps (as ``sampling.sample`` decides)."""
    from ..sampling import ADAPTIVE, ADAPTIVE_METHODS
    return name in ADAPTIVE or (name == "probability_flow"
                                and _option_or_default(fn, options, "method") in ADAPTIVE_METHODS)


def _option_or_default(fn, options: dict, key: str):
    """The value a sampler will use for ``key``: the user's --option, else the function's default."""
    import inspect
    return options[key] if key in options else inspect.signature(fn).parameters[key].default


def _sampler_label(name: str, fn, options: dict) -> str:
    """The sampler's name, with its ODE method where it has one (what decides adaptive or not)."""
    if name == "probability_flow":
        return f"{name} ({_option_or_default(fn, options, 'method')})"
    return name


def _is_image_run(run) -> bool:
    """A run on images (C, H, W), whose samples have a data range; toy runs are 2-D points."""
    return len(run.data_shape) == 3


def _mean_se(values: torch.Tensor, decimals: int) -> str:
    """'mean ± standard error' (std / sqrt(n)) of per-example values, with at least ``decimals``
    decimals and enough for two significant digits of the error (a tiny error must not print as
    ± 0.0000); just the mean where there is no spread (one value, or an exactly known constant)."""
    values = values.double()
    mean = values.mean().item()
    # a constant has no spread, whatever the rounding of its mean over many copies makes std() say
    se = values.std().item() / math.sqrt(values.numel()) if bool((values != values[0]).any()) else 0.0
    if not se > 0:
        return f"{mean:.{decimals}f}"
    decimals = max(decimals, 1 - math.floor(math.log10(se)))
    return f"{mean:.{decimals}f} ± {se:.{decimals}f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _exact_toy_nll(name: str, x: torch.Tensor):
    """(per-point NLL under the true density, what it is) for the toys whose density is known in
    closed form: the checkerboard (1/8 on each of its 8 black unit squares) and the Gaussian
    mixtures. None for the others (moons, swiss roll, rings: noise-blurred curves, no closed form)."""
    from ..data import CHECKERBOARD_LOG_DENSITY, checkerboard_log_prob, toy_mixture
    x = x.double().cpu()
    if name == "checkerboard":
        return -checkerboard_log_prob(x), (f"the true density is 1/8 on the 8 black unit squares, so every point's "
                                           f"NLL is log 8 = {-CHECKERBOARD_LOG_DENSITY:.4f}")
    if name in ("gmm", "8gaussians"):
        return -toy_mixture(name).log_prob(x), f"the same points under the true {name} mixture density"
    return None


def _int_list(text: str, flag: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag} must be comma-separated positive integers, got {text!r}")
    return values
