"""The trainer's compiled and bf16 paths (``train.compile``, ``train.compile_mode``, ``train.amp``),
each against the plain trainer it must equal:

1. ``train.compile``: the network is compiled once (a counting backend sees one graph over a whole
   run with gradient accumulation, clipping, EMA and log steps: no recompilation per step) and the
   run ends with the eager run's weights, EMA and losses bit for bit (dynamo's "aot_eager" backend
   runs the traced forward and backward graphs unchanged), for the MLP and the digits U-Net; under
   bf16 autocast and channels_last the U-Net is compiled once too and its gradients are the eager
   ones within bf16's precision (the traced graph places its casts where eager autocast does not);
   one real inductor compilation of the MLP's training step agrees with eager training to
   REL_TOL_INDUCTOR (inductor fuses and reorders float32 operations);
2. ``train.compile_mode`` reaches ``torch.compile`` (None for "default"), and a bad one or one
   without ``train.compile`` is a config error naming the key;
3. ``train.amp``: on any device the network's forward pass runs in bf16 (its convolutions return
   bf16) while parameters, gradients and optimizer state stay float32, and the first step's
   gradient is the float32 one within bf16's precision (see ``test_amp_gradients_within_bf16_precision``).
"""
import json

import pytest
import torch
import torch._dynamo

from scoresde.config import ConfigError, from_dict
from scoresde.train import Trainer

from conftest import tiny_run
from test_compiled import CountingBackend
from test_fast_paths import digits_raw, losses, record_grads

#: inductor against eager after 3 Adam steps of the tiny MLP, relative to each weight tensor (measured 1.4e-6;
#: a compiled copy that never trains differs by the whole update: ratio 1.0, planted)
REL_TOL_INDUCTOR = 1e-5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def recorded_compile(monkeypatch):
    """torch.compile replaced by one that records its keyword arguments and compiles with a counting
    backend ("aot_eager" inside: forward and backward graphs, no code generation)."""
    real = torch.compile
    record = {"calls": [], "backend": CountingBackend("aot_eager")}

    def recording(obj, **kw):
        record["calls"].append(kw)
        return real(obj, **dict(kw, mode=None, backend=record["backend"]))

    monkeypatch.setattr(torch, "compile", recording)
    return record


def _fit(raw, workdir):
    trainer = Trainer(from_dict(raw), str(workdir), progress=False)
    trainer.fit()
    return trainer


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_equal_dicts(a, b):
    assert a.keys() == b.keys() and a
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


# ---- 1. train.compile -------------------------------------------------------------------------------

CASES = {
    "mlp:accum+clip": lambda **kw: tiny_run(steps=6, grad_accum=2, grad_clip=1.0, log_every=2, checkpoint_every=100, **kw),
    "unet": lambda **kw: digits_raw(steps=3, grad_clip=1.0, **kw),
}


@pytest.mark.parametrize("case", CASES)
def test_compiled_training_compiles_once_and_matches_eager(tmp_path, recorded_compile, case):
    eager = _fit(CASES[case](), tmp_path / "eager")
    compiled = _fit(CASES[case](compile=True), tmp_path / "compiled")
    assert recorded_compile["calls"] == [dict(mode=None)]
    backend = recorded_compile["backend"]
    # one graph for the whole run: every micro-batch and step calls the network with the same
    # shapes, dtypes, strides and autocast state
    assert backend.graphs == 1, backend.inputs
    assert losses(tmp_path / "compiled") == losses(tmp_path / "eager")
    _assert_equal_dicts(_params(compiled.net), _params(eager.net))
    _assert_equal_dicts(_params(compiled.ema.module), _params(eager.ema.module))


def test_compiled_bf16_channels_last_training_compiles_once(tmp_path, recorded_compile):
    grads = {}
    for compile in (False, True):
        trainer = Trainer(from_dict(digits_raw(steps=3, amp=True, channels_last=True, grad_clip=None, compile=compile)),
                          str(tmp_path / str(compile)), progress=False)
        seen = record_grads(trainer)
        trainer.fit()
        grads[compile] = seen[0]
    assert recorded_compile["backend"].graphs == 1, recorded_compile["backend"].inputs
    assert 0 <= _rel_norm(grads[True], grads[False]) < AMP_GRAD_TOL


def _rel_norm(a, b):
    """||a - b|| / ||b|| over all the tensors of two dicts with the same keys."""
    assert a.keys() == b.keys() and a
    flat_a = torch.cat([a[k].double().flatten() for k in sorted(a)])
    flat_b = torch.cat([b[k].double().flatten() for k in sorted(b)])
    return float((flat_a - flat_b).norm() / flat_b.norm())


