"""The trainer's fast paths (scoresde/train_fast.py), each against the plain path it must equal:

1. ``train.grad_accum``: the accumulated gradient is one big batch's (same per-sample noise), for
   reduce "mean" and "sum"; under DDP one all-reduce per optimizer step (``no_sync``);
2. ``train.checkpoint_activations``: the same gradients (dropout included) with fewer saved
   activations, for the U-Net, NCSN++ / DDPM++ and DDPM; never under ``no_grad``;
3. ``train.fused_optimizer``: fused Adam steps as foreach Adam does, and checkpoints resume in
   the resuming run's kind;
4. ``train.channels_last``: the digits U-Net's loss and gradients as in the contiguous layout;
5. no host synchronisation inside a training step (only where the loop logs or checkpoints).

Every test is written against an independent computation (the DSM loss by hand, our own DDP comm
hook, saved-tensor hooks, a second trainer on the plain path).
"""
import copy
import json
import traceback
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist

from scoresde import nets, train_fast
from scoresde.config import ConfigError, from_dict
from scoresde.nets import checkpointing
from scoresde.train import Trainer, train

from conftest import tiny_run


def digits_raw(**train):
    """A tiny U-Net on 8x8 digits (one step of it takes milliseconds)."""
    return {"sde": {"type": "vp"}, "data": {"name": "digits", "n_train": 64},
            "model": {"name": "unet", "channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                      "attn_resolutions": [4], "dropout": 0.0, "num_groups": 4},
            "train": {"steps": 2, "batch_size": 8, "warmup": 1, "lr": 1e-3, "checkpoint_every": 100,
                      "log_every": 1, "device": "cpu", **train},
            "sample": {"num": 4, "steps": 2}}


def record_grads(trainer):
    """The gradients each optimizer step applies (after clipping), one dict per step."""
    seen = []
    trainer.opt.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append({n: p.grad.detach().clone() for n, p in trainer.net.named_parameters()
                                               if p.grad is not None}))
    return seen


def losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_close_dicts(a, b, **tol):
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m: f"{k}: {m}", **tol)


# ---- 1. gradient accumulation ---------------------------------------------------------------------

def big_batch_dsm(k):
    """dsm_loss (default weighting) on the whole batch in ONE forward pass, written out here, with the
    noise drawn as k micro-batches draw it: for each part in turn, its uniforms for t, then its z
    (dsm_loss's documented order). So the per-sample (t, z) equal the accumulating run's."""
    def loss(model, sde, x, *, generator, eps, likelihood_weighting, importance_sampling, reduce):
        assert not likelihood_weighting and not importance_sampling
        u, z = [], []
        for part in x.chunk(k):
            u.append(torch.rand(len(part), generator=generator, dtype=x.dtype))
            z.append(torch.randn(part.shape, generator=generator, dtype=x.dtype))
        u, z = torch.cat(u), torch.cat(z)
        t = eps + (sde.T - eps) * u
        alpha, sigma = sde.marginal_coeffs(t, x)
        alpha, sigma = alpha.view(-1, 1), sigma.view(-1, 1)
        sq = (sigma * model(alpha * x + sigma * z, t) + z) ** 2
        per_sample = sq.mean(1) if reduce == "mean" else sq.sum(1)
        return per_sample.mean()
    return loss


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("k", [2, 4])
def test_grad_accum_equals_one_big_batch(tmp_path, k, reduce):
    """k micro-batches of 64 / k: every step's gradient (as the optimizer sees it, clipped or not),
    the logged loss and the weights after the steps equal those of one 64-sample batch with the
    same per-sample noise; the data stream is where the plain run's is."""
    runs = {}
    for name, accum in (("accum", k), ("big", 1)):
        trainer = Trainer(from_dict(tiny_run(steps=3, grad_accum=accum, reduce=reduce, grad_clip=None,
                                             log_every=1, checkpoint_every=100)), str(tmp_path / name), progress=False)
        if name == "big":
            trainer.loss_fn = big_batch_dsm(k)
        grads = record_grads(trainer)
        trainer.fit()
        runs[name] = (trainer, grads)
    (acc, acc_grads), (big, big_grads) = runs["accum"], runs["big"]
    assert len(acc_grads) == len(big_grads) == 3
    for a, b in zip(acc_grads, big_grads):
        assert_close_dicts(a, b, rtol=1e-4, atol=1e-7)
    assert losses(tmp_path / "accum") == pytest.approx(losses(tmp_path / "big"), rel=1e-5)
    assert_close_dicts(dict(acc.net.named_parameters()), dict(big.net.named_parameters()), rtol=1e-4, atol=1e-6)
    assert acc.stream.state_dict()["position"] == big.stream.state_dict()["position"] == 3 * 64


