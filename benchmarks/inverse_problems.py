"""Inverse problems against the exact posterior: how biased is replacement, and how much does ΠGDM help?

Problems (Gaussian mixtures, so the posterior given the observation is exact,
``GaussianMixture.condition``):

  inpaint-4d   4-D, 3 components; coordinates 0, 1 observed (within-mode variance 0.02, so they
               identify the mode), 2, 3 to fill (modes far apart there). Two observations: y =
               (0.25, 0.25) (posterior weight 0.9998 on one mode) and y = (0.1, -0.1) (0.83 on
               the mode whose prior weight is 0.2).
  colorize-6d  2 RGB pixels, 3 components; the gray level (channel mean) of each pixel observed.
               gray = (0.1, 0.1) (posterior weight 0.98 on one mode).

Methods, each with the same prior draws x_T and eps = 1e-3 (denoising step on):

  exact score  ``inpaint``/``colorize`` with method "replace" fed the exact posterior score: the
               reference (exact up to discretisation; replacement is harmless there)
  replace      Song et al. 2021's replacement, unconditional score
  pigdm        ΠGDM score transform, data_var = the observed coordinates' variance under the prior
               (no tuning on the answer)
  pigdm+replace  both

Measures against as many exact posterior draws x 2: the energy distance ± its jackknife SE
(``metrics.energy_distance_se``) and the total-variation error of the mode weights (samples
assigned by the posterior's nearest component) ± a bound on its SE (half the sum of the
fractions' binomial SEs). The first row of each problem is exact posterior draws themselves: the
noise floor.

    python benchmarks/inverse_problems.py --threads 1      # ~2 min on one core
    python benchmarks/inverse_problems.py --quick
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Dict, List

import torch

import _bench as C
from scoresde import metrics
from scoresde import sampling as S
from scoresde.analytic import GaussianMixture
from scoresde.sde import VPSDE

EPS = 1e-3
SAMPLERS = {
    "euler_maruyama (200)": (S.euler_maruyama, dict(steps=200)),
    "ddim (50)": (S.ddim, dict(steps=50)),
    "dpm_solver++ 2M (20)": (S.dpm_solver, dict(steps=20)),
    "probability_flow (dopri5)": (S.probability_flow, dict(rtol=1e-3, atol=1e-3)),
}
METHODS = ("exact score", "replace", "pigdm", "pigdm+replace")


def _pixels(p0, p1):
    return [p0[0], p1[0], p0[1], p1[1], p0[2], p1[2]]


def problems() -> Dict[str, dict]:
    inpaint = GaussianMixture([0.3, 0.5, 0.2],
                              [[-0.3, -0.3, -2.0, 1.5], [0.3, 0.3, 2.0, -1.5], [0.3, -0.3, 0.0, 2.5]],
                              [[0.02, 0.02, 0.1, 0.1]] * 3)
    color = GaussianMixture([0.3, 0.4, 0.3],
                            [_pixels((0.6, -0.6, -0.6), (-0.6, -0.6, 0.6)),
                             _pixels((-0.4, 0.8, -0.4), (0.8, 0.8, -0.4)),
                             _pixels((0.3, 0.3, 0.3), (-0.3, -0.3, -0.3))], [0.03] * 3)
    gray_A = torch.zeros(2, 6)
    for p in range(2):
        for c in range(3):
            gray_A[p, 2 * c + p] = 1 / 3
    out = {}
    for y in ((0.25, 0.25), (0.1, -0.1)):
        out[f"inpaint-4d y={y}"] = dict(kind="inpaint", gm=inpaint, A=torch.eye(4)[:2], y=torch.tensor(y),
                                        shape=(4,))
    out["colorize-6d gray=(0.1, 0.1)"] = dict(kind="colorize", gm=color, A=gray_A, y=torch.tensor([0.1, 0.1]),
                                              shape=(3, 2))
    return out


def observed_variance(gm: GaussianMixture, A: torch.Tensor) -> float:
    """Mean variance of the observed values A x_0 under the prior (ΠGDM's data_var)."""
    w, mu = gm.weights, gm.means
    A = A.double()
    second = (w[:, None] * (torch.einsum("md,kde,me->km", A, gm.covs, A) + (mu @ A.T) ** 2)).sum(0)
    return float((second - ((w[:, None] * (mu @ A.T)).sum(0)) ** 2).mean())


def run(problem: dict, sampler, options: dict, method: str, x_T: torch.Tensor, sde) -> torch.Tensor:
    gm, A, y = problem["gm"], problem["A"], problem["y"]
    n = x_T.shape[0]
    score = gm.condition(A, y).score_fn(sde) if method == "exact score" else gm.score_fn(sde)
    how = "replace" if method == "exact score" else method
    if problem["kind"] == "inpaint":
        data_var = observed_variance(gm, A)
        known = torch.cat([y, torch.zeros(2)]).expand(n, 4)
        mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
        if sampler is S.probability_flow and how == "replace":  # no hook: the exact score alone
            return torch.where(mask.bool(), known, sampler(score, sde, x_T, eps=EPS, **options))
        return S.inpaint(sampler, score, sde, x_T, known=known, mask=mask, method=how, data_var=data_var,
                         eps=EPS, generator=torch.Generator().manual_seed(2), **options)
    # u_0 = sqrt(3) gray in colorize's decoupled space: 3 x the gray level's variance
    data_var = 3 * observed_variance(gm, A)
    gray = y.reshape(1, 1, 2).expand(n, 1, 2)
    img = x_T.reshape(n, 3, 2)
    if sampler is S.probability_flow and how == "replace":
        x = sampler(score, sde, img, eps=EPS, **options)
        return (x - x.mean(1, keepdim=True) + gray).reshape(n, 6)
    return S.colorize(sampler, score, sde, img, gray=gray, method=how, data_var=data_var, eps=EPS,
                      generator=torch.Generator().manual_seed(2), **options).reshape(n, 6)


def mode_error(weights: torch.Tensor, labels: torch.Tensor):
    n = labels.numel()
    f = torch.bincount(labels, minlength=len(weights)).double() / n
    return 0.5 * float((f - weights).abs().sum()), 0.5 * float((f * (1 - f) / n).sqrt().sum())


def evaluate(name: str, problem: dict, n: int, samplers: Dict[str, tuple]) -> dict:
    sde = VPSDE()
    gm = problem["gm"]
    post = gm.condition(problem["A"], problem["y"])
    classify = post.marginal(sde, EPS).classify
    ref = post.sample(2 * n, torch.Generator().manual_seed(5), dtype=torch.float64)
    ref_sums = metrics.row_sums(ref)[0]
    x_T = sde.prior_sampling((n, gm.dim), generator=torch.Generator().manual_seed(1))
    rows: List[dict] = []

    def score(label, method, x, seconds):
        ed, ed_se = metrics.energy_distance_se(x, ref, ref_sums)
        tv, tv_se = mode_error(post.weights, classify(x.double()))
        rows.append(dict(sampler=label, method=method, energy_distance=ed, energy_distance_se=ed_se,
                         mode_tv=tv, mode_tv_se=tv_se, seconds=seconds))
        print(f"  {name:28s} {label:26s} {method:14s} energy {ed:.4f} ± {ed_se:.4f}  mode TV {tv:.3f} ± {tv_se:.3f}"
              f"  ({seconds:.1f} s)", flush=True)

    score("exact posterior draws", "—", post.sample(n, torch.Generator().manual_seed(9), dtype=torch.float64), 0.0)
    for label, (fn, options) in samplers.items():
        for method in METHODS:
            if fn is S.probability_flow and "replace" in method and method != "exact score":
                continue  # no per-step hook
            t0 = time.perf_counter()
            x = run(problem, fn, options, method, x_T, sde)
            score(label, method, x.double(), time.perf_counter() - t0)
    return dict(problem=name, dim=gm.dim, observation=problem["y"].tolist(), posterior_weights=post.weights.tolist(),
                prior_weights=gm.weights.tolist(), samples=n, rows=rows)


def table(res: dict) -> str:
    rows = [[r["sampler"], r["method"], f"{r['energy_distance']:.4f} ± {r['energy_distance_se']:.4f}",
             f"{r['mode_tv']:.3f} ± {r['mode_tv_se']:.3f}"] for r in res["rows"]]
    return C.markdown_table(["sampler", "method", "energy distance ± SE", "mode-weight TV ± SE"], rows,
                            [False, False, True, True])


def figure(results: List[dict]):
    fig = C.new_figure(9.0, 3.2 * len(results))
    axes = fig.subplots(len(results), 1, squeeze=False)[:, 0]
    for ax, res in zip(axes, results):
        samplers = [s for s in dict.fromkeys(r["sampler"] for r in res["rows"]) if s != "exact posterior draws"]
        series = {m: [next((r["mode_tv"] for r in res["rows"] if r["sampler"] == s and r["method"] == m), math.nan)
                      for s in samplers] for m in METHODS}
        C.grouped_bars(ax, samplers, series, "mode-weight TV error")
        ax.set_title(res["problem"], fontsize=9)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser)
    parser.add_argument("--samples", type=int, default=2000, help="samples per run (default 2000)")
    args = parser.parse_args(argv)
    device = C.setup(args)
    if device.type != "cpu":
        C.fail("this benchmark measures accuracy, not speed: run it on the CPU")
    n = 200 if args.quick else args.samples
    if n < 3:
        C.fail(f"--samples must be at least 3, got {n}")
    samplers = dict(list(SAMPLERS.items())[1:2]) if args.quick else SAMPLERS
    env = C.environment(device)
    results = [evaluate(name, p, n, samplers) for name, p in problems().items()]
    md = ["# Inverse problems against the exact posterior (VP-SDE, exact mixture score)\n\n",
          f"{C.environment_line(env)}\n\n",
          f"{n} samples per run, compared with {2 * n} exact posterior draws; ± one standard error.\n"]
    for res in results:
        md.append(f"\n## {res['problem']} (D = {res['dim']}; prior weights "
                  f"{[round(w, 3) for w in res['prior_weights']]}, posterior weights "
                  f"{[round(w, 4) for w in res['posterior_weights']]})\n\n" + table(res))
    text = "".join(md)
    print(text)
    stem = "inverse_problems" + ("_quick" if args.quick else "")
    C.write_results(args.out, stem, {"environment": env, "eps": EPS, "samples": n, "results": results}, text,
                    figure(results))


if __name__ == "__main__":
    main()
