"""Train a small U-Net score model on the 8x8 digits, report test bits/dim, save a sample grid.

configs/digits_vp.yaml (VP-SDE, scikit-learn's bundled digits: nothing to download). Bits/dim are
measured on the held-out test images through the probability-flow ODE with Hutchinson's trace
estimator, on the 0-255 scale with uniform dequantization (scoresde.bits_per_dim), i.e. comparable
with the numbers in the papers. For scale: a uniform model of 8-bit pixels has 8 bits/dim.

    python examples/train_digits.py                 # 1000 steps, a few minutes on a CPU
    python examples/train_digits.py --steps 3000    # the config's full run: better samples
    python examples/train_digits.py --quick         # a tiny U-Net, seconds
"""
import argparse
import math
import os
import time

import torch

import scoresde as sd
from scoresde import plot, sampling
from scoresde.config import load_config
from scoresde.data import load_dataset

from _common import config_path, default_workdir, run_main, train_or_reuse, write_json

QUICK = ["train.steps=30", "train.batch_size=32", "train.warmup=5", "train.log_every=10", "train.ema_decay=0.5",
         "train.checkpoint_every=30", "model.channels=8", "model.attn_resolutions=[]"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000; the config says 3000)")
    p.add_argument("--num-test", type=int, default=300, help="test images for bits/dim (the test split has 300)")
    p.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workdir", default=default_workdir("train_digits"))
    args = p.parse_args(argv)

    overrides = QUICK if args.quick else [f"train.steps={args.steps}"]
    cfg = load_config(config_path("digits_vp"), overrides)
    print(f"training {cfg.train.steps} steps: digits 8x8, VP-SDE, U-Net -> {args.workdir}")
    t0 = time.time()
    result = train_or_reuse(cfg, args.workdir, progress=not args.quiet)
    train_seconds = time.time() - t0
    print(f"step {result['step']}: {result['status']} ({train_seconds:.0f} s)")
    run = sd.load(args.workdir)

    # Test bits/dim: PF-ODE (dopri5) with one Rademacher probe per image.
    n_test = 8 if args.quick else args.num_test
    tol = 1e-3 if args.quick else 1e-5
    pixels = load_dataset("digits", "test").pixels[:n_test]
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    res = sd.bits_per_dim(run.score_fn, run.sde, pixels, data_range=run.data_range, estimator="hutchinson",
                          rtol=tol, atol=tol, generator=g, progress=not args.quiet)
    bpd_seconds = time.time() - t0
    bpd = res.bpd.double()
    bpd_mean, bpd_se = bpd.mean().item(), bpd.std().item() / math.sqrt(len(bpd))
    print(f"test bits/dim {bpd_mean:.3f} ± {bpd_se:.3f} on {n_test} images (Hutchinson, NFE {res.nfe}, {bpd_seconds:.0f} s)")

    # A sample grid: the config's sampler (the probability-flow ODE).
    num = 16 if args.quick else cfg.sample.num
    options = dict(rtol=tol, atol=tol) if cfg.sample.sampler == "probability_flow" else {}
    with torch.no_grad():
        x = sampling.sample(cfg.sample.sampler, run.score_fn, run.sde, (num,) + run.data_shape,
                            steps=cfg.sample.steps, generator=torch.Generator().manual_seed(1), **options)
    png = plot.image_grid(x, os.path.join(args.workdir, "samples.png"), data_range=run.data_range,
                          title=f"{cfg.sample.sampler}, {run.step} training steps")
    write_json(os.path.join(args.workdir, "summary.json"), {
        "train_steps": run.step, "train_seconds": train_seconds, "test_images": n_test,
        "test_bits_per_dim": bpd_mean, "test_bits_per_dim_se": bpd_se, "likelihood_nfe": res.nfe,
        "likelihood_rtol": tol, "likelihood_seconds": bpd_seconds, "samples": num})
    print(f"wrote {png} and summary.json")


if __name__ == "__main__":
    run_main(main)
