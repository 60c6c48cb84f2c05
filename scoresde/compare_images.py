"""``compare`` on image runs: for each sampler and step count (or tolerance), the Fréchet distance of
its samples to held-out images in a feature space (FID with Inception-v3, the ``[eval]`` extra and
its weights; FD-digits with the shipped digits classifier, offline), the NFE and the wall time, next
to a noise floor, as a table (``report``) and a plot (``plot.fd_and_time_vs_nfe``).

Samples become uint8 pixels exactly as saved samples do (``scoresde.data.unscale``: rounded, clipped
to the data range) before the feature net, which sees them as ``scoresde.evaluate`` does
(``evaluate.image_source`` and ``evaluate.extract_features``); FD is ``metrics.frechet_distance``
of the Gaussians fitted to the two feature sets (covariance with 1/(n-1)), so a row's ``fd`` is what
``scoresde.evaluate.evaluate(samples, reference_images, metrics="fid", feature_net=...)`` reports.

``fd_se``: FD has no standard error formula; this one is a delete-a-group jackknife over the
samples (``GROUPS`` groups; v = (G-1)/G sum_g (FD_(-g) - mean FD_(-g))^2), the reference held
fixed since every row shares it. It measures the spread from the samples drawn, not FD's upward
bias O(D/N) (Chong & Forsyth 2020), which is the same for every row of a table (one N) but makes
numbers at other sample counts incomparable.

The noise floor: FD between a second held-out set of the same size as the samples, disjoint from
the reference, and the reference: what a perfect sampler scores at this N (FD's bias included).
A warning is raised when the samples or the reference are fewer than ``evaluate.fd_min_samples``
(10,000 for Inception, 5 x D for a D-dimensional feature net), the rule of ``scoresde evaluate``.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

import torch

from . import compare as _cmp
from . import metrics, plot
from .io import atomic_write_text

#: groups of the delete-a-group jackknife of FD over the samples
GROUPS = 10
FEATURE_NETS = ("inception", "digits")


def default_feature_net(data_name: str) -> str:
    """"digits" for the digits data set (its classifier is shipped), else "inception"."""
    return "digits" if data_name == "digits" else "inception"


def load_feature_net(name: str, device="cpu", inception_weights: Optional[str] = None, download: bool = True):
    """(net, is_inception): the digits classifier as a feature net, or torch-fidelity's Inception
    (a one-line ValueError from ``scoresde.evaluate`` when the extra or its weights are missing)."""
    from .evaluate import digits_feature_net, inception_feature_net
    if name not in FEATURE_NETS:
        raise ValueError(f"--feature-net must be one of {', '.join(FEATURE_NETS)}, got {name!r}")
    if name == "digits":
        return digits_feature_net(device=device), False
    return inception_feature_net(inception_weights, device, download), True


def features(x: torch.Tensor, net, *, data_range: Sequence[float], inception: bool, batch_size: int = 200) -> torch.Tensor:
    """Features (n, D) of images x (model-space floats in ``data_range``, or uint8 pixels), made
    pixels the way saved samples are and run through ``net`` as ``scoresde.evaluate`` does."""
    from .evaluate import extract_features, image_source
    src = image_source(x.detach().cpu(), data_range=data_range, layout="NCHW")
    return extract_features(src, net, batch_size=batch_size, inception=inception).features


def _stats(f: torch.Tensor):
    from .evaluate import feature_statistics
    return feature_statistics(f)


def fd(f: torch.Tensor, ref_stats) -> float:
    """FD between features f (n >= 2) and the reference's (mu, sigma)."""
    mu, sigma = _stats(f)
    return metrics.frechet_distance(mu, sigma, *ref_stats)


