"""DDPM is the VP-SDE discretized: the same score model sampled three ways lands on the same data.

* The VP-SDE's discrete schedule is DDPM's: VPSDE().discrete_betas == linspace(1e-4, 0.02, 1000),
  and its alphas_cumprod track the continuous alpha(t)^2 = exp(-∫beta) at t_i = i / (N - 1).
* One model -- the exact score of a Gaussian mixture (and, with --run, a trained VP toy model) --
  sampled by DDPM ancestral sampling on all 1000 discrete indices (DDPM's Algorithm 2),
  Euler-Maruyama on the continuous reverse SDE (1000 steps) and DDIM (50 steps), from the same
  prior draw. All reach the data distribution: their distance to exact samples is at the noise
  floor of two independent exact draws. With the same noise stream, DDPM and Euler-Maruyama
  even give nearly the same individual samples (the "RMS to DDPM sample" column).

    python examples/ddpm_is_vpsde.py
    python examples/ddpm_is_vpsde.py --run runs/examples/train_toy     # also a trained VP model
"""
import argparse
import os
import time

import torch

import scoresde as sd
from scoresde import metrics, plot, sampling
from scoresde.data import load_dataset, toy_mixture

from _common import default_workdir, markdown, run_main, write_json, write_text

SAMPLERS = {  # label -> (sampler, options); those with ``timesteps`` run on the discrete chain
    "DDPM ancestral, indices 999..0": (sampling.ancestral, dict(timesteps=range(999, -1, -1))),
    "reverse SDE, Euler-Maruyama 1000": (sampling.euler_maruyama, dict(steps=1000)),
    "DDIM, 50 steps": (sampling.ddim, dict(steps=50)),
    "DDIM, indices 980, 960, ..., 0": (sampling.ddim, dict(timesteps=range(980, -1, -20))),
}


def chain_score(model, sde):
    """DDPM's view of a trained eps-network: score_i = -eps(x, t_i) / sqrt(1 - alphā_i).

    A ScoreModel divides eps by the continuous sigma(t); DDPM divides by the chain's own
    sqrt(1 - alphā_i), which this wrapper does, so the trained model is sampled as its chain.
    """
    def score(x, t):
        sigma = (1 - sde.table("alphas_cumprod", x)[sde.index(t)]).sqrt()
        return -model.eps(x, t) / sigma[:, None]
    return score


def schedule_check(sde) -> dict:
    ddpm = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    t = torch.arange(sde.N, dtype=torch.float64) * sde.T / (sde.N - 1)
    alpha, _ = sde.marginal_coeffs(t)
    return {"betas_equal_ddpm": bool(torch.allclose(sde.discrete_betas, ddpm, rtol=0, atol=1e-15)),
            "betas_max_abs_diff": (sde.discrete_betas - ddpm).abs().max().item(),
            "alphas_cumprod_vs_continuous_max_rel_diff": ((sde.alphas_cumprod - alpha ** 2).abs() / alpha ** 2).max().item()}


def distances(x, ref, classify=None) -> dict:
    out = {"energy_distance": metrics.energy_distance(x, ref),
           "sliced_wasserstein": metrics.sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))}
    if classify is not None:  # mode weights: largest deviation from the reference's
        a, b = classify(x), classify(ref)
        m = int(max(a.max(), b.max())) + 1
        out["mode_weight_error"] = (a.bincount(minlength=m) / len(a) - b.bincount(minlength=m) / len(b)).abs().max().item()
    return out


