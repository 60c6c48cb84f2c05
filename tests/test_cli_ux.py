"""What `scoresde sample` and `scoresde likelihood` tell the user, typed as a user types them, each
number checked against the same computation done independently through the API: the NFE against
a counting score function handed to the sampler itself, the clipped count against the unclipped
samples, `--option` against the sampler called with the keyword, the likelihood's mean and
standard error against the per-point values, the exact toy value against its closed form. Also the
help texts' defaults, and Ctrl-C in the examples (a subprocess that gets SIGINT once it has
printed, not after a sleep)."""
import ast
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.sampling.generators import SampleGenerators
from conftest import HANG_TIMEOUT
from scoresde import sampling
from scoresde.cli import build_parser, main
from scoresde.run import load_data
from test_cli import TINY_SETS, assert_one_line_error, run_cli

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs, made on first use: toy runs by data set name (TINY_SETS of test_cli) and
    "digits", a 2-step U-Net whose samples overshoot [-1, 1] (what clipping is for)."""
    root, made = tmp_path_factory.mktemp("runs"), {}

    def get(name):
        if name not in made:
            workdir = str(root / name)
            if name == "digits":
                sets = ["train.steps=2", "train.checkpoint_every=2", "train.log_every=1", "train.warmup=1",
                        "train.batch_size=8", "model.channels=8", "model.attn_resolutions=[]"]
                argv = ["train", "digits_vp"]
            else:
                sets, argv = TINY_SETS + [f"data.name={name}"], ["train", "toy_vp"]
            assert main(argv + ["--workdir", workdir, "--quiet"] + [a for s in sets for a in ("--set", s)]) == 0
            made[name] = workdir
        return made[name]
    return get


class CountingScore:
    """A score function that counts its calls: the NFE, counted independently of the CLI."""

    def __init__(self, score):
        self.score, self.calls = score, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.score(x, t)


def direct(run, sampler, num, seed=0, **kw):
    """``sampler`` called directly on the CLI's prior draw (same seed, same generator stream):
    (unclipped samples, NFE counted around the score)."""
    g = torch.Generator().manual_seed(seed)
    x_T = run.sde.prior_sampling((num,) + run.data_shape, generator=g)
    counting = CountingScore(run.score_fn)
    with torch.no_grad():
        x = sampler(counting, run.sde, x_T, eps=run.config.sample.eps, generator=g, **kw)
    return x, counting.calls


def printed(pattern, text):
    m = re.search(pattern, text, re.M)
    assert m, f"{pattern!r} not in {text!r}"
    return m.groups()


def assert_mean_se(shown, values, min_decimals):
    """``shown`` = (mean, se) as printed: the mean and std/sqrt(n) of ``values`` at the printed
    precision, which gives the error two significant digits."""
    values = values.double()
    mean, se = values.mean().item(), values.std().item() / math.sqrt(values.numel())
    decimals = len(shown[0].split(".")[1])
    assert decimals == len(shown[1].split(".")[1]) == max(min_decimals, 1 - math.floor(math.log10(se))), shown
    assert shown == (f"{mean:.{decimals}f}", f"{se:.{decimals}f}"), (shown, mean, se)


# ---- sample ------------------------------------------------------------------------------------

def test_sample_prints_the_nfe_a_counting_score_counts_and_the_wall_time(capsys, runs, tmp_path, monkeypatch):
    """Default sampler (probability_flow, dopri5: adaptive): the printed NFE is the number of score
    calls the sampler makes when called directly; the plot's title shows rtol/atol and that NFE,
    not a step count; the samples are the direct ones; the time is at most the command's own."""
    import scoresde.plot
    titles = []
    real = scoresde.plot.save_samples
    monkeypatch.setattr(scoresde.plot, "save_samples", lambda x, d, path, title=None: titles.append(title) or real(x, d, path, title))
    workdir = runs("checkerboard")
    run = sd.load(workdir)
    expected, nfe = direct(run, sampling.probability_flow, 24)
    for out in ("s.npz", "s.png"):
        t0 = time.perf_counter()
        code, stdout, err = run_cli(capsys, "sample", workdir, "--num-samples", "24", "--out", str(tmp_path / out),
                                    "--device", "cpu", "--quiet")
        elapsed = time.perf_counter() - t0
        assert code == 0, err
        n, shown_nfe, seconds, dest = printed(r"^probability_flow: (\d+) samples, NFE (\d+), (\d+\.\d\d) s -> (\S+)$",
                                              stdout.strip())
        assert (int(n), int(shown_nfe), dest) == (24, nfe, str(tmp_path / out))
        assert 0 <= float(seconds) <= elapsed + 0.01
        assert "--steps" not in err  # no --steps typed, so nothing to warn about
    assert np.array_equal(np.load(tmp_path / "s.npz")["samples"], expected.numpy())
    assert titles == [f"probability_flow (dopri5), rtol=1e-05, atol=1e-05, NFE {nfe}"]


