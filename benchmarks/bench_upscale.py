#!/usr/bin/env python
"""End-to-end ``upscale``: time and peak memory at 0.25, 1, 4 and 24 MP inputs, untiled vs tiled, on CPU or CUDA.

    python benchmarks/bench_upscale.py --device cpu --out benchmarks/results/cpu-upscale.json
    python benchmarks/bench_upscale.py --device cuda --dtypes fp32 bf16 --out benchmarks/results/h100-upscale.json
    python benchmarks/bench_upscale.py --table benchmarks/results/cpu-upscale.json     # markdown table of a JSON

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
    w, h = SIZES[size]
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

    w, h = SIZES[size]
    image = inference._as_input(np.zeros((h, w, 3), np.uint8))
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


def run_cuda_case(args: argparse.Namespace, model, impl: str, size: str, mode: str) -> dict:  # noqa: ANN001
    image = make_input(size)
    fn = IMPLEMENTATIONS[impl]
    fn(model, image, mode)  # warm-up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(model, image, mode)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return {"seconds": statistics.median(times), "seconds_all": times,
            "peak_cuda_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}


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
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="package", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    if args.child:
        child(args)
        return
    unknown = set(args.impls) - set(IMPLEMENTATIONS)
    if unknown:
        p.error(f"unknown --impls {sorted(unknown)}; known: {sorted(IMPLEMENTATIONS)}")
    data = benchmark(args)
    if args.out:
        from udvd_triton.files import write_json

        write_json(args.out, data)
    print(table(data))


if __name__ == "__main__":
    main()
