"""Faults: non-finite scores, untrusted checkpoints, killed and resumed training, failing disks,
bad configs and arguments, a dying rank. Each case checks that the failure is one clear error and
that nothing is lost beyond the last checkpoint."""
import math

import pytest
import torch

import scoresde as sd
from scoresde import sampling as S
from scoresde._checks import NonFiniteError

MIX = sd.GaussianMixture([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]], [[[0.1, 0.0], [0.0, 0.2]], [[0.3, 0.1], [0.1, 0.2]]])


# ==== numerical faults ============================================================================

class FaultyScore:
    """The exact score, but NaN (or inf) for one sample once t drops below ``below``."""

    def __init__(self, sde, value=math.nan, below=0.5):
        self.sde, self.value, self.below, self.calls = sde, value, below, 0

    def __call__(self, x, t):
        self.calls += 1
        s = MIX.score(x, t, self.sde)
        bad = (t < self.below)[:, None] & (torch.arange(x.shape[0])[:, None] == 3)
        return torch.where(bad, torch.full_like(s, self.value), s)


FAULT_RUNS = [
    ("euler_maruyama", lambda f, s, x: S.euler_maruyama(f, s, x, steps=20, generator=torch.Generator().manual_seed(0))),
    ("predictor_corrector", lambda f, s, x: S.predictor_corrector(f, s, x, steps=10, generator=torch.Generator().manual_seed(0))),
    ("ancestral", lambda f, s, x: S.ancestral(f, s, x, steps=20, generator=torch.Generator().manual_seed(0))),
    ("ddim", lambda f, s, x: S.ddim(f, s, x, steps=20)),
    ("dpm_solver", lambda f, s, x: S.dpm_solver(f, s, x, steps=10, order=3, corrector=True)),
    ("heun", lambda f, s, x: S.heun(f, s, x, steps=10)),
    ("probability_flow", lambda f, s, x: S.probability_flow(f, s, x)),
    ("probability_flow", lambda f, s, x: S.probability_flow(f, s, x, method="rk4", steps=5)),
    ("reverse_sde", lambda f, s, x: S.reverse_sde(f, s, x, steps=20, generator=torch.Generator().manual_seed(0))),
    ("adaptive_sde", lambda f, s, x: S.adaptive_sde(f, s, x, generator=torch.Generator().manual_seed(0))),
    ("log_likelihood", lambda f, s, x: sd.log_likelihood(f, s, MIX.sample(8, torch.Generator().manual_seed(0)))),
    ("log_likelihood", lambda f, s, x: sd.log_likelihood(f, s, MIX.sample(8, torch.Generator().manual_seed(0)),
                                                         method="rk4", steps=5, estimator="exact")),
]


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("routine,run", FAULT_RUNS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(FAULT_RUNS)])
def test_non_finite_score_is_one_clear_error(routine, run, value):
    """A score that turns NaN/inf midway makes the routine raise NonFiniteError naming itself (a
    FloatingPointError), after a bounded number of evaluations, instead of returning NaN."""
    sde = sd.VPSDE()
    score = FaultyScore(sde, value)
    x_T = sde.prior_sampling((8, 2), generator=torch.Generator().manual_seed(1))
    with pytest.raises(NonFiniteError) as info:
        run(score, sde, x_T)
    msg = str(info.value)
    assert msg.startswith(routine) and "non-finite" in msg and "\n" not in msg, msg
    assert score.calls < 2000, f"{routine} took {score.calls} score calls to give up"


def test_finite_runs_are_untouched():
    sde = sd.VPSDE()
    x_T = sde.prior_sampling((8, 2), generator=torch.Generator().manual_seed(1))
    for _, run in FAULT_RUNS:
        run(FaultyScore(sde, below=-1.0), sde, x_T)  # never faulty: no error


# ==== untrusted checkpoints =======================================================================

import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402

from safetensors.torch import load_file, save_file  # noqa: E402

from scoresde import io  # noqa: E402
from scoresde.cli import main  # noqa: E402
from scoresde.config import from_dict  # noqa: E402
from scoresde.train import train  # noqa: E402

from conftest import HANG_TIMEOUT, tiny_run, torchrun  # noqa: E402

