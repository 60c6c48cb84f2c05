"""Likelihood: NFE and wall time of scoresde.log_likelihood against the reference implementation's
approach to the same probability-flow ODE.

scoresde integrates the state (x, ∫div f̃) with torchdiffeq's dopri5 on the device. The
reference implementation (Song et al.'s score_sde, likelihood.py) hands a flattened float64
numpy state [x, logp] to scipy.integrate.solve_ivp(method="RK45") and converts it to a torch
tensor and back at every evaluation, with Hutchinson's divergence through autograd; it computes the
drift and the divergence in two separate calls, so the network runs twice per evaluation. The
``scipy_log_likelihood`` below is this benchmark's own version of that loop, as written (the
"reference loop") and tuned to share one forward pass ("scipy, shared forward"), the stronger
baseline. All paths solve

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
from typing import Callable, Dict, Optional

import numpy as np
import torch
from scipy.integrate import solve_ivp

import _bench
import scoresde
from scoresde.run import load_data

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
                         shared_forward: bool, eps: float = EPS, prior_logp: Optional[Callable] = None) -> dict:
    """The reference's way: scipy RK45 over a flat float64 numpy state, a host round trip per call.

    With ``shared_forward=False`` each evaluation runs the network twice, as the reference does: once
    for the drift (without autograd) and once more inside the divergence, which builds its own graph.
    ``shared_forward=True`` is this benchmark's tuned version: one forward pass serves both.
    """
    shape, B = x.shape, x.shape[0]
    calls = [0]
    drift = sde.reverse(score, probability_flow=True).drift
    probe = None if probe is None else probe.to(x.device)

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        calls[0] += 1
        y = torch.from_numpy(state[:-B].reshape(shape)).to(device=x.device, dtype=x.dtype)
        tt = torch.full((B,), t, device=x.device, dtype=x.dtype)
        if shared_forward:
            y.requires_grad_(True)
            with torch.enable_grad():
                f = drift(y, tt)
                div = divergence(f, y, probe)
        else:
            with torch.no_grad():
                f = drift(y, tt)
            y.requires_grad_(True)
            with torch.enable_grad():
                div = divergence(drift(y, tt), y, probe)
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


# path label -> keyword arguments of scipy_log_likelihood (None: scoresde's own path)
PATHS = {"scoresde": None,
         "reference loop": {"shared_forward": False},
         "scipy, shared forward": {"shared_forward": True}}


def load_model(case: str, device, args):
    """(score_fn, sde, description, config or None); the networks are built once per case."""
    if case == "gmm":
        gm, sde = mixture(), scoresde.VPSDE()
        return gm.score_fn(sde), sde, "2-D Gaussian mixture, exact score, VP-SDE, float64", gm
    model, sde, _, cfg = _bench.build_model(case, device, getattr(args, f"{case}_run"), args.seed)
    for p in model.parameters():  # gradients are taken with respect to x only
        p.requires_grad_(False)
    weights = getattr(args, f"{case}_run") or "random init"
    what = "toy MLP on checkerboard points" if case == "mlp" else "digits U-Net on test digits"
    return model, sde, f"{what} ({_bench.parameter_count(model):,} parameters, {weights}), float32", cfg


def load_points(case: str, source, sde, n: int, seed: int, device):
    """(points, exact log p_eps or None, prior_logp or None) for one seed."""
    if case == "gmm":
        x = source.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
        # the exact p_T as prior: what is left of the error is the solver's and the estimator's
        return x, source.log_prob_t(x, EPS, sde), lambda z: source.log_prob_t(z, sde.T, sde)
    x = load_data(source, "test", n=n, generator=torch.Generator().manual_seed(seed)).data[:n].to(device)
    return x, None, None


def run_seed(case, score, sde, source, n, seed, args, device) -> dict:
    """Every path on one seed's points and probe: values, NFE and interleaved timings."""
    x, exact, prior = load_points(case, source, sde, n, seed, device)
    D = x[0].numel()
    estimators = ["exact", "hutchinson"] if D <= args.exact_max_dim else ["hutchinson"]
    probe = rademacher(x.shape, seed, x.dtype)
    tol = dict(rtol=args.tol, atol=args.tol)
    runs: Dict[str, Callable[[], dict]] = {}
    for est in estimators:
        for path, kw in PATHS.items():
            if kw is None:
                runs[f"{path} {est}"] = lambda est=est: ours_log_likelihood(
                    score, sde, x, estimator=est, seed=seed, prior_logp=prior, **tol)
            else:
                runs[f"{path} {est}"] = lambda est=est, kw=kw: scipy_log_likelihood(
                    score, sde, x, probe=probe if est == "hutchinson" else None, prior_logp=prior, **kw, **tol)
    results = {}
    for name, fn in runs.items():  # untimed: the values, the NFE, and a warm-up
        results[name] = fn()
        print(f"  seed {seed}, {name}: {results[name]['nfe']} NFE, mean log p "
              f"{results[name]['logp'].mean().item():.5f}", flush=True)
    times = _bench.interleaved(runs, device, args.repeats)
    out = {}
    for name, res in results.items():
        logp = res["logp"].double()
        out[name] = {"nfe": res["nfe"], "seconds": times[name], "median_s": _bench.median(times[name]),
                     "logp": logp,
                     "abs_error_vs_exact": None if exact is None else (logp - exact.double()).abs().mean().item()}
    return {"paths": out, "dim": D, "estimators": estimators,
            "exact_mean_logp": None if exact is None else exact.double().mean().item()}


