"""The ``scoresde`` command (also ``python -m scoresde``): train, sample, likelihood, compare, demo.

Every failure the user can cause ends in one line ``scoresde: error: ...`` on stderr and exit
status 2, never a traceback (set SCORESDE_DEBUG=1 to see one); nothing is written before the
inputs have been checked.
"""
from __future__ import annotations

import argparse
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
    from .train import train
    path = resolve_config(args.config)
    cfg = load_config(path, args.set)
    workdir = args.workdir or os.path.join("runs", os.path.splitext(os.path.basename(path))[0])
    if io.list_checkpoints(os.path.join(workdir, "checkpoints")) and not args.resume:
        raise ValueError(f"{workdir} already holds a run (checkpoints/); pass --resume to continue it or choose another --workdir")
    _check_writable(workdir)
    result = train(cfg, workdir, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{workdir}: step {result['step']}, {result['status']}")
    return 0


def cmd_sample(args) -> int:
    from .plot import save_samples
    from .sampling import sample
    from .run import load
    out = args.out
    if not out.endswith((".png", ".npz")):
        raise ValueError(f"--out must end in .png or .npz, got {out!r}")
    run = load(args.run_dir, device=args.device)
    steps = args.steps or run.config.sample.steps
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        x = sample(args.sampler, run.score_fn, run.sde, (args.num,) + run.data_shape, steps=steps,
                   eps=run.config.sample.eps, generator=g, device=args.device, progress=not args.quiet)
    x = x.cpu()
    if out.endswith(".npz"):
        import numpy as np
        buf = _io.BytesIO()
        np.savez(buf, samples=x.numpy())
        io.atomic_write_bytes(out, buf.getvalue())
    else:
        from types import SimpleNamespace
        save_samples(x, SimpleNamespace(data_range=run.data_range), out, title=f"{args.sampler}, {steps} steps")
    print(out)
    return 0


def cmd_likelihood(args) -> int:
    from .likelihood import bits_per_dim, log_likelihood
    from .run import load, load_data
    run = load(args.run_dir, device=args.device)
    data = load_data(run.config, args.split, n=args.num, generator=torch.Generator().manual_seed(args.seed + 1))
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    estimator = args.estimator or ("exact" if math.prod(run.data_shape) <= 16 else "hutchinson")
    if data.is_image:
        pixels = data.pixels[: args.num].to(args.device)
        res = bits_per_dim(run.score_fn, run.sde, pixels, data_range=data.data_range, estimator=estimator, generator=g)
        nll = -res.logp.double().cpu()
        bpd = res.bpd.double().cpu()
        print(f"{args.split}: {len(bpd)} images, bits/dim {bpd.mean():.4f} ± {bpd.std() / math.sqrt(len(bpd)):.4f}, "
              f"NLL {nll.mean():.2f} nats ({estimator} trace, NFE {res.nfe})")
    else:
        x = data.data[: args.num].to(args.device)
        res = log_likelihood(run.score_fn, run.sde, x, estimator=estimator, generator=g)
        nll = -res.logp.double().cpu()
        print(f"{args.split}: {len(nll)} points, NLL {nll.mean():.4f} ± {nll.std() / math.sqrt(len(nll)):.4f} nats "
              f"({estimator} trace, NFE {res.nfe})")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare, markdown_table, write_outputs
    from .data import on_checkerboard
    from .run import load, load_data
    run = load(args.run_dir, device=args.device)
    steps = _int_list(args.steps, "--steps")
    ref = load_data(run.config, "test", n=args.num, generator=torch.Generator().manual_seed(args.seed + 1)).data[: args.num]
    rows = compare(run.score_fn, run.sde, ref, num=args.num, steps=steps, seed=args.seed, device=args.device,
                   on_target=on_checkerboard if run.config.data.name == "checkerboard" else None,
                   progress=not args.quiet)
    paths = write_outputs(rows, args.out or os.path.join(args.run_dir, "compare"))
    print(markdown_table(rows))
    print(f"wrote {paths['table']}, {paths['plot']}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    report = run_demo(args.workdir, overrides=args.set, quick=args.quick, progress=not args.quiet)
    print(f"report: {report}")
    return 0


# ---- plumbing ----------------------------------------------------------------------------------

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


def build_parser() -> argparse.ArgumentParser:
    from .sampling import SAMPLERS
    p = _Parser(prog="scoresde", description="Score-based generative models through SDEs: train, sample, "
                                             "compare samplers, compute likelihoods.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a score model from a YAML config")
    t.add_argument("config", help="a YAML config file, or the name of a bundled one (toy_vp, digits_vp, ...)")
    t.add_argument("--workdir", help="run directory (default runs/<config name>)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.steps=100 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in --workdir")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    device_help = "auto (CUDA when present, else the CPU), cpu, cuda or cuda:K (default auto, as train.device)"
    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run_dir")
    s.add_argument("--sampler", default="probability_flow", choices=tuple(SAMPLERS))
    s.add_argument("--steps", type=_positive, help="steps (default: the run's sample.steps)")
    s.add_argument("--num", type=_positive, default=64)
    s.add_argument("--out", default="samples.png", help="output .png (plot) or .npz (array 'samples')")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", help=device_help)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)

    lk = sub.add_parser("likelihood", help="PF-ODE negative log-likelihood (nats; bits/dim for images)")
    lk.add_argument("run_dir")
    lk.add_argument("--split", default="test", choices=("train", "test"))
    lk.add_argument("--num", type=_positive, default=1000, help="number of data points")
    lk.add_argument("--estimator", choices=("exact", "hutchinson"), help="default: exact for dimension <= 16")
    lk.add_argument("--seed", type=int, default=0)
    lk.add_argument("--device", default="auto", help=device_help)
    lk.set_defaults(func=cmd_likelihood)

    c = sub.add_parser("compare", help="every sampler at several step counts: NFE, time, quality")
    c.add_argument("run_dir")
    c.add_argument("--steps", default="10,20,50,100,200", help="comma-separated step counts")
    c.add_argument("--num", type=_positive, default=2000)
    c.add_argument("--out", help="output directory (default RUN_DIR/compare)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto", help=device_help)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="train on the checkerboard, compare samplers, compute the NLL, write a report")
    d.add_argument("--workdir", default=os.path.join("runs", "demo"))
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    d.add_argument("--quick", action="store_true", help="a tiny run (seconds) that exercises every stage")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:
            from .run import resolve_device
            args.device = resolve_device(args.device, what="--device")
        return args.func(args)
    except KeyboardInterrupt:
        print("scoresde: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        print(f"scoresde: error: {_printable(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
