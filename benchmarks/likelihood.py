"""Likelihood: NFE and wall time of scoresde.log_likelihood against the reference implementation's
approach to the same probability-flow ODE.

scoresde integrates the state (x, ∫div f̃) with torchdiffeq's dopri5 on the device. The
reference implementation (Song et al.'s score_sde, likelihood.py) hands a flattened float64
numpy state [x, logp] to scipy.integrate.solve_ivp(method="RK45") and converts it to a torch
tensor and back at every evaluation, with Hutchinson's divergence through autograd. The
``scipy_log_likelihood`` below is this benchmark's own version of that idea. Both paths solve

    d/dt (x, l) = (f̃(x, t), div f̃(x, t)),  t from eps to T,  log p_eps(x) = log p_T(x_T) + l(T),

with f̃ = f - g² score / 2 (RK45 and dopri5 are both Dormand-Prince 5(4)), at the same rtol and
atol, on the same points and, for Hutchinson, the same Rademacher probe. Cases: the 2-D Gaussian
mixture with its exact score (error against the exact log p_eps reported), the toy MLP of
configs/toy_vp.yaml on checkerboard points and the U-Net of configs/digits_vp.yaml on digits (64-D).

    python benchmarks/likelihood.py
    python benchmarks/likelihood.py --cases gmm,mlp --threads 1
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Callable, Dict, Optional

import numpy as np
import torch
from scipy.integrate import solve_ivp

import _common
import scoresde
from scoresde.train import load_data

CASES = ("gmm", "mlp", "unet")
EPS = 1e-5  # log_likelihood's default start time


def mixture():
    """Three well-separated 2-D components with full covariances and unequal weights."""
    return scoresde.GaussianMixture(
        weights=[0.25, 0.45, 0.3],
        means=[[-2.0, 0.5], [1.5, 1.5], [0.5, -2.0]],
        covs=[[[0.10, 0.04], [0.04, 0.20]], [[0.30, -0.06], [-0.06, 0.12]], [[0.05, 0.0], [0.0, 0.30]]])


def rademacher(shape, seed: int, dtype) -> torch.Tensor:
    """One Rademacher probe per sample, drawn as log_likelihood draws its single probe (sign of a
    standard normal from a CPU generator seeded ``seed``), so both paths use the same vector."""
    v = torch.randn((1,) + tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype).sign()
    v[v == 0] = 1.0
    return v[0]


def divergence(f: torch.Tensor, x: torch.Tensor, probe: Optional[torch.Tensor]) -> torch.Tensor:
    """div f per sample: Hutchinson's v^T (∂f/∂x) v with ``probe`` v, or the exact trace (None)."""
    if probe is not None:
        (vjp,) = torch.autograd.grad((f * probe).sum(), x)
        return (vjp * probe).flatten(1).sum(1)
    flat, total = f.flatten(1), 0
    for d in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=d + 1 < flat.shape[1])
        total = total + grad.flatten(1)[:, d]
    return total


