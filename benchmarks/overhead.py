"""Sampler overhead: wall time of scoresde's sampling loops, and of diffusers' scheduler loops on the
same network, against the bare network evaluated the same number of times.

The floor for any sampler is its network evaluations: a plain Python loop calling the same
ScoreModel on exactly the (x, t) inputs the sampler gave it, recorded in an untimed first run
(the network's cost depends on its input: an untrained one drives samples far out, where it runs
~15% slower than on x_T, so a fixed input would flatter or penalise samplers by where their
paths go). Everything a sampler adds (grid and
coefficient set-up, the update arithmetic, noise draws, solver bookkeeping) shows as

    overhead = 100 * (t_sampler / t_bare(NFE) - 1)  %.

Cases: the toy MLP of configs/toy_vp.yaml on 2-D data at batch 4096 (the headline: the project
claims a fixed-step sampler overhead of at most 10% there on CPU) and the small U-Net of
configs/digits_vp.yaml on 8x8x1 images. diffusers' DDIM / DPM-Solver++ / Euler / Heun / DDPM
schedulers run their canonical loop on the same network through an eps-prediction adapter;
scoresde's ddim, dpm_solver and ancestral on diffusers' own timesteps are the same methods as
DDIM, DPM-Solver++(2M) and DDPM there (the deterministic two are checked untimed: same samples).

    python benchmarks/overhead.py --nets mlp --threads 1
    python benchmarks/overhead.py --nets unet --threads 1
    python benchmarks/overhead.py --device cuda        # both networks
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

import _bench
from scoresde import sampling

#: scheduler -> constructor options that make it the method named, on the VP-SDE's DDPM schedule
DIFFUSERS = {
    # clip_sample is on by default in diffusers; our DDIM does not clip. set_alpha_to_one: alphā = 1
    # after index 0, i.e. the last step returns x̂_0, as our ddim with timesteps does.
    "DDIMScheduler": dict(clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"),
    # diffusers' defaults, written out: DPM-Solver++(2M) in the paper's "midpoint" form, lower
    # order at the end below 15 steps, and (diffusers >= 0.26, final_sigmas_type="zero") a
    # first-order final step to sigma = 0. Our dpm_solver's defaults are the same method
    # (solver_type="midpoint", lower_order_final=True, the denoising step being that final step);
    # solver_type="heun" on both sides, the exact integral of the linear interpolant, agrees too.
    "DPMSolverMultistepScheduler": dict(solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
                                        lower_order_final=True),
    "EulerDiscreteScheduler": dict(),
    "HeunDiscreteScheduler": dict(),
    "DDPMScheduler": dict(clip_sample=False, variance_type="fixed_small"),
}
#: inference steps of each scheduler in a full run
SCHEDULER_STEPS = {"DDIMScheduler": 50, "DPMSolverMultistepScheduler": 20, "EulerDiscreteScheduler": 50,
                   "HeunDiscreteScheduler": 25, "DDPMScheduler": 50}
#: diffusers scheduler -> our sampler running the same method on the scheduler's own timesteps.
#: DDPMScheduler's "fixed_small" variance is the posterior variance; DPMSolverMultistepScheduler's
#: final step to sigma = 0 is the data prediction at its last timestep, i.e. our denoising step.
SAME_METHOD = {
    "DDIMScheduler": ("ddim, diffusers' timesteps", "ddim", {}),
    "DPMSolverMultistepScheduler": ("dpm_solver order 2, diffusers' timesteps", "dpm_solver",
                                    {"order": 2, "multistep": True, "predict": "x0", "solver_type": "midpoint",
                                     "lower_order_final": True}),
    "DDPMScheduler": ("ancestral, diffusers' timesteps", "ancestral", {"variance": "posterior"}),
}


@dataclass
class Contender:
    """One timed sampling loop: ``run_with(score_fn, x_T)`` draws samples from x_T."""

    label: str
    impl: str                    # "scoresde", "diffusers" or "torchdiffeq"
    run_with: Callable
    adaptive: bool = False
    nfe: int = 0
    error: Optional[str] = None
    inputs: list = None          # the (x, t) of every score call, from the untimed first run


class RecordingScore:
    """score_fn that keeps a copy of every input it is called with; used only in the untimed first
    run. The network's cost depends on its input (an untrained one drives samples far out, where
    its activations are slower), so each sampler's baseline replays exactly its own inputs."""

    def __init__(self, score):
        self.score, self.inputs = score, []

    @property
    def nfe(self) -> int:
        return len(self.inputs)

    def __call__(self, x, t):
        self.inputs.append((x.clone(), t.clone()))
        return self.score(x, t)


