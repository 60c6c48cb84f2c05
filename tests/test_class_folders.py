"""Labelled image folders (``data.class_folders``): torchvision's ImageFolder layout,
root/<class name>/**/*.png (or root/<split>/<class name>/...), read on tiny PNG folders written
here. Every image's pixels encode the class folder it was written to, so each test checks that the
image got its own folder's label, whatever the order the reader lists files in; the class names
are made so that Python's sorted order (the label order) differs from the order they are written
in and from a case-insensitive sort.

Also: the layout and config errors (each names the path or the key), 2-step class-conditional and
noisy-classifier training runs on a folder, the class names saved with the checkpoints and read back
by ``scoresde.load``, and ``scoresde sample RUN --class NAME``."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import scoresde as sd
from scoresde import data as D, guidance
from scoresde.cli.guided import parse_classes
from scoresde.config import ConfigError, from_dict
from scoresde.io import CheckpointError
from scoresde.resume import frozen_part
from scoresde.train import Trainer, train

from test_cli import assert_one_line_error, run_cli

#: written in this order, which is sorted neither forwards nor backwards (a directory listing may give
#: either); labels follow sorted(): "Mole" < "ant" < "zebra" (upper case sorts first)
CLASSES = ("ant", "zebra", "Mole")
SORTED = ("Mole", "ant", "zebra")
#: the pixel value of every image of a class (its code), and how many images each class gets
CODE = {"zebra": 30, "ant": 110, "Mole": 190}
COUNT = {"zebra": 3, "ant": 2, "Mole": 4}


def save_png(path, value, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


def make_classes(root, classes=CLASSES, size=8):
    """COUNT[c] gray PNGs of value CODE[c] under root/c/ (the last one of each in a nested subfolder)."""
    for c in classes:
        for j in range(COUNT.get(c, 2)):
            save_png(root / c / ("deep" if j == 0 else "") / f"img{j}.png", CODE.get(c, 250), size)
    return root


def decoded(pixels):
    """The class folder each image was written to, from its pixels (all equal to the class's code)."""
    by_code = {v: k for k, v in CODE.items()}
    flat = pixels.reshape(len(pixels), -1)
    assert (flat == flat[:, :1]).all()
    return [by_code[int(v)] for v in flat[:, 0]]


def assert_labels_exact(pixels, labels, names):
    """Each image's label names the class folder it was written to."""
    assert labels.dtype == torch.int64 and labels.shape == (len(pixels),)
    assert [names[k] for k in labels.tolist()] == decoded(pixels)


# ---- the reader --------------------------------------------------------------------------------

def test_labels_and_class_order_are_exact(tmp_path):
    root = make_classes(tmp_path / "pets")
    (root / "README.txt").write_text("not an image: ignored")
    pixels, labels, names = D.read_class_folders(root)
    assert names == list(SORTED) == D.class_folder_names(root)
    assert_labels_exact(pixels, labels, names)
    assert torch.bincount(labels).tolist() == [COUNT[c] for c in SORTED]
    # the same images, in the same (sorted path) order, as the unlabelled reader
    assert torch.equal(pixels, D.read_image_folder(root))
    d = D.load_dataset("folder", root=root, class_folders=True, image_size=4, channels=3)
    assert d.class_names == SORTED and d.pixels.shape == (9, 3, 4, 4)
    assert torch.equal(d.labels, labels)
    assert_labels_exact(d.pixels[:, :1], d.labels, d.class_names)
    sub = D.load_dataset("folder", root=root, class_folders=True, n=5, generator=torch.Generator().manual_seed(3))
    assert len(sub) == 5 and sub.class_names == SORTED
    assert_labels_exact(sub.pixels, sub.labels, sub.class_names)
    # without the key a folder stays unlabelled
    plain = D.load_dataset("folder", root=root)
    assert plain.labels is None and plain.class_names is None


def test_train_and_test_split_subfolders(tmp_path):
    make_classes(tmp_path / "train")
    make_classes(tmp_path / "test")
    train_set = D.load_dataset("folder", "train", root=tmp_path, class_folders=True)
    test_set = D.load_dataset("folder", "test", root=tmp_path, class_folders=True)
    for d in (train_set, test_set):
        assert d.class_names == SORTED
        assert_labels_exact(d.pixels, d.labels, d.class_names)
    # a label must mean the same class in both splits
    (tmp_path / "test" / "ant").rename(tmp_path / "test" / "bee")
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=r"class folders of .*(train|test)'.*differ: '(ant|bee)'"):
            D.load_dataset("folder", split, root=tmp_path, class_folders=True)


