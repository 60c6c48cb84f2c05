"""Compare samplers on a trained model: NFE, wall time and sample quality at several step counts,
each quality number ± its standard error, next to a noise floor, with a verdict that names a
winner only when it leads by more than the noise.

Quality of m samples x against n held-out reference points y (flattened):
- ``energy_distance``: the unbiased U-statistic (``metrics.energy_distance``) 2/(mn) sum |x_i -
  y_j| - 1/(m(m-1)) sum_{i!=j} |x_i - x_j| - 1/(n(n-1)) sum_{i!=j} |y_i - y_j|, whose mean is 0
  iff the laws agree (> 0 otherwise): a sampler as good as the data scores around 0, often below.
  It is weak on small shape errors: a 10% wider 2-D Gaussian moves it by 0.004 sigma, under 2
  combined SE at m = n = 2000 in most draws.
- ``sliced_wasserstein``: sliced W2 on 256 fixed directions, biased up by sampling noise.
- ``on_target`` (e.g. ``data.on_checkerboard``): the fraction on the support; the checkerboard
  is uniform on its black squares, so this is all its exact log-density says about samples.
- ``log_density`` (a known density): the mean exact log p(x). Not a score: it should equal the
  floor's; higher means samples too concentrated on the modes, lower means mass where p is low.
- ``mode_tv`` (``mixture``, a GaussianMixture): 1/2 sum_k |f_k - w_k| between the fractions of
  samples by nearest component (``mode_weights``) and the true weights.

Standard errors ``<metric>_se``, from the samples already drawn: for the energy distance the
two-sample delete-one jackknife (Arvesen 1969), v = (m-1)/m sum_i (E_(-i) - mean E_(-i))^2 +
(n-1)/n sum_j (E_(-j) - mean E_(-j))^2, each leave-one-out value exact from row sums of the
distance matrices (the cost of the distance itself). It is consistent when the laws differ
(measured SE / SD 1.00), never too small in expectation (Efron-Stein) and, when they agree (a
degenerate U-statistic), up to sqrt(2) too large (measured 1.26-1.40): verdicts near the floor
err towards "indistinguishable". Sliced W2: the same formula over 10 groups of each sample
(delete-a-group; measured SE / SD 0.95-1.0 when the laws differ, 1.5 when they agree).
Fractions: binomial sqrt(p(1-p)/m), p = (k+1)/(m+2), so 0% and 100% are not reported as exact;
``log_density``: std / sqrt(m); ``mode_tv``: the delta method, 1/2 sqrt(Var_f(s) / m), s_k =
sign(f_k - w_k) (where f_k = w_k, the sign that gives the larger spread).

The noise floor (``noise_floor``): the same metrics for m data points, independent of the
reference, against the same reference: what a perfect sampler scores at this sample size.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from . import metrics, plot
from .io import atomic_write_text
from .options import parse_options
from .sampling import ADAPTIVE, ADAPTIVE_METHODS, SAMPLERS
from .sampling._ode import Counter

STEPS = (10, 20, 50, 100, 200)
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5)
#: adaptive_sde's error control is per step of a noisy path: far looser tolerances than an ODE's
SDE_TOLERANCES = (1e-1, 5e-2, 2e-2, 1e-2)
#: a winner must lead every other candidate by more than Z combined standard errors
Z = 2.0
#: the metrics a verdict can rank: True where lower is better
LOWER_IS_BETTER = {"energy_distance": True, "sliced_wasserstein": True, "mode_tv": True, "on_target": False,
                   "fd": True}  # fd: image runs (compare_images)
NAMES = {"energy_distance": "energy dist.", "sliced_wasserstein": "sliced W2", "on_target": "on board",
         "mode_tv": "mode TV", "log_density": "mean log p", "fd": "FD"}
SIGN_NOTE = ("Energy distance is the unbiased (U-statistic) estimate: it scatters around 0 when samples and data "
             "share a law, so a small negative value means \"at the noise floor\", not \"better than the data\".")
ODE_SAMPLERS = ("ddim", "probability_flow", "dpm_solver", "heun")


@dataclass(frozen=True)
class Method:
    """A sampler setting to sweep: ``label``, the sampler's name and fixed options. ``adaptive``:
    None for a fixed-step sampler swept over step counts, "ode" or "sde" for one swept over
    tolerances (``compare``'s ``tolerances`` or ``sde_tolerances``)."""

    label: str
    sampler: str
    options: Dict
    adaptive: Optional[str] = None


def family(sampler: str, options: Dict) -> str:
    """"ode" for a deterministic probability-flow solver, "sde" for a stochastic sampler (DDIM with
    eta > 0 and Heun with churn > 0 inject noise, so they count as SDE samplers)."""
    noisy = options.get("eta", 0) or (sampler == "heun" and options.get("churn", 0))
    return "ode" if sampler in ODE_SAMPLERS and not noisy else "sde"


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
ODE_METHODS = tuple(m.label for m in METHODS if family(m.sampler, m.options) == "ode")


def select_methods(samplers: Optional[Sequence[str]] = None, options: Optional[Sequence[str]] = None,
                   methods: Sequence[Method] = METHODS) -> List[Method]:
    """The methods of the samplers named (all if None; one with defaults for a sampler without a
    method here), with the ``--option KEY=VALUE`` items applied, and shown in their labels. Every
    item must suit every selected sampler (``options.parse_options``): ValueError naming it."""
    names = list(dict.fromkeys(samplers or [m.sampler for m in methods]))
    for name in names:
        if name not in SAMPLERS:
            raise ValueError(f"--sampler {name!r}: not a sampler; choose from {', '.join(SAMPLERS)}")
    out, seen = [], set()
    for name in names:
        given = parse_options(options, name, SAMPLERS[name])
        for m in [m for m in methods if m.sampler == name] or [Method(name, name, {}, "sde" if name in ADAPTIVE else None)]:
            merged = {**m.options, **given}
            adaptive = m.adaptive
            if name == "probability_flow":  # the ODE method decides between a step and a tolerance sweep
                adaptive = "ode" if merged.get("method", "dopri5") in ADAPTIVE_METHODS else None
            for key in given:
                if key == "return_stats" or (adaptive and key in ("rtol", "atol")):
                    item = next(i for i in options if i.partition("=")[0].strip() == key)
                    raise ValueError(f"--option {item!r}: compare sets {key} itself" +
                                     (" (it sweeps rtol = atol)" if key != "return_stats" else ""))
            key = (name, json.dumps(merged, sort_keys=True, default=str), adaptive)
            if key not in seen:
                seen.add(key)
                suffix = " ".join(f"{k}={v}" for k, v in given.items())
                base = name if set(given) & set(m.options) else m.label  # the label's own setting overridden
                out.append(Method(f"{base} {suffix}" if suffix else m.label, name, merged, adaptive))
    return out


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


# ---- quality -------------------------------------------------------------------------------------

def _fraction(k: int, m: int) -> Tuple[float, float]:
    p = (k + 1) / (m + 2)
    return k / m, math.sqrt(p * (1 - p) / m)


def quality(x: torch.Tensor, reference: torch.Tensor, on_target: Optional[Callable] = None, seed: int = 0, *,
            log_density: Optional[Callable] = None, mixture=None, reference_sums: Optional[torch.Tensor] = None) -> Dict:
    """Every quality number of samples x against ``reference`` with its ``<name>_se`` (module
    docstring). ``mixture``: the data's GaussianMixture (mode weights; default ``log_density``)."""
    flat, ref = x.flatten(1).double().cpu(), reference.flatten(1).double().cpu()
    ed, ed_se = metrics.energy_distance_se(flat, ref, reference_sums)
    sw, sw_se = metrics.sliced_wasserstein_se(flat, ref, seed=seed)
    out = {"energy_distance": ed, "energy_distance_se": ed_se, "sliced_wasserstein": sw, "sliced_wasserstein_se": sw_se}
    m = out["n"] = len(flat)
    if on_target is not None:
        out["on_target"], out["on_target_se"] = _fraction(int(on_target(x.cpu()).sum()), m)
    if log_density is None and mixture is not None:
        log_density = mixture.log_prob
    if log_density is not None:
        lp = log_density(flat).double()
        out["log_density"], out["log_density_se"] = lp.mean().item(), lp.std().item() / math.sqrt(m)
    if mixture is not None:
        w = mixture.weights.double()
        f = torch.bincount(mixture.classify(flat).cpu(), minlength=len(w)).double() / m
        s = torch.sign(f - w)
        for k in torch.nonzero(s == 0).flatten().tolist():  # on the kink of |.|: the side of larger spread
            s[k] = -1.0 if float((f * s).sum()) > 0 else 1.0
        out["mode_weights"] = f.tolist()
        out["mode_tv"] = 0.5 * float((f - w).abs().sum())
        out["mode_tv_se"] = 0.5 * math.sqrt(max(float((f * s * s).sum() - (f * s).sum() ** 2), 0.0) / m)
    return out


def noise_floor(reference: torch.Tensor, data=None, num: Optional[int] = None, seed: int = 0, **targets) -> Dict:
    """``quality`` of ``num`` draws from the data distribution against ``reference``: the floor
    below which no sampler can be told apart from the data. ``data``: a tensor of held-out points
    independent of ``reference`` (its first ``num`` are used), or a callable n -> n exact draws;
    None splits the reference in two halves (a floor at half the sample sizes, said in
    ``source``). ``targets``: ``quality``'s on_target, log_density, mixture."""
    if data is None:
        h = len(reference) // 2
        x, ref, source = reference[:h], reference[h:], "the reference split in two halves"
    else:
        x = data(num) if callable(data) else data[:num]
        ref, source = reference, "fresh data draws" if callable(data) else "held-out data not in the reference"
    out = {"sampler": "noise floor (data vs data)", "floor": True, "source": source, "n": len(x), "n_reference": len(ref)}
    out.update(quality(x, ref, seed=seed, **targets))
    return out


# ---- the sweep ----------------------------------------------------------------------------------

class Comparison(list):
    """``compare``'s rows (a list, one dict per sampler setting) with ``.floor``, the noise floor."""
    floor: Optional[Dict] = None


def compare(score_fn, sde, reference: torch.Tensor, *, num: int = 2000, steps: Sequence[int] = STEPS,
            tolerances: Sequence[float] = TOLERANCES, sde_tolerances: Sequence[float] = SDE_TOLERANCES,
            methods: Sequence[Method] = METHODS, eps: float = 1e-3, seed: int = 0, device=None,
            on_target: Optional[Callable] = None, log_density: Optional[Callable] = None, mixture=None,
            floor_data=None, progress: bool = False) -> Comparison:
    """Every method at every step count from the same prior draw: a ``Comparison`` of rows with
    each quality number and its SE, and ``.floor`` (``noise_floor`` of ``floor_data``).
    ``verdict`` and ``report`` read them."""
    shape = (num,) + tuple(reference.shape[1:])
    x_T = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(seed)).to(device or "cpu")
    targets = dict(on_target=on_target, log_density=log_density, mixture=mixture)
    ref = reference.flatten(1).double().cpu()
    ref_sums = metrics.row_sums(ref)[0]  # shared by every row
    rows = Comparison()
    rows.floor = noise_floor(ref, floor_data, num, seed=seed, **targets)
    if progress:
        print(f"  noise floor ({rows.floor['n']} data points vs {rows.floor['n_reference']}): energy dist. "
              f"{_pm(rows.floor, 'energy_distance')}", flush=True)
    for m in methods:
        settings = {"ode": tolerances, "sde": sde_tolerances}.get(m.adaptive, steps)
        for s in settings:
            x, nfe, seconds = run_method(m, score_fn, sde, x_T, s, eps=eps, seed=seed)
            row = {"sampler": m.label, "setting": s, "nfe": nfe, "seconds": seconds,
                   "steps": None if m.adaptive else int(s), "tolerance": float(s) if m.adaptive else None,
                   "family": family(m.sampler, m.options), "options": dict(m.options)}
            row.update(quality(x, ref, seed=seed, reference_sums=ref_sums, **targets))
            rows.append(row)
            if progress:
                print(f"  {m.label:24s} {_setting(row):>12}  NFE {nfe:5d}  {seconds:6.2f} s  "
                      f"energy dist. {_pm(row, 'energy_distance')}", flush=True)
    return rows


