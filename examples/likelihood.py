"""Exact log-likelihoods through the probability-flow ODE, checked against a closed form.

For a Gaussian mixture the density is known exactly, so the PF-ODE log-likelihood
(scoresde.log_likelihood with the mixture's exact score) can be compared point by point with the
analytic log p(x). It shows
  * the exact trace reproduces log p(x) up to the ODE solver's tolerance, once the prior term uses
    the true p_T (N(0, I) is only approximately p_T at T = 1);
  * Hutchinson's trace estimator is unbiased (mean error ~ 0) but adds per-point noise, which
    shrinks like 1/sqrt(probes); Rademacher probes have lower variance than Gaussian ones;
and, given a trained run (--run), the test bits/dim of an image model (or test NLL of a toy one).

    python examples/likelihood.py
    python examples/likelihood.py --run runs/examples/train_digits
"""
import argparse
import io
import math
import os
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import scoresde as sd  # noqa: E402
from scoresde.data import toy_mixture  # noqa: E402
from scoresde.run import load_data  # noqa: E402
from scoresde.io import atomic_write_bytes  # noqa: E402

from _common import default_workdir, markdown, run_main, write_json, write_text  # noqa: E402

SDES = {"vp": sd.VPSDE, "subvp": sd.SubVPSDE, "ve": sd.VESDE}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sde", choices=tuple(SDES), default="vp")
    p.add_argument("--num", type=int, default=500, help="mixture points to evaluate")
    p.add_argument("--run", help="a trained run: also report its test bits/dim (images) or NLL (toys)")
    p.add_argument("--num-test", type=int, default=100, help="test examples for --run")
    p.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds")
    p.add_argument("--workdir", default=default_workdir("likelihood"))
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)

    gm, sde = toy_mixture("gmm"), SDES[args.sde]()
    score = gm.score_fn(sde)
    g = torch.Generator().manual_seed(0)
    x = gm.sample(32 if args.quick else args.num, g)
    truth = gm.log_prob(x)
    exact_prior = lambda z: gm.log_prob_t(z, sde.T, sde)  # noqa: E731
    settings = [  # (label, keyword arguments of log_likelihood)
        ("exact trace, prior N(0, I)", dict(estimator="exact")),
        ("exact trace, exact p_T", dict(estimator="exact", prior_logp=exact_prior)),
        ("Hutchinson Rademacher x1", dict(noise="rademacher", prior_logp=exact_prior)),
        ("Hutchinson Gaussian x1", dict(noise="gaussian", prior_logp=exact_prior)),
        ("Hutchinson Rademacher x8", dict(noise="rademacher", probes=8, prior_logp=exact_prior)),
    ]
    rows, results = [], {}
    for label, kw in settings:
        t0 = time.time()
        res = sd.log_likelihood(score, sde, x, generator=torch.Generator().manual_seed(1), **kw)
        err = (res.logp - truth).double()
        results[label] = res.logp
        # every mean comes with its standard error sd / sqrt(n): whether a Hutchinson mean error of
        # a few tenths of a nat is a bias or noise depends on it
        rows.append({"setting": label, "mean_error": err.mean().item(), "mean_error_se": standard_error(err),
                     "mean_abs_error": err.abs().mean().item(), "mean_abs_error_se": standard_error(err.abs()),
                     "error_sd": err.std().item(), "nfe": res.nfe, "seconds": time.time() - t0})
    table = markdown(("log-likelihood", "mean error ± se (nats)", "mean abs. error ± se", "sd of error", "NFE", "seconds"),
                     [(r["setting"], f"{r['mean_error']:+.4f} ± {r['mean_error_se']:.4f}",
                       f"{r['mean_abs_error']:.4f} ± {r['mean_abs_error_se']:.4f}", f"{r['error_sd']:.4f}",
                       r["nfe"], f"{r['seconds']:.2f}") for r in rows])
    intro = (f"{len(x)} points of a 2-D Gaussian mixture, {args.sde.upper()}-SDE, dopri5 rtol = atol = 1e-5; "
             f"error = PF-ODE log p(x) - analytic log p(x); the Hutchinson rows use the exact p_T; "
             f"± is the standard error of the mean over the {len(x)} points\n")
    print(intro)
    print(table)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for label in ("Hutchinson Rademacher x1", "exact trace, exact p_T"):
        ax.scatter(truth, results[label], s=6, label=label)
    ax.plot([truth.min(), truth.max()], [truth.min(), truth.max()], "k--", lw=0.8)
    ax.set_xlabel("analytic log p(x)")
    ax.set_ylabel("probability-flow ODE log p(x)")
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(os.path.join(args.workdir, "likelihood.png"), buf.getvalue())

    summary = {"sde": args.sde, "num": len(x), "rows": rows}
    report = intro + "\n" + table
    if args.run:
        summary["run"] = trained_run(args.run, 8 if args.quick else args.num_test, 1e-3 if args.quick else 1e-5)
        report += "\n" + summary["run"]["line"] + "\n"
    write_json(os.path.join(args.workdir, "likelihood.json"), summary)
    write_text(os.path.join(args.workdir, "likelihood.md"), report)
    print(f"wrote likelihood.md, likelihood.json, likelihood.png in {args.workdir}")


def standard_error(values: torch.Tensor) -> float:
    """sd / sqrt(n) of per-point values: the standard error of their mean."""
    return values.double().std().item() / math.sqrt(values.numel())


def trained_run(path: str, n: int, tol: float) -> dict:
    """Test bits/dim (image data) or NLL in nats (toys) of a trained run, through the PF-ODE."""
    run = sd.load(path)
    test = load_data(run.config, "test")
    g = torch.Generator().manual_seed(0)
    if test.is_image:
        res = sd.bits_per_dim(run.score_fn, run.sde, test.pixels[:n], data_range=run.data_range,
                              estimator="hutchinson", rtol=tol, atol=tol, generator=g)
        values, unit = res.bpd.double(), "bits/dim"
    else:
        res = sd.log_likelihood(run.score_fn, run.sde, test.data[:n], estimator="exact", rtol=tol, atol=tol)
        values, unit = -res.logp.double(), "nats (NLL)"
    mean, se = values.mean().item(), standard_error(values)
    line = f"{path} (step {run.step}): test {unit} {mean:.3f} ± {se:.3f} (standard error) on {len(values)} examples (NFE {res.nfe})"
    print(line + "\n")
    return {"path": run.path, "step": run.step, "unit": unit, "mean": mean, "se": se, "n": len(values), "nfe": res.nfe,
            "line": line}


if __name__ == "__main__":
    run_main(main)
