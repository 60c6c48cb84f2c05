"""Training memory: the peak tensor memory of one training step, counted without the device.

Does DDPM++ (cont.) train at the paper's batch of 128 on a 16 GB GPU, and with which of the
trainer's memory switches (``train.checkpoint_activations``, ``train.grad_accum``)? This measures
the step's peak without a GPU: scoresde's own ``Trainer`` (scoresde.train) is built and stepped
under ``torch._subclasses.fake_tensor.FakeTensorMode`` (tensors with shapes, dtypes and storages
but no data: no arithmetic is done, a DDPM++ step takes seconds), and torch's
``torch.distributed._tools.mem_tracker.MemTracker`` counts the bytes of every tensor storage alive
after each operation, by category:

  params       the trained network's weights           grads   their .grad
  opt. state   Adam's exp_avg, exp_avg_sq, step         EMA     the AveragedModel copy (and its count)
  activations  tensors made in the forward pass (what autograd saves for backward, the batch, ...)
  temp         tensors made in the backward pass (gradients w.r.t. activations, recomputed blocks)

The measured step is the trainer's real one: ``Trainer.fit`` advanced by one step (the second of
the run, so that Adam's state exists, as in every step after the first): batch from the
``BatchStream``, ``train_fast.micro_batches`` / ``accumulate`` (``train.grad_accum``), the config's
loss (``scoresde.losses``, dsm for the CIFAR-10 configs), the network wrapped for
``train.checkpoint_activations`` (``train_fast.prepare_networks``), gradient clipping, Adam as
``train_fast.build_optimizer`` builds it, the LR schedule and the EMA update (``train_fast.EMAUpdate``).
Adam is fused (``train.fused_optimizer: true``), what the trainer picks on CUDA (``--optimizer
foreach`` measures the foreach kind it picks on a CPU: its step makes parameter-sized temporaries).
To build and step the trainer under fake mode (``trainer_patches``), these are changed, none of them
part of the computation: the data set is a synthetic one of the config's shape (nothing is read
from disk; the step does not depend on pixel values); ``nn.Module.to(cpu)`` of a module already on
the CPU returns it (under fake mode torch swaps each parameter for a copy, which fails for fake
parameters); ``scoresde.sde._tracing`` answers True, which skips the range check of the diffusion
times on CPU tensors (a host read; it never runs on CUDA); the once-per-interval loss report (a
host read of the loss) and checkpoint writes are switched off; deep copies of fake tensors (the
EMA's ``AveragedModel``) stay in the same fake mode.

Rows: for each config (``--configs``) at ``--batch-size`` (128), the variants
  fp32          the config as it is
  ckpt          train.checkpoint_activations: true
  accum2/4      train.grad_accum: 2 / 4 (the same batch of 128 in 2 / 4 micro-batches)
  ckpt+accum2   both
Default configs: configs/cifar10_ddpmpp_continuous_vp.yaml (DDPM++ cont., the reference's
checkpoint-compatible NCSN++ code) and DDPM++ deep cont. configs/ has NO DDPM++ deep config: the
``cifar10_ddpmpp_deep_continuous_vp`` here is cifar10_ddpmpp_continuous_vp.yaml with
``model.num_res_blocks=8``, the one model setting in which the reference's
configs/vp/cifar10_ddpmpp_deep_continuous.py differs from configs/vp/cifar10_ddpmpp_continuous.py.

"fits 16 GB": peak < ``--gpu-gib`` (16) GiB minus ``--allowance-gib`` (1.5 GiB, a choice, not a
measurement) for what this count leaves out: the CUDA context (a few hundred MiB, outside torch's
allocator), cuDNN and cuBLAS workspaces, and the caching allocator's reserve above the allocated
peak and its fragmentation. A "16 GB" card may expose 16 GiB (V100) or 15 GiB (T4): set
``--gpu-gib`` to yours.

Caveats, also printed under the table:
- This counts tensor storage: the tensors that ``torch.cuda.max_memory_allocated`` counts (without
  its rounding of each allocation up to 512 bytes: a few MiB at most here). Not counted: the cuDNN
  and cuBLAS workspaces (torch takes them from its caching allocator too, so a GPU's
  max_memory_allocated includes them), the allocator's reserved-but-unallocated memory and
  fragmentation, the CUDA context. The allowance stands for those.
- Operators run as their meta kernels on fake CPU tensors; their outputs have the shapes and dtypes
  they have on CUDA. Scratch memory a kernel allocates internally and frees before returning is
  invisible to MemTracker on any device. One operator picks its kernel by device:
  ``F.scaled_dot_product_attention`` (the attention blocks) runs the CPU's fused flash kernel here
  and a fused kernel on CUDA too (fp32: the memory-efficient one); both keep the output and a
  log-sum-exp per position for backward, not the attention matrix, so they differ at most by the
  log-sum-exp's padding (kilobytes).
- The data stream's own tensors are counted: the batch (on a GPU: its copy on the device) and the
  epoch's permutation (int64, one per sample of the synthetic data set of one batch: 1 KiB), which
  on a GPU stays in host memory.
- bf16 autocast (``train.amp``) is left out of the estimate: fake
  CUDA tensors cannot be built in a CPU-only torch (``.to("cuda")`` and random initialisation raise
  "PyTorch is not linked with support for cuda devices", and ``torch.autocast("cuda")`` disables
  itself without CUDA); CPU autocast does run under fake mode, but its op lists differ from CUDA's
  (GroupNorm and softmax run in bf16 on a CPU, in fp32 on CUDA), so it would not estimate the CUDA
  step. With ``--device cuda`` the bf16 variants are measured on the GPU (no estimate next to them).
- MemTracker's per-module bookkeeping is kept out (``StepMemTracker``): only the global peak and its
  breakdown are kept, which makes the fake DDPM++ step take seconds instead of tens of seconds.

``--device cuda`` (with CUDA present) additionally runs each variant's step for real on the GPU:
the same Trainer with real synthetic data, one warm-up step, then ``torch.cuda.max_memory_allocated``
over the second step (minus what was allocated before the trainer was built), next to the estimate.

    python benchmarks/memory.py                        # DDPM++ and DDPM++ deep at batch 128: ~1.5 min on one CPU core
    python benchmarks/memory.py --configs cifar10_ncsnpp_continuous_ve --batch-size 64
    python benchmarks/memory.py --device cuda          # and the real step's max_memory_allocated
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List, Optional

import _bench
import _memtrack
from _memtrack import DEEP, DERIVED, config_for, cuda_step_memory, trainer_step_memory

#: re-exported: tests/test_memory_estimate.py reaches the measuring machinery through this module
CATEGORIES, track = _memtrack.CATEGORIES, _memtrack.track

MiB, GiB = 2 ** 20, 2 ** 30
DEFAULT_CONFIGS = ("cifar10_ddpmpp_continuous_vp", DEEP)
#: variant name -> train overrides
VARIANTS = {
    "fp32": {},
    "ckpt": {"train.checkpoint_activations": True},
    "accum2": {"train.grad_accum": 2},
    "accum4": {"train.grad_accum": 4},
    "ckpt+accum2": {"train.checkpoint_activations": True, "train.grad_accum": 2},
}


def amp_name(variant: str) -> str:
    return "bf16" if variant == "fp32" else "bf16+" + variant


#: each variant with train.amp: measured on the GPU only (see the docstring: no fake estimate of autocast)
AMP_VARIANTS = {amp_name(k): dict(v, **{"train.amp": True}) for k, v in VARIANTS.items()}
QUICK = {"configs": "digits_vp", "batch_size": 16}


# ---- report ---------------------------------------------------------------------------------------

def override_items(overrides: Dict[str, object]) -> List[str]:
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items()]


def mib(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / MiB:,.0f}"


def table(rows: List[dict], budget_gib: float, gpu: bool) -> str:
    headers = ["config", "variant", "parameters", "peak GiB", "peak MiB", "params", "grads", "opt. state", "EMA",
               "activations", "temp", "peak in", f"fits (< {budget_gib:g} GiB)"]
    right = [False, False] + [True] * 9 + [False, False]
    if gpu:
        headers += ["GPU max_allocated MiB", "estimate / GPU"]
        right += [True, True]
    out = []
    for r in rows:
        e = r.get("estimate")
        cells = [r["config"], r["variant"], f"{r['parameters'] / 1e6:.1f}M" if r.get("parameters") else "n/a"]
        if e is None:
            cells += ["n/a"] * 9 + ["n/a"]
        else:
            cells += [f"{e['total'] / GiB:.2f}", mib(e["total"])] + [mib(e[c]) for c in
                      ("params", "grads", "opt_state", "ema", "activations", "temp")]
            cells += [e["phase"], "yes" if r["fits"] else "**no**"]
        if gpu:
            g = r.get("gpu")
            cells += [mib(g["max_allocated"]) if g else "n/a",
                      f"{e['total'] / g['max_allocated']:.3f}" if g and e else "n/a"]
        out.append(cells)
    return _bench.markdown_table(headers, out, right)


def figure(rows: List[dict], budget_gib: float, title: str):
    fig = _bench.new_figure(10, 5)
    ax = fig.add_subplot()
    est = [r for r in rows if r.get("estimate")]
    labels = [f"{r['config_short']} {r['variant']}" for r in est]
    bottom = [0.0] * len(est)
    for column, colour in (("params", "tab:blue"), ("grads", "tab:orange"), ("opt_state", "tab:green"),
                           ("ema", "tab:purple"), ("activations", "tab:red"), ("temp", "tab:gray")):
        vals = [r["estimate"][column] / GiB for r in est]
        ax.bar(range(len(est)), vals, bottom=bottom, color=colour, label=column.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.axhline(budget_gib, color="k", ls="--", lw=1, label=f"budget {budget_gib:g} GiB")
    ax.set_xticks(range(len(est)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0, 1.1 * max(bottom + [budget_gib]))
    ax.set_ylabel("GiB at the step's peak")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_common_args(p)
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma list of configs/NAME.yaml names or {sorted(DERIVED)} (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch of the step (default 128)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--optimizer", choices=("fused", "foreach"), default="fused",
                   help="Adam kind of the estimate (default fused: what the Trainer picks on CUDA)")
    p.add_argument("--gpu-gib", type=float, default=16.0, help="GPU memory in GiB (default 16)")
    p.add_argument("--allowance-gib", type=float, default=1.5,
                   help="left for the CUDA context, cuDNN/cuBLAS workspaces, allocator reserve (default 1.5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every config")
    args = p.parse_args(argv)
    if args.quick:
        if args.configs == p.get_default("configs"):
            args.configs = QUICK["configs"]
        if args.batch_size == p.get_default("batch_size"):
            args.batch_size = QUICK["batch_size"]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        _bench.fail(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if args.batch_size < 1:
        _bench.fail("--batch-size must be positive")
    device = _bench.setup(args)
    gpu = device.type == "cuda"
    budget = args.gpu_gib - args.allowance_gib
    configs = [c for c in args.configs.split(",") if c]
    fused = args.optimizer == "fused"

    rows: List[dict] = []
    print(f"peak tensor memory of one training step, batch {args.batch_size}, Adam {args.optimizer}; "
          f"budget {args.gpu_gib:g} - {args.allowance_gib:g} = {budget:g} GiB", flush=True)
    for name in configs:
        short = name.replace("cifar10_", "").replace("_continuous", "")
        if name in DERIVED:
            print(f"note: configs/ has no {name}.yaml; using configs/{DERIVED[name][0]}.yaml with "
                  f"{', '.join(DERIVED[name][1])}", flush=True)
        todo = [(v, VARIANTS[v], True) for v in variants]
        if gpu:  # each variant again in bf16, on the GPU only
            todo += [(amp_name(v), AMP_VARIANTS[amp_name(v)], False) for v in variants]
        for variant, overrides, estimate in todo:
            items = override_items(overrides) + list(args.set)
            row = {"config": name, "config_short": short, "variant": variant, "overrides": items,
                   "batch_size": args.batch_size}
            if estimate:
                cfg = config_for(name, args.batch_size, items + [f"train.fused_optimizer={str(fused).lower()}"])
                t0 = time.perf_counter()
                e = trainer_step_memory(cfg, fake=True)
                row.update(estimate=e, parameters=e["parameters"], fits=e["total"] < budget * GiB,
                           wall_seconds=time.perf_counter() - t0)
                print(f"  {short:24s} {variant:12s} peak {e['total'] / GiB:6.2f} GiB (act. {e['activations'] / GiB:.2f}, "
                      f"{e['phase']}), {row['wall_seconds']:.1f} s", flush=True)
            if gpu:
                cfg = config_for(name, args.batch_size, items)
                row["gpu"] = cuda_step_memory(cfg)
                row.setdefault("parameters", None)
                print(f"  {short:24s} {variant:12s} GPU max_memory_allocated {row['gpu']['max_allocated'] / GiB:.2f} GiB",
                      flush=True)
            rows.append(row)

    env = _bench.environment(device)
    header = (f"Peak tensor memory of one training step (scoresde's Trainer, its second step), batch "
              f"{args.batch_size}, fp32, Adam {args.optimizer}, counted by torch's MemTracker under FakeTensorMode "
              f"(no device, no arithmetic). MiB unless marked; 'fits': peak < {args.gpu_gib:g} GiB GPU minus "
              f"{args.allowance_gib:g} GiB allowance = {budget:g} GiB.\n\n")
    notes = ["",
             "- What is counted: tensor storage alive after each operation (the tensors `torch.cuda.max_memory_allocated` "
             "counts, without its 512-byte rounding), not the caching allocator's reserve, fragmentation, the CUDA "
             "context or cuDNN/cuBLAS workspaces (a GPU's max_memory_allocated includes the workspaces): the "
             "allowance is for those.",
             "- Categories at the peak: params / grads (the trained network's weights and .grad), opt. state (Adam's "
             "moments and step counts), EMA (the AveragedModel copy), activations (tensors made in the forward pass, "
             "the batch included), temp (made in the backward pass). MemTracker notes that under activation "
             "checkpointing activations and temp may be mis-attributed to each other during backward; the total is exact.",
             "- 'peak in': the phase of the step in which the peak fell.",
             "- bf16 autocast (`train.amp`) has no estimate: fake CUDA tensors cannot be built in a CPU-only torch, and CPU autocast's op lists differ from CUDA's (see the script's "
             "docstring)" + ("; the bf16 rows are measured on the GPU only." if gpu else "."),
             ]
    if any(c in DERIVED for c in configs):
        notes.append(f"- configs/ has no DDPM++ deep config: `{DEEP}` is `configs/{DERIVED[DEEP][0]}.yaml` with "
                     f"`{' '.join(DERIVED[DEEP][1])}` (the reference's cifar10_ddpmpp_deep_continuous.py differs from "
                     f"its cifar10_ddpmpp_continuous.py in that model setting only).")
    if gpu:
        notes.append("- GPU column: `torch.cuda.max_memory_allocated` over the real second step on the GPU (same "
                     "Trainer, real synthetic data, Adam as the Trainer picks it there), minus what was allocated "
                     "before the trainer was built.")
    markdown = header + table(rows, budget, gpu) + "\n".join(notes) + f"\n\n{_bench.environment_line(env)}\n"
    print("\n" + markdown)

    fig = figure(rows, budget, f"Training step peak memory, batch {args.batch_size}, fp32 (estimate)")
    result = {"batch_size": args.batch_size, "configs": configs, "variants": variants, "optimizer": args.optimizer,
              "gpu_gib": args.gpu_gib, "allowance_gib": args.allowance_gib, "budget_gib": budget,
              "overrides": args.set, "quick": args.quick, "derived_configs": {k: list(v) for k, v in DERIVED.items()},
              "rows": rows, "device": args.device, "environment": env, "date": env["date"]}
    name = f"memory_{args.device}" + ("_quick" if args.quick else "")
    paths = _bench.write_results(args.out, name, result, markdown, fig)
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
