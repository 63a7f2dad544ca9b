"""Every kernel compiles for Hopper (sm_90) without a register spill, checked on a machine without a GPU.

The real launchers run on ``meta`` tensors under a stand-in Triton driver whose target is sm_90, and compile instead
of launching (benchmarks/cross_compile.py); ptxas's output is read with the cuobjdump Triton ships. This needs
TRITON_INTERPRET unset when the kernels are imported, while the rest of the suite runs them under the interpreter,
so the compiling happens in subprocesses (two, one per CPU core), once per test session.

The cases pick the specialisations the launchers produce: every dtype (fp32, bf16, fp16, fp64; fp32 x with bf16 or
fp16 kernels), the CUDA-core and tensor-core depthwise kernels, both modes, k in 1..9, s in 1..4, contiguous and channels-last strides, rows on 16 bytes or not
(vector or scalar columns), channel counts below, at and above a channel block (ragged too), int32 and int64
offsets; each compiles its interior and edge launches of the forward, grad-x and grad-kernels kernels.
"""

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

CROSS_COMPILE = Path(__file__).resolve().parents[1] / "benchmarks" / "cross_compile.py"  # a dev tool, not installed
sys.path.insert(0, str(CROSS_COMPILE.parent))
from cross_compile import OPS, nvidia_backend_available  # noqa: E402

pytestmark = pytest.mark.skipif(not nvidia_backend_available(), reason="Triton without its NVIDIA backend")


def _case(shape, s, k, x_dtype, kernels_dtype=None, depthwise=True, **layout):
    return {"shape": shape, "scale": s, "kernel_size": k, "depthwise": depthwise, "x_dtype": x_dtype,
            "kernels_dtype": kernels_dtype or x_dtype, **layout}  # fmt: skip


CASES = {  # LR shapes; W = 320: rows on 16 bytes (vector loads), W = 300: not (one column per thread)
    "rgb-s2k5-fp32": _case([1, 3, 8, 320], 2, 5, "fp32"),
    "rgb-s3k3-fp32-x-bf16-kernels": _case([1, 3, 8, 320], 3, 3, "fp32", "bf16"),
    "rgb-s3k5-bf16": _case([1, 3, 8, 320], 3, 5, "bf16"),  # grad-x spilled here (s = 3's padding sub-pixels)
    "feat64-s4k3-fp32-x-fp16-kernels": _case([1, 64, 8, 320], 4, 3, "fp32", "fp16"),
    # tensor-core kernels (16-bit, C >= 16): one channel block; ragged blocks (grad-kernels loops over them) with
    # s = 4, k = 9 and unaligned rows; channels-last; int64 offsets
    "feat64-s2k5-bf16-mma": _case([1, 64, 16, 320], 2, 5, "bf16"),
    "c80-s4k9-fp16-mma-unaligned-rows": _case([1, 80, 8, 300], 4, 9, "fp16"),
    "c16-s3k3-bf16-mma-channels-last": _case([1, 16, 8, 320], 3, 3, "bf16", channels_last=True),
    "c16-s1k7-fp16-mma-int64": _case([1, 16, 8, 320], 1, 7, "fp16", huge_stride=True),
    "c8-s2k7-bf16": _case([1, 8, 8, 320], 2, 7, "bf16"),  # grad-kernels' channel loop over 3 blocks of tap rows
    "rgb-s1k9-bf16-unaligned-rows": _case([1, 3, 8, 300], 1, 9, "bf16"),
    "c6-s2k3-fp16-unaligned-rows": _case([1, 6, 8, 300], 2, 3, "fp16"),
    "rgb-s2k3-fp32-channels-last": _case([1, 3, 8, 320], 2, 3, "fp32", channels_last=True),
    "rgb-s2k1-fp32-x-fp16-kernels-int64": _case([1, 3, 8, 320], 2, 1, "fp32", "fp16", huge_stride=True),
    "rgb-s2k3-fp64": _case([1, 3, 8, 40], 2, 3, "fp64"),
    "full-s2k3-fp32": _case([1, 2, 8, 40], 2, 3, "fp32", depthwise=False),
    "full-s1k1-bf16-x-fp32-kernels": _case([1, 3, 8, 40], 1, 1, "bf16", "fp32", depthwise=False),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Compile every case (two worker processes) and return the kernels' facts by case name."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    names = list(CASES)
    halves = [names[0::2], names[1::2]]  # the slow cases are spread over both halves
    procs = []
    for part, chunk in enumerate(halves):
        path = tmp_path_factory.mktemp("sm90") / f"cases{part}.json"
        path.write_text(json.dumps([{**CASES[name], "name": name} for name in chunk]))
        cmd = [sys.executable, str(CROSS_COMPILE), str(path)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == 0, f"compiling for sm_90 failed:\n{err[-4000:]}"
        for row in json.loads(out):
            rows[row["case"]["name"]].append(row)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_compiles_for_sm90_without_spills(built, name):
    rows = built[name]
    assert {r["op"] for r in rows} == set(OPS)
    for r in rows:
        what = f"{r['name']} {r['op']} {r['constants']}"
        assert r["spill_instructions"] == 0 and r["stack_bytes"] == 0 and r["local_bytes"] == 0, (
            f"{what}: {r['registers']} registers, {r['spill_instructions']} spill instructions, "
            f"{r['stack_bytes']} B stack"
        )
        assert r["sass_instructions"] > 0 and r["registers"] <= 255, what