TINY = tiny_run(steps=10)


class Payload:
    """Unpickling this creates the directory ``marker``: proof that loading ran foreign code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _pickle_bytes(marker):
    return pickle.dumps(Payload(marker))


def _torch_save_bytes(marker, path):
    torch.save({"weight": Payload(marker)}, path)  # the zip format torch.load would unpickle


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _reshape_ema(path):
    tensors = load_file(path)
    save_file({k: torch.zeros(v.numel() + 1) for k, v in tensors.items()}, path)


def _drop_ema_key(path):
    tensors = load_file(path)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, path)


def _huge_header(path):
    # a safetensors header announcing 2^62 bytes of header: must be refused, not allocated
    open(path, "wb").write((2 ** 62).to_bytes(8, "little") + b"{}")


def _bad_config(meta_path):
    meta = json.load(open(meta_path))
    meta["config"]["model"]["hidden"] = "many"
    json.dump(meta, open(meta_path, "w"))


DAMAGES = {
    "pickle as ema.safetensors": lambda ck, m: open(os.path.join(ck, "ema.safetensors"), "wb").write(_pickle_bytes(m)),
    "pickle as model.safetensors": lambda ck, m: open(os.path.join(ck, "model.safetensors"), "wb").write(_pickle_bytes(m)),
    "torch.save zip as ema.safetensors": lambda ck, m: _torch_save_bytes(m, os.path.join(ck, "ema.safetensors")),
    "pickle as meta.json": lambda ck, m: open(os.path.join(ck, "meta.json"), "wb").write(_pickle_bytes(m)),
    "truncated ema": lambda ck, m: _truncate(os.path.join(ck, "ema.safetensors")),
    "truncated meta": lambda ck, m: _truncate(os.path.join(ck, "meta.json")),
    "random bytes": lambda ck, m: open(os.path.join(ck, "ema.safetensors"), "wb").write(os.urandom(4096)),
    "empty file": lambda ck, m: open(os.path.join(ck, "state.safetensors"), "wb").close(),
    "huge header": lambda ck, m: _huge_header(os.path.join(ck, "ema.safetensors")),
    "wrong shapes": lambda ck, m: _reshape_ema(os.path.join(ck, "ema.safetensors")),
    "missing tensor": lambda ck, m: _drop_ema_key(os.path.join(ck, "ema.safetensors")),
    "bad config in meta": lambda ck, m: _bad_config(os.path.join(ck, "meta.json")),
}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("clean") / "run"
    train(from_dict(json.loads(json.dumps(TINY))), str(run), progress=False)
    return run


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_untrusted_checkpoint_is_refused_and_never_runs_code(tmp_path, clean_run, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    ckpt = run / "checkpoints" / "ckpt_00000010"
    marker = str(tmp_path / "PAYLOAD_RAN")
    DAMAGES[damage](str(ckpt), marker)

    with pytest.raises(io.CheckpointError) as info:
        sd.load(str(run))
    assert "\n" not in str(info.value) and "ckpt_00000010" in str(info.value)
    with pytest.raises(io.CheckpointError):
        sd.load(str(ckpt))
    for argv in (["sample", str(run), "--num", "4", "--out", str(tmp_path / "s.png"), "--quiet"],
                 ["likelihood", str(run), "--num", "4"],
                 ["train", str(run / "config.yaml"), "--workdir", str(run), "--resume", "--quiet"]):
        line = _one_line_error(capsys, argv)
        assert "ckpt_00000010" in line, line
    assert not os.path.exists(marker), "loading a checkpoint ran code"
    assert not (tmp_path / "s.png").exists()
    assert sorted(os.listdir(run / "checkpoints")) == ["ckpt_00000010"]  # nothing new written


def test_resume_falls_back_to_an_older_readable_checkpoint(tmp_path, capsys):
    """With a damaged newest checkpoint and a good older one, --resume warns and continues from the
    older one (losing only the steps since it)."""
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(steps=20)
    run = tmp_path / "run"
    train(from_dict(raw), str(run), progress=False)
    DAMAGES["pickle as ema.safetensors"](str(run / "checkpoints" / "ckpt_00000020"), str(tmp_path / "PAYLOAD_RAN"))
    assert main(["train", str(run / "config.yaml"), "--workdir", str(run), "--resume", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "skipped a damaged checkpoint" in err and "ckpt_00000020" in err
    assert io.load_checkpoint(str(run / "checkpoints" / "ckpt_00000020"))[0]["step"] == 20
    assert not os.path.exists(tmp_path / "PAYLOAD_RAN")


# ==== killed and resumed training =================================================================

import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

KILL_CONFIG = json.loads(json.dumps(TINY))
KILL_CONFIG["train"].update(steps=1000, checkpoint_every=10, keep_checkpoints=3, log_every=10)

# The worker trains with resume=True. KILL_DURING_SAVE=n makes it SIGKILL itself in the middle of
# writing its n-th checkpoint (after the first tensor file), the worst moment for a crash.
WORKER = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from scoresde.config import from_dict
from scoresde import io
from scoresde.train import train
cfg, workdir = from_dict(json.loads(sys.argv[1])), sys.argv[2]
n = int(os.environ.get("KILL_DURING_SAVE", "0"))
if n:
    real, calls = io.save_file, []
    def dying_save_file(tensors, path):
        real(tensors, path)
        calls.append(path)
        if len(calls) == 4 * (n - 1) + 2:
            os.kill(os.getpid(), signal.SIGKILL)
    io.save_file = dying_save_file
print(json.dumps(train(cfg, workdir, resume=True, progress=False)), flush=True)
"""