def test_grad_accum_run_resumes_bit_identically(tmp_path):
    """The batch is drawn once per step and the micro-batches' noise from the step's generators: a
    run stopped after 2 steps and resumed ends where the uninterrupted one does, bit for bit."""
    from test_train import assert_same_checkpoint
    raw = lambda steps: from_dict(tiny_run(steps=steps, grad_accum=4, checkpoint_every=2))  # noqa: E731
    train(raw(4), str(tmp_path / "full"), progress=False)
    train(raw(2), str(tmp_path / "parts"), progress=False)
    train(raw(4), str(tmp_path / "parts"), resume=True, progress=False)
    assert_same_checkpoint(tmp_path / "full" / "checkpoints" / "ckpt_00000004",
                           tmp_path / "parts" / "checkpoints" / "ckpt_00000004")


def test_grad_accum_with_clipping_equals_one_big_batch(tmp_path):
    """With train.grad_clip the (scaled) clipped gradient is the big batch's clipped gradient: the
    clip sees the whole step's gradient, not a micro-batch's."""
    grads = {}
    for name, accum in (("accum", 4), ("big", 1)):
        trainer = Trainer(from_dict(tiny_run(steps=2, grad_accum=accum, grad_clip=0.05, checkpoint_every=100)),
                          str(tmp_path / name), progress=False)
        if name == "big":
            trainer.loss_fn = big_batch_dsm(4)
        grads[name] = record_grads(trainer)
        trainer.fit()
    for a, b in zip(grads["accum"], grads["big"]):
        norm = torch.sqrt(sum(g.double().pow(2).sum() for g in a.values()))
        assert norm == pytest.approx(0.05, rel=1e-4)  # clipped (the raw norm is far above 0.05)
        assert_close_dicts(a, b, rtol=1e-4, atol=1e-7)


def test_grad_accum_with_labels_splits_images_and_labels_alike(tmp_path):
    """A class-conditional run: micro-batch i holds images and labels i B/k .. (i + 1) B/k - 1."""
    raw = digits_raw(steps=1, grad_accum=2, label_dropout=0.0)
    raw["model"]["num_classes"] = 10
    trainer = Trainer(from_dict(raw), str(tmp_path), progress=False)
    seen, real = [], trainer.loss_fn

    def recording(model, sde, x, *, y, **kwargs):
        seen.append((x.clone(), y.clone()))
        return real(model, sde, x, y=y, **kwargs)

    trainer.loss_fn = recording
    trainer.fit()
    x, y = next(fresh_stream(trainer))
    assert len(seen) == 2 and all(len(s[0]) == 4 for s in seen)
    assert torch.equal(torch.cat([s[0] for s in seen]), x) and torch.equal(torch.cat([s[1] for s in seen]), y)


def fresh_stream(trainer):
    """A fresh copy of the trainer's data stream, at its start."""
    from scoresde.data import BatchStream
    t = trainer.cfg.train
    return BatchStream(trainer.dataset, t.batch_size, seed=t.seed, flip=trainer.cfg.data.flip,
                       labels=trainer.num_classes > 0)


