"""``evaluate()``, the entry point of ``scoresde.evaluate``: it checks every input before a network
is built or an image read, extracts the features of the samples and the reference (or reads the
reference's statistics), computes the requested metrics, and ``report_lines`` formats the result
as ``scoresde evaluate`` prints it."""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..metrics import frechet_distance
from .feature_metrics import DEFAULT_SEED, fd_min_samples, inception_score, kid, precision_recall
from .features import DEFAULT_BATCH_SIZE, _feature_input, extract_features, inception_feature_net, net_name
from .images import ImageLike, image_source
from .stats import (Stats, _config, data_range_of, feature_statistics, fingerprint, is_stats_file, load_stats,
                    split_stats, stats_from_features)

METRICS = ("fid", "kid", "is", "pr")
ALIASES = {"fd": "fid", "isc": "is", "precision": "pr", "recall": "pr", "prc": "pr"}
DEFAULT_METRICS = ("fid", "kid", "is")


def _metric_list(metrics) -> Tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",")]
    out: List[str] = []
    for m in metrics:
        key = ALIASES.get(str(m).strip().lower(), str(m).strip().lower())
        if key not in METRICS:
            raise ValueError(f"unknown metric {m!r}: choose from fid, kid, is, pr (precision/recall)")
        if key not in out:
            out.append(key)
    if not out:
        raise ValueError("no metric requested: choose from fid, kid, is, pr")
    return tuple(out)


# ---- evaluate --------------------------------------------------------------------------------------

def evaluate(samples: ImageLike, reference=None, *, metrics=DEFAULT_METRICS, feature_net=None,
             feature_name: Optional[str] = None, feature_input=None, config=None,
             data_range: Optional[Sequence[float]] = None, layout: Optional[str] = None,
             batch_size: int = DEFAULT_BATCH_SIZE, device="cpu", cache: Optional[str] = None,
             inception_weights: Optional[str] = None, download: bool = True, kid_subsets: int = 100,
             kid_subset_size: int = 1000, is_splits: int = 10, pr_k: int = 3, seed: int = DEFAULT_SEED,
             progress: bool = False, log: Callable[[str], None] = lambda s: None) -> dict:
    """Measure ``samples`` against ``reference`` (see the module docstring for what each may be).

    ``metrics``: any of "fid", "kid", "is", "pr" (a tuple or "fid,kid"). ``feature_net``: None for
    torch-fidelity's Inception-v3 (``inception_weights``, ``download``: where its weights come from),
    or any module images -> features (``feature_name``, ``feature_input``). ``config``: a run's
    Config or directory, for a reference "train"/"test" and, when ``data_range`` is not given, the
    range of float samples. ``cache``: a folder for the statistics of data splits. ``device``: where
    Inception and the metric arithmetic run (a given feature net runs where its parameters are).

    Returns a dict: one entry per metric, named by its feature space (Inception: "FID", "KID",
    "IS", "precision", "recall"; a feature net called NAME: "FD-NAME", "KID-NAME", "IS-NAME",
    "precision-NAME", "recall-NAME"); FID/FD and precision/recall are floats, KID is {"mean", "std",
    "subsets", "subset_size"} and IS {"mean", "std", "splits"}. Also "feature_net" (the name),
    "feature_dim", "num_samples", "num_reference" (None when a statistics file does not say),
    "reference" (what it was), "warnings" (list of str) and "skipped" ({metric: why})."""
    wanted = _metric_list(metrics)
    for value, label in ((kid_subsets, "kid_subsets"), (kid_subset_size, "kid_subset_size"),
                         (is_splits, "is_splits"), (pr_k, "pr_k")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if reference is None and any(m != "is" for m in wanted):
        raise ValueError("a reference is needed for fid, kid and pr (images, 'train'/'test' with a run, or a statistics file)")
    device = torch.device(device)
    inception = feature_net is None
    cfg = _config(config) if config is not None else None
    if data_range is None and cfg is not None:
        data_range = data_range_of(cfg)
    # everything about the inputs is checked before the network is built or any image is read
    sample_src = image_source(samples, data_range=data_range, layout=layout, what="samples")
    ref_stats: Optional[Stats] = None
    ref_src = None
    split = reference if isinstance(reference, str) and reference in ("train", "test") else None
    if split is not None:
        from ..config import missing_data_root
        error = missing_data_root(_config(cfg))  # a split needs the run's config and its data folder
        if error is not None:
            raise error
    elif reference is None:
        pass
    elif is_stats_file(reference):
        ref_stats = load_stats(reference)
    else:
        ref_src = image_source(reference, data_range=data_range, layout=layout, what="reference")

    net = inception_feature_net(inception_weights, device, download) if inception else feature_net
    name = "inception" if inception else net_name(net, feature_name)
    fp = fingerprint(net, None if inception else _feature_input(net, feature_input))

    smp = extract_features(sample_src, net, batch_size=batch_size, feature_input=feature_input,
                           inception=inception, progress=progress, what="samples")
    if split is not None:
        ref_stats = split_stats(cfg, split, net, name=name, fp=fp, cache=cache, batch_size=batch_size,
                                feature_input=feature_input, inception=inception, progress=progress, log=log)
    elif ref_src is not None:
        ref = extract_features(ref_src, net, batch_size=batch_size, feature_input=feature_input,
                               inception=inception, progress=progress, what="reference")
        if ref.shape != smp.shape:
            log(f"note: samples are {smp.shape} images, the reference {ref.shape}")
        ref_stats = stats_from_features(ref.features, name=name, fp=fp, source=ref_src.describe)
    dim = smp.features.shape[1]
    if ref_stats is not None:
        if ref_stats.dim != dim:
            raise ValueError(f"reference {ref_stats.source}: {ref_stats.dim}-dimensional features, but the "
                             f"{name} network gives {dim}: statistics from another feature network")
        if ref_stats.feature_name is not None and ref_stats.feature_name != name:
            raise ValueError(f"reference {ref_stats.source}: statistics of the {ref_stats.feature_name!r} feature "
                             f"network, not {name!r}")

    label = (lambda base: base) if inception else (lambda base: f"{base}-{name}")
    fd_label = "FID" if inception else f"FD-{name}"
    out: dict = {"feature_net": name, "feature_dim": dim, "num_samples": len(smp.features),
                 "num_reference": None if ref_stats is None else ref_stats.n,
                 "reference": None if ref_stats is None else (ref_stats.source or str(reference)),
                 "warnings": [], "skipped": {}}
    n_s = len(smp.features)
    for m in wanted:
        if m == "fid":
            if n_s < 2:
                out["skipped"][fd_label] = "needs at least 2 samples"
                continue
            mu, sigma = feature_statistics(smp.features)
            out[fd_label] = frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma)
            floor = fd_min_samples(dim, inception)
            small = [f"{what} {count:,}" for what, count in (("samples", n_s), ("reference", ref_stats.n))
                     if count is not None and count < floor]
            if small:
                out["warnings"].append(
                    f"{fd_label} from {' and '.join(small)} images: below {floor:,} "
                    + ("(Heusel et al.'s minimum for FID)" if inception else f"(5 x the {dim} feature dimensions)")
                    + f", {fd_label} is biased upward by O(D/N) and means little; compare only numbers computed "
                    "with the same sample counts" + (" (papers: 50,000)" if inception else ""))
        elif m in ("kid", "pr"):
            key = label("KID") if m == "kid" else label("precision")
            if ref_stats.features is None:
                out["skipped"][key if m == "kid" else f"{label('precision')}/{label('recall')}"] = (
                    f"needs the reference's features; {ref_stats.source} holds only mu and sigma")
                continue
            if m == "kid":
                mean, std, size = kid(smp.features, ref_stats.features, subsets=kid_subsets,
                                      subset_size=kid_subset_size, seed=seed, device=device)
                out[key] = {"mean": mean, "std": std, "subsets": kid_subsets, "subset_size": size}
                if size < kid_subset_size:
                    out["warnings"].append(f"{key}: subsets of {size} images (all of the smaller set), not {kid_subset_size}")
            else:
                p, r = precision_recall(smp.features, ref_stats.features, k=pr_k, device=device)
                out[label("precision")], out[label("recall")] = p, r
        else:  # is
            key = label("IS")
            if smp.logits is None:
                out["skipped"][key] = f"the feature net {name!r} returns no logits (return (features, logits) for IS)"
                continue
            if n_s < is_splits:
                out["skipped"][key] = f"needs at least {is_splits} samples (one per split)"
                continue
            mean, std = inception_score(smp.logits, splits=is_splits, seed=seed)
            out[key] = {"mean": mean, "std": std, "splits": is_splits}
    return out