def test_other_data_sets_and_their_class_names(tmp_path):
    from test_data import make_cifar
    make_cifar(tmp_path)
    assert D.load_dataset("cifar10", root=tmp_path).class_names == D.CIFAR10_CLASSES
    assert D.CIFAR10_CLASSES[3] == "cat" and len(D.CIFAR10_CLASSES) == 10
    digits = D.load_dataset("digits", n=4)
    assert digits.labels is not None and digits.class_names is None
    with pytest.raises(ValueError, match="class_folders applies to the image folder .*'digits'"):
        D.load_dataset("digits", class_folders=True)


def test_layout_errors_name_the_path(tmp_path):
    root = make_classes(tmp_path / "set")
    save_png(root / "stray.png", 0)
    with pytest.raises(ValueError, match=r"image '.*stray\.png' lies directly in the class root"):
        D.read_class_folders(root)
    (root / "stray.png").unlink()
    (root / "empty" / "nested").mkdir(parents=True)
    (root / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder '.*set/empty' holds no images"):
        D.load_dataset("folder", root=root, class_folders=True)
    one = make_classes(tmp_path / "one", classes=("ant",))
    with pytest.raises(ValueError, match=r"'.*one' has 1 class folder\(s\) \(ant\): expected at least 2"):
        D.read_class_folders(one)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"no images in '.*none'"):
        D.read_class_folders(tmp_path / "none")


# ---- config ------------------------------------------------------------------------------------

def folder_raw(root, num_classes=3, **train):
    """A tiny class-conditional U-Net on a folder of 8x8 gray images (a step takes milliseconds)."""
    return {"sde": {"type": "vp"}, "data": {"name": "folder", "root": str(root), "class_folders": True},
            "model": {"name": "unet", "channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                      "attn_resolutions": [4], "dropout": 0.0, "num_groups": 4, "num_classes": num_classes},
            "train": {"steps": 2, "batch_size": 6, "warmup": 1, "lr": 1e-3, "checkpoint_every": 100,
                      "log_every": 1, "device": "cpu", "label_dropout": 0.1, **train},
            "sample": {"num": 4, "steps": 2}}


def classifier_raw(root, **train):
    return folder_raw(root, **dict(dict(objective="classifier", label_dropout=0.0), **train))


@pytest.mark.parametrize("edit, key, needle", [
    (lambda r: r["data"].update(name="digits", root=None), "data.class_folders", "false for data.name 'digits'"),
    (lambda r: r["data"].update(class_folders=False), "data.class_folders", "true for model.num_classes > 0"),
    (lambda r: (r["data"].update(class_folders=False), r["train"].update(objective="classifier", label_dropout=0)),
     "data.class_folders", "true for train.objective classifier"),
    (lambda r: r["model"].update(num_classes=1), "model.num_classes", "at least 2"),
    (lambda r: (r["model"].update(num_classes=0), r["train"].update(objective="classifier", label_dropout=0)),
     "model.num_classes", "the number of class folders"),
    (lambda r: r["data"].update(class_folders="yes"), "data.class_folders", "true or false"),
], ids=["not-a-folder", "conditional-needs-it", "classifier-needs-it", "one-class", "classifier-0", "not-a-bool"])
def test_config_errors_name_the_key(tmp_path, edit, key, needle):
    raw = folder_raw(tmp_path)
    edit(raw)
    with pytest.raises(ConfigError) as e:
        from_dict(raw, source="cfg.yaml")
    assert e.value.key == key and str(e.value).startswith(f"cfg.yaml: {key}: expected ") and needle in str(e.value)


def test_config_error_from_the_command_line_is_one_line(capsys, tmp_path):
    workdir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "digits_vp", "--workdir", workdir, "--quiet",
                           "--set", "data.class_folders=true")
    assert_one_line_error(code, err, "data.class_folders", "'digits'")
    assert not workdir.exists()


def test_num_classes_must_be_the_number_of_class_folders(tmp_path):
    root = make_classes(tmp_path / "pets")
    for k in (2, 4):
        with pytest.raises(ConfigError, match=rf"model.num_classes: expected 3, the number of class folders in "
                                              rf"data.root '{root}' \(train split: Mole, ant, zebra\), got {k}"):
            Trainer(from_dict(folder_raw(root, num_classes=k)), str(tmp_path / "run"), progress=False)
        raw = classifier_raw(root)
        raw["model"]["num_classes"] = k
        with pytest.raises(ConfigError, match=f"model.num_classes: expected 3, .*got {k}"):
            Trainer(from_dict(raw), str(tmp_path / "clf"), progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "clf").exists()


def test_checkpoints_without_the_key_resume_as_false():
    """A checkpoint saved before data.class_folders existed has the key's default when resumed."""
    old = {"name": "folder", "root": "/a", "image_size": None, "flip": False, "centered": True, "n_train": None,
           "n_test": None}
    assert frozen_part("data", old) == frozen_part("data", dict(old, class_folders=False, root="/b"))
    assert frozen_part("data", old) != frozen_part("data", dict(old, class_folders=True))


# ---- training, the saved names, sampling by name --------------------------------------------------