def run_case(case: str, n: int, args, device) -> dict:
    score, sde, what, source = load_model(case, device, args)
    seeds = [args.seed + i for i in range(args.seeds)]
    print(f"\n{case}: {what}; {n} points, seeds {seeds}", flush=True)
    per_seed = [run_seed(case, score, sde, source, n, seed, args, device) for seed in seeds]
    D, estimators = per_seed[0]["dim"], per_seed[0]["estimators"]

    rows = []
    for name in per_seed[0]["paths"]:
        est = name.split()[-1]
        mine = [s["paths"][f"scoresde {est}"] for s in per_seed]
        runs = [s["paths"][name] for s in per_seed]
        ratios = [r["median_s"] / m["median_s"] for r, m in zip(runs, mine)]
        row = {"path": name, "estimator": est, "nfe": [r["nfe"] for r in runs],
               "seconds": [r["seconds"] for r in runs], "median_s": [r["median_s"] for r in runs],
               "total_s": sum(r["median_s"] for r in runs),
               "time_vs_scoresde": ratios,
               "time_vs_scoresde_geomean": math.exp(sum(map(math.log, ratios)) / len(ratios)),
               "mean_logp": sum(r["logp"].mean().item() for r in runs) / len(runs)}
        if runs[0]["abs_error_vs_exact"] is not None:
            row["mean_abs_error_vs_exact"] = sum(r["abs_error_vs_exact"] for r in runs) / len(runs)
        if not name.startswith("scoresde"):
            row["vs_scoresde_logp"] = {
                "max_mean_diff": max(abs((r["logp"].mean() - m["logp"].mean()).item()) for r, m in zip(runs, mine)),
                "max_abs_diff": max((r["logp"] - m["logp"]).abs().max().item() for r, m in zip(runs, mine))}
        rows.append(row)
    exact = [s["exact_mean_logp"] for s in per_seed]
    return {"case": case, "description": what, "points": n, "dim": D, "seeds": seeds, "rows": rows,
            "exact_mean_logp": None if exact[0] is None else sum(exact) / len(exact),
            "skipped": [] if "exact" in estimators else
            [f"exact trace: D = {D} backward passes per evaluation, above --exact-max-dim {args.exact_max_dim}"]}