class EpsModel:
    """A scoresde score function seen as a diffusers eps-prediction UNet, ``model(x, timestep)``.

    Discrete index i of the N-step chain is continuous time t_i = T i / (N - 1), raised to the
    sampler's eps at i = 0 where sigma(t) vanishes, and eps = -sigma_i score(x, t_i) with the chain's
    sigma_i = sqrt(1 - alphas_cumprod[i]): exactly what ``sampling.make_grid`` gives our ddim for the
    same indices, so both loops do the same arithmetic. Fractional timesteps (Euler, Heun) take
    sigma by linear interpolation in the index, as diffusers does for its sigmas. Everything is a
    tensor op on the model's device: no host synchronisation per call.
    """

    def __init__(self, score, sde, eps: float, like: torch.Tensor):
        idx = torch.arange(sde.N)
        _, sigma = sde.discrete_marginal_coeffs(idx)
        self.score, self.N, self.batch = score, sde.N, like.shape[0]
        self.sigma = sigma.to(device=like.device, dtype=like.dtype)
        self.t_scale, self.eps = sde.T / (sde.N - 1), eps
        self.shape = (-1,) + (1,) * (like.dim() - 1)

    def __call__(self, x, timestep):
        pos = torch.as_tensor(timestep, device=self.sigma.device).to(self.sigma.dtype).reshape(1)
        i0 = pos.floor().long().clamp(max=self.N - 2)
        # index_select, not sigma[i0]: indexing with a 0-dim tensor reads it on the host (a sync on GPU)
        sigma = torch.lerp(self.sigma.index_select(0, i0), self.sigma.index_select(0, i0 + 1), pos - i0)
        t = (pos * self.t_scale).clamp(min=self.eps).expand(self.batch)
        return -sigma.view(self.shape) * self.score(x, t)


def diffusers_loop(scheduler, model: EpsModel, x_T, steps: int, seed: Optional[int]):
    """The canonical diffusers sampling loop."""
    scheduler.set_timesteps(steps, device=x_T.device)
    kwargs = {} if seed is None else {"generator": torch.Generator(x_T.device).manual_seed(seed)}
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def make_scheduler(name: str, sde):
    import diffusers
    schedule = dict(num_train_timesteps=sde.N, beta_start=sde.beta_min / sde.N, beta_end=sde.beta_max / sde.N,
                    beta_schedule="linear", prediction_type="epsilon")
    return getattr(diffusers, name)(**schedule, **DIFFUSERS[name])


