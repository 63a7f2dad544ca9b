#!/usr/bin/env python
"""The classical known-degradation pipeline a user could run instead of UDVD, scored on ``udvd eval``'s grid.

    pip install bm3d      # BM3D (Tampere University; free for non-commercial use): not a dependency of the package
    python benchmarks/classical_baseline.py --compare weights/udvd-x2.eval.json weights/udvd-x2-small.eval.json \
        --json benchmarks/results/classical-x2.json

Pipeline, told the true blur and noise level as UDVD is: BM3D denoising of the LR image (``bm3d.bm3d_rgb`` with the
true noise sigma; skipped at noise 0) -> MATLAB bicubic upscaling (``imresize``) -> Wiener deconvolution with the
true Gaussian blur (15 x 15, sigma in HR pixels), image reflected by 2 kernel widths against wrap-around ringing,
clipped and rounded to uint8. The Wiener noise-to-signal ratio is chosen per grid cell from ``NSRS`` by the best mean
PSNR over the images (an oracle choice: the pipeline's best case, which a user would have to tune for).

The LR inputs and the scoring are ``udvd_triton.evaluate``'s (same seeds, quantisation, PSNR / SSIM on Y,
border = scale), so the rows sit beside a model's ``udvd eval --json`` file; ``--compare`` prints them side by side
and lists every cell and photo where each model loses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

from udvd_triton.degradation import imresize, isotropic_gaussian
from udvd_triton.files import write_json
from udvd_triton.degradation import BLUR_SIZE
from udvd_triton.evaluate import default_images, default_sigmas, evaluate, folder_images

NSRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def wiener(img: np.ndarray, kernel: np.ndarray, nsr: float) -> np.ndarray:
    """Wiener deconvolution of float (H, W, C) ``img`` by ``kernel`` (k, k), reflect-padded by 2k: conj(K) Y /
    (|K|^2 + nsr) per channel."""
    pad = 2 * kernel.shape[0]
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    h, w = padded.shape[:2]
    k = np.zeros((h, w))
    k[: kernel.shape[0], : kernel.shape[1]] = kernel
    k = np.roll(k, (-(kernel.shape[0] // 2), -(kernel.shape[1] // 2)), axis=(0, 1))  # centre at the origin
    kf = np.fft.rfft2(k)
    gain = np.conj(kf) / (np.abs(kf) ** 2 + nsr)
    out = np.fft.irfft2(np.fft.rfft2(padded, axes=(0, 1)) * gain[..., None], s=(h, w), axes=(0, 1))
    return out[pad:-pad, pad:-pad]


class ClassicalPipeline:
    """BM3D -> bicubic -> Wiener, with the ``upscale`` signature ``evaluate`` calls; BM3D results are cached, so
    sweeping the Wiener NSR re-runs only the cheap part."""

    def __init__(self, scale: int) -> None:
        import bm3d

        self.scale, self.nsr, self._bm3d, self._cache = scale, NSRS[0], bm3d, {}

    def _denoised(self, lr: np.ndarray, noise: float) -> np.ndarray:
        img = lr.astype(np.float64) / 255.0
        if noise == 0:
            return img
        key = (hashlib.sha256(lr.tobytes()).hexdigest(), noise)
        if key not in self._cache:
            self._cache[key] = self._bm3d.bm3d_rgb(img, noise / 255.0)
        return self._cache[key]

    def upscale(self, lr: np.ndarray, blur_sigma: float, noise_level: float) -> np.ndarray:
        up = imresize(self._denoised(lr, noise_level), self.scale)
        out = wiener(up, isotropic_gaussian(BLUR_SIZE, blur_sigma), self.nsr)
        return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def run(scale: int, images, sigmas, noises, seed: int) -> list[dict]:  # noqa: ANN001
    """Per grid cell: the classical scores at the NSR with the best mean PSNR, and that NSR."""
    pipeline = ClassicalPipeline(scale)
    best: dict[tuple[float, float], dict] = {}
    for nsr in NSRS:
        pipeline.nsr = nsr
        for row in evaluate(pipeline.upscale, scale, images, sigmas, noises, seed=seed):
            key = (row["sigma"], row["noise"])
            if key not in best or row["psnr"] > best[key]["psnr"]:
                best[key] = {**row, "nsr": nsr}
        print(f"NSR {nsr:g} done", file=sys.stderr, flush=True)
    return [best[(float(s), float(n))] for s in sigmas for n in noises]


def compare(classical: list[dict], model_eval: dict) -> str:
    """Markdown table: bicubic, classical and the model per cell; then the cells / photos where the model loses."""
    name = model_eval.get("model", "model")
    lines = [f"| blur σ | noise | bicubic | classical (NSR) | {name} | {name} - classical |",
             "|---:|---:|---:|---:|---:|---:|"]
    losses = []
    for c, m in zip(classical, model_eval["results"]):
        assert (c["sigma"], c["noise"]) == (m["sigma"], m["noise"]), "the two files have different grids"
        lines.append(f"| {c['sigma']:g} | {c['noise']:g} | {c['bicubic_psnr']:.2f} | {c['psnr']:.2f} ({c['nsr']:g}) | "
                     f"{m['psnr']:.2f} | {m['psnr'] - c['psnr']:+.2f} |")
        for pc, pm in zip(c["per_image"], m["per_image"]):
            if pm["psnr"] < pc["psnr"]:
                losses.append(f"σ {c['sigma']:g}, noise {c['noise']:g}, {pc['image']}: "
                              f"{pm['psnr']:.2f} vs {pc['psnr']:.2f} dB")
    lines.append("")
    lines.append(f"{name} loses to the classical pipeline in: " + ("; ".join(losses) if losses else "no cell, no photo"))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None, help="default: --compare's, else 2")
    p.add_argument("--images", help="folder of HR images (default: udvd eval's scikit-image photos)")
    p.add_argument("--sigma", type=float, nargs="+", help="blur widths in HR px (default: the scale's, as udvd eval)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 15.0, 50.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", type=Path, nargs="+", default=[],
                   help="`udvd eval --json` files of the same grid to set beside, one table each")
    p.add_argument("--json", type=Path, help="write the classical rows here")
    args = p.parse_args()
    try:
        import bm3d  # noqa: F401
    except ModuleNotFoundError:
        print("classical_baseline.py needs BM3D: pip install bm3d", file=sys.stderr)
        return 2
    evals = [json.loads(path.read_text()) for path in args.compare]
    model_eval = evals[0] if evals else None
    scale = args.scale or (model_eval["scale"] if model_eval else 2)
    sigmas = args.sigma or ([r["sigma"] for r in model_eval["results"][:: len(args.noise)]] if model_eval
                            else list(default_sigmas(scale)))
    images = folder_images(args.images) if args.images else default_images()
    rows = run(scale, images, sigmas, args.noise, args.seed)
    if args.json:
        write_json(args.json, {
            "pipeline": "BM3D (bm3d_rgb, true sigma) -> MATLAB bicubic -> Wiener (true Gaussian blur, best NSR per cell)",
            "nsr_candidates": list(NSRS), "scale": scale, "images": [n for n, _ in images], "seed": args.seed,
            "python": platform.python_version(), "bm3d": _version("bm3d"), "results": rows,
        })  # fmt: skip
    for other in evals:
        print(compare(rows, other) + "\n")
    if not evals:
        for r in rows:
            print(f"σ {r['sigma']:g} noise {r['noise']:g}: classical {r['psnr']:.2f} dB (NSR {r['nsr']:g}), "
                  f"bicubic {r['bicubic_psnr']:.2f}")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
