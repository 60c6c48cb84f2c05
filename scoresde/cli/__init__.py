"""The ``scoresde`` command (also ``python -m scoresde``): train, sample, likelihood, compare, demo,
import, evaluate, train-classifier.

Every failure the user can cause ends in one line ``scoresde: error: ...`` on stderr and exit
status 2, never a traceback (set SCORESDE_DEBUG=1 to see one); nothing is written before the
inputs have been checked.

Here: ``main``, ``build_parser`` (every command's options) and the parser's one-line errors. The
commands themselves: ``train_commands`` (train, demo, train-classifier), ``sample_commands``
(sample, likelihood, compare) and ``import_commands`` (import, evaluate).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import List, Optional

from .import_commands import cmd_evaluate, cmd_import
from .sample_commands import cmd_compare, cmd_likelihood, cmd_sample
from .train_commands import cmd_demo, cmd_train, cmd_train_classifier


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _printable(message: str) -> str:
    """One line: control characters a user typed (a stray \\r, an escape) shown escaped."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(message))
    return " ".join(text.split())


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own usage dump is noise here)
        sys.stderr.write(f"{self.prog}: error: {_printable(message)}\n")
        sys.exit(2)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each option's help, except where it says nothing: no default
    (None), an off flag, an empty repeatable list, or a help text that already states its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default  # by identity: a default of 0 is worth showing, False (an off flag) is not
        if d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, list) and not d) or "(default" in text:
            return text
        return super()._get_help_string(action)


def _compile_arguments(parser, with_precision: bool) -> None:
    """--compile and --compile-mode (scoresde.precision.compile_score) of sample and likelihood."""
    from ..precision import COMPILE_MODES
    parser.add_argument("--compile", action="store_true",
                        help="compile the network with torch.compile: the first batch is slower (it compiles), "
                             "the steps after it faster; best with a fixed batch size (each new batch size, e.g. "
                             "a last smaller batch, compiles again)"
                             + ("; composes with --precision/--channels-last" if with_precision else ""))
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, metavar="MODE",
                        help="torch.compile's mode, one of " + ", ".join(COMPILE_MODES) + " (implies --compile; "
                             "--compile alone uses default). On a GPU reduce-overhead also captures the network as a CUDA "
                             "graph (less launch overhead for small batches); it needs a fixed batch size")


