"""The commands that bring in what a run did not make: ``scoresde import`` (a pretrained
score_sde_pytorch or diffusers model, written as a run directory) and ``scoresde evaluate`` (sample
quality against a reference: a data split, a statistics file or images)."""
from __future__ import annotations

import os
import sys


def cmd_import(args) -> int:
    """``scoresde import score-sde CHECKPOINT --config NAME [--set KEY=VALUE]... --workdir RUN_DIR
    [--data-root DIR]`` and ``scoresde import diffusers FOLDER --workdir RUN_DIR``: a pretrained model
    written as a run directory that every other command reads (nothing is written on an error)."""
    if args.source == "score-sde":
        from ..pretrained.score_sde import from_score_sde
        run = from_score_sde(args.checkpoint, args.config, overrides=args.set, workdir=args.workdir,
                             data_root=args.data_root)
        what = f"score_sde_pytorch checkpoint {args.checkpoint} ({args.config}"
        what += "".join(f" --set {item}" for item in args.set) + ")"
    else:
        try:
            from ..pretrained.diffusers import from_diffusers
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
    from ..evaluate import _metric_list, digits_feature_net, evaluate, report_lines, run_config
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
