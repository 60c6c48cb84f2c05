"""The metrics of ``scoresde.evaluate`` on features other than FID/FD (which is
``scoresde.metrics.frechet_distance``): KID, the Inception Score and precision/recall, to the letter
of torch-fidelity's definitions (its subset draws and shuffles included, so one seed gives its
numbers) but in float64 and in any feature space; and the sample count below which FID/FD means
little."""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

DEFAULT_SEED = 2020                      # torch-fidelity's rng_seed


# ---- the metrics -----------------------------------------------------------------------------------

def kid(f1: Tensor, f2: Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = DEFAULT_SEED,
        device=None) -> Tuple[float, float, int]:
    """KID as torch-fidelity computes it (``kid_features_to_metric``, polynomial kernel of degree 3,
    gamma 1/D, coef0 1, unbiased MMD²), over ``subsets`` draws of min(subset_size, n1, n2) from each
    set without replacement (numpy RandomState(seed), the same draws as torch-fidelity), in float64.
    Returns (mean, standard deviation over subsets, the subset size used)."""
    f1, f2 = torch.as_tensor(f1), torch.as_tensor(f2)
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if f2.shape[1] != d:
        raise ValueError(f"KID: features of different dimensions ({d} and {f2.shape[1]})")
    m = min(int(subset_size), n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {n1} and {n2}")
    device = torch.device(device) if device is not None else f1.device
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)

    def kernel_sum(a: Tensor, b: Tensor, same: bool) -> Tensor:
        k = (a @ b.T).div_(d).add_(1.0).pow_(3)   # in place: one m x m buffer
        return k.sum() - k.diagonal().sum() if same else k.sum()

    for s in range(subsets):
        i1 = torch.from_numpy(rng.choice(n1, m, replace=False))
        i2 = torch.from_numpy(rng.choice(n2, m, replace=False))
        x = f1[i1].to(device, torch.float64)
        y = f2[i2].to(device, torch.float64)
        within = (kernel_sum(x, x, True) + kernel_sum(y, y, True)) / (m * (m - 1))
        values[s] = float(within - 2 * kernel_sum(x, y, False) / (m * m))
    return float(values.mean()), float(values.std()), m


def inception_score(logits: Tensor, *, splits: int = 10, seed: int = DEFAULT_SEED, shuffle: bool = True
                    ) -> Tuple[float, float]:
    """IS as torch-fidelity computes it (``isc_features_to_metric``): the samples shuffled with
    RandomState(seed), cut into ``splits`` parts, exp(mean KL(p(y|x) || mean p(y))) per part, in
    float64. Returns (mean, standard deviation over splits)."""
    lg = torch.as_tensor(logits)
    n = lg.shape[0]
    if lg.dim() != 2 or n < splits:
        raise ValueError(f"IS needs logits (n, K) with n >= splits = {splits}, got shape {tuple(lg.shape)}")
    if shuffle:
        lg = lg[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    lg = lg.double()
    p, log_p = lg.softmax(1), lg.log_softmax(1)
    scores = []
    for i in range(splits):
        a, b = i * n // splits, (i + 1) * n // splits
        # log of the split's mean p(y), through logsumexp: finite even where p(y) underflows to 0
        log_q = torch.logsumexp(log_p[a:b], 0, keepdim=True) - math.log(b - a)
        scores.append(float((p[a:b] * (log_p[a:b] - log_q)).sum(1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def _knn_radii(f: Tensor, k: int, batch: int) -> Tensor:
    return torch.cat([torch.cdist(f[i: i + batch], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), batch)])


def _inside(points: Tensor, centres: Tensor, radii: Tensor, batch: int) -> float:
    hits = [(torch.cdist(points[i: i + batch], centres) <= radii[None]).any(1) for i in range(0, len(points), batch)]
    return torch.cat(hits).double().mean().item()


def precision_recall(f_gen: Tensor, f_ref: Tensor, *, k: int = 3, batch: int = 2048, device=None) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) as torch-fidelity computes them
    (``prc_features_to_metric``, float32 distances): precision, the fraction of generated samples
    within the k-NN radius of some reference feature; recall, the fraction of reference features
    within the k-NN radius of some generated one. O(n²) distances, in row blocks of ``batch``."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    g, r = (torch.as_tensor(f).to(device, torch.float32) for f in (f_gen, f_ref))
    if min(len(g), len(r)) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} images in each set, got {len(g)} and {len(r)}")
    radii_g, radii_r = _knn_radii(g, k, batch), _knn_radii(r, k, batch)
    return _inside(g, r, radii_r, batch), _inside(r, g, radii_g, batch)


def fd_min_samples(dim: int, inception: bool = False) -> int:
    """Below this many images per set the report warns that FID/FD means little: 10,000 for
    Inception (Heusel et al. 2017), else 5 x the feature dimension (the same ratio)."""
    return 10_000 if inception else 5 * int(dim)