def fd_se(f: torch.Tensor, ref_stats, groups: int = GROUPS) -> Optional[float]:
    """The delete-a-group jackknife SE of ``fd`` over the rows of f (contiguous groups; None when
    fewer than 2 groups of a size that leaves at least 2 rows are possible)."""
    n = len(f)
    g = min(groups, n)
    if g < 2 or n - math.ceil(n / g) < 2:
        return None
    bounds = [round(k * n / g) for k in range(g + 1)]
    vals = torch.tensor([fd(torch.cat([f[:bounds[k]], f[bounds[k + 1]:]]), ref_stats) for k in range(g)],
                        dtype=torch.float64)
    return math.sqrt((g - 1) / g * float(((vals - vals.mean()) ** 2).sum()))


def fd_label(net_name: str, inception: bool) -> str:
    return "FID" if inception else f"FD-{net_name}"


def small_sample_warning(label: str, dim: int, inception: bool, n: int, n_reference: int) -> Optional[str]:
    """``scoresde.evaluate``'s warning when either set is below ``fd_min_samples(dim)``, else None."""
    from .evaluate import fd_min_samples
    floor = fd_min_samples(dim, inception)
    small = [f"{what} {count:,}" for what, count in (("samples", n), ("reference", n_reference)) if count < floor]
    if not small:
        return None
    return (f"{label} from {' and '.join(small)} images: below {floor:,} "
            + ("(Heusel et al.'s minimum for FID)" if inception else f"(5 x the {dim} feature dimensions)")
            + f", {label} is biased upward by O(D/N) and means little; compare only numbers computed "
            "with the same sample counts" + (" (papers: 50,000)" if inception else ""))


def compare_images(score_fn, sde, reference: torch.Tensor, floor_data: torch.Tensor, *, feature_net,
                   inception: bool = False, data_range: Sequence[float] = (-1.0, 1.0), num: int = 2000,
                   steps: Sequence[int] = _cmp.STEPS, tolerances: Sequence[float] = _cmp.TOLERANCES,
                   sde_tolerances: Sequence[float] = _cmp.SDE_TOLERANCES, methods=_cmp.METHODS,
                   eps: float = 1e-3, seed: int = 0, device=None, groups: int = GROUPS, batch_size: int = 200,
                   progress: bool = False) -> _cmp.Comparison:
    """Every method at every setting from one prior draw (as ``compare.compare``): a ``Comparison``
    of rows with ``fd``, ``fd_se`` (module docstring), ``fd_label`` ("FID" / "FD-<net>"), ``n``,
    ``n_reference``, NFE and seconds, and ``.floor`` (FD of ``floor_data[:num]`` against the
    reference). ``.warnings``: the small-sample warning, if any."""
    from .evaluate import net_name
    name = "inception" if inception else net_name(feature_net)
    label = fd_label(name, inception)
    feat = lambda x: features(x, feature_net, data_range=data_range, inception=inception, batch_size=batch_size)
    ref_f = feat(reference)
    ref_stats = _stats(ref_f)
    dim = ref_f.shape[1]
    floor_f = feat(floor_data[:num])
    rows = _cmp.Comparison()
    common = {"fd_label": label, "feature_net": name, "feature_dim": dim, "n_reference": len(ref_f)}
    rows.floor = {"sampler": "noise floor (data vs data)", "floor": True, "n": len(floor_f), **common,
                  "source": "held-out data not in the reference",
                  "fd": fd(floor_f, ref_stats), "fd_se": fd_se(floor_f, ref_stats, groups)}
    if progress:
        print(f"  noise floor ({rows.floor['n']} held-out images vs {len(ref_f)}): {label} {_pm(rows.floor)}", flush=True)
    shape = (num,) + tuple(reference.shape[1:])
    x_T = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(seed)).to(device or "cpu")
    for m in methods:
        for s in {"ode": tolerances, "sde": sde_tolerances}.get(m.adaptive, steps):
            x, nfe, seconds = _cmp.run_method(m, score_fn, sde, x_T, s, eps=eps, seed=seed)
            f = feat(x)
            row = {"sampler": m.label, "setting": s, "nfe": nfe, "seconds": seconds,
                   "steps": None if m.adaptive else int(s), "tolerance": float(s) if m.adaptive else None,
                   "family": _cmp.family(m.sampler, m.options), "options": dict(m.options), "n": len(f), **common,
                   "fd": fd(f, ref_stats), "fd_se": fd_se(f, ref_stats, groups)}
            rows.append(row)
            if progress:
                print(f"  {m.label:24s} {_cmp._setting(row):>12}  NFE {nfe:5d}  {seconds:6.2f} s  {label} {_pm(row)}",
                      flush=True)
    warning = small_sample_warning(label, dim, inception, num if not rows else rows[0]["n"], len(ref_f))
    rows.warnings = [warning] if warning else []
    return rows


