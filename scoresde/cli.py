"""The ``scoresde`` command (also ``python -m scoresde``): train, sample, likelihood, compare, demo, import.

Every failure the user can cause ends in one line ``scoresde: error: ...`` on stderr and exit
status 2, never a traceback (set SCORESDE_DEBUG=1 to see one); nothing is written before the
inputs have been checked.
"""
from __future__ import annotations

import argparse
import functools
import io as _io
import math
import os
import sys
from typing import List, Optional

import torch

from . import io
from .config import load_config, resolve_config

# ---- commands ----------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from .config import NEEDS_ROOT
    from .resume import plan_resume
    from .train import train
    path = resolve_config(args.config)
    workdir = args.workdir or os.path.join("runs", os.path.splitext(os.path.basename(path))[0])
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if args.resume:
        # the run's saved config wins over CONFIG; values change only through --set (see plan_resume)
        plan = plan_resume(path, workdir, args.set)
        cfg = plan.config
    else:
        cfg = load_config(path, args.set)
        if io.list_checkpoints(os.path.join(workdir, "checkpoints")):
            raise ValueError(f"{workdir} already holds a run (checkpoints/); pass --resume to continue it or choose another --workdir")
    root = cfg.data.root
    if cfg.data.name in NEEDS_ROOT and not os.path.isdir(os.path.expanduser(root)):
        # checked here rather than by the reader, so that the message names the key to fix
        raise ValueError(f"data.root {root!r}: not an existing folder (data.name {cfg.data.name} reads its files there)")
    _check_writable(workdir)
    if args.resume and main_rank and plan.saved_from is not None:
        if plan.ignored:
            values = ", ".join(f"{k}: {mine!r} (run: {theirs!r})" for k, mine, theirs in plan.ignored)
            print(f"warning: --resume keeps the run's saved config {plan.saved_from}; ignoring where {path} "
                  f"differs from it: {values}; change a value with --set KEY=VALUE", file=sys.stderr)
        for key, old, new in plan.changes:
            print(f"changed {key}: {old!r} -> {new!r}")
    result = train(cfg, workdir, resume=args.resume, progress=not args.quiet, log=print if main_rank else None)
    if main_rank:
        print(f"{workdir}: step {result['step']}, {result['status']}")
    return 0


def cmd_sample(args) -> int:
    import time
    from .options import parse_options
    from .plot import save_samples
    from .run import load
    from .sampling import SAMPLERS, sample
    from .sampling._ode import Counter
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
    if adaptive:
        rtol, atol = _option_or_default(fn, options, "rtol"), _option_or_default(fn, options, "atol")
        if args.steps is not None and main_rank:
            print(f"scoresde: warning: --steps is ignored by {_sampler_label(args.sampler, fn, options)}, an adaptive "
                  f"solver: rtol={rtol:g}, atol={atol:g} set its cost (--option rtol=... --option atol=...)",
                  file=sys.stderr)
        steps = None
    else:
        steps = args.steps or run.config.sample.steps
    if folder:
        from .generate import DEFAULT_BATCH_SIZE, generate
        generate(run, args.num, out, sampler=args.sampler, steps=steps,
                 batch_size=args.batch_size or DEFAULT_BATCH_SIZE, seed=args.seed, options=options,
                 shard_size=args.shard_size, png=args.png, eps=run.config.sample.eps, device=device,
                 progress=not args.quiet)
        return 0
    # NFE counted around the score on the host (no device sync): every sampler, denoising step included
    counted = Counter(run.score_fn)
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
        save_samples(x, SimpleNamespace(data_range=run.data_range), out,
                     title=f"{_sampler_label(args.sampler, fn, options)}, {cost}")
    print(f"{args.sampler}: {args.num} samples, NFE {counted.nfe}, {seconds:.2f} s -> {out}")
    if clipped:
        lo, hi = run.data_range
        print(f"clipped {clipped} of {x.numel()} values ({clipped / x.numel():.2%}) to the data range [{lo:g}, {hi:g}]")
    return 0


