"""Weak convergence of the stochastic samplers: the discretisation bias of per-component moments.

For every config of tests/test_sampler_distributions.py (``CONFIGS``) and every SDE, the sampler
runs with the exact score of the suite's 2-D mixture (``conftest.mixture``) from ``--samples``
exact draws of p_T to eps = 1e-3 (no denoising step), in float32 like the tests, at steps N/4, N/2
and N, N the config's own (adaptive_sde: rtol = atol = 4x, 2x and 1x its own). At each level every
statistic of ``stats.moment_report`` (per component: the whitened mean error, the relative
whitened-covariance error; the weight errors) is measured against the exact p_eps. With 300,000
draws the Monte-Carlo SE of a statistic is at most 0.6% (a relative variance of the smallest
component), well below the biases at N/4 of every sampler here, so the ladder shows the weak
order: the bias of the most biased statistic should shrink by 2^p per doubling of the steps.

The bias bounds for the test file are the values at N widened by 2 Monte-Carlo SE: for means and
weights the largest |value| + 2 SE (a symmetric bound), for covariances per component the interval
(min(0, value - 2 SE), max(0, value + 2 SE)) over its entries; rounded outwards to 0.001. (Values
at N/4 and N/2 scaled by 4^-p and 2^-p would be looser where the ladder is still pre-asymptotic,
as for several samplers here whose bias falls faster than N^-p at first.)

Printed, and written to ``--out`` (default benchmarks/results) as weak_convergence.md (a table per
SDE: for each config the most biased statistic at the coarsest level with its signed values at
N/4, N/2, N, the observed orders log2(b(N/2^j) / b(N/2^(j-1))), the largest |bias| of each kind
at N and the bounds) and weak_convergence.json (every value); last, the ``BIAS`` literal to copy
into the test file.

    python benchmarks/weak_convergence.py --threads 1          # ~2 h on one loaded CPU core
    python benchmarks/weak_convergence.py --only x2,srk --name update   # re-measure some configs
    python benchmarks/weak_convergence.py --rebuild benchmarks/results/weak_convergence.json update.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (os.path.join(ROOT, "tests"), ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)

import conftest  # noqa: E402  (the suite's mixture and SDEs)
import test_sampler_distributions as T  # noqa: E402
from stats import KINDS, MomentReport, Stat, moment_report  # noqa: E402
from scoresde.io import atomic_write_text  # noqa: E402




def the_mixture():
    """The suite's mixture, from conftest's fixture function itself (one definition)."""
    fixture = conftest.mixture
    return getattr(fixture, "__wrapped__", fixture)()


def ladder(config):
    """[(options, ratio)] from coarsest to the config's own; ratio = steps_j / N (or tol / tol_j)."""
    o = config.options
    if "steps" in o:
        N = o["steps"]
        levels = [max(1, N // 4), max(1, N // 2), N]
        return [(dict(o, steps=s), s / N) for s in levels]
    return [(dict(o, rtol=o["rtol"] * f, atol=o["atol"] * f), 1 / f) for f in (4, 2, 1)]


def run_level(config, sde, mixture, target, options, samples, chunk, seed):
    """Samples of the config at ``options`` (in chunks, each from its own exact p_T draw)."""
    out = []
    score = mixture.score_fn(sde)
    prior = mixture.marginal(sde, 1.0)
    for c, start in enumerate(range(0, samples, chunk)):
        n = min(chunk, samples - start)
        x_T = prior.sample(n, torch.Generator().manual_seed(seed + 2 * c))
        out.append(config.sampler(score, sde, x_T, eps=T.EPS, denoise=False,
                                  generator=torch.Generator().manual_seed(seed + 2 * c + 1), **options))
    x = torch.cat(out)
    return moment_report(mixture, target, x)


def bounds(reports, margin=2.0):
    """Bias bounds at the config's own options (the last level): each statistic's value there widened
    by ``margin`` Monte-Carlo SE; symmetric for means and weights, (lo, hi) per component for the
    covariances; rounded outwards to 0.001."""
    up = lambda v: math.ceil(v * 1000 - 1e-9) / 1000  # noqa: E731
    down = lambda v: math.floor(v * 1000 + 1e-9) / 1000  # noqa: E731
    last = reports[-1]
    mean = weight = 0.0
    cov = [[0.0, 0.0] for _ in last.counts]
    for s in last.stats:
        lo, hi = s.value - margin * s.se, s.value + margin * s.se
        if s.kind == "mean":
            mean = max(mean, abs(lo), abs(hi))
        elif s.kind == "weight":
            weight = max(weight, abs(lo), abs(hi))
        else:
            cov[s.k][0] = min(cov[s.k][0], lo)
            cov[s.k][1] = max(cov[s.k][1], hi)
    return up(mean), up(weight), [(down(lo), up(hi)) for lo, hi in cov]


def observed(reports):
    """The statistic most biased (in its own SE) at the coarsest level; its signed values; the orders."""
    first = reports[0].stats
    i = max(range(len(first)), key=lambda j: abs(first[j].value) / first[j].se)
    vals = [r.stats[i].value for r in reports]
    orders = [math.log2(a / b) if a * b > 0 else float("nan") for a, b in zip(vals, vals[1:])]
    return first[i].name, vals, first[i].se, orders, abs(vals[0]) > 4 * first[i].se


def measure(config, sde_name, mixture, samples, chunk, seed):
    sde = conftest.make_sdes()[sde_name]
    target = mixture.marginal(sde, T.EPS)
    t0 = time.perf_counter()
    levels = [o for o, _ in ladder(config)]
    reports = [run_level(config, sde, mixture, target, o, samples, chunk, seed) for o in levels]
    return dict(sde=sde_name, label=config.label, order=config.order, samples=samples, levels=levels,
                names=[[s.name, s.kind, s.k] for s in reports[0].stats],
                values=[[s.value for s in r.stats] for r in reports], ses=[[s.se for s in r.stats] for r in reports],
                counts=[r.counts for r in reports], seconds=time.perf_counter() - t0)


def reports_of(result):
    return [MomentReport(stats=[Stat(kind, k, name, v, se) for (name, kind, k), v, se in zip(result["names"], vals, ses)],
                         counts=c)
            for vals, ses, c in zip(result["values"], result["ses"], result["counts"])]


def header(sde_name, samples):
    return [f"\n### {sde_name} ({samples:,} samples per run)\n",
            "| sampler | weak order | levels | most biased statistic at the coarsest level: value at each level "
            "(MC SE) | observed orders | max abs bias at N: mean / cov / weight | bounds: mean, weight, cov per component | s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]


def row(result):
    reports = reports_of(result)
    name, vals, se, orders, resolved = observed(reports)
    b = bounds(reports)
    result["bounds"] = dict(mean=b[0], weight=b[1], cov=b[2])
    result["dominant"] = dict(name=name, values=vals, se=se, orders=orders)
    lv = ", ".join(str(o.get("steps", o.get("rtol"))) for o in result["levels"])
    values = " → ".join(f"{100 * v:+.2f}%" for v in vals) + f" (±{100 * se:.2f}%)"
    ords = ", ".join("n/a" if math.isnan(o) else f"{o:.2f}" for o in orders)
    if not resolved:
        ords += " (below 4 SE at the coarsest level)"
    mx = " / ".join(f"{100 * reports[-1].max_abs(k):.2f}%" for k in KINDS)
    order = result["order"] if result["order"] is not None else "adaptive"
    return (f"| {result['label']} | {order} | {lv} | {name}: {values} | {ords} | {mx} | "
            f"{b[0]}, {b[1]}, {b[2]} | {result['seconds']:.0f} |")


def literal(results):
    lines = ["", "BIAS for tests/test_sampler_distributions.py, label: {sde: (mean, weight, cov per component)}:", "BIAS = {"]
    for config in T.CONFIGS:
        rows = {r["sde"]: r["bounds"] for r in results if r["label"] == config.label}
        if rows:
            lines.append(f'    "{config.label}": {{')
            for s, b in sorted(rows.items(), key=lambda kv: T.SDE_NAMES.index(kv[0])):
                lines.append(f'        "{s}": ({b["mean"]}, {b["weight"]}, {[tuple(c) for c in b["cov"]]}),')
            lines.append("    },")
    return lines + ["}"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=300_000)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--sde", default="vp,subvp,ve")
    ap.add_argument("--only", default="", help="comma-separated substrings of config labels (default: all)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--name", default="weak_convergence", help="stem of the result files")
    ap.add_argument("--rebuild", nargs="+", metavar="JSON",
                    help="no runs: tabulate these earlier results (a later file's (sampler, SDE) replaces an earlier's)")
    ap.add_argument("--quick", action="store_true", help="20,000 samples, first two configs, VP only, nothing written")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sdes = args.sde.split(",")
    configs = [c for c in T.CONFIGS if not args.only or any(k in c.label for k in args.only.split(","))]
    if args.quick:
        args.samples, configs, sdes = 20_000, configs[:2], ["vp"]
    md = []
    if args.rebuild:
        merged = {}
        for path in args.rebuild:
            with open(path) as f:
                data = json.load(f)
                for r in data["results"]:
                    r.setdefault("samples", data.get("samples"))
                    merged[(r["label"], r["sde"])] = r
        labels = [c.label for c in T.CONFIGS]
        keys = sorted((k for k in merged if k[0] in labels), key=lambda k: (T.SDE_NAMES.index(k[1]), labels.index(k[0])))
        results = [merged[k] for k in keys]
        for sde_name in T.SDE_NAMES:
            mine = [r for r in results if r["sde"] == sde_name]
            if mine:
                md += header(sde_name, mine[0]["samples"]) + [row(r) for r in mine]
        print("\n".join(md))
    else:
        mixture = the_mixture()
        results = []
        for sde_name in sdes:
            md += header(sde_name, args.samples)
            print("\n".join(md[-3:]), flush=True)
            for config in configs:
                results.append(measure(config, sde_name, mixture, args.samples, args.chunk, args.seed))
                md.append(row(results[-1]))
                print(md[-1], flush=True)
    lit = literal(results)
    print("\n".join(lit), flush=True)
    if not args.quick:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, args.name)
        how = ("By `python benchmarks/weak_convergence.py` (see its docstring)" +
               (f", tabulated with --rebuild from {len(args.rebuild)} runs (later runs re-measured changed configs)"
                if args.rebuild else "") + ".\n")
        atomic_write_text(stem + ".md", "# Weak convergence of the stochastic samplers\n\n" + how +
                          "\n".join(md + ["", "```python"] + lit[2:] + ["```"]) + "\n")
        keep = ("sde", "label", "order", "samples", "levels", "names", "values", "ses", "counts", "seconds", "bounds", "dominant")
        short = lambda k, v: [[round(x, 7) for x in lv] for lv in v] if k in ("values", "ses") else v  # noqa: E731
        rows = ",\n".join(json.dumps({k: short(k, r[k]) for k in keep if k in r}) for r in results)
        atomic_write_text(stem + ".json", f'{{"eps": {T.EPS}, "results": [\n{rows}\n]}}\n')
        print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
