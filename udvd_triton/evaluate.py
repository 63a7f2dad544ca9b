"""Evaluation of a model over a grid of degradations (isotropic blur width x noise level), next to bicubic.

For every HR image (cut to a multiple of the scale) and grid point, the LR input is ``degradation.degrade`` with
``isotropic_gaussian(15, sigma)`` and AWGN from a generator seeded with (seed, image index, sigma, noise), quantised
to uint8 like a stored LR image. The model output (``model.upscale`` with the true sigma and noise level) and the
bicubic upscaling (``imresize``) of the same LR image are scored with ``metrics.psnr`` / ``metrics.ssim`` on Y with
border = scale, the standard SR protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from udvd_triton.degradation import BLUR_SIZE, SIGMA_RANGES, degrade, imresize, isotropic_gaussian
from udvd_triton.imageio import image_files, load_rgb
from udvd_triton.inference import upscale
from udvd_triton.metrics import psnr, ssim
from udvd_triton.model import UDVDNet

DEFAULT_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")  # photographs bundled in the scikit-image wheel
DEFAULT_NOISES = (0.0, 15.0, 50.0)


def default_sigmas(scale: int) -> tuple[float, float, float]:
    """Low, middle and high end of the training blur range of ``scale`` (``SIGMA_RANGES``)."""
    lo, hi = SIGMA_RANGES[scale]
    return lo, round((lo + hi) / 2, 3), hi


def default_images() -> list[tuple[str, np.ndarray]]:
    """The scikit-image sample photos ``DEFAULT_IMAGES`` as (name, uint8 (H, W, 3)); they ship with the wheel."""
    try:
        import skimage.data
    except ModuleNotFoundError as e:  # an optional dependency (the "test" extra)
        raise ValueError(
            "the default eval images ship with scikit-image: pip install 'udvd-triton[eval]', or pass --images DIR"
        ) from e
    return [(name, getattr(skimage.data, name)()) for name in DEFAULT_IMAGES]


def folder_images(folder: str | os.PathLike[str]) -> list[tuple[str, np.ndarray]]:
    """Every image under ``folder`` (recursive) as (relative name, uint8 (H, W, 3)); unreadable files are errors."""
    files = image_files(folder)
    images = []
    for path in files:
        try:
            images.append((path.relative_to(folder).as_posix(), load_rgb(path)))
        except Exception as exc:  # name the file whatever PIL raised
            raise ValueError(f"cannot read image {path}: {exc}") from None
    return images


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def degraded_input(hr: np.ndarray, scale: int, sigma: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """The uint8 LR image (h, w, 3) of uint8 HR ``hr`` (s*h, s*w, 3): blur ``sigma`` (HR pixels), bicubic down,
    AWGN ``noise`` (0..255), rounded to uint8."""
    lr = degrade(hr.astype(np.float64) / 255.0, isotropic_gaussian(BLUR_SIZE, sigma), scale, noise, rng=rng)
    return _to_uint8(lr)


Upscaler = Callable[[np.ndarray, float, float], np.ndarray]  # (uint8 LR (h, w, 3), blur sigma, noise) -> uint8 SR


def model_upscaler(model: UDVDNet, blind: bool = False) -> Upscaler:
    """``model`` told the true degradation: ``upscale(model, lr, blur_sigma=sigma, noise_level=noise)``; with
    ``blind``, told nothing (blur and noise estimated from ``lr``, as ``udvd upscale`` does by default)."""
    if blind:
        return lambda lr, sigma, noise: upscale(model, lr, blur_sigma="auto", noise_level="auto")
    return lambda lr, sigma, noise: upscale(model, lr, blur_sigma=sigma, noise_level=noise)


def evaluate(
    upscaler: Upscaler,
    scale: int,
    images: list[tuple[str, np.ndarray]],
    sigmas: list[float] | tuple[float, ...],
    noises: list[float] | tuple[float, ...],
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Scores of ``upscaler`` (e.g. :func:`model_upscaler`) and of bicubic over the grid ``sigmas`` x ``noises`` on
    uint8 HR ``images``, at ``scale``.

    Returns one dict per grid point: sigma, noise, psnr, ssim, bicubic_psnr, bicubic_ssim (means over the images)
    and per_image (the same four numbers per image).
    """
    hrs = []
    for name, img in images:
        h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
        if min(h, w) < 2 * scale:
            raise ValueError(f"image {name} ({img.shape[1]}x{img.shape[0]}) is too small for x{scale} evaluation")
        hrs.append((name, np.ascontiguousarray(img[:h, :w])))
    rows = []
    bar = tqdm(total=len(sigmas) * len(noises) * len(hrs), desc="eval", unit="img", disable=not progress)
    for sigma in sigmas:
        for noise in noises:
            per_image = []
            for i, (name, hr) in enumerate(hrs):
                rng = np.random.default_rng([seed, i, round(sigma * 1000), round(noise * 1000)])
                lr = degraded_input(hr, scale, sigma, noise, rng)
                sr = upscaler(lr, float(sigma), float(noise))
                bic = _to_uint8(imresize(lr.astype(np.float64) / 255.0, scale))
                per_image.append(
                    {
                        "image": name,
                        "psnr": psnr(sr, hr, border=scale),
                        "ssim": ssim(sr, hr, border=scale),
                        "bicubic_psnr": psnr(bic, hr, border=scale),
                        "bicubic_ssim": ssim(bic, hr, border=scale),
                    }
                )
                bar.update()
            means = {k: float(np.mean([p[k] for p in per_image])) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
            rows.append({"sigma": float(sigma), "noise": float(noise), **means, "per_image": per_image})
    bar.close()
    return rows


def markdown_table(rows: list[dict[str, Any]], scale: int) -> str:
    """A markdown table of ``evaluate`` rows: one line per grid point, PSNR (dB) / SSIM of bicubic and the model."""
    lines = [
        f"| blur sigma | noise | bicubic PSNR | bicubic SSIM | UDVD x{scale} PSNR | UDVD x{scale} SSIM |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sigma']:g} | {r['noise']:g} | {r['bicubic_psnr']:.2f} | {r['bicubic_ssim']:.4f} "
            f"| {r['psnr']:.2f} | {r['ssim']:.4f} |"
        )
    return "\n".join(lines)
