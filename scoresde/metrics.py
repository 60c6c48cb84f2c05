"""Two-sample distances between a sample x (m, ...) and a sample y (n, ...), for judging generated
samples against data: energy distance, maximum mean discrepancy and sliced Wasserstein distance.

Samples are flattened to (m, D) and (n, D). Arithmetic is float64, and all pairwise quantities are
computed in blocks of ``chunk`` x ``chunk`` pairs (projections in blocks of ``chunk`` directions),
so memory stays bounded by the block size whatever the sample sizes; the inputs are converted to
float64 a block at a time, never whole. Each function returns a Python float and works on any
device (y is moved to x's).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _checks

DEFAULT_CHUNK = 2048
MEDIAN_SUBSAMPLE = 512     # points per sample used by the median heuristic


def _samples(x, name: str, min_size: int) -> Tensor:
    """x as (B, D) in its own dtype, checked: a real tensor with B >= min_size and finite values."""
    if not torch.is_tensor(x) or x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must be a real tensor of samples (B, ...), got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if torch.is_tensor(x) else ""))
    if x.dim() < 1 or x.shape[0] < min_size:
        raise ValueError(f"{name} must hold at least {min_size} samples (B, ...), got shape {tuple(x.shape)}")
    flat = x.reshape(x.shape[0], -1)
    if flat.is_floating_point() and not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return flat


def _pair(x, y, min_size: int) -> Tuple[Tensor, Tensor]:
    xf, yf = _samples(x, "x", min_size), _samples(y, "y", min_size)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"x and y must have the same number of features per sample, got {xf.shape[1]} and {yf.shape[1]}")
    return xf, yf.to(xf.device)


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """|a_i - b_j|^2 (float64) as |a_i|^2 + |b_j|^2 - 2 a_i.b_j: one matmul, O(D) memory per pair."""
    a, b = a.double(), b.double()
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return d2.clamp_min_(0.0)      # rounding can leave tiny negatives for (nearly) equal points


def _pair_sum(x: Tensor, y: Optional[Tensor], fn: Callable[[Tensor], Tensor], chunk: int) -> Tensor:
    """sum_{i, j} fn(|x_i - y_j|^2) over all pairs; with y None, over pairs i != j of x (the
    diagonal is excluded exactly, and each off-diagonal block is computed once and counted twice)."""
    same = y is None
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    xs = x.split(chunk)
    ys = xs if same else y.split(chunk)
    for i, xc in enumerate(xs):
        for j, yc in enumerate(ys):
            if same and j < i:
                continue
            v = fn(_sq_dists(xc, yc))
            if same and i == j:
                total += v.sum() - v.diagonal().sum()
            else:
                total += v.sum() * (2.0 if same else 1.0)
    return total


def _chunk(chunk) -> int:
    return _checks.positive_int(chunk, "chunk")


def energy_distance(x: Tensor, y: Tensor, *, chunk: int = DEFAULT_CHUNK) -> float:
    """Unbiased estimate of the (squared) energy distance between the laws of x and y:

        E(P, Q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|,   X, X' ~ P and Y, Y' ~ Q independent,

    with |.| the Euclidean norm. E >= 0, with equality iff P = Q (Székely & Rizzo). Estimated by

        2/(mn) sum_ij |x_i - y_j| - 1/(m(m-1)) sum_{i!=j} |x_i - x_j| - 1/(n(n-1)) sum_{i!=j} |y_i - y_j|,

    whose expectation is exactly E(P, Q), so it is near 0 (either sign) when P = Q. Needs m, n >= 2.
    """
    chunk = _chunk(chunk)
    xf, yf = _pair(x, y, 2)
    m, n = len(xf), len(yf)
    exy = _pair_sum(xf, yf, torch.sqrt, chunk) / (m * n)
    exx = _pair_sum(xf, None, torch.sqrt, chunk) / (m * (m - 1))
    eyy = _pair_sum(yf, None, torch.sqrt, chunk) / (n * (n - 1))
    return float(2 * exy - exx - eyy)


def median_bandwidth(x: Tensor, y: Tensor) -> float:
    """The median heuristic: the median Euclidean distance between distinct points of the pooled
    sample (up to 512 evenly spaced points from each of x and y, so the cost stays bounded)."""
    xf, yf = _pair(x, y, 1)
    pick = lambda s: s[torch.linspace(0, len(s) - 1, min(len(s), MEDIAN_SUBSAMPLE), device=s.device).long()]
    z = torch.cat([pick(xf), pick(yf)])
    iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    d = _sq_dists(z, z)[iu[0], iu[1]].sqrt()
    positive = d[d > 0]
    # A median of 0 (over half the pairs coincide) would make the kernel degenerate: fall back to
    # the median of the non-zero distances, and to 1 when all points coincide.
    h = d.median() if bool(d.median() > 0) else (positive.median() if positive.numel() else torch.ones(()))
    return float(h)


def _bandwidths(value, x: Tensor, y: Tensor) -> Tuple[float, ...]:
    if value is None:
        return (median_bandwidth(x, y),)
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    try:
        hs = tuple(float(h) for h in values if not isinstance(h, bool))
    except (TypeError, ValueError):
        hs = ()
    if not hs or len(hs) != len(values) or not all(math.isfinite(h) and h > 0 for h in hs):
        raise ValueError(f"bandwidths must be None, a positive number or a non-empty sequence of positive numbers, got {value!r}")
    return hs


def mmd(x: Tensor, y: Tensor, bandwidths: Union[None, float, Sequence[float]] = None, *,
        chunk: int = DEFAULT_CHUNK) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy with a Gaussian (RBF) kernel,

        k(a, b) = 1/L sum_l exp(-|a - b|^2 / (2 h_l^2))   (bandwidths h_1..h_L; the median heuristic
                                                           ``median_bandwidth`` if None),
        MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
                  - 2/(mn) sum_{i,j} k(x_i, y_j)                                   (Gretton et al. 2012).

    Its expectation is MMD^2(P, Q) >= 0, zero iff P = Q (the kernel is characteristic), so under
    P = Q it scatters around 0 and can be negative. Needs m, n >= 2.
    """
    chunk = _chunk(chunk)
    xf, yf = _pair(x, y, 2)
    hs = _bandwidths(bandwidths, xf, yf)
    m, n = len(xf), len(yf)

    def kernel(d2: Tensor) -> Tensor:
        return sum(torch.exp(-d2 / (2.0 * h * h)) for h in hs) / len(hs)

    kxx = _pair_sum(xf, None, kernel, chunk) / (m * (m - 1))
    kyy = _pair_sum(yf, None, kernel, chunk) / (n * (n - 1))
    kxy = _pair_sum(xf, yf, kernel, chunk) / (m * n)
    return float(kxx + kyy - 2 * kxy)


def _quantile_matching(m: int, n: int, device) -> Tuple[Tensor, Tensor, Tensor]:
    """Pieces of [0, 1] on which both empirical quantile functions (of m and n sorted points) are
    constant: for each piece, the index into each sorted sample and the piece's length.

    In units of 1/(mn) the breakpoints are the multiples of n (for the m-sample) and of m (for the
    n-sample), so everything is exact integer arithmetic; a piece (a, b] has midpoint (a+b)/(2mn),
    where the m-sample's quantile is its floor((a+b)/(2n))-th order statistic."""
    cuts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.arange(1, m + 1) * n, torch.arange(1, n + 1) * m])
    edges = torch.unique(cuts)                                # sorted
    lo, hi = edges[:-1], edges[1:]
    twice_mid = lo + hi
    ix, iy = twice_mid // (2 * n), twice_mid // (2 * m)
    weight = (hi - lo).double() / (m * n)
    return ix.to(device), iy.to(device), weight.to(device)


