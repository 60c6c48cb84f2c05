"""Shared fixtures: a 2-D Gaussian mixture with exact scores under each SDE, and the statistics the
sampler tests use (energy distance with its same-distribution baseline, mode fractions)."""
import copy
import json
import os
import subprocess
import sys
from typing import Optional

import pytest
import torch

import scoresde as sd
from kinds import kind

# Tests run on tiny tensors, where a second intra-op thread only adds synchronisation; the suite
# is parallelised across processes instead (pytest-xdist).
torch.set_num_threads(1)


#: the smallest training run that still learns something: a 2-layer MLP on the checkerboard
TINY_RUN = {
    "sde": {"type": "vp"},
    "model": {"name": "mlp", "hidden": 32, "depth": 2, "embed_dim": 16},
    "data": {"name": "checkerboard", "n_train": 2000},
    "train": {"steps": 30, "batch_size": 64, "lr": 1e-3, "warmup": 5, "checkpoint_every": 10,
              "log_every": 5, "keep_checkpoints": 10, "seed": 3},
    "sample": {"num": 16, "steps": 5, "sampler": "ddim"},
}


def tiny_run(**train):
    """A deep copy of TINY_RUN with ``train`` overrides."""
    raw = copy.deepcopy(TINY_RUN)
    raw["train"].update(train)
    return raw


#: the limit on a test's subprocess: only there so that a hang fails instead of stalling the suite,
#: never what a passing test relies on (tests wait on progress and events, not on the clock)
HANG_TIMEOUT = 600


def torchrun(tmp_path, worker_source: str, raw: dict, timeout: float = HANG_TIMEOUT, nproc: int = 2,
             env: Optional[dict] = None):
    """Run ``worker_source`` (a script taking the config as JSON and a workdir) under torchrun on
    the CPU; returns the CompletedProcess. The workdir is tmp_path / "run". ``env`` adds to the
    environment. After ``timeout`` (a hang) the launcher is stopped with its ranks, then it raises."""
    script = tmp_path / "worker.py"
    script.write_text(worker_source)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), json.dumps(raw), str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the agent passes SIGTERM on to its ranks (each in a session of its own)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def make_sdes():
    return {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE()}


@pytest.fixture(scope="session")
def mixture():
    """Three well-separated components (overlap ~1e-9), full covariances, unequal weights."""
    return sd.GaussianMixture(
        weights=[0.2, 0.5, 0.3],
        means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]],
        covs=[[[0.09, 0.03], [0.03, 0.16]], [[0.25, -0.05], [-0.05, 0.09]], [[0.04, 0.0], [0.0, 0.25]]],
    )


@pytest.fixture(params=["vp", "subvp", "ve"])
def sde(request):
    return make_sdes()[request.param]


def mean_distance(x, y, chunk=4096):
    """E|X - Y| over all pairs, in float64, without materialising more than chunk x len(x) distances."""
    x, y = x.double(), y.double()
    return sum(torch.cdist(x, yc).sum().item() for yc in y.split(chunk)) / (len(x) * len(y))


class TwoSampleCheck:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| of a sample X to a large exact reference Y (4x the
    sample size, so the reference's own fluctuation hardly moves the statistic), judged against its
    null distribution: R further exact samples of the same size give the statistic's mean and sd when
    nothing is wrong. A sample passes if its distance is below mean + 5 sd (a false alarm has
    probability well under 1e-3 even for the right-skewed null).
    ``test_two_sample_check_has_power`` shows that it catches real errors."""

    def __init__(self, target, n, generator, replicates=16):
        self.n = n
        self.ref = target.sample(4 * n, generator, dtype=torch.float64)
        self.ref_spread = mean_distance(self.ref, self.ref)
        null = torch.tensor([self.distance(target.sample(n, generator, dtype=torch.float64)) for _ in range(replicates)])
        self.null_mean, self.null_sd = null.mean().item(), null.std().item()
        self.threshold = self.null_mean + 5 * self.null_sd

    def distance(self, x):
        return 2 * mean_distance(x, self.ref) - mean_distance(x, x) - self.ref_spread

    def assert_matches(self, x, label=""):
        d = self.distance(x)
        assert d < self.threshold, (f"{label}: energy distance {d:.2e} above the same-distribution threshold "
                                    f"{self.threshold:.2e} (null mean {self.null_mean:.2e}, sd {self.null_sd:.2e})")


def assert_mode_weights(mixture, x, label="", z=4.5):
    """Fraction of samples nearest each component within z binomial standard errors of its weight."""
    counts = torch.bincount(mixture.classify(x), minlength=mixture.num_components).double()
    frac = counts / counts.sum()
    w = mixture.weights
    se = (w * (1 - w) / counts.sum()).sqrt()
    assert ((frac - w).abs() <= z * se).all(), f"{label}: mode fractions {frac.tolist()} vs weights {w.tolist()} (se {se.tolist()})"


def pytest_collection_modifyitems(items):
    """Mark every test ``exact`` or ``interface`` (tests/kinds.py), so ``-m exact`` selects and
    counts the tests that compare numbers with exact answers."""
    for item in items:
        module = getattr(item, "module", None)
        name = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
        item.add_marker(getattr(pytest.mark, kind(name, getattr(item, "originalname", item.name))))


def tiny_toy_run(tmp_path_factory) -> str:
    """A 10-step checkerboard run (MLP); its config's sample.steps is 5."""
    from scoresde.config import from_dict
    from scoresde.train import train
    workdir = tmp_path_factory.mktemp("toy") / "run"
    train(from_dict(tiny_run(steps=10, checkpoint_every=10, log_every=10)), str(workdir), progress=False)
    return str(workdir)


def counting(fn):
    """``fn(x, t)`` with its calls counted: returns (the wrapper, the list that grows by one per call)."""
    calls = []

    def score(x, t):
        calls.append(1)
        return fn(x, t)
    return score, calls


def tiny_digits_run(tmp_path_factory) -> str:
    """A 2-step U-Net run on 8x8 digits (1 x 8 x 8 images on [-1, 1]): the image run of the CLI,
    generation, precision and likelihood tests, trained in about a second."""
    from scoresde.config import from_dict
    from scoresde.train import train
    workdir = str(tmp_path_factory.mktemp("digits") / "run")
    raw = {"sde": {"type": "vp"}, "data": {"name": "digits"},
           "model": {"name": "unet", "channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                     "attn_resolutions": [], "dropout": 0.0},
           "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "log_every": 1, "warmup": 1},
           "sample": {"steps": 5}}
    train(from_dict(raw), workdir, progress=False)
    return workdir


def benchmark_module(name: str):
    """benchmarks/``name``.py imported as a module (it imports its siblings, e.g. _bench). The folder
    leaves sys.path again, so that examples/ (with its own helper modules) imports its own."""
    import importlib
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    sys.path.insert(0, bench)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(bench)
