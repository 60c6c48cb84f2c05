"""benchmarks/memory.py: the peak memory of a training step counted without the device.

The estimate runs scoresde's Trainer under FakeTensorMode and counts tensor storage with torch's
MemTracker. Checked here: the counts against a count by hand (an MLP with Adam), the estimate
against the same step on real tensors, that the memory switches show up where they must
(checkpointing lowers the activation peak; grad_accum k leaves the activations of a batch of B/k,
to the byte), and that the benchmark runs and writes its files."""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import HANG_TIMEOUT, benchmark_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = 4  # bytes


mem = benchmark_module("memory")

#: the smallest checkpointable network of configs/: digits_vp's U-Net (8x8x1 images, 0.7M parameters,
#: residual blocks at two resolutions, an attention block, each a Checkpointed block)
UNET = "digits_vp"
SAMPLE_BYTES = 1 * 8 * 8 * F32


@pytest.fixture(scope="module")
def unet_step():
    """The estimate (fake) for digits_vp at (batch, variant), cached over this module's tests."""
    cache = {}

    def get(batch: int, variant: str, fake: bool = True) -> dict:
        key = (batch, variant, fake)
        if key not in cache:
            cfg = mem.config_for(UNET, batch, mem.override_items(mem.VARIANTS[variant]) + ["train.fused_optimizer=true"])
            cache[key] = mem.trainer_step_memory(cfg, fake=fake)
        return cache[key]
    return get


@pytest.mark.parametrize("fake", [True, False], ids=["fake", "real"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_mlp_step_counts_equal_the_count_by_hand(fake, fused):
    """Linear(d, h) -> ReLU -> Linear(h, o), loss = mean(out^2), Adam, the second step (Adam's state
    exists), batch B. Counted by hand, in bytes (float32, P = 4 (d h + h + h o + o)):

      params      P
      opt. state  2 P (exp_avg, exp_avg_sq) + 4 x 4 (one float32 step count per parameter tensor)
      Other       the input x: 4 B d (made before the step, registered)

    With h much larger than d and o the peak falls in the ReLU's backward: autograd has run the
    second Linear's node (its weight and bias gradients exist, 4 (h o + o); its output gradient is
    consumed and freed) and threshold_backward(grad_r, r) makes grad_h while its inputs live:

      grads       4 (h o + o)
      activations 4 B h (r = relu(h1), which the ReLU saved for backward; h1 itself was freed when
                  the forward moved on; the second Linear's saved r is the same storage) + 4 (the
                  loss) + 4 (backward()'s seed ones_like(loss), made before autograd's engine runs)
      temp        4 B h (grad_r, the ReLU node's input) + 4 B h (grad_h, its output)

    Fused and foreach Adam give the same numbers: the peak is not in the optimizer step."""
    B, d, h, o = 64, 5, 256, 3
    with (FakeTensorMode() if fake else contextlib.nullcontext()):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, o))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused, foreach=None if fused else True)
        x = torch.randn(B, d)

        def step():
            opt.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            opt.step()

        step()
        got = mem.track(step, modules=[net], optimizers=[opt], others=[x])
    P = F32 * (d * h + h + h * o + o)
    by_hand = {
        "params": P, "buffers": 0, "opt_state": 2 * P + 4 * F32, "ema": F32 * B * d,
        "grads": F32 * (h * o + o),
        "activations": F32 * B * h + F32 + F32,
        "temp": 2 * F32 * B * h,
    }
    assert {k: got[k] for k in by_hand} == by_hand
    assert got["total"] == sum(by_hand.values())
    assert got["phase"] == "backward"


@pytest.mark.parametrize("variant", ["fp32", "ckpt+accum2"])
def test_fake_estimate_equals_the_same_step_on_real_tensors(unet_step, variant):
    """The Trainer's step counted under FakeTensorMode and on real CPU tensors: the same bytes in
    every category, to the byte (MemTracker sees the same operations and output storages)."""
    fake, real = unet_step(32, variant, fake=True), unet_step(32, variant, fake=False)
    keys = ["total", "phase", *mem.CATEGORIES.values(), "parameters", "opt_state_bytes"]
    assert {k: fake[k] for k in keys} == {k: real[k] for k in keys}


