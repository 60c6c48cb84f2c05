"""The `scoresde` command: help, one-line errors with nothing written, and a tiny end-to-end run."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import HANG_TIMEOUT
from scoresde.cli import main

TINY_SETS = ["train.steps=20", "train.checkpoint_every=10", "train.log_every=10", "train.batch_size=64",
             "data.n_train=1000", "model.hidden=32", "model.depth=2", "model.embed_dim=16"]


def run_cli(capsys, *argv):
    """main(argv) as a user types it (paths may be given as Path objects): (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sample", "--help"], ["likelihood", "--help"],
                                  ["compare", "--help"], ["demo", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "scoresde", "--help"], capture_output=True, text=True,
                         timeout=HANG_TIMEOUT)
    assert out.returncode == 0 and "train" in out.stdout


@pytest.mark.parametrize("override,needle", [
    ("train.lr=-1", "train.lr"), ("train.lr=nan", "train.lr"), ("train.steps=abc", "train.steps"),
    ("train.bogus=1", "train.bogus"), ("model.bogus=1", "model.bogus"), ("sde.type=foo", "sde.type"),
    ("train.batch_size=0", "train.batch_size"), ("sde.N=1", "sde.N"), ("model.hidden=1.5", "model.hidden"),
    ("data.name=nope", "nope"), ("nosection=1", "nosection"), ("justtext", "key=value"),
])
def test_bad_config_is_one_line_and_writes_nothing(capsys, tmp_path, override, needle):
    workdir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "toy_vp", "--workdir", str(workdir), "--set", override, "--quiet")
    assert_one_line_error(code, err, needle)
    assert not workdir.exists()


def test_bad_yaml_and_unknown_key_in_a_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    code, _, err = run_cli(capsys, "train", str(bad), "--workdir", str(tmp_path / "r1"))
    assert_one_line_error(code, err, "bad.yaml", "YAML")
    bad.write_text(yaml.safe_dump({"train": {"stpes": 10}}))
    code, _, err = run_cli(capsys, "train", str(bad), "--workdir", str(tmp_path / "r2"))
    assert_one_line_error(code, err, "bad.yaml", "train.stpes", "unknown key")
    code, _, err = run_cli(capsys, "train", str(tmp_path / "missing.yaml"))
    assert_one_line_error(code, err, "missing.yaml")


def test_missing_run_directory(capsys, tmp_path):
    for cmd in ("sample", "likelihood", "compare"):
        code, _, err = run_cli(capsys, cmd, str(tmp_path / "nothing"))
        assert_one_line_error(code, err, "nothing")


def test_missing_data_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "mnist_vp", "--workdir", str(tmp_path / "r"),
                           "--set", f"data.root={tmp_path / 'no_mnist'}", "--quiet")
    assert_one_line_error(code, err, "no_mnist")
    assert not (tmp_path / "r").exists()


def test_end_to_end_train_sample_likelihood_compare(capsys, tmp_path):
    workdir = str(tmp_path / "run")
    sets = [a for s in TINY_SETS for a in ("--set", s)]
    code, out, err = run_cli(capsys, "train", "toy_vp", "--workdir", workdir, "--quiet", *sets)
    assert code == 0, err
    assert "step 20, complete" in out
    # a second train into the same directory without --resume is refused; with it, nothing to do
    code, _, err = run_cli(capsys, "train", "toy_vp", "--workdir", workdir, "--quiet", *sets)
    assert_one_line_error(code, err, "--resume")
    code, out, _ = run_cli(capsys, "train", "toy_vp", "--workdir", workdir, "--quiet", "--resume", *sets)
    assert code == 0 and "already complete" in out

    for ext in ("png", "npz"):
        dest = tmp_path / f"s.{ext}"
        code, out, err = run_cli(capsys, "sample", workdir, "--sampler", "ddim", "--steps", "5", "--num", "32",
                                 "--out", str(dest), "--quiet")
        assert code == 0, err
        assert dest.stat().st_size > 0
    import numpy as np
    assert np.load(tmp_path / "s.npz")["samples"].shape == (32, 2)
    code, _, err = run_cli(capsys, "sample", workdir, "--out", str(tmp_path / "s.txt"))
    assert_one_line_error(code, err, "--out")

    code, out, err = run_cli(capsys, "likelihood", workdir, "--num", "20")
    assert code == 0, err
    assert "NLL" in out and "nats" in out

    code, out, err = run_cli(capsys, "compare", workdir, "--num", "100", "--steps", "2,4", "--quiet")
    assert code == 0, err
    rows = json.loads((tmp_path / "run" / "compare" / "compare.json").read_text())["rows"]
    assert {r["sampler"] for r in rows} >= {"euler_maruyama", "ddim", "pf_ode:dopri5"}
    # steps and NFE in two labelled columns: DDIM at 4 steps is 4 evaluations plus the denoising one
    header = out.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][:4] == ["sampler", "steps", "rtol = atol", "NFE"]
    ddim4 = next(r for r in rows if r["sampler"] == "ddim" and r["steps"] == 4)
    assert ddim4["nfe"] == 5 and ddim4["tolerance"] is None
    assert "| ddim | 4 | – | 5 |" in out
    dopri = [r for r in rows if r["sampler"] == "pf_ode:dopri5"]
    assert all(r["steps"] is None and r["tolerance"] > 0 for r in dopri)
    assert (tmp_path / "run" / "compare" / "compare.png").stat().st_size > 0
    code, _, err = run_cli(capsys, "compare", workdir, "--steps", "0,x")
    assert_one_line_error(code, err, "--steps")