@contextmanager
def process_group_of_one():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_grad_accum_under_ddp_all_reduces_once_per_step(tmp_path):
    """A real DDP wrapper (gloo, one process) with our own comm hook counting the gradient
    all-reduces: with 4 micro-batches there are as many as with one (the first three run in
    no_sync), and the gradients are those of the same accumulating run without DDP."""
    from torch.nn.parallel import DistributedDataParallel
    grads, calls = {}, {}
    with process_group_of_one():
        for name, k in (("ddp1", 1), ("ddp4", 4), ("plain4", 4)):
            trainer = Trainer(from_dict(tiny_run(steps=2, grad_accum=k, grad_clip=None, checkpoint_every=100)),
                              str(tmp_path / name), progress=False)
            count = calls.setdefault(name, [])
            if name.startswith("ddp"):
                trainer.train_model = trainer.ddp = DistributedDataParallel(trainer.model, bucket_cap_mb=1)

                def hook(state, bucket, count=count):
                    count.append(1)
                    fut = torch.futures.Future()
                    fut.set_result(bucket.buffer())  # one process: the average is the gradient itself
                    return fut

                trainer.ddp.register_comm_hook(None, hook)
            grads[name] = record_grads(trainer)
            trainer.fit()
    assert len(calls["ddp1"]) >= 2  # at least one bucket per step
    assert len(calls["ddp4"]) == len(calls["ddp1"])
    assert len(grads["ddp4"]) == len(grads["plain4"]) == 2
    for a, b in zip(grads["ddp4"], grads["plain4"]):
        assert_close_dicts(a, b, rtol=1e-6, atol=1e-8)


def test_grad_accum_must_divide_the_batch():
    for bad in (0, 3, 65):
        with pytest.raises(ConfigError, match=r"train\.grad_accum: expected a positive integer dividing "
                                              r"train\.batch_size \(64\)"):
            from_dict(tiny_run(grad_accum=bad))
    # per process: 64 over 4 processes is 16, which 32 does not divide
    with pytest.raises(ValueError, match=r"train\.grad_accum: .*batch per process \(16"):
        train_fast.check_grad_accum(64 // 4, 32)
    train_fast.check_grad_accum(16, 16)


# ---- 2. activation checkpointing ------------------------------------------------------------------

NETWORKS = {
    "unet": dict(name="unet", kwargs=dict(channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                                          num_groups=4)),
    "ddpmpp": dict(name="ncsnpp", kwargs=dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                                              resblock_type="ddpm")),
    "ncsnpp": dict(name="ncsnpp", kwargs=dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                                              resblock_type="biggan", fir=True, progressive="output_skip",
                                              progressive_input="residual", embedding_type="fourier")),
    "ddpm": dict(name="ddpm", kwargs=dict(nf=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,))),
    # diffusers' UNet2DModel (its own checkpointing, switched by enable_checkpointing): dropout is
    # its config key, not the net's
    "diffusers_unet2d": dict(name="diffusers_unet2d", kwargs=dict(unet=dict(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")))),
}


#: the residual and attention blocks of the networks, by class name (what must be checkpointed);
#: in diffusers' UNet2DModel, the down, middle and up blocks that hold its ResnetBlock2Ds
BLOCKS = ("ResBlock", "AttnBlock", "ResnetBlockDDPM", "ResnetBlockBigGAN", "DownBlock2D", "AttnDownBlock2D",
          "UNetMidBlock2D", "AttnUpBlock2D", "UpBlock2D")


#: saved activations with checkpointing / without, at most: ours measure about 0.2; diffusers' blocks
#: checkpoint their ResnetBlock2Ds but not their attentions, 0.47 here
SAVED_AT_MOST = {"diffusers_unet2d": 0.6}


def build(kind, dropout):
    """A tiny network of ``kind`` in training mode, its weights perturbed: at initialisation the
    zero output layers would make most gradients zero, and the comparison vacuous."""
    spec = NETWORKS[kind]
    torch.manual_seed(0)
    kwargs = copy.deepcopy(spec["kwargs"])
    if kind == "diffusers_unet2d":
        kwargs["unet"]["dropout"] = dropout
    else:
        kwargs["dropout"] = dropout
    net = nets.build_net(spec["name"], (3, 8, 8), **kwargs).train()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def forward_backward(net, x, c, w):
    """Output, parameter gradients and the bytes of the distinct tensors autograd saved."""
    saved = {}

    def pack(t):
        saved[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    net.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # dropout
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x, c)
    (out * w).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}, sum(saved.values())


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_checkpointing_gives_the_same_gradients_and_saves_less(kind):
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    c = 0.1 + 0.8 * torch.rand(4, generator=g)
    for dropout in (0.0, 0.3):
        plain = build(kind, dropout)
        ckpt = copy.deepcopy(plain)
        n_blocks = nets.enable_checkpointing(ckpt)
        assert n_blocks == sum(type(m).__name__ in BLOCKS for m in ckpt.modules()) >= 5
        out_a, grads_a, bytes_a = forward_backward(plain, x, c, w)
        out_b, grads_b, bytes_b = forward_backward(ckpt, x, c, w)
        torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
        assert_close_dicts(grads_b, grads_a, rtol=1e-5, atol=1e-6)
        assert len(grads_a) == len([p for p in plain.parameters() if p.requires_grad])
        assert all(g.abs().max() > 0 for g in grads_a.values())
        assert bytes_b < SAVED_AT_MOST.get(kind, 0.35) * bytes_a, (bytes_b, bytes_a)


def test_checkpointing_only_where_grad_is_recorded(monkeypatch):
    """Each block goes through torch.utils.checkpoint (non-reentrant) once per forward with grad;
    never under no_grad (sampling), and not at all when switched off."""
    calls = []
    real = checkpointing.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "checkpoint", counting)
    net = build("unet", 0.1)
    x, c = torch.randn(2, 3, 8, 8), torch.rand(2)
    n_blocks = nets.enable_checkpointing(net)
    net(x, c).sum().backward()
    assert calls == [False] * n_blocks
    calls.clear()
    with torch.no_grad():
        net(x, c)
    assert calls == []
    assert nets.enable_checkpointing(net, False) == n_blocks
    net(x, c).sum().backward()
    assert calls == []


