"""Feature statistics for ``scoresde.evaluate`` and their files: the Gaussian fit (mu, sigma) of
features; the .npz layouts read (scoresde's own with the features, pytorch-fid's mu/sigma,
score_sde's pool_3 activations) and written; the fingerprint that ties a file to the feature
network's weights; and the cache of a run's data split, keyed by the split's files, the split and
that fingerprint, so that a stale file is never used."""
from __future__ import annotations

import hashlib
import io as _io
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import io
from .features import DEFAULT_BATCH_SIZE, extract_features
from .images import _Images, _open_npz, _read_npz_array

STATS_FORMAT = "scoresde-feature-stats/1"


# ---- statistics and their files --------------------------------------------------------------------

@dataclass
class Stats:
    """A Gaussian fit of features (mean ``mu`` (D,), covariance ``sigma`` (D, D), float64), the count
    ``n`` when known, and the ``features`` themselves when available (KID and precision/recall need them)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: Optional[int] = None
    features: Optional[Tensor] = None
    feature_name: Optional[str] = None
    fingerprint: Optional[str] = None
    source: str = ""

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def feature_statistics(features: Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, covariance with 1/(n-1)) of features (n, D), in float64 (two passes, no float64 copy
    of all of them at once)."""
    f = torch.as_tensor(features)
    n = f.shape[0]
    if f.dim() != 2 or n < 2:
        raise ValueError(f"statistics need features (n, D) with n >= 2, got shape {tuple(f.shape)}")
    chunk = 8192
    mu = sum(f[i: i + chunk].double().sum(0) for i in range(0, n, chunk)) / n
    cov = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
    for i in range(0, n, chunk):
        c = f[i: i + chunk].double().cpu() - mu
        cov += c.T @ c
    return mu.numpy(), (cov / (n - 1)).numpy()


def stats_from_features(features: Tensor, *, name=None, fp=None, source="") -> Stats:
    mu, sigma = feature_statistics(features)
    return Stats(mu, sigma, int(features.shape[0]), features, name, fp, source)


def save_stats(path: str, stats: Stats) -> str:
    """Write ``stats`` as an .npz (mu, sigma, n, features, feature_name, fingerprint), atomically."""
    arrays = {"mu": np.asarray(stats.mu, np.float64), "sigma": np.asarray(stats.sigma, np.float64),
              "n": np.int64(-1 if stats.n is None else stats.n), "format": np.str_(STATS_FORMAT)}
    if stats.features is not None:
        arrays["features"] = stats.features.to(torch.float32).numpy()
    if stats.feature_name is not None:
        arrays["feature_name"] = np.str_(stats.feature_name)
    if stats.fingerprint is not None:
        arrays["fingerprint"] = np.str_(stats.fingerprint)
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    io.atomic_write_bytes(path, buf.getvalue())
    return path


