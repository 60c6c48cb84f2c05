"""`scoresde train --resume` and `--set` as a user types them: resume keeps the run's saved config
and says what it does; --set errors name the item typed, suggest the closest key, and integer keys
take integral numbers in any notation."""
import json
import os
import shutil

import pytest
import yaml

from conftest import tiny_run
from scoresde import io
from scoresde.config import load_config, resolve_config
from scoresde.cli import main
from test_cli import run_cli


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def write_config(path, **train):
    path.write_text(yaml.safe_dump(tiny_run(**train)))
    return path


def newest(run):
    """(step, path) of the newest checkpoint, and the step its meta.json records."""
    step, path = io.list_checkpoints(str(run / "checkpoints"))[0]
    assert io.load_checkpoint(path)[0]["step"] == step
    return step, path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 10-step tiny run (lr 1e-3) trained through the CLI, and its config file."""
    base = tmp_path_factory.mktemp("trained")
    config = write_config(base / "tiny.yaml", steps=10)
    assert main(["train", str(config), "--workdir", str(base / "run"), "--quiet"]) == 0
    return base / "run", config


@pytest.fixture
def run(tmp_path, trained):
    dest = tmp_path / "run"
    shutil.copytree(trained[0], dest)
    return dest


def test_resume_on_an_empty_workdir_says_it_starts_fresh(capsys, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", steps=10)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", config, "--workdir", run, "--resume", "--quiet")
    assert code == 0, err
    assert lines(out) == [f"no checkpoint in {run / 'checkpoints'}: starting fresh", f"{run}: step 10, complete"]
    assert err == ""


def test_resume_keeps_the_saved_config_and_says_what_it_ignores_and_changes(capsys, tmp_path, run):
    """A config file edited since the run started (steps 20, lr 5e-3) does not change the run: its
    differing values are listed in one warning line; only --set changes a value, and each change is
    printed as key: old -> new before the run continues from the checkpoint it names."""
    edited = write_config(tmp_path / "edited.yaml", steps=20, lr=5e-3)
    saved = run / "config.yaml"
    code, out, err = run_cli(capsys, "train", edited, "--workdir", run, "--resume", "--quiet")
    assert code == 0, err
    step, ckpt = newest(run)
    assert step == 10
    assert lines(out) == [f"resuming from {ckpt} (step 10)", f"{run}: step 10, already complete"]
    assert lines(err) == [f"warning: --resume keeps the run's saved config {saved}; ignoring where {edited} differs "
                          f"from it: train.steps: 20 (run: 10), train.lr: 0.005 (run: 0.001); "
                          f"change a value with --set KEY=VALUE"]
    cfg = load_config(str(saved))
    assert (cfg.train.steps, cfg.train.lr) == (10, 1e-3)  # config.yaml keeps the values in use

    # --set changes a value (in 2e1 notation); the file's lr is still not applied
    code, out, err = run_cli(capsys, "train", edited, "--workdir", run, "--resume", "--quiet",
                             "--set", "train.steps=2e1")
    assert code == 0, err
    assert lines(out) == ["changed train.steps: 10 -> 20", f"resuming from {ckpt} (step 10)",
                          f"{run}: step 20, complete"]
    assert lines(err) == [f"warning: --resume keeps the run's saved config {saved}; ignoring where {edited} differs "
                          f"from it: train.lr: 0.005 (run: 0.001); change a value with --set KEY=VALUE"]
    assert newest(run)[0] == 20
    cfg = load_config(str(saved))
    assert (cfg.train.steps, cfg.train.lr) == (20, 1e-3)
    # the steps after the resume really ran at the saved learning rate (warmup is over by then)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in records if r["step"] > 10] == [(15, 1e-3), (20, 1e-3)]
    assert not [n for n in os.listdir(run) if n.startswith(".")]  # config.yaml rewritten atomically


@pytest.mark.parametrize("item, change", [
    ("sde.beta_max=30", "sde.beta_max 20.0 -> 30.0"),
    ("model.hidden=64", "model.hidden 32 -> 64"),
    ("data.n_train=500", "data.n_train 2000 -> 500"),
])
def test_resume_refuses_to_change_sde_model_or_data(capsys, run, trained, item, change):
    before = (run / "config.yaml").read_bytes()
    code, out, err = run_cli(capsys, "train", trained[1], "--workdir", run, "--resume", "--quiet", "--set", item)
    assert code == 2 and out == ""
    assert lines(err) == [f"scoresde: error: --set {item}: --resume cannot change sde, model or data ({change}): "
                          f"the checkpoints in {run} were trained with the old values; "
                          f"train a new run in another --workdir"]
    assert (run / "config.yaml").read_bytes() == before
    assert [s for s, _ in io.list_checkpoints(str(run / "checkpoints"))] == [10]


def test_train_api_refuses_other_data_but_not_another_data_root(run):
    """The trainer's own check (the API path): the saved data stream indexes this data set."""
    from scoresde.config import from_dict
    from scoresde.train import train
    raw = tiny_run(steps=10)
    raw["data"]["n_train"] = 500
    with pytest.raises(io.CheckpointError, match="its data config"):
        train(from_dict(raw), str(run), resume=True, progress=False)
    raw = tiny_run(steps=10)
    raw["data"]["root"] = "/data/moved"  # where the files are, not which: may change
    assert train(from_dict(raw), str(run), resume=True, progress=False)["status"] == "already complete"


