"""Compiled sampling and likelihood (``scoresde.precision.compile_score``, ``--compile``).

What is checked:
- every sampler of the registry with a fixed grid (and the adaptive ones, whose shapes are fixed
  too) and ``log_likelihood`` (fixed and adaptive steps, exact and Hutchinson divergence) call the
  compiled network with the same shapes, dtypes and strides at every step: a counting backend
  sees no graph compiled after the first call, and the results equal the eager ones bit for bit
  (dynamo's "eager" / "aot_eager" backends run the traced ops unchanged);
- the same for the whole score callable compiled (then t reaches the compiled code as the
  sampler passes it: a Python float or a changing dtype or layout would recompile);
- one real inductor compilation (tiny MLP, ddim 5 steps, CPU) agrees with eager sampling to
  REL_TOL_INDUCTOR = 1e-5 relative (inductor fuses and reorders float32 operations; measured:
  6.4e-8);
- composition with precision_score (bf16 autocast, channels_last) in both orders;
- the CUDA-graph modes' output cloning, against a backend that reuses its output memory as a
  CUDA graph does;
- ``scoresde sample/likelihood --compile`` reach compile_score (torch.compile replaced by a
  recording wrapper around a counting backend, so nothing is code-generated).
"""
import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.backends.registry import lookup_backend

import scoresde as sd
from scoresde import sampling
from scoresde.likelihood import log_likelihood
from scoresde.nets import build_net
from scoresde.precision import compile_score, precision_score, to_channels_last
from scoresde.sampling import ADAPTIVE, SAMPLERS
from scoresde.sampling.runge_kutta import STAGES

from conftest import tiny_digits_run, tiny_toy_run

REL_TOL_INDUCTOR = 1e-5
B = 8


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts and ends with dynamo's caches empty (a graph compiled by an earlier test
    would otherwise be reused, or counted)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class CountingBackend:
    """A torch.compile backend that records every graph dynamo hands it (a first compilation or a
    recompilation) with its inputs' shapes, strides and dtypes, then runs it with ``inner``:
    "eager" (the traced graph as is) or "aot_eager" (through AOTAutograd, forward and backward
    graphs, as inductor gets them)."""

    def __init__(self, inner: str = "eager"):
        self.inner, self.inputs = inner, []

    @property
    def graphs(self) -> int:
        return len(self.inputs)

    def __call__(self, gm, example_inputs, **kwargs):
        self.inputs.append([(tuple(e.shape), e.stride(), e.dtype) if torch.is_tensor(e) else repr(e)
                            for e in example_inputs if not isinstance(e, torch.nn.Parameter)])
        return lookup_backend(self.inner)(gm, example_inputs)


class Probe:
    """Calls ``fn``, noting how many graphs ``backend`` had compiled after each call and what t the
    sampler passed (a tensor of shape (B,) in x's dtype, or what else)."""

    def __init__(self, fn, backend):
        self.fn, self.backend, self.after, self.bad_times = fn, backend, [], []

    def __call__(self, x, t):
        if not (torch.is_tensor(t) and t.shape == x.shape[:1] and t.dtype == x.dtype and t.device == x.device):
            self.bad_times.append(repr(t) if not torch.is_tensor(t) else (tuple(t.shape), t.dtype))
        out = self.fn(x, t)
        self.after.append(self.backend.graphs)
        return out

    def assert_compiled_once(self):
        """Something was compiled on the first call, nothing after it, over more than one call; t
        was always a (B,) tensor of x's dtype."""
        assert len(self.after) > 1
        assert self.after[0] >= 1 and self.after[-1] == self.after[0], \
            f"graphs after each call {self.after}; graph inputs {self.backend.inputs}"
        assert not self.bad_times, self.bad_times[:3]


def _mlp_model(sde, parameterization="eps"):
    torch.manual_seed(0)
    net = build_net("mlp", (2,), hidden=32, depth=2)
    with torch.no_grad():  # the output layer starts at zero: give it weights, so the net's output counts
        for p in net.parameters():
            if p.dim() > 1 and (p == 0).all():
                torch.nn.init.normal_(p, std=0.02)
    return sd.ScoreModel(net, sde, parameterization=parameterization).eval()