def cmd_likelihood(args) -> int:
    from .likelihood import bits_per_dim, log_likelihood
    from .run import load, load_data
    run = load(args.run_dir, device=args.device)
    data = load_data(run.config, args.split, n=args.num, generator=torch.Generator().manual_seed(args.seed + 1))
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    estimator = args.estimator or ("exact" if math.prod(run.data_shape) <= 16 else "hutchinson")
    how = f"{estimator} trace"
    if args.num == 1:
        how = "one example, so no standard error; " + how
    if data.is_image:
        pixels = data.pixels[: args.num].to(args.device)
        res = bits_per_dim(run.score_fn, run.sde, pixels, data_range=data.data_range, estimator=estimator,
                           generator=g, progress=not args.quiet)
        bpd = res.bpd.double().cpu()
        D = pixels[0].numel()
        # the model's own NLL depends on its data range; on the 8-bit scale it is comparable across runs
        nats = bpd * (D * math.log(2.0))
        print(f"{args.split}: {_count(len(bpd), 'image')}, bits/dim {_mean_se(bpd, 4)}; NLL on the 0–255 scale "
              f"{_mean_se(nats, 2)} nats per image (= bits/dim · D · ln 2, D = {D}); {how}, NFE {res.nfe}")
    else:
        x = data.data[: args.num].to(args.device)
        res = log_likelihood(run.score_fn, run.sde, x, estimator=estimator, generator=g, progress=not args.quiet)
        nll = -res.logp.double().cpu()
        print(f"{args.split}: {_count(len(nll), 'point')}, NLL {_mean_se(nll, 4)} nats on the data scale; "
              f"{how}, NFE {res.nfe}")
        exact = _exact_toy_nll(run.config.data.name, data.data[: args.num])
        if exact is not None:
            values, why = exact
            print(f"exact: {_mean_se(values, 4)} nats ({why})")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare, report, select_methods, write_outputs
    from .data import on_checkerboard, toy_mixture
    from .run import load, load_data
    steps = _int_list(args.steps, "--steps")
    methods = select_methods(args.sampler, args.option)  # checked before anything is loaded or written
    run = load(args.run_dir, device=args.device)
    name = run.config.data.name
    # held-out data: the reference, and a disjoint set of the same size for the noise floor
    data = load_data(run.config, "test", n=2 * args.num, generator=torch.Generator().manual_seed(args.seed + 1)).data
    half = min(args.num, len(data) // 2)
    rows = compare(run.score_fn, run.sde, data[:half], num=args.num, steps=steps, methods=methods, seed=args.seed,
                   device=args.device, on_target=on_checkerboard if name == "checkerboard" else None,
                   mixture=toy_mixture(name) if name in ("gmm", "8gaussians") else None,
                   floor_data=data[half: 2 * half], progress=not args.quiet)
    paths = write_outputs(rows, args.out or os.path.join(args.run_dir, "compare"))
    print(report(rows))
    print(f"wrote {paths['table']}, {paths['json']}, {paths['plot']}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    report = run_demo(args.workdir, overrides=args.set, quick=args.quick, progress=not args.quiet)
    print(f"report: {report}")
    return 0


def cmd_import(args) -> int:
    """``scoresde import score-sde CHECKPOINT --config NAME [--set KEY=VALUE]... --workdir RUN_DIR
    [--data-root DIR]`` and ``scoresde import diffusers FOLDER --workdir RUN_DIR``: a pretrained model
    written as a run directory that every other command reads (nothing is written on an error)."""
    if args.source == "score-sde":
        from .pretrained.score_sde import from_score_sde
        run = from_score_sde(args.checkpoint, args.config, overrides=args.set, workdir=args.workdir,
                             data_root=args.data_root)
        what = f"score_sde_pytorch checkpoint {args.checkpoint} ({args.config}"
        what += "".join(f" --set {item}" for item in args.set) + ")"
    else:
        try:
            from .pretrained.diffusers import from_diffusers
        except ImportError:
            raise ValueError("import diffusers: not available in this installation") from None
        run = from_diffusers(args.folder, workdir=args.workdir)
        what = f"diffusers folder {args.folder}"
    m = run.config.model
    params = sum(p.numel() for p in run.net.parameters())
    print(f"{args.workdir}: imported {what}, step {run.step}: {run.config.sde.type} SDE, {m['name']} network "
          f"({params:,} parameters, {m['parameterization']} of {m.get('conditioning') or 'time'}), data "
          f"{run.config.data.name} {'x'.join(map(str, run.data_shape))} on [{run.data_range[0]:g}, {run.data_range[1]:g}]")
    return 0


def cmd_evaluate(args) -> int:
    """``scoresde evaluate [RUN_DIR] --samples PATH [--reference train|test|STATS.npz|IMAGES] [--metrics
    fid,kid,is] [--feature-net inception|digits]``: sample quality against a reference (scoresde.evaluate)."""
    from .evaluate import _metric_list, digits_feature_net, evaluate, report_lines, run_config
    metrics = _metric_list(args.metrics)
    reference = args.reference
    if reference is None:
        if args.run_dir is None:
            raise ValueError("--reference is needed without a RUN_DIR: a statistics .npz, or images (a folder or .npz)")
        reference = "train"
    if reference in ("train", "test") and args.run_dir is None:
        raise ValueError(f"--reference {reference}: a split of a run's data; pass the RUN_DIR")
    if args.inception_weights is not None and args.feature_net != "inception":
        raise ValueError(f"--inception-weights: only for --feature-net inception (not {args.feature_net})")
    cfg = run_config(args.run_dir) if args.run_dir is not None else None
    feature_net = digits_feature_net(device=args.device) if args.feature_net == "digits" else None
    cache = args.cache_dir or (os.path.join(args.run_dir, "eval") if args.run_dir is not None else None)
    result = evaluate(args.samples, reference, metrics=metrics, feature_net=feature_net, config=cfg,
                      batch_size=args.batch_size, device=args.device, cache=cache,
                      inception_weights=args.inception_weights, progress=not args.quiet,
                      log=lambda line: print(f"scoresde: {line}", file=sys.stderr))
    for line in report_lines(result, warnings=False):
        print(line)
    for line in result["warnings"]:
        print(f"scoresde: warning: {line}", file=sys.stderr)
    return 0


def cmd_train_classifier(args) -> int:
    """``scoresde train-classifier digits [--out PATH] [--steps N] [--seed S]``: train the digits
    classifier of FD-digits (scoresde.classifier), report its test accuracy and write its weights."""
    import time
    from .classifier import train_digits_classifier
    _check_writable(os.path.dirname(os.path.abspath(args.out)))
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out}: is a folder, expected a .safetensors file path")
    start = time.perf_counter()
    net = train_digits_classifier(args.out, steps=args.steps, seed=args.seed, log=None if args.quiet else print)
    m = net.metadata
    print(f"{args.out}: digits classifier, {args.steps} steps, seed {args.seed}: test accuracy "
          f"{100 * m['test_accuracy']:.2f}% (train {100 * m['train_accuracy']:.2f}%), "
          f"{time.perf_counter() - start:.1f} s")
    return 0


# ---- plumbing ----------------------------------------------------------------------------------

def _adaptive(name: str, fn, options: dict) -> bool:
    """Whether the sampler's cost is set by rtol/atol rather than --steps (as ``sampling.sample`` decides)."""
    from .sampling import ADAPTIVE, ADAPTIVE_METHODS
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
    se = values.std().item() / math.sqrt(values.numel()) if values.numel() > 1 else 0.0
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
    from .data import CHECKERBOARD_LOG_DENSITY, checkerboard_log_prob, toy_mixture
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


def _check_writable(workdir: str) -> None:
    parent = os.path.abspath(workdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir}: {parent} is not a writable directory")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _printable(message: str) -> str:
    """One line: control characters a user typed (a stray \\r, an escape) shown escaped."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(message))
    return " ".join(text.split())


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own usage dump is noise here)
        sys.stderr.write(f"{self.prog}: error: {_printable(message)}\n")
        sys.exit(2)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each option's help, except where it says nothing: no default
    (None), an off flag, an empty repeatable list, or a help text that already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default  # by identity: a default of 0 is worth showing, False (an off flag) is not
        if d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d) or "(default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .sampling import SAMPLERS
    p = _Parser(prog="scoresde", description="Score-based generative models through SDEs: train, sample, "
                                             "compare samplers, compute likelihoods.",
                formatter_class=_HelpFormatter)
    # every subcommand's --help shows its defaults (a subparser may still pass its own formatter_class)
    sub = p.add_subparsers(dest="command", metavar="COMMAND",
                           parser_class=functools.partial(_Parser, formatter_class=_HelpFormatter))
    sub.required = True

    t = sub.add_parser("train", help="train a score model from a YAML config")
    t.add_argument("config", help="a YAML config file, or the name of a bundled one (toy_vp, digits_vp, ...)")
    t.add_argument("--workdir", help="run directory (default runs/<config name>)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.steps=1e3 (repeatable; with --resume, "
                        "the only way to change a value of the run)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the newest readable checkpoint in --workdir with the run's saved config "
                        "(RUN/config.yaml): CONFIG's differing values are ignored (and listed), values change "
                        "only through --set, and sde/model/data may not change; without a checkpoint, start fresh")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    device_help = "auto (CUDA when present, else the CPU), cpu, cuda or cuda:K (default auto, as train.device)"
    run_dir_help = "a run directory made by `scoresde train` or `scoresde import` (its newest readable checkpoint) or one checkpoint directory"
    s = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Draw samples from a trained run and save them as a plot (.png) or an array (.npz), "
                                   "or, with a folder --out, as resumable shards: shard_<k>.npz of --shard-size samples "
                                   "(uint8 images (n, H, W, C), or float points), sample i drawn from seed --seed + i, "
                                   "so its noise depends neither on the number of processes (torchrun "
                                   "--nproc_per_node=K -m scoresde sample ... splits the shards) nor on the batch size; "
                                   "rerunning the command skips the complete shards. Prints the score evaluations (NFE) and the wall time; "
                                   "image samples are clipped to the data range, and how many values were clipped is "
                                   "reported.")
    s.add_argument("run_dir", help=run_dir_help)
    s.add_argument("--sampler", default="probability_flow", choices=tuple(SAMPLERS), help="the sampling method")
    s.add_argument("--steps", type=_positive,
                   help="steps of a fixed-grid sampler (default: the run's sample.steps); adaptive solvers "
                        "(probability_flow with an adaptive method, adaptive_sde) ignore it: set --option rtol/atol")
    # --num-samples first: torchrun's parser takes --num as a prefix of its --numa-binding
    s.add_argument("--num-samples", "--num", dest="num", type=_positive, default=64, metavar="N",
                   help="number of samples (--num is an alias)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the sampler, e.g. --option eta=0.5 (ddim), --option method=rk4 or "
                        "--option rtol=1e-3 (probability_flow); repeatable")
    s.add_argument("--out", default="samples.png",
                   help="output .png (plot) or .npz (array 'samples'), or a folder of shards (a name without an extension)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the prior draw and the sampler's noise (folder --out: sample i uses seed + i)")
    s.add_argument("--batch-size", type=_positive, metavar="B",
                   help="folder --out only: samples drawn together (default 500); it sets memory and speed, not the "
                        "samples' noise")
    s.add_argument("--shard-size", type=_positive, metavar="S",
                   help="folder --out only: samples per shard file (default 1000)")
    s.add_argument("--png", action="store_true", help="folder --out of an image run: also png/<index>.png per sample")
    s.add_argument("--device", default="auto",
                   help=device_help + "; under torchrun, auto/cuda/cuda:0 put each process on its LOCAL_RANK GPU")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

    lk = sub.add_parser("likelihood", help="PF-ODE negative log-likelihood (nats; bits/dim for images)",
                        description="Negative log-likelihood of held-out data through the probability-flow ODE, "
                                    "mean ± standard error over the examples: nats on the data's own scale for "
                                    "2-D toys (with the exact value where the toy's density is known), bits/dim "
                                    "and nats per image on the 0-255 scale for images.")
    lk.add_argument("run_dir", help=run_dir_help)
    lk.add_argument("--split", default="test", choices=("train", "test"), help="which split of the run's data")
    lk.add_argument("--num-samples", "--num", dest="num", type=_positive, default=1000, metavar="N",
                    help="number of data points (--num is an alias)")
    lk.add_argument("--estimator", choices=("exact", "hutchinson"),
                    help="trace estimator (default: exact for dimension <= 16, else hutchinson)")
    lk.add_argument("--seed", type=int, default=0, help="seed of the Hutchinson probes and the dequantization")
    lk.add_argument("--device", default="auto", help=device_help)
    lk.add_argument("--quiet", action="store_true", help="no progress bar")
    lk.set_defaults(func=cmd_likelihood)

    c = sub.add_parser("compare", help="every sampler at several step counts: NFE, time, quality",
                       description="Run the samplers at several step counts (adaptive ones at several tolerances) "
                                   "from one prior draw and measure each against held-out data: energy distance, "
                                   "sliced W2 (and the fraction on the support for the checkerboard, mode weights "
                                   "and mean log-density for the Gaussian-mixture toys), each ± one standard error; "
                                   "the noise floor (the same metrics for held-out data itself); and a verdict that "
                                   "names a best sampler only when it leads all others by more than 2 combined "
                                   "standard errors. Writes compare.md, compare.json and compare.png.")
    c.add_argument("run_dir", help=run_dir_help)
    c.add_argument("--steps", default="10,20,50,100,200", help="comma-separated step counts of the fixed-step samplers")
    c.add_argument("--num-samples", "--num", dest="num", type=_positive, default=2000, metavar="N",
                   help="samples per sampler and setting, and held-out points in the reference and in the "
                        "noise floor's set each (--num is an alias)")
    c.add_argument("--sampler", action="append", default=[], choices=tuple(SAMPLERS), metavar="NAME",
                   help=f"only the methods of this sampler (repeatable; one of {', '.join(SAMPLERS)}; "
                        "default: every sampler)")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword for every selected sampler, e.g. --sampler ddim --option eta=0.5; each must "
                        "accept it (repeatable; default: none)")
    c.add_argument("--out", help="output directory (default RUN_DIR/compare)")
    c.add_argument("--seed", type=int, default=0, help="seed of the prior draw, the samplers' noise and the data")
    c.add_argument("--device", default="auto", help=device_help)
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="train on the checkerboard, compare samplers, compute the NLL, write a report")
    d.add_argument("--workdir", default=os.path.join("runs", "demo"))
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    d.add_argument("--quick", action="store_true", help="a tiny run (seconds) that exercises every stage")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    im = sub.add_parser("import", help="a pretrained model (score_sde_pytorch, diffusers) as a run directory",
                        description="Write a pretrained model as a normal run directory (config.yaml and a checkpoint "
                                    "in the trainer's format, with where it came from in its meta.json) that sample, "
                                    "likelihood, compare and scoresde.load read unchanged. Checkpoints are read with "
                                    "torch.load(weights_only=True) only: anything that needs more is refused unread.")
    im_sub = im.add_subparsers(dest="source", metavar="SOURCE",
                               parser_class=functools.partial(_Parser, formatter_class=_HelpFormatter))
    im_sub.required = True
    ss = im_sub.add_parser("score-sde", help="an official score_sde_pytorch checkpoint (EMA weights)",
                           description="An official score_sde_pytorch checkpoint (checkpoint_<k>.pth: model, ema, "
                                       "optimizer, step) with the name of the reference config it was trained with; "
                                       "its EMA weights, SDE, network and data become the run's.")
    ss.add_argument("checkpoint", metavar="CHECKPOINT", help="the reference's checkpoint file (.pth)")
    ss.add_argument("--config", required=True, metavar="NAME",
                    help="the reference config, as its path under score_sde_pytorch's configs/, e.g. "
                         "vp/cifar10_ddpmpp_continuous, subvp/cifar10_ddpmpp_deep_continuous, "
                         "ve/cifar10_ncsnpp_continuous, vp/ddpm/cifar10_continuous")
    ss.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a key of the reference config's model section, e.g. --set nf=32 --set "
                         "ch_mult=[1,2] --set num_res_blocks=2 (repeatable)")
    ss.add_argument("--workdir", required=True, metavar="RUN_DIR",
                    help="the run directory to write (refused if it already holds a run)")
    ss.add_argument("--data-root", metavar="DIR",
                    help="the data set's folder (data.root; e.g. CIFAR-10's cifar-10-batches-bin): likelihood and "
                         "compare read it, sampling does not (default: none; set it later in RUN_DIR/config.yaml)")
    ss.set_defaults(func=cmd_import)
    df = im_sub.add_parser("diffusers", help="a diffusers UNet2DModel folder with its scheduler config",
                           description="A diffusers pipeline or model folder: a UNet2DModel with its scheduler "
                                       "config (DDPM/DDIM -> VP, ScoreSdeVe -> VE).")
    df.add_argument("folder", metavar="FOLDER", help="the diffusers folder")
    df.add_argument("--workdir", required=True, metavar="RUN_DIR",
                    help="the run directory to write (refused if it already holds a run)")
    df.set_defaults(func=cmd_import)

    ev = sub.add_parser("evaluate", help="FID, KID, IS (Inception, scoresde[eval]) or FD in a feature net's space",
                        description="Sample quality of generated images against a reference: FID, KID (mean ± std "
                                    "over subsets), Inception Score (mean ± std over splits) and precision/recall in "
                                    "torch-fidelity's Inception-v3 space (pip install 'scoresde[eval]'; weights from "
                                    "torch.hub's cache, $TORCH_HOME/hub/checkpoints, or --inception-weights), or "
                                    "the same in the digits classifier's space (--feature-net digits: FD-digits, "
                                    "offline). A data split's statistics are computed once and cached. Warns when "
                                    "a set is below 10,000 images for FID (5 x the feature dimension for another "
                                    "network): FID is biased upward at small N, so compare numbers of equal N.")
    ev.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                    help="the run the samples came from: its data for --reference train/test, the data range of "
                         "float samples, and the cache folder RUN_DIR/eval (optional with a --reference file)")
    ev.add_argument("--samples", required=True, metavar="PATH",
                    help="a folder written by `scoresde sample --out DIR`, a folder of .npz files or one .npz "
                         "(uint8 images (N, H, W, C) or (N, C, H, W); floats in the run's data range)")
    ev.add_argument("--reference", metavar="train|test|PATH",
                    help="a split of RUN_DIR's data (default: train), a statistics .npz (scoresde's mu/sigma/"
                         "features, pytorch-fid's mu/sigma, score_sde's pool_3, e.g. cifar10_stats.npz), or images")
    ev.add_argument("--metrics", default="fid,kid,is", help="comma-separated: fid, kid, is, pr (precision/recall)")
    ev.add_argument("--feature-net", default="inception", choices=("inception", "digits"),
                    help="inception: torch-fidelity's Inception-v3 (FID, KID, IS); digits: the shipped digits "
                         "classifier (FD-digits, KID-digits, IS-digits)")
    ev.add_argument("--inception-weights", metavar="PATH",
                    help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (default: torch.hub's cache "
                         "$TORCH_HOME/hub/checkpoints/, downloaded there when missing and online)")
    ev.add_argument("--cache-dir", metavar="DIR", help="where data-split statistics are cached (default RUN_DIR/eval)")
    ev.add_argument("--batch-size", type=_positive, default=200, help="images per feature-network batch")
    ev.add_argument("--device", default="auto", help=device_help)
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)

    tc = sub.add_parser("train-classifier", help="train the digits classifier behind FD-digits",
                        description="Train the small CNN classifier of the 8x8 digits whose features FD-digits "
                                    "compares (scoresde.classifier; the package ships one, trained with the "
                                    "defaults): deterministic on the CPU for a seed, about 5 s on one core. Prints "
                                    "the test accuracy and writes the weights and training metadata as one "
                                    "safetensors file (atomically).")
    tc.add_argument("dataset", choices=("digits",), help="the data set (digits: scikit-learn's bundled 8x8 digits)")
    tc.add_argument("--out", default=os.path.join("runs", "digits_classifier.safetensors"),
                    help="the .safetensors file to write")
    tc.add_argument("--steps", type=_positive, default=500, help="optimizer steps (batches of 128)")
    tc.add_argument("--seed", type=int, default=0, help="seed of the initialization, the batches and the shifts")
    tc.add_argument("--quiet", action="store_true", help="no progress lines")
    tc.set_defaults(func=cmd_train_classifier)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:
            from .run import resolve_device
            args.device = resolve_device(args.device, what="--device")
        return args.func(args)
    except KeyboardInterrupt as e:
        print("scoresde: interrupted" + (f": {_printable(e)}" if str(e) else ""), file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        print(f"scoresde: error: {_printable(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