def is_stats_file(path) -> bool:
    """Whether ``path`` is an .npz holding feature statistics (mu and sigma, pool_3, or features)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return False
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            keys = set(z.files)
    except Exception:
        return False
    return {"mu", "sigma"} <= keys or "pool_3" in keys or ("features" in keys and "samples" not in keys)


def load_stats(path) -> Stats:
    """Read a statistics .npz (scoresde's, pytorch-fid's mu/sigma, or score_sde's pool_3) with
    ``allow_pickle=False``; every problem is one ValueError line naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such statistics file")
    with _open_npz(path) as z:
        keys = set(z.files)
        get = lambda k: _read_npz_array(z, k, path)
        feats = get("features") if "features" in keys else (get("pool_3") if "pool_3" in keys else None)
        text = lambda k: str(get(k)) if k in keys else None
        name, fp = text("feature_name"), text("fingerprint")
        if {"mu", "sigma"} <= keys:
            mu, sigma = np.asarray(get("mu"), np.float64), np.asarray(get("sigma"), np.float64)
            n = int(get("n")) if "n" in keys else (None if feats is None else len(feats))
        elif feats is not None:
            mu = sigma = None
            n = len(feats)
        else:
            raise ValueError(f"{path}: not a statistics file (expected mu and sigma, or pool_3 / features; it holds "
                             f"{', '.join(sorted(keys)) or 'nothing'})")
    if feats is not None:
        feats = np.asarray(feats)
        if feats.ndim != 2 or len(feats) < 2 or not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(f"{path}: features must be a float array (n >= 2, D), got {feats.dtype} {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError(f"{path}: features contain NaN or infinite values")
        feats = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
        if mu is None:
            mu, sigma = feature_statistics(feats)
    d = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or sigma.shape != (d, d) or (feats is not None and feats.shape[1] != d):
        raise ValueError(f"{path}: inconsistent shapes (mu {mu.shape}, sigma {sigma.shape}"
                         + (f", features {tuple(feats.shape)})" if feats is not None else ")"))
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu or sigma contain NaN or infinite values")
    if n is not None and n < 0:
        n = None
    return Stats(mu, sigma, n, feats, name, fp, path)


def fingerprint(feature_net, feature_input=None) -> str:
    """What identifies a feature network for the cache: the sha256 of its class and its weights
    (names, dtypes, shapes, values); a network without weights is known by its class and repr."""
    h = hashlib.sha256()
    h.update(f"{type(feature_net).__module__}.{type(feature_net).__qualname__}|{feature_input!r}".encode())
    state = feature_net.state_dict() if isinstance(feature_net, torch.nn.Module) else {}
    if not state:   # a module's repr names its layers; a function is known by its qualified name
        h.update((repr(feature_net) if isinstance(feature_net, torch.nn.Module)
                  else str(getattr(feature_net, "__qualname__", type(feature_net).__qualname__))).encode())
    for key, value in state.items():
        v = value.detach().cpu().contiguous()
        h.update(f"|{key}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


# ---- the reference ---------------------------------------------------------------------------------

def run_config(run_dir: str):
    """A run directory's config (its config.yaml, else its newest checkpoint's), without its network."""
    import yaml
    from ..config import from_dict
    path = os.path.join(os.fspath(run_dir), "config.yaml")
    if os.path.isfile(path):
        try:
            with open(path, "r", encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable config ({' '.join(str(e).split())[:160]})") from None
        return from_dict(raw if raw is not None else {}, source=path, data_root=False)
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir}: no such run directory")
    from ..run import load
    return load(run_dir).config


def _config(config):
    if config is None:
        raise ValueError("reference 'train'/'test' is a split of a run's data: pass config= (a run's Config or "
                         "its directory); on the command line, the RUN_DIR")
    return run_config(config) if isinstance(config, (str, os.PathLike)) else config


def data_range_of(config) -> Tuple[float, float]:
    """The model-space range of a config's images: (-1, 1) when data.centered, else (0, 1)."""
    return (-1.0, 1.0) if config.data.centered else (0.0, 1.0)


def _files_signature(root: str) -> str:
    """The names, sizes and modification times of every file under ``root``: data read from files
    that changed since the statistics were cached must not reuse them."""
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            h.update(f"{os.path.relpath(os.path.join(folder, name), root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _split_key(cfg, split: str, fp: str) -> str:
    """What decides a split's statistics: the data (name, folder and its files, image size), the
    split, and the feature network's fingerprint."""
    d = cfg.data
    root = None if d.root is None else os.path.realpath(os.path.expanduser(d.root))
    ident = json.dumps({"data": d.name, "root": root, "files": _files_signature(root) if root else None,
                        "image_size": d.image_size, "split": split, "features": fp}, sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()


def split_stats(config, split: str, feature_net, *, name: str, fp: str, cache: Optional[str] = None,
                batch_size: int = DEFAULT_BATCH_SIZE, feature_input=None, inception: bool = False,
                progress: bool = False, log: Callable[[str], None] = lambda s: None) -> Stats:
    """The statistics of one split of a run's data in ``feature_net``'s space, read from the cache
    folder when a file for this data, split and network (its weights' fingerprint) is there, else
    computed and written there atomically. A cache file that fails to load is an error naming it."""
    from ..run import load_data
    cfg = _config(config)
    if split not in ("train", "test"):
        raise ValueError(f"reference split must be 'train' or 'test', got {split!r}")
    key = _split_key(cfg, split, fp)
    path = None
    if cache is not None:
        path = os.path.join(os.fspath(cache), f"stats_{cfg.data.name}_{split}_{name}_{key[:16]}.npz")
        if os.path.isfile(path):
            stats = load_stats(path)
            if stats.fingerprint == fp and stats.features is not None:
                stats.source = f"{cfg.data.name} {split} split (cached: {path})"
                return stats
            log(f"note: {path} was made by another feature network; recomputing it")
    data = load_data(cfg, split)
    if data.pixels is None:
        raise ValueError(f"data {cfg.data.name!r} holds 2-D points, not images: evaluate measures images "
                         "(for toy runs use `scoresde compare`)")
    src = _Images(f"{cfg.data.name} {split}", lambda: iter([data.pixels]), len(data.pixels), tuple(data.pixels.shape[1:]))
    feats = extract_features(src, feature_net, batch_size=batch_size, feature_input=feature_input,
                             inception=inception, progress=progress, what=f"the {split} split")
    stats = stats_from_features(feats.features, name=name, fp=fp, source=f"{cfg.data.name} {split} split")
    if path is not None:
        try:
            save_stats(path, stats)
            stats.source += f" (cached: {path})"
        except OSError as e:
            log(f"warning: could not write the statistics cache {path} ({e.strerror or e}); continuing without it")
    return stats
