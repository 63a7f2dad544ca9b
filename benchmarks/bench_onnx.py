"""ONNX Runtime (CPU) against PyTorch (CPU), 2 threads each, per megapixel of LR input; the exported files' sizes.

The floor beside the times: the forward's multiply-adds (convolutions + dynamic filters, ``bench_upscale.count_macs``)
at the float32 matmul rate measured on the same 2 threads.

For each model: ``udvd_triton.export.export_onnx`` (form "maps"; float32, and float16 for its size), then the same
forward on a 256 x 256 LR input (image, code map, noise map) in PyTorch (eager, inference mode) and in ONNX Runtime's
CPU provider (all graph optimisations); median of ``--repeat`` runs after one warm-up, the largest difference between
the two outputs beside. Writes ``results/onnx-cpu.json`` and prints a markdown table.

    python benchmarks/bench_onnx.py --models udvd-x2 udvd-x2-small
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_upscale import count_macs, matmul_rate

from udvd_triton import UDVD, __version__
from udvd_triton.export import export_onnx
from udvd_triton.files import write_json

OUT = Path(__file__).resolve().parent / "results" / "onnx-cpu.json"


def median_seconds(fn, repeat: int) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["udvd-x2", "udvd-x2-small"])
    parser.add_argument("--size", type=int, default=256, help="LR side (default 256)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    rate = matmul_rate(torch.float32, n=2048, reps=5, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = UDVD.from_pretrained(name)
            start = time.perf_counter()
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", name=name)
            export_s = time.perf_counter() - start
            half = export_onnx(model, Path(tmp) / f"{name}-fp16.onnx", name=name, half=True)
            g = torch.Generator().manual_seed(0)
            n = args.size
            inputs = (torch.rand(1, 3, n, n, generator=g), 0.1 * torch.randn(1, model.code_len, n, n, generator=g),
                      torch.full((1, 1, n, n), 5 / 255))
            feeds = dict(zip(("image", "kernel_code", "noise_map"), (t.numpy() for t in inputs)))
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            with torch.inference_mode():
                want = model(*inputs)[-1].numpy()
                torch_s = median_seconds(lambda: model(*inputs), args.repeat)
            got = session.run(None, feeds)[0]
            ort_s = median_seconds(lambda: session.run(None, feeds), args.repeat)
            mp = n * n / 1e6
            floor = 2 * count_macs(model, inputs) / rate
            rows.append({"model": name, "lr": f"{n}x{n}", "torch_s_per_mp": torch_s / mp, "ort_s_per_mp": ort_s / mp,
                         "floor_s_per_mp": floor / mp,
                         "ort_speedup": torch_s / ort_s, "max_abs_diff": float(np.abs(got - want).max()),
                         "onnx_fp32_mb": path.stat().st_size / 1e6, "onnx_fp16_mb": half.stat().st_size / 1e6,
                         "export_s": export_s})
            print(json.dumps(rows[-1]), flush=True)
    write_json(OUT, {"what": __doc__.splitlines()[0], "udvd_triton": __version__, "torch": torch.__version__,
                     "onnxruntime": ort.__version__, "python": platform.python_version(),
                     "machine": f"{platform.machine()} CPU, 2 threads", "fp32_matmul_gflops": rate / 1e9, "rows": rows})
    print("| model | PyTorch s / MP | ONNX Runtime s / MP | FLOP floor s / MP | speed-up | max abs diff | fp32 file MB "
          "| fp16 file MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['torch_s_per_mp']:.1f} | {r['ort_s_per_mp']:.1f} | {r['floor_s_per_mp']:.1f} | "
              f"{r['ort_speedup']:.2f}x | "
              f"{r['max_abs_diff']:.1e} | {r['onnx_fp32_mb']:.1f} | {r['onnx_fp16_mb']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
