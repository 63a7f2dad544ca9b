#!/usr/bin/env python
"""End-to-end ``upscale``: time and peak memory at 0.25, 1, 4 and 24 MP inputs, untiled vs tiled, on CPU or CUDA.

    python benchmarks/bench_upscale.py --device cpu --out benchmarks/results/cpu-upscale.json
    python benchmarks/bench_upscale.py --device cuda --dtypes fp32 bf16 --out benchmarks/results/h100-upscale.json
    python benchmarks/bench_upscale.py --table benchmarks/results/cpu-upscale.json     # markdown table of a JSON
    python benchmarks/bench_upscale.py --compare --model random-x2 --dtypes fp32 bf16 --out benchmarks/results/h200-compare.json

Inputs: the bundled example photo resized (bicubic) to 3:2 frames of 0.25, 1, 4 and 24 MP, uint8 RGB numpy.
Modes: ``untiled`` (``tile`` = the longer side: one window), ``tiled`` (``tile=None``: what a user gets, the tile
and batch chosen from free memory) and ``cli`` (``udvd upscale`` on a PNG of that size: decode, upscale, encode,
atomic write; timed and measured as a whole). A case whose estimated activations exceed 60 % of the free memory is
recorded as skipped, with the estimate.

CPU: every case runs in a fresh process; peak memory is that process's peak RSS (``ru_maxrss``: Python, torch, the
model, input and output included; ``rss_before_mb`` is the RSS just before the timed call). One timed call after a
small warm-up. CUDA: in this process; peak memory is ``torch.cuda.max_memory_allocated`` during the call, the time
the median of ``--repeat`` calls timed with CUDA events after one warm-up call.

Implementations (``--impls``): ``package`` is ``model.upscale``. Further ones (e.g. the GPU comparisons of the
reference UDVD, its ``torch.compile`` and this package's op at 1920x1080 -> 3840x2160) register a function in
``IMPLEMENTATIONS`` taking ``(model, image, mode)`` and returning the output; sizes are added to ``SIZES``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "chelsea.png"
SIZES: dict[str, tuple[int, int]] = {  # name -> LR (width, height)
    "0.25MP": (612, 408),
    "1MP": (1224, 816),
    "4MP": (2448, 1632),
    "24MP": (6000, 4000),
}
MODES = ("untiled", "tiled", "cli")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_SHARE = 0.6  # skip a case whose estimated activations exceed this share of the free memory


def _tile(mode: str, w: int, h: int) -> int | None:
    return max(w, h) if mode == "untiled" else None


def run_package(model, image: np.ndarray, mode: str):  # noqa: ANN001, ANN201 (any model, any output kind)
    h, w = image.shape[:2]
    return model.upscale(image, blur_sigma=1.0, noise_level=5.0, tile=_tile(mode, w, h), progress=False)


IMPLEMENTATIONS: dict[str, Callable] = {"package": run_package}


def make_input(size: str) -> np.ndarray:
    return make_input_wh(*SIZES[size])


def make_input_wh(w: int, h: int) -> np.ndarray:
    """The example photo resized (bicubic) to w x h, uint8 RGB (h, w, 3)."""
    with Image.open(EXAMPLE) as img:
        return np.asarray(img.convert("RGB").resize((w, h), Image.BICUBIC))


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    from udvd_triton import __version__

    info["udvd_triton"] = __version__
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def estimate(model, size: str, mode: str, device: torch.device, dtype: torch.dtype) -> dict:  # noqa: ANN001
    """The plan ``upscale`` would choose and its estimated activation bytes; ``skip`` when they would not fit."""
    from udvd_triton import inference
    from udvd_triton.images import as_input

    w, h = SIZES[size]
    image = as_input(np.zeros((h, w, 3), np.uint8))
    plan = inference._plan(model, image, _tile(mode, w, h), device, dtype)
    wh, ww = plan.window_size(h, w)
    activations = plan.batch * wh * ww * inference._bytes_per_lr_pixel(model, dtype)
    windows = len(list(plan.windows(h, w)))
    free = inference.available_memory(device)
    out = {"tile": plan.tile, "batch": plan.batch, "windows": windows, "est_activations_mb": activations / 2**20}
    if activations > MEMORY_SHARE * free:
        out["skip"] = f"estimated activations {activations / 2**30:.1f} GiB > {MEMORY_SHARE:.0%} of free {free / 2**30:.1f} GiB"
    return out


def child(args: argparse.Namespace) -> None:
    """One CPU case in this (fresh) process; prints one JSON line."""
    from udvd_triton import UDVD
    from udvd_triton.cli import main as cli_main

    torch.manual_seed(0)
    model = UDVD.from_pretrained(args.model)
    model.upscale(np.zeros((64, 64, 3), np.uint8), progress=False)  # warm-up: oneDNN primitives, caches
    if args.mode == "cli":
        out_dir = tempfile.mkdtemp(prefix="bench-upscale-")
        argv = ["upscale", args.input, "-o", out_dir, "--model", args.model, "--sigma", "1.0", "--noise", "5", "-q"]
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        code = cli_main(argv)
        seconds = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"udvd upscale failed with exit code {code}")
    else:
        image = make_input(args.size)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        IMPLEMENTATIONS[args.impl](model, image, args.mode)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024, "rss_before_mb": rss_before / 1024}))


def run_cpu_case(args: argparse.Namespace, impl: str, size: str, mode: str, inputs: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--size", size, "--mode", mode, "--impl", impl]
    if mode == "cli":
        cmd += ["--input", inputs[size]]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _cuda_time(fn: Callable[[], object], repeat: int) -> dict:
    """Median of ``repeat`` calls timed with CUDA events after one warm-up call; peak allocation beyond the start."""
    from bench_dynamic_filter import cuda_times

    times, peak = cuda_times(lambda _: fn(), repeat, warmup=1)
    return {"seconds": statistics.median(times), "seconds_all": times, "peak_cuda_mb": peak / 2**20}


def run_cuda_case(args: argparse.Namespace, model, impl: str, size: str, mode: str) -> dict:  # noqa: ANN001
    image = make_input(size)
    return _cuda_time(lambda: IMPLEMENTATIONS[impl](model, image, mode), args.repeat)


def benchmark(args: argparse.Namespace) -> dict:
    from udvd_triton import UDVD, imageio

    device = torch.device(args.device)
    results = []
    inputs: dict[str, str] = {}
    tmp = tempfile.TemporaryDirectory(prefix="bench-upscale-in-")
    if device.type == "cpu" and "cli" in args.modes:
        for size in args.sizes:
            inputs[size] = str(Path(tmp.name) / f"in-{size}.png")
            imageio.write_image(inputs[size], make_input(size))
    for dtype_name in args.dtypes if device.type == "cuda" else ["fp32"]:
        dtype = DTYPES[dtype_name]
        model = UDVD.from_pretrained(args.model, device=device, dtype=dtype)
        for impl in args.impls:
            for size in args.sizes:
                for mode in args.modes:
                    if mode == "cli" and (device.type != "cpu" or impl != "package"):
                        continue
                    w, h = SIZES[size]
                    row = {"impl": impl, "size": size, "lr": f"{w}x{h}", "mode": mode, "dtype": dtype_name,
                           **estimate(model, size, mode, device, dtype)}
                    if "skip" not in row:
                        os.sched_yield()
                        row["load_before"] = os.getloadavg()[0]
                        if device.type == "cpu":
                            row.update(run_cpu_case(args, impl, size, mode, inputs))
                        else:
                            row.update(run_cuda_case(args, model, impl, size, mode))
                    print(json.dumps(row), flush=True)
                    results.append(row)
    tmp.cleanup()
    return {"machine": machine(), "device": str(device), "model": args.model, "results": results}


# ---------------------------------------------------------------------- CUDA: reference UDVD vs this package

COMPARE_LR = (1920, 1080)  # x2 -> 3840x2160
LARGE_LR = (3840, 2160)  # x2 -> 7680x4320, through upscale(tile=None): must run as one window


def matmul_rate(dtype: torch.dtype = torch.bfloat16, n: int = 8192, reps: int = 10, device: str = "cuda") -> float:
    """Measured dense matmul rate in FLOP/s on random data (the arithmetic ceiling of the FLOP floor)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if device == "cpu":
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        return 2 * n**3 * reps / (time.perf_counter() - start)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3)


