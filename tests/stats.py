"""Moment checks with known power for samples of a Gaussian mixture (import as ``from stats import ...``).

The samples are split by nearest component (``GaussianMixture.classify``) and, per component k,
put in the whitened principal frame of the exact target component N(m_k, C_k), C_k = U diag(lam) U^T:

    y = diag(lam)^(-1/2) U^T (x - m_k).

For exact samples y ~ N(0, I), so with n_k samples of component k every statistic below has mean 0
and a standard error that depends on n_k alone:

    mean error      ȳ_i                      SE = sqrt(1 / n_k)
    variance error  S_ii - 1                 SE = sqrt(2 / n_k)   (S the sample covariance of y)
    covariance      S_ij (i != j)            SE = sqrt(1 / n_k)

(the normal-theory Var(S_ij) = (C_ij^2 + C_ii C_jj) / n_k with C = I). S_ii - 1 is the relative
error of the variance along principal axis i, so a 10% error in a standard deviation moves it by
0.21 (x1.10) or -0.19 (x0.90) whatever the component's shape. Mode fractions get the binomial SE
sqrt(w (1 - w) / n).

A sample passes when every statistic lies in [lo - z SE, hi + z SE], where lo <= 0 <= hi bound the
sampler's own discretisation bias for that statistic (measured separately, see
benchmarks/weak_convergence.py); lo = hi = 0 is the check for exact samples. A bias ``spec`` per
kind ("mean", "cov", "weight") is a number b (the interval [-b, b]), a tuple (lo, hi), or a list
with one of those per component.

Nearest-component assignment truncates each component's tails where another one wins;
``misassignment_bound`` bounds the mass so lost, which must be negligible for the moments to be
those of the untruncated components.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

KINDS = ("mean", "cov", "weight")


def _frames(target):
    """Per component: mean (K, D), U (K, D, D) and 1/sqrt(lam) (K, D) of the target's covariances (float64)."""
    lam, U = torch.linalg.eigh(target.covs.double())
    return target.means.double(), U, lam.rsqrt()