def _pm(row: Dict) -> str:
    v, se = row.get("fd"), row.get("fd_se")
    if v is None:
        return "–"
    return f"{v:.4g} ± {se:.2g}" if se is not None else f"{v:.4g}"


def markdown_table(rows: List[Dict]) -> str:
    """Sampler, steps / rtol = atol, NFE, seconds and FD ± jackknife SE; the noise floor first."""
    floor = getattr(rows, "floor", None)
    label = (rows[0] if rows else floor or {}).get("fd_label", "FD")
    lines = [f"| sampler | steps | rtol = atol | NFE | seconds | {label} |", "|---|---:|---:|---:|---:|---:|"]
    if floor is not None:
        lines.append(f"| *{floor['sampler']}* | – | – | – | – | {_pm(floor)} |")
    for r in rows:
        steps = "–" if r.get("steps") is None else r["steps"]
        tol = "–" if r.get("tolerance") is None else f"{r['tolerance']:.0e}"
        lines.append(f"| {r['sampler']} | {steps} | {tol} | {r['nfe']} | {r['seconds']:.2f} | {_pm(r)} |")
    return "\n".join(lines) + "\n"


def report(rows: List[Dict]) -> str:
    """The table, the sample counts, the noise floor, the warnings and the verdict at each step count."""
    floor = getattr(rows, "floor", None)
    first = rows[0] if rows else floor
    label = first["fd_label"]
    lines = [markdown_table(rows),
             f"Samples: {first['n']:,} per sampler setting; reference: {first['n_reference']:,} held-out images; "
             f"features: {first['feature_net']} ({first['feature_dim']}-d). ± is a delete-a-group jackknife SE over "
             f"the samples ({GROUPS} groups, the reference held fixed); it does not include {label}'s upward bias "
             "O(D/N), shared by every row at one sample count.\n"]
    if floor is not None:
        lines.append(f"Noise floor: {label} of {floor['n']:,} held-out images not in the reference: {_pm(floor)}. "
                     f"A sampler within {_cmp.Z:g} combined SE of it is as good as this sample size can tell.\n")
    lines += [f"**Warning:** {w}\n" for w in getattr(rows, "warnings", [])]
    for s in dict.fromkeys(r["steps"] for r in rows if r.get("steps") is not None):
        at = [r for r in rows if r.get("steps") == s and r.get("fd_se") is not None]
        if at:
            v = _cmp.verdict(at, "fd", floor=floor if floor and floor.get("fd_se") is not None else None)
            lines.append(f"- steps {s}, {v['text'].replace('FD:', label + ':', 1)}")
    return "\n".join(lines) + "\n"


def write_outputs(rows: List[Dict], out_dir: str) -> Dict[str, str]:
    """compare.md (``report``), compare.json ({"floor", "rows", "warnings"}) and compare.png
    (``plot.fd_and_time_vs_nfe``: FD ± SE with the floor band, and wall time, against NFE)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"compare.{e}") for k, e in (("table", "md"), ("json", "json"), ("plot", "png"))}
    floor = getattr(rows, "floor", None)
    atomic_write_text(paths["table"], report(rows))
    atomic_write_text(paths["json"], json.dumps({"floor": floor, "rows": list(rows),
                                                 "warnings": getattr(rows, "warnings", [])}, indent=1, default=str))
    first = rows[0] if rows else floor
    plot.fd_and_time_vs_nfe(rows, paths["plot"], label=first["fd_label"], floor=floor,
                            title=f"{first['fd_label']} and wall time vs NFE ({first['n']:,} samples per setting)")
    return paths