def case_markdown(case: dict, tol: float) -> str:
    has_exact = case["exact_mean_logp"] is not None
    headers = ["path", "NFE per seed", "time (s), all seeds", "mean log p"] + \
              (["mean abs error vs exact"] if has_exact else []) + ["time vs scoresde (per seed)"]
    rows = []
    for r in case["rows"]:
        ratio = (f"{r['time_vs_scoresde_geomean']:.2f}x ({min(r['time_vs_scoresde']):.2f}–"
                 f"{max(r['time_vs_scoresde']):.2f})") if len(case["seeds"]) > 1 else f"{r['time_vs_scoresde'][0]:.2f}x"
        rows.append([r["path"], "/".join(map(str, r["nfe"])), f"{r['total_s']:.3f}", f"{r['mean_logp']:.5f}"]
                    + ([f"{r['mean_abs_error_vs_exact']:.2e}"] if has_exact else []) + [ratio])
    md = [f"### {case['case']}: {case['description']}, {case['points']} points (D = {case['dim']}), "
          f"seeds {', '.join(map(str, case['seeds']))}\n",
          _bench.markdown_table(headers, rows, [False] + [True] * (len(headers) - 1))]
    if has_exact:
        md.append(f"Exact mean log p_eps: {case['exact_mean_logp']:.5f} (the exact p_T is used as the prior).\n")
    for r in case["rows"]:
        if "vs_scoresde_logp" in r:
            d = r["vs_scoresde_logp"]
            md.append(f"- {r['path']} vs scoresde: mean log p apart by at most {d['max_mean_diff']:.2e}, per point by "
                      f"at most {d['max_abs_diff']:.2e} (tolerance {tol:g}).")
    md += [f"- Skipped: {s}" for s in case["skipped"]]
    return "\n".join(md) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_common_args(p)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {CASES} (default all)")
    p.add_argument("--points", type=int, nargs=3, metavar=("GMM", "MLP", "UNET"), default=[512, 256, 32],
                   help="data points per case (default 512 256 32)")
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of both solvers (default 1e-5)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each path, interleaved (default 3)")
    p.add_argument("--exact-max-dim", type=int, default=8,
                   help="run the exact trace only up to this dimension (it costs D backward passes; default 8)")
    p.add_argument("--mlp-run", help="a trained run directory or checkpoint for the MLP (default: random init)")
    p.add_argument("--unet-run", help="a trained run directory or checkpoint for the U-Net (default: random init)")
    p.add_argument("--seed", type=int, default=0, help="network initialisation and first seed of points and probe")
    p.add_argument("--seeds", type=int, default=3,
                   help="point sets (and probes) per case, seeds --seed, --seed + 1, ...: the adaptive solvers' "
                        "NFE vary with the problem by some percent either way, so one draw can mislead (default 3)")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        _bench.fail(f"--cases must list some of {CASES}, got {args.cases!r}")
    if min(args.points) < 1 or min(args.repeats, args.seeds) < 1 or not (0 < args.tol < 1) or not math.isfinite(args.tol):
        _bench.fail("--points, --repeats and --seeds must be positive and --tol in (0, 1)")
    if args.quick:
        args.points, args.tol, args.repeats = [min(a, b) for a, b in zip(args.points, (64, 32, 4))], 1e-3, 1
        args.seeds = 1
    device = _bench.setup(args)
    env = _bench.environment(device)
    print(_bench.environment_line(env), flush=True)

    points = dict(zip(CASES, args.points))
    results = [run_case(c, points[c], args, device) for c in cases]

    markdown = (f"## PF-ODE log-likelihood: scoresde vs a scipy RK45 loop{' (quick smoke run)' if args.quick else ''}\n\n"
                f"scoresde.log_likelihood (torchdiffeq dopri5, on the device) against scipy.integrate.solve_ivp RK45 "
                f"over a flat float64 numpy state (the reference implementation's approach): the *reference loop* "
                f"as the reference writes it (the network runs twice per evaluation, for the drift and inside the "
                f"divergence) and *scipy, shared forward*, the same loop with one forward pass per evaluation. "
                f"rtol = atol = {args.tol:g}, eps = {EPS:g}; per seed the same points and Rademacher probe for all "
                f"paths. NFE counts ODE evaluations. Times: per seed the median of {args.repeats} interleaved runs, "
                f"summed over seeds; the ratio is the geometric mean over seeds of each seed's time over "
                f"scoresde's (range in brackets). {_bench.environment_line(env)}.\n\n"
                + "\n".join(case_markdown(c, args.tol) for c in results))
    print("\n" + markdown)

    fig = _bench.new_figure(5 * len(results), 7.5)
    for i, case in enumerate(results):
        labels = [r["path"] for r in case["rows"]]
        colors = ["tab:blue" if lab.startswith("scoresde") else "tab:red" if lab.startswith("reference")
                  else "tab:orange" for lab in labels]
        for j, (key, ylabel) in enumerate((("median_s", "seconds (median, summed over seeds)"),
                                           ("nfe", "ODE evaluations (summed over seeds)"))):
            ax = fig.add_subplot(2, len(results), j * len(results) + i + 1)
            ax.bar(range(len(labels)), [sum(r[key]) for r in case["rows"]], color=colors)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(ylabel)
            ax.grid(axis="y", alpha=0.3)
            if j == 0:
                ax.set_title(f"{case['case']} (D = {case['dim']}, {case['points']} points)", fontsize=10)
    payload = {"benchmark": "likelihood", "quick": args.quick, "tol": args.tol, "eps": EPS, "repeats": args.repeats,
               "seed": args.seed, "seeds": args.seeds, "environment": env, "cases": results}
    name = f"likelihood_{'_'.join(cases)}_{args.device}" + ("_quick" if args.quick else "")
    paths = _bench.write_results(args.out, name, payload, markdown, fig)
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
