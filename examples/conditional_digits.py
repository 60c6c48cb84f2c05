"""Class-conditional digits with classifier-free guidance: train, sample a 10x10 grid (row = class),
and measure how often the shipped digits classifier agrees with the class asked for.

configs/digits_vp_conditional.yaml: the digits U-Net with a class embedding (model.num_classes 10,
index 10 the null class) trained with label dropout 0.1, so one network gives s(x, t, y) and s(x, t).
Sampling uses scoresde.guidance.classifier_free: (1 - w) s(x, t) + w s(x, t, y); w = 1 is the plain
conditional model, w > 1 sharpens the class (at some cost in diversity). Every guidance scale is
sampled from the same prior draws, with the config's sampler (DDIM, 50 steps), and judged by the
classifier of scoresde.classifier (97% on the real test digits).

    python examples/conditional_digits.py              # the config's 2000 steps, a few minutes on a CPU
    python examples/conditional_digits.py --quick      # a tiny run, seconds
    python examples/conditional_digits.py --scales 0,1,2,3 --scale 3
"""
import argparse
import os
import time

import torch

import scoresde as sd
from scoresde import guidance, plot, sampling
from scoresde.classifier import load_digits_classifier
from scoresde.config import load_config

from _common import config_path, default_workdir, markdown, run_main, train_or_reuse, write_json, write_text

QUICK = ["train.steps=30", "train.batch_size=32", "train.warmup=5", "train.log_every=10", "train.ema_decay=0.5",
         "train.checkpoint_every=30", "model.channels=8", "model.num_groups=4"]
NUM_CLASSES = 10


def guided_samples(run, scale: float, per_class: int, steps: int, seed: int, progress: bool) -> torch.Tensor:
    """per_class samples of each class 0..9 (class-major order) under classifier-free guidance at
    ``scale``, from the prior draws of ``seed`` (the same for every scale)."""
    y = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    score = guidance.classifier_free(run.cond_score_fn, y, scale)
    with torch.no_grad():
        return sampling.sample(run.config.sample.sampler, score, run.sde, (len(y),) + run.data_shape, steps=steps,
                               eps=run.config.sample.eps, generator=torch.Generator().manual_seed(seed),
                               progress=progress)


def accuracy(classifier, x: torch.Tensor, per_class: int, data_range) -> dict:
    """The classifier's agreement with the class asked for: overall and per class, and its confidence."""
    with torch.no_grad():
        probs = classifier.logits(x.clamp(*data_range), data_range=data_range).softmax(1)
    asked = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    hit = (probs.argmax(1) == asked).double()
    return {"accuracy": hit.mean().item(),
            "per_class": [hit[asked == k].mean().item() for k in range(NUM_CLASSES)],
            "confidence": probs.max(1).values.double().mean().item()}


# ---- inpainting ---------------------------------------------------------------------------------------
INPAINT_METHODS = ("replace", "pigdm")


