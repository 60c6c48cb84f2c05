"""Training throughput: scoresde's Trainer loop vs a bare PyTorch loop on the same network.

All loops train the same network (configs/toy_vp.yaml's MLP for --net mlp, configs/digits_vp.yaml's
U-Net for --net unet) with Adam, on the same denoising score matching loss (eps-MSE, which equals
scoresde.dsm_loss for an eps-network: checked at start-up), batch size and device:

  bare            sample a batch, loss, zero_grad, backward, Adam step
  bare+clip+ema   the same plus gradient clipping and an EMA of the weights (by hand, foreach ops):
                  what Trainer does per step, without the framework around it
  trainer         scoresde.train.Trainer.fit: batch stream, per-step seeding, LR schedule, clipping,
                  EMA, metrics every log_every steps and one checkpoint at the end of each timed run

Each loop first runs --warmup steps, then --repeats timed runs of --steps steps, interleaved so that
background load hits all loops alike; the median steps/s is reported. Overhead = extra time per step
relative to the bare loop. Writes benchmarks/results/train_throughput_<net>_<device>.{json,md,png}.

    python benchmarks/train_throughput.py --net mlp --steps 200
    python benchmarks/train_throughput.py --net unet --device cuda --batch-size 128
"""
import argparse
import os
import tempfile
import time

import torch

import _bench
from _bench import NETS, ROOT, sync
from scoresde import dsm_loss
from scoresde.config import load_config
from scoresde.run import build_score_model, build_sde
from scoresde.train import Trainer

CONFIGS = {net: config for net, (config, _) in NETS.items()}
QUICK = {"steps": 5, "warmup": 1, "repeats": 2, "batch_size": 32, "n_train": 2000}


class BareLoop:
    """The same network, optimizer and loss in plain PyTorch; data already on the device."""

    def __init__(self, cfg, data, device, clip_and_ema: bool):
        torch.manual_seed(cfg.train.seed)
        self.model = build_score_model(cfg, build_sde(cfg), data.shape[1:]).to(device)
        self.net, self.sde, self.device = self.model.net, self.model.sde, device
        self.params = list(self.net.parameters())
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.Adam(self.params, lr=cfg.train.lr, foreach=True)
        self.data, self.batch_size, self.t = data.to(device), cfg.train.batch_size, cfg.train
        self.clip_and_ema = clip_and_ema

    def loss(self, x, u, z):
        """dsm_loss for an eps-network: sigma * score + z = z - eps_hat, so the loss is mean (eps_hat - z)^2."""
        t = self.t.eps + (self.sde.T - self.t.eps) * u
        B = self.sde.beta_min * t + 0.5 * (self.sde.beta_max - self.sde.beta_min) * t ** 2   # VP: ∫beta
        shape = (-1,) + (1,) * (x.dim() - 1)
        alpha, sigma = torch.exp(-0.5 * B).view(shape), torch.sqrt(-torch.expm1(-B)).view(shape)
        return ((self.net(alpha * x + sigma * z, t) - z) ** 2).mean()

    def run(self, steps: int):
        self.net.train()
        for _ in range(steps):
            x = self.data[torch.randint(len(self.data), (self.batch_size,), device=self.device)]
            u = torch.rand(self.batch_size, device=self.device)
            loss = self.loss(x, u, torch.randn_like(x))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip_and_ema:
                torch.nn.utils.clip_grad_norm_(self.params, self.t.grad_clip)
            self.opt.step()
            if self.clip_and_ema:
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - self.t.ema_decay)
        sync(self.device)


class TrainerLoop:
    """scoresde's Trainer, advanced by ``steps`` per call (fit() resumes from its in-memory step)."""

    def __init__(self, cfg, workdir):
        self.cfg = cfg
        self.trainer = Trainer(cfg, workdir, progress=False)

    def run(self, steps: int):
        self.cfg.train.steps = self.trainer.step + steps
        self.trainer.fit()
        sync(self.trainer.device)