def _launch(workdir, env=None):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(KILL_CONFIG), str(workdir)], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_all_checkpoints_readable(workdir):
    for _, path in io.list_checkpoints(str(workdir / "checkpoints")):
        io.load_checkpoint(path)  # raises on any torn or partial file


def _progress(workdir):
    """(newest step in metrics.jsonl, newest published checkpoint), 0 for none: how far a run has
    got, read from what it writes (a line being appended is skipped)."""
    logged = 0
    try:
        with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
            for line in f:
                try:
                    logged = max(logged, int(json.loads(line)["step"]))
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    saved = max([s for s, _ in io.list_checkpoints(str(workdir / "checkpoints"))], default=0)
    return logged, saved


def _wait_for_progress(proc, workdir, reached, what):
    """Poll the worker's progress until ``reached(logged, saved)``. Fails (rather than waiting on)
    if the worker exits first; HANG_TIMEOUT only stops a stuck worker from hanging the suite."""
    deadline = time.monotonic() + HANG_TIMEOUT
    while not reached(*_progress(workdir)):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the worker exited with status {proc.returncode} before {what}: {out[-500:]} {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"the worker made no progress to {what} in {HANG_TIMEOUT} s (progress: {_progress(workdir)})")
        time.sleep(0.005)


def _sigkill(proc):
    """SIGKILL the worker and check that the kill is what ended it (not a normal exit just before)."""
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=HANG_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, f"it ended (status {proc.returncode}) before the kill: {err[-2000:]}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run in a worker process."""
    run = tmp_path_factory.mktemp("reference") / "run"
    out, err = _launch(run).communicate(timeout=HANG_TIMEOUT)
    assert json.loads(out.strip().splitlines()[-1])["status"] == "complete", err
    return run


def _assert_same_final(run, reference):
    final = f"ckpt_{KILL_CONFIG['train']['steps']:08d}"
    _, a = io.load_checkpoint(str(run / "checkpoints" / final))
    _, b = io.load_checkpoint(str(reference / "checkpoints" / final))
    for group in b:
        for k in b[group]:
            assert torch.equal(a[group][k], b[group][k]), f"{group}.{k} differs from the uninterrupted run"
    assert not [n for n in os.listdir(run / "checkpoints") if n.startswith(".")], "temporary leftovers"


