"""Compare reverse-SDE and probability-flow-ODE samplers on one trained model: quality vs NFE.

Every sampler starts from the same prior draw; quality is the energy distance (and sliced
Wasserstein) to held-out data, NFE is counted. On the checkerboard run this script trains, the ODE
samplers (DDIM, Heun, adaptive dopri5) reach the noise floor of the distance from 20-40 NFE and put
the most samples on the board; the SDE samplers (Euler-Maruyama, predictor-corrector, DDPM
ancestral) need about 50 steps. How they rank depends on the model: score errors of a poorly
trained one hurt the ODE samplers most. Writes compare.md, compare.json and compare.png
(scoresde.compare.write_outputs) and sde_vs_ode.md (the best of each family per step count).

    python examples/compare_samplers.py --run runs/examples/train_toy    # a run you trained
    python examples/compare_samplers.py                                  # trains a toy run first
    python examples/compare_samplers.py --quick
"""
import argparse
import os

import scoresde as sd
from scoresde.compare import ODE_METHODS, compare, markdown_table, write_outputs
from scoresde.data import on_checkerboard
from scoresde.run import load_data

from _common import default_workdir, markdown, train_or_reuse, write_text
from train_toy import toy_config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a run directory or checkpoint (default: train a checkerboard VP run in WORKDIR/toy_run)")
    p.add_argument("--train-steps", type=int, default=2000, help="steps for the toy run trained when --run is not given")
    p.add_argument("--num", type=int, default=2000, help="samples per sampler and setting")
    p.add_argument("--steps", default="10,20,50,100,200", help="step counts of the fixed-step samplers")
    p.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workdir", default=default_workdir("compare_samplers"))
    args = p.parse_args(argv)

    run_dir = args.run
    if run_dir is None:
        run_dir = os.path.join(args.workdir, "toy_run")
        cfg = toy_config("checkerboard", "vp", quick=args.quick, steps=None if args.quick else args.train_steps)
        print(f"no --run given: training {cfg.train.steps} steps on the checkerboard in {run_dir}")
        train_or_reuse(cfg, run_dir, progress=not args.quiet)
    run = sd.load(run_dir)
    d = run.config.data
    num = 300 if args.quick else args.num
    steps = (10, 20) if args.quick else tuple(int(s) for s in args.steps.split(","))
    tolerances = (1e-2,) if args.quick else (1e-2, 1e-3, 1e-4, 1e-5)
    sde_tolerances = (1e-1,) if args.quick else (1e-1, 5e-2, 2e-2, 1e-2)

    reference = load_data(run.config, "test").data[:num]
    print(f"{run.path}: {d.name}, step {run.step}; {num} samples per setting, reference {len(reference)} test points")
    rows = compare(run.score_fn, run.sde, reference, num=num, steps=steps, tolerances=tolerances,
                   sde_tolerances=sde_tolerances,
                   on_target=on_checkerboard if d.name == "checkerboard" else None, progress=not args.quiet)
    paths = write_outputs(rows, args.workdir)

    # SDE vs ODE at each step count: the best energy distance of each family.
    best = []
    for s in steps:
        fam = {k: [r for r in rows if r["setting"] == s and (r["sampler"] in ODE_METHODS) == (k == "ode")] for k in ("sde", "ode")}
        pick = {k: min(v, key=lambda r: r["energy_distance"]) for k, v in fam.items() if v}
        best.append([s] + [f"{pick[k]['energy_distance']:.4f} ({pick[k]['sampler']})" for k in ("sde", "ode")])
    summary = markdown(("steps", "best SDE sampler: energy dist.", "best ODE sampler: energy dist."), best)
    write_text(os.path.join(args.workdir, "sde_vs_ode.md"), summary)
    print(markdown_table(rows))
    print(summary)
    print(f"wrote {paths['table']}, {paths['json']}, {paths['plot']}, sde_vs_ode.md")


if __name__ == "__main__":
    main()