def count_macs(model, inputs: tuple[torch.Tensor, ...]) -> int:  # noqa: ANN001
    """Multiply-adds of one forward: every convolution (hooks) plus the dynamic filters (k*k per output element)."""
    from udvd_triton import model as model_module

    macs = 0

    def conv_hook(module: torch.nn.Conv2d, _inp, out: torch.Tensor) -> None:  # noqa: ANN001
        nonlocal macs
        macs += out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]

    original = model_module.dynamic_filter

    def counted(x, kernels, scale, kernel_size, depthwise=True, **kw):  # noqa: ANN001, ANN202
        nonlocal macs
        y = original(x, kernels, scale, kernel_size, depthwise, **kw)
        macs += y.numel() * kernel_size**2 * (1 if depthwise else x.shape[1])
        return y

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    model_module.dynamic_filter = counted
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        model_module.dynamic_filter = original
        for h in hooks:
            h.remove()
    return macs


class _UnfoldFilter:
    """Swap the model's dynamic filter for the reference UDVD's unfold + matmul PixelConv while active."""

    def __enter__(self) -> None:
        from bench_dynamic_filter import pixelconv_unfold

        from udvd_triton import model as model_module

        self.module, self.original = model_module, model_module.dynamic_filter
        model_module.dynamic_filter = lambda x, k, scale, kernel_size, depthwise=True: pixelconv_unfold(
            x, k, scale, kernel_size, depthwise
        )

    def __exit__(self, *exc: object) -> None:
        self.module.dynamic_filter = self.original