def scale(steps: int, quick: bool) -> int:
    return max(2, steps // 5) if quick else steps


#: DPM-Solver steps in a quick run. Both libraries lower the order at the same steps at any count
#: (on timesteps our lower_order_final counts the denoising step as diffusers counts its final step
#: to sigma = 0; tests/test_dpm_references.py checks 5, 10 and 20 steps), so the same-samples check
#: holds in a smoke run too; 16 steps keep the quick DPM rows as they were.
QUICK_DPM_STEPS = 16


def dpm_steps(quick: bool) -> int:
    return QUICK_DPM_STEPS if quick else SCHEDULER_STEPS["DPMSolverMultistepScheduler"]


def scheduler_steps(name: str, quick: bool) -> int:
    return dpm_steps(quick) if name == "DPMSolverMultistepScheduler" else scale(SCHEDULER_STEPS[name], quick)


def contenders(sde, eps: float, quick: bool, seed: int, notes: List[str]) -> List[Contender]:
    """Every sampler of the benchmark for one case; missing ones are skipped with a note."""
    # dopri5 at its default 1e-5 takes ~200 NFE on these networks, 4x the fixed-step samplers: too
    # long at batch 4096 on a CPU, and its per-step overhead, what is measured here, is the same
    tol = 1e-3
    sde_tol = 5e-2 if quick else 1e-2  # adaptive_sde takes ~370 NFE at 1e-2 on the random networks
    ours = [
        ("euler_maruyama", "euler_maruyama", dict(steps=scale(50, quick)), False),
        ("ddim", "ddim", dict(steps=scale(50, quick)), False),
        ("ancestral", "ancestral", dict(steps=scale(50, quick)), False),
        ("predictor_corrector (langevin)", "predictor_corrector", dict(steps=scale(25, quick)), False),
        ("probability_flow rk4", "probability_flow", dict(method="rk4", steps=scale(12, quick)), False),
        (f"probability_flow dopri5 (tol {tol:g})", "probability_flow", dict(method="dopri5", rtol=tol, atol=tol), True),
        ("dpm_solver order 2", "dpm_solver", dict(steps=dpm_steps(quick), order=2, multistep=True), False),
        ("dpm_solver order 3", "dpm_solver", dict(steps=dpm_steps(quick), order=3, multistep=True), False),
        ("dpm_solver order 2 + corrector", "dpm_solver", dict(steps=dpm_steps(quick), order=2, corrector=True), False),
        ("heun", "heun", dict(steps=scale(25, quick)), False),
        (f"adaptive_sde (tol {sde_tol:g})", "adaptive_sde", dict(rtol=sde_tol, atol=sde_tol), True),
    ]
    out = []
    for label, name, options, adaptive in ours:
        fn = getattr(sampling, name, None)
        if fn is None:
            notes.append(f"{label}: skipped, scoresde.sampling has no {name} (yet)")
            continue
        out.append(Contender(label, "scoresde", _ours(fn, sde, eps, seed, options), adaptive))
    out.append(Contender("probability_flow rk4 through torchdiffeq's fixed-grid loop", "torchdiffeq",
                         _torchdiffeq_rk4(sde, eps, scale(12, quick))))

    try:
        import diffusers  # noqa: F401
    except ImportError:
        notes.append("diffusers loops: skipped, diffusers is not installed (pip install -e '.[bench]')")
        return out
    for name in SCHEDULER_STEPS:
        n = scheduler_steps(name, quick)
        if name in SAME_METHOD and hasattr(sampling, SAME_METHOD[name][1]):
            label, fn, options = SAME_METHOD[name]
            out.append(Contender(label, "scoresde", _ours(getattr(sampling, fn), sde, eps, seed,
                                                          dict(options, timesteps=timesteps(name, sde, n)))))
        out.append(Contender(f"{name} ({n} steps)", "diffusers",
                             _theirs(make_scheduler(name, sde), sde, eps, n, seed if name == "DDPMScheduler" else None)))
    return out



def timesteps(name: str, sde, steps: int) -> List[int]:
    """The discrete indices diffusers' scheduler ``name`` visits in ``steps`` steps."""
    scheduler = make_scheduler(name, sde)
    scheduler.set_timesteps(steps)
    return [int(i) for i in scheduler.timesteps]


def _ours(fn, sde, eps, seed, options):
    def run_with(score, x_T):
        g = torch.Generator(x_T.device).manual_seed(seed)
        return fn(score, sde, x_T, eps=eps, generator=g, **options)
    return run_with


def _torchdiffeq_rk4(sde, eps, steps):
    """probability_flow's fixed-step path before sampling.runge_kutta: the same rk4 (3/8 rule) on the
    same grid, through torchdiffeq.odeint's fixed-grid loop (which compares times on the device once
    per step), then the same denoising step: the baseline of the "probability_flow rk4" row."""
    from torchdiffeq import odeint

    from scoresde.sampling._loop import tweedie_at
    from scoresde.sampling._ode import clamped_time, pf_drift
    from scoresde.sampling.grids import time_grid

    def run_with(score, x_T):
        grid = time_grid(sde, steps, eps, "uniform")
        on_device = grid.to(device=x_T.device, dtype=x_T.dtype)
        B, T, end = x_T.shape[0], float(grid[0]), float(grid[-1])

        def rhs(t, y):
            return pf_drift(sde, score, y, clamped_time(t, end, T, B, y))
        x = odeint(rhs, x_T, on_device[[0, -1]], method="rk4",
                   options={"grid_constructor": lambda func, y0, t: on_device})[-1]
        return tweedie_at(score, sde, x, end)
    return run_with


def _theirs(scheduler, sde, eps, steps, seed):
    def run_with(score, x_T):
        return diffusers_loop(scheduler, EpsModel(score, sde, eps, x_T), x_T, steps, seed)
    return run_with


def agreement(name: str, score, sde, x_T, eps: float, steps: int) -> dict:
    """Untimed: diffusers' deterministic scheduler ``name`` and our sampler of the same method on its
    timesteps, from the same x_T: the same samples up to float rounding if it is the same method."""
    label, fn, options = SAME_METHOD[name]
    idx = timesteps(name, sde, steps)
    ours = getattr(sampling, fn)(score, sde, x_T, timesteps=idx, eps=eps, **options)
    theirs = diffusers_loop(make_scheduler(name, sde), EpsModel(score, sde, eps, x_T), x_T, steps, None)
    diff, size = (ours - theirs).abs().max().item(), ours.abs().max().item()
    return {"scoresde": label, "diffusers": name, "samples": x_T.shape[0], "timesteps": idx,
            "max_abs_diff": diff, "max_abs_sample": size, "max_rel_diff": diff / size, "settings": DIFFUSERS[name]}


def adapter_cost(sde, x_T, eps: float, calls: int = 200) -> float:
    """Seconds per EpsModel call on its own (identity score), the part of the diffusers rows that
    is this benchmark's glue rather than diffusers."""
    model = EpsModel(lambda x, t: x, sde, eps, x_T)
    ts = torch.linspace(999, 0, calls, device=x_T.device)
    model(x_T, ts[0])
    dt = _bench.timed(lambda: [model(x_T, t) for t in ts], x_T.device)
    return dt / calls


def run_case(net: str, batch: int, args, device) -> dict:
    model, sde, shape, _ = _bench.build_model(net, device, getattr(args, f"{net}_run"), args.seed)
    x_T = sde.prior_sampling((batch,) + shape, generator=torch.Generator().manual_seed(args.seed)).to(device)
    eps = 1e-3
    notes: List[str] = []
    print(f"\n{net}: {_bench.parameter_count(model):,} parameters, batch {batch}", flush=True)
    with torch.inference_mode():
        loops = contenders(sde, eps, args.quick, args.seed, notes)
        for c in loops:
            # The recording run doubles as warm-up of the Python paths; it runs on the timed input,
            # which fixes the inputs the baseline replays (and an adaptive solver's NFE).
            counter = RecordingScore(model)
            try:
                c.run_with(counter, x_T)
            except Exception as e:  # a sampler still being written must not sink the whole benchmark
                c.error = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
                notes.append(f"{c.label}: failed, {c.error}")
                continue
            c.nfe, c.inputs = counter.nfe, counter.inputs
            print(f"  {c.label}: {c.nfe} NFE", flush=True)
        loops = [c for c in loops if c.error is None]
        labels = {c.label for c in loops}
        # the deterministic pairs; a few hundred samples show any difference as well as 4096 would
        checks = [agreement(name, model, sde, x_T[:256], eps, scheduler_steps(name, args.quick))
                  for name in ("DDIMScheduler", "DPMSolverMultistepScheduler")
                  if SAME_METHOD[name][0] in labels and any(lab.startswith(name) for lab in labels)]

        def bare(inputs):
            def loop():
                for x, t in inputs:
                    model(x, t)
            return loop

        # Adaptive solvers take several times the NFE of the fixed-step ones (hundreds at batch
        # 4096): they get their own, shorter series of rounds so that a full run stays short.
        times, t0 = {}, time.perf_counter()
        for group, repeats in ((False, args.repeats), (True, args.adaptive_repeats)):
            members = [c for c in loops if c.adaptive == group]
            if not members:
                continue
            runs = {c.label: (lambda c=c: c.run_with(model, x_T)) for c in members}
            for c in members:
                runs[f"bare: {c.label}"] = bare(c.inputs)
            kind = "adaptive" if group else "fixed-step"
            res = _bench.interleaved(runs, device, repeats, on_repeat=lambda r, ts, kind=kind, repeats=repeats: print(
                f"  {kind} round {r + 1}/{repeats} done ({time.perf_counter() - t0:.0f} s)", flush=True))
            for c in members:
                times[c.label] = (res[c.label], res[f"bare: {c.label}"])
        adapter = adapter_cost(sde, x_T, eps) if any(c.impl == "diffusers" for c in loops) else None

    rows = []
    for c in loops:
        seconds, bare_s = times[c.label]
        ratios = [s / b for s, b in zip(seconds, bare_s)]  # paired: same round, same background load
        t, tb = _bench.median(seconds), _bench.median(bare_s)
        rows.append({"sampler": c.label, "impl": c.impl, "adaptive": c.adaptive, "nfe": c.nfe,
                     "seconds": seconds, "bare_seconds": bare_s, "median_s": t, "bare_median_s": tb,
                     "overhead_pct": 100 * (t / tb - 1),
                     "overhead_pct_range": [100 * (min(ratios) - 1), 100 * (max(ratios) - 1)],
                     "ms_per_nfe": 1000 * t / c.nfe, "bare_ms_per_nfe": 1000 * tb / c.nfe})
    return {"net": net, "batch": batch, "parameters": _bench.parameter_count(model),
            "weights": getattr(args, f"{net}_run") or f"random init (seed {args.seed})",
            "rows": rows, "notes": notes, "same_samples_vs_diffusers": checks,
            "adapter_seconds_per_call": adapter}


#: rows compared side by side: the same method on the same timesteps, and (heun) the same
#: method on each library's own default grid
PAIRS = [(label, name) for name, (label, _, _) in SAME_METHOD.items()] + [("heun", "HeunDiscreteScheduler")]


def case_markdown(case: dict, device: str) -> str:
    rows = case["rows"]
    md = [f"### {case['net']}, batch {case['batch']} ({case['parameters']:,} parameters, {case['weights']})\n"]
    md.append(_bench.markdown_table(
        ["sampler", "impl", "NFE", "time (s)", "bare, same inputs (s)", "overhead", "range over rounds", "ms/NFE"],
        [[r["sampler"], r["impl"], r["nfe"], f"{r['median_s']:.3f}", f"{r['bare_median_s']:.3f}",
          f"{r['overhead_pct']:+.1f}%", f"{r['overhead_pct_range'][0]:+.1f} … {r['overhead_pct_range'][1]:+.1f}%",
          f"{r['ms_per_nfe']:.2f}"] for r in rows],
        [False, False, True, True, True, True, True, True]))
    by_label = {r["sampler"].split(" (")[0] if r["impl"] == "diffusers" else r["sampler"]: r for r in rows}
    pairs = [(by_label[a], by_label[b]) for a, b in PAIRS if a in by_label and b in by_label]
    if pairs:
        md.append("\nThe same method in both libraries, same network and batch:\n")
        md.append(_bench.markdown_table(
            ["scoresde", "diffusers", "NFE (ours / theirs)", "time ours (s)", "time diffusers (s)", "ours / diffusers",
             "overhead ours", "overhead diffusers"],
            [[a["sampler"], b["sampler"], f"{a['nfe']} / {b['nfe']}", f"{a['median_s']:.3f}", f"{b['median_s']:.3f}",
              f"{a['median_s'] / b['median_s']:.3f}", f"{a['overhead_pct']:+.1f}%", f"{b['overhead_pct']:+.1f}%"]
             for a, b in pairs],
            [False, False, True, True, True, True, True, True]))
    md.append("")
    fixed = [r for r in rows if r["impl"] == "scoresde" and not r["adaptive"]]
    if fixed:
        worst = max(fixed, key=lambda r: r["overhead_pct"])
        if case["net"] == "mlp" and case["batch"] == 4096 and device == "cpu":
            verdict = "holds" if worst["overhead_pct"] <= 10 else "does NOT hold"
            md.append(f"- Claim \"fixed-step sampler overhead ≤ 10% over the bare network at batch 4096 on CPU\": "
                      f"{verdict} in this run (largest: {worst['sampler']}, {worst['overhead_pct']:+.1f}%).")
        else:
            md.append(f"- Largest fixed-step scoresde overhead: {worst['sampler']}, {worst['overhead_pct']:+.1f}%.")
    if "ddim, diffusers' timesteps" in by_label and "DDIMScheduler" in by_label:
        a, b = by_label["ddim, diffusers' timesteps"], by_label["DDIMScheduler"]
        ratio = a["median_s"] / b["median_s"]
        md.append(f"- Claim \"our DDIM loop is no slower than diffusers' DDIMScheduler loop\": "
                  f"{'holds' if ratio <= 1 else 'does NOT hold'} in this run (time ratio {ratio:.3f}).")
    rk4 = "probability_flow rk4"
    if rk4 in by_label and f"{rk4} through torchdiffeq's fixed-grid loop" in by_label:
        a, b = by_label[rk4], by_label[f"{rk4} through torchdiffeq's fixed-grid loop"]
        md.append(f"- probability_flow rk4, our Runge–Kutta loop / torchdiffeq's fixed-grid loop (same tableau, grid "
                  f"and network): time ratio {a['median_s'] / b['median_s']:.3f} (overheads {a['overhead_pct']:+.1f}% "
                  f"and {b['overhead_pct']:+.1f}%); torchdiffeq's loop also reads the device once per step, which a "
                  f"CPU run does not show.")
    for agree in case["same_samples_vs_diffusers"]:
        md.append(f"- Same samples? {agree['scoresde']} vs {agree['diffusers']}'s loop from the same x_T (untimed, "
                  f"{agree['samples']} samples): max |diff| {agree['max_abs_diff']:.2e}, relative to the largest "
                  f"sample {agree['max_rel_diff']:.1e}.")
    if case["adapter_seconds_per_call"] is not None:
        md.append(f"- The eps adapter between our network and diffusers costs {1e6 * case['adapter_seconds_per_call']:.0f} µs "
                  f"per call on its own; it is counted in the diffusers rows.")
    md += [f"- {n}" for n in case["notes"]]
    return "\n".join(md) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_common_args(p)
    p.add_argument("--nets", default="mlp,unet", help="comma-separated: mlp, unet (default both)")
    p.add_argument("--mlp-batch", type=int, default=4096, help="default 4096 (the claim's batch)")
    p.add_argument("--unet-batch", type=int, default=64, help="default 64")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each fixed-step loop, interleaved (default 3)")
    p.add_argument("--adaptive-repeats", type=int, default=1,
                   help="timed runs of each adaptive solver (dopri5, adaptive_sde), interleaved (default 1)")
    p.add_argument("--mlp-run", help="a trained run directory or checkpoint for the MLP (default: random init)")
    p.add_argument("--unet-run", help="a trained run directory or checkpoint for the U-Net (default: random init)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    if not nets or any(n not in _bench.NETS for n in nets):
        _bench.fail(f"--nets must list some of {tuple(_bench.NETS)}, got {args.nets!r}")
    if min(args.mlp_batch, args.unet_batch, args.repeats, args.adaptive_repeats) < 1:
        _bench.fail("--mlp-batch, --unet-batch, --repeats and --adaptive-repeats must be positive")
    if args.quick:
        args.mlp_batch, args.unet_batch = min(args.mlp_batch, 256), min(args.unet_batch, 8)
        args.repeats, args.adaptive_repeats = min(args.repeats, 2), 1
    device = _bench.setup(args)
    env = _bench.environment(device)
    print(_bench.environment_line(env), flush=True)

    cases = [run_case(net, args.mlp_batch if net == "mlp" else args.unet_batch, args, device) for net in nets]

    markdown = (f"## Sampler overhead over the bare network{' (quick smoke run)' if args.quick else ''}\n\n"
                f"Median of {args.repeats} interleaved runs ({args.adaptive_repeats} for the adaptive solvers); "
                f"overhead = 100 (t_sampler / t_bare - 1), t_bare = the same ScoreModel called in a plain loop on the "
                f"sampler's own recorded inputs; range = the per-round paired ratios. "
                f"{_bench.environment_line(env)}.\n\n" + "\n".join(case_markdown(c, args.device) for c in cases))
    print("\n" + markdown)

    fig = _bench.new_figure(11, 4.2 * len(cases))
    for i, case in enumerate(cases):
        ax = fig.add_subplot(len(cases), 1, i + 1)
        labels = [f"{r['sampler']} [{r['nfe']}]" for r in case["rows"]]
        _bench.grouped_bars(ax, labels, {"sampler loop": [r["median_s"] for r in case["rows"]],
                                          "bare network, same inputs": [r["bare_median_s"] for r in case["rows"]]},
                             "seconds (median)")
        ax.set_title(f"{case['net']}, batch {case['batch']}, {args.device}: time per sampler vs bare [NFE]", fontsize=10)
    payload = {"benchmark": "overhead", "quick": args.quick, "repeats": args.repeats,
               "adaptive_repeats": args.adaptive_repeats, "seed": args.seed,
               "environment": env, "cases": cases}
    name = f"overhead_{'_'.join(nets)}_{args.device}" + ("_quick" if args.quick else "")
    paths = _bench.write_results(args.out, name, payload, markdown, fig)
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