def _project_sorted(x: Tensor, directions: Tensor, chunk: int) -> Tensor:
    """Projections of x onto each direction (columns), sorted along the samples, float64."""
    return torch.cat([xc.double() @ directions for xc in x.split(chunk)]).sort(dim=0).values


def sliced_wasserstein(x: Tensor, y: Tensor, projections: int = 256, generator: Optional[torch.Generator] = None,
                       *, chunk: int = DEFAULT_CHUNK) -> float:
    """Sliced 2-Wasserstein distance between the empirical laws of x and y,

        SW_2(P, Q) = ( E_u W_2^2(u#P, u#Q) )^{1/2},   u uniform on the unit sphere S^{D-1},

    the expectation estimated with ``projections`` random directions (normalised Gaussians from
    ``generator``; None uses a fixed seed, so the metric is a deterministic function of its inputs
    and comparisons share their directions). In 1-D, W_2^2 = int_0^1 (F^{-1}(q) - G^{-1}(q))^2 dq,
    computed exactly for the empirical quantile functions of the sorted projections: pointwise
    differences of order statistics when m = n, and on the common refinement of the two step
    functions when m != n.

    Example: for P and Q equal up to a shift delta, W_2^2(u#P, u#Q) = (u.delta)^2 for every u and
    E_u (u.delta)^2 = |delta|^2 / D, so SW_2 = |delta| / sqrt(D).
    """
    chunk = _chunk(chunk)
    projections = _checks.positive_int(projections, "projections")
    xf, yf = _pair(x, y, 1)
    D = xf.shape[1]
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    gdev = generator.device
    ix, iy, weight = _quantile_matching(len(xf), len(yf), xf.device)
    total = torch.zeros((), dtype=torch.float64, device=xf.device)
    # Directions in blocks, so the sorted projections take (m + n) x block memory at a time.
    block = max(1, min(projections, 64))
    for start in range(0, projections, block):
        k = min(block, projections - start)
        u = torch.randn(D, k, generator=generator, device=gdev, dtype=torch.float64).to(xf.device)
        u = u / u.norm(dim=0, keepdim=True)
        px, py = _project_sorted(xf, u, chunk), _project_sorted(yf, u, chunk)
        total += (weight[:, None] * (px[ix] - py[iy]) ** 2).sum()
    return math.sqrt(float(total) / projections)


