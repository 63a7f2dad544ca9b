#!/usr/bin/env python
"""Training throughput of the loop in ``udvd_triton.training.trainer``, and the loop of an older commit beside it.

    python benchmarks/bench_training.py --data data/prepared --json benchmarks/results/cpu-training.json

Measured on the given device (default: cuda if available), each with ``Run.train_step`` (the loop's own step:
on-device crop gather + synthesis + forward/backward + clipping + fused Adam + EMA):

- ``small``: the bundled CPU models' configuration (x2, 32 ch, 4 blocks, batch 16, LR patch 24), float32;
- ``paper``: the paper model (x2, 128 ch, 15 blocks, batch 16, LR patch 64), bf16 autocast on CUDA (float32 on
  the CPU, where only a few steps are timed);
- per configuration: steps/s, and the time of the synthesis (crops + degradations of one batch) and of one EMA
  update, each as a share of a step;
- ``compile``: with ``torch.compile``, the paper configuration on CUDA and the small one on the CPU (compile time
  reported apart, excluded from steps/s);
- ``old_vs_new`` (``--old-commit``, default e6f492c, the loop before the sync-free rewrite): the whole trainer of
  that commit (``git archive`` into a temporary folder, run in a subprocess) and of this tree, same settings (small
  configuration, EMA 0.999, no validation or checkpoints; the random photos below, each commit preparing them with
  its own ``prepare_data``), alternately ``--repeats`` times each; steps/s from their own log rows, the first row
  (warm-up) left out.

``--sweep`` (CUDA): the paper model, eager and with ``--cuda-graph``, over batches x LR patches: steps/s, samples/s
and the share of the FLOP floor (the step's convolution FLOP at the measured bf16 matmul rate); and the dynamic
filter's forward + backward at the step's shapes with channels-last and contiguous kernels.

Without ``--data`` a small prepared folder of random smooth images is made in a temporary folder (the content does
not change the speed). Steps are timed with the device synchronised before and after.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from udvd_triton.training.synth import synthesize
from udvd_triton.training.trainer import GRAPH_WARMUP, Run, TrainConfig, seed_for

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"scale": 2, "channels": 32, "blocks": 4, "batch": 16, "patch": 24}
PAPER = {"scale": 2, "channels": 128, "blocks": 15, "batch": 16, "patch": 64}
# The trainer's entry point in a subprocess, for the old commit and for this tree alike (both take these fields).
_RUNNER = """
import json, sys
import udvd_triton
from udvd_triton.training.trainer import TrainConfig, train
assert udvd_triton.__file__.startswith(sys.argv[2]), udvd_triton.__file__
train(TrainConfig(**json.loads(sys.argv[1])), progress=False)
"""
# Each commit prepares the photos with its own ``prepare_data``: the manifest format changed between them (the HR
# crop's side is its third positional argument in both).
_PREPARE = """
import sys
from udvd_triton.training.data import prepare_data
prepare_data(sys.argv[1], sys.argv[2], 192, val_count=1, progress=False)
"""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, steps: int, device: torch.device, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / steps


def measure(data: str, out: Path, device: str, shape: dict[str, int], steps: int, compile: bool = False,
            cuda_graph: bool = False) -> dict[str, Any]:
    """steps/s of ``Run.train_step`` for ``shape``, with the synthesis and EMA shares of a step."""
    cfg = TrainConfig(data=data, out=str(out), steps=10**6, device=device, compile=compile, cuda_graph=cuda_graph,
                      val_every=0, **shape)
    run = Run.new(cfg, progress=False)
    t0 = time.perf_counter()
    run.train_step()  # the first step builds caches (and compiles)
    _sync(run.device)
    first = time.perf_counter() - t0
    # with --cuda-graph: the warm-up steps and the capture stay out of the timed steps
    step_s = _timed(run.train_step, steps, run.device, warmup=GRAPH_WARMUP + 1 if cuda_graph else 2)

    def synthesis() -> None:
        run.generator.manual_seed(seed_for(cfg.seed, run.step, 0, 2))
        synthesize(run.sampler.batch_at(run.step), run.synth, run.generator)

    synth_s = _timed(synthesis, steps, run.device)
    ema_s = _timed(run.update_ema, steps, run.device)
    return {
        "config": {**shape, "device": str(run.device), "amp_bf16": run.device.type == "cuda", "compile": compile,
                   "cuda_graph": cuda_graph},
        "steps_timed": steps,
        "first_step_s": round(first, 3),
        "steps_per_s": round(1 / step_s, 4),
        "synthesis_ms": round(1000 * synth_s, 3),
        "synthesis_share": round(synth_s / step_s, 4),
        "ema_ms": round(1000 * ema_s, 3),
        "ema_share": round(ema_s / step_s, 4),
    }


def step_flops(shape: dict[str, int]) -> float:
    """FLOP of one training step of ``shape`` (forward counted by torch's FlopCounterMode on the CPU, x3 for forward
    + backward): the convolutions' multiply-adds, which a step cannot do faster than the GPU's matmul rate."""
    from torch.utils.flop_counter import FlopCounterMode

    from udvd_triton.model import UDVDNet

    model = UDVDNet(scale=shape["scale"], channels=shape["channels"], blocks=shape["blocks"])
    p = shape["patch"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 3, p, p), torch.zeros(1, 15, p, p), torch.zeros(1, 1, p, p))
    return 3.0 * counter.get_total_flops() * shape["batch"]


def matmul_rate(device: torch.device) -> float:
    """Measured bf16 matmul FLOP/s (8192^3, dense): the FLOP floor's rate."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    seconds = _timed(lambda: a @ b, 20, device, warmup=5)
    return 2 * 8192**3 / seconds