def test_trainer_checkpoints_the_trained_network_only(tmp_path):
    """train.checkpoint_activations: the trained U-Net's blocks are switched on (its EMA copy's are
    not), and two steps with dropout give the weights of the run without it."""
    params = {}
    for on in (True, False):
        raw = digits_raw(checkpoint_activations=on)
        raw["model"]["dropout"] = 0.2
        trainer = Trainer(from_dict(raw), str(tmp_path / str(on)), progress=False)
        flags = [m.checkpoint_activations for m in trainer.net.modules() if isinstance(m, checkpointing.Checkpointed)]
        assert flags and all(f == on for f in flags)
        assert not any(m.checkpoint_activations for m in trainer.ema.module.modules()
                       if isinstance(m, checkpointing.Checkpointed))
        trainer.fit()
        params[on] = dict(trainer.net.named_parameters())
    assert_close_dicts(params[True], params[False], rtol=1e-5, atol=1e-7)


def test_checkpoint_activations_needs_blocks():
    with pytest.raises(ConfigError, match=r"train\.checkpoint_activations: expected false for model\.name 'mlp'"):
        from_dict(tiny_run(checkpoint_activations=True))


# ---- 3. fused Adam --------------------------------------------------------------------------------

def test_fused_adam_steps_as_foreach_adam(tmp_path):
    if not train_fast.fused_adam_supported("cpu"):  # this torch has none: the config says so
        with pytest.raises(ConfigError, match=r"train\.fused_optimizer: expected false or null"):
            from_dict(tiny_run(fused_optimizer=True, device="cpu"))
        return
    runs = {}
    for fused in (True, False, None):
        trainer = Trainer(from_dict(tiny_run(steps=6, fused_optimizer=fused, device="cpu", checkpoint_every=100)),
                          str(tmp_path / str(fused)), progress=False)
        group = trainer.opt.param_groups[0]
        assert (bool(group["fused"]), bool(group["foreach"])) == ((True, False) if fused else (False, True))  # None: foreach on CPU
        trainer.fit()
        runs[fused] = trainer
    for a, b in ((runs[True].net, runs[False].net), (runs[True].ema.module, runs[False].ema.module)):
        assert_close_dicts(dict(a.named_parameters()), dict(b.named_parameters()), rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not train_fast.fused_adam_supported("cpu"), reason="asserted by test_fused_adam_steps_as_foreach_adam")
