"""Training end to end on a tiny model: exact resume, checkpoints, loading, DDP under torchrun."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import scoresde
from scoresde import io
from scoresde.config import from_dict
from scoresde.train import Trainer, TrainingError, train

from conftest import TINY_RUN as TINY, tiny_run, torchrun


def tiny(**train_overrides):
    return from_dict(tiny_run(**train_overrides))


def tensors_of(path):
    meta, tensors = io.load_checkpoint(path)
    return tensors


def assert_same_checkpoint(a, b):
    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys()
    for group in ta:
        assert ta[group].keys() == tb[group].keys(), group
        for k in ta[group]:
            assert torch.equal(ta[group][k], tb[group][k]), f"{group}.{k} differs"


def test_resume_is_bit_identical(tmp_path):
    """Stopping after 10 and after 20 steps and resuming gives the weights, EMA and optimizer state
    of an uninterrupted 30-step run, bit for bit (CPU)."""
    full = tmp_path / "full"
    train(tiny(), str(full), progress=False)
    parts = tmp_path / "parts"
    train(tiny(steps=10), str(parts), progress=False)
    train(tiny(steps=20), str(parts), resume=True, progress=False)
    train(tiny(), str(parts), resume=True, progress=False)
    for step in (10, 20, 30):
        assert_same_checkpoint(full / "checkpoints" / f"ckpt_{step:08d}", parts / "checkpoints" / f"ckpt_{step:08d}")
    # the metrics log has one record per logged step, even across resumes
    steps = [json.loads(line)["step"] for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 30


def test_resume_when_complete_does_nothing_and_without_checkpoint_starts_fresh(tmp_path):
    run = tmp_path / "run"
    assert train(tiny(steps=10), str(run), resume=True, progress=False)["status"] == "complete"
    before = sorted(os.listdir(run / "checkpoints"))
    assert train(tiny(steps=10), str(run), resume=True, progress=False)["status"] == "already complete"
    assert sorted(os.listdir(run / "checkpoints")) == before


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny(steps=20), str(run), progress=False)
    newest = run / "checkpoints" / "ckpt_00000020"
    (newest / "model.safetensors").write_bytes(b"\x00garbage")
    trainer = Trainer(tiny(steps=20), str(run), progress=False)
    trainer.fit(resume=True)  # resumes from step 10 and redoes 11..20
    assert trainer.step == 20
    ref = tmp_path / "ref"
    train(tiny(steps=20), str(ref), progress=False)
    assert_same_checkpoint(ref / "checkpoints" / "ckpt_00000020", newest)


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    train(tiny(steps=10), str(tmp_path), progress=False)
    ckpt = tmp_path / "checkpoints" / "ckpt_00000010"
    assert sorted(os.listdir(ckpt)) == ["ema.safetensors", "meta.json", "model.safetensors",
                                        "optimizer.safetensors", "state.safetensors"]
    for f in ckpt.glob("*.safetensors"):
        load_file(str(f))
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 10 and meta["config"]["train"]["seed"] == 3
    assert not list(tmp_path.glob("checkpoints/.*"))  # no temporary leftovers


def test_load_returns_ema_weights_in_eval_mode(tmp_path):
    train(tiny(), str(tmp_path), progress=False)
    run = scoresde.load(str(tmp_path))
    assert run.step == 30 and not run.net.training
    ema = load_file(str(tmp_path / "checkpoints" / "ckpt_00000030" / "ema.safetensors"))
    for k, v in run.net.state_dict().items():
        assert torch.equal(v, ema[k])
    x = torch.randn(5, 2)
    s = run.score_fn(x, torch.full((5,), 0.5))
    assert s.shape == x.shape and torch.isfinite(s).all()
    assert isinstance(run.sde, scoresde.VPSDE) and run.config.model["hidden"] == 32
    # a single checkpoint directory loads too
    assert scoresde.load(str(tmp_path / "checkpoints" / "ckpt_00000020")).step == 20


def test_training_reduces_the_loss(tmp_path):
    train(tiny(steps=300, checkpoint_every=300, log_every=50, lr=3e-3), str(tmp_path), progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.8 * losses[0], losses


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """From step 25 on the loss is NaN: training stops at the next log point with a clear error,
    writes no checkpoint after the divergence, and the ones before stay finite and readable."""
    trainer = Trainer(tiny(steps=40, checkpoint_every=10, log_every=10), str(tmp_path), progress=False)
    real, calls = trainer.loss_fn, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > 25 else loss

    trainer.loss_fn = poisoned
    with pytest.raises(TrainingError, match="loss became nan"):
        trainer.fit()
    steps = [s for s, _ in io.list_checkpoints(str(tmp_path / "checkpoints"))]
    assert steps == [20, 10]
    for group in tensors_of(str(tmp_path / "checkpoints" / "ckpt_00000020")).values():
        assert all(torch.isfinite(v).all() for v in group.values() if v.is_floating_point())


DDP_WORKER = r"""
import sys, torch, torch.distributed as dist
from scoresde.config import from_dict
from scoresde.train import Trainer
import json
cfg = from_dict(json.loads(sys.argv[1]))
t = Trainer(cfg, sys.argv[2], progress=False)
t.fit()
flat = torch.cat([p.detach().flatten() for p in t.net.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
if dist.get_rank() == 0:
    same = all(torch.equal(gathered[0], g) for g in gathered[1:])
    print("RESULT", json.dumps({"world": dist.get_world_size(), "identical": same, "step": t.step}), flush=True)
dist.barrier()  # neither rank tears gloo down while the other may still be using it
dist.destroy_process_group()
"""


def test_torchrun_two_processes_keep_identical_weights(tmp_path):
    out = torchrun(tmp_path, DDP_WORKER, tiny_run(steps=8, checkpoint_every=4, log_every=4))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT", 1)[1].strip().splitlines()[0])
    assert result == {"world": 2, "identical": True, "step": 8}
    assert (tmp_path / "run" / "checkpoints" / "ckpt_00000008").is_dir()


def test_snapshots_are_written(tmp_path):
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(steps=10, snapshot_every=5)
    train(from_dict(raw), str(tmp_path), progress=False)
    shots = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert shots == ["step_00000005.png", "step_00000010.png"]
    assert all((tmp_path / "snapshots" / s).stat().st_size > 0 for s in shots)


def test_uncentered_images_train_on_unit_interval(tmp_path):
    """data.centered: false puts images on [0, 1]; the run records that range and loading keeps it."""
    raw = {"sde": {"type": "vp"}, "data": {"name": "digits", "centered": False},
           "model": {"name": "unet", "channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                     "attn_resolutions": [], "dropout": 0.0},
           "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "log_every": 1}}
    trainer = Trainer(from_dict(raw), str(tmp_path), progress=False)
    assert trainer.dataset.data_range == (0.0, 1.0)
    assert trainer.dataset.data.min() >= 0 and trainer.dataset.data.max() <= 1
    trainer.fit()
    assert scoresde.load(str(tmp_path)).data_range == (0.0, 1.0)