def op_layouts(device: torch.device, batch: int, patch: int, steps: int) -> list[dict[str, Any]]:
    """The dynamic filter's forward + backward at a step's shapes (upsampling: 100 taps at LR; refinement: 25 at HR),
    fp32 image and bf16 kernels as autocast gives them, the kernels as the channels-last convs write them and
    contiguous: does the op's layout matter for the step?"""
    from udvd_triton.ops import dynamic_filter

    rows = []
    for name, side, taps, scale in (("upsample", patch, 100, 2), ("refine", 2 * patch, 25, 1)):
        for layout in ("channels_last", "contiguous"):
            x = torch.rand(batch, 3, side, side, device=device, requires_grad=True)
            k = torch.randn(batch, taps, side, side, device=device, dtype=torch.bfloat16)
            if layout == "channels_last":
                k = k.contiguous(memory_format=torch.channels_last)
            k.requires_grad_(True)
            g = torch.randn(batch, 3, scale * side, scale * side, device=device)

            def fwd_bwd() -> None:
                torch.autograd.grad(dynamic_filter(x, k, scale, 5), (x, k), g)

            seconds = _timed(fwd_bwd, steps, device, warmup=3)
            rows.append({"stage": name, "layout": layout, "batch": batch, "side": side, "taps": taps,
                         "fwd_bwd_ms": round(1000 * seconds, 4)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def sweep(data: str, device: str, tmp: Path, steps: int, batches: list[int], patches: list[int]) -> dict[str, Any]:
    """Steps/s and samples/s of the paper model, eager and with --cuda-graph, over batches x patches, beside the FLOP
    floor (``step_flops`` at ``matmul_rate``); and ``op_layouts`` at the paper step's shape."""
    dev = torch.device(device)
    rate = matmul_rate(dev)
    rows = []
    for patch in patches:
        for batch in batches:
            shape = {**PAPER, "batch": batch, "patch": patch}
            floor_s = step_flops(shape) / rate
            for graph in (False, True):
                try:
                    row = measure(data, tmp / f"sweep-{batch}-{patch}-{graph}", device, shape, steps, cuda_graph=graph)
                except (RuntimeError, ValueError) as e:  # out of memory, a capture the torch build refuses
                    row = {"config": {**shape, "cuda_graph": graph}, "error": str(e).splitlines()[0][:300]}
                else:
                    row["samples_per_s"] = round(row["steps_per_s"] * batch, 2)
                    row["floor_ms"] = round(1000 * floor_s, 3)
                    row["of_floor"] = round(floor_s * row["steps_per_s"], 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
                torch.cuda.empty_cache()
    return {"matmul_bf16_tflops": round(rate / 1e12, 1), "rows": rows,
            "op_layouts": op_layouts(dev, PAPER["batch"], PAPER["patch"], 20)}


def _log_steps_per_s(run_dir: Path) -> float:
    with open(run_dir / "log.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["steps_per_s"]]
    return statistics.median(float(r["steps_per_s"]) for r in rows[1:])


def old_vs_new(photos: Path, commit: str, steps: int, repeats: int, tmp: Path) -> dict[str, Any]:
    """The whole trainer of ``commit`` and of this tree on the CPU, same settings and photos, run alternately."""
    old_tree = tmp / f"udvd-triton-{commit}"
    old_tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
    for sub in ("kernels", "weights"):  # installed as udvd_triton.<sub>, which a source tree does not have
        (old_tree / "udvd_triton" / sub).symlink_to(old_tree / sub)
    settings = {**SMALL, "steps": steps, "ema": 0.999, "clean_fraction": 0.0, "device": "cpu",
                "val_every": 0, "ckpt_every": 0, "log_every": max(1, steps // 6)}
    trees = {"old": old_tree, "new": ROOT}

    def run(name: str, code: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(trees[name])}
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=trees[name], capture_output=True,
                              text=True)  # cwd: sys.path[0] of -c
        if proc.returncode:
            raise RuntimeError(f"the {name} tree failed ({'prepare_data' if code is _PREPARE else 'train'}):\n{proc.stderr[-3000:]}")

    for name in trees:
        run(name, _PREPARE, str(photos), str(tmp / f"prepared-{name}"))
    results: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(repeats):
        for name, tree in trees.items():
            out = tmp / f"{name}-{i}"
            run(name, _RUNNER, json.dumps({**settings, "data": str(tmp / f"prepared-{name}"), "out": str(out)}), str(tree))
            results[name].append(_log_steps_per_s(out))
    old, new = statistics.median(results["old"]), statistics.median(results["new"])
    return {
        "old_commit": commit,
        "settings": {k: v for k, v in settings.items() if k != "data"},
        "old_steps_per_s": results["old"],
        "new_steps_per_s": results["new"],
        "median_old": round(old, 4),
        "median_new": round(new, 4),
        "speedup": round(new / old, 4),
    }


def _synthetic_photos(folder: Path) -> Path:
    """Six smooth random 400 x 400 photos in ``folder / "photos"``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = folder / "photos"
    photos.mkdir()
    for i in range(6):
        small = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((400, 400), Image.BICUBIC).save(photos / f"{i}.png")
    return photos


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder written by `udvd prepare-data` (default: random images in a temp folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: cuda if available)")
    p.add_argument("--steps", type=int, default=20, help="timed steps of the small configuration (default 20)")
    p.add_argument("--paper-steps", type=int, help="timed steps of the paper configuration (default 50 on CUDA, 2 on CPU)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    p.add_argument("--old-commit", default="e6f492c", help="commit whose trainer runs beside this one (CPU only; default e6f492c)")
    p.add_argument("--old-steps", type=int, default=60, help="steps per old/new trainer run (default 60)")
    p.add_argument("--repeats", type=int, default=2, help="old/new trainer runs each, alternated (default 2)")
    p.add_argument("--sweep", action="store_true", help="CUDA: the paper model eager and with --cuda-graph over "
                   "--batches x --patches beside the FLOP floor, and the op's kernels layout (instead of the rest)")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64], help="sweep batches (default 16 32 64)")
    p.add_argument("--patches", type=int, nargs="+", default=[64], help="sweep LR patches (default 64)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        photos = _synthetic_photos(tmp)
        if args.data:
            data = str(Path(args.data).resolve())  # the trainers run elsewhere
        else:
            from udvd_triton.training.data import prepare_data

            data = str(tmp / "prepared")
            prepare_data(photos, data, crop=192, val_count=1, progress=False)
        results: dict[str, Any] = {
            "device": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
            "data": "synthetic" if args.data is None else "given",
        }
        if args.sweep:
            if not cuda:
                p.error("--sweep needs a CUDA device")
            results["sweep"] = sweep(data, args.device, tmp, args.paper_steps or 30, args.batches, args.patches)
            _write(results, args.json)
            return
        results["small"] = measure(data, tmp / "small", args.device, SMALL, args.steps)
        print(json.dumps(results["small"]), flush=True)
        paper_steps = args.paper_steps or (50 if cuda else 2)
        results["paper"] = measure(data, tmp / "paper", args.device, PAPER, paper_steps)
        print(json.dumps(results["paper"]), flush=True)
        if not args.no_compile:  # the configuration that trains on the device: the paper model on CUDA
            shape, eager, steps = (PAPER, "paper", paper_steps) if cuda else (SMALL, "small", args.steps)
            results["compile"] = measure(data, tmp / "compile", args.device, shape, steps, compile=True)
            results["compile"]["speedup_vs_eager"] = round(results["compile"]["steps_per_s"] / results[eager]["steps_per_s"], 4)
            print(json.dumps(results["compile"]), flush=True)
        if not cuda and args.old_commit:
            results["old_vs_new"] = old_vs_new(photos, args.old_commit, args.old_steps, args.repeats, tmp)
            print(json.dumps(results["old_vs_new"]), flush=True)
        results["load_average_at_end"] = os.getloadavg()
    _write(results, args.json)


def _write(results: dict[str, Any], path: str | None) -> None:
    print(json.dumps(results, indent=1))
    if path:
        from udvd_triton.files import write_json

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, results)


if __name__ == "__main__":
    main()