MID_TRAINING_KILLS = 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, reference_run, seed):
    """Killed with SIGKILL at random moments (the first kill before any checkpoint exists) and
    resumed again and again, the run ends with the uninterrupted run's weights, bit for bit; after
    every kill each checkpoint on disk reads cleanly.

    The kills follow the run's own progress, not the clock, so all 1 + MID_TRAINING_KILLS of them
    land however slow or busy the machine is: the first as soon as the worker process exists (it is
    still starting up), each later one once the resumed worker has logged (just before its
    checkpoint is written), or published, a checkpoint at a random step 10 to 200 steps past
    anything an earlier attempt wrote. Every kill must be what ended the worker."""
    rng = random.Random(seed)
    run = tmp_path / "run"
    _sigkill(_launch(run))
    kills = 1
    assert not io.list_checkpoints(str(run / "checkpoints")), "the first kill came after a checkpoint"
    _assert_all_checkpoints_readable(run)
    for _ in range(MID_TRAINING_KILLS):
        target = max(_progress(run)) + 10 * rng.randint(1, 20)  # beyond any record a killed attempt left
        which = rng.randrange(2)  # 0: logged (the save of that step is about to start), 1: published
        proc = _launch(run)
        _wait_for_progress(proc, run, lambda *progress: progress[which] >= target,
                           f"{('logging', 'checkpointing')[which]} step {target}")
        _sigkill(proc)
        kills += 1
        _assert_all_checkpoints_readable(run)
    proc = _launch(run)
    out, err = proc.communicate(timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "complete"
    assert kills == 1 + MID_TRAINING_KILLS
    _assert_same_final(run, reference_run)


def test_sigkill_during_a_checkpoint_write(tmp_path, reference_run):
    """Dying halfway through writing checkpoints 2 and then 5 leaves the earlier ones intact; the
    half-written one never appears under its final name; resuming finishes bit-identically."""
    run = tmp_path / "run"
    every = KILL_CONFIG["train"]["checkpoint_every"]
    for n in (2, 5):
        start = max([s for s, _ in io.list_checkpoints(str(run / "checkpoints"))], default=0)
        proc = _launch(run, {"KILL_DURING_SAVE": str(n)})
        proc.communicate(timeout=HANG_TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
        _assert_all_checkpoints_readable(run)
        steps = [s for s, _ in io.list_checkpoints(str(run / "checkpoints"))]
        killed = start + n * every
        assert max(steps) == killed - every, f"checkpoint {killed} was being written when killed; on disk: {steps}"
    proc = _launch(run)
    out, err = proc.communicate(timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, err
    _assert_same_final(run, reference_run)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_sigterm_write_a_checkpoint_and_exit_cleanly(tmp_path, reference_run, sig):
    """Signalled once its first checkpoint is published (so inside the training loop, however long
    starting took), the worker finishes the step, checkpoints it and exits with status 0."""
    run = tmp_path / "run"
    proc = _launch(run)
    _wait_for_progress(proc, run, lambda logged, saved: saved > 0, "its first checkpoint")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"].startswith(f"stopped by {sig.name}"), result
    newest = io.list_checkpoints(str(run / "checkpoints"))[0][0]
    assert newest == result["step"], "the stop did not write a checkpoint at the step it stopped"
    proc = _launch(run)
    out, err = proc.communicate(timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, err
    _assert_same_final(run, reference_run)


# ==== a dying rank ================================================================================

DEATH_STEP = 5  # rank 1 dies in the optimizer step of step 6, after that step's all-reduce

DYING_RANK_WORKER = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from scoresde.config import from_dict
from scoresde.train import Trainer
cfg = from_dict(json.loads(sys.argv[1]))
t = Trainer(cfg, sys.argv[2], progress=False)
if t.dist.rank == 1:
    real = t.opt.step
    def step_then_die(*a, **k):
        if t.step == DEATH_STEP:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    t.opt.step = step_then_die
t.fit()
""".replace("DEATH_STEP", str(DEATH_STEP))


# What makes a stop "prompt" here is that it comes from noticing the death, not from a timeout: the
# collective timeout is set far beyond HANG_TIMEOUT (which only keeps a hang from stalling the suite),
# so a rank 0 waiting on its dead peer could never pass, however fast or slow the machine.
NO_COLLECTIVE_TIMEOUT = {"SCORESDE_DIST_TIMEOUT": str(10 * HANG_TIMEOUT)}


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_a_dying_rank_stops_the_others_promptly(tmp_path):
    """In a 2-process CPU run under torchrun, rank 1 dies (SIGKILL) at step 5 of 200: the launcher
    ends the run with a non-zero exit and a message naming the failed rank, instead of rank 0
    hanging in its next all-reduce; rank 0 got no further than the step it shared with the dead rank
    (step 6); the checkpoint from before the death stays readable."""
    out = torchrun(tmp_path, DYING_RANK_WORKER, tiny_run(steps=200, checkpoint_every=4, log_every=4),
                   timeout=HANG_TIMEOUT, env=NO_COLLECTIVE_TIMEOUT)
    assert out.returncode != 0
    assert "rank" in out.stderr.lower() and ("SIGKILL" in out.stderr or "Signal 9" in out.stderr), out.stderr[-2000:]
    _assert_all_checkpoints_readable(tmp_path / "run")
    # rank 0 can complete step 6 (rank 1 had joined its all-reduce) but no later one; if the
    # launcher's SIGTERM reaches it within step 6, it checkpoints that step on the way out (as any
    # SIGTERM makes it do), which is why 6 may appear
    steps = [s for s, _ in io.list_checkpoints(str(tmp_path / "run" / "checkpoints"))]
    assert steps in ([4], [DEATH_STEP + 1, 4]), steps
    assert _logged_steps(tmp_path / "run") in ([4], [4, DEATH_STEP + 1]), _logged_steps(tmp_path / "run")


def test_a_dying_rank_without_torchrun_is_one_clear_error(tmp_path):
    """Two processes joined by hand (no torchrun agent to clean up): rank 1 dies at step 5 of 200,
    and rank 0, run through the CLI, stops with one error line instead of waiting for its peer, by
    noticing the death (no collective timeout could fire), with nothing logged or checkpointed
    after step 4."""
    import socket
    import yaml
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(steps=200, checkpoint_every=4, log_every=4)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    script = tmp_path / "worker.py"
    script.write_text(DYING_RANK_WORKER)
    base = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                **NO_COLLECTIVE_TIMEOUT)
    workdir = str(tmp_path / "run")
    rank0 = subprocess.Popen([sys.executable, "-m", "scoresde", "train", str(config), "--workdir", workdir, "--quiet"],
                             env=dict(base, RANK="0", LOCAL_RANK="0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    rank1 = subprocess.Popen([sys.executable, str(script), json.dumps(raw), workdir],
                             env=dict(base, RANK="1", LOCAL_RANK="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = rank0.communicate(timeout=HANG_TIMEOUT)
        rank1.communicate(timeout=HANG_TIMEOUT)
    finally:
        for proc in (rank0, rank1):  # only after a hang: neither may outlive the test
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert rank1.returncode == -signal.SIGKILL
    assert rank0.returncode == 2, (rank0.returncode, err[-2000:])
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[W")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    _assert_all_checkpoints_readable(tmp_path / "run")
    assert [s for s, _ in io.list_checkpoints(str(tmp_path / "run" / "checkpoints"))] == [4]
    assert _logged_steps(tmp_path / "run") == [4]


# ==== failing disks ===============================================================================

import errno  # noqa: E402


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    PermissionError(errno.EROFS, "Read-only file system"),
], ids=["disk-full", "read-only"])
@pytest.mark.parametrize("where", ["tensor file", "meta.json", "temporary directory"])
def test_failing_checkpoint_write_keeps_the_previous_one(tmp_path, capsys, monkeypatch, failure, where):
    """The disk fills up (or turns read-only) while checkpoint 20 is written: the CLI stops with one
    line naming the problem, checkpoint 10 is intact and readable, no half-written checkpoint or
    temporary file is left, and --resume later continues from step 10."""
    import tempfile
    import yaml
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(steps=30)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    state = {"saves": 0}
    real_save, real_mkdtemp, real_open = io.save_file, tempfile.mkdtemp, open

    def save_file(tensors, path):
        if state["saves"] >= 1 and where == "tensor file" and path.endswith("ema.safetensors"):
            raise failure
        real_save(tensors, path)

    def mkdtemp(*a, **k):
        if state["saves"] >= 1 and where == "temporary directory":
            raise failure
        return real_mkdtemp(*a, **k)

    def opener(path, *a, **k):
        if state["saves"] >= 1 and where == "meta.json" and str(path).endswith("meta.json") and "w" in (a[0] if a else k.get("mode", "r")):
            raise failure
        return real_open(path, *a, **k)

    real_save_checkpoint = io.save_checkpoint

    def counting_save_checkpoint(*a, **k):
        try:
            return real_save_checkpoint(*a, **k)
        finally:
            state["saves"] += 1

    monkeypatch.setattr(io, "save_file", save_file)
    monkeypatch.setattr(io.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr("builtins.open", opener)
    monkeypatch.setattr(io, "save_checkpoint", counting_save_checkpoint)
    line = _one_line_error(capsys, ["train", str(config), "--workdir", str(run), "--quiet"])
    assert failure.strerror in line, line
    monkeypatch.undo()
    assert sorted(os.listdir(run / "checkpoints")) == ["ckpt_00000010"]
    io.load_checkpoint(str(run / "checkpoints" / "ckpt_00000010"))
    assert main(["train", str(config), "--workdir", str(run), "--resume", "--quiet"]) == 0
    assert [s for s, _ in io.list_checkpoints(str(run / "checkpoints"))][0] == 30


def test_failing_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.atomic_write_text(str(target), "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        io.atomic_write_text(str(target), "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


def test_a_loss_turning_nan_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """Through the CLI: the loss turns NaN after step 25 (as an exploding run's would): status 2, one
    line saying so, checkpoints 10 and 20 kept and readable, nothing written after."""
    import yaml
    from scoresde import train as T
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(steps=40)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    real, calls = T.LOSSES["dsm"], []

    def exploding(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) > 25 else loss
    monkeypatch.setitem(T.LOSSES, "dsm", exploding)
    line = _one_line_error(capsys, ["train", str(config), "--workdir", str(tmp_path / "run"), "--quiet"])
    assert "loss became nan" in line and "last good checkpoint" in line, line
    assert [s for s, _ in io.list_checkpoints(str(tmp_path / "run" / "checkpoints"))] == [20, 10]
    _assert_all_checkpoints_readable(tmp_path / "run")


class _Killed(BaseException):
    """Stands for SIGKILL: once raised, every later filesystem call raises it too."""


def _kill_at_operation(monkeypatch, k):
    """Make the k-th rename/unlink/rmdir (counting from 0) and everything after it die."""
    state = {"n": 0, "dead": False}
    for name in ("rename", "replace", "unlink", "rmdir"):
        real = getattr(os, name)

        def dying(*a, _real=real, **kw):
            if state["dead"] or state["n"] == k:
                state["dead"] = True
                raise _Killed
            state["n"] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(os, name, dying)
    return state


@pytest.mark.parametrize("case", ["new step, pruning", "same step again"])
def test_a_kill_at_any_filesystem_operation_of_a_save_tears_no_checkpoint(tmp_path, monkeypatch, case):
    """Every rename/unlink/rmdir of a checkpoint save (publishing, replacing a same-step checkpoint,
    pruning old ones) is made the moment of death in turn. After each: every checkpoint listed reads
    cleanly; remove_temporaries then leaves only published checkpoints, and a step that existed
    before a same-step save is never lost."""
    group = {"model": {"w": torch.arange(6.0)}, "state": {"s": torch.zeros(1)}}
    deaths = 0
    for k in range(100):
        ckpts = tmp_path / f"k{k}"
        for step in (10, 20):
            io.save_checkpoint(str(ckpts), step, group, {}, keep=2)
        new_step = 30 if case == "new step, pruning" else 20
        state = _kill_at_operation(monkeypatch, k)
        try:
            io.save_checkpoint(str(ckpts), new_step, group, {}, keep=2)
        except _Killed:
            pass
        monkeypatch.undo()
        if not state["dead"]:
            break
        deaths += 1
        for _, path in io.list_checkpoints(str(ckpts)):
            io.load_checkpoint(path)
        io.remove_temporaries(str(ckpts))
        names = sorted(os.listdir(ckpts))
        assert all(io.CKPT_PATTERN.match(n) for n in names), (k, names)
        steps = [s for s, _ in io.list_checkpoints(str(ckpts))]
        assert 20 in steps, (k, steps)
        for _, path in io.list_checkpoints(str(ckpts)):
            io.load_checkpoint(path)
    assert 3 <= deaths < 100, deaths
