#!/usr/bin/env bash
# Device check: benchmarks/gpu_speed.py and benchmarks/memory.py on a CUDA GPU, in under 9 minutes on an H200.
#
#   bash benchmarks/gpu_check.sh            # from the repository root (or anywhere: it cd's there)
#   OUT=/some/dir bash benchmarks/gpu_check.sh [extra gpu_speed.py options]
#
# Writes gpu_speed_cuda.{json,md,png} and gpu_speed_cuda.log into "$OUT" if set, else
# benchmarks/results/. Needs torch with CUDA; diffusers is optional (without it the UNet2DModel rows
# are skipped with a note). Wheels found in .whl/ (e.g. diffusers and what it needs) are installed into
# /tmp/site first. torchsde, which scoresde imports for reverse_sde only, gets a stand-in if it is
# missing (gpu_speed.py never calls reverse_sde).
#
# Budget: gpu_speed.py gets --budget-s 310 (it trims timed rounds, compiled variants and whole
# sections to fit, and writes its files after every section) inside a hard `timeout` of 350 s, so a
# compile that runs long still leaves the finished sections' results. Settings: 15 timed steps per
# run, 3 warm-up steps, 3 interleaved rounds; the sizes section (DDPM-size nets, ours vs diffusers) at
# bf16 only, its compiled variant left out to keep the time for the main config's compiled rows.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$PY" -c "import torchsde" 2> /dev/null; then
    STUB="$(mktemp -d)"
    mkdir -p "$STUB/torchsde"
    cat > "$STUB/torchsde/__init__.py" << 'EOF'
"""Stand-in written by benchmarks/gpu_check.sh: torchsde is not installed on this machine. scoresde
imports it for reverse_sde only, which benchmarks/gpu_speed.py never calls; any use raises."""


def _missing(*args, **kwargs):
    raise ImportError("torchsde is not installed (a stand-in from benchmarks/gpu_check.sh)")


class BaseBrownian:
    def __init__(self, *args, **kwargs):
        _missing()


BrownianInterval = sdeint = _missing
EOF
    export PYTHONPATH="$STUB${PYTHONPATH:+:$PYTHONPATH}"
    echo "note: torchsde is not installed: a stand-in lets scoresde import (reverse_sde is unavailable; not used here)"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 || true
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available())"
"$PY" -c "import diffusers; print('diffusers', diffusers.__version__)" 2> /dev/null \
    || echo "diffusers: not installed: its UNet2DModel rows will be skipped (carry its wheel in .whl/)"

timeout -s INT -k 15 350 "$PY" benchmarks/gpu_speed.py --device cuda --steps 15 --warmup 3 --repeats 3 \
    --size-variants bf16 --budget-s 310 --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_speed_cuda.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    echo "gpu_speed.py exited with status $rc (124 or 130: stopped by the 350 s timeout; the sections finished before it are in $OUT_DIR)"
fi

# Memory: the fake-tensor estimate of DDPM++ deep's training step at batch 128 next to the real step's
# torch.cuda.max_memory_allocated, per variant (plain, checkpointing, accumulation; bf16 twins measured
# only). At most 150 s; its files are memory_cuda.{json,md,png} and memory_cuda.log.
timeout -s INT -k 15 150 "$PY" benchmarks/memory.py --device cuda --configs cifar10_ddpmpp_deep_continuous_vp \
    --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/memory_cuda.log"
mrc=${PIPESTATUS[0]}
[ "$mrc" -ne 0 ] && echo "memory.py exited with status $mrc"
[ "$rc" -ne 0 ] && exit "$rc"
exit "$mrc"