def _graphed(model, inputs: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:  # noqa: ANN001
    """The forward captured in a CUDA graph (static shapes: one capture, replayed)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(2):  # warm-up outside the capture: cuDNN autotuning, Triton compilation
            model(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        out = model(*inputs)[-1]

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def compare_cuda(args: argparse.Namespace) -> dict:
    """x2 1920x1080 -> 3840x2160, batch 1: the reference UDVD (unfold PixelConv), the same under torch.compile, this
    package's forward (Triton op; channels_last + cuDNN benchmark + CUDA graph) and ``upscale`` as a user calls it;
    then a 3840x2160 input through ``upscale(tile=None)``. Each case is recorded with its error instead of stopping
    the run."""
    from udvd_triton import UDVD, inference
    from udvd_triton.images import as_input

    rate = matmul_rate()
    rows = []

    def record(row: dict, fn: Callable[[], dict]) -> None:
        try:
            row.update(fn())
        except Exception as e:  # noqa: BLE001 (one failing case must not lose the others' numbers)
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        torch.cuda.empty_cache()
        if "seconds" in row and "flop_floor_s" in row:
            row["floor_fraction"] = row["flop_floor_s"] / row["seconds"]
        print(json.dumps(row), flush=True)
        rows.append(row)

    w, h = COMPARE_LR
    image_np = make_input_wh(w, h)
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        model = (UDVD(scale=2) if args.model == "random-x2" else UDVD.from_pretrained(args.model)).to("cuda", dtype)
        model.eval()
        g = torch.Generator().manual_seed(0)
        inputs = (
            torch.from_numpy(image_np).permute(2, 0, 1)[None].to("cuda", dtype) / 255,
            (0.1 * torch.randn(1, model.code_len, h, w, generator=g)).to("cuda", dtype),
            torch.full((1, 1, h, w), 5 / 255).to("cuda", dtype),
        )
        macs = count_macs(model, inputs)
        base = {"lr": f"{w}x{h}", "dtype": dtype_name, "macs": macs, "flop_floor_s": 2 * macs / rate}

        def forward(m=model, x=inputs) -> torch.Tensor:  # noqa: ANN001
            with torch.inference_mode():
                return m(*x)[-1]

        with _UnfoldFilter():
            record({**base, "impl": "reference"}, lambda: _cuda_time(forward, args.repeat))
            compiled = torch.compile(forward)
            record({**base, "impl": "reference+compile"}, lambda: _cuda_time(compiled, args.repeat))
            del compiled
        record({**base, "impl": "package-forward"}, lambda: _cuda_time(forward, args.repeat))

        def graphed() -> dict:
            torch.backends.cudnn.benchmark = True
            try:
                cl = model.to(memory_format=torch.channels_last)
                replay = _graphed(cl, tuple(t.contiguous(memory_format=torch.channels_last) for t in inputs))
                return _cuda_time(replay, args.repeat)
            finally:
                torch.backends.cudnn.benchmark = False
                model.to(memory_format=torch.contiguous_format)

        record({**base, "impl": "package-forward+channels_last+cudnn_benchmark+graph"}, graphed)
        record({**base, "impl": "package-upscale", "note": "uint8 in and out, replicate padding, maps: the user call"},
               lambda: _cuda_time(lambda: model.upscale(image_np, blur_sigma=1.0, noise_level=5.0, progress=False),
                                  args.repeat))
        lw, lh = LARGE_LR
        large = make_input_wh(lw, lh)
        plan = inference._plan(model, as_input(large), None, torch.device("cuda"), dtype)
        record({"lr": f"{lw}x{lh}", "dtype": dtype_name, "impl": "package-upscale", "windows":
                len(list(plan.windows(lh, lw))), "tile": plan.tile, "batch": plan.batch,
                "flop_floor_s": 2 * macs * (lw * lh) / (w * h) / rate},
               lambda: _cuda_time(lambda: model.upscale(large, blur_sigma=1.0, noise_level=5.0, progress=False),
                                  max(1, args.repeat // 2)))
        del model
        torch.cuda.empty_cache()
    return {"machine": machine(), "device": "cuda", "model": args.model, "bf16_matmul_tflops": rate / 1e12,
            "compare": rows}


def compare_table(data: dict) -> str:
    """Markdown table of ``compare_cuda`` results: time, FLOP floor beside it, peak memory."""
    lines = ["| LR input | dtype | implementation | time | FLOP floor | floor / time | peak CUDA alloc |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in data["compare"]:
        floor = f"{r['flop_floor_s'] * 1e3:.1f} ms" if "flop_floor_s" in r else "-"
        if "error" in r:
            lines.append(f"| {r['lr']} | {r['dtype']} | {r['impl']} | error: {r['error']} | {floor} | | |")
            continue
        # a replayed graph allocates nothing: its memory pool was taken at capture, before the measurement
        peak = "graph pool" if "graph" in r["impl"] else f"{r['peak_cuda_mb'] / 1024:.2f} GB"
        lines.append(f"| {r['lr']} | {r['dtype']} | {r['impl']} | {r['seconds'] * 1e3:.1f} ms | {floor} | "
                     f"{r.get('floor_fraction', 0):.0%} | {peak} |")
    return "\n".join(lines)


def table(data: dict) -> str:
    """Markdown table of a results JSON."""
    memory = "peak RSS" if data["device"] == "cpu" else "peak CUDA alloc"
    lines = [f"| input (LR) | mode | dtype | tile x batch (windows) | time | {memory} |", "|---|---|---|---|---|---|"]
    for r in data["results"]:
        if "skip" in r:
            measured, mem = f"skipped: {r['skip']}", "-"
        elif "error" in r:
            measured, mem = f"error: {r['error']}", "-"
        else:
            measured = f"{r['seconds']:.1f} s"
            mem = f"{(r.get('peak_rss_mb') or r.get('peak_cuda_mb')) / 1024:.2f} GB"
        lines.append(f"| {r['size']} ({r['lr']}) | {r['mode']} | {r['dtype']} | {r['tile']} x {r['batch']} "
                     f"({r['windows']}) | {measured} | {mem} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="udvd-x2-small", help="registry name, folder or file (default udvd-x2-small)")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--impls", nargs="+", default=["package"], help=f"of {sorted(IMPLEMENTATIONS)}")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32"], help="CUDA only (CPU: fp32)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per CUDA case (median)")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--table", metavar="JSON", help="print the markdown table of a results file and exit")
    p.add_argument("--compare", action="store_true",
                   help="CUDA: x2 1920x1080 reference UDVD (unfold PixelConv), its torch.compile and this package; "
                        "--model random-x2 times the paper-size model with random weights")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="package", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.table:
        data = json.loads(Path(args.table).read_text())
        print(compare_table(data) if "compare" in data else table(data))
        return
    if args.child:
        child(args)
        return
    unknown = set(args.impls) - set(IMPLEMENTATIONS)
    if unknown:
        p.error(f"unknown --impls {sorted(unknown)}; known: {sorted(IMPLEMENTATIONS)}")
    data = compare_cuda(args) if args.compare else benchmark(args)
    if args.out:
        from udvd_triton.files import write_json

        write_json(args.out, data)
    print(compare_table(data) if args.compare else table(data))


if __name__ == "__main__":
    main()
