"""The commands that train: ``scoresde train`` (a score model from a YAML config, or --resume),
``scoresde demo`` (the checkerboard end to end) and ``scoresde train-classifier`` (the digits
classifier behind FD-digits)."""
from __future__ import annotations

import os
import sys

from .. import io
from ..config import load_config, resolve_config


def cmd_train(args) -> int:
    from ..config import NEEDS_ROOT
    from ..resume import plan_resume
    from ..train import train
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


def cmd_demo(args) -> int:
    from ..demo import run_demo
    report = run_demo(args.workdir, overrides=args.set, quick=args.quick, progress=not args.quiet)
    print(f"report: {report}")
    return 0


def cmd_train_classifier(args) -> int:
    """``scoresde train-classifier digits [--out PATH] [--steps N] [--seed S]``: train the digits
    classifier of FD-digits (scoresde.classifier), report its test accuracy and write its weights."""
    import time
    from ..classifier import train_digits_classifier
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


def _check_writable(workdir: str) -> None:
    parent = os.path.abspath(workdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir}: {parent} is not a writable directory")
