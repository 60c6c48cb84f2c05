"""Figures: 2-D scatter panels, image grids, trajectories, quality-vs-NFE curves.

Every function writes one PNG atomically (a temporary file and a rename) and returns its path.
matplotlib runs on the non-interactive Agg backend, so plotting works on headless machines.
"""
from __future__ import annotations

import io as _io
import math
from typing import Dict, Iterable, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .io import atomic_write_bytes  # noqa: E402

LIM = (-2.6, 2.6)


def _save(fig, path: str) -> str:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def scatter_panels(panels: Dict[str, torch.Tensor], path: str, lim: Tuple[float, float] = LIM,
                   title: Optional[str] = None, cols: int = 4) -> str:
    """One 2-D scatter plot per entry of ``panels`` (name -> (N, 2) points)."""
    n = max(len(panels), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (name, pts) in zip(axes.flat, panels.items()):
        pts = pts.detach().float().cpu().reshape(len(pts), -1)
        ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.5, color="tab:blue", rasterized=True)
        ax.set_xlim(*lim)
        ax.set_ylim(*lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def image_grid(images: torch.Tensor, path: str, data_range: Sequence[float] = (-1.0, 1.0),
               nrow: Optional[int] = None, title: Optional[str] = None) -> str:
    """A grid of images (N, C, H, W) with values on ``data_range``."""
    x = images.detach().float().cpu()
    lo, hi = data_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    canvas = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    fig, ax = plt.subplots(figsize=(max(3, nrow * 0.6), max(3, ncol * 0.6)))
    img = canvas.permute(1, 2, 0).numpy()
    ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def save_samples(x: torch.Tensor, dataset, path: str, title: Optional[str] = None) -> str:
    """Samples as a scatter plot (2-D data) or an image grid (image data)."""
    if x.dim() == 4:
        return image_grid(x, path, data_range=getattr(dataset, "data_range", (-1.0, 1.0)), title=title)
    return scatter_panels({title or "samples": x}, path)


def trajectories(paths: torch.Tensor, path: str, lim: Tuple[float, float] = (-4.0, 4.0),
                 title: str = "probability-flow trajectories") -> str:
    """Paths (steps, N, 2) from noise (first row) to data (last row)."""
    p = paths.detach().float().cpu()
    fig, ax = plt.subplots(figsize=(4, 4))
    for i in range(p.shape[1]):
        ax.plot(p[:, i, 0], p[:, i, 1], lw=0.6, alpha=0.7)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=6, color="gray", label="x_T")
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=6, color="black", label="x_0")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


#: SDE samplers solid, ODE solvers dashed; colours and markers cycle independently, so ten curves differ
FAMILY_STYLE = {"sde": "-", "ode": "--"}
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p")


