"""Sampling many: per-sample seeds, sharded resumable folders, several processes under torchrun."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import scoresde
import scoresde as sd
from scoresde import sampling
from scoresde.cli import main
from scoresde.config import from_dict
from scoresde.data import unscale
from scoresde.generate import META_NAME, batch_coupling, generate, load_samples, shard_name
from scoresde.sampling.generators import SampleGenerators
from scoresde.train import train

from conftest import HANG_TIMEOUT, tiny_run
from conftest import tiny_digits_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 2-step MLP run on the checkerboard (2-D float samples)."""
    workdir = str(tmp_path_factory.mktemp("toy") / "run")
    train(from_dict(tiny_run(steps=2, checkpoint_every=2, log_every=1, warmup=1)), workdir, progress=False)
    return workdir


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A 2-step U-Net run on 8x8 digits (1 x 8 x 8 images on [-1, 1])."""
    return tiny_digits_run(tmp_path_factory)


def quiet(run, n, out, **kw):
    return generate(run, n, str(out), progress=False, log=None, **kw)


def rows_alone_equal_rows_together(run, sizes, n):
    """Whether the network gives row i the same bits in batches of each of ``sizes`` as in one batch
    of ``n`` (on the CPU a matrix product of 1-3 rows takes another kernel than one of many, so a
    batch of other size changes the last bits of a sample; the noise itself never changes)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n,) + tuple(run.data_shape), generator=g)
    t = torch.rand(n, generator=g)
    with torch.no_grad():
        whole = run.score_fn(x, t)
        return all(torch.equal(torch.cat([run.score_fn(x[i:i + b], t[i:i + b]) for i in range(0, n, b)]), whole)
                   for b in sizes)


# ---- per-sample generators ---------------------------------------------------------------------

UNCOUPLED = [
    ("euler_maruyama", dict(steps=20)), ("ancestral", dict(steps=10)), ("ddim", dict(steps=10, eta=1.0)),
    ("heun", dict(steps=5, churn=0.5)), ("adaptive_sde", {}), ("dpm_solver", dict(steps=5)),
    ("reverse_sde", dict(steps=10)), ("reverse_sde", dict(steps=5, method="srk")),
    ("predictor_corrector", dict(steps=10, corrector="annealed_langevin")),
    ("probability_flow", dict(method="rk4", steps=5)),
]


@pytest.mark.parametrize("name,options", UNCOUPLED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(UNCOUPLED)])
def test_each_sample_draws_only_from_its_own_seed(name, options):
    """With a score that treats rows independently (elementwise), sample i is bit for bit the same
    alone, in a batch of 2 or in a batch of 6: its x_T and every noise draw come from seed + i."""
    sde, score = sd.VPSDE(), (lambda x, t: -0.9 * x)

    def draw(start, stop):
        return sampling.sample(name, score, sde, (stop - start, 3), generator=SampleGenerators.range(7, start, stop),
                               **options)

    six = draw(0, 6)
    assert torch.equal(six, torch.cat([draw(i, i + 1) for i in range(6)]))
    assert torch.equal(six, torch.cat([draw(i, i + 2) for i in range(0, 6, 2)]))
    if name not in ("dpm_solver", "probability_flow"):  # the stochastic ones: another seed, another sample
        assert not torch.equal(draw(1, 2), draw(0, 1))


