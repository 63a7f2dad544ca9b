"""The standard SR evaluation metrics, as in the MATLAB scripts that SR papers report (SRMD, UDVD, RCAN, ...).

- Images are uint8 HWC RGB (or HW grayscale). Float images in [0, 1] are first converted like MATLAB ``im2uint8``:
  clipped to [0, 1], times 255, rounded half away from zero. A float image with values above 2 raises ValueError
  (it is most likely on the 0..255 scale).
- ``y_channel=True`` evaluates the luma of MATLAB ``rgb2ycbcr`` on uint8 input, BT.601 studio range:
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` with R, G, B in [0, 1], rounded to uint8 levels (MATLAB returns
  uint8 for uint8 input; the scripts then compute on those levels as double). Grayscale images are used as is.
  ``y_channel=False`` uses all channels.
- ``border`` pixels are cropped on each side before computing (SR papers crop ``scale`` pixels).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# BT.601 studio-range luma weights of MATLAB rgb2ycbcr, for R, G, B in [0, 1].
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_FLOAT_MAX = 2.0

__all__ = ["batch_psnr", "psnr", "rgb_to_y", "ssim"]


def _round_half_up(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's round (half away from zero) for the non-negative values used here."""
    return torch.floor(x + 0.5)


def _levels(x: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> uint8 levels 0..255 as float64, like MATLAB im2uint8."""
    return _round_half_up(x.to(torch.float64).clamp(0, 1) * 255)


def rgb_to_y(rgb: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
    """MATLAB ``rgb2ycbcr`` luma of uint8-level RGB (values 0..255, any float/int tensor): float64 uint8 levels."""
    r, g, b = rgb.to(torch.float64).unbind(channel_dim)
    wr, wg, wb = Y_WEIGHTS
    return _round_half_up(Y_OFFSET + (wr * r + wg * g + wb * b) / 255.0)


def _prepare(a: np.ndarray, b: np.ndarray, border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check a pair of images and return them as cropped float64 (H, W, C) arrays of uint8 levels."""
    for name, img in (("a", a), ("b", b)):
        if not isinstance(img, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(img).__name__}")
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
            raise ValueError(f"{name} must be HWC RGB (H, W, 3) or grayscale (H, W), got shape {img.shape}")
        if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
            raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {img.dtype}")
        if np.issubdtype(img.dtype, np.floating) and img.size and img.max() > _FLOAT_MAX:
            raise ValueError(f"{name} is float with max {img.max():.4g}: float images must be in [0, 1], not 0..255")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if (a.dtype == np.uint8) != (b.dtype == np.uint8):
        raise ValueError(f"images differ in dtype kind: {a.dtype} vs {b.dtype} (convert both to uint8 or to float)")
    if not isinstance(border, int) or border < 0 or 2 * border >= min(a.shape[:2]):
        raise ValueError(f"border must be an integer in [0, min(H, W)/2), got {border!r} for shape {a.shape}")

    def levels(img: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(img))
        t = t.to(torch.float64) if img.dtype == np.uint8 else _levels(t)
        t = t if t.dim() == 3 else t.unsqueeze(-1)
        if y_channel and t.shape[-1] == 3:
            t = rgb_to_y(t).unsqueeze(-1)
        h, w = t.shape[:2]
        return t[border : h - border, border : w - border].numpy()

    return levels(a), levels(b)


def psnr(a: np.ndarray, b: np.ndarray, border: int = 0, y_channel: bool = True) -> float:
    """PSNR in dB of two uint8 (or [0, 1] float) images, peak 255: ``10 log10(255^2 / MSE)``; inf if equal."""
    x, y = _prepare(a, b, border, y_channel)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gaussian_window() -> np.ndarray:
    """MATLAB fspecial('gaussian', 11, 1.5) as its normalised 1-D factor (the 2-D window is its outer product)."""
    r = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    g = np.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """'valid' 2-D filtering of (H, W) with the separable symmetric window g x g."""
    win = np.lib.stride_tricks.sliding_window_view(img, g.size, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(win, g.size, axis=1) @ g


def ssim(a: np.ndarray, b: np.ndarray, border: int = 0, y_channel: bool = True) -> float:
    """Mean SSIM (Wang et al. 2004, MATLAB ssim_index.m) of two uint8 (or [0, 1] float) images.

    11x11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01*255)^2, C2 = (0.03*255)^2, mean of the SSIM
    map; with several channels (``y_channel=False`` on RGB) the mean over channels of each channel's mean SSIM.
    """
    x, y = _prepare(a, b, border, y_channel)
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after the border crop, got {x.shape[:2]}"
        )
    g = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for ch in range(x.shape[2]):
        p, q = x[:, :, ch], y[:, :, ch]
        mu_p, mu_q = _filter_valid(p, g), _filter_valid(q, g)
        var_p = _filter_valid(p * p, g) - mu_p**2
        var_q = _filter_valid(q * q, g) - mu_q**2
        cov = _filter_valid(p * q, g) - mu_p * mu_q
        num = (2 * mu_p * mu_q + c1) * (2 * cov + c2)
        den = (mu_p**2 + mu_q**2 + c1) * (var_p + var_q + c2)
        scores.append(float(np.mean(num / den)))
    return float(np.mean(scores))


def batch_psnr(sr: torch.Tensor, hr: torch.Tensor, border: int = 0, y_channel: bool = True) -> torch.Tensor:
    """Per-image PSNR of float (N, C, H, W) batches in [0, 1] (C = 3 RGB or 1), on any device, for validation.

    Same numbers as :func:`psnr` on each image converted to HWC: both are quantised to uint8 levels (im2uint8) and,
    for RGB with ``y_channel``, reduced to MATLAB's rgb2ycbcr luma. Returns a float64 (N,) tensor (inf where equal).
    """
    if not (isinstance(sr, torch.Tensor) and isinstance(hr, torch.Tensor)):
        raise ValueError("sr and hr must be torch tensors")
    if sr.shape != hr.shape or sr.dim() != 4 or sr.shape[1] not in (1, 3):
        raise ValueError(
            f"sr and hr must share an (N, C, H, W) shape with C in (1, 3), got {tuple(sr.shape)}, {tuple(hr.shape)}"
        )
    if not (sr.is_floating_point() and hr.is_floating_point()):
        raise ValueError(f"sr and hr must be float tensors in [0, 1], got {sr.dtype}, {hr.dtype}")
    h, w = sr.shape[-2:]
    if not isinstance(border, int) or border < 0 or 2 * border >= min(h, w):
        raise ValueError(f"border must be an integer in [0, min(H, W)/2), got {border!r} for size {h}x{w}")
    x, y = _levels(sr), _levels(hr)
    if y_channel and sr.shape[1] == 3:
        x, y = rgb_to_y(x, 1).unsqueeze(1), rgb_to_y(y, 1).unsqueeze(1)
    x, y = x[..., border : h - border, border : w - border], y[..., border : h - border, border : w - border]
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse)