def test_unwritable_workdir(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # running as root: permissions do not bind, use a file as parent
            target = tmp_path / "afile"
            target.write_text("x")
            workdir = target / "run"
        else:
            workdir = locked / "run"
        code, _, err = run_cli(capsys, "train", "toy_vp", "--workdir", str(workdir), "--quiet")
        assert_one_line_error(code, err, "workdir")
    finally:
        locked.chmod(0o700)


def test_demo_quick_writes_a_report(capsys, tmp_path):
    """`scoresde demo --quick` runs every stage of the demo (tiny training) and writes the report."""
    workdir = tmp_path / "demo"
    code, out, err = run_cli(capsys, "demo", "--quick", "--quiet", "--workdir", str(workdir))
    assert code == 0, err
    report = (workdir / "report.md").read_text()
    for figure in ("samples.png", "trajectories.png", "compare.png"):
        assert figure in report and (workdir / figure).stat().st_size > 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["train_steps"] == 200
    # the report's numbers are the API's on the same run, seeds and data
    import math
    import torch
    import scoresde as sd
    from scoresde.data import load_dataset, on_checkerboard
    run = sd.load(str(workdir))
    g = torch.Generator().manual_seed(1)
    x_T = run.sde.prior_sampling((500, 2), generator=g)
    with torch.no_grad():
        pf = sd.sampling.probability_flow(run.score_fn, run.sde, x_T)
        pc = sd.sampling.predictor_corrector(run.score_fn, run.sde, x_T, steps=500, generator=g)
    assert summary["on_board"]["probability_flow"] == on_checkerboard(pf).float().mean().item()
    assert summary["on_board"]["predictor_corrector"] == on_checkerboard(pc).float().mean().item()
    test = load_dataset("checkerboard", "test", n=500, generator=torch.Generator().manual_seed(12345)).data[:200]
    nll = -sd.log_likelihood(run.score_fn, run.sde, test, estimator="exact").logp.double()
    assert math.isclose(summary["test_nll_nats"], nll.mean().item(), rel_tol=1e-12)
    assert f"{summary['test_nll_nats']:.3f}" in report and summary["true_nll_nats"] == math.log(8)


def test_every_command_defaults_to_the_device_train_uses():
    """sample, likelihood and compare default to --device auto, as train.device does: a model trained
    on a GPU is sampled on the GPU."""
    from scoresde.cli import build_parser
    from scoresde.config import TrainConfig
    parser = build_parser()
    for cmd in ("sample", "likelihood", "compare"):
        assert parser.parse_args([cmd, "somewhere"]).device == "auto" == TrainConfig().device, cmd


def test_auto_device_resolves_and_cuda_without_cuda_is_one_line(capsys, tmp_path, monkeypatch):
    import torch
    from scoresde.run import resolve_device
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for cmd in ("sample", "likelihood", "compare"):
        code, _, err = run_cli(capsys, cmd, str(tmp_path), "--device", "cuda")
        assert_one_line_error(code, err, "--device", "no CUDA device")
        code, _, err = run_cli(capsys, cmd, str(tmp_path), "--device", "tpu")
        assert_one_line_error(code, err, "--device", "'tpu'")
