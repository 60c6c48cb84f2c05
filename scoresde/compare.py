"""Compare samplers on a trained model: NFE, wall time and sample quality at several step counts.

Quality is a two-sample distance between the samples and held-out data (energy distance and
sliced Wasserstein-2, on flattened samples), plus, for the checkerboard, the fraction of samples
on the board's black squares. NFE is counted, not assumed: every score call is tallied.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import metrics, plot
from .io import atomic_write_text
from .sampling import SAMPLERS
from .sampling._ode import Counter

STEPS = (10, 20, 50, 100, 200)
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5)
#: adaptive_sde's error control is per step of a noisy path: far looser tolerances than an ODE's
SDE_TOLERANCES = (1e-1, 5e-2, 2e-2, 1e-2)


@dataclass(frozen=True)
class Method:
    """A sampler setting to sweep: ``label``, the sampler's name and fixed options. ``adaptive``:
    None for a fixed-step sampler swept over step counts, "ode" or "sde" for one swept over
    tolerances (``compare``'s ``tolerances`` or ``sde_tolerances``)."""

    label: str
    sampler: str
    options: Dict
    adaptive: Optional[str] = None


METHODS = (
    Method("euler_maruyama", "euler_maruyama", {}),
    Method("predictor_corrector", "predictor_corrector", {}),
    Method("ancestral", "ancestral", {}),
    Method("ddim", "ddim", {}),
    Method("pf_ode:heun", "probability_flow", {"method": "heun"}),
    Method("pf_ode:dopri5", "probability_flow", {"method": "dopri5"}, adaptive="ode"),
    Method("dpm_solver++:2M", "dpm_solver", {}),
    # data prediction: with the demo's trained network, noise prediction + corrector left one of
    # 2,000 samples at |x| ~ 350 at 10 steps (and none at 20); data prediction none
    Method("dpm_solver:2M+corrector", "dpm_solver", {"corrector": True, "schedule": "quadratic"}),
    Method("heun:edm", "heun", {}),
    Method("adaptive_sde", "adaptive_sde", {}, adaptive="sde"),
)
#: the deterministic methods (probability-flow ODE solvers) among METHODS
ODE_METHODS = tuple(m.label for m in METHODS if m.sampler in ("ddim", "probability_flow", "dpm_solver", "heun"))


def run_method(method: Method, score_fn, sde, x_T: torch.Tensor, setting, eps: float = 1e-3, seed: int = 0):
    """Run one sampler at one step count (or tolerance, for adaptive ones): (samples, nfe, seconds)."""
    counted = Counter(score_fn)
    options = dict(method.options)
    if method.adaptive:
        options.update(rtol=setting, atol=setting)
    else:
        options["steps"] = int(setting)
    g = torch.Generator(device=x_T.device).manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        x = SAMPLERS[method.sampler](counted, sde, x_T, eps=eps, generator=g, **options)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return x, counted.nfe, time.perf_counter() - start


def quality(x: torch.Tensor, reference: torch.Tensor, on_target: Optional[Callable] = None, seed: int = 0) -> Dict:
    flat, ref = x.flatten(1).double().cpu(), reference.flatten(1).double().cpu()
    out = {"energy_distance": metrics.energy_distance(flat, ref),
           "sliced_wasserstein": metrics.sliced_wasserstein(flat, ref, generator=torch.Generator().manual_seed(seed))}
    if on_target is not None:
        out["on_target"] = on_target(x.cpu()).float().mean().item()
    return out


def compare(score_fn, sde, reference: torch.Tensor, *, num: int = 2000, steps: Sequence[int] = STEPS,
            tolerances: Sequence[float] = TOLERANCES, sde_tolerances: Sequence[float] = SDE_TOLERANCES,
            methods: Sequence[Method] = METHODS, eps: float = 1e-3,
            seed: int = 0, device=None, on_target: Optional[Callable] = None, progress: bool = False) -> List[Dict]:
    """Every method at every step count from the same prior draw; a list of result rows."""
    shape = (num,) + tuple(reference.shape[1:])
    x_T = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(seed)).to(device or "cpu")
    rows = []
    for m in methods:
        settings = {"ode": tolerances, "sde": sde_tolerances}.get(m.adaptive, steps)
        for s in settings:
            x, nfe, seconds = run_method(m, score_fn, sde, x_T, s, eps=eps, seed=seed)
            row = {"sampler": m.label, "setting": s, "nfe": nfe, "seconds": seconds,
                   "steps": None if m.adaptive else int(s), "tolerance": float(s) if m.adaptive else None}
            row.update(quality(x, reference, on_target, seed))
            rows.append(row)
            if progress:
                print(f"  {m.label:24s} {_setting(row):>12}  NFE {nfe:5d}  {seconds:6.2f} s  "
                      f"energy dist. {row['energy_distance']:.4f}", flush=True)
    return rows


def _setting(row: Dict) -> str:
    """'steps 20' for a fixed-step sampler, 'rtol=atol 1e-03' for an adaptive one."""
    if row.get("tolerance") is not None:
        return f"rtol=atol {row['tolerance']:.0e}"
    return f"steps {row['steps']}"


def markdown_table(rows: List[Dict]) -> str:
    """One row per sampler setting: steps (fixed-step samplers) or rtol = atol (adaptive ones), then
    the NFE actually counted, which differs from the steps (e.g. the final denoising step, two
    evaluations per Heun step)."""
    has_target = any("on_target" in r for r in rows)
    head = "| sampler | steps | rtol = atol | NFE | seconds | energy dist. | sliced W2 |" + (" on board |" if has_target else "")
    sep = "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_target else "")
    lines = [head, sep]
    for r in rows:
        steps = "–" if r.get("steps") is None else r["steps"]
        tol = "–" if r.get("tolerance") is None else f"{r['tolerance']:.0e}"
        line = (f"| {r['sampler']} | {steps} | {tol} | {r['nfe']} | {r['seconds']:.2f} | "
                f"{r['energy_distance']:.4f} | {r['sliced_wasserstein']:.4f} |")
        if has_target:
            line += f" {100 * r['on_target']:.1f}% |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_outputs(rows: List[Dict], out_dir: str) -> Dict[str, str]:
    """compare.md (table), compare.json (rows) and compare.png (sliced Wasserstein vs NFE; the
    unbiased energy distance can dip below 0 near the noise floor, which a log axis cannot show)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"table": os.path.join(out_dir, "compare.md"), "json": os.path.join(out_dir, "compare.json"),
             "plot": os.path.join(out_dir, "compare.png")}
    atomic_write_text(paths["table"], markdown_table(rows))
    atomic_write_text(paths["json"], json.dumps(rows, indent=1))
    plot.quality_vs_nfe(rows, paths["plot"], "sliced_wasserstein", ylabel="sliced Wasserstein-2 to held-out data")
    return paths