def test_adaptive_samplers_warn_that_steps_is_ignored(capsys, runs, tmp_path, monkeypatch):
    """--steps with an adaptive solver: one warning line on stderr, the tolerances the user set in
    the title, and the NFE of the sampler called directly with those tolerances (adaptive_sde's
    own AdaptiveStats agree). With a fixed-step method the steps count and there is no warning."""
    import scoresde.plot
    titles = []
    monkeypatch.setattr(scoresde.plot, "save_samples", lambda x, d, path, title=None: titles.append(title))
    workdir = runs("checkerboard")
    run = sd.load(workdir)
    code, out, err = run_cli(capsys, "sample", workdir, "--sampler", "adaptive_sde", "--steps", "7", "--option",
                             "rtol=0.05", "--option", "atol=0.05", "--num", "16", "--out", str(tmp_path / "a.png"),
                             "--device", "cpu", "--quiet")
    assert code == 0, err
    (shown,) = printed(r"NFE (\d+),", out)
    (x, stats), nfe = direct(run, sampling.adaptive_sde, 16, rtol=0.05, atol=0.05, return_stats=True)
    assert int(shown) == nfe == stats.nfe
    warning = [line for line in err.splitlines() if "--steps" in line]
    assert len(warning) == 1 and "ignored" in warning[0] and "adaptive_sde" in warning[0]
    assert titles[-1] == f"adaptive_sde, rtol=0.05, atol=0.05, NFE {nfe}" and "steps" not in titles[-1]

    code, out, err = run_cli(capsys, "sample", workdir, "--option", "method=rk4", "--steps", "5", "--num", "16",
                             "--out", str(tmp_path / "b.png"), "--device", "cpu", "--quiet")
    assert code == 0, err
    _, nfe = direct(run, sampling.probability_flow, 16, method="rk4", steps=5)
    assert printed(r"NFE (\d+),", out) == (str(nfe),) and nfe == 5 * 4 + 1  # 4 stages a step, then denoising
    assert "--steps" not in err and titles[-1] == "probability_flow (rk4), 5 steps"


def test_option_reaches_the_sampler(capsys, runs, tmp_path):
    """--option eta=... for ddim gives exactly ddim(..., eta=...) called directly: eta=0.0 as typed,
    and eta=1.0, which draws noise, so a dropped option would show."""
    workdir = runs("checkerboard")
    run = sd.load(workdir)
    for eta in ("0.0", "1.0"):
        dest = tmp_path / f"eta{eta}.npz"
        code, out, err = run_cli(capsys, "sample", workdir, "--sampler", "ddim", "--option", f"eta={eta}", "--steps",
                                 "4", "--num", "32", "--seed", "3", "--out", str(dest), "--device", "cpu", "--quiet")
        assert code == 0, err
        x, nfe = direct(run, sampling.ddim, 32, seed=3, steps=4, eta=float(eta))
        assert np.array_equal(np.load(dest)["samples"], x.numpy())
        assert printed(r"NFE (\d+),", out) == (str(nfe),)
    assert not np.array_equal(np.load(tmp_path / "eta0.0.npz")["samples"], np.load(tmp_path / "eta1.0.npz")["samples"])


