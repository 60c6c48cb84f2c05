"""Guided sampling from the command line: ``scoresde sample RUN --class K [--guidance S] [--classifier CLF_RUN]``.

Two kinds, both through ``scoresde.guidance`` (score transforms any sampler takes unchanged):

* classifier-free (a class-conditional RUN, ``model.num_classes`` > 0, no --classifier):
  (1 - S) s(x, t) + S s(x, t, y); S = 1 (the default) is the plain conditional score;
* classifier guidance (--classifier, a noisy-classifier run of the same SDE and data shape):
  s(x, t) + S ∇x log p_t(y | x), with RUN's unconditional score (its null class if it is conditional).

``--class`` is one class for every sample or a comma-separated list that sample i takes cyclically
(class ``classes[i mod len]``: "0,1,...,9" gives a grid's columns), so a sharded folder's samples get
the same class for any batch size or number of processes. A class is its label, or its name where
the run that defines the classes (RUN, or the --classifier run) recorded names (``class_names``:
class folders, CIFAR-10). Every bad combination is one ValueError (the command prints it as one
line, exit 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch


@dataclass
class Guidance:
    """What ``--class/--guidance/--classifier`` ask for, checked against the run."""
    kind: str                    # "classifier-free" or "classifier"
    classes: List[int]
    scale: float
    classifier: Optional[object] = None   # the classifier's LoadedRun (kind "classifier")
    names: Optional[Sequence[str]] = None  # the names of the labels, where the run recorded them

    def labels(self, start: int, stop: int, device) -> torch.Tensor:
        """The classes of samples start .. stop - 1: classes[i mod len], (stop - start,) int64."""
        table = torch.tensor(self.classes, dtype=torch.long)
        return table[torch.arange(start, stop) % len(self.classes)].to(device)

    def score_fn(self, run, start: int, stop: int, device, precision: str = "fp32",
                 channels_last: bool = False) -> Callable:
        """The guided score for the batch of samples start .. stop - 1 of ``run``."""
        from .. import guidance
        from ..precision import precision_score
        y = self.labels(start, stop, device)
        if self.kind == "classifier-free":
            # the bound method, not the ScoreModel: precision_score then wraps the whole call, y included
            cond = precision_score(run.cond_score_fn, precision, channels_last=channels_last)
            return guidance.classifier_free(cond, y, self.scale)
        score = precision_score(run.score_fn, precision, channels_last=channels_last)
        return guidance.classifier(score, self.classifier.classifier_logp, y, self.scale)

    def settings(self) -> dict:
        """What decides the samples, for a sample folder's metadata (a resume must match)."""
        out = {"guidance": self.kind, "classes": list(self.classes), "guidance_scale": self.scale}
        if self.classifier is not None:
            out.update(classifier=self.classifier.path, classifier_step=int(self.classifier.step))
        return out

    def describe(self) -> str:
        which = ",".join(f"{c} ({self.names[c]})" if self.names else str(c) for c in self.classes)
        return f"{self.kind} guidance, class {which}, scale {self.scale:g}"


def parse_classes(text: str, names: Optional[Sequence[str]] = None) -> List[int]:
    """'3' or '0,1,2' -> [3] or [0, 1, 2] (range checked against the model later). With the class
    names of the run (``LoadedRun.class_names``), an item that is a name is its label ('cat' -> 3);
    one that is a name and also the label of another class (a folder "1" as label 0, with label 1
    another folder) is an error rather than a guess."""
    labels = []
    for item in str(text).split(","):
        item = item.strip()
        label = None
        try:
            label = int(item)
        except ValueError:
            if not names or item not in names:
                known = f" or one of the run's class names ({_listed(names)})" if names else ""
                raise ValueError(f"--class must be a class index{known}, or a comma-separated list of them, "
                                 f"got {text!r}") from None
        if names and item in names:
            named = list(names).index(item)
            if label is not None and label != named and 0 <= label < len(names):
                other = names[label]
                raise ValueError(f"--class {item}: ambiguous: class name {item!r} is label {named}, but label {label} "
                                 f"is class {other!r}; give {named} for the former or {other!r} for the latter")
            label = named
        labels.append(label)
    return labels


def _listed(names: Sequence[str], most: int = 10) -> str:
    return ", ".join(map(repr, names[:most])) + (", ..." if len(names) > most else "")


def plan(args, run, device) -> Optional[Guidance]:
    """The guidance the arguments ask for on ``run`` (None: plain unconditional sampling), or a
    ValueError naming the flag at fault."""
    from ..run import load, require_objective
    require_objective(run, "score", "scoresde sample RUN_DIR")
    klass, scale, clf_dir = args.klass, args.guidance, args.classifier
    if klass is None:
        for flag, given in (("--guidance", scale is not None), ("--classifier", clf_dir is not None)):
            if given:
                raise ValueError(f"{flag}: only with --class K (the class to guide the samples towards)")
        return None
    scale = 1.0 if scale is None else float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"--guidance must be a finite number >= 0 (1: the plain conditional score), got {args.guidance}")
    if clf_dir is None:
        if run.num_classes == 0:
            raise ValueError(f"--class: {run.path} is unconditional (model.num_classes 0): train a conditional run "
                             "(model.num_classes > 0) or add --classifier CLASSIFIER_RUN (classifier guidance)")
        classes = parse_classes(klass, run.class_names)
        _check_range(classes, run.num_classes, "the run's")
        return Guidance("classifier-free", classes, scale, names=run.class_names)
    try:
        clf = load(clf_dir, device=device)
    except (ValueError, OSError) as e:
        raise ValueError(f"--classifier: {' '.join(str(e).split())}") from None
    require_objective(clf, "classifier", "--classifier")
    if tuple(clf.data_shape) != tuple(run.data_shape):
        raise ValueError(f"--classifier: its data shape {tuple(clf.data_shape)} differs from the run's "
                         f"{tuple(run.data_shape)}")
    if clf.config.to_dict()["sde"] != run.config.to_dict()["sde"]:
        raise ValueError(f"--classifier: it was trained under another SDE ({clf.config.to_dict()['sde']}) than the "
                         f"run ({run.config.to_dict()['sde']}): its p_t(y | x) is not the run's")
    if tuple(clf.data_range) != tuple(run.data_range):
        raise ValueError(f"--classifier: its data range {tuple(clf.data_range)} differs from the run's "
                         f"{tuple(run.data_range)}")
    classes = parse_classes(klass, clf.class_names)
    _check_range(classes, clf.num_classes, "the classifier's")
    return Guidance("classifier", classes, scale, classifier=clf, names=clf.class_names)


def _check_range(classes: List[int], k: int, whose: str) -> None:
    bad = [c for c in classes if not 0 <= c < k]
    if bad:
        raise ValueError(f"--class {bad[0]}: out of range, {whose} classes are 0..{k - 1}")