def quality_vs_nfe(rows: Iterable[dict], path: str, metric: str, ylabel: Optional[str] = None,
                   logy: bool = True, *, floor: Optional[dict] = None, title: Optional[str] = None,
                   z: float = 2.0) -> str:
    """One curve per sampler: ``metric`` against NFE (rows carry 'sampler', 'nfe', the metric, and
    optionally '<metric>_se', drawn as +-1 SE bars, and 'family', "sde" (solid lines, listed first)
    or "ode" (dashed)). ``floor``: a dict with the metric (and its SE) for data against data, drawn
    as a grey band of +-``z`` SE around it: what a perfect sampler would score."""
    by_sampler: Dict[str, list] = {}
    fam: Dict[str, str] = {}
    for r in rows:
        if r.get(metric) is not None:
            by_sampler.setdefault(r["sampler"], []).append((r["nfe"], r[metric], r.get(metric + "_se") or 0.0))
            fam[r["sampler"]] = r.get("family", "sde")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if floor is not None and floor.get(metric) is not None:
        f, se = floor[metric], floor.get(metric + "_se") or 0.0
        lo = f - z * se
        if logy and lo <= 0:
            lo = f / 10  # a log axis has no 0: the band then reaches a decade below the floor
        ax.axhspan(lo, f + z * se, color="0.5", alpha=0.25, lw=0, label=f"noise floor (data vs data) ± {z:g} SE")
        ax.axhline(f, color="0.4", lw=0.8)
    order = sorted(by_sampler, key=lambda name: fam[name] != "sde")  # SDE samplers first in the legend
    colours = plt.get_cmap("tab10" if len(order) <= 10 else "tab20").colors
    for i, name in enumerate(order):
        pts = sorted(by_sampler[name])
        x, y, e = zip(*pts)
        bars = ax.errorbar(x, y, yerr=e, color=colours[i % len(colours)], ls=FAMILY_STYLE.get(fam[name], "-"),
                           marker=MARKERS[i % len(MARKERS)], ms=4, lw=1.2, elinewidth=0.8, capsize=2,
                           label=f"{name} ({fam[name].upper()})")
        for part in bars.lines[1] + bars.lines[2]:
            part.set_alpha(0.5)  # the bars fainter than the curves, so ten curves stay readable
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log", nonpositive="clip")
    ax.set_xlabel("score evaluations (NFE)")
    ax.set_ylabel(ylabel or metric)
    ax.set_title(title or f"{ylabel or metric} vs NFE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="solid: SDE, dashed: ODE",
              title_fontsize=7)
    return _save(fig, path)


def fd_and_time_vs_nfe(rows: Iterable[dict], path: str, label: str = "FD", *, floor: Optional[dict] = None,
                       title: Optional[str] = None, z: float = 2.0) -> str:
    """Two panels against NFE, one curve per sampler (solid: SDE, dashed: ODE): the Fréchet distance
    ``fd`` (± ``fd_se`` bars; ``floor``: the data-vs-data FD as a grey band of ± ``z`` SE) and the
    wall time ``seconds``. ``label``: "FID" or "FD-<net>"."""
    by_sampler: Dict[str, list] = {}
    fam: Dict[str, str] = {}
    for r in rows:
        if r.get("fd") is not None:
            by_sampler.setdefault(r["sampler"], []).append((r["nfe"], r["fd"], r.get("fd_se") or 0.0, r["seconds"]))
            fam[r["sampler"]] = r.get("family", "sde")
    fig, (ax, at) = plt.subplots(1, 2, figsize=(11, 4.2))
    fig.subplots_adjust(wspace=0.35)
    if floor is not None and floor.get("fd") is not None:
        f, se = floor["fd"], floor.get("fd_se") or 0.0
        ax.axhspan(max(f - z * se, f / 10), f + z * se, color="0.5", alpha=0.25, lw=0,
                   label=f"noise floor (data vs data) ± {z:g} SE")
        ax.axhline(f, color="0.4", lw=0.8)
    order = sorted(by_sampler, key=lambda name: fam[name] != "sde")
    colours = plt.get_cmap("tab10" if len(order) <= 10 else "tab20").colors
    for i, name in enumerate(order):
        nfe, fd, se, sec = zip(*sorted(by_sampler[name]))
        style = dict(color=colours[i % len(colours)], ls=FAMILY_STYLE.get(fam[name], "-"),
                     marker=MARKERS[i % len(MARKERS)], ms=4, lw=1.2)
        ax.errorbar(nfe, fd, yerr=se, elinewidth=0.8, capsize=2, label=f"{name} ({fam[name].upper()})", **style)
        at.plot(nfe, sec, **style)
    for a, ylabel in ((ax, f"{label} to held-out data"), (at, "wall time (s)")):
        a.set_xscale("log")
        a.set_yscale("log", nonpositive="clip")
        a.set_xlabel("score evaluations (NFE)")
        a.set_ylabel(ylabel)
        a.grid(alpha=0.3)
    fig.suptitle(title or f"{label} and wall time vs NFE")
    at.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="solid: SDE, dashed: ODE", title_fontsize=7)
    return _save(fig, path)