def whiten(target, x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The samples assigned to component k in its whitened principal frame (float64, (n_k, D))."""
    m, U, inv_sd = _frames(target)
    xk = x.reshape(x.shape[0], -1).double()[labels == k]
    return ((xk - m[k]) @ U[k]) * inv_sd[k]


def bias_interval(spec, k: int):
    """(lo, hi) of a bias spec for component k: None, a number b, a tuple (lo, hi) or a per-component list."""
    if spec is None:
        return 0.0, 0.0
    if isinstance(spec, list):
        return bias_interval(spec[k], k)
    if isinstance(spec, tuple):
        lo, hi = spec
        if not lo <= 0 <= hi:
            raise ValueError(f"a bias interval must contain 0, got {spec}")
        return float(lo), float(hi)
    return -abs(float(spec)), abs(float(spec))


@dataclass
class Stat:
    """One statistic: its value, standard error under exactness, and the bias interval allowed."""

    kind: str          # "mean", "cov" or "weight"
    k: int             # the component
    name: str          # e.g. "k=2 var[1]"
    value: float
    se: float
    lo: float = 0.0
    hi: float = 0.0

    def ok(self, z: float) -> bool:
        return self.lo - z * self.se <= self.value <= self.hi + z * self.se  # NaN fails

    def zscore(self) -> float:
        return self.value / self.se


@dataclass
class MomentReport:
    """All statistics of one sample; ``failures(z)`` are those outside their bias interval -/+ z SE."""

    stats: List[Stat] = field(default_factory=list)
    counts: List[int] = field(default_factory=list)

    def failures(self, z: float) -> List[Stat]:
        return [s for s in self.stats if not s.ok(z)]

    def ok(self, z: float) -> bool:
        return not self.failures(z)

    def max_abs(self, kind: str) -> float:
        return max(abs(s.value) for s in self.stats if s.kind == kind)

    def by_name(self) -> Dict[str, float]:
        return {s.name: s.value for s in self.stats}

    def describe(self, z: float, label: str = "") -> str:
        bad = self.failures(z)
        lines = [f"{label}: {len(bad)} of {len(self.stats)} statistics outside bias -/+ {z} SE "
                 f"(component counts {self.counts})"]
        for s in bad:
            lines.append(f"  {s.name:14s} {s.value:+.4f}  ({s.zscore():+.1f} SE of {s.se:.4f}; allowed "
                         f"[{s.lo - z * s.se:+.4f}, {s.hi + z * s.se:+.4f}] = bias [{s.lo:+.4f}, {s.hi:+.4f}] -/+ {z} SE)")
        return "\n".join(lines)


def moment_report(mixture, target, x: torch.Tensor, bias: Optional[Dict[str, object]] = None) -> MomentReport:
    """Per-component whitened mean and covariance errors of ``x`` against ``target`` (the exact p_eps as
    a GaussianMixture whose components correspond to ``mixture``'s), and the mode-fraction errors.

    ``bias``: {"mean": spec, "cov": spec, "weight": spec} (see ``bias_interval``), the sampler's
    allowed discretisation bias; missing kinds get none."""
    bias = dict(bias or {})
    labels = mixture.classify(x)
    K, n = mixture.num_components, x.shape[0]
    counts = torch.bincount(labels, minlength=K)
    rep = MomentReport(counts=counts.tolist())
    nan = float("nan")
    w = mixture.weights.double()
    for k in range(K):
        nk = int(counts[k])
        y = whiten(target, x, labels, k)
        D = y.shape[1]
        mu = y.mean(0) if nk > 0 else torch.full((D,), nan, dtype=torch.float64)
        S = torch.cov(y.T, correction=1).reshape(D, D) if nk > 1 else torch.full((D, D), nan, dtype=torch.float64)
        root = math.sqrt(max(nk, 1))
        b_mean, b_cov = bias_interval(bias.get("mean"), k), bias_interval(bias.get("cov"), k)
        for i in range(D):
            rep.stats.append(Stat("mean", k, f"k={k} mean[{i}]", float(mu[i]), 1 / root, *b_mean))
        for i in range(D):
            for j in range(i, D):
                if i == j:
                    rep.stats.append(Stat("cov", k, f"k={k} var[{i}]", float(S[i, i] - 1), math.sqrt(2) / root, *b_cov))
                else:
                    rep.stats.append(Stat("cov", k, f"k={k} cov[{i},{j}]", float(S[i, j]), 1 / root, *b_cov))
        rep.stats.append(Stat("weight", k, f"k={k} weight", float(counts[k] / n - w[k]),
                              math.sqrt(float(w[k] * (1 - w[k])) / n), *bias_interval(bias.get("weight"), k)))
    return rep


def assert_moments(mixture, target, x: torch.Tensor, z: float, bias: Optional[Dict[str, object]] = None,
                   label: str = "") -> MomentReport:
    rep = moment_report(mixture, target, x, bias)
    assert rep.ok(z), rep.describe(z, label)
    return rep


def normal_two_sided(z: float) -> float:
    """P(|N(0, 1)| > z)."""
    return math.erfc(z / math.sqrt(2))


def misassignment_bound(mixture, target, directions: int = 1024, r_max: float = 8.0, dr: float = 0.05,
                        seed: int = 0) -> List[float]:
    """Per component k, an upper bound on the probability that a draw of N(m_k, C_k) is classified as
    another component. In the whitened frame a draw is m_k + R L_k u, u uniform on the sphere, R
    independent of u with P(R > r) = Q(D/2, r^2/2) (chi with D degrees of freedom); along each of
    ``directions`` rays (in 2-D evenly spaced, else random) r(u) is the last radius, on a grid of
    step ``dr``, before the first point classified otherwise, so the misassigned mass is at most
    the average over the rays of Q(D/2, r(u)^2/2) (exact up to the resolution in u; the grid in r
    errs on the safe side)."""
    m, U, inv_sd = _frames(target)
    D = m.shape[1]
    if D == 2:
        theta = torch.arange(directions, dtype=torch.float64) * (2 * math.pi / directions)
        u = torch.stack([theta.cos(), theta.sin()], 1)
    else:
        u = torch.randn(directions, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        u = u / u.norm(dim=1, keepdim=True)
    radii = torch.arange(0, int(r_max / dr) + 1, dtype=torch.float64) * dr
    out = []
    for k in range(m.shape[0]):
        L = U[k] / inv_sd[k]                                      # C_k = L L^T
        pts = m[k] + (radii[:, None, None] * u[None]) @ L.T       # (R, dirs, D)
        wrong = (mixture.classify(pts.reshape(-1, D)) != k).reshape(len(radii), directions)
        # index of the first wrong radius on each ray (len(radii) if none): the ray is safe up to the one before
        first = torch.where(wrong.any(0), wrong.double().argmax(0), torch.tensor(len(radii)))
        r = radii[(first - 1).clamp(min=0)]
        tail = torch.special.gammaincc(torch.full_like(r, D / 2), r * r / 2)
        out.append(float(tail.mean()))
    return out


# ---- planted errors in exact samples (for power tests) ---------------------------------------------

def scale_component(x: torch.Tensor, comp: torch.Tensor, k: int, centre: torch.Tensor, factor: float,
                    axis: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Exact samples with component k's deviations from its mean ``centre`` scaled by ``factor`` (its
    standard deviation off by that factor): all of them, or only along unit vector ``axis``."""
    x = x.clone()
    sel = comp == k
    d = x[sel].double() - centre.double()
    if axis is None:
        d = d * factor
    else:
        a = axis.double() / axis.double().norm()
        d = d + (factor - 1) * (d @ a)[:, None] * a
    x[sel] = (centre.double() + d).to(x.dtype)
    return x


def move_weight(target, x: torch.Tensor, comp: torch.Tensor, src: int, dst: int, amount: float,
                generator: torch.Generator):
    """Exact samples with ``amount`` of the weight moved from component ``src`` to ``dst``: round(amount n)
    randomly chosen draws of src are replaced by fresh exact draws of dst. Returns (x, comp)."""
    x, comp = x.clone(), comp.clone()
    n_move = round(amount * x.shape[0])
    idx = (comp == src).nonzero().flatten()
    pick = idx[torch.randperm(len(idx), generator=generator)[:n_move]]
    m, U, inv_sd = _frames(target)
    L = U[dst] / inv_sd[dst]
    z = torch.randn(n_move, m.shape[1], generator=generator, dtype=torch.float64)
    x[pick] = (m[dst] + z @ L.T).to(x.dtype)
    comp[pick] = dst
    return x, comp
