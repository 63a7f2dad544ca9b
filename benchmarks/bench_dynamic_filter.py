"""GPU benchmark of the dynamic filter: fused Triton op vs the reference UDVD's unfold + matmul PixelConv (eager and
torch.compile'd) and the tap-loop PyTorch reference of udvd_triton.ops.

Times forward and forward+backward (CUDA events, median over rotated input sets so that L2 is cold), reports achieved
GB/s against the compulsory traffic, the bandwidth floor (that traffic at the device-to-device copy bandwidth measured
in the same run) and the peak memory beyond the inputs. Writes benchmarks/results/<device>-dynamic_filter.json and
prints a markdown table.

    python benchmarks/bench_dynamic_filter.py                 # all cases, fp32 and bf16
    python benchmarks/bench_dynamic_filter.py --quick         # smallest case only, fewer iterations
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from udvd_triton.kernels import launch
from udvd_triton.kernels.policy import LaunchPolicy
from udvd_triton.ops import dynamic_filter, dynamic_filter_reference, kernel_channels

RESULTS = Path(__file__).resolve().parent / "results"
# (name, N, C, H, W, scale, kernel_size, depthwise): LR sizes; the 3-channel cases are UDVD's image filters, the
# same shapes as benchmarks/kernel_report.py's static estimates
CASES = [
    ("rgb-960x540", 1, 3, 540, 960, 2, 5, True),
    ("rgb-1920x1080", 1, 3, 1080, 1920, 2, 5, True),
    ("feat64-480x270", 1, 64, 270, 480, 2, 5, True),
    ("rgb-960x540-s4k9", 1, 3, 540, 960, 4, 9, True),
]
# name -> (x dtype, kernels dtype); "fp32+bf16" is what the model runs under bf16 autocast (image fp32, kernels bf16)
DTYPES = {
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp32+bf16": (torch.float32, torch.bfloat16),
}


def pixelconv_unfold(
    x: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool
) -> torch.Tensor:
    """The reference UDVD implementation's PixelConv: unfold k x k patches, one small matmul per pixel, pixel shuffle.

    Materialises the (N, H, W, C, k*k) patch tensor and the (N, C*s*s, H, W) pre-shuffle output; kernels of
    another dtype than x are cast to x's first (a matmul takes one dtype), as the model used to do.
    """
    kernels = kernels.to(x.dtype)
    n, c, h, w = x.shape
    k, p = kernel_size, (kernel_size - 1) // 2
    patches = F.pad(x, [p] * 4).unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H, W, ky, kx)
    patches = patches.permute(0, 2, 3, 1, 5, 4).reshape(n, h, w, c if depthwise else 1, -1)  # taps dx-major
    mats = kernels.permute(0, 2, 3, 1).reshape(n, h, w, k * k if depthwise else c * k * k, -1)
    out = torch.matmul(patches, mats).permute(0, 3, 4, 1, 2).reshape(n, -1, h, w)
    return F.pixel_shuffle(out, scale)


def triton_op(x, kernels, scale, kernel_size, depthwise):
    return dynamic_filter(x, kernels, scale, kernel_size, depthwise, backend="triton")


def triton_with(policy: LaunchPolicy) -> Callable:
    """The op's three launchers under ``policy`` (e.g. a register cap), differentiable like the registered op."""

    class Op(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, kernels, scale, kernel_size, depthwise):  # noqa: ANN001, ANN205
            ctx.save_for_backward(x, kernels)
            ctx.args = (scale, kernel_size, depthwise)
            return launch.dynamic_filter_forward(x, kernels, scale, kernel_size, depthwise, policy=policy)

        @staticmethod
        def backward(ctx, grad_out):  # noqa: ANN001, ANN205
            x, kernels = ctx.saved_tensors
            dx = launch.dynamic_filter_grad_x(grad_out, kernels, *ctx.args, policy=policy)
            dk = launch.dynamic_filter_grad_kernels(grad_out, x, *ctx.args, dtype=kernels.dtype, policy=policy)
            return dx, dk, None, None, None

    return Op.apply


IMPLS: dict[str, Callable] = {
    "triton": triton_op,
    "unfold": pixelconv_unfold,
    "unfold+compile": torch.compile(pixelconv_unfold, dynamic=False),
    "torch-ref": dynamic_filter_reference,
}


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting the read and the write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / statistics.median(times)


def traffic(n, c, h, w, s, k, depthwise, x_bytes: int, k_bytes: int, backward: bool) -> int:
    """Compulsory bytes: forward reads x and kernels and writes y; the backward reads grad_out, x and kernels and
    writes dx and dkernels (each tensor once, the least any implementation can move). x, y, grad_out and dx have
    x's itemsize, kernels and dkernels the kernels'."""
    x = n * c * h * w * x_bytes
    kern = n * kernel_channels(c, s, k, depthwise) * h * w * k_bytes
    y = x * s * s
    if backward:
        return 3 * x + 2 * y + 3 * kern
    return x + kern + y