def _plus_minus(mean: float, std: float) -> str:
    """'mean ± std' with the decimals that give the std two significant digits."""
    if not (std > 0 and math.isfinite(std)):
        return f"{mean:.6g}"
    decimals = max(0, 1 - math.floor(math.log10(std)))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def report_lines(result: dict, warnings: bool = True) -> List[str]:
    """The result of ``evaluate`` as printed by ``scoresde evaluate``: the counts, one line per
    metric (± the standard deviation over KID subsets / IS splits), what was not computed and why,
    then (``warnings``) the warnings."""
    ref = result["num_reference"]
    lines = [f"samples: {result['num_samples']:,} images; reference: "
             + (f"{ref:,} images" if ref is not None else "count not recorded")
             + (f" ({result['reference']})" if result.get("reference") else "")
             + f"; features: {result['feature_net']} ({result['feature_dim']}-d)"]
    rows = []
    for key, value in result.items():
        if key in ("feature_net", "feature_dim", "num_samples", "num_reference", "reference", "warnings", "skipped"):
            continue
        if isinstance(value, dict) and "subsets" in value:
            rows.append((key, _plus_minus(value["mean"], value["std"]),
                         f"mean ± std over {value['subsets']} subsets of {value['subset_size']}"))
        elif isinstance(value, dict):
            rows.append((key, _plus_minus(value["mean"], value["std"]), f"mean ± std over {value['splits']} splits"))
        else:
            rows.append((key, f"{value:.4f}", ""))
    width = max((len(k) for k, _, _ in rows), default=0)
    vwidth = max((len(v) for _, v, _ in rows), default=0)
    lines += [f"{k:<{width}}  {v:<{vwidth}}  {why}".rstrip() for k, v, why in rows]
    lines += [f"{k}: not computed ({why})" for k, why in result["skipped"].items()]
    if warnings:
        lines += [f"warning: {w}" for w in result["warnings"]]
    return lines
