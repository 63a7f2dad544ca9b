#!/usr/bin/env bash
# Everything a lent GPU should check, in one command of under 10 minutes (an H200 session's per-call limit): the
# versions, the whole test suite with the GPU-marked tests, the dynamic-filter / end-to-end / training benchmarks,
# and an Nsight Compute profile of the forward kernel. Each part has its own time limit, so a hang or a slow part
# cannot take the others' results with it; logs and JSON land in $OUT (default benchmarks/results/gpu-session).
#
#   bash benchmarks/gpu_session.sh                  # all parts, ~9 min on an H200
#   PARTS="tests ncu" bash benchmarks/gpu_session.sh
#   PARTS=maxnreg bash benchmarks/gpu_session.sh     # not in the default: the Triton op at 1080p under register caps
#
# The package's dependencies are expected installed, except pypng (16-bit colour PNGs), which the H200 image lacks:
# its wheel in .whl/ (git-ignored; `pip download --no-deps -d .whl pypng`) is installed from there.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-session}
PARTS=${PARTS:-"tests dynamic_filter compare training ncu"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }
has() { [[ " $PARTS " == *" $1 "* ]]; }

python3 -c "import png" 2>/dev/null || python3 -m pip install -q --no-index --no-deps .whl/pypng-*.whl || exit 2
python3 -c "import udvd_triton" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 2
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used,temperature.gpu --format=csv \
    | tee "$OUT/nvidia-smi.csv"
python3 -c "import json, platform, torch, triton; print(json.dumps({'gpu': torch.cuda.get_device_name(),
    'torch': torch.__version__, 'triton': triton.__version__, 'cuda': torch.version.cuda,
    'python': platform.python_version()}))" | tee "$OUT/versions.json"

if has tests; then
    stamp "tests"
    # 8 workers x 2 threads: 14 workers x 16 threads each starved the CPU-side tests on the first H200 run (half the
    # suite in 190 s). Per-test time limit and verbose lines: a killed run still says which tests passed or failed.
    flags=(-p no:cacheprovider -rfEs --durations 25 -v)
    python3 -c "import xdist" 2>/dev/null && flags+=(-n 8)
    python3 -c "import pytest_timeout" 2>/dev/null && flags+=(--timeout 150)
    OMP_NUM_THREADS=2 timeout 240 python3 -m pytest "${flags[@]}" > "$OUT/pytest.log" 2>&1
    echo "pytest exit $?"
    grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)|Timeout" "$OUT/pytest.log" | tail -30
fi
if has dynamic_filter; then
    stamp "bench_dynamic_filter"
    timeout 150 python3 benchmarks/bench_dynamic_filter.py --dtypes fp32 bf16 --warmup 3 --iters 20 \
        --out "$OUT/dynamic_filter.json" > "$OUT/bench_dynamic_filter.log" 2>&1
    echo "exit $?"; grep "^|" "$OUT/bench_dynamic_filter.log" | grep -E "triton|---|case" | head -20
fi
if has maxnreg; then
    stamp "bench_dynamic_filter: RGB 1920x1080 under register caps (more resident warps per SM)"
    timeout 120 python3 benchmarks/bench_dynamic_filter.py --cases rgb-1920x1080 --impls triton --maxnreg 128 96 \
        --dtypes fp32 bf16 fp32+bf16 --warmup 3 --iters 20 --out "$OUT/maxnreg.json" > "$OUT/maxnreg.log" 2>&1
    echo "exit $?"; grep "^|" "$OUT/maxnreg.log"
fi
if has compare; then
    stamp "bench_upscale --compare"
    timeout 100 python3 benchmarks/bench_upscale.py --compare --model random-x2 --dtypes fp32 bf16 --repeat 5 \
        --out "$OUT/compare.json" > "$OUT/bench_compare.log" 2>&1
    echo "exit $?"; grep "^|" "$OUT/bench_compare.log"
fi
if has training; then
    stamp "bench_training"
    timeout 75 python3 benchmarks/bench_training.py --steps 20 --paper-steps 50 --json "$OUT/training.json" \
        > "$OUT/bench_training.log" 2>&1
    echo "exit $?"; grep -E '"steps_per_s"|speedup' "$OUT/bench_training.log" | head
fi
if has ncu && command -v ncu > /dev/null; then
    stamp "ncu: one forward and one backward launch, RGB 1920x1080 x2 5x5, fp32"
    timeout 90 ncu --clock-control none --target-processes all -k regex:"_(fwd|dx|dk)" --launch-count 6 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis python3 -c "
import torch
from udvd_triton.ops import dynamic_filter
x = torch.randn(1, 3, 1080, 1920, device='cuda', requires_grad=True)
k = torch.randn(1, 100, 1080, 1920, device='cuda', requires_grad=True)
y = dynamic_filter(x, k, 2, 5, True)
torch.autograd.grad(y, (x, k), torch.randn_like(y))
torch.cuda.synchronize()" > "$OUT/ncu.txt" 2>&1
    echo "exit $?"; grep -E "^  _|Duration|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per" \
        "$OUT/ncu.txt" | head -40
fi
stamp "done"