# ---- verdicts and tables ------------------------------------------------------------------------

def _setting(row: Dict) -> str:
    """'steps 20' for a fixed-step sampler, 'rtol=atol 1e-03' for an adaptive one."""
    if row.get("tolerance") is not None:
        return f"rtol=atol {row['tolerance']:.0e}"
    return f"steps {row['steps']}"


def _pm(row: Dict, metric: str) -> str:
    """'value ± SE' ('–' where the row lacks the metric)."""
    v, se = row.get(metric), row.get(metric + "_se")
    if v is None:
        return "–"
    if metric == "on_target":
        return f"{100 * v:.1f}% ± {100 * se:.1f}%"
    return f"{v:.4f} ± {se:.4f}" if se is not None else f"{v:.4f}"


def _floor(rows, floor: Optional[Dict]) -> Optional[Dict]:
    return floor if floor is not None else getattr(rows, "floor", None)


def verdict(rows: Iterable[Dict], metric: str = "energy_distance", candidates: Optional[Iterable[str]] = None, *,
            floor: Optional[Dict] = None, z: float = Z) -> Dict:
    """Is one of ``rows`` (those whose sampler is in ``candidates``, if given) better on ``metric``
    than all the others beyond the noise?

    The leader (lowest, or highest for on_target) is named ``best`` only if for every other row
    r, |metric_lead - metric_r| > z * sqrt(se_lead^2 + se_r^2); otherwise ``best`` is None and
    ``tied`` lists the leader and every row within that margin of it. With ``floor``,
    ``at_floor`` lists the rows within the same margin of the floor. Labels are the sampler names
    (with the setting when a sampler appears more than once). Returns a dict with ``text``, one line.
    """
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"metric must be one of {tuple(LOWER_IS_BETTER)} (log_density has no better direction), got {metric!r}")
    wanted = None if candidates is None else set(candidates)
    pool = [r for r in rows if r.get(metric) is not None and (wanted is None or r["sampler"] in wanted)]
    if not pool:
        raise ValueError(f"no rows with {metric!r}" + ("" if wanted is None else f" among {sorted(wanted)}"))
    names = [r["sampler"] for r in pool]
    label = (lambda r: r["sampler"]) if len(set(names)) == len(names) else (lambda r: f"{r['sampler']} ({_setting(r)})")
    sign = 1.0 if LOWER_IS_BETTER[metric] else -1.0
    lead = min(pool, key=lambda r: sign * r[metric])
    margin = lambda a, b: z * math.hypot(a.get(metric + "_se") or 0.0, b.get(metric + "_se") or 0.0)
    tied = [label(r) for r in pool if r is lead or sign * (r[metric] - lead[metric]) <= margin(lead, r)]
    out = {"metric": metric, "best": label(lead) if len(tied) == 1 else None, "leader": label(lead), "tied": tied, "z": z}
    name = NAMES[metric]
    if len(pool) == 1:
        out["text"] = f"{name}: only {out['best']} ({_pm(lead, metric)}), nothing to compare with"
    elif out["best"]:
        out["text"] = f"{name}: best {out['best']} ({_pm(lead, metric)}), ahead of every other by more than {z:g} combined SE"
    else:
        out["text"] = (f"{name}: indistinguishable: {', '.join(tied)} (within {z:g} combined SE of the leader "
                       f"{label(lead)}, {_pm(lead, metric)})")
    if floor is not None and floor.get(metric) is not None:
        out["at_floor"] = [label(r) for r in pool if abs(r[metric] - floor[metric]) <= margin(floor, r)]
        out["text"] += f"; at the noise floor: {', '.join(out['at_floor']) or 'none'}"
    return out