def build_parser() -> argparse.ArgumentParser:
    from ..sampling import SAMPLERS
    from ..sampling.odeint import ADAPTIVE_METHODS, FIXED_METHODS
    p = _Parser(prog="scoresde", description="Score-based generative models through SDEs: train, sample, "
                                             "compare samplers, compute likelihoods.",
                formatter_class=_HelpFormatter)
    # every subcommand's --help shows its defaults (a subparser may still pass its own formatter_class)
    sub = p.add_subparsers(dest="command", metavar="COMMAND",
                           parser_class=functools.partial(_Parser, formatter_class=_HelpFormatter))
    sub.required = True

    t = sub.add_parser("train", help="train a score model from a YAML config")
    t.add_argument("config", help="a YAML config file, or the name of a bundled one (toy_vp, digits_vp, ...)")
    t.add_argument("--workdir", help="run directory (default runs/<config name>)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.steps=1e3 (repeatable; with --resume, "
                        "the only way to change a value of the run)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the newest readable checkpoint in --workdir with the run's saved config "
                        "(RUN/config.yaml): CONFIG's differing values are ignored (and listed), values change "
                        "only through --set, and sde/model/data may not change; without a checkpoint, start fresh")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    device_help = "auto (CUDA when present, else the CPU), cpu, cuda or cuda:K (default auto, as train.device)"
    run_dir_help = "a run directory made by `scoresde train` or `scoresde import` (its newest readable checkpoint) or one checkpoint directory"
    s = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Draw samples from a trained run and save them as a plot (.png) or an array (.npz), "
                                   "or, with a folder --out, as resumable shards: shard_<k>.npz of --shard-size samples "
                                   "(uint8 images (n, H, W, C), or float points), sample i drawn from seed --seed + i, "
                                   "so its noise depends neither on the number of processes (torchrun "
                                   "--nproc_per_node=K -m scoresde sample ... splits the shards) nor on the batch size; "
                                   "rerunning the command skips the complete shards. Prints the score evaluations (NFE) and the wall time; "
                                   "image samples are clipped to the data range, and how many values were clipped is "
                                   "reported.")
    s.add_argument("run_dir", help=run_dir_help)
    s.add_argument("--sampler", default="probability_flow", choices=tuple(SAMPLERS), help="the sampling method")
    s.add_argument("--steps", type=_positive,
                   help="steps of a fixed-grid sampler (default: the run's sample.steps); adaptive solvers "
                        "(probability_flow with an adaptive method, adaptive_sde) ignore it: set --option rtol/atol")
    # --num-samples first: torchrun's parser takes --num as a prefix of its --numa-binding
    s.add_argument("--num-samples", "--num", dest="num", type=_positive, default=64, metavar="N",
                   help="number of samples (--num is an alias)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the sampler, e.g. --option eta=0.5 (ddim), --option method=rk4 or "
                        "--option rtol=1e-3 (probability_flow); repeatable")
    s.add_argument("--out", default="samples.png",
                   help="output .png (plot) or .npz (array 'samples'), or a folder of shards (a name without an extension)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the prior draw and the sampler's noise (folder --out: sample i uses seed + i)")
    s.add_argument("--batch-size", type=_positive, metavar="B",
                   help="folder --out only: samples drawn together (default 500); it sets memory and speed, not the "
                        "samples' noise")
    s.add_argument("--shard-size", type=_positive, metavar="S",
                   help="folder --out only: samples per shard file (default 1000)")
    s.add_argument("--png", action="store_true", help="folder --out of an image run: also png/<index>.png per sample")
    s.add_argument("--device", default="auto",
                   help=device_help + "; under torchrun, auto/cuda/cuda:0 put each process on its LOCAL_RANK GPU")
    s.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="the network's forward pass under bf16 autocast (bf16) or in float32 (default); the "
                        "sampler's own arithmetic stays float32")
    s.add_argument("--channels-last", action="store_true",
                   help="image runs: the network's weights and inputs in channels_last memory format")
    _compile_arguments(s, with_precision=True)
    s.add_argument("--class", dest="klass", metavar="K",
                   help="guide every sample towards class K (or sample i towards K_(i mod n) of a comma-separated "
                        "list K_0,K_1,...): classifier-free guidance on a class-conditional run (model.num_classes "
                        "> 0), classifier guidance with --classifier; K is a label 0..num_classes-1, or a class "
                        "name where the run recorded names (data.class_folders: the folder's name; CIFAR-10)")
    s.add_argument("--guidance", type=float, metavar="S",
                   help="with --class: the guidance scale, (1 - S) s(x, t) + S s(x, t, y) (classifier-free) or "
                        "s(x, t) + S ∇x log p_t(y | x) (--classifier); 1 (default) is the plain conditional "
                        "score, larger values sharpen the class")
    s.add_argument("--classifier", metavar="CLASSIFIER_RUN",
                   help="with --class: a noisy-classifier run (train.objective classifier, e.g. configs/"
                        "digits_vp_noisy_classifier.yaml) of the same SDE, for classifier guidance")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

    lk = sub.add_parser("likelihood", help="PF-ODE negative log-likelihood (nats; bits/dim for images)",
                        description="Negative log-likelihood of held-out data through the probability-flow ODE, "
                                    "mean ± standard error over the examples: nats on the data's own scale for "
                                    "2-D toys (with the exact value where the toy's density is known), bits/dim "
                                    "and nats per image on the 0-255 scale for images. The whole split by "
                                    "default, in batches; point i's probes and dequantization noise come from seed "
                                    "--seed + i, so they depend neither on the batch size nor on the number of "
                                    "processes (torchrun --nproc_per_node=K -m scoresde likelihood ... splits the "
                                    "points and rank 0 prints the totals). With the adaptive dopri5 a batch shares "
                                    "its step sizes (values then depend on the batch within the tolerance, 1e-5); a "
                                    "fixed-step --method with --steps makes them independent of it.")
    lk.add_argument("run_dir", help=run_dir_help)
    lk.add_argument("--split", default="test", choices=("train", "test"), help="which split of the run's data")
    lk.add_argument("--num-samples", "--num", dest="num", type=_positive, metavar="N",
                    help="number of data points, a random choice drawn with --seed + 1 (default: the whole split; "
                         "a toy's test split is 5000 points) (--num is an alias)")
    lk.add_argument("--batch-size", type=_positive, metavar="B",
                    help="points per ODE solve (default 256 for images, 5000 for toys): memory and speed")
    lk.add_argument("--dequant-repeats", type=_positive, default=1, metavar="K",
                    help="image runs: uniform dequantization draws per image; an image's bits/dim is the mean of its "
                         "K draws and the standard error is over images")
    lk.add_argument("--estimator", choices=("exact", "hutchinson"),
                    help="trace estimator (default: exact for dimension <= 16, else hutchinson)")
    lk.add_argument("--method", default="dopri5", choices=ADAPTIVE_METHODS + tuple(FIXED_METHODS),
                    help="ODE solver: adaptive (rtol = atol = 1e-5) or fixed-step with --steps")
    lk.add_argument("--steps", type=_positive, help="steps of a fixed-step --method (default 100)")
    lk.add_argument("--seed", type=int, default=0,
                    help="point i's Hutchinson probes and dequantization come from seed + i; a --num-samples "
                         "choice from seed + 1")
    lk.add_argument("--out", metavar="FILE.json", help="also write the per-point values (and every draw) as JSON")
    lk.add_argument("--device", default="auto",
                    help=device_help + "; under torchrun, auto/cuda/cuda:0 put each process on its LOCAL_RANK GPU")
    _compile_arguments(lk, with_precision=False)
    lk.add_argument("--quiet", action="store_true", help="no progress bar")
    lk.set_defaults(func=cmd_likelihood)

    c = sub.add_parser("compare", help="every sampler at several step counts: NFE, time, quality",
                       description="Run the samplers at several step counts (adaptive ones at several tolerances) "
                                   "from one prior draw and measure each against held-out data: energy distance, "
                                   "sliced W2 (and the fraction on the support for the checkerboard, mode weights "
                                   "and mean log-density for the Gaussian-mixture toys), each ± one standard error; "
                                   "the noise floor (the same metrics for held-out data itself); and a verdict that "
                                   "names a best sampler only when it leads all others by more than 2 combined "
                                   "standard errors. On image runs the quality is instead the Fréchet distance "
                                   "(FID or FD-digits, --feature-net) of the samples as pixels to held-out images, "
                                   "± a jackknife SE, with the sample count and a warning when it is too small. "
                                   "Writes compare.md, compare.json and compare.png.")
    c.add_argument("run_dir", help=run_dir_help)
    c.add_argument("--steps", default="10,20,50,100,200", help="comma-separated step counts of the fixed-step samplers")
    c.add_argument("--num-samples", "--num", dest="num", type=_positive, default=2000, metavar="N",
                   help="samples per sampler and setting, and held-out points in the reference and in the "
                        "noise floor's set each (--num is an alias)")
    c.add_argument("--sampler", action="append", default=[], choices=tuple(SAMPLERS), metavar="NAME",
                   help=f"only the methods of this sampler (repeatable; one of {', '.join(SAMPLERS)}; "
                        "default: every sampler)")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword for every selected sampler, e.g. --sampler ddim --option eta=0.5; each must "
                        "accept it (repeatable; default: none)")
    c.add_argument("--feature-net", choices=("inception", "digits", "pixels"), default=None,
                   help="image runs: the feature space of the Fréchet distance each setting is scored by, "
                        "FID (inception: needs the [eval] extra and its weights) or FD-digits (the shipped "
                        "digits classifier, offline); pixels: no feature network, the energy distance and "
                        "sliced W2 of the flattened images, as for the toys (default: digits for digits runs, "
                        "inception for other image runs; toy runs take none)")
    c.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="--feature-net inception: a local copy of torch-fidelity's Inception weights")
    c.add_argument("--out", help="output directory (default RUN_DIR/compare)")
    c.add_argument("--seed", type=int, default=0, help="seed of the prior draw, the samplers' noise and the data")
    c.add_argument("--device", default="auto", help=device_help)
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="train on the checkerboard, compare samplers, compute the NLL, write a report")
    d.add_argument("--workdir", default=os.path.join("runs", "demo"))
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    d.add_argument("--quick", action="store_true", help="a tiny run (seconds) that exercises every stage")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    im = sub.add_parser("import", help="a pretrained model (score_sde_pytorch, diffusers) as a run directory",
                        description="Write a pretrained model as a normal run directory (config.yaml and a checkpoint "
                                    "in the trainer's format, with where it came from in its meta.json) that sample, "
                                    "likelihood, compare and scoresde.load read unchanged. Checkpoints are read with "
                                    "torch.load(weights_only=True) only: anything that needs more is refused unread.")
    im_sub = im.add_subparsers(dest="source", metavar="SOURCE",
                               parser_class=functools.partial(_Parser, formatter_class=_HelpFormatter))
    im_sub.required = True
    ss = im_sub.add_parser("score-sde", help="an official score_sde_pytorch checkpoint (EMA weights)",
                           description="An official score_sde_pytorch checkpoint (checkpoint_<k>.pth: model, ema, "
                                       "optimizer, step) with the name of the reference config it was trained with; "
                                       "its EMA weights, SDE, network and data become the run's.")
    ss.add_argument("checkpoint", metavar="CHECKPOINT", help="the reference's checkpoint file (.pth)")
    ss.add_argument("--config", required=True, metavar="NAME",
                    help="the reference config, as its path under score_sde_pytorch's configs/, e.g. "
                         "vp/cifar10_ddpmpp_continuous, subvp/cifar10_ddpmpp_deep_continuous, "
                         "ve/cifar10_ncsnpp_continuous, vp/ddpm/cifar10_continuous")
    ss.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a key of the reference config's model section, e.g. --set nf=32 --set "
                         "ch_mult=[1,2] --set num_res_blocks=2 (repeatable)")
    ss.add_argument("--workdir", required=True, metavar="RUN_DIR",
                    help="the run directory to write (refused if it already holds a run)")
    ss.add_argument("--data-root", metavar="DIR",
                    help="the data set's folder (data.root; e.g. CIFAR-10's cifar-10-batches-bin): likelihood and "
                         "compare read it, sampling does not (default: none; set it later in RUN_DIR/config.yaml)")
    ss.set_defaults(func=cmd_import)
    df = im_sub.add_parser("diffusers", help="a diffusers UNet2DModel folder with its scheduler config",
                           description="A diffusers pipeline or model folder: a UNet2DModel with its scheduler "
                                       "config (DDPM/DDIM -> VP, ScoreSdeVe -> VE).")
    df.add_argument("folder", metavar="FOLDER", help="the diffusers folder")
    df.add_argument("--workdir", required=True, metavar="RUN_DIR",
                    help="the run directory to write (refused if it already holds a run)")
    df.set_defaults(func=cmd_import)

    ev = sub.add_parser("evaluate", help="FID, KID, IS (Inception, scoresde[eval]) or FD in a feature net's space",
                        description="Sample quality of generated images against a reference: FID, KID (mean ± std "
                                    "over subsets), Inception Score (mean ± std over splits) and precision/recall in "
                                    "torch-fidelity's Inception-v3 space (pip install 'scoresde[eval]'; weights from "
                                    "torch.hub's cache, $TORCH_HOME/hub/checkpoints, or --inception-weights), or "
                                    "the same in the digits classifier's space (--feature-net digits: FD-digits, "
                                    "offline). A data split's statistics are computed once and cached. Warns when "
                                    "a set is below 10,000 images for FID (5 x the feature dimension for another "
                                    "network): FID is biased upward at small N, so compare numbers of equal N.")
    ev.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                    help="the run the samples came from: its data for --reference train/test, the data range of "
                         "float samples, and the cache folder RUN_DIR/eval (optional with a --reference file)")
    ev.add_argument("--samples", required=True, metavar="PATH",
                    help="a folder written by `scoresde sample --out DIR`, a folder of .npz files or one .npz "
                         "(uint8 images (N, H, W, C) or (N, C, H, W); floats in the run's data range)")
    ev.add_argument("--reference", metavar="train|test|PATH",
                    help="a split of RUN_DIR's data (default: train), a statistics .npz (scoresde's mu/sigma/"
                         "features, pytorch-fid's mu/sigma, score_sde's pool_3, e.g. cifar10_stats.npz), or images")
    ev.add_argument("--metrics", default="fid,kid,is", help="comma-separated: fid, kid, is, pr (precision/recall)")
    ev.add_argument("--feature-net", default="inception", choices=("inception", "digits"),
                    help="inception: torch-fidelity's Inception-v3 (FID, KID, IS); digits: the shipped digits "
                         "classifier (FD-digits, KID-digits, IS-digits)")
    ev.add_argument("--inception-weights", metavar="PATH",
                    help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (default: torch.hub's cache "
                         "$TORCH_HOME/hub/checkpoints/, downloaded there when missing and online)")
    ev.add_argument("--cache-dir", metavar="DIR", help="where data-split statistics are cached (default RUN_DIR/eval)")
    ev.add_argument("--batch-size", type=_positive, default=200, help="images per feature-network batch")
    ev.add_argument("--device", default="auto", help=device_help)
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)

    tc = sub.add_parser("train-classifier", help="train the digits classifier behind FD-digits",
                        description="Train the small CNN classifier of the 8x8 digits whose features FD-digits "
                                    "compares (scoresde.classifier; the package ships one, trained with the "
                                    "defaults): deterministic on the CPU for a seed, about 5 s on one core. Prints "
                                    "the test accuracy and writes the weights and training metadata as one "
                                    "safetensors file (atomically).")
    tc.add_argument("dataset", choices=("digits",), help="the data set (digits: scikit-learn's bundled 8x8 digits)")
    tc.add_argument("--out", default=os.path.join("runs", "digits_classifier.safetensors"),
                    help="the .safetensors file to write")
    tc.add_argument("--steps", type=_positive, default=500, help="optimizer steps (batches of 128)")
    tc.add_argument("--seed", type=int, default=0, help="seed of the initialization, the batches and the shifts")
    tc.add_argument("--quiet", action="store_true", help="no progress lines")
    tc.set_defaults(func=cmd_train_classifier)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:
            from ..run import resolve_device
            args.device = resolve_device(args.device, what="--device")
        return args.func(args)
    except KeyboardInterrupt as e:
        print("scoresde: interrupted" + (f": {_printable(e)}" if str(e) else ""), file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        print(f"scoresde: error: {_printable(e)}", file=sys.stderr)
        return 2