def test_compiled_training_checkpoint_holds_the_plain_network(tmp_path, recorded_compile):
    """A compiled run's checkpoint has the plain network's keys (no ``_orig_mod.`` prefix) and loads
    into an eager trainer, which resumes from it."""
    raw = tiny_run(steps=4, checkpoint_every=2, compile=True)
    _fit(raw, tmp_path / "run")
    resumed = Trainer(from_dict(tiny_run(steps=6, checkpoint_every=2)), str(tmp_path / "run"), progress=False)
    assert resumed.fit(resume=True) == {"step": 6, "status": "complete"}
    keys = set(dict(resumed.net.named_parameters()))
    assert keys and not any("_orig_mod" in k for k in keys)


def test_inductor_training_matches_eager(tmp_path):
    """One real compilation (inductor's generated C++ for the forward and backward of the tiny MLP)."""
    raw = dict(steps=3, log_every=1, checkpoint_every=100)
    eager = _fit(tiny_run(**raw), tmp_path / "eager")
    compiled = _fit(tiny_run(compile=True, **raw), tmp_path / "compiled")
    a, b = _params(compiled.net), _params(eager.net)
    assert a.keys() == b.keys()
    # Adam's first steps move every weight by about lr: compare the updates, not the weights
    init = _params(Trainer(from_dict(tiny_run(**raw)), str(tmp_path / "init"), progress=False).net)
    for k in a:
        moved = (b[k] - init[k]).double().norm()
        if moved == 0:  # not trained (the Fourier features' fixed frequencies)
            assert torch.equal(a[k], b[k]), k
            continue
        assert (a[k] - b[k]).double().norm() <= REL_TOL_INDUCTOR * max(moved, b[k].double().norm()), k
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=REL_TOL_INDUCTOR)


# ---- 2. train.compile_mode --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune-no-cudagraphs", "default"])
def test_compile_mode_reaches_torch_compile(tmp_path, recorded_compile, mode):
    _fit(tiny_run(steps=2, compile=True, compile_mode=mode, checkpoint_every=100), tmp_path)
    assert recorded_compile["calls"] == [dict(mode=None if mode == "default" else mode)]


def test_compile_mode_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.compile_mode: expected one of default, reduce-overhead.*'fast'"):
        from_dict(tiny_run(compile=True, compile_mode="fast"))
    with pytest.raises(ConfigError, match=r"train\.compile_mode: expected 'default' unless train\.compile is true"):
        from_dict(tiny_run(compile_mode="reduce-overhead"))


# ---- 3. train.amp -----------------------------------------------------------------------------------

def test_amp_runs_the_network_in_bf16_and_keeps_float32_state(tmp_path):
    trainer = Trainer(from_dict(digits_raw(steps=2, amp=True)), str(tmp_path), progress=False)
    seen = []
    trainer.net.down[0][0].conv1.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    grads = record_grads(trainer)
    trainer.fit()
    assert seen == [torch.bfloat16] * 2
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())
    assert all(g.dtype == torch.float32 for step in grads for g in step.values())
    state = [v for s in trainer.opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    assert state and all(v.dtype == torch.float32 for v in state)
    assert all(json.loads(line)["loss"] > 0 for line in (tmp_path / "metrics.jsonl").read_text().splitlines())


#: bf16 keeps 8 significant bits (unit roundoff u = 2^-8). The first step's gradient is a chain of
#: about L = 12 bf16 products (convolutions, their input gradients, the attention) per value, each
#: rounding its inputs once: a relative error of order L u = 0.047 in norm at most; measured 0.004-0.01.
AMP_GRAD_TOL = 12 * 2.0 ** -8


def test_amp_gradients_within_bf16_precision(tmp_path):
    """The same first step (same weights, noise and batch) with and without autocast: its gradient
    agrees in norm to within bf16's precision, and differs (autocast really changed the arithmetic)."""
    grads = {}
    for amp in (True, False):
        trainer = Trainer(from_dict(digits_raw(steps=1, amp=amp, grad_clip=None)), str(tmp_path / str(amp)),
                          progress=False)
        seen = record_grads(trainer)
        trainer.fit()
        grads[amp] = seen[0]
    rel = _rel_norm(grads[True], grads[False])
    assert 0 < rel < AMP_GRAD_TOL, rel