def verdicts(rows: List[Dict], floor: Optional[Dict] = None) -> List[Dict]:
    """``verdict`` among the fixed-step samplers at each step count, on each rankable metric the
    rows carry (adaptive samplers have no step count to share; compare them by NFE)."""
    floor, out = _floor(rows, floor), []
    for s in dict.fromkeys(r["steps"] for r in rows if r.get("steps") is not None):
        at = [r for r in rows if r.get("steps") == s]
        for metric in LOWER_IS_BETTER:
            if any(r.get(metric) is not None for r in at):
                out.append({"steps": s, **verdict(at, metric, floor=floor)})
    return out


def markdown_table(rows: List[Dict], floor: Optional[Dict] = None) -> str:
    """One row per sampler setting: steps (fixed-step samplers) or rtol = atol (adaptive ones), then
    the NFE actually counted, which differs from the steps (e.g. the final denoising step, two
    evaluations per Heun step), then each quality number ± one SE; the noise floor first; the
    sign of the energy distance explained below."""
    floor = _floor(rows, floor)
    shown = [k for k in NAMES if any(r.get(k) is not None for r in rows)]
    head = "| sampler | steps | rtol = atol | NFE | seconds | " + " | ".join(NAMES[k] for k in shown) + " |"
    lines = [head, "|---|---:|---:|---:|---:|" + "---:|" * len(shown)]
    if floor is not None:
        lines.append(f"| *{floor['sampler']}* | – | – | – | – | " + " | ".join(_pm(floor, k) for k in shown) + " |")
    for r in rows:
        steps = "–" if r.get("steps") is None else r["steps"]
        tol = "–" if r.get("tolerance") is None else f"{r['tolerance']:.0e}"
        lines.append(f"| {r['sampler']} | {steps} | {tol} | {r['nfe']} | {r['seconds']:.2f} | "
                     + " | ".join(_pm(r, k) for k in shown) + " |")
    lines += ["", SIGN_NOTE + " ± is one standard error (jackknife; binomial for fractions)."]
    return "\n".join(lines) + "\n"


