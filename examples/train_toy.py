"""Train a score model on a 2-D toy data set, sample it, and plot the samples next to the data.

The whole pipeline in one page: configs/toy_<sde>.yaml with overrides -> scoresde.train.train ->
scoresde.load -> the config's sampler -> a scatter plot and sample-quality numbers (energy distance
to held-out data, next to the distance between two independent draws of the data: its noise floor).

    python examples/train_toy.py                          # checkerboard, VP-SDE (a few minutes)
    python examples/train_toy.py --dataset moons --sde ve
    python examples/train_toy.py --quick                  # a tiny run, seconds
"""
import argparse
import os
import time

import torch

import scoresde as sd
from scoresde import metrics, plot, sampling
from scoresde.config import load_config
from scoresde.data import TOYS, load_dataset, on_checkerboard

from _common import config_path, default_workdir, run_main, train_or_reuse, write_json

# --quick: a small network and a short run (the point is that it runs end to end, not quality)
QUICK = ["train.steps=300", "train.batch_size=256", "train.warmup=20", "train.log_every=50",
         "train.checkpoint_every=300", "train.ema_decay=0.95", "data.n_train=5000", "model.hidden=64", "model.depth=2",
         "model.embed_dim=32"]


def toy_config(dataset: str = "checkerboard", sde: str = "vp", quick: bool = False, steps: int = None, extra=()):
    """configs/toy_<sde>.yaml on ``dataset`` (shrunk with --quick, ``steps`` if given, ``extra`` overrides)."""
    overrides = [f"data.name={dataset}"] + (QUICK if quick else []) + list(extra)
    if steps:
        overrides.append(f"train.steps={steps}")
    return load_config(config_path(f"toy_{sde}"), overrides)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=TOYS, default="checkerboard")
    p.add_argument("--sde", choices=("vp", "subvp", "ve"), default="vp")
    p.add_argument("--steps", type=int, help="training steps (default: the config's train.steps)")
    p.add_argument("--num", type=int, default=2000, help="samples to draw (default 2000)")
    p.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workdir", default=default_workdir("train_toy"))
    args = p.parse_args(argv)

    cfg = toy_config(args.dataset, args.sde, args.quick, args.steps)
    print(f"training {cfg.train.steps} steps: {args.dataset}, {args.sde.upper()}-SDE, MLP -> {args.workdir}")
    t0 = time.time()
    result = train_or_reuse(cfg, args.workdir, progress=not args.quiet)
    train_seconds = time.time() - t0
    print(f"step {result['step']}: {result['status']} ({train_seconds:.0f} s)")

    run = sd.load(args.workdir)
    num = min(args.num, 500) if args.quick else args.num
    steps = min(cfg.sample.steps, 50) if args.quick else cfg.sample.steps
    what = "dopri5" if cfg.sample.sampler == "probability_flow" else f"{steps} steps"
    print(f"sampling {num} points with {cfg.sample.sampler} ({what})")
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    with torch.no_grad():
        x = sampling.sample(cfg.sample.sampler, run.score_fn, run.sde, (num, 2), steps=steps, generator=g,
                            progress=not args.quiet)
    sample_seconds = time.time() - t0

    test = load_dataset(args.dataset, "test", n=num).data
    other = load_dataset(args.dataset, "test", n=num, generator=torch.Generator().manual_seed(999)).data
    summary = {
        "dataset": args.dataset, "sde": args.sde, "train_steps": run.step, "train_seconds": train_seconds,
        "sampler": cfg.sample.sampler, "sample_steps": steps, "num": num, "sample_seconds": sample_seconds,
        "energy_distance": metrics.energy_distance(x, test),
        "energy_distance_floor": metrics.energy_distance(other, test),
        "sliced_wasserstein": metrics.sliced_wasserstein(x, test, generator=torch.Generator().manual_seed(0)),
    }
    if args.dataset == "checkerboard":
        summary["on_board"] = on_checkerboard(x).float().mean().item()
    png = plot.scatter_panels({f"{args.dataset} (test data)": test, f"{cfg.sample.sampler} samples": x},
                              os.path.join(args.workdir, "samples.png"),
                              title=f"{args.sde.upper()}-SDE, {run.step} training steps")
    write_json(os.path.join(args.workdir, "summary.json"), summary)
    print(f"energy distance to test data {summary['energy_distance']:.4f} "
          f"(two draws of the data: {summary['energy_distance_floor']:.4f})"
          + (f", on the board {100 * summary['on_board']:.1f}%" if "on_board" in summary else ""))
    print(f"wrote {png} and summary.json")


if __name__ == "__main__":
    run_main(main)