def compare_samplers(score_fn, sde, ref, floor_draw, n, classify=None, discrete_score_fn=None, seed=0):
    """Each sampler from the same prior draw: (table rows, sample panels). The first row is the noise
    floor (another exact draw); ``discrete_score_fn`` (default ``score_fn``) runs on chain indices."""
    x_T = sde.prior_sampling((n, ref.shape[1]), generator=torch.Generator().manual_seed(seed))
    rows = [dict(sampler="another draw of the data (noise floor)", nfe=0, seconds=0.0,
                 **distances(floor_draw, ref, classify))]
    panels = {"data": ref[:n]}
    for label, (sampler, options) in SAMPLERS.items():
        calls, fn = [0], score_fn if "timesteps" not in options else (discrete_score_fn or score_fn)

        def counted(x, t):
            calls[0] += 1
            return fn(x, t)
        t0 = time.time()
        with torch.no_grad():
            x = sampler(counted, sde, x_T, generator=torch.Generator().manual_seed(seed + 1), **options)
        rows.append(dict(sampler=label, nfe=calls[0], seconds=time.time() - t0, **distances(x, ref, classify)))
        panels[label] = x
    # Pathwise: same prior draw and same noise stream, so DDPM and Euler-Maruyama nearly coincide.
    ddpm = panels[next(iter(SAMPLERS))]
    for row in rows[1:]:
        row["rms_to_ddpm"] = (panels[row["sampler"]] - ddpm).pow(2).sum(1).mean().sqrt().item()
    return rows, panels


def table(rows) -> str:
    has_modes = "mode_weight_error" in rows[0]
    return markdown(("sampler", "NFE", "seconds", "energy dist.", "sliced W2", "RMS to DDPM sample")
                    + (("max mode-weight error",) if has_modes else ()),
                    [(r["sampler"], r["nfe"], f"{r['seconds']:.2f}", f"{r['energy_distance']:.4f}",
                      f"{r['sliced_wasserstein']:.4f}", f"{r['rms_to_ddpm']:.4f}" if "rms_to_ddpm" in r else "-")
                     + ((f"{r['mode_weight_error']:.3f}",) if has_modes else ()) for r in rows])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=4000, help="samples per sampler")
    p.add_argument("--run", help="also a trained VP-SDE model on a toy set (a run directory)")
    p.add_argument("--quick", action="store_true", help="fewer samples (the step counts stay), seconds")
    p.add_argument("--workdir", default=default_workdir("ddpm_is_vpsde"))
    args = p.parse_args(argv)
    n = 500 if args.quick else args.num

    sde = sd.VPSDE()
    check = schedule_check(sde)
    print(f"VPSDE().discrete_betas == linspace(1e-4, 0.02, 1000): {check['betas_equal_ddpm']} "
          f"(max abs diff {check['betas_max_abs_diff']:.1e}); alphas_cumprod vs continuous alpha(t_i)^2: "
          f"max rel. diff {check['alphas_cumprod_vs_continuous_max_rel_diff']:.1e}\n")
    report = {"schedule": check}

    gm = toy_mixture("gmm")
    g = torch.Generator().manual_seed(123)
    ref, floor_draw = gm.sample(4 * n, g), gm.sample(n, g)
    rows, panels = compare_samplers(gm.score_fn(sde), sde, ref, floor_draw, n, classify=gm.classify)
    text = f"## Exact score of a 4-component Gaussian mixture, {n} samples each\n\n" + table(rows)
    report["exact_score"] = rows
    plot.scatter_panels(panels, os.path.join(args.workdir, "samples.png"), cols=5)

    if args.run:
        run = sd.load(args.run)
        if not isinstance(run.sde, sd.VPSDE) or run.data_shape != (2,):
            raise SystemExit(f"error: --run must be a VP-SDE run on a 2-D toy set, got {run.sde!r} on shape {run.data_shape}")
        d = run.config.data.name
        ref = load_dataset(d, "test", n=4 * n).data
        floor_draw = load_dataset(d, "test", n=n, generator=torch.Generator().manual_seed(999)).data
        rows, panels = compare_samplers(run.score_fn, run.sde, ref, floor_draw, n,
                                       discrete_score_fn=chain_score(run.score_fn, run.sde))
        text += f"\n## Trained model {run.path} ({d}, step {run.step}), {n} samples each\n\n" + table(rows)
        report["trained"] = {"path": run.path, "step": run.step, "rows": rows}
        plot.scatter_panels(panels, os.path.join(args.workdir, "samples_trained.png"), cols=5)

    print(text)
    write_text(os.path.join(args.workdir, "ddpm_is_vpsde.md"), text)
    write_json(os.path.join(args.workdir, "ddpm_is_vpsde.json"), report)
    print(f"wrote ddpm_is_vpsde.md, ddpm_is_vpsde.json, samples.png in {args.workdir}")


if __name__ == "__main__":
    run_main(main)