# ---- standard errors (used by scoresde.compare) -----------------------------------------------------

def row_sums(a: torch.Tensor, b: Optional[torch.Tensor] = None, chunk: int = DEFAULT_CHUNK):
    """Row and column sums of the distance matrix |a_i - b_j| (float64), in blocks; with b None,
    of |a_i - a_k| over k != i."""
    same = b is None
    b = a if same else b
    ra, rb = a.new_zeros(len(a), dtype=torch.float64), b.new_zeros(len(b), dtype=torch.float64)
    for i in range(0, len(a), chunk):
        for j in range(0, len(b), chunk):
            d = _sq_dists(a[i:i + chunk], b[j:j + chunk]).sqrt_()
            if same and i == j:
                d.fill_diagonal_(0.0)  # rounding leaves ~1e-8 there; a point is no pair with itself
            ra[i:i + chunk] += d.sum(1)
            rb[j:j + chunk] += d.sum(0)
    return ra, rb


def energy_distance_se(x: torch.Tensor, y: torch.Tensor, y_sums: Optional[torch.Tensor] = None) -> Tuple[float, float]:
    """(energy distance, its two-sample delete-one jackknife SE); see ``scoresde.compare``'s docstring for its properties. With
    a = row sums of |x_i - y_j| over j, b = column sums, p, q = within-sample row sums and A, P,
    Q the totals of a, p, q, dropping x_i gives 2(A - a_i)/((m-1)n) - (P - 2p_i)/((m-1)(m-2)) - Q/(n(n-1))
    (and symmetrically for y_j). ``y_sums``: q, when y is shared by many calls. Needs m, n >= 3."""
    x, y = x.flatten(1).double().cpu(), y.flatten(1).double().cpu()
    m, n = len(x), len(y)
    if min(m, n) < 3:
        raise ValueError(f"the energy distance's jackknife needs at least 3 points per sample, got {m} and {n}")
    a, b = row_sums(x, y)
    p = row_sums(x)[0]
    q = row_sums(y)[0] if y_sums is None else y_sums
    A, P, Q = a.sum(), p.sum(), q.sum()
    value = 2 * A / (m * n) - P / (m * (m - 1)) - Q / (n * (n - 1))
    drop_x = 2 * (A - a) / ((m - 1) * n) - (P - 2 * p) / ((m - 1) * (m - 2)) - Q / (n * (n - 1))
    drop_y = 2 * (A - b) / (m * (n - 1)) - P / (m * (m - 1)) - (Q - 2 * q) / ((n - 1) * (n - 2))
    var = (m - 1) / m * (drop_x - drop_x.mean()).square().sum() + (n - 1) / n * (drop_y - drop_y.mean()).square().sum()
    return float(value), float(var.sqrt())