@pytest.mark.parametrize("first", [True, False], ids=["fused-then-fused", "foreach-then-fused"])
def test_fused_adam_checkpoints_resume(tmp_path, first):
    """Stopped after 3 steps and resumed with fused Adam: the resumed optimizer is fused (whatever
    saved the checkpoint) and ends where the uninterrupted fused run does."""
    full = tmp_path / "full"
    train(from_dict(tiny_run(steps=6, fused_optimizer=True, checkpoint_every=3)), str(full), progress=False)
    parts = tmp_path / "parts"
    train(from_dict(tiny_run(steps=3, fused_optimizer=first, checkpoint_every=3)), str(parts), progress=False)
    trainer = Trainer(from_dict(tiny_run(steps=6, fused_optimizer=True, checkpoint_every=3)), str(parts), progress=False)
    trainer.fit(resume=True)
    assert trainer.opt.param_groups[0]["fused"] is True and not trainer.opt.param_groups[0]["foreach"]
    from test_train import tensors_of
    a, b = tensors_of(str(full / "checkpoints" / "ckpt_00000006")), tensors_of(str(parts / "checkpoints" / "ckpt_00000006"))
    assert a.keys() == b.keys() and a["optimizer"].keys() == b["optimizer"].keys()
    for group in ("model", "ema", "optimizer"):
        if first:  # the same kernels all along: bit for bit
            assert all(torch.equal(a[group][k], b[group][k]) for k in a[group]), group
        else:
            assert_close_dicts(a[group], b[group], rtol=1e-5, atol=1e-7)


def test_fused_optimizer_where_unsupported_is_a_clear_error(monkeypatch):
    """Where this torch has no fused Adam (simulated): the config check names the key for an explicit
    device, the trainer's optimizer for the resolved one; null falls back to foreach."""
    monkeypatch.setattr(train_fast, "fused_adam_supported", lambda device_type: False)
    with pytest.raises(ConfigError, match=r"train\.fused_optimizer: expected false or null: this torch .* "
                                          r"has no fused Adam on train\.device 'cpu'"):
        from_dict(tiny_run(fused_optimizer=True, device="cpu"))
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match=r"train\.fused_optimizer: expected false or null"):
        train_fast.build_optimizer(params, 1e-3, True, torch.device("cpu"))
    for fused in (None, False):
        opt = train_fast.build_optimizer(params, 1e-3, fused, torch.device("cpu"))
        assert not opt.param_groups[0]["fused"] and opt.param_groups[0]["foreach"]


# ---- 4. channels_last -----------------------------------------------------------------------------

def test_channels_last_same_loss_and_gradients(tmp_path):
    runs = {}
    for on in (True, False):
        trainer = Trainer(from_dict(digits_raw(steps=3, channels_last=on, grad_clip=None)), str(tmp_path / str(on)),
                          progress=False)
        block = trainer.net.down[0][0]  # a ResBlock 8 -> 8 channels: its activations' layout
        layouts = []
        block.conv1.register_forward_hook(lambda m, args, out: layouts.append(
            out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()))
        grads = record_grads(trainer)
        trainer.fit()
        conv = trainer.net.up[0][0].conv2.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == on and conv.is_contiguous() != on
        assert layouts and all(v == on for v in layouts)
        runs[on] = (grads, losses(tmp_path / str(on)), dict(trainer.net.named_parameters()))
    (ga, la, pa), (gb, lb, pb) = runs[True], runs[False]
    assert la == pytest.approx(lb, rel=1e-5)
    for a, b in zip(ga, gb):
        assert_close_dicts(a, b, rtol=1e-4, atol=1e-6)
    assert_close_dicts(pa, pb, rtol=1e-5, atol=1e-6)
    # its checkpoint loads into the plain layout
    from scoresde import load
    assert load(str(tmp_path / "True")).step == 3


def test_channels_last_needs_image_data():
    with pytest.raises(ConfigError, match=r"train\.channels_last: expected false for data\.name 'checkerboard'"):
        from_dict(tiny_run(channels_last=True))