def check_same_loss(bare: BareLoop):
    """The bare loop's loss equals scoresde.dsm_loss on the same draws (same generator order: t, then z)."""
    x = bare.data[: min(64, len(bare.data))]
    g = torch.Generator(device=bare.device).manual_seed(0)
    u = torch.rand(len(x), generator=g, device=bare.device)
    z = torch.randn(x.shape, generator=g, device=bare.device)
    bare.net.eval()
    with torch.no_grad():
        ours = bare.loss(x, u, z)
        theirs = dsm_loss(bare.model, bare.sde, x, eps=bare.t.eps, generator=torch.Generator(device=bare.device).manual_seed(0))
    return abs(ours.item() - theirs.item()) / max(abs(theirs.item()), 1e-12)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_common_args(p)
    p.add_argument("--net", choices=tuple(CONFIGS), default="mlp")
    p.add_argument("--steps", type=int, default=200, help="timed steps per run (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before timing (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per loop, interleaved (default 3)")
    p.add_argument("--batch-size", type=int, help="default: the config's (512 for mlp, 128 for unet)")
    args = p.parse_args(argv)
    if args.quick:  # a smoke run: only what the user did not set explicitly shrinks
        for key in ("steps", "warmup", "repeats"):
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, QUICK[key])
        args.batch_size = args.batch_size or QUICK["batch_size"]
    if min(args.steps, args.repeats) < 1 or args.warmup < 0 or (args.batch_size is not None and args.batch_size < 1):
        _bench.fail("--steps, --repeats and --batch-size must be positive, --warmup non-negative")
    device = _bench.setup(args)

    overrides = [f"train.device={args.device}", f"train.checkpoint_every={10 ** 9}", "train.log_every=100",
                 "train.keep_checkpoints=1"]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.quick and args.net == "mlp":  # the toy's 100k training points take longer to draw than the run
        overrides.append(f"data.n_train={QUICK['n_train']}")
    cfg = load_config(os.path.join(ROOT, "configs", CONFIGS[args.net] + ".yaml"), overrides)
    with tempfile.TemporaryDirectory(prefix="scoresde-bench-") as workdir:
        trainer = TrainerLoop(cfg, workdir)
        data = trainer.trainer.dataset.data
        loops = {"bare": BareLoop(cfg, data, device, False), "bare+clip+ema": BareLoop(cfg, data, device, True),
                 "trainer": trainer}
        loss_rel_diff = check_same_loss(loops["bare"])
        n_params = sum(p.numel() for p in loops["bare"].params)
        print(f"{args.net} ({n_params:,} parameters), batch {cfg.train.batch_size}, {args.device}, "
              f"{torch.get_num_threads()} threads; bare loss vs dsm_loss rel. diff {loss_rel_diff:.1e}", flush=True)
        for loop in loops.values():
            loop.run(max(args.warmup, 1))

        def report(r, times):
            print(f"  repeat {r + 1}: " + ", ".join(f"{n} {args.steps / ts[-1]:.1f}" for n, ts in times.items())
                  + " steps/s", flush=True)

        times = _bench.interleaved({name: (lambda loop=loop: loop.run(args.steps)) for name, loop in loops.items()},
                                    device, args.repeats, on_repeat=report)
        t0 = time.perf_counter()
        trainer.trainer.save()
        save_seconds = time.perf_counter() - t0

    sps = {name: args.steps / _bench.median(ts) for name, ts in times.items()}
    sps["trainer, excl. checkpoint"] = args.steps / max(_bench.median(times["trainer"]) - save_seconds, 1e-9)
    overhead = {name: 100 * (sps["bare"] / v - 1) for name, v in sps.items()}
    env = _bench.environment(device)
    header = (f"Training throughput, {args.net} ({n_params:,} parameters), batch {cfg.train.batch_size}, "
              f"{args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}: median of {args.repeats} "
              f"runs of {args.steps} steps after {args.warmup} warmup steps.\n\n")
    table = _bench.markdown_table(
        ["loop", "steps/s", "ms/step", "overhead vs bare"],
        [[name, f"{v:.1f}", f"{1000 / v:.2f}", f"{overhead[name]:+.1f}%"] for name, v in sps.items()],
        [False, True, True, True])
    note = (f"\nEach trainer run ends with one checkpoint write ({1000 * save_seconds:.0f} ms); the last row "
            f"subtracts it.\n\n{_bench.environment_line(env)}\n")
    markdown = header + table + note
    print("\n" + markdown)

    fig = _bench.new_figure(7, 4)
    ax = fig.add_subplot()
    ax.bar(list(sps), list(sps.values()), color=["0.55", "0.55", "tab:blue", "tab:cyan"])
    for i, v in enumerate(sps.values()):
        ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("steps/s (higher is better)")
    ax.set_title(f"Training throughput, {args.net}, batch {cfg.train.batch_size}, {args.device}", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)

    result = {
        "net": args.net, "config": CONFIGS[args.net], "parameters": n_params, "device": args.device,
        "device_name": env["device_name"], "threads": env["threads"], "cpu_count": env["cpu_count"],
        "torch": env["torch"], "batch_size": cfg.train.batch_size, "steps": args.steps, "warmup": args.warmup,
        "repeats": args.repeats, "quick": args.quick, "steps_per_sec": sps, "overhead_pct": overhead,
        "seconds": times, "checkpoint_seconds": save_seconds, "loss_rel_diff_vs_dsm_loss": loss_rel_diff,
        "date": env["date"], "environment": env,
    }
    name = f"train_throughput_{args.net}_{args.device}" + ("_quick" if args.quick else "")
    paths = _bench.write_results(args.out, name, result, markdown, fig)
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
