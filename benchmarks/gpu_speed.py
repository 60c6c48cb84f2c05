"""GPU speed: training steps/s and sampling images/s, with the FLOP rate achieved as a share of the peak.

Sections (``--sections``, default all four):

  train     the config's network (default configs/cifar10_ddpmpp_vp.yaml, DDPM++ cont., 58.7M
            parameters) at --batch-size (128), trained (a) by a bare loop: random batch from data
            already on the device, scoresde.dsm_loss, zero_grad, backward, Adam step; and (b) by
            scoresde's Trainer (Trainer.fit over --steps steps, as train_throughput.py runs it, with
            checkpoint writes switched off), in variants given as config overrides:
                fp32            {}
                bf16            {train.amp: true}
                bf16+cl+fused   {train.amp: true, train.channels_last: true, train.fused_optimizer: true}
                bf16+compile    {train.amp: true, train.compile: true}
            (opt-in with --variants: bf16+cl+fused+compile, bf16+ckpt (train.checkpoint_activations),
            bf16+accum2 (train.grad_accum 2)). A Trainer variant whose key TrainConfig does not have is
            skipped with a note; the bare loop implements amp, channels_last, fused_optimizer and
            compile itself and skips the other keys.
  sampling  DDIM and DPM-Solver++(2M) at --nfe (20) score evaluations on a batch of --sample-batch
            (512 on CUDA) images: fp32, bf16 (scoresde.precision.precision_score), bf16 + channels_last,
            bf16 + compile (scoresde.precision.compile_score, skipped with a note where it is missing).
  sizes     the DDPM CIFAR-10 size (~35.7M): diffusers' UNet2DModel (block_out_channels
            (128, 256, 256, 256), layers_per_block 2, attention at 16x16) and our reference DDPM net
            (configs/cifar10_ddpm_continuous_vp.yaml), bare loop, --size-variants (bf16, bf16+compile).
            Without diffusers its rows are skipped with one line.
  overhead  Trainer vs bare loop on the digits U-Net (configs/digits_vp.yaml) at batch 128, fp32.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one real forward + backward of the
loss (the backward counted as it runs, not as 2x the forward: a first convolution needs no input
gradient, elementwise work counts nothing), for sampling on one forward times the NFE. They are the
network's matmul / convolution / attention FLOPs, the same for every variant; optimizer, EMA and
elementwise ops are not counted. TFLOP/s = FLOPs per step x steps/s; share = TFLOP/s / --peak-tflops
(default 790, the H200's dense bf16 peak; fp32 rows are held against the same number).

Timing: contenders of a section are timed alternately (order rotating, _bench's rule), each call
bracketed by torch.cuda.synchronize; the first --warmup steps (one sampling run) of each are untimed
and reported separately as "warm-up s" (for compiled variants: the compilation). Peak memory (CUDA):
what the contender would need alone = its persistent tensors (weights, gradients, optimizer state,
EMA) + torch.cuda.max_memory_allocated during its first timed run above the memory allocated just
before it (all contenders of a section live side by side). On CPU: n/a, and the process's peak RSS
is reported once. --budget-s trims repeats, compiled variants and whole sections to finish in time.

The parts, one module each next to this file: _gpu_config.py (the variants, configs and training
data), _gpu_runner.py (Spec, Runner, Budget: building, warming up and timing the contenders of a
section), _gpu_train.py (the bare loop and the Trainer: the train, overhead and sizes sections),
_gpu_sample.py (the sampling section), _flops.py (FLOP counting) and _gpu_report.py (markdown and
figure); this file holds the command line and runs the sections in turn.

    python benchmarks/gpu_speed.py --device cuda
    python benchmarks/gpu_speed.py --quick --threads 1          # CPU smoke run, seconds
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile

import torch

import _bench
from _flops import forward_flops, linear_flop_check, train_step_flops
from _gpu_config import DEFAULT_VARIANTS, VARIANTS, train_config_keys
from _gpu_report import figure, markdown_report
from _gpu_runner import Budget, Runner, free
from _gpu_sample import sampling_specs
from _gpu_train import size_specs, training_specs

# forward_flops and train_step_flops stay importable from here: tests/test_benchmarks.py checks the
# counter through this module
__all__ = ["main", "forward_flops", "train_step_flops"]

SECTIONS = ("train", "sampling", "sizes", "overhead")
#: seconds kept back for each section still to come when --budget-s is set (their cheapest rows)
SECTION_RESERVE = {"train": 45.0, "sampling": 30.0, "sizes": 30.0, "overhead": 15.0}

DEFAULTS = dict(config="cifar10_ddpmpp_vp", batch_size=128, steps=20, warmup=3, repeats=3, nfe=20,
                variants=",".join(DEFAULT_VARIANTS), size_variants="bf16,bf16+compile", sections=",".join(SECTIONS))
QUICK = dict(config="digits_vp", batch_size=8, steps=2, warmup=1, repeats=2, nfe=4, sample_batch=8,
             variants="fp32,bf16", size_variants="bf16", sections="train,sampling,sizes")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _bench.add_common_args(p)
    p.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config", help=f"training config (name in configs/ or a path; default {DEFAULTS['config']})")
    p.add_argument("--batch-size", type=int, help="training batch (default 128)")
    p.add_argument("--steps", type=int, help="timed steps per run (default 20)")
    p.add_argument("--warmup", type=int, help="untimed steps per contender first, compile included (default 3)")
    p.add_argument("--repeats", type=int, help="interleaved timed rounds (default 3)")
    p.add_argument("--variants", help=f"comma list of {', '.join(VARIANTS)} (default {DEFAULTS['variants']})")
    p.add_argument("--size-variants", help=f"variants of the sizes section (default {DEFAULTS['size_variants']})")
    p.add_argument("--sections", help=f"comma list of {', '.join(SECTIONS)} (default all)")
    p.add_argument("--sample-batch", type=int, help="sampling batch (default 512 on cuda, --batch-size on cpu)")
    p.add_argument("--nfe", type=int, help="sampler steps (= score evaluations; default 20)")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="peak to report shares of (default 790)")
    p.add_argument("--budget-s", type=float, help="wall-clock allowance: trims repeats, compiled variants, sections")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sample_batch is None:
        args.sample_batch = 512 if args.device == "cuda" else args.batch_size
    if min(args.batch_size, args.steps, args.repeats, args.nfe, args.sample_batch) < 1 or args.warmup < 1:
        _bench.fail("--batch-size, --steps, --warmup, --repeats, --nfe and --sample-batch must be positive")
    if args.peak_tflops <= 0 or (args.budget_s is not None and args.budget_s <= 0):
        _bench.fail("--peak-tflops and --budget-s must be positive")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    size_variants = [v.strip() for v in args.size_variants.split(",") if v.strip()]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    for v in variants + size_variants:
        if v not in VARIANTS:
            _bench.fail(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    for s in sections:
        if s not in SECTIONS:
            _bench.fail(f"unknown section {s!r}; known: {', '.join(SECTIONS)}")
    device = _bench.setup(args)
    budget = Budget(args.budget_s)
    runner = Runner(args, device, budget)
    env = _bench.environment(device)
    precision_info = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32, "cudnn.benchmark": torch.backends.cudnn.benchmark,
                      "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                      "float32_matmul_precision": torch.get_float32_matmul_precision()}
    flop_check = linear_flop_check()
    print(f"gpu_speed on {_bench.environment_line(env)}; peak {args.peak_tflops:g} TFLOP/s; "
          f"FLOP counter check (Linear net): counted {flop_check['counted']}, by hand {flop_check['by_hand']}",
          flush=True)
    if not flop_check["equal"]:
        runner.notes.append(f"FLOP counter check failed: counted {flop_check['counted']}, by hand {flop_check['by_hand']}")
    missing_keys = sorted({k for v in variants for k in VARIANTS[v]} - train_config_keys())
    name = f"gpu_speed_{args.device}" + ("_quick" if args.quick else "")
    settings = {k: getattr(args, k) for k in ("config", "batch_size", "steps", "warmup", "repeats", "nfe",
                                               "sample_batch", "peak_tflops", "budget_s", "seed", "quick")}
    settings.update(variants=variants, size_variants=size_variants, sections=sections)

    def write(final: bool):
        markdown = markdown_report(runner, args, device, env, precision_info, final)
        result = {"settings": settings, "rows": runner.rows, "skipped": runner.skipped, "notes": runner.notes,
                  "flop_check": flop_check, "precision": precision_info, "missing_train_keys": missing_keys,
                  "complete": final, "environment": env,
                  "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        fig = figure(runner.rows, f"gpu_speed, {env['device_name']}, torch {env['torch']}", args.peak_tflops)
        paths = _bench.write_results(args.out, name, result, markdown, fig)
        return markdown, paths

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scoresde-gpu-speed-") as workdir:
        for i, section in enumerate(sections):
            # time kept for the sections still to come, at most half of what is left
            reserve = min(sum(SECTION_RESERVE[s] for s in sections[i + 1:]), 0.5 * budget.left())
            if budget.left() < 10:
                runner.skip(f"section {section}", "--budget-s exhausted")
                continue
            print(f"\n== {section}", flush=True)
            if section == "train":
                specs = training_specs(runner, args, "train", args.config, args.batch_size, variants, workdir)
            elif section == "sampling":
                specs = sampling_specs(runner, args, variants)
            elif section == "sizes":
                specs = size_specs(runner, args, size_variants)
            else:
                specs = training_specs(runner, args, "overhead", "digits_vp", 128, ["fp32"], workdir)
            runner.measure(specs, reserve)
            del specs
            free(device)
            write(final=False)
    markdown, paths = write(final=True)
    print("\n" + markdown)
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
