"""The training loop: denoising score matching with Adam, warmup, clipping, an EMA of the weights,
atomic checkpoints that resume exactly, JSONL metrics, and data parallelism with torch DDP.

Exact resumption without saving RNG streams: all randomness of step s (diffusion times, noise,
dropout) comes from generators seeded by (seed, rank, s), and the data order from a BatchStream
whose position is saved. So a run stopped after step s and resumed computes bit-for-bit the same
steps s+1, s+2, ... as one that never stopped (on CPU; GPU kernels may be non-deterministic).

Data parallelism: under ``torchrun`` every rank draws the same global batch from the stream and
trains on its own slice ``batch[rank::world]``; DDP averages the gradients, so the weights stay
identical on all ranks. Rank 0 writes checkpoints, metrics and snapshots.

What is trained (``train.objective``): a score model by ``train.loss`` (with ``model.num_classes`` > 0 a
class-conditional one, on (image, label) batches whose labels are replaced by the null class with
probability ``train.label_dropout``, drawn from the step's generator: classifier-free guidance), or a
time-dependent classifier by ``noisy_classifier_loss`` (classifier guidance). The loop, EMA,
checkpoints, resume and DDP are the same for both.

Speed and memory switches (``scoresde.train_fast``), each computing what the plain loop computes:
``train.amp``, ``train.compile``, ``train.grad_accum``, ``train.checkpoint_activations``,
``train.fused_optimizer``, ``train.channels_last``. A training step never waits for the device:
the host reads a tensor only to log (every ``train.log_every`` steps), checkpoint and snapshot.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import io, train_fast as fast
from .config import Config, save_config
from .data import BatchStream
from .losses import LOSSES, drop_labels, noisy_classifier_loss
from .resume import FROZEN, frozen_part
from .run import build_model, build_sde, load_data, resolve_device
from .score import ScoreModel


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the last good checkpoint is kept."""


def lr_factor(step: int, t) -> float:
    """Linear warmup over ``t.warmup`` steps, then constant or a cosine decay to 0 at ``t.steps``."""
    if t.warmup and step < t.warmup:
        return (step + 1) / t.warmup
    if t.lr_schedule == "cosine":
        span = max(t.steps - t.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - t.warmup, span) / span))
    return 1.0