def inpainting_part(run, cfg, scale: float, args, classifier) -> dict:
    """Test digits with their bottom half hidden, filled in by ``scoresde.sampling.inpaint`` with the
    unconditional score (label unknown) and with the class-guided score (label given), for each method.
    The classifier's agreement with the true label says how often the filled-in half makes the right
    digit; the masked digit with its bottom half at the data's mean, and the true digit, bound it."""
    n = 20 if args.quick else args.inpaint
    test = sd.run.load_data(cfg, "test", n=n, generator=torch.Generator().manual_seed(0))
    x0, labels = test.data, test.labels
    H = x0.shape[-2]
    mask = torch.zeros(1, 1, H, x0.shape[-1], dtype=torch.bool)
    mask[..., : H // 2, :] = True                                            # top half known
    data_var = float(x0[:, :, : H // 2].var())                               # the known pixels' variance
    steps = 5 if args.quick else run.config.sample.steps
    scores = {"unconditional": run.score_fn, f"class-guided {scale:g}": guidance.classifier_free(run.cond_score_fn, labels, scale)}
    rows, out, shown = [], {}, {"original": x0[:10], "masked": torch.where(mask, x0, x0.mean())[:10]}
    for name, x in (("original", x0), ("masked (bottom half at the mean)", torch.where(mask, x0, x0.mean()))):
        out[name] = accuracy_against(classifier, x, labels, run.data_range)
        rows.append((name, "—", f"{out[name]:.1%}"))
    for score_name, score in scores.items():
        for method in INPAINT_METHODS:
            g = torch.Generator().manual_seed(2)
            x_T = run.sde.prior_sampling(x0.shape, generator=g)
            key = f"{score_name}, {method}"
            try:
                x = sampling.inpaint(run.config.sample.sampler, score, run.sde, x_T, known=x0, mask=mask,
                                     method=method, generator=g, data_var=data_var, steps=steps,
                                     eps=run.config.sample.eps)
            except sd.NonFiniteError:
                # ΠGDM differentiates x̂0 = (x + σ² s) / α: at high noise 1/α amplifies the network's
                # error in σ² ∂s/∂x, and on this model the guidance diverges (README, "Inverse problems")
                out[key] = None
                rows.append((score_name, method, "diverged (non-finite)"))
                continue
            out[key] = accuracy_against(classifier, x, labels, run.data_range)
            rows.append((score_name, method, f"{out[key]:.1%}"))
            shown[key] = x[:10]
    png = plot.image_grid(torch.cat(list(shown.values())), os.path.join(args.workdir, "inpainting.png"),
                          data_range=run.data_range, nrow=10,
                          title="rows: original, masked, " + "; ".join(list(shown)[2:]))
    table = markdown(("score", "method", "classified as the true digit"), rows)
    print(f"inpainting {n} test digits, bottom half hidden ({run.config.sample.sampler}, {steps} steps):")
    print(table)
    write_text(os.path.join(args.workdir, "inpainting.md"), table)
    return {"digits": n, "known": "top half", "data_var": data_var, "accuracy": out, "figure": png}


def accuracy_against(classifier, x: torch.Tensor, labels: torch.Tensor, data_range) -> float:
    with torch.no_grad():
        return (classifier.logits(x.clamp(*data_range), data_range=data_range).argmax(1) == labels).double().mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the config's, 2000)")
    p.add_argument("--scales", default="1,2,3", help="comma-separated guidance scales to measure")
    p.add_argument("--scale", type=float, default=2.0, help="the guidance scale of the 10x10 grid")
    p.add_argument("--per-class", type=int, default=100, help="samples per class and scale for the accuracy")
    p.add_argument("--inpaint", type=int, default=500, help="test digits to inpaint (bottom half hidden)")
    p.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--workdir", default=default_workdir("conditional_digits"))
    args = p.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    if args.scale not in scales:
        scales.append(args.scale)

    overrides = QUICK if args.quick else ([f"train.steps={args.steps}"] if args.steps else [])
    cfg = load_config(config_path("digits_vp_conditional"), overrides)
    print(f"training {cfg.train.steps} steps: digits 8x8, VP-SDE, class-conditional U-Net "
          f"(label dropout {cfg.train.label_dropout}) -> {args.workdir}")
    t0 = time.time()
    result = train_or_reuse(cfg, args.workdir, progress=not args.quiet)
    train_seconds = time.time() - t0
    print(f"step {result['step']}: {result['status']} ({train_seconds:.0f} s)")
    run = sd.load(args.workdir)

    per_class = 2 if args.quick else args.per_class
    steps = 5 if args.quick else cfg.sample.steps
    classifier = load_digits_classifier()
    rows, results, grid = [], {}, None
    for scale in scales:
        t0 = time.time()
        x = guided_samples(run, scale, per_class, steps, seed=1, progress=not args.quiet)
        res = accuracy(classifier, x, per_class, run.data_range)
        res["seconds"] = time.time() - t0
        results[f"{scale:g}"] = res
        rows.append((f"{scale:g}", f"{res['accuracy']:.1%}", " ".join(f"{a:.0%}" for a in res["per_class"]),
                     f"{res['confidence']:.3f}"))
        print(f"guidance {scale:g}: accuracy {res['accuracy']:.1%} "
              f"(per class {', '.join(f'{a:.0%}' for a in res['per_class'])}), {res['seconds']:.0f} s")
        if scale == args.scale:
            # 10 per class, class-major: row k of the 10x10 grid is class k
            grid = x.reshape(NUM_CLASSES, per_class, *run.data_shape)[:, :min(per_class, 10)]
    png = plot.image_grid(grid.reshape(-1, *run.data_shape), os.path.join(args.workdir, "grid.png"),
                          data_range=run.data_range, nrow=grid.shape[1],
                          title=f"classifier-free guidance {args.scale:g} (row = class)")
    table = markdown(("guidance", "accuracy", "per class 0..9", "confidence"), rows)
    print(table)
    write_text(os.path.join(args.workdir, "accuracy.md"), table)
    write_json(os.path.join(args.workdir, "summary.json"), {
        "train_steps": run.step, "train_seconds": train_seconds, "label_dropout": cfg.train.label_dropout,
        "sampler": cfg.sample.sampler, "sampler_steps": steps, "samples_per_class": per_class,
        "grid_scale": args.scale, "scales": results, "inpainting": inpainting_part(run, cfg, args.scale, args, classifier)})
    print(f"wrote {png}, accuracy.md and summary.json")


if __name__ == "__main__":
    run_main(main)
