"""Static report of the dynamic-filter kernels as built for Hopper (sm_90), made on a machine without a GPU.

For each kernel (forward, grad-x, grad-kernels), representative shape and dtype, the real launcher is called on
``meta`` tensors and the kernel it launches is compiled for sm_90 (benchmarks/cross_compile.py). From the
cubin: registers, spills, shared memory, global loads / stores by width, SASS instructions and barriers per loop
iteration. From those, two **static estimates** for an H200:

* issue-bound time = warp instructions issued / (132 SMs x 4 issue slots per clock x 1.98 GHz). Instructions issued
  = grid x warps per program x instructions one warp executes (every SASS instruction once, those inside a loop
  once per trip; predicated-off instructions issue too). 132 SMs: PyTorch on the H200 here; 4 schedulers of one
  instruction per clock per SM: Hopper's SM; 1.98 GHz: the SM clock nvidia-smi read under load
  (/work/.library/device/KINDS.md, 2026-10-28).
* bandwidth floor = bytes the op must move (each input read once, each output written once) / 4.3 TB/s, the
  device-to-device copy bandwidth measured on that H200 (KINDS.md, 2026-10-28 and 2026-11-04).

A kernel whose issue-bound estimate is at or below its floor cannot be issue-limited before it is memory-limited;
neither number is a measurement. A third static fact says whether it can be latency-limited: the **warps an SM
holds** for each launch (registers are allocated per warp in units of 256 out of 65,536 per SM; at most 32 blocks
and 64 warps per SM; 228 KB of shared memory) — the first H200 measurements (bench_dynamic_filter.py) ran the
forward at 55 % of the floor with 12 resident warps per SM, where the issue estimate promised the floor.
Needs TRITON_INTERPRET unset.

    python benchmarks/kernel_report.py                                   # -> benchmarks/results/kernel_report.json
    python benchmarks/kernel_report.py --out benchmarks/results/kernel_report-before.json
    python benchmarks/kernel_report.py --table benchmarks/results/kernel_report.json   # the table of a JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from udvd_triton.files import write_json

RESULTS = Path(__file__).resolve().parent / "results"
H200 = {"sms": 132, "issue_per_clock_per_sm": 4, "clock_hz": 1.98e9, "copy_bandwidth_bytes_per_s": 4.3e12,
        "registers_per_sm": 65536, "max_blocks_per_sm": 32, "max_warps_per_sm": 64, "shared_bytes_per_sm": 228 * 1024,
        "dense_16bit_mma_flops_per_s": 989e12}
# (name, LR shape (N, C, H, W), scale, kernel size); all depthwise, as the model uses the op
SHAPES = [
    ("rgb-1920x1080-k5-s2", (1, 3, 1080, 1920), 2, 5),
    ("feat64-480x270-k5-s2", (1, 64, 270, 480), 2, 5),
    ("rgb-960x540-k9-s4", (1, 3, 540, 960), 4, 9),
]
DTYPES = ("fp32", "bf16")
OP_NAMES = {"forward": "fwd", "grad_x": "grad-x", "grad_kernels": "grad-kernels"}


def _mma_rows(case: dict[str, Any], k: dict[str, Any]) -> float:
    """Mean trips of a tensor-core program's loop over its rows (the last block of rows may be shorter)."""
    h = case["shape"][2]
    return h / math.ceil(h / k["ROWS"])


def _mma_channel_loops(case: dict[str, Any], k: dict[str, Any]) -> list[int]:
    """grad-kernels' loops over channel blocks, one per row of taps; none when one block holds every channel
    (Triton compiles a trip count of 1 in)."""
    blocks = math.ceil(case["shape"][1] / k["BLOCK_C"])
    return [blocks] * k["K"] if blocks > 1 else []