def scipy_log_likelihood(score, sde, x: torch.Tensor, *, probe: Optional[torch.Tensor], rtol: float, atol: float,
                         eps: float = EPS, prior_logp: Optional[Callable] = None) -> dict:
    """The reference's way: scipy RK45 over a flat float64 numpy state, a host round trip per call."""
    shape, B = x.shape, x.shape[0]
    calls = [0]

    def counted(y, t):
        calls[0] += 1
        return score(y, t)

    drift = sde.reverse(counted, probability_flow=True).drift
    probe = None if probe is None else probe.to(x.device)

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        y = torch.from_numpy(state[:-B].reshape(shape)).to(device=x.device, dtype=x.dtype).requires_grad_(True)
        tt = torch.full((B,), t, device=x.device, dtype=x.dtype)
        with torch.enable_grad():
            f = drift(y, tt)
            div = divergence(f, y, probe)
        return np.concatenate([f.detach().cpu().numpy().ravel(), div.detach().cpu().numpy()]).astype(np.float64)

    y0 = np.concatenate([x.detach().cpu().numpy().astype(np.float64).ravel(), np.zeros(B)])
    sol = solve_ivp(rhs, (eps, sde.T), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    end = sol.y[:, -1]
    z = torch.from_numpy(end[:-B].reshape(shape)).to(device=x.device, dtype=x.dtype)
    delta = torch.from_numpy(end[-B:]).to(device=x.device, dtype=x.dtype)
    prior = (sde.prior_logp if prior_logp is None else prior_logp)(z)
    return {"logp": prior + delta, "nfe": calls[0]}


def ours_log_likelihood(score, sde, x, *, estimator: str, seed: int, rtol: float, atol: float,
                        prior_logp=None) -> dict:
    res = scoresde.log_likelihood(score, sde, x, estimator=estimator, noise="rademacher", eps=EPS, method="dopri5",
                                  rtol=rtol, atol=atol, prior_logp=prior_logp,
                                  generator=torch.Generator().manual_seed(seed))
    return {"logp": res.logp, "nfe": res.nfe}


def load_case(case: str, n: int, device, args):
    """(score_fn, sde, points, description, exact log p_eps or None, prior_logp or None)."""
    if case == "gmm":
        gm, sde = mixture(), scoresde.VPSDE()
        x = gm.sample(n, torch.Generator().manual_seed(args.seed), dtype=torch.float64).to(device)
        # the exact p_T as prior: what is left of the error is the solver's and the estimator's
        return (gm.score_fn(sde), sde, x, "2-D Gaussian mixture, exact score, VP-SDE, float64",
                gm.log_prob_t(x, EPS, sde), lambda z: gm.log_prob_t(z, sde.T, sde))
    model, sde, _, cfg = _common.build_model(case, device, getattr(args, f"{case}_run"), args.seed)
    for p in model.parameters():  # gradients are taken with respect to x only
        p.requires_grad_(False)
    x = load_data(cfg, "test", n=n, generator=torch.Generator().manual_seed(args.seed)).data[:n].to(device)
    weights = getattr(args, f"{case}_run") or "random init"
    what = "toy MLP on checkerboard points" if case == "mlp" else "digits U-Net on test digits"
    return model, sde, x, f"{what} ({_common.parameter_count(model):,} parameters, {weights}), float32", None, None


def run_case(case: str, n: int, args, device) -> dict:
    score, sde, x, what, exact, prior = load_case(case, n, device, args)
    D = x[0].numel()
    probe = rademacher(x.shape, args.seed, x.dtype)
    tol = dict(rtol=args.tol, atol=args.tol)
    runs: Dict[str, Callable[[], dict]] = {}
    estimators = ["exact", "hutchinson"] if D <= args.exact_max_dim else ["hutchinson"]
    for est in estimators:
        runs[f"scoresde {est}"] = lambda est=est: ours_log_likelihood(score, sde, x, estimator=est, seed=args.seed,
                                                                      prior_logp=prior, **tol)
        runs[f"scipy RK45 {est}"] = lambda est=est: scipy_log_likelihood(
            score, sde, x, probe=probe if est == "hutchinson" else None, prior_logp=prior, **tol)
    print(f"\n{case}: {what}; {n} points of dimension {D}", flush=True)
    results = {}
    for name, fn in runs.items():  # untimed: the values, the NFE, and a warm-up
        results[name] = fn()
        print(f"  {name}: {results[name]['nfe']} NFE, mean log p {results[name]['logp'].mean().item():.5f}", flush=True)
    t0 = time.perf_counter()
    times = _common.interleaved(runs, device, args.repeats, on_repeat=lambda r, ts: print(
        f"  repeat {r + 1}/{args.repeats} done ({time.perf_counter() - t0:.0f} s)", flush=True))

    rows = []
    for name, res in results.items():
        logp = res["logp"].double()
        row = {"path": name, "nfe": res["nfe"], "seconds": times[name], "median_s": _common.median(times[name]),
               "mean_logp": logp.mean().item()}
        if exact is not None:
            row["mean_abs_error_vs_exact"] = (logp - exact.double()).abs().mean().item()
        rows.append(row)
    same_ode = {}
    for est in estimators:
        a, b = results[f"scoresde {est}"]["logp"].double(), results[f"scipy RK45 {est}"]["logp"].double()
        same_ode[est] = {"mean_logp_diff": (a.mean() - b.mean()).item(), "max_abs_diff": (a - b).abs().max().item()}
    return {"case": case, "description": what, "points": n, "dim": D, "rows": rows, "same_ode": same_ode,
            "exact_mean_logp": exact.double().mean().item() if exact is not None else None,
            "skipped": [] if "exact" in estimators else
            [f"exact trace: D = {D} backward passes per evaluation, above --exact-max-dim {args.exact_max_dim}"]}


def case_markdown(case: dict, tol: float) -> str:
    has_exact = case["exact_mean_logp"] is not None
    ours = {r["path"].split()[-1]: r for r in case["rows"] if r["path"].startswith("scoresde")}
    headers = ["path", "NFE", "time (s)", "mean log p"] + (["mean abs error vs exact"] if has_exact else []) + \
              ["time vs scoresde"]
    rows = []
    for r in case["rows"]:
        mine = ours[r["path"].split()[-1]]
        rows.append([r["path"], r["nfe"], f"{r['median_s']:.3f}", f"{r['mean_logp']:.5f}"]
                    + ([f"{r['mean_abs_error_vs_exact']:.2e}"] if has_exact else [])
                    + [f"{r['median_s'] / mine['median_s']:.2f}x"])
    md = [f"### {case['case']}: {case['description']}, {case['points']} points (D = {case['dim']})\n",
          _common.markdown_table(headers, rows, [False] + [True] * (len(headers) - 1))]
    if has_exact:
        md.append(f"Exact mean log p_eps: {case['exact_mean_logp']:.5f} (the exact p_T is used as the prior).\n")
    for est, d in case["same_ode"].items():
        md.append(f"- Same ODE, {est}: mean log p differs by {d['mean_logp_diff']:+.2e} between the paths, per point "
                  f"by at most {d['max_abs_diff']:.2e} (tolerance {tol:g}).")
    md += [f"- Skipped: {s}" for s in case["skipped"]]
    return "\n".join(md) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_args(p)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {CASES} (default all)")
    p.add_argument("--points", type=int, nargs=3, metavar=("GMM", "MLP", "UNET"), default=[512, 256, 32],
                   help="data points per case (default 512 256 32)")
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of both solvers (default 1e-5)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each path, interleaved (default 3)")
    p.add_argument("--exact-max-dim", type=int, default=8,
                   help="run the exact trace only up to this dimension (it costs D backward passes; default 8)")
    p.add_argument("--mlp-run", help="a trained run directory or checkpoint for the MLP (default: random init)")
    p.add_argument("--unet-run", help="a trained run directory or checkpoint for the U-Net (default: random init)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        _common.fail(f"--cases must list some of {CASES}, got {args.cases!r}")
    if min(args.points) < 1 or args.repeats < 1 or not (0 < args.tol < 1) or not math.isfinite(args.tol):
        _common.fail("--points and --repeats must be positive and --tol in (0, 1)")
    if args.quick:
        args.points, args.tol, args.repeats = [min(a, b) for a, b in zip(args.points, (64, 32, 4))], 1e-3, 1
    device = _common.setup(args)
    env = _common.environment(device)
    print(_common.environment_line(env), flush=True)

    points = dict(zip(CASES, args.points))
    results = [run_case(c, points[c], args, device) for c in cases]

    markdown = (f"## PF-ODE log-likelihood: scoresde vs a scipy RK45 loop{' (quick smoke run)' if args.quick else ''}\n\n"
                f"scoresde.log_likelihood (torchdiffeq dopri5, on the device) against scipy.integrate.solve_ivp RK45 "
                f"over a flat float64 numpy state (the reference implementation's approach), rtol = atol = "
                f"{args.tol:g}, eps = {EPS:g}, the same points and Rademacher probe; median of {args.repeats} "
                f"interleaved runs. {_common.environment_line(env)}.\n\n"
                + "\n".join(case_markdown(c, args.tol) for c in results))
    print("\n" + markdown)

    fig = _common.new_figure(5 * len(results), 7.5)
    for i, case in enumerate(results):
        labels = [r["path"] for r in case["rows"]]
        colors = ["tab:blue" if lab.startswith("scoresde") else "tab:orange" for lab in labels]
        for j, (key, ylabel) in enumerate((("median_s", "seconds (median)"), ("nfe", "score evaluations (NFE)"))):
            ax = fig.add_subplot(2, len(results), j * len(results) + i + 1)
            ax.bar(range(len(labels)), [r[key] for r in case["rows"]], color=colors)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(ylabel)
            ax.grid(axis="y", alpha=0.3)
            if j == 0:
                ax.set_title(f"{case['case']} (D = {case['dim']}, {case['points']} points)", fontsize=10)
    payload = {"benchmark": "likelihood", "quick": args.quick, "tol": args.tol, "eps": EPS, "repeats": args.repeats,
               "seed": args.seed, "environment": env, "cases": results}
    name = f"likelihood_{'_'.join(cases)}_{args.device}" + ("_quick" if args.quick else "")
    paths = _common.write_results(args.out, name, payload, markdown, fig)
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