@pytest.mark.parametrize("option, needle", [
    ("etaa=0.5", "did you mean eta"), ("eta", "KEY=VALUE"), ("steps=3", "--steps"), ("generator=1", "--seed"),
])
def test_bad_option_is_one_line_and_writes_nothing(capsys, runs, tmp_path, option, needle):
    dest = tmp_path / "x.npz"
    code, out, err = run_cli(capsys, "sample", runs("checkerboard"), "--sampler", "ddim", "--option", option,
                             "--out", str(dest), "--device", "cpu")
    assert_one_line_error(code, err, "--option", needle)
    assert not dest.exists() and out == ""


def test_image_samples_are_clipped_to_the_data_range_and_counted(capsys, runs, tmp_path):
    """An image run: the .npz holds the direct samples clipped to [-1, 1], and the printed count
    and fraction are those of the values outside it in the unclipped direct samples."""
    workdir = runs("digits")
    run = sd.load(workdir)
    assert run.data_range == (-1.0, 1.0)
    x, _ = direct(run, sampling.euler_maruyama, 6, steps=3)
    outside = int((x.abs() > 1).sum())
    assert 0 < outside < x.numel()  # the 2-step model overshoots, not everywhere: a count to get right
    for out in ("d.npz", "d.png"):
        code, stdout, err = run_cli(capsys, "sample", workdir, "--sampler", "euler_maruyama", "--steps", "3", "--num-samples",
                                    "6", "--out", str(tmp_path / out), "--device", "cpu", "--quiet")
        assert code == 0, err
        count, total, percent = printed(r"clipped (\d+) of (\d+) values \((\d+\.\d\d)%\) to the data range \[-1, 1\]",
                                        stdout)
        assert (int(count), int(total)) == (outside, x.numel()) and percent == f"{100 * outside / x.numel():.2f}"
    assert np.array_equal(np.load(tmp_path / "d.npz")["samples"], x.clamp(-1, 1).numpy())


def test_toy_samples_are_not_clipped(capsys, runs, tmp_path):
    """A toy's samples are points, not pixels: saved as drawn, even far outside the toy's range."""
    workdir = runs("checkerboard")
    run = sd.load(workdir)
    x, _ = direct(run, sampling.ddim, 32, steps=4)
    assert bool((x.abs() > 2).any())  # the tiny model's samples do leave [-2, 2]
    code, out, err = run_cli(capsys, "sample", workdir, "--sampler", "ddim", "--steps", "4", "--num", "32",
                             "--out", str(tmp_path / "t.npz"), "--device", "cpu", "--quiet")
    assert code == 0, err
    assert np.array_equal(np.load(tmp_path / "t.npz")["samples"], x.numpy()) and "clipped" not in out


def test_num_samples_is_the_spelling_and_num_its_alias():
    """--num is an alias in its own right (argparse would also take it as an abbreviation of
    --num-samples, but only while no other option starts with it)."""
    parser = build_parser()
    for cmd in ("sample", "likelihood"):
        assert parser.parse_args([cmd, "r", "--num-samples", "7"]).num == 7
        assert parser.parse_args([cmd, "r", "--num", "9"]).num == 9
        options = _subparser(cmd)[1]._option_string_actions
        assert options["--num"] is options["--num-samples"]


# ---- likelihood --------------------------------------------------------------------------------

def _toy_points(workdir, num, seed=0):
    run = sd.load(workdir)
    return run, load_data(run.config, "test", n=num, generator=torch.Generator().manual_seed(seed + 1)).data[:num]


def test_toy_likelihood_mean_se_and_the_exact_checkerboard_value(capsys, runs):
    """Toy NLL: mean ± std/sqrt(n) of the per-point NLL computed through the API, labelled as nats
    on the data scale; the checkerboard's exact value log 8 (density 1/8 on 8 unit squares, from
    the closed form, not the code); a progress bar on stderr unless --quiet."""
    workdir = runs("checkerboard")
    run, x = _toy_points(workdir, 12)
    nll = -sd.log_likelihood(run.score_fn, run.sde, x, estimator="exact",
                             generator=torch.Generator().manual_seed(0)).logp.double()
    code, out, err = run_cli(capsys, "likelihood", workdir, "--num-samples", "12", "--device", "cpu")
    assert code == 0, err
    assert_mean_se(printed(r"test: 12 points, NLL (-?\d+\.\d+) ± (\d+\.\d+) nats on the data scale", out), nll, 4)
    area = 8 * 1.0 * 1.0  # 8 black unit squares of the 4x4 board on [-2, 2]^2
    assert printed(r"^exact: (\d+\.\d+) nats \(the true density is 1/8", out) == (f"{math.log(area):.4f}",)
    assert "log_likelihood" in err  # the progress bar
    code, _, err = run_cli(capsys, "likelihood", workdir, "--num", "12", "--device", "cpu", "--quiet")
    assert code == 0 and "log_likelihood" not in err