# ---- distributed -------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def init_distributed(device_name: str) -> Dist:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
        # a peer that hangs (rather than dies, which torchrun's agent handles) fails every
        # collective after this many seconds instead of the backend's default 30 minutes
        timeout = datetime.timedelta(seconds=float(os.environ.get("SCORESDE_DIST_TIMEOUT", "600")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# ---- the trainer ---------------------------------------------------------------------------------

class Trainer:
    """One training run in ``workdir``: ``Trainer(cfg, workdir).fit(resume=...)``."""

    def __init__(self, cfg: Config, workdir: str, progress: bool = True, log: Optional[Callable[[str], None]] = None):
        self.cfg, self.workdir, self.progress = cfg, workdir, progress
        # where "resuming from ckpt_... (step N)" / "starting fresh" go: print unless quiet (the CLI
        # passes print, so that --quiet hides the bar but not which checkpoint a run continues)
        self.log = log if log is not None else (print if progress else (lambda line: None))
        self.ckpt_dir = os.path.join(workdir, "checkpoints")
        self.dist = init_distributed(cfg.train.device)
        self.device = resolve_device(cfg.train.device, self.dist.local_rank, what="train.device")
        t = cfg.train
        if t.batch_size % self.dist.world:
            raise ValueError(f"train.batch_size ({t.batch_size}) must be divisible by the number of processes ({self.dist.world})")
        fast.check_grad_accum(t.batch_size // self.dist.world, t.grad_accum)
        self.dataset = load_data(cfg, "train", n=cfg.data.n_train, generator=torch.Generator().manual_seed(t.seed))
        self.sde = build_sde(cfg)
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = build_model(cfg, self.sde, self.dataset.shape).to(self.device)
        self.net = self.model.net
        # holds the EMA's weights and count (what checkpoints store); the loop updates them with
        # fast.EMAUpdate, never with AveragedModel.update_parameters (a re-grouping and a host read per step)
        self.ema = AveragedModel(self.net, use_buffers=True)
        fast.prepare_networks(self.net, self.ema.module, t, cfg.model["name"], self.dataset.is_image)
        self._ema_step = fast.EMAUpdate(self.ema, self.net)
        self.opt = fast.build_optimizer(self.net.parameters(), t.lr, t.fused_optimizer, self.device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, t))
        # labels travel with the images for a conditional score model and for a classifier (the
        # config checks guarantee the data set has them, and load_data that a folder has num_classes)
        self.num_classes = self.model.num_classes
        self.stream = BatchStream(self.dataset, t.batch_size, seed=t.seed, flip=cfg.data.flip,
                                  labels=self.num_classes > 0)
        # what each label means, saved with the checkpoints (scoresde.load(...).class_names)
        names = self.dataset.class_names if self.num_classes > 0 else None
        self.class_names = list(names) if names is not None else None
        self.step = 0
        self.train_model, self.ddp = self.model, None
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.train_model = self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if t.compile:
            mode = None if t.compile_mode == "default" else t.compile_mode
            self.train_model = torch.compile(self.train_model, mode=mode)
        self.loss_fn = noisy_classifier_loss if t.objective == "classifier" else LOSSES[t.loss]
        if t.objective == "classifier":
            self.loss_kwargs = dict(eps=t.eps)
        elif t.loss == "dsm":
            self.loss_kwargs = dict(eps=t.eps, likelihood_weighting=t.likelihood_weighting,
                                    importance_sampling=t.importance_sampling, reduce=t.reduce)
        else:
            self.loss_kwargs = dict(reduce=t.reduce)
        self.noise = torch.Generator(device=self.device)
        self._stop_signal = None

    def _ema_decay(self) -> float:
        """EMA with the usual warmup, decay_s = min(decay, (1 + s) / (10 + s)): early on, the average
        must not be dominated by the (zero-output) initial network. From the host step counter, so
        the update needs no device sync (the loop applies it with ``fast.EMAUpdate``)."""
        return min(self.cfg.train.ema_decay, (1 + self.step) / (10 + self.step))

    # -- state ---------------------------------------------------------------------------------
    def _seed_step(self, step: int) -> None:
        seed = ((self.cfg.train.seed * 65536 + self.dist.rank) * 2 ** 31 + step) % 2 ** 63
        self.noise.manual_seed(seed)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global generator

    def save(self) -> Optional[str]:
        if not self.dist.main:
            return None
        opt_tensors, opt_meta = fast.optimizer_tensors(self.opt)
        stream_state = self.stream.state_dict()
        stream_tensors = {k: v for k, v in stream_state.items() if torch.is_tensor(v)}
        stream_meta = {k: v for k, v in stream_state.items() if not torch.is_tensor(v)}
        tensors = {
            "model": self.net.state_dict(),
            "ema": self.ema.module.state_dict(),
            "optimizer": opt_tensors,
            "state": dict({"ema.n_averaged": self.ema.n_averaged.detach().cpu()},
                          **{f"stream.{k}": v for k, v in stream_tensors.items()}),
        }
        meta = {"config": self.cfg.to_dict(), "data_shape": list(self.dataset.shape),
                "data_range": list(self.dataset.data_range), "class_names": self.class_names, "optimizer": opt_meta,
                "scheduler": self.sched.state_dict(), "stream": stream_meta}
        return io.save_checkpoint(self.ckpt_dir, self.step, tensors, meta, keep=self.cfg.train.keep_checkpoints)

    def restore(self, meta: dict, tensors: dict, path: str) -> None:
        saved, current = meta.get("config"), self.cfg.to_dict()
        saved_train = saved.get("train") if isinstance(saved, dict) else None
        objective = saved_train.get("objective", "score") if isinstance(saved_train, dict) else "score"
        if objective != current["train"]["objective"]:  # a score network and a classifier share no weights
            raise io.CheckpointError(f"{path}: trained with train.objective {objective!r}, this run's is "
                                     f"{current['train']['objective']!r}")
        # train.* may change between runs (e.g. more steps); what the weights and the saved data
        # stream were made from may not (see FROZEN)
        for section in FROZEN:
            got = saved.get(section) if isinstance(saved, dict) else None
            if frozen_part(section, got) != frozen_part(section, current[section]):
                raise io.CheckpointError(f"{path}: its {section} config {got!r} differs from this run's "
                                         f"{current[section]!r}")
        saved_names, names = meta.get("class_names"), self.class_names or []
        if saved_names is not None and saved_names != names:
            # data.root may change between runs: each label must still be the class it was trained on
            k = next((i for i, (a, b) in enumerate(zip(saved_names, names)) if a != b),
                     min(len(saved_names), len(names)))
            was, now = (repr(v[k]) if k < len(v) else "none" for v in (saved_names, names))
            raise io.CheckpointError(f"{path}: trained on {len(saved_names)} classes, this run's data has "
                                     f"{len(names)}, and label {k} was class {was}, is {now}")
        try:
            self.net.load_state_dict(tensors["model"])
            self.ema.module.load_state_dict(tensors["ema"])
            self.ema.n_averaged.copy_(tensors["state"]["ema.n_averaged"])
            self._ema_step.count = int(self.ema.n_averaged)
            fast.load_optimizer(self.opt, tensors["optimizer"], meta["optimizer"])
            self.sched.load_state_dict(meta["scheduler"])
            stream_state = dict(meta["stream"])
            stream_state.update({k[len("stream."):]: v for k, v in tensors["state"].items() if k.startswith("stream.")})
            self.stream.load_state_dict(stream_state)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise io.CheckpointError(f"{path}: does not match this run's model and optimizer ({' '.join(str(e).split())[:300]})") from None
        self.step = meta["step"]

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        t = self.cfg.train
        if self.dist.main:
            # before choosing where to resume: this also puts back a checkpoint a kill left swapped out
            io.remove_temporaries(self.ckpt_dir)
        self.dist.barrier()
        if resume:
            skipped: list = []
            found = io.newest_checkpoint(self.ckpt_dir, skipped)
            if found is None and skipped:
                # starting over would overwrite what may be the only copy of a long run
                raise io.CheckpointError(f"{self.ckpt_dir}: none of the {len(skipped)} checkpoint(s) is readable "
                                         f"(newest: {skipped[0]}); not starting over in this workdir")
            if self.dist.main:
                for reason in skipped:
                    print(f"warning: skipped a damaged checkpoint: {reason}", file=sys.stderr)
            if found is not None:
                self.restore(*found)
                if self.dist.main:
                    self.log(f"resuming from {found[2]} (step {self.step})")
            elif self.dist.main:
                self.log(f"no checkpoint in {self.ckpt_dir}: starting fresh")
        if self.dist.main:
            os.makedirs(self.workdir, exist_ok=True)
            save_config(self.cfg, os.path.join(self.workdir, "config.yaml"))
            self._trim_metrics()
        if self.step >= t.steps:
            return {"step": self.step, "status": "already complete"}
        writer = self._tensorboard()
        self._install_signal_handlers()
        bar = tqdm(total=t.steps, initial=self.step, desc="train", disable=not (self.progress and self.dist.main))
        running = torch.zeros((), device=self.device)
        count, since = 0, (time.time(), self.step)
        params = list(self.net.parameters())
        self.train_model.train()
        try:
            while self.step < t.steps:  # no host sync in a step: only in _report, save and snapshot
                self._seed_step(self.step)
                self.opt.zero_grad(set_to_none=True)
                parts = fast.micro_batches(self._local(next(self.stream)), t.grad_accum)
                running += fast.accumulate(self._loss, parts, self.ddp)
                if t.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
                self.opt.step()
                self.sched.step()
                self._ema_step(self._ema_decay())
                count += 1
                self.step += 1
                bar.update(1)
                last = self.step == t.steps or self._stop_signal is not None
                if self.step % t.log_every == 0 or last or self.step % t.checkpoint_every == 0:
                    since, count = self._report(running / count, since, writer, bar), 0
                    running.zero_()
                if self.step % t.checkpoint_every == 0 or last:
                    self.save()
                    self.dist.barrier()
                if t.snapshot_every and self.step % t.snapshot_every == 0 and self.dist.main:
                    self.snapshot()
                if self._stop_signal is not None:
                    return {"step": self.step, "status": f"stopped by {self._stop_signal}, checkpoint written"}
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            self._restore_signal_handlers()
        return {"step": self.step, "status": "complete"}

    def _report(self, mean: torch.Tensor, since: tuple, writer, bar) -> tuple:
        """Log the mean loss since the last report (one host sync per log interval); stop on a
        non-finite one. ``since``: (time, step) of the last report; returns this one's."""
        mean_loss = mean.item()
        if not math.isfinite(mean_loss):
            raise TrainingError(f"the loss became {mean_loss} before step {self.step}; stopped without "
                                f"saving, the last good checkpoint in {self.ckpt_dir} is kept "
                                f"(lower train.lr or set train.grad_clip)")
        now = time.time()
        record = {"step": self.step, "loss": mean_loss, "lr": self.opt.param_groups[0]["lr"],
                  "steps_per_sec": (self.step - since[1]) / max(now - since[0], 1e-9)}
        self._log(record, writer)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        return now, self.step

    def _local(self, batch):
        """This rank's slice of the global ``batch`` (images, or (images, labels)) on the device."""
        x, *y = (v[self.dist.rank::self.dist.world].to(self.device, non_blocking=True)
                 for v in ((batch,) if self.num_classes == 0 else batch))
        x = fast.channels_last(x) if self.cfg.train.channels_last else x
        return (x, *y) if y else x

    def _loss(self, part) -> torch.Tensor:
        """The loss on ``part``, a (micro-)batch of this rank's slice (images, or (images, labels))."""
        t = self.cfg.train
        x, y = (part, None) if self.num_classes == 0 else part
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=t.amp):
            if y is None:
                return self.loss_fn(self.train_model, self.sde, x, generator=self.noise, **self.loss_kwargs)
            if t.objective == "classifier":
                return self.loss_fn(self.train_model, self.sde, x, y, generator=self.noise, **self.loss_kwargs)
            if t.label_dropout > 0:
                # from the step's seeded generator, before the loss's own draws: a resumed run drops the same labels
                y = drop_labels(y, t.label_dropout, self.num_classes, self.noise)
            return self.loss_fn(self.train_model, self.sde, x, generator=self.noise, y=y, **self.loss_kwargs)

    # -- helpers -------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        self._old_handlers = {}

        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread: leave signals alone
            self._old_handlers = {}

    def _restore_signal_handlers(self):
        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)

    def _metrics_path(self) -> str:
        return os.path.join(self.workdir, "metrics.jsonl")

    def _trim_metrics(self) -> None:
        """On resume, drop records written after the checkpoint we resumed from."""
        path = self._metrics_path()
        if not os.path.exists(path):
            return
        keep = []
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        keep.append(line if line.endswith("\n") else line + "\n")
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed run
        io.atomic_write_text(path, "".join(keep))

    def _log(self, record: dict, writer) -> None:
        if not self.dist.main:
            return
        with open(self._metrics_path(), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            for key in ("loss", "lr", "steps_per_sec"):
                writer.add_scalar(f"train/{key}", record[key], record["step"])

    def _tensorboard(self):
        if not (self.cfg.train.tensorboard and self.dist.main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("train.tensorboard is true but tensorboard is not installed (pip install tensorboard)") from None
        return SummaryWriter(os.path.join(self.workdir, "tb"))

    def snapshot(self) -> str:
        from .plot import save_samples
        from .sampling import sample as run_sampler
        score = ScoreModel(self.ema.module, self.sde, self.model.parameterization, self.model.conditioning).eval()
        g = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed)
        smp = self.cfg.sample
        with torch.no_grad():
            x = run_sampler(smp.sampler, score, self.sde, (smp.num,) + tuple(self.dataset.shape), steps=smp.steps,
                            eps=smp.eps, generator=g, device=self.device)
        path = os.path.join(self.workdir, "snapshots", f"step_{self.step:08d}.png")
        save_samples(x.cpu(), self.dataset, path, title=f"step {self.step}")
        return path


def train(cfg: Config, workdir: str, resume: bool = False, progress: bool = True,
          log: Optional[Callable[[str], None]] = None) -> dict:
    """Train ``cfg`` in ``workdir`` (see ``Trainer``); returns {'step', 'status'}. ``log`` receives
    the line saying which checkpoint a resumed run continues from (default: print unless not
    ``progress``)."""
    return Trainer(cfg, workdir, progress=progress, log=log).fit(resume=resume)
