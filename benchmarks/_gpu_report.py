"""The report of gpu_speed.py: the markdown (table, notes on how the numbers are made, skipped
contenders) and the figure (TFLOP/s per row, share of the peak on the top axis)."""
from __future__ import annotations

import resource
from typing import List, Optional

import torch

import _bench
from _gpu_runner import Runner


def gib(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 2 ** 30:.2f} GiB"


def rate_text(row: dict) -> str:
    unit = "steps/s" if row["unit"] == "steps/s" else "images/s"
    v = row["rate"]
    return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"


def table(rows: List[dict], peak: float) -> str:
    """The rows as a markdown table: rate, TFLOP/s, share of ``peak``, peak memory, warm-up."""
    return _bench.markdown_table(
        ["what", "steps/s or images/s", "TFLOP/s", f"share of {peak:g} TFLOP/s", "peak memory", "warm-up s"],
        [[r["what"], rate_text(r), "–" if r["tflops"] is None else f"{r['tflops']:.3g}",
          "–" if r["share_of_peak"] is None else f"{100 * r['share_of_peak']:.3g}%",
          gib(r["peak_memory_bytes"]), f"{r['warmup_seconds']:.1f}"] for r in rows],
        [False, True, True, True, True, True])


def figure(rows: List[dict], title: str, peak: float):
    """TFLOP/s per row as horizontal bars coloured by section, each labelled with its rate."""
    fig = _bench.new_figure(9, 1.6 + 0.32 * max(len(rows), 1))
    ax = fig.add_subplot()
    colors = {"train": "tab:blue", "sampling": "tab:green", "sizes": "tab:orange", "overhead": "0.5"}
    ys = list(range(len(rows)))[::-1]
    values = [r["tflops"] or 0.0 for r in rows]
    ax.barh(ys, values, color=[colors.get(r["section"], "0.5") for r in rows])
    for y, v, r in zip(ys, values, rows):
        ax.annotate(" " + rate_text(r), (v, y), va="center", fontsize=7)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["what"] for r in rows], fontsize=6)
    ax.set_xlim(0, 1.3 * max(values + [1e-12]))
    top = ax.secondary_xaxis("top", functions=(lambda x: 100 * x / peak, lambda s: s * peak / 100))
    top.set_xlabel(f"% of {peak:g} TFLOP/s", fontsize=8)
    ax.set_xlabel("TFLOP/s achieved (counted FLOPs x rate); labels: steps/s or images/s")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig


def markdown_report(runner: Runner, args, device: torch.device, env: dict, precision_info: dict,
                    final: bool) -> str:
    """The markdown of the rows measured so far; ``final`` False marks it partial."""
    header = (f"GPU speed, {env['device']} ({env['device_name']}), torch {env['torch']}: median of up to "
              f"{args.repeats} interleaved runs of {args.steps} steps (sampling: of one run) after "
              f"{args.warmup} warm-up steps (one run); share of {args.peak_tflops:g} TFLOP/s"
              + ("" if final else " (partial: sections still running)") + ".\n\n")
    notes = ["FLOPs: FlopCounterMode on one real forward + backward (sampling: forward x NFE); matmul, "
             "convolution and attention FLOPs of the network, the same for every variant.",
             "Trainer rows: Trainer.fit with checkpoint writes off; batches come from host memory, the "
             "bare loop's from data on the device."]
    if device.type == "cuda":
        notes.append(f"fp32 rows: cuDNN TF32 {precision_info['cudnn.allow_tf32']}, matmul TF32 "
                     f"{precision_info['cuda.matmul.allow_tf32']}, cudnn.benchmark "
                     f"{precision_info['cudnn.benchmark']} (torch's defaults unless changed).")
    if any(r.get("synthetic_data") for r in runner.rows):
        notes.append("Training data: random pixels of the data set's shape (its folder is not on this machine).")
    if device.type == "cuda":
        notes.append("Peak memory: the contender's weights, gradients, optimizer state and EMA + its first timed "
                     "run's torch.cuda.max_memory_allocated above what was allocated before it.")
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        notes.append(f"Peak memory: n/a on CPU (per contender); the whole process peaked at {gib(rss)} RSS.")
        notes.append("On CPU the bare loop's bf16 runs under CPU autocast; the Trainer applies train.amp only "
                     "where it autocasts (CUDA at the time of writing), so its bf16 rows may be fp32.")
    notes += runner.notes
    skipped = [f"skipped: {s['what']}: {s['reason']}" for s in runner.skipped]
    return header + table(runner.rows, args.peak_tflops) + "\n" + "\n".join(
        f"- {line}" for line in notes + skipped) + f"\n\n{_bench.environment_line(env)}\n"
