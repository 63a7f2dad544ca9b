#!/usr/bin/env python
"""Training throughput: steps/s with online synthesis (crop gather + degradation + step) vs a fixed pre-synthesised
batch (step only), on any device. Writes JSON.

    python benchmarks/bench_training.py --data data/prepared --device cpu --channels 16 --blocks 2 --batch 16 \
        --patch 24 --json benchmarks/results/training_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from udvd_triton import UDVD, multistage_l1_loss
from udvd_triton.training.data import BatchSampler, CropDataset
from udvd_triton.training.synth import SynthConfig, synthesize
from udvd_triton.training.trainer import step_generator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder written by `udvd prepare-data`")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48, help="LR patch side")
    p.add_argument("--steps", type=int, default=30, help="timed steps per mode (after 3 warm-up steps)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = UDVD(args.scale, n_feats=args.channels, n_blocks=args.blocks).to(device, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    sampler = BatchSampler(CropDataset(args.data), args.batch, args.scale * args.patch)
    synth = SynthConfig(args.scale)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    def make_batch(step: int):
        crops = torch.from_numpy(sampler.batch_at(step)).to(device)
        return [t.contiguous(memory_format=fmt) for t in synthesize(crops, synth, step_generator(device, 0, step, 0))]

    def train_step(batch) -> None:
        lr, code, noise, hr = batch
        with autocast:
            out = model(lr, code, noise)
        loss = multistage_l1_loss(out, hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn) -> float:
        for i in range(3):
            fn(i)
        _sync(device)
        t = time.perf_counter()
        for i in range(args.steps):
            fn(i)
        _sync(device)
        return args.steps / (time.perf_counter() - t)

    fixed = make_batch(0)
    results = {
        "device": str(device) if not cuda else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "config": vars(args),
        "steps_per_s_fixed_batch": timed(lambda i: train_step(fixed)),
        "steps_per_s_with_synthesis": timed(lambda i: train_step(make_batch(i))),
        "batches_per_s_synthesis_only": timed(make_batch),
    }
    results["synthesis_overhead"] = results["steps_per_s_fixed_batch"] / results["steps_per_s_with_synthesis"] - 1
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