def bench_one(fn, case, dtypes, backward: bool, warmup: int, iters: int, sets: int) -> dict:
    name, n, c, h, w, s, k, depthwise = case
    x_dtype, k_dtype = dtypes
    inputs = []
    for _ in range(sets):
        x = torch.randn(n, c, h, w, device="cuda", dtype=x_dtype, requires_grad=backward)
        kern = torch.randn(n, kernel_channels(c, s, k, depthwise), h, w, device="cuda", dtype=k_dtype)
        kern.requires_grad_(backward)
        grad = torch.randn(n, c, s * h, s * w, device="cuda", dtype=x_dtype) if backward else None
        inputs.append((x, kern, grad))

    def step(i):  # returns every tensor the step made, so the caller frees them before the next one
        x, kern, grad = inputs[i % sets]
        y = fn(x, kern, s, k, depthwise)
        return (y, *torch.autograd.grad(y, (x, kern), grad)) if backward else (y,)

    times, peak = cuda_times(step, iters, warmup)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "peak_extra_mib": peak / 2**20}


def cuda_times(step: Callable[[int], object], iters: int, warmup: int) -> tuple[list[float], int]:
    """Seconds of each of ``iters`` calls ``step(i)`` timed with CUDA events after ``warmup`` untimed ones, and the
    peak allocation above what was allocated before the timed calls."""
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        made = step(i)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
        del made  # freed before the next call, after the timed region
    return times, torch.cuda.max_memory_allocated() - base


def check_against_unfold(case, dtypes) -> float:
    """max |triton - unfold| / max |unfold| on one input, both computed in float32 from the same inputs."""
    _, n, c, h, w, s, k, depthwise = case
    x = torch.randn(n, c, h, w, device="cuda", dtype=dtypes[0])
    kern = torch.randn(n, kernel_channels(c, s, k, depthwise), h, w, device="cuda", dtype=dtypes[1])
    ref = pixelconv_unfold(x.float(), kern.float(), s, k, depthwise)
    got = triton_op(x, kern, s, k, depthwise).float()
    return float((got - ref).abs().max() / ref.abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="first case only, 3 warm-up and 10 timed iterations")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--sets", type=int, default=3, help="input sets rotated between iterations (cold L2)")
    parser.add_argument("--cases", nargs="+", choices=[c[0] for c in CASES], help="only these cases (default: all)")
    parser.add_argument(
        "--maxnreg", nargs="+", type=int, default=[], metavar="N",
        help="also time the Triton op with each register cap per thread (ptxas .maxnreg): rows 'triton@maxnreg=N'",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: results/<device>-dynamic_filter.json)"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_dynamic_filter.py needs a CUDA GPU: torch.cuda.is_available() is False. Nothing was measured.")
        return 2
    import triton

    cases = [c for c in CASES if c[0] in args.cases] if args.cases else CASES[:1] if args.quick else CASES
    runs = [(impl, IMPLS[impl]) for impl in args.impls]
    runs += [(f"triton@maxnreg={n}", triton_with(LaunchPolicy(max_registers=n))) for n in args.maxnreg]
    warmup, iters = (3, 10) if args.quick else (args.warmup, args.iters)
    device = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"{device}: device-to-device copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    rows = []
    for case in cases:
        name, n, c, h, w, s, k, depthwise = case
        for dname in args.dtypes:
            dtypes = DTYPES[dname]
            err = check_against_unfold(case, dtypes)
            for backward in (False, True):
                nbytes = traffic(n, c, h, w, s, k, depthwise, dtypes[0].itemsize, dtypes[1].itemsize, backward)
                floor_ms = nbytes / bw * 1e3
                for impl, fn in runs:
                    if impl == "unfold+compile":  # fresh compile per shape / dtype / pass: past dynamo's recompile
                        torch._dynamo.reset()  # limit (8) the compiled function would silently run eager
                    try:
                        r = bench_one(fn, case, dtypes, backward, warmup, iters, args.sets)
                    except torch.cuda.OutOfMemoryError:
                        r = {"median_ms": None, "min_ms": None, "peak_extra_mib": None, "error": "out of memory"}
                    torch.cuda.empty_cache()
                    ms = r["median_ms"]
                    rows.append({
                        "case": name, "shape": [n, c, h, w], "scale": s, "kernel_size": k, "depthwise": depthwise,
                        "dtype": dname, "pass": "fwd+bwd" if backward else "fwd", "impl": impl, **r,
                        "bytes": nbytes, "floor_ms": floor_ms,
                        "achieved_gbps": nbytes / ms / 1e6 if ms else None,
                        "floor_fraction": floor_ms / ms if ms else None,
                        "triton_rel_err_vs_unfold": err,
                    })  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    result = {
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "copy_bandwidth_gbps": bw / 1e9,
        "warmup": warmup,
        "iters": iters,
        "input_sets": args.sets,
        "rows": rows,
    }
    out = args.out or RESULTS / f"{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}-dynamic_filter.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(rows))
    print(f"wrote {out}")
    return 0


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| case | dtype | pass | impl | median ms | GB/s | floor ms | floor / time | peak extra MiB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["median_ms"] is None:
            lines.append(f"| {r['case']} | {r['dtype']} | {r['pass']} | {r['impl']} | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['pass']} | {r['impl']} | {r['median_ms']:.3f} | "
            f"{r['achieved_gbps']:.0f} | {r['floor_ms']:.3f} | {r['floor_fraction']:.0%} | {r['peak_extra_mib']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
