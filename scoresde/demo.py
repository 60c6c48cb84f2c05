"""The embedded default: train the toy VP config on the checkerboard, compare the samplers, compute
the test NLL, and write ``report.md`` with its figures. Re-running it reuses a finished run."""
from __future__ import annotations

import json
import math
import os
import time
from typing import List, Optional

import torch

from . import plot
from .compare import METHODS, compare, run_method, write_outputs
from .compare import report as compare_report
from .config import load_config, resolve_config
from .data import load_dataset, on_checkerboard
from .io import atomic_write_text
from .likelihood import log_likelihood
from .sampling import ddim, predictor_corrector, probability_flow, time_grid
from .run import load
from .train import train

LOG8 = math.log(8.0)
# A smoke run of every stage. Likelihood weighting barely trains small t in 200 steps, and the
# resulting scores blow samples up, so the quick run uses the plain sigma^2 weighting.
QUICK = ["train.steps=200", "train.checkpoint_every=100", "train.log_every=50",
         "train.likelihood_weighting=false", "train.importance_sampling=false"]


def trajectory(score_fn, sde, x_T: torch.Tensor, steps: int = 50) -> torch.Tensor:
    """PF-ODE paths (steps + 1, N, 2) through DDIM (eta = 0), one grid interval at a time."""
    grid = time_grid(sde, steps, 1e-3)
    path = [x_T]
    x = x_T
    for k in range(steps):
        x = ddim(score_fn, sde, x, schedule=grid[k:k + 2], denoise=False)
        path.append(x)
    return torch.stack(path)


def run_demo(workdir: str = os.path.join("runs", "demo"), overrides: Optional[List[str]] = None,
             quick: bool = False, progress: bool = True) -> str:
    say = print if progress else (lambda *a, **k: None)
    cfg = load_config(resolve_config("toy_vp"), (QUICK if quick else []) + list(overrides or []))
    t0 = time.time()
    say(f"[1/4] training {cfg.train.steps} steps on the checkerboard (VP-SDE, MLP) in {workdir}")
    result = train(cfg, workdir, resume=True, progress=progress)
    if result["status"].startswith("stopped by"):  # Ctrl-C / SIGTERM: the trainer checkpointed; stop here
        raise KeyboardInterrupt(f"training stopped at step {result['step']} ({result['status']}); "
                                f"run the demo again to continue")
    t_train = time.time() - t0
    run = load(workdir)
    score, sde = run.score_fn, run.sde
    n_eval = 500 if quick else 5000
    test = load_dataset("checkerboard", "test", n=n_eval, generator=torch.Generator().manual_seed(12345)).data

    say("[2/4] comparing samplers")
    steps = (10, 20, 50) if quick else (10, 20, 50, 100, 200)
    num = min(2000, n_eval)
    # the noise floor's data: a fresh draw of the same size, independent of the reference
    floor_data = load_dataset("checkerboard", "test", n=num, generator=torch.Generator().manual_seed(54321)).data
    rows = compare(score, sde, test[:2000], num=num, steps=steps,
                   tolerances=(1e-2, 1e-3) if quick else (1e-2, 1e-3, 1e-4, 1e-5),
                   sde_tolerances=(1e-1,) if quick else (1e-1, 5e-2, 2e-2, 1e-2),
                   on_target=on_checkerboard, floor_data=floor_data, progress=progress)
    paths = write_outputs(rows, workdir)

    say("[3/4] test NLL (probability-flow ODE, exact trace)")
    n_nll = 200 if quick else 2000
    res = log_likelihood(score, sde, test[:n_nll], estimator="exact", generator=torch.Generator().manual_seed(0))
    nll = -res.logp.double()
    nll_mean, nll_se = nll.mean().item(), nll.std().item() / math.sqrt(n_nll)

    say("[4/4] on-board fraction and figures")
    g = torch.Generator().manual_seed(1)
    x_T = sde.prior_sampling((n_eval, 2), generator=g)
    with torch.no_grad():
        pf = probability_flow(score, sde, x_T)
        pc = predictor_corrector(score, sde, x_T, steps=500, generator=g)
    frac = {"probability_flow": on_checkerboard(pf).float().mean().item(),
            "predictor_corrector": on_checkerboard(pc).float().mean().item()}
    panels = {"data (test)": test}
    largest = max(steps)
    for m in ("euler_maruyama", "predictor_corrector", "ancestral", "ddim", "pf_ode:heun"):
        method = next(mm for mm in METHODS if mm.label == m)
        panels[f"{m}, {largest} steps"] = run_method(method, score, sde, x_T[:2000], largest)[0]
    panels["pf_ode:dopri5"] = pf[:2000]
    samples_png = plot.scatter_panels(panels, os.path.join(workdir, "samples.png"))
    with torch.no_grad():
        paths_tensor = trajectory(score, sde, x_T[:40])
    traj_png = plot.trajectories(paths_tensor, os.path.join(workdir, "trajectories.png"))

    summary = {"train_steps": run.step, "train_seconds": t_train, "test_nll_nats": nll_mean, "test_nll_se": nll_se,
               "true_nll_nats": LOG8, "likelihood_nfe": res.nfe, "on_board": frac, "n_samples": n_eval}
    atomic_write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=1))
    report = os.path.join(workdir, "report.md")
    atomic_write_text(report, _report(summary, compare_report(rows), paths, samples_png, traj_png, workdir))
    say(f"test NLL {nll_mean:.3f} ± {nll_se:.3f} nats (true {LOG8:.3f}); on board: "
        f"PF-ODE {100 * frac['probability_flow']:.1f}%, PC {100 * frac['predictor_corrector']:.1f}%")
    return report


def _report(s: dict, table: str, paths: dict, samples_png: str, traj_png: str, workdir: str) -> str:
    rel = lambda p: os.path.relpath(p, workdir)
    return f"""# scoresde demo: a VP-SDE score model on the checkerboard

Trained for {s['train_steps']} steps ({s['train_seconds']:.0f} s of wall time in this run) with
denoising score matching; every number below is measured on fresh test points or fresh samples.

## Likelihood

Test NLL through the probability-flow ODE (exact trace, dopri5, {s['likelihood_nfe']} score
evaluations): **{s['test_nll_nats']:.3f} ± {s['test_nll_se']:.3f} nats** on {2000 if s['n_samples'] >= 2000 else 200} points.
The data's true NLL is log 8 = {s['true_nll_nats']:.3f} nats (uniform on 8 unit squares).

## Samples on the board's black squares

Of {s['n_samples']} samples: probability-flow ODE (dopri5) **{100 * s['on_board']['probability_flow']:.1f}%**,
predictor–corrector (reverse diffusion + Langevin, 500 steps) **{100 * s['on_board']['predictor_corrector']:.1f}%**.

![samples]({rel(samples_png)})

## Samplers compared

Quality is measured against held-out data, each number ± one standard error; NFE counts every
score evaluation. The noise floor is what the data itself scores against the same reference: a
sampler within about 2 SE of it is as good as {min(s['n_samples'], 2000)} samples can tell, and one is called
best only when it leads every other by more than 2 combined standard errors.

{table}
![quality vs NFE]({rel(paths['plot'])})

## Probability-flow trajectories

![trajectories]({rel(traj_png)})
"""