def spy_labels(trainer):
    """Record (the class folder of each image, the label) of every batch the loss sees."""
    seen, loss_fn = [], trainer.loss_fn

    def recording(model, sde, x, *args, **kwargs):
        y = kwargs["y"] if "y" in kwargs else args[0]
        pixels = torch.round((x + 1) * 127.5).to(torch.uint8)   # data.centered: pixel p -> p / 127.5 - 1
        seen.append((decoded(pixels), y.tolist()))
        return loss_fn(model, sde, x, *args, **kwargs)

    trainer.loss_fn = recording
    return seen


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A 2-step class-conditional run on the folder, and the labels its loss saw."""
    base = tmp_path_factory.mktemp("classes")
    root = make_classes(base / "pets")
    trainer = Trainer(from_dict(folder_raw(root, label_dropout=0.1)), str(base / "run"), progress=False)
    seen = spy_labels(trainer)
    assert trainer.fit()["status"] == "complete"
    return base, seen


def test_conditional_training_on_class_folders(cond_run):
    base, seen = cond_run
    assert len(seen) == 2
    for folders, labels in seen:    # label 3 is the null class of label dropout
        assert [SORTED[k] if k < 3 else f for f, k in zip(folders, labels)] == folders
    meta = json.loads((base / "run" / "checkpoints" / "ckpt_00000002" / "meta.json").read_text())
    assert meta["class_names"] == list(SORTED)
    run = sd.load(str(base / "run"))
    assert run.class_names == SORTED and run.num_classes == 3 and run.cond_score_fn is not None


def test_resume_refuses_other_classes(cond_run, tmp_path):
    """data.root may change on resume, but not what the labels mean."""
    base, _ = cond_run
    other = make_classes(tmp_path / "moved", classes=("Zebra", "ant", "Mole"))     # sorted: Mole, Zebra, ant
    with pytest.raises(CheckpointError, match="label 1 was class 'ant', is 'Zebra'"):
        train(from_dict(folder_raw(other, steps=3)), str(base / "run"), resume=True, progress=False)


def test_noisy_classifier_on_class_folders(tmp_path):
    root = make_classes(tmp_path / "pets")
    trainer = Trainer(from_dict(classifier_raw(root)), str(tmp_path / "clf"), progress=False)
    seen = spy_labels(trainer)
    assert trainer.fit()["status"] == "complete"
    assert len(seen) == 2 and all([SORTED[k] for k in labels] == folders for folders, labels in seen)
    clf = sd.load(str(tmp_path / "clf"))
    assert clf.objective == "classifier" and clf.class_names == SORTED and clf.num_classes == 3
    with torch.no_grad():
        assert clf.classifier_logp(torch.zeros(2, 1, 8, 8), 0.5).shape == (2, 3)


def test_unconditional_runs_record_no_class_names(tmp_path):
    root = make_classes(tmp_path / "pets")
    raw = folder_raw(root, num_classes=0, label_dropout=0.0)
    train(from_dict(raw), str(tmp_path / "run"), progress=False)
    assert sd.load(str(tmp_path / "run")).class_names is None


def test_sample_by_class_name(capsys, tmp_path, cond_run, monkeypatch):
    base, _ = cond_run
    calls, original = [], guidance.classifier_free
    monkeypatch.setattr(guidance, "classifier_free",
                        lambda fn, y, scale: calls.append(torch.as_tensor(y).tolist()) or original(fn, y, scale))
    out = tmp_path / "s.npz"
    argv = ["sample", base / "run", "--sampler", "ddim", "--steps", "2", "--num", "4", "--device", "cpu",
            "--out", out, "--quiet"]
    code, stdout, err = run_cli(capsys, *argv, "--class", "zebra,Mole", "--guidance", "2")
    assert code == 0, err
    assert calls == [[2, 0, 2, 0]] and "class 2 (zebra),0 (Mole), scale 2" in stdout
    code, _, err = run_cli(capsys, *argv, "--class", "1")          # a label still works
    assert code == 0 and calls[-1] == [1] * 4, err
    code, _, err = run_cli(capsys, *argv, "--class", "zebr")
    assert_one_line_error(code, err, "--class", "'Mole', 'ant', 'zebra'", "'zebr'")


def test_parse_classes_by_name_and_label():
    names = ("1", "10", "2", "cat")
    assert parse_classes("3,1,0") == [3, 1, 0]
    assert parse_classes("cat,10, 2,0", names) == [3, 1, 2, 0]      # "2" is both label 2 and name "2"
    with pytest.raises(ValueError, match="--class 1: ambiguous: class name '1' is label 0, but label 1 is class '10'"):
        parse_classes("1", names)
    with pytest.raises(ValueError, match="class index or one of the run's class names"):
        parse_classes("dog", names)
    with pytest.raises(ValueError, match="class index or comma-separated|class index, or a comma-separated"):
        parse_classes("cat")
