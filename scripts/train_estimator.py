"""Train the degradation estimator (``udvd_triton.estimator``) on CPU from prepared training crops.

Each step: HR crops of ``udvd prepare-data`` (training photos only) cut to 64 LR pixels a side (48 at x4) at a scale drawn from
2, 3, 4; random flips / rotations; blur width uniform in the scale's training range; noise level 0 for 40 % of the
samples, uniform in [0, 15] for 40 %, in [0, 75] for 20 % (photos are mostly nearly clean; a curriculum
raises the noise from 0 over the first 40 % of the steps: edges under noise are learnt after clean ones); bicubic down, AWGN, 8-bit rounding (``training.synth.degrade_batch``, the same
numbers as the models' training); then a JPEG round trip at quality 60-95 for 15 % of the samples and gray for 10 %
(the estimate must not read compression or a single channel as noise); ``--varying`` of the patches blend two blur
widths along a soft boundary, as many (independently) two noise levels (``blend_masks``). Loss: ``estimator.loss``, on each patch's pooled estimate and at
every location (what "auto-map" pools). Writes ``OUT/model.safetensors`` + ``config.json`` (``save_checkpoint``) and ``OUT/log.json``.

    python scripts/train_estimator.py data/prepared runs/estimator --steps 6000
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from udvd_triton.checkpoint import read_checkpoint, save_checkpoint
from udvd_triton.degradation import SCALES, SIGMA_RANGES, gaussian_kernels
from udvd_triton.estimator import STRIDE, DegradationEstimator, EstimatorConfig, decode, loss as estimator_loss, pool
from udvd_triton.training.data import CropDataset
from udvd_triton.training.synth import degrade_batch, random_dihedral

NOISE_MAX = 75.0  # highest training noise level (0..255)


def jpeg(lr: torch.Tensor, quality: int) -> torch.Tensor:
    """(3, h, w) in [0, 1] through a JPEG encode / decode at ``quality``."""
    arr = (lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return torch.from_numpy(np.asarray(Image.open(buf), dtype=np.float32) / 255).permute(2, 0, 1)


def blend_masks(size: int, side: int, share: float, g: torch.Generator) -> torch.Tensor:
    """(size, 1, side, side) LR masks: for a ``share`` of the samples a soft straight boundary at a random angle and
    place, 1 on one side and 0 on the other over 1-12 pixels (a depth-of-field edge, two sources side by side); ones
    for the others."""
    yy, xx = torch.meshgrid(torch.arange(side) - side / 2, torch.arange(side) - side / 2, indexing="ij")
    angle = 2 * math.pi * torch.rand(size, 1, 1, generator=g)
    offset = (torch.rand(size, 1, 1, generator=g) - 0.5) * side * 0.6
    width = 1 + 11 * torch.rand(size, 1, 1, generator=g)
    mask = torch.sigmoid((xx * angle.cos() + yy * angle.sin() - offset) / width)
    keep = torch.rand(size, 1, 1, generator=g) >= share
    return torch.where(keep, torch.ones_like(mask), mask)[:, None]


def batch(crops: torch.Tensor, size: int, scale: int, g: torch.Generator, noise_max: float = NOISE_MAX,
          varying: float = 0.0) -> tuple[torch.Tensor, ...]:
    """(lr (B, 3, P, P), blur, noise) from ``size`` random crops of the uint8 crop tensor: LR patches of P = 64 pixels
    (48 at x4, whose HR side would pass the crops'); ``blur`` and ``noise`` are maps at the estimator's prediction
    locations (B, 1, P / 4, P / 4). A ``varying`` share of the patches blends two blurs of the same crop along a soft
    boundary, and (independently) another share two noise levels along another (:func:`blend_masks`): the noise is
    added with the blended level, so the truth is exact wherever the mask says; the others have one of each."""
    n, p = crops.shape[0], crops.shape[1]
    hr_side = min(64, p // scale) * scale
    idx = torch.randint(0, n, (size,), generator=g)
    y, x = (torch.randint(0, p - hr_side + 1, (2, size), generator=g))
    hr = torch.stack([crops[i, a : a + hr_side, b : b + hr_side] for i, a, b in zip(idx, y, x)])
    hr = random_dihedral(hr.permute(0, 3, 1, 2), g).float().div_(255)
    lo, hi = SIGMA_RANGES[scale]

    def levels() -> torch.Tensor:  # most photos are nearly clean: 40 % none, 40 % up to 15 levels, 20 % up to noise_max
        u = torch.rand(size, generator=g)
        level = torch.where(u < 0.8, min(15.0, noise_max), noise_max) * torch.rand(size, generator=g)
        return torch.where(u < 0.4, 0.0, level).view(-1, 1, 1, 1)

    def clean(sigma: torch.Tensor) -> torch.Tensor:  # blurred and downscaled, no noise, not quantised
        return degrade_batch(hr, gaussian_kernels(sigma, check=False).float(), torch.zeros(size), scale, g, False)

    blur, other = (lo + (hi - lo) * torch.rand(size, generator=g)).view(-1, 1, 1, 1), lo + (hi - lo) * torch.rand(size, generator=g)
    side = hr_side // scale
    blur_mask, noise_mask = blend_masks(size, side, varying, g), blend_masks(size, side, varying, g)
    noise_map = noise_mask * levels() + (1 - noise_mask) * levels()
    lr = blur_mask * clean(blur.flatten()) + (1 - blur_mask) * clean(other)
    lr = (lr + torch.randn(lr.shape, generator=g) * noise_map / 255).clamp(0, 1).mul(255).round().div(255)
    located = F.avg_pool2d(blur_mask, STRIDE, ceil_mode=True)
    blur = located * blur + (1 - located) * other.view(-1, 1, 1, 1)
    noise = F.avg_pool2d(noise_map, STRIDE, ceil_mode=True)
    for i in range(size):
        if torch.rand((), generator=g) < 0.15:
            lr[i] = jpeg(lr[i], int(torch.randint(60, 96, (), generator=g)))
        if torch.rand((), generator=g) < 0.10:
            lr[i] = lr[i].mean(0, keepdim=True).mul(255).round().div(255).expand(3, -1, -1)
    return lr, blur, noise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, help="continue from this estimator folder (a previous run's OUT)")
    parser.add_argument("--varying", type=float, default=0.3,
                        help="share of the patches whose blur varies across them, and whose noise does (default 0.3)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    crops = CropDataset(args.data, verify=True).tensor()
    model = DegradationEstimator(EstimatorConfig(channels=args.channels))
    if args.init:
        state, _ = read_checkpoint(args.init / "model.safetensors")
        model.load_state_dict(state)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / 200) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / args.steps))))
    val_g = torch.Generator().manual_seed(12345)
    val = {s: batch(crops, 96, s, val_g) for s in SCALES}
    log, start = [], time.monotonic()
    for step in range(1, args.steps + 1):
        scale = SCALES[step % len(SCALES)]
        # curriculum: blur is read off edges, which noise hides; the network first learns it on clean patches
        ramp = 1.0 if args.init else min(1.0, step / (0.4 * args.steps))
        lr, blur, noise = batch(crops, args.batch, scale, g, NOISE_MAX * ramp, args.varying)
        loss = estimator_loss(decode(model(lr), scale), blur, noise, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.steps:
            model.eval()
            row = {"step": step, "loss": loss.item(), "seconds": round(time.monotonic() - start, 1)}
            with torch.no_grad():
                for s, (vlr, vblur, vnoise) in val.items():
                    pred = decode(model(vlr), s)
                    row[f"x{s}_blur_mae"] = float((pool(pred, "blur")[0] - vblur.mean((1, 2, 3))).abs().mean())
                    row[f"x{s}_noise_mae"] = float((pool(pred, "noise")[0] - vnoise.mean((1, 2, 3))).abs().mean())
            model.train()
            log.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.eval(), args.out, max_shard_bytes=16 * 2**20)
    (args.out / "log.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "log": log},
                                                  indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