def report(rows: List[Dict], floor: Optional[Dict] = None) -> str:
    """The table, the noise floor and the verdicts at each step count, as markdown."""
    floor = _floor(rows, floor)
    lines = [markdown_table(rows, floor)]
    if floor is not None:
        lines.append(f"Noise floor: {floor['n']} data points vs {floor['n_reference']} reference points "
                     f"({floor['source']}): " + ", ".join(f"{NAMES[k]} {_pm(floor, k)}" for k in NAMES
                                                          if floor.get(k) is not None)
                     + f". A sampler within {Z:g} combined SE of it is as good as this sample size can tell.\n")
    lines.append(f"Verdicts: a sampler is named best only if it leads every other by more than {Z:g} combined "
                 "standard errors, sqrt(se1² + se2²); otherwise they are indistinguishable at this sample size.\n")
    lines += [f"- steps {v['steps']}, {v['text']}" for v in verdicts(rows, floor)]
    return "\n".join(lines) + "\n"


def write_outputs(rows: List[Dict], out_dir: str, floor: Optional[Dict] = None) -> Dict[str, str]:
    """compare.md (``report``), compare.json (``{"floor": the noise floor's row, "rows": [...]}``) and compare.png (sliced W2 vs NFE with SE bars and the floor band; the
    unbiased energy distance can dip below 0 near the floor, which a log axis cannot show)."""
    floor = _floor(rows, floor)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"table": os.path.join(out_dir, "compare.md"), "json": os.path.join(out_dir, "compare.json"),
             "plot": os.path.join(out_dir, "compare.png")}
    atomic_write_text(paths["table"], report(rows, floor))
    atomic_write_text(paths["json"], json.dumps({"floor": floor, "rows": list(rows)}, indent=1, default=str))
    n = rows[0].get("n") if rows else None
    plot.quality_vs_nfe(rows, paths["plot"], "sliced_wasserstein", ylabel="sliced Wasserstein-2 to held-out data",
                        floor=floor, title="Sample quality vs cost" + (f" ({n} samples per setting)" if n else ""))
    return paths
