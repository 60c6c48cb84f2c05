"""Sample quality of generated images: FID, KID, Inception Score and precision/recall, in the
Inception-v3 feature space of torch-fidelity (the optional extra ``scoresde[eval]``) or in the
feature space of any network you pass (no extra needed; the shipped digits classifier works offline).

``evaluate(samples, reference, ...)`` -> dict, and ``scoresde evaluate`` on the command line.

**Images.** ``samples`` (and ``reference`` when it is images) may be

- a folder written by ``scoresde sample --out DIR`` (``generate.json`` and ``shard_<k>.npz`` with
  ``samples`` uint8 (n, H, W, C)); every shard must be there;
- any other folder of ``.npz`` files (read in name order, hidden files skipped), or one ``.npz``
  file, each holding one image array (the key ``samples`` or ``images``, else its only array);
- a tensor or numpy array; or a ``scoresde.data`` ``Dataset`` (its ``pixels``).

Arrays are uint8 pixels, or floats in model space: then ``data_range`` (lo, hi) is needed and they
become pixels as ``scoresde.data.unscale`` makes them (rounded, clipped), the way samples are saved.
Shapes: (N, H, W) (one channel), or (N, C, H, W) / (N, H, W, C) with C = 1 or 3. The layout is
told by where the channel axis is: C on axis 1 and not on the last axis is NCHW, C last and not on
axis 1 is NHWC, and a shape that allows both (H or W of 1 or 3) needs ``layout="NCHW"`` or ``"NHWC"``.
Folders are read one file at a time, so memory holds the features, not the images.

**Reference.** Images as above; ``"train"`` / ``"test"``: that split of a run's data
(``scoresde.run.load_data(config, split)``, with ``config`` a run's ``Config`` or a run directory),
whose statistics are computed once and cached (``cache``, a folder); or a statistics file
(``.npz``, read with ``allow_pickle=False``: a file that holds pickled objects is refused):

- scoresde's own (what the cache holds): ``mu`` (D,), ``sigma`` (D, D), ``n``, and ``features``
  (n, D) float32 so that KID and precision/recall work from it too; also ``feature_name`` and
  ``fingerprint`` (the feature network's weights: a stale file is never used);
- the pytorch-fid / TTUR layout, ``mu`` and ``sigma`` only (FID only: KID and precision/recall
  need the reference's features);
- score_sde's ``assets/stats/cifar10_stats.npz`` (its ``evaluation.load_dataset_stats``): raw
  Inception activations ``pool_3`` (n, 2048), from which ``mu`` and ``sigma`` are computed; KID
  and precision/recall work from it. (Its activations come from TF-GAN's Inception in TensorFlow;
  torch-fidelity runs a port of the same 2015-12-05 graph in PyTorch, so an FID against that file
  is close to score_sde's own but not bit for bit: compare numbers computed the same way.)

**Feature networks.** ``feature_net=None`` is Inception-v3 as torch-fidelity ships it ("2048"
pool features for FID/KID/precision/recall, the 1008 bias-free logits for IS; grayscale images are
repeated to RGB; torch-fidelity resizes to 299x299). Any ``nn.Module`` (or callable) can replace
it: it receives a batch of images (B, C, H, W) as they are (no resizing), uint8 0..255 by default,
or floats on [lo, hi] with ``feature_input=(lo, hi)`` (or a ``feature_input`` attribute on the
module); it returns features (B, D), or a tuple (features (B, D), logits (B, K)) when it can also
classify, which makes an Inception-Score analogue. The report then names the space:
``FD-<name>``, ``KID-<name>``, ``IS-<name>`` (``feature_name``, else the module's ``name``
attribute, else its class name). It runs in eval mode on the device of its parameters.

**Metrics.** FID / FD-<name>: ``scoresde.metrics.frechet_distance`` of the Gaussians fitted to the
two feature sets (mean, covariance with 1/(n-1)). KID: the unbiased MMD² with the cubic polynomial
kernel k(x, y) = (x.y / D + 1)^3, averaged over ``kid_subsets`` random subsets of ``kid_subset_size``
from each set (or all of the smaller set), reported as mean ± the standard deviation over subsets;
near 0, slightly negative even, for equal distributions. IS: exp(E KL(p(y|x) || p(y))) over
``is_splits`` splits of the (shuffled) samples, mean ± standard deviation over splits. Precision /
recall (Kynkäänniemi et al. 2019, k = ``pr_k`` = 3): the fraction of samples inside the reference's
k-NN balls, and of reference images inside the samples'. These are torch-fidelity's definitions to
the letter, subset draws and shuffles included (the same seed gives the same numbers; the test
suite checks it against torch-fidelity's own functions), computed here in float64 so that they also
run in any feature space without the extra.

**Sample counts.** FID is biased upward by O(D/N) (Chong & Forsyth 2020), so numbers are
comparable only at equal sample counts (papers: 50,000 samples against the 50,000 training images).
The report warns when either set is below ``fd_min_samples(D)``: 10,000 for Inception (Heusel et
al.'s minimum) and 5·D for a D-dimensional feature network (the same ratio, 10,000 ≈ 5 x 2048).

**Modules.** ``images`` (the readers of samples and reference images), ``features`` (Inception,
the digits net, the pass of a feature net over images), ``stats`` (statistics files, fingerprints,
the cache of a data split), ``feature_metrics`` (KID, IS, precision/recall) and ``pipeline``
(``evaluate`` and ``report_lines``). Import from ``scoresde.evaluate`` itself: the split into
modules is not part of the interface.
"""
from .feature_metrics import DEFAULT_SEED, fd_min_samples, inception_score, kid, precision_recall
from .features import (DEFAULT_BATCH_SIZE, DOWNLOAD_TIMEOUT, EXTRA_HINT, INCEPTION_FILE, INCEPTION_HASH_PREFIX,
                       INCEPTION_NAME, INCEPTION_URL, Features, digits_feature_net, extract_features,
                       inception_feature_net, inception_weights_path, net_name)
from .images import SAMPLES_META, ImageLike, as_pixels, image_source
from .pipeline import ALIASES, DEFAULT_METRICS, METRICS, evaluate, report_lines
from .stats import (STATS_FORMAT, Stats, data_range_of, feature_statistics, fingerprint, is_stats_file, load_stats,
                    run_config, save_stats, split_stats, stats_from_features)
# private, but scoresde.cli and the tests reach them here, where they lived before the split
from .pipeline import _metric_list as _metric_list
from .stats import _split_key as _split_key

__all__ = [
    "evaluate", "report_lines", "METRICS", "ALIASES", "DEFAULT_METRICS", "as_pixels", "image_source", "ImageLike",
    "SAMPLES_META", "Features", "extract_features", "net_name", "inception_feature_net", "inception_weights_path",
    "digits_feature_net", "DEFAULT_BATCH_SIZE", "DOWNLOAD_TIMEOUT", "EXTRA_HINT", "INCEPTION_FILE",
    "INCEPTION_HASH_PREFIX", "INCEPTION_NAME", "INCEPTION_URL", "Stats", "feature_statistics", "stats_from_features",
    "save_stats", "load_stats", "is_stats_file", "fingerprint", "run_config", "data_range_of", "split_stats",
    "STATS_FORMAT", "kid", "inception_score", "precision_recall", "fd_min_samples", "DEFAULT_SEED",
]