# ---- 5. no host synchronisation in a training step ------------------------------------------------

SYNCS = ("item", "__float__", "__int__", "__bool__", "tolist", "cpu", "numpy")
#: host reads made only of CPU tensors by design, skipped for accelerator tensors (so no device sync
#: on a GPU; the CUDA variant below checks that): SDE.time's range check of a CPU t
CPU_ONLY_CHECKS = {("sde.py", "time")}

FAST_CASES = {
    "mlp-clip-ema-accum": (tiny_run, dict(grad_clip=1.0, grad_accum=2)),
    "mlp-fused": (tiny_run, dict(fused_optimizer=True)),
    "unet-checkpointed-accum-dropout": (digits_raw, dict(grad_accum=2, checkpoint_activations=True, grad_clip=1.0)),
    "unet-conditional-labels": (digits_raw, dict(label_dropout=0.2, grad_accum=2)),
}


def fast_cfg(case, **extra):
    make, train_keys = FAST_CASES[case]
    raw = make(steps=8, log_every=4, checkpoint_every=8, **train_keys, **extra)
    if make is digits_raw:
        raw["model"]["dropout"] = 0.1
        if "label_dropout" in train_keys:
            raw["model"]["num_classes"] = 10
    return from_dict(raw)


def allow_inside(trainer, name, state):
    real = getattr(trainer, name)

    def allowed(*args, **kwargs):
        state["allowed"] += 1
        try:
            return real(*args, **kwargs)
        finally:
            state["allowed"] -= 1
    setattr(trainer, name, allowed)


@pytest.mark.parametrize("case", list(FAST_CASES))
def test_no_host_sync_between_log_steps(tmp_path, monkeypatch, case):
    """Tensor -> Python conversions (item, float, int, bool, tolist, cpu, numpy) are counted: inside a
    step there must be none, only in the log report and the checkpoint. Allowed as on the host by
    design: the foreach Adam's ``step`` counters (torch keeps them on the CPU for a CUDA model)."""
    if "fused" in case and not train_fast.fused_adam_supported("cpu"):
        case = "mlp-clip-ema-accum"
    trainer = Trainer(fast_cfg(case, device="cpu"), str(tmp_path), progress=False)
    state = {"allowed": 0, "seen_allowed": 0, "cpu_only": 0, "bad": []}
    for name in ("_report", "save"):
        allow_inside(trainer, name, state)
    host_steps = lambda: [st.get("step") for st in trainer.opt.state.values()]  # noqa: E731

    def patch(name):
        real = getattr(torch.Tensor, name)

        def guarded(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if state["allowed"]:
                state["seen_allowed"] += 1
            elif self.device.type == "cpu" and (caller.filename.rsplit("/", 1)[-1], caller.name) in CPU_ONLY_CHECKS:
                state["cpu_only"] += 1
            elif not (trainer.opt.param_groups[0]["foreach"] and any(self is s for s in host_steps())):
                frames = traceback.extract_stack(limit=4)[:-1]
                state["bad"].append(f"{name} (step {trainer.step}) from " + " <- ".join(
                    f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in reversed(frames)))
            return real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, guarded)

    for name in SYNCS:
        patch(name)
    trainer.fit()
    monkeypatch.undo()
    assert trainer.step == 8
    assert state["bad"] == [], "\n".join(sorted(set(state["bad"])))
    assert state["seen_allowed"] >= 2  # the patch works: the two log reports read the loss


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only (the CPU variant above always runs)")
@pytest.mark.parametrize("case", list(FAST_CASES))
def test_no_cuda_sync_between_log_steps(tmp_path, case):
    """On a GPU: torch's own sync detector raises on any synchronising call outside the log report
    and the checkpoint."""
    trainer = Trainer(fast_cfg(case, device="cuda"), str(tmp_path), progress=False)
    for name in ("_report", "save"):
        real = getattr(trainer, name)

        def relaxed(*args, real=real, **kwargs):
            torch.cuda.set_sync_debug_mode("default")
            try:
                return real(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        setattr(trainer, name, relaxed)
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.step == 8
