"""Every benchmark command runs (in its --quick form) and writes its JSON, markdown and PNG. No
timing is asserted here: the numbers belong to benchmarks/results/, measured side by side."""
import json
import os
import subprocess
import sys

import pytest

from conftest import HANG_TIMEOUT, benchmark_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script,stem", [
    ("accuracy.py", "accuracy_vp_quick"),
    ("overhead.py", "overhead_mlp_unet_cpu_quick"),
    ("likelihood.py", "likelihood_gmm_mlp_unet_cpu_quick"),
    ("train_throughput.py", "train_throughput_mlp_cpu_quick"),
    ("inverse_problems.py", "inverse_problems_quick"),
])
def test_benchmark_quick_run_writes_its_results(tmp_path, script, stem):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", "--threads", "1",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=3 * HANG_TIMEOUT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    assert payload["environment"]["device"] == "cpu"
    assert (tmp_path / f"{stem}.md").read_text().count("|") > 10
    assert (tmp_path / f"{stem}.png").stat().st_size > 1000
    assert "|" in out.stdout  # the table is printed too


def test_gpu_speed_flop_counts_match_counts_by_hand():
    """The counter behind the TFLOP/s column against FLOPs counted by hand: the real backward (a first
    layer whose input needs no gradient computes only its weight gradient), not 3x the forward."""
    import torch
    gs = benchmark_module("gpu_speed")
    B, d_in, h, d_out = 5, 7, 11, 3
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(d_in, h), torch.nn.Tanh(), torch.nn.Linear(h, d_out))
    x = torch.randn(B, d_in)
    forward = 2 * B * d_in * h + 2 * B * h * d_out
    assert gs.forward_flops(lambda: net(x)) == forward
    assert gs.train_step_flops(lambda: net(x).square().mean(), net.parameters()) == \
        4 * B * d_in * h + 6 * B * h * d_out
    assert all(p.grad is None for p in net.parameters())
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    img = torch.randn(2, 4, 5, 5)
    assert gs.forward_flops(lambda: conv(img)) == 2 * 2 * 6 * 5 * 5 * 4 * 3 * 3


def test_gpu_speed_quick_run_writes_rows_with_positive_rates(tmp_path):
    import math
    stem = "gpu_speed_cpu_quick"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_speed.py"), "--quick", "--threads", "1",
                          "--device", "cpu", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=3 * HANG_TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads((tmp_path / f"{stem}.json").read_text())
    assert payload["environment"]["device"] == "cpu" and payload["complete"]
    assert (tmp_path / f"{stem}.md").read_text().count("|") > 10
    assert (tmp_path / f"{stem}.png").stat().st_size > 1000
    assert "| what |" in out.stdout
    check = payload["flop_check"]
    assert check["counted"] == check["by_hand"] == \
        4 * check["batch"] * check["d_in"] * check["hidden"] + 6 * check["batch"] * check["hidden"] * check["d_out"]
    rows = payload["rows"]
    kinds = {(r["section"], r["loop"], r["variant"]) for r in rows}
    for loop in ("bare", "trainer"):
        for variant in ("fp32", "bf16"):
            assert ("train", loop, variant) in kinds
    for sampler in ("DDIM", "DPM-Solver++(2M)"):
        for variant in ("fp32", "bf16"):
            assert ("sampling", sampler, variant) in kinds
    assert any(r["section"] == "sizes" and r["net"] == "ddpm" for r in rows)
    for r in rows:
        for key in ("rate", "tflops", "share_of_peak", "flops_per_unit"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["what"], key, r[key])
        assert all(math.isfinite(v) and v > 0 for v in r["rates"]) and len(r["rates"]) == r["rounds"] >= 1
        assert abs(r["tflops"] - r["rate"] * r["flops_per_unit"] / 1e12) <= 1e-9 * r["tflops"]
        assert abs(r["share_of_peak"] - r["tflops"] / 790.0) <= 1e-9 * r["share_of_peak"]
        assert r["peak_memory_bytes"] is None  # n/a on CPU
    # one network, one FLOP count: the bare loop and the Trainer train the same net
    assert len({r["flops_per_unit"] for r in rows if r["section"] == "train"}) == 1
    # sampling: forward FLOPs per image x NFE, the same per evaluation for both samplers
    per_eval = {r["flops_per_unit"] / r["nfe"] for r in rows if r["section"] == "sampling"}
    assert len(per_eval) == 1