# Trip count of each loop the SASS of a kernel has, in address order, from the case and the kernel's constexprs
# (the depthwise kernels unroll their taps, grad-x up to k = 5 and a loop over the rows of taps beyond; grad-kernels
# with more channels than one block loops over them; the tensor-core kernels loop over their rows).
LoopTrips = Callable[[dict[str, Any], dict[str, Any]], list[float]]
LOOP_TRIPS: dict[str, LoopTrips] = {
    "_fwd_depthwise_kernel": lambda case, k: [],
    "_dx_depthwise_kernel": lambda case, k: [] if k["DY"] == k["K"] else [k["K"] // k["DY"]],
    "_dk_depthwise_kernel": lambda case, k: [],
    "_dk_depthwise_loop_kernel": lambda case, k: [case["shape"][1]],
    "_fwd_mma_kernel": lambda case, k: [_mma_rows(case, k)],
    "_dx_mma_kernel": lambda case, k: [_mma_rows(case, k)],
    "_dk_mma_kernel": lambda case, k: [_mma_rows(case, k), *_mma_channel_loops(case, k)],
}


def executed_instructions(row: dict[str, Any], key: str = "instructions") -> float:
    """Instructions one warp of one program executes: each SASS instruction once per trip of every loop it is in.
    ``key="mma_flops"``: the tensor-core operations those instructions do instead."""
    trips = LOOP_TRIPS[row["name"]](row["case"], row["constants"])
    if len(trips) != len(row["loops"]):
        raise RuntimeError(f"{row['name']}: {len(row['loops'])} loops in the SASS, the report expects {len(trips)}")
    total = row["sass_instructions" if key == "instructions" else key]
    # nested loops: an instruction in an inner loop is already counted once per trip of the outer one below
    for loop, n in zip(row["loops"], trips):
        outer = math.prod(t for other, t in zip(row["loops"], trips) if _contains(other, loop))
        total += loop[key] * (n - 1) * outer
    return total


def _contains(outer: dict[str, int], inner: dict[str, int]) -> bool:
    return outer is not inner and outer["first"] <= inner["first"] and inner["last"] <= outer["last"]


def traffic_bytes(case: dict[str, Any], op: str) -> int:
    """Compulsory bytes of one op: forward reads x and kernels and writes y; grad-x reads grad_out and kernels and
    writes dx; grad-kernels reads grad_out and x and writes dkernels."""
    n, c, h, w = case["shape"]
    s, k = case["scale"], case["kernel_size"]
    xb = torch.empty(0, dtype=_dtype(case["x_dtype"])).element_size()
    kb = torch.empty(0, dtype=_dtype(case["kernels_dtype"])).element_size()
    x, y, kern = n * c * h * w * xb, n * c * h * w * s * s * xb, n * k * k * s * s * h * w * kb
    return {"forward": x + kern + y, "grad_x": y + kern + x, "grad_kernels": y + x + kern}[op]


def _dtype(name: str) -> torch.dtype:
    from cross_compile import DTYPES as DT

    return DT[name]


def useful_fmas(case: dict[str, Any]) -> int:
    """Multiply-adds of the op's formula (the same count for all three ops, depthwise)."""
    n, c, h, w = case["shape"]
    return n * c * h * w * case["scale"] ** 2 * case["kernel_size"] ** 2


def resident_warps(registers: int, num_warps: int, shared_bytes: int) -> int:
    """Warps of one launch an SM holds at once (Hopper limits, ``H200``): registers are allocated per warp in units
    of 256 (8 per thread); blocks are also capped at 32 per SM, warps at 64, and by shared memory."""
    per_block = math.ceil(registers * 32 / 256) * 256 * num_warps
    blocks = min(H200["registers_per_sm"] // per_block, H200["max_blocks_per_sm"], H200["max_warps_per_sm"] // num_warps)
    if shared_bytes:
        blocks = min(blocks, H200["shared_bytes_per_sm"] // shared_bytes)
    return blocks * num_warps


def launch_facts(row: dict[str, Any]) -> dict[str, Any]:
    """What one launch (one compiled kernel and its grid) of an op contributes."""
    per_warp = executed_instructions(row)
    loops = [
        {"instructions": lp["instructions"], "barriers": lp["barriers"], "trips": t}
        for lp, t in zip(row["loops"], LOOP_TRIPS[row["name"]](row["case"], row["constants"]))
    ]
    keep = ("name", "grid", "num_warps", "constants", "registers", "spill_instructions", "stack_bytes",
            "shared_bytes", "global_accesses", "shared_accesses", "sass_instructions", "barriers", "ffma")  # fmt: skip
    return {
        **{k: row[k] for k in keep},
        "loops": loops,
        "instructions_per_warp": per_warp,
        "warp_instructions": math.prod(row["grid"]) * row["num_warps"] * per_warp,
        "mma_flops": math.prod(row["grid"]) * row["num_warps"] * executed_instructions(row, "mma_flops"),
        "resident_warps_per_sm": resident_warps(row["registers"], row["num_warps"], row["shared_bytes"]),
    }


def report_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One op on one case: the launches it makes (depthwise: interior and edge column blocks) and their sum."""
    case, op = rows[0]["case"], rows[0]["op"]
    launches = [launch_facts(r) for r in rows]
    issue_rate = H200["sms"] * H200["issue_per_clock_per_sm"] * H200["clock_hz"]
    warp_instructions = sum(lf["warp_instructions"] for lf in launches)
    nbytes = traffic_bytes(case, op)
    estimate_us = warp_instructions / issue_rate * 1e6
    floor_us = nbytes / H200["copy_bandwidth_bytes_per_s"] * 1e6
    return {
        "shape": case["name"],
        "dtype": case["x_dtype"],
        "op": OP_NAMES[op],
        "launches": launches,
        "registers": max(lf["registers"] for lf in launches),
        "spill_instructions": sum(lf["spill_instructions"] for lf in launches),
        "stack_bytes": max(lf["stack_bytes"] for lf in launches),
        "warp_instructions": warp_instructions,
        "thread_instructions_per_useful_fma": warp_instructions * 32 / useful_fmas(case),
        "bytes": nbytes,
        "issue_bound_us_static_estimate": estimate_us,
        "bandwidth_floor_us": floor_us,
        "estimate_over_floor": estimate_us / floor_us,
        "tensor_core_us_static_estimate": sum(lf["mma_flops"] for lf in launches) / H200["dense_16bit_mma_flops_per_s"] * 1e6,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per (shape, dtype, op); per launch: registers, spill instructions, global loads / stores by width,
    SASS instructions (per loop: body instructions / barriers x trips)."""
    lines = [
        "| shape | dtype | kernel | launch: grid, regs, spills, global ld / st by bits, SASS (loop body / bar x trips) "
        "| instr / FMA | issue est. us | tensor-core est. us | floor us | est / floor |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        parts = []
        for lf in r["launches"]:
            acc = " ".join(f"{k}x{v}" for k, v in lf["global_accesses"].items())
            body = "; ".join(f"{lp['instructions']}/{lp['barriers']} x{lp['trips']:.3g}" for lp in lf["loops"])
            edge = " edge" if lf["constants"].get("MASKED") else ""
            warps = lf.get("resident_warps_per_sm") or resident_warps(lf["registers"], lf["num_warps"],
                                                                      lf["shared_bytes"])  # older JSON: derived
            parts.append(
                f"{lf['grid'][0]}{edge}: {lf['registers']} regs ({warps} warps/SM), {lf['spill_instructions']} "
                f"spills, {acc}, "
                f"{lf['sass_instructions']} SASS{f' ({body})' if body else ''}, {lf['barriers']} bar"
            )
        tc = r.get("tensor_core_us_static_estimate")  # older JSON: none
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['op']} | {'<br>'.join(parts)} | "
            f"{r['thread_instructions_per_useful_fma']:.2f} | {r['issue_bound_us_static_estimate']:.0f} | "
            f"{f'{tc:.1f}' if tc else '-'} | {r['bandwidth_floor_us']:.0f} | {r['estimate_over_floor']:.2f} |"
        )
    return "\n".join(lines)


def _ptxas_version() -> str:
    from cross_compile import tool

    out = subprocess.run([tool("ptxas"), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "kernel_report.json")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the markdown table of a report and exit")
    parser.add_argument("--shapes", nargs="+", choices=[name for name, *_ in SHAPES], metavar="NAME",
                        help=f"only these shapes (default: all of {', '.join(name for name, *_ in SHAPES)})")
    parser.add_argument("--maxnreg", type=int, help="build with this register cap per thread (ptxas .maxnreg)")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())["rows"]))
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("kernel_report.py compiles for sm_90: run it with TRITON_INTERPRET unset", file=sys.stderr)
        return 2
    import triton

    from cross_compile import OPS, build_cases, nvidia_backend_available

    from udvd_triton.kernels.policy import LaunchPolicy

    if not nvidia_backend_available():
        print("kernel_report.py needs Triton's NVIDIA backend (ptxas, cuobjdump)", file=sys.stderr)
        return 2
    cases = [
        {"name": name, "shape": list(shape), "scale": s, "kernel_size": k, "depthwise": True,
         "x_dtype": dt, "kernels_dtype": dt}
        for name, shape, s, k in SHAPES for dt in DTYPES if args.shapes is None or name in args.shapes
    ]  # fmt: skip
    built = build_cases(cases, policy=LaunchPolicy(max_registers=args.maxnreg))
    rows = [report_row([b for b in built if b["case"] is case and b["op"] == op]) for case in cases for op in OPS]
    result = {
        "what": "static estimates from the sm_90 build, no GPU involved: issue-bound time vs bandwidth floor",
        "target": "cuda sm_90 (triton.backends.compiler.GPUTarget('cuda', 90, 32); Triton builds sm_90a)",
        "model": {
            **H200,
            "issue_bound": "warp instructions issued / (sms * issue_per_clock_per_sm * clock_hz)",
            "floor": "compulsory bytes / copy_bandwidth_bytes_per_s",
            "sources": "/work/.library/device/KINDS.md (H200: 132 SMs, 1980 MHz under load, 4.3 TB/s copy)",
        },
        "torch": torch.__version__,
        "triton": triton.__version__,
        "ptxas": _ptxas_version(),
        "python": platform.python_version(),
        "maxnreg": args.maxnreg,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(markdown_table(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