def sliced_wasserstein_se(x: torch.Tensor, y: torch.Tensor, projections: int = 256, seed: int = 0,
                          groups: int = 10) -> Tuple[float, float]:
    """(``sliced_wasserstein(x, y, projections, generator seeded with seed)``, its
    delete-a-group jackknife SE): groups i mod ``groups`` of each sample dropped in turn, v =
    (k-1)/k sum_g (S_(-g) - mean S_(-g))^2 summed over both samples. The projections are sorted
    once (dropping a group keeps the order), so this costs ~2k matchings and no sort."""
    x, y = x.flatten(1).double().cpu(), y.flatten(1).double().cpu()
    g = torch.Generator().manual_seed(seed)
    # the directions metrics.sliced_wasserstein draws with this generator: blocks of 64 columns
    u = torch.cat([torch.randn(x.shape[1], min(64, projections - s), generator=g, dtype=torch.float64)
                   for s in range(0, projections, 64)], dim=1)
    u = u / u.norm(dim=0, keepdim=True)
    (px, ox), (py, oy) = (x @ u).T.sort(dim=1), (y @ u).T.sort(dim=1)  # (projections, points)
    matchings = {}

    def sw(a, b):  # a, b: (points, projections), each column sorted; rows gathered whole (fast)
        key = (len(a), len(b))
        if key not in matchings:
            matchings[key] = _quantile_matching(*key, a.device)
        ia, ib, w = matchings[key]
        return math.sqrt(float(((a[ia] - b[ib]).square().sum(1) * w).sum()) / projections)

    def part(sorted_, order, other, first):
        k = min(groups, sorted_.shape[1])
        if k < 2:
            return 0.0
        other, labels, values = other.T.contiguous(), order % k, []
        for grp in range(k):
            kept = sorted_[labels != grp].view(len(sorted_), -1).T.contiguous()
            values.append(sw(kept, other) if first else sw(other, kept))
        v = torch.tensor(values, dtype=torch.float64)
        return (k - 1) / k * float((v - v.mean()).square().sum())

    value = sw(px.T.contiguous(), py.T.contiguous())
    return value, math.sqrt(part(px, ox, py, True) + part(py, oy, px, False))


# ---- Fréchet distance between Gaussians (FID and its kin) ------------------------------------------

def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2),

        |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^(1/2) sigma2 sigma1^(1/2))^(1/2)),

    the quantity FID reports for Inception features. The matrix square roots are taken through
    symmetric eigendecompositions in float64 (eigenvalues clamped at 0), so the result is exact
    for positive semi-definite inputs, singular ones included, where a general sqrtm of the
    non-symmetric product sigma1 sigma2 can return complex rounding noise. Accepts tensors or
    numpy arrays; returns a float >= 0."""
    m1, m2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    d = m1.numel()
    if m2.numel() != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance needs mu (D,) and sigma (D, D) of one D, got mu {tuple(m1.shape)}, "
                         f"{tuple(m2.shape)} and sigma {tuple(s1.shape)}, {tuple(s2.shape)}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    lam, U = torch.linalg.eigh(s1)
    root1 = (U * lam.clamp_min(0).sqrt()) @ U.T
    middle = root1 @ s2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * cross
    return max(float(value), 0.0)