def test_persistent_tensors_of_the_trainer_step(unet_step):
    """params, Adam's state and the EMA are what the network's size says (fused Adam: nothing else in
    the optimizer column; the EMA copy also holds the buffers and AveragedModel's int64 count)."""
    r = unet_step(16, "fp32")
    cfg = mem.config_for(UNET, 16)
    from scoresde.run import build_model, build_sde
    net = build_model(cfg, build_sde(cfg), (1, 8, 8)).net
    params = list(net.parameters())
    P = F32 * sum(p.numel() for p in params)
    assert r["parameters"] == P // F32
    assert r["params"] == P
    assert r["opt_state"] == r["opt_state_bytes"] == 2 * P + F32 * len(params)
    assert r["ema"] == P + sum(b.numel() * b.element_size() for b in net.buffers()) + 8


def test_activations_are_affine_in_the_batch(unet_step):
    """In the Trainer's step activations scale with the batch up to three scalars that do not (the
    loss, backward()'s seed, the trainer's running loss sum): A(2B) - 2 A(B) = -3 x 4 bytes, exactly.
    (Below batch 8 the peak moves to later in the backward pass, where the weight gradients weigh
    more, and this stops holding.)"""
    a = {b: unet_step(b, "fp32")["activations"] for b in (8, 16, 32)}
    assert a[16] - 2 * a[8] == -3 * F32
    assert a[32] - 2 * a[16] == -3 * F32


@pytest.mark.parametrize("k", [2, 4])
def test_grad_accum_leaves_the_activations_of_a_micro_batch(unet_step, k):
    """train.grad_accum k at batch B peaks in the last micro-batch's backward with the activations of
    a plain step at batch B/k plus, exactly:
      - the rest of the step's batch: the micro-batches are views of it, (B - B/k) samples;
      - the rest of the data order: each step starts an epoch of the synthetic data set of B samples
        (BatchStream's randperm, int64), 8 (B - B/k) bytes more than at B/k;
      - one scalar: the detached sum of the earlier micro-batches' losses (accumulate's total).
    So activations fall k-fold (up to those). A measurement that ignores grad_accum has the
    activations of batch B instead and fails here."""
    B = 32
    plain_small, accum, plain = unet_step(B // k, "fp32"), unet_step(B, f"accum{k}"), unet_step(B, "fp32")
    rest = B - B // k
    assert accum["activations"] == plain_small["activations"] + rest * (SAMPLE_BYTES + 8) + F32
    assert accum["temp"] == plain_small["temp"]
    assert accum["grads"] == accum["params"]  # the earlier micro-batches' gradients, all there
    assert k * 0.95 < plain["activations"] / accum["activations"] <= k
    assert accum["total"] < plain["total"]


def test_checkpointing_lowers_the_activation_peak(unet_step):
    """train.checkpoint_activations on the U-Net's residual and attention blocks: the forward pass keeps
    only each block's inputs, so the activations at the peak fall well below the plain step's (to ~1/3
    at batch 32: the peak moves into the backward pass, where one block at a time is recomputed), and
    so does the total. A network whose blocks are not checkpointed gives the plain numbers and fails."""
    plain, ckpt = unet_step(32, "fp32"), unet_step(32, "ckpt")
    assert ckpt["activations"] < 0.5 * plain["activations"]
    assert ckpt["total"] < 0.8 * plain["total"]
    assert ckpt["params"] == plain["params"] and ckpt["opt_state"] == plain["opt_state"]
    both = unet_step(32, "ckpt+accum2")
    assert both["activations"] < 0.5 * unet_step(32, "accum2")["activations"]


def test_quick_run_writes_its_results(tmp_path):
    """As tests/test_benchmarks.py runs the other benchmarks; two of the five variants (together they
    take every path: checkpointing and accumulation), to keep this file's run short."""
    stem = "memory_cpu_quick"
    variants = ["fp32", "ckpt+accum2"]
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "memory.py"), "--quick", "--threads", "1",
                          "--variants", ",".join(variants), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=3 * HANG_TIMEOUT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    assert payload["environment"]["device"] == "cpu" and payload["quick"]
    rows = payload["rows"]
    assert [r["variant"] for r in rows] == variants and rows[0]["config"] == "digits_vp"
    for r in rows:
        e = r["estimate"]
        assert e["total"] == sum(e[c] for c in mem.CATEGORIES.values()) > 0
        assert r["fits"] is True
    md = (tmp_path / f"{stem}.md").read_text()
    assert md.count("|") > 10 and "fits" in md and "not the caching allocator" in md
    assert (tmp_path / f"{stem}.png").stat().st_size > 1000
    assert "| config |" in out.stdout