def test_bundled_config_errors_name_the_set_item_and_the_closest_key(capsys, tmp_path):
    cases = {
        "train.step=10": "--set train.step=10: unknown key train.step (did you mean train.steps?)",
        "train.steps=1.5": "--set train.steps=1.5: train.steps: expected an integer, got 1.5",
        "trian.steps=3": "--set trian.steps=3: unknown section trian (did you mean train?) "
                         "(sections: sde, model, data, train, sample)",
        "model.hiden=3": "--set model.hiden=3: unknown key model.hiden for model 'mlp' (did you mean model.hidden?)",
        "train.lr=2": "--set train.lr=2: train.lr: expected a number in (0, 1], got 2.0",
        "data.name=mnist": "--set data.name=mnist: data.root: required for data.name 'mnist' "
                           "(the folder holding its files), e.g. --set data.root=/path/to/mnist",
    }
    for item, message in cases.items():
        code, out, err = run_cli(capsys, "train", "toy_vp", "--workdir", tmp_path / "run", "--quiet", "--set", item)
        assert (code, out, lines(err)) == (2, "", [f"scoresde: error: {message}"]), item
    # the item in effect is blamed, and a missing root is named by its key
    code, _, err = run_cli(capsys, "train", "mnist_vp", "--workdir", tmp_path / "run", "--quiet",
                           "--set", "data.root=/x", "--set", "data.root=null")
    assert lines(err) == ["scoresde: error: --set data.root=null: data.root: required for data.name 'mnist' "
                          "(the folder holding its files), e.g. --set data.root=/path/to/mnist"]
    assert not (tmp_path / "run").exists()


def test_errors_from_the_file_name_the_file_and_relations_blame_the_item_that_broke_them(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"stpes": 10}}))
    code, _, err = run_cli(capsys, "train", bad, "--workdir", tmp_path / "run", "--set", "train.lr=1e-3")
    assert lines(err) == [f"scoresde: error: {bad}: train.stpes: unknown key (did you mean train.steps?)"]
    # the file's loss: ddpm is fine until --set sde.type=ve: that item is named, with the key at fault
    ddpm = tmp_path / "ddpm.yaml"
    ddpm.write_text(yaml.safe_dump({"sde": {"type": "vp"}, "train": {"loss": "ddpm"}}))
    code, _, err = run_cli(capsys, "train", ddpm, "--workdir", tmp_path / "run", "--set", "sde.type=ve")
    assert lines(err) == ["scoresde: error: --set sde.type=ve: train.loss: expected 'ddpm' only with sde.type vp, "
                          "got 'ddpm'"]
    # a file that is invalid on its own may be fixed by --set
    fixable = tmp_path / "fixable.yaml"
    fixable.write_text(yaml.safe_dump({"train": {"lr": 5}}))
    assert load_config(str(fixable), ["train.lr=1e-3"]).train.lr == 1e-3
    assert not (tmp_path / "run").exists()


def test_integral_numbers_in_any_notation_for_integer_keys(capsys, tmp_path, monkeypatch):
    import scoresde.train
    seen = {}

    def fake_train(cfg, workdir, resume=False, progress=True, log=None):  # the CLI's config, not a run
        seen["cfg"] = cfg
        return {"step": cfg.train.steps, "status": "complete"}

    monkeypatch.setattr(scoresde.train, "train", fake_train)
    code, out, err = run_cli(capsys, "train", "toy_vp", "--workdir", tmp_path / "run", "--quiet",
                             "--set", "train.steps=1e3", "--set", "train.batch_size=1.28e2", "--set", "data.root=1e3")
    assert code == 0, err
    t = seen["cfg"].train
    assert (t.steps, t.batch_size) == (1000, 128) and type(t.steps) is int
    assert seen["cfg"].data.root == "1e3"  # a string key keeps the text as typed
    toy = resolve_config("toy_vp")
    assert load_config(toy, ["sde.N=2e3"]).sde.N == 2000
    in_file = tmp_path / "e.yaml"
    in_file.write_text("train:\n  steps: 1e3\n")  # YAML reads this as the string '1e3'
    assert load_config(str(in_file)).train.steps == 1000
