"""Accuracy vs NFE of every sampler, with the exact score of a Gaussian mixture.

Two problems: a 2-D mixture and a 64-D one (8 components with random anisotropic covariances),
both under the chosen SDE (VP by default). For each sampler and each NFE budget in --nfe, every
sampler starts from the same exact draws of p_T and stops at eps (no denoising step, so the NFE
column counts every score evaluation) and is scored by

  path error   the mean over samples of |x - x_ref| / sqrt(D), x_ref the probability-flow ODE solved
               by dopri5 at rtol = atol = 1e-10 from the same x_T (deterministic samplers only); the
               JSON also has its RMS and median. The RMS is dominated by the few trajectories that
               end in another mixture component than x_ref ("flips": near a decision boundary at
               mid noise levels any error picks the other side), so the flip rate is reported too;
  energy dist  unbiased energy distance to as many exact draws of p_eps; the noise level reported
               alongside is mean + 2 sd of the same statistic between exact samples (8 replicates):
               below it a sampler is indistinguishable from exact at this sample size;
  mode error   total variation between the fraction of samples nearest each component and the
               exact weights (noise level likewise from exact samples).

Fixed-step samplers get the largest step count that fits the budget (their NFE per step differs);
adaptive ones (dopri5, adaptive_sde) are run at a ladder of tolerances and reported at the NFE they
used. Everything runs in float64, so the numbers are the methods', not rounding's.

    python benchmarks/accuracy.py                 # both problems, VP, CPU (~35 min on one core)
    python benchmarks/accuracy.py --sde ve --problems 64d
    python benchmarks/accuracy.py --quick
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

import _bench as C
from scoresde import metrics
from scoresde import sampling as S
from scoresde.analytic import GaussianMixture
from scoresde.sampling._ode import Counter
from scoresde.sde import SDE, SubVPSDE, VESDE, VPSDE

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
EPS = 1e-3
NFE = (5, 10, 20, 50, 100, 1000)


@dataclass(frozen=True)
class Sampler:
    """A sampler at a fixed NFE per step (``per_step``) or driven by tolerances (``tolerances``)."""

    label: str
    fn: Callable
    options: Dict = field(default_factory=dict)
    per_step: int = 1
    deterministic: bool = True
    tolerances: Optional[tuple] = None


SAMPLERS = [
    Sampler("euler_maruyama", S.euler_maruyama, deterministic=False),
    Sampler("ancestral (DDPM)", S.ancestral, deterministic=False),
    Sampler("pc (rev. diffusion + langevin)", S.predictor_corrector, per_step=2, deterministic=False),
    Sampler("ddim (uniform, as in its paper)", S.ddim),
    Sampler("ddim (logsnr)", S.ddim, dict(schedule="logsnr")),
    Sampler("pf-ode rk4 (torchdiffeq)", S.probability_flow, dict(method="rk4"), per_step=4),
    Sampler("heun (EDM, karras)", S.heun, per_step=2),
    Sampler("heun + churn (EDM)", S.heun, dict(churn=10.0), per_step=2, deterministic=False),
    Sampler("dpm_solver++ 2M", S.dpm_solver, dict(order=2)),
    Sampler("dpm_solver++ 3M", S.dpm_solver, dict(order=3)),
    Sampler("dpm_solver++ 2M + corrector", S.dpm_solver, dict(order=2, corrector=True)),
    Sampler("dpm_solver 2M + corrector (eps)", S.dpm_solver, dict(order=2, corrector=True, predict="eps")),
    Sampler("dpm_solver 2M + corrector (eps, quadratic)", S.dpm_solver,
            dict(order=2, corrector=True, predict="eps", schedule="quadratic")),
    Sampler("dpm_solver 3M + corrector (eps)", S.dpm_solver, dict(order=3, corrector=True, predict="eps")),
    Sampler("dpm_solver++ 2S", S.dpm_solver, dict(order=2, multistep=False), per_step=2),
    Sampler("dpm_solver 3S (eps)", S.dpm_solver, dict(order=3, multistep=False, predict="eps"), per_step=3),
    Sampler("pf-ode dopri5 (torchdiffeq)", S.probability_flow, tolerances=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5)),
    Sampler("adaptive_sde", S.adaptive_sde, deterministic=False, tolerances=(0.5, 0.2, 0.1, 0.05, 0.02, 0.01)),
]
BASELINE, BASELINE_NFE, CHALLENGE_NFE = "ddim (uniform, as in its paper)", 50, 10


def problem(name: str) -> GaussianMixture:
    if name == "2d":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
        covs = torch.stack([torch.tensor([[0.03 + 0.02 * (k % 3), 0.01 * (k % 2)], [0.01 * (k % 2), 0.02 + 0.015 * (k % 4)]],
                                         dtype=torch.float64) for k in range(8)])
        return GaussianMixture(torch.linspace(1, 2, 8, dtype=torch.float64), means, covs)
    g = torch.Generator().manual_seed(64)
    K, D = 8, 64
    means = torch.randn(K, D, generator=g, dtype=torch.float64)
    rotations = torch.linalg.qr(torch.randn(K, D, D, generator=g, dtype=torch.float64))[0]
    eigenvalues = torch.exp(torch.empty(K, D, dtype=torch.float64).uniform_(math.log(0.005), math.log(0.3), generator=g))
    covs = rotations @ torch.diag_embed(eigenvalues) @ rotations.transpose(1, 2)
    return GaussianMixture(torch.rand(K, generator=g, dtype=torch.float64) + 0.5, means, 0.5 * (covs + covs.transpose(1, 2)))


def run_one(s: Sampler, score, sde: SDE, x_T, setting, seed: int):
    counted = Counter(score)
    options = dict(s.options)
    if s.tolerances is not None:
        options.update(rtol=setting, atol=setting)
    else:
        options["steps"] = setting
    start = time.perf_counter()
    x = s.fn(counted, sde, x_T, eps=EPS, denoise=False, generator=torch.Generator().manual_seed(seed), **options)
    return x, counted.nfe, time.perf_counter() - start


def evaluate(name: str, sde: SDE, n: int, budgets, device, seed: int = 0) -> dict:
    mix = problem(name)
    score = mix.score_fn(sde)
    g = torch.Generator().manual_seed(seed)
    x_T = mix.marginal(sde, sde.T).sample(n, g, dtype=torch.float64).to(device)
    target = mix.marginal(sde, EPS)
    exact = target.sample(n, g, dtype=torch.float64)
    # the statistics' spread between exact samples: anything below mean + 2 sd is indistinguishable
    replicates = [target.sample(n, g, dtype=torch.float64) for _ in range(8)]
    null = torch.tensor([metrics.energy_distance(r, exact) for r in replicates])
    null_modes = torch.tensor([mode_error(mix, r) for r in replicates])
    null_level = (null.mean() + 2 * null.std()).item()
    ref = S.probability_flow(score, sde, x_T, rtol=1e-10, atol=1e-10, eps=EPS, denoise=False)
    ref_modes = mix.classify(ref.cpu())
    D = x_T.shape[1]
    rows = []
    for s in SAMPLERS:
        settings = s.tolerances if s.tolerances is not None else sorted({b // s.per_step for b in budgets if b >= s.per_step})
        for setting in settings:
            x, nfe, seconds = run_one(s, score, sde, x_T, setting, seed + 1)
            finite = bool(torch.isfinite(x).all())
            row = {"sampler": s.label, "setting": setting, "nfe": nfe, "seconds": seconds, "finite": finite,
                   "energy_distance": metrics.energy_distance(x.cpu(), exact) if finite else math.inf,
                   "mode_error": mode_error(mix, x.cpu()) if finite else 1.0,
                   "path_error": None, "path_rms": None, "path_median": None, "flips": None}
            if s.deterministic:
                e = (x - ref).norm(dim=1) / math.sqrt(D)
                row["_errors"] = e.cpu()  # per sample, for the paired comparison; not written out
                row.update(path_error=e.mean().item(), path_rms=e.pow(2).mean().sqrt().item(),
                           path_median=e.median().item(),
                           flips=(mix.classify(x.cpu()) != ref_modes).double().mean().item())
            rows.append(row)
            path = f"{row['path_error']:.2e} (flips {row['flips']:.2%})" if s.deterministic else "-"
            print(f"  {name} {s.label:42s} setting {setting!s:>7} nfe {nfe:5d}  path {path:22s}"
                  f"  energy {row['energy_distance']:.2e}  modes {row['mode_error']:.3f}", flush=True)
    return {"problem": name, "dim": D, "samples": n, "null_energy_distance": null_level,
            "null_replicates": null.tolist(), "null_mode_error": (null_modes.mean() + 2 * null_modes.std()).item(),
            "rows": rows}


def mode_error(mix: GaussianMixture, x) -> float:
    """Total variation between the nearest-component fractions of x and the mixture weights."""
    counts = torch.bincount(mix.classify(x), minlength=mix.num_components).double()
    return 0.5 * (counts / counts.sum() - mix.weights.cpu().double()).abs().sum().item()


def challenge(result: dict) -> dict:
    """The most accurate sampler (mean path error) within CHALLENGE_NFE against the baseline at
    BASELINE_NFE, with the other measures of both alongside.

    Both start from the same x_T, so the comparison is paired: d = e_best - e_baseline per sample,
    mean(d) with its standard error sd(d) / sqrt(n). The errors are heavy-tailed (a flip costs about
    the distance between two components), so at a few thousand samples the difference of the means
    can be of the order of its standard error; the verdict says which side of 2 SE it falls. The
    best is picked on the same samples, which favours it slightly.
    """
    rows = [r for r in result["rows"] if r["path_error"] is not None]
    base = [r for r in rows if r["sampler"] == BASELINE and r["nfe"] == BASELINE_NFE]
    cands = [r for r in rows if r["nfe"] <= CHALLENGE_NFE]
    if not base or not cands:
        return {}
    best, base = min(cands, key=lambda r: r["path_error"]), base[0]
    d = best["_errors"] - base["_errors"]
    diff, se = d.mean().item(), (d.std() / math.sqrt(d.numel())).item()
    verdict = "better" if diff + 2 * se < 0 else "worse" if diff - 2 * se > 0 else "within 2 SE"
    keys = ("sampler", "nfe", "path_error", "path_rms", "path_median", "flips", "energy_distance", "mode_error")
    return {"best": {k: best[k] for k in keys}, "baseline": {k: base[k] for k in keys},
            "mean_difference": diff, "mean_difference_se": se, "verdict": verdict,
            "holds": verdict != "worse"}


TABLES = (  # (title, cell)
    ("Mean path error (flip rate)",
     lambda r: f"{r['path_error']:.1e} ({r['flips']:.1%})" if r["path_error"] is not None else "·"),
    ("Energy distance to exact p_eps", lambda r: f"{r['energy_distance']:.1e}"),
)


def table(result: dict, budgets, cell) -> str:
    """Rows: samplers; columns: NFE budgets; each cell at the largest NFE within the budget."""
    headers = ["sampler"] + [f"NFE ≤ {b}" for b in budgets]
    lines = []
    for s in SAMPLERS:
        mine = [r for r in result["rows"] if r["sampler"] == s.label]
        cells = []
        for b in budgets:
            fit = [r for r in mine if r["nfe"] <= b]
            if not fit:
                cells.append("–")
                continue
            r = max(fit, key=lambda r: r["nfe"])
            cells.append(f"{cell(r)} @{r['nfe']}")
        lines.append([s.label] + cells)
    return C.markdown_table(headers, lines, [False] + [True] * len(budgets))


def figure(results: List[dict], sde_name: str):
    fig = C.new_figure(12, 4.5 * len(results))
    axes = fig.subplots(len(results), 2, squeeze=False)
    for (ax_path, ax_ed), res in zip(axes, results):
        for s in SAMPLERS:
            rows = sorted((r for r in res["rows"] if r["sampler"] == s.label), key=lambda r: r["nfe"])
            nfe = [r["nfe"] for r in rows]
            style = "-o" if s.deterministic else "--s"
            if s.deterministic:
                ax_path.plot(nfe, [r["path_error"] for r in rows], style, ms=3, label=s.label)
            ax_ed.plot(nfe, [max(r["energy_distance"], 1e-8) for r in rows], style, ms=3, label=s.label)
        ax_ed.axhline(res["null_energy_distance"], color="k", lw=0.8, ls=":", label="exact-sample noise level")
        for ax, what in ((ax_path, "path error vs dopri5 1e-10 (RMS per dim)"), (ax_ed, "energy distance to exact p_eps")):
            ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=what,
                   title=f"{res['problem']} mixture, {sde_name.upper()} SDE")
            ax.grid(alpha=0.3, which="both")
        ax_ed.legend(fontsize=6, ncol=2)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser)
    parser.add_argument("--sde", choices=tuple(SDES), default="vp")
    parser.add_argument("--problems", default="2d,64d", help="comma-separated: 2d, 64d")
    parser.add_argument("--nfe", default=",".join(map(str, NFE)), help="NFE budgets")
    parser.add_argument("--samples", type=int, default=8000,
                        help="samples per problem (default 8000: fewer leave the paired comparison of the mean "
                             "path errors within its standard error)")
    args = parser.parse_args(argv)
    device = C.setup(args)
    budgets = [int(b) for b in args.nfe.split(",")]
    names = [p.strip() for p in args.problems.split(",")]
    if any(p not in ("2d", "64d") for p in names):
        C.fail(f"--problems must list 2d and/or 64d, got {args.problems!r}")
    n = args.samples
    if n < 2:
        C.fail(f"--samples must be at least 2, got {n}")
    if args.quick:
        budgets, n = [5, 10, 50], 200
    sde = SDES[args.sde]()
    env = C.environment(device)
    results, md = [], [f"# Accuracy vs NFE, {args.sde.upper()} SDE, exact mixture score\n",
                       f"{C.environment_line(env)}\n",
                       "Path error: mean over samples of |x - x_ref| / sqrt(D), x_ref from dopri5 at 1e-10 "
                       "(`·` for stochastic samplers); flips: share of samples ending in another component "
                       "than x_ref. @ the NFE used.\n"]
    for name in names:
        res = evaluate(name, sde, n, budgets, device)
        res["challenge"] = challenge(res)
        results.append(res)
        md.append(f"\n## {name} mixture (D = {res['dim']}, {n} samples)\n")
        for title, cell in TABLES:
            note = (f" (exact-sample noise level {res['null_energy_distance']:.1e})" if "Energy" in title else "")
            md.append(f"\n{title}{note}:\n\n" + table(res, budgets, cell))
        ch = res["challenge"]
        if ch:
            b, d = ch["best"], ch["baseline"]
            md.append(f"\nMost accurate within {CHALLENGE_NFE} NFE: **{b['sampler']}** at {b['nfe']} NFE: mean path "
                      f"error {b['path_error']:.2e} (median {b['path_median']:.2e}, RMS {b['path_rms']:.2e}, flips "
                      f"{b['flips']:.2%}, energy {b['energy_distance']:.1e}). {d['sampler']} at {d['nfe']} NFE: "
                      f"{d['path_error']:.2e} (median {d['path_median']:.2e}, RMS {d['path_rms']:.2e}, flips "
                      f"{d['flips']:.2%}, energy {d['energy_distance']:.1e}). Paired difference of the mean path "
                      f"errors (best - baseline): {ch['mean_difference']:+.2e} ± {ch['mean_difference_se']:.1e} "
                      f"(1 SE): **{ch['verdict']}**.\n")
    text = "".join(md)
    print(text)
    stem = f"accuracy_{args.sde}" + ("_quick" if args.quick else "")
    for res in results:
        for row in res["rows"]:
            row.pop("_errors", None)
    C.write_results(args.out, stem, {"environment": env, "sde": args.sde, "eps": EPS, "budgets": budgets,
                                     "samples": n, "results": results}, text, figure(results, args.sde))


if __name__ == "__main__":
    main()