def test_per_sample_generators_are_torch_generators_row_by_row():
    gens = SampleGenerators.range(5, 2, 5)
    x = gens.randn((3, 4))
    for r, seed in enumerate((7, 8, 9)):
        assert torch.equal(x[r], torch.randn(4, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(sd.VPSDE().prior_sampling((3, 4), generator=SampleGenerators.range(5, 2, 5)), x)
    with pytest.raises(ValueError, match="per-sample generators"):
        SampleGenerators.range(0, 0, 3).randn((4, 2))
    with pytest.raises(ValueError, match="per-sample generators"):
        sampling.sample("euler_maruyama", lambda x, t: -x, sd.VPSDE(), (4, 2), steps=2,
                        generator=SampleGenerators.range(0, 0, 3))


def test_batch_coupled_samplers_are_named():
    assert batch_coupling("predictor_corrector") and batch_coupling("probability_flow")
    assert batch_coupling("predictor_corrector", {"corrector": "annealed_langevin"}) is None
    assert batch_coupling("probability_flow", {"method": "rk4"}) is None
    assert batch_coupling("euler_maruyama") is None


@pytest.mark.parametrize("sampler", ["euler_maruyama", "ddim"])
def test_sample_i_is_sample_0_of_a_one_sample_run_with_seed_plus_i(tmp_path, toy, sampler):
    run = scoresde.load(toy)
    quiet(run, 6, tmp_path / "six", sampler=sampler, steps=8, seed=11, batch_size=1)
    six = load_samples(str(tmp_path / "six"))
    ones = np.concatenate([(quiet(run, 1, tmp_path / f"one{i}", sampler=sampler, steps=8, seed=11 + i),
                            load_samples(str(tmp_path / f"one{i}")))[1] for i in range(6)])
    assert np.array_equal(six, ones)
    # in one batch of 6: the same noise; the same bits wherever the network's kernels are row-independent
    quiet(run, 6, tmp_path / "batch", sampler=sampler, steps=8, seed=11, batch_size=6)
    batch = load_samples(str(tmp_path / "batch"))
    if rows_alone_equal_rows_together(run, [1], 6):
        assert np.array_equal(batch, six)
    np.testing.assert_allclose(batch, six, rtol=0, atol=1e-4)
    assert len(np.unique(six, axis=0)) == 6


# ---- processes and batch sizes -----------------------------------------------------------------

def test_torchrun_two_processes_write_the_samples_of_one(tmp_path, toy):
    """The README's command under torchrun (2 CPU processes, gloo) writes the same bytes as one
    process, and as one process with another batch size."""
    args = ["sample", toy, "--num-samples", "24", "--out", str(tmp_path / "two"), "--batch-size", "8",
            "--shard-size", "8", "--sampler", "euler_maruyama", "--steps", "10", "--seed", "3", "--quiet"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scoresde", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=HANG_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "24 samples in 3 shards" in out.stdout and "24 generated by 2 processes" in out.stdout, out.stdout
    assert out.stdout.count("generated") == 1  # one line, from rank 0

    run = scoresde.load(toy)
    common = dict(sampler="euler_maruyama", steps=10, seed=3, shard_size=8)
    quiet(run, 24, tmp_path / "one", batch_size=8, **common)
    quiet(run, 24, tmp_path / "b4", batch_size=4, **common)
    two, one, b4 = (load_samples(str(tmp_path / d)) for d in ("two", "one", "b4"))
    assert two.dtype == np.float32 and two.shape == (24, 2)
    assert two.tobytes() == one.tobytes()
    for k in range(3):
        with np.load(tmp_path / "two" / shard_name(k)) as a, np.load(tmp_path / "one" / shard_name(k)) as b:
            assert a["samples"].tobytes() == b["samples"].tobytes() and np.array_equal(a["index"], b["index"])
    if rows_alone_equal_rows_together(run, [4], 8):  # true with MKL on x86 (>= 4 rows per product)
        assert b4.tobytes() == one.tobytes()
    np.testing.assert_allclose(b4, one, rtol=0, atol=1e-4)


def test_ranks_split_the_shards_round_robin(tmp_path, toy):
    """Shard k goes to rank k mod world; each rank alone writes exactly its shards."""
    run = scoresde.load(toy)
    written = {}
    for rank in (1, 2, 0):  # rank 0 last: it waits for the others' shards
        done = []
        quiet(run, 20, tmp_path / "o", sampler="ddim", steps=4, shard_size=4, rank=rank, world_size=3,
              on_shard=done.append)
        written[rank] = done
    assert written == {0: [0, 3], 1: [1, 4], 2: [2]}
    quiet(run, 20, tmp_path / "ref", sampler="ddim", steps=4, shard_size=4)
    assert load_samples(str(tmp_path / "o")).tobytes() == load_samples(str(tmp_path / "ref")).tobytes()


# ---- resuming ----------------------------------------------------------------------------------

class Stop(Exception):
    pass


def test_an_interrupted_run_resumes_without_redoing_complete_shards(tmp_path, toy):
    run = scoresde.load(toy)
    out = tmp_path / "o"
    kw = dict(sampler="euler_maruyama", steps=6, seed=5, shard_size=4, batch_size=3)

    def stop_after_two(k, done=[]):
        done.append(k)
        if len(done) == 2:
            raise Stop
    with pytest.raises(Stop):
        quiet(run, 18, out, on_shard=stop_after_two, **kw)
    first = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("shard_*.npz")}
    assert sorted(first) == [shard_name(0), shard_name(1)]
    # what a kill during a write leaves: a hidden temporary file, never a file under a shard's name
    (out / f".{shard_name(2)}.abc123.tmp").write_bytes(b"half a shard")
    redone = []
    result = quiet(run, 18, out, on_shard=redone.append, **dict(kw, batch_size=4))  # the batch size may change
    assert redone == [2, 3, 4] and result.skipped == 2 and result.generated == 3
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("shard_*.npz")
            if p.name in first} == first
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    # each shard as an uninterrupted run computes it (with the batch size it was made with)
    quiet(run, 18, tmp_path / "ref3", **kw)
    quiet(run, 18, tmp_path / "ref4", **dict(kw, batch_size=4))
    got, ref3, ref4 = (load_samples(str(d)) for d in (out, tmp_path / "ref3", tmp_path / "ref4"))
    assert got[:8].tobytes() == ref3[:8].tobytes() and got[8:].tobytes() == ref4[8:].tobytes()
    again = []
    assert quiet(run, 18, out, on_shard=again.append, **kw).generated == 0 and again == []


def test_a_killed_process_leaves_only_complete_shards_and_resumes(tmp_path, toy):
    """SIGKILL once two shard files exist (waiting on the files, not the clock): every visible shard
    is complete; the rerun skips exactly those and finishes the rest."""
    out = tmp_path / "o"
    args = ["-m", "scoresde", "sample", toy, "--num-samples", "120", "--out", str(out), "--shard-size", "4",
            "--batch-size", "4", "--sampler", "euler_maruyama", "--steps", "30", "--quiet"]
    proc = subprocess.Popen([sys.executable, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + HANG_TIMEOUT
        while len(list(out.glob("shard_*.npz"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate()
    present = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("shard_*.npz")}
    assert 2 <= len(present) < 30, "the run finished before it was killed: make it longer"
    for name in present:
        k = int(name[6:12])
        with np.load(out / name) as z:
            assert z["samples"].shape == (4, 2) and np.array_equal(z["index"], np.arange(4 * k, 4 * k + 4))
    done = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(present)} complete shards skipped" in done.stdout, done.stdout
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("shard_*.npz")
            if p.name in present} == present
    assert load_samples(str(out)).shape == (120, 2) and not list(out.glob(".*.tmp"))


# ---- settings, the command line, images --------------------------------------------------------

def one_line_error(code, err, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_a_restart_with_other_settings_is_refused_in_one_line(tmp_path, toy, capsys):
    out = str(tmp_path / "o")
    base = ["sample", toy, "--num-samples", "8", "--out", out, "--sampler", "ddim", "--steps", "4", "--quiet",
            "--shard-size", "4"]
    assert main(base) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").iterdir()}
    for extra, needle in [(["--seed", "1"], "seed 0 (now 1)"), (["--option", "eta=0.5"], "options"),
                          (["--num-samples", "12"], "num_samples 8 (now 12)"), (["--shard-size", "8"], "shard_size")]:
        code = main(base + extra)
        one_line_error(code, capsys.readouterr().err, "other settings", needle)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").iterdir()} == before
    assert main(base + ["--batch-size", "2"]) == 0  # the batch size is free: it does not change the noise
    assert "nothing to do" in capsys.readouterr().out
    meta = json.loads((tmp_path / "o" / META_NAME).read_text())
    assert meta["seed"] == 0 and meta["num_samples"] == 8 and meta["sampler"] == "ddim" and meta["batch_size"] is None
    # a sampler whose batches interact keeps its batch size
    pc = ["sample", toy, "--num-samples", "4", "--out", str(tmp_path / "pc"), "--sampler", "predictor_corrector",
          "--steps", "3", "--quiet", "--batch-size", "4"]
    assert main(pc) == 0
    assert "note: predictor_corrector" in capsys.readouterr().out
    one_line_error(main(pc[:-1] + ["2"]), capsys.readouterr().err, "batch_size 4 (now 2)")


def test_file_outputs_keep_their_behaviour_and_bad_outputs_are_one_line(tmp_path, toy, capsys):
    dest = tmp_path / "s.npz"
    assert main(["sample", toy, "--sampler", "euler_maruyama", "--steps", "4", "--num", "5", "--out", str(dest),
                 "--quiet", "--seed", "2"]) == 0
    run = scoresde.load(toy)
    want = sampling.sample("euler_maruyama", run.score_fn, run.sde, (5, 2), steps=4, eps=run.config.sample.eps,
                           generator=torch.Generator().manual_seed(2))
    assert np.array_equal(np.load(dest)["samples"], want.numpy())  # one torch.Generator, one batch: as before
    for argv, needle in [(["--out", str(dest), "--batch-size", "2"], "--batch-size"),
                         (["--out", str(tmp_path / "p.png"), "--png"], "--png"),
                         (["--out", str(tmp_path / "s.txt")], "--out"),
                         (["--out", str(tmp_path / "d"), "--png"], "--png")]:
        code = main(["sample", toy, "--sampler", "ddim", "--steps", "2", "--num", "2", "--quiet", *argv])
        one_line_error(code, capsys.readouterr().err, needle)
    assert not (tmp_path / "d").exists() and not (tmp_path / "p.png").exists()


def test_image_shards_are_uint8_hwc_with_pngs(tmp_path, digits, capsys):
    out = tmp_path / "img"
    assert main(["sample", digits, "--num-samples", "6", "--out", str(out), "--sampler", "ddim", "--steps", "3",
                 "--shard-size", "4", "--batch-size", "3", "--png", "--seed", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    images = load_samples(str(out))
    assert images.dtype == np.uint8 and images.shape == (6, 8, 8, 1)
    run = scoresde.load(digits)
    # the same batches as the shards' (shard 0: samples 0-2 and 3; shard 1: 4-5), each sample from seed 4 + i
    x = torch.cat([sampling.sample("ddim", run.score_fn, run.sde, (b - a, 1, 8, 8), steps=3, eps=run.config.sample.eps,
                                   generator=SampleGenerators.range(4, a, b)) for a, b in ((0, 3), (3, 4), (4, 6))])
    assert np.array_equal(images, unscale(x, run.data_range).permute(0, 2, 3, 1).numpy())
    clipped = sum(int(np.load(out / shard_name(k))["clipped"]) for k in (0, 1))
    assert clipped == int(((x < -1) | (x > 1)).sum())
    if clipped:
        assert f"clipped {clipped} of 384 values" in printed
    from PIL import Image
    pngs = sorted(p.name for p in (out / "png").iterdir())
    assert pngs == [f"{i:06d}.png" for i in range(6)]
    assert np.array_equal(np.asarray(Image.open(out / "png" / "000005.png")), images[5, ..., 0])