def test_toy_likelihood_exact_value_only_where_the_density_is_known(capsys, runs):
    """gmm: the exact line is the mean ± se of the true mixture NLL at the same points (computed
    here with torch.distributions from the mixture's parameters); moons (no closed form): none."""
    from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal
    from scoresde.data import toy_mixture
    workdir = runs("gmm")
    _, x = _toy_points(workdir, 10)
    gm = toy_mixture("gmm")
    true = MixtureSameFamily(Categorical(probs=gm.weights.double()),
                             MultivariateNormal(gm.means.double(), covariance_matrix=gm.covs.double()))
    nll = -true.log_prob(x.double())
    code, out, err = run_cli(capsys, "likelihood", workdir, "--num", "10", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert_mean_se(printed(r"exact: (\d+\.\d+) ± (\d+\.\d+) nats \(the same points under the true gmm", out), nll, 4)

    code, out, err = run_cli(capsys, "likelihood", runs("moons"), "--num", "10", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "NLL" in out and "exact" not in out.replace("exact trace", "")


def test_image_likelihood_bits_per_dim_and_nats_on_the_8_bit_scale(capsys, runs):
    """Images: bits/dim ± se as bits_per_dim computes them, and the NLL on the 0–255 scale,
    bpd · D · ln 2 nats per image (D = 64 for 8x8 digits), ± its se, labelled as such."""
    workdir = runs("digits")
    run = sd.load(workdir)
    data = load_data(run.config, "test", n=4, generator=torch.Generator().manual_seed(1))
    bpd = sd.bits_per_dim(run.score_fn, run.sde, data.pixels[:4], data_range=data.data_range, estimator="hutchinson",
                          generator=SampleGenerators.range(0, 0, 4)).bpd.double()  # image i from seed i
    code, out, err = run_cli(capsys, "likelihood", workdir, "--num", "4", "--device", "cpu", "--quiet")
    assert code == 0, err
    b, bse, n, nse = printed(r"test: 4 images, bits/dim (\d+\.\d+) ± (\d+\.\d+); NLL on the 0–255 scale "
                             r"(\d+\.\d+) ± (\d+\.\d+) nats per image \(= bits/dim · D · ln 2, D = 64\)", out)
    assert_mean_se((b, bse), bpd, 4)
    assert_mean_se((n, nse), bpd * 64 * math.log(2), 2)


# ---- help --------------------------------------------------------------------------------------

def _subparser(name):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return parser, action.choices[name]


@pytest.mark.parametrize("command", ["sample", "likelihood"])
def test_help_explains_every_argument_and_shows_its_default(capsys, command):
    """Every argument of sample and likelihood has a help text, and every one with a default worth
    showing (not None, not an off flag, not an empty list) has it in its help, as argparse formats it."""
    _, sub = _subparser(command)
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.dest} has no help"
        d = action.default
        if d is None or d is False or d == []:
            continue
        assert f"(default: {d})" in text or "(default" in action.help, f"{command} {action.dest}: default {d!r} not shown"
    assert "(default: test)" in text or command == "sample"  # likelihood --split
    assert "--num-samples N, --num N" in text


def test_top_level_help_uses_the_defaults_formatter():
    parser, sub = _subparser("sample")
    from scoresde.cli import _HelpFormatter
    assert isinstance(parser._get_formatter(), _HelpFormatter)
    assert isinstance(sub._get_formatter(), _HelpFormatter)


# ---- examples and Ctrl-C -----------------------------------------------------------------------

def _start(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.Popen([sys.executable, *args], cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _read_until(stream, needle: bytes) -> bytes:
    """Read ``stream`` byte by byte until ``needle`` has appeared (or the stream ends)."""
    buf = b""
    while needle not in buf:
        c = stream.read(1)
        if not c:
            break
        buf += c
    return buf


def _finish(proc, before_err=b""):
    try:
        out, err = proc.communicate(timeout=HANG_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out.decode(), (before_err + err).decode()


def test_ctrl_c_twice_during_training_stops_the_example_cleanly(tmp_path):
    """train_toy: SIGINT twice once training is under way (its progress bar has appeared, so the
    trainer's handler is in place): the trainer writes a checkpoint and returns, and the example
    stops there (it does not go on to sample), with one "interrupted" line and status 130."""
    proc = _start([os.path.join(EXAMPLES, "train_toy.py"), "--quick", "--steps", "1000000", "--workdir",
                   str(tmp_path / "run")], tmp_path)
    assert proc.stdout.readline().startswith(b"training")
    err0 = _read_until(proc.stderr, b"train:")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc, err0)
    assert code == 130, (code, out, err)
    assert "Traceback" not in err and "sampling" not in out
    lines = [line for line in err.replace("\r", "\n").splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "checkpoint written" in lines[0], err
    assert os.listdir(tmp_path / "run" / "checkpoints")


def test_ctrl_c_while_an_example_computes(tmp_path):
    """ddpm_is_vpsde: SIGINT once its first line is out (it is then sampling): 130, "interrupted",
    no traceback."""
    proc = _start([os.path.join(EXAMPLES, "ddpm_is_vpsde.py"), "--quick", "--workdir", str(tmp_path / "w")], tmp_path)
    assert proc.stdout.readline().startswith(b"VPSDE")
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc)
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, (code, err)


def test_a_second_ctrl_c_during_cleanup_exits_at_once(tmp_path):
    """run_main: a second Ctrl-C while the interpreter is shutting down after the first (here a slow
    atexit cleanup, announced on stdout) exits at once with 130, no traceback, one "interrupted"."""
    script = tmp_path / "slow_cleanup.py"
    script.write_text(
        "import atexit, sys, time\n"
        f"sys.path.insert(0, {EXAMPLES!r})\n"
        "from _common import run_main\n"
        "def cleanup():\n"
        "    print('cleaning up', flush=True)\n"
        "    time.sleep(" + str(HANG_TIMEOUT) + ")\n"
        "def main(argv=None):\n"
        "    atexit.register(cleanup)\n"
        "    print('ready', flush=True)\n"
        "    while True:\n"
        "        time.sleep(0.01)\n"
        "run_main(main)\n")
    proc = _start([str(script)], tmp_path)
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline() == b"cleaning up\n"
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc)
    assert code == 130 and err.count("interrupted") == 1 and "Traceback" not in err, (code, err)


def test_every_example_runs_its_main_through_run_main():
    """Each examples/*.py ends in
    ``if __name__ == "__main__": run_main(main)``."""
    for name in sorted(os.listdir(EXAMPLES)):
        if not name.endswith(".py") or name == "_common.py":
            continue
        tree = ast.parse(open(os.path.join(EXAMPLES, name), encoding="utf-8").read())
        guard = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert guard and ast.unparse(guard[-1].body[0]) == "run_main(main)", name


def test_demo_stops_when_its_training_is_stopped(capsys, tmp_path, monkeypatch):
    """A Ctrl-C or SIGTERM during the demo's training (the trainer checkpoints and returns "stopped
    by ...") ends the demo with one line and status 130 instead of going on to compare samplers."""
    import scoresde.demo as demo
    from scoresde.cli import main

    def stopped_training(cfg, workdir, resume=False, progress=True):
        return {"step": 7, "status": "stopped by SIGTERM, checkpoint written"}

    monkeypatch.setattr(demo, "train", stopped_training)
    monkeypatch.setattr(demo, "compare", lambda *a, **k: pytest.fail("the demo went on after its training stopped"))
    code = main(["demo", "--quick", "--quiet", "--workdir", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 130 and err.strip().count("\n") == 0
    assert "interrupted: training stopped at step 7" in err and "run the demo again" in err