def _unet_model(sde):
    torch.manual_seed(0)
    net = build_net("unet", (1, 8, 8), channels=8, channel_mults=[1, 2], num_res_blocks=1, attn_resolutions=[],
                    dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and (p == 0).all():
                torch.nn.init.normal_(p, std=0.02)
    return sd.ScoreModel(net, sde).eval()


def _compiled(model, flavour, backend, **kw):
    """compile_score on the ScoreModel (its network compiled) or on a plain callable (compiled whole)."""
    if flavour == "network":
        return compile_score(model, backend=backend, **kw)
    return compile_score(lambda x, t: model(x, t), backend=backend, **kw)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


#: (id, sampler, options): every sampler of the registry, with its variants that step differently
CASES = [
    ("ddim", "ddim", {}), ("ddim:eta=1", "ddim", dict(eta=1.0)),
    ("ddim:timesteps", "ddim", dict(timesteps=range(999, -1, -250))),
    ("dpm_solver:2M", "dpm_solver", {}), ("dpm_solver:3M+corrector", "dpm_solver", dict(order=3, corrector=True)),
    ("dpm_solver:2S", "dpm_solver", dict(multistep=False)),
    ("dpm_solver:3S-eps", "dpm_solver", dict(multistep=False, order=3, predict="eps")),
    ("euler_maruyama", "euler_maruyama", {}), ("euler_maruyama:karras", "euler_maruyama", dict(schedule="karras")),
    ("heun", "heun", {}), ("heun:churn", "heun", dict(churn=5.0)),
    ("ancestral", "ancestral", {}), ("ancestral:timesteps", "ancestral", dict(timesteps=range(999, -1, -250))),
    ("pc:langevin", "predictor_corrector", dict(corrector_steps=2)),
    ("pc:annealed+dpm_solver", "predictor_corrector",
     dict(corrector="annealed_langevin", predictor="dpm_solver", predictor_options=dict(order=2))),
    ("pc:heun-only", "predictor_corrector", dict(predictor="heun", corrector=None)),
    ("probability_flow:rk4", "probability_flow", dict(method="rk4")),
    ("probability_flow:heun3", "probability_flow", dict(method="heun3")),
    ("probability_flow:euler", "probability_flow", dict(method="euler")),
    ("probability_flow:dopri5", "probability_flow", dict(method="dopri5", rtol=1e-3, atol=1e-3)),
    ("reverse_sde:euler", "reverse_sde", dict(method="euler")), ("reverse_sde:srk", "reverse_sde", dict(method="srk")),
    ("adaptive_sde", "adaptive_sde", dict(rtol=0.05, atol=0.05)),
]


def test_cases_cover_every_sampler():
    assert {c[1] for c in CASES} == set(SAMPLERS)
    assert ADAPTIVE <= {c[1] for c in CASES}


@pytest.mark.parametrize("flavour", ["network", "callable"])
@pytest.mark.parametrize("name,options", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_sampler_compiles_once_and_matches_eager(name, options, flavour):
    """One compilation on the first network call, none after (no Python-float t, no change of
    shape, dtype or layout between steps, the denoising step included), and the eager samples."""
    sde = sd.VPSDE()
    model = _mlp_model(sde)
    x_T = sde.prior_sampling((B, 2), generator=torch.Generator().manual_seed(0))
    steps = {} if name in ADAPTIVE else dict(steps=4)
    eager = SAMPLERS[name](model, sde, x_T, generator=torch.Generator().manual_seed(1), **steps, **options)
    backend = CountingBackend()
    probe = Probe(_compiled(model, flavour, backend), backend)
    out = SAMPLERS[name](probe, sde, x_T, generator=torch.Generator().manual_seed(1), **steps, **options)
    probe.assert_compiled_once()
    assert torch.equal(out, eager)


LIKELIHOOD_CASES = [("hutchinson", "rk4", 2), ("hutchinson", "euler", 1), ("exact", "heun", 1),
                    ("hutchinson", "dopri5", 1)]


@pytest.mark.parametrize("flavour", ["network", "callable"])
@pytest.mark.parametrize("estimator,method,probes", LIKELIHOOD_CASES,
                         ids=[f"{e}-{m}-{p}" for e, m, p in LIKELIHOOD_CASES])
def test_likelihood_compiles_once_and_differentiates(estimator, method, probes, flavour):
    """The PF-ODE likelihood through AOTAutograd (compiled forward and backward): the divergence's
    backward passes (one per probe, or per dimension) run through the compiled network, which is
    compiled once; the values are the eager ones."""
    sde = sd.VPSDE()
    model = _mlp_model(sde)
    x = torch.randn(B, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(estimator=estimator, method=method, probes=probes, steps=4, rtol=1e-3, atol=1e-3)
    eager = log_likelihood(model, sde, x, generator=torch.Generator().manual_seed(1), **kw)
    backend = CountingBackend("aot_eager")
    probe = Probe(_compiled(model, flavour, backend), backend)
    res = log_likelihood(probe, sde, x, generator=torch.Generator().manual_seed(1), **kw)
    probe.assert_compiled_once()
    assert res.nfe == eager.nfe
    torch.testing.assert_close(res.logp, eager.logp, rtol=1e-6, atol=1e-6)


def CPU_BOOL(t):
    """Exempt from the sync guard: the SDE's range check of CPU times (``SDE.time``: a bool read of a
    CPU tensor, skipped for GPU tensors, so no device sync), and only it."""
    import sys
    if t.dtype != torch.bool or t.device.type != "cpu":
        return False
    frame = sys._getframe(1)
    for _ in range(3):
        frame = frame.f_back
        if frame is None:
            return False
        if frame.f_code.co_name == "time" and frame.f_code.co_filename.endswith(("scoresde/sde.py", "scoresde\\sde.py")):
            return True
    return False


def armed_after_first_call(score, guard):
    """``score`` with the sync ``guard`` armed from its second call on (the first one compiles);
    returns the wrapper and the list that grows by one per call."""
    calls = []

    def guarded(x, t):
        if calls:
            guard.arm()
        calls.append(1)
        return score(x, t)
    return guarded, calls


@pytest.mark.parametrize("name,options", [("ddim", {}), ("heun", dict(churn=5.0)), ("dpm_solver", dict(order=3)),
                                          ("dpm_solver", dict(multistep=False)), ("ancestral", {}),
                                          ("probability_flow", dict(method="rk4")),
                                          ("probability_flow", dict(method="heun3", schedule="logsnr"))],
                         ids=["ddim", "heun:churn", "dpm_solver:3M", "dpm_solver:2S", "ancestral", "probability_flow:rk4",
                              "probability_flow:heun3,logsnr"])
def test_no_host_sync_in_compiled_sampling_loop(name, options):
    """Once compiled (the first call), the loop around the compiled network reads nothing back."""
    from test_api import SyncGuard, _untouched
    sde = sd.VPSDE()
    score = compile_score(_mlp_model(sde), backend="aot_eager")
    x_T = sde.prior_sampling((B, 2), generator=torch.Generator().manual_seed(0))
    with SyncGuard(exempt=CPU_BOOL) as guard:
        guarded, calls = armed_after_first_call(score, guard)
        out = SAMPLERS[name](guarded, sde, x_T, steps=4, generator=torch.Generator().manual_seed(1), **options)
    assert _untouched() and guard.armed_calls >= 3 and torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("estimator", ["hutchinson", "exact"])
def test_no_host_sync_in_compiled_likelihood_evaluation(estimator, method):
    """The fixed-step PF-ODE likelihood (time clamp, compiled network, drift, divergence by backward
    passes through the compiled network, the augmented state, the Runge–Kutta loop) reads nothing
    back once compiled: from the second score evaluation on, every host read raises."""
    from test_api import SyncGuard, _untouched
    sde = sd.VPSDE()
    score = compile_score(_mlp_model(sde), backend="aot_eager")
    x = torch.randn(B, 2, generator=torch.Generator().manual_seed(0))
    with SyncGuard(exempt=CPU_BOOL) as guard:
        guarded, calls = armed_after_first_call(score, guard)
        res = log_likelihood(guarded, sde, x, estimator=estimator, probes=2, method=method, steps=3,
                             generator=torch.Generator().manual_seed(1))
    assert _untouched() and guard.armed_calls == len(calls) - 1 == 3 * STAGES[method] - 1
    assert torch.isfinite(res.logp).all()


def test_inductor_ddim_matches_eager():
    """A real compilation (inductor's C++ code on the CPU; about 30 s the first time, cached after):
    ddim's samples agree with eager ones to REL_TOL_INDUCTOR, from one compiled graph."""
    from torch._dynamo.utils import counters
    sde = sd.VPSDE()
    model = _mlp_model(sde)
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0))
    eager = sampling.ddim(model, sde, x_T, steps=5)
    counters.clear()
    out = sampling.ddim(compile_score(model), sde, x_T, steps=5)
    assert counters["stats"]["unique_graphs"] == 1  # it was compiled, once
    assert out.dtype == torch.float32 and _rel(out, eager) < REL_TOL_INDUCTOR, _rel(out, eager)


@pytest.mark.parametrize("order", ["precision-then-compile", "compile-then-precision"])
def test_composes_with_bf16_and_channels_last(order):
    """compile_score with precision_score (bf16 autocast, channels_last U-Net) in either order: the
    eager bf16 samples (which differ from the float32 ones), one compiled graph whose image input
    is channels_last."""
    sde = sd.VPSDE()
    model = _unet_model(sde)
    to_channels_last(model.net)
    x_T = sde.prior_sampling((4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    fp32 = sampling.ddim(model, sde, x_T, steps=3)
    ref = sampling.ddim(precision_score(model, "bf16", channels_last=True), sde, x_T, steps=3)
    backend = CountingBackend("aot_eager")
    if order == "precision-then-compile":
        score = compile_score(precision_score(model, "bf16", channels_last=True), backend=backend)
    else:
        score = precision_score(compile_score(model, backend=backend), "bf16", channels_last=True)
    probe = Probe(score, backend)
    out = sampling.ddim(probe, sde, x_T, steps=3)
    probe.assert_compiled_once()
    assert _rel(ref, fp32) > 1e-4  # bf16 did act
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert _rel(out, ref) < 1e-6, _rel(out, ref)
    images = [shape for shape in backend.inputs[0] if isinstance(shape, tuple) and len(shape[0]) == 4]
    assert images and all(torch.empty_strided(s, st).is_contiguous(memory_format=torch.channels_last)
                          for s, st, _ in images), images


def _reused_output_memory(gm, example_inputs, **kwargs):
    """A backend whose outputs live in buffers that every call overwrites, as a CUDA graph's do."""
    buffers = []

    def run(*args):
        outs = gm(*args)
        if not buffers:
            buffers.extend(torch.empty_like(o) for o in outs)
        for b, o in zip(buffers, outs):
            b.copy_(o)
        return tuple(buffers)
    return run


@pytest.mark.parametrize("flavour", ["network", "callable"])
def test_cudagraph_modes_clone_the_output(flavour):
    """Heun keeps the first stage's score across the second call; a "score"-parameterized model
    returns the network's output itself. Under mode="reduce-overhead" (CUDA graphs on a GPU) the
    compiled output is cloned, so the result is the eager one; without the clone (mode None, the
    same backend) it is not, which shows the check can fail."""
    sde = sd.VPSDE()
    model = _mlp_model(sde, parameterization="score")
    x_T = sde.prior_sampling((B, 2), generator=torch.Generator().manual_seed(0))
    eager = sampling.heun(model, sde, x_T, steps=3)
    for mode in ("reduce-overhead", "max-autotune"):
        torch._dynamo.reset()
        out = sampling.heun(_compiled(model, flavour, _reused_output_memory, mode=mode), sde, x_T, steps=3)
        assert torch.equal(out, eager), mode
    torch._dynamo.reset()
    unsafe = sampling.heun(_compiled(model, flavour, _reused_output_memory), sde, x_T, steps=3)
    assert not torch.allclose(unsafe, eager)


def test_compile_score_compiles_the_network_only(monkeypatch):
    """A ScoreModel comes back as a ScoreModel around the compiled network (same SDE,
    parameterization, conditioning, classes; the original untouched); torch.compile gets the
    network with dynamic=False, the backend and the mode; a callable is compiled whole."""
    calls = []
    real = torch.compile

    def recording(obj, **kw):
        calls.append((obj, kw))
        return real(obj, **dict(kw, backend="eager"))

    monkeypatch.setattr(torch, "compile", recording)
    sde = sd.VESDE()

    class Net(torch.nn.Module):
        num_classes = 3

        def forward(self, x, c, y=None):
            return x * c[:, None]

    net = Net()
    model = sd.ScoreModel(net, sde, parameterization="score", conditioning="sigma")
    out = compile_score(model, mode="max-autotune-no-cudagraphs")
    assert isinstance(out, sd.ScoreModel) and out is not model and model.net is net
    assert (out.sde, out.parameterization, out.conditioning, out.num_classes) == (sde, "score", "sigma", 3)
    assert [(obj, kw) for obj, kw in calls] == [
        (net, dict(mode="max-autotune-no-cudagraphs", backend="inductor", dynamic=False))]
    x = torch.randn(4, 2)
    assert torch.equal(out(x, 0.5), model(x, 0.5)) and torch.equal(out(x, 0.5, y=1), model(x, 0.5, y=1))

    def plain(x, t):
        return -x
    calls.clear()
    compile_score(plain, backend="aot_eager", dynamic=True)
    assert calls == [(plain, dict(mode=None, backend="aot_eager", dynamic=True))]
    with pytest.raises(ValueError, match="mode"):
        compile_score(model, mode="fast")
    with pytest.raises(ValueError, match="callable"):
        compile_score(3)


# ---- command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return tiny_toy_run(tmp_path_factory)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory)


@pytest.fixture
def recorded_compile(monkeypatch):
    """torch.compile replaced by one that records its arguments and compiles with a counting
    (eager) backend whatever it is asked: the command's compiled path, without code generation."""
    real = torch.compile
    record = {"calls": [], "backend": CountingBackend()}

    def recording(obj, **kw):
        record["calls"].append(kw)
        return real(obj, **dict(kw, backend=record["backend"]))

    monkeypatch.setattr(torch, "compile", recording)
    return record


def _npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _shards(folder):
    import glob
    import os
    return {os.path.basename(p): _npz(p)["samples"] for p in sorted(glob.glob(os.path.join(folder, "shard_*.npz")))}


def test_cli_sample_compile(toy, tmp_path, recorded_compile):
    from scoresde.cli import main
    common = ["sample", toy, "--sampler", "dpm_solver", "--steps", "4", "--num-samples", "8", "--quiet",
              "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "eager.npz")]) == 0
    assert recorded_compile["calls"] == []
    assert main(common + ["--out", str(tmp_path / "compiled.npz"), "--compile"]) == 0
    assert recorded_compile["calls"] == [dict(mode=None, backend="inductor", dynamic=False)]
    assert recorded_compile["backend"].graphs == 1  # the whole run, its denoising step included
    np.testing.assert_array_equal(_npz(tmp_path / "compiled.npz")["samples"], _npz(tmp_path / "eager.npz")["samples"])
    # --compile-mode implies --compile and reaches torch.compile
    torch._dynamo.reset()
    assert main(common + ["--out", str(tmp_path / "ro.npz"), "--compile-mode", "reduce-overhead"]) == 0
    assert recorded_compile["calls"][-1]["mode"] == "reduce-overhead"
    np.testing.assert_array_equal(_npz(tmp_path / "ro.npz")["samples"], _npz(tmp_path / "eager.npz")["samples"])
    # a folder of shards: every batch through the one compiled network (equal batches: one graph)
    torch._dynamo.reset()
    recorded_compile["backend"].inputs.clear()
    shards = ["--num-samples", "8", "--batch-size", "4", "--shard-size", "4"]
    assert main(common + shards + ["--out", str(tmp_path / "eager_dir")]) == 0
    calls = len(recorded_compile["calls"])
    assert main(common + shards + ["--out", str(tmp_path / "compiled_dir"), "--compile"]) == 0
    assert len(recorded_compile["calls"]) == calls + 1 and recorded_compile["backend"].graphs == 1
    eager, compiled = _shards(tmp_path / "eager_dir"), _shards(tmp_path / "compiled_dir")
    assert len(eager) == 2 and eager.keys() == compiled.keys()
    for k in eager:
        np.testing.assert_array_equal(compiled[k], eager[k])


def test_cli_likelihood_compile(toy, tmp_path, recorded_compile):
    import json
    from scoresde.cli import main
    common = ["likelihood", toy, "--num-samples", "8", "--method", "rk4", "--steps", "3", "--estimator",
              "hutchinson", "--quiet", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "eager.json")]) == 0
    assert main(common + ["--out", str(tmp_path / "compiled.json"), "--compile"]) == 0
    assert recorded_compile["calls"] == [dict(mode=None, backend="inductor", dynamic=False)]
    assert recorded_compile["backend"].graphs == 1
    eager, compiled = (json.loads((tmp_path / f).read_text()) for f in ("eager.json", "compiled.json"))
    assert compiled["values"] == eager["values"] and compiled["nfe"] == eager["nfe"]


def test_cli_compile_with_bf16_and_channels_last(digits, tmp_path, recorded_compile):
    """--compile composes with --precision bf16 --channels-last: the same samples as without it."""
    from scoresde.cli import main
    common = ["sample", digits, "--sampler", "ddim", "--steps", "3", "--num-samples", "4", "--quiet", "--device",
              "cpu", "--precision", "bf16", "--channels-last"]
    assert main(common + ["--out", str(tmp_path / "eager.npz")]) == 0
    assert main(common + ["--out", str(tmp_path / "compiled.npz"), "--compile"]) == 0
    assert len(recorded_compile["calls"]) == 1 and recorded_compile["backend"].graphs == 1
    np.testing.assert_array_equal(_npz(tmp_path / "compiled.npz")["samples"], _npz(tmp_path / "eager.npz")["samples"])


def test_cli_help_names_compile(capsys):
    from scoresde.cli import main
    for cmd in ("sample", "likelihood"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--compile " in text and "--compile-mode MODE" in text and "first batch is slower" in text
        assert "reduce-overhead" in text and "fixed batch size" in text
