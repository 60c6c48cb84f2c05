"""Every benchmark command runs (in its --quick form) and writes its JSON, markdown and PNG. No
timing is asserted here: the numbers belong to benchmarks/results/, measured side by side."""
import json
import os
import subprocess
import sys

import pytest

from conftest import HANG_TIMEOUT

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
