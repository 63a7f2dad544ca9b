"""Inference: ``upscale`` (image conversions, degradation maps, tiling) and single-image noise estimation.

Images go in and come out as the same kind: PIL (modes L, LA, RGB, RGBA), numpy (H, W) / (H, W, C) uint8, uint16 or
float in [0, 1], torch (C, H, W) / (N, C, H, W) float in [0, 1], with C in 1 (gray), 2 (gray + alpha), 3 (RGB),
4 (RGBA). Gray is replicated to RGB for the model and averaged back; alpha is upscaled on its own with the bicubic
``degradation.imresize``.

Tiling: the LR image is cut into ``tile`` x ``tile`` tiles, each run with a margin of ``receptive_radius`` LR pixels
of real context, and only the tile's own part of the output is kept. The margin covers everything an output pixel
depends on, so the result equals the untiled one up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from udvd_triton.degradation import imresize, isotropic_gaussian, kernel_code

if TYPE_CHECKING:
    from udvd_triton.model import UDVD

ImageLike = Image.Image | np.ndarray | torch.Tensor
DEFAULT_BLUR_SIGMA = 1.0  # std of the SRMD blur kernel in HR pixels; assumed when the caller does not know it
_PIL_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_INT_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}

# Layer counts of the UDVD modules (model.py) that set the receptive field.
_GUIDE_CONVS = 3  # image_conv: three 3x3 convs on the stage's input image
_REFINE_RESIDUAL_CONVS = 2  # CommonDynamicConv.feat_residual: two 3x3 convs at HR


def receptive_radius(config: dict[str, Any]) -> int:
    """Radius, in LR pixels, of the input region that one output pixel of ``UDVD(**config)`` depends on.

    Every 3x3 conv adds 1 pixel of its resolution, a k x k dynamic filter (k-1)/2; parallel branches take the max.
    LR part: features = head + 2 convs per block; the upsampling stage's predictor convs see max(features, guide)
    plus 1 (kernel/residual conv) plus 1 (the residual's HR conv, at most 1 LR pixel); its filter taps reach p.
    Each refinement stage reaches max(guide + residual convs, guide + kernel conv, p) HR pixels into the previous
    output (its LR-feature input is covered by the LR part), converted to LR pixels by ceil(/ scale).
    """
    scale, p = config["scale"], (config["kernel_size"] - 1) // 2
    features = 1 + 2 * config["n_blocks"]
    radius = max(max(features, _GUIDE_CONVS) + 2, p)
    hr_per_stage = max(_GUIDE_CONVS + _REFINE_RESIDUAL_CONVS, _GUIDE_CONVS + 1, p)
    return radius + math.ceil(config["variant"].count("D") * hr_per_stage / scale)


def auto_tile_size(model: UDVD, free_bytes: int, dtype: torch.dtype) -> int:
    """Largest LR tile side whose forward pass should fit in half of ``free_bytes`` (a rough activation count:
    a few LR feature maps, and per HR pixel the aligned features, guide, kernels and residual maps)."""
    c = model.config
    s2, k2 = c["scale"] ** 2, c["kernel_size"] ** 2
    elems_per_lr_pixel = 4 * c["n_feats"] + s2 * (3 * c["n_feats"] + 2 * k2 + 128) + k2 * s2
    per_pixel = elems_per_lr_pixel * torch.finfo(dtype).bits // 8
    side = int(math.sqrt(free_bytes / 2 / per_pixel)) - 2 * receptive_radius(c)
    return max(side, 16)


def estimate_noise_level(img: ImageLike) -> float:
    """Standard deviation of additive white Gaussian noise in ``img``, on the 0..255 scale.

    Immerkaer's estimator (J. Immerkaer, "Fast Noise Variance Estimation", Computer Vision and Image Understanding
    64(2):300-302, 1996): convolve with the difference of two Laplacians
    N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]], which cancels locally smooth (up to quadratic) structure, and
    sigma = sqrt(pi/2) / (6 (W-2)(H-2)) * sum |I * N| over the valid region. Computed per colour channel (alpha
    excluded) and averaged; textured images read somewhat high.
    """
    rgb, _, _ = _to_batch(img)
    x = rgb.double().flatten(0, 1)[:, None] * 255
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        raise ValueError(f"noise estimation needs an image of at least 3x3 pixels, got {tuple(rgb.shape[-2:])}")
    mask = torch.tensor([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=torch.float64, device=x.device)
    response = F.conv2d(x, mask[None, None]).abs()
    h, w = x.shape[-2:]
    sigma = math.sqrt(math.pi / 2) * response.sum(dim=(1, 2, 3)) / (6 * (w - 2) * (h - 2))
    return float(sigma.mean())


@dataclass
class _Restore:
    """How to turn the model's (N, 3, H, W) output back into the caller's kind of image."""

    kind: str  # "pil" | "numpy" | "torch"
    gray: bool
    dtype: Any  # numpy or torch dtype
    batched: bool = True  # torch NCHW (else CHW) / numpy HWC (else HW)
    device: torch.device | None = None


def _to_batch(img: ImageLike) -> tuple[torch.Tensor, torch.Tensor | None, _Restore]:
    """(rgb (N, 3, h, w) float64 in [0, 1], alpha (N, 1, h, w) or None, how to restore)."""
    if isinstance(img, Image.Image):
        if img.mode not in _PIL_MODES:
            raise ValueError(f"unsupported PIL image mode {img.mode!r}: convert it to one of {sorted(_PIL_MODES)}")
        rgb, alpha, restore = _to_batch(np.asarray(img))
        restore.kind = "pil"
        return rgb, alpha, restore
    if isinstance(img, np.ndarray):
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 2, 3, 4)):
            raise ValueError(f"numpy images must be (H, W) or (H, W, C) with C in 1..4, got shape {img.shape}")
        if img.dtype in _INT_MAX:
            x = img.astype(np.float64) / _INT_MAX[img.dtype]
        elif np.issubdtype(img.dtype, np.floating):
            x = img.astype(np.float64)
        else:
            raise ValueError(f"numpy images must be uint8, uint16 or float in [0, 1], got dtype {img.dtype}")
        t = torch.from_numpy(x if img.ndim == 3 else x[..., None]).permute(2, 0, 1)[None]
        restore = _Restore("numpy", False, img.dtype, batched=img.ndim == 3)
    elif isinstance(img, torch.Tensor):
        if img.dim() not in (3, 4) or img.shape[-3] not in (1, 2, 3, 4):
            raise ValueError(f"torch images must be (C, H, W) or (N, C, H, W) with C in 1..4, got {tuple(img.shape)}")
        if not img.is_floating_point():
            raise ValueError(f"torch images must be floating point in [0, 1], got dtype {img.dtype}")
        t = (img if img.dim() == 4 else img[None]).double()
        restore = _Restore("torch", False, img.dtype, batched=img.dim() == 4, device=img.device)
    else:
        raise ValueError(f"img must be a PIL image, numpy array or torch tensor, got {type(img).__name__}")
    channels = t.shape[1]
    restore.gray = channels <= 2
    color = t[:, :1].expand(-1, 3, -1, -1) if restore.gray else t[:, :3]
    alpha = t[:, channels - 1 :] if channels in (2, 4) else None
    return color, alpha, restore


def _from_batch(rgb: torch.Tensor, alpha: torch.Tensor | None, restore: _Restore) -> ImageLike:
    """Inverse of ``_to_batch`` for the (N, 3, H, W) output; clips to [0, 1], rounds for integer dtypes."""
    out = rgb.mean(1, keepdim=True) if restore.gray else rgb
    if alpha is not None:
        out = torch.cat([out, alpha.to(out)], 1)
    out = out.clamp(0, 1)
    if restore.kind == "torch":
        out = out.to(device=restore.device, dtype=restore.dtype)
        return out if restore.batched else out[0]
    arr = out[0].permute(1, 2, 0).double().cpu().numpy()
    if restore.dtype in _INT_MAX:
        arr = np.round(arr * _INT_MAX[restore.dtype]).astype(restore.dtype)
    else:
        arr = arr.astype(restore.dtype)
    if restore.kind == "pil":
        return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    return arr if restore.batched else arr[..., 0]


def _blur_kernel(model: UDVD, blur_sigma: float, kernel: np.ndarray | torch.Tensor | None) -> torch.Tensor:
    """The model's code for the blur, float64 (code_len,): ``kernel_code`` with the model's own ``kernel_basis``."""
    basis = model.kernel_basis.detach().double().cpu()
    size = math.isqrt(basis.shape[1])
    if kernel is None:
        if not (isinstance(blur_sigma, (int, float)) and math.isfinite(blur_sigma) and blur_sigma > 0):
            raise ValueError(f"blur_sigma must be a positive number (Gaussian std in HR pixels), got {blur_sigma!r}")
        k = torch.from_numpy(np.asarray(isotropic_gaussian(size, blur_sigma), dtype=np.float64))
    else:
        k = torch.as_tensor(np.asarray(kernel.detach().cpu() if isinstance(kernel, torch.Tensor) else kernel))
        k = k.double()
        if k.shape != (size, size):
            raise ValueError(f"kernel must be ({size}, {size}) like the model's kernel basis, got {tuple(k.shape)}")
        if not torch.isfinite(k).all() or k.sum() <= 0:
            raise ValueError("kernel must be finite with a positive sum")
        k = k / k.sum()  # a user kernel need not be normalised; kernel_code requires a sum of 1
    return kernel_code(k, basis)


def _check_noise(noise_level: float | str) -> float | None:
    if noise_level == "auto":
        return None
    if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float)) or not 0 <= noise_level <= 255:
        raise ValueError(f"noise_level must be a number in 0..255 or 'auto', got {noise_level!r}")
    return float(noise_level)


def _forward(model: UDVD, image: torch.Tensor, code: torch.Tensor, noise: float) -> torch.Tensor:
    n, _, h, w = image.shape
    code_map = code.to(image).view(1, -1, 1, 1).expand(n, -1, h, w)
    noise_map = torch.full((n, 1, h, w), noise / 255, dtype=image.dtype, device=image.device)
    return model(image, code_map, noise_map)[-1]


def _run_tiled(
    model: UDVD, image: torch.Tensor, code: torch.Tensor, noise: float, tile: int, out: torch.Tensor
) -> None:
    """Fill ``out`` (N, 3, s*h, s*w) tile by tile; each tile gets ``receptive_radius`` LR pixels of context."""
    s, margin = model.scale, receptive_radius(model.config)
    h, w = image.shape[-2:]
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, xa = max(y0 - margin, 0), max(x0 - margin, 0)
            sr = _forward(model, image[..., ya : min(y1 + margin, h), xa : min(x1 + margin, w)], code, noise)
            keep = sr[..., s * (y0 - ya) : s * (y1 - ya), s * (x0 - xa) : s * (x1 - xa)]
            out[..., s * y0 : s * y1, s * x0 : s * x1] = keep.to(out)


def upscale(
    model: UDVD,
    img: ImageLike,
    blur_sigma: float = DEFAULT_BLUR_SIGMA,
    noise_level: float | str = 0.0,
    tile: int | None = None,
    *,
    kernel: np.ndarray | torch.Tensor | None = None,
) -> ImageLike:
    """Super-resolve ``img`` by ``model.scale``: same kind, dtype and layout out (see the module docstring).

    Args:
        model: a UDVD (its device and dtype are used; fp16/bf16 on GPU work).
        img: PIL / numpy / torch image, values in [0, 1] for floats.
        blur_sigma: width (std, HR pixels, as in ``degradation.isotropic_gaussian``) of the isotropic blur the
            image went through.
        noise_level: std of its additive Gaussian noise on the 0..255 scale, or "auto" to estimate it
            (``estimate_noise_level``).
        tile: LR tile side for tiled inference of large images; None: no tiling on CPU, on CUDA a size derived
            from the free GPU memory (``torch.cuda.mem_get_info``).
        kernel: a blur kernel (15, 15) (numpy or torch) to use instead of ``blur_sigma``; normalised to sum 1.
    Returns the output clipped to [0, 1]; integer outputs are rounded.
    """
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
        raise ValueError(f"tile must be a positive integer (LR pixels) or None, got {tile!r}")
    noise = _check_noise(noise_level)
    code = _blur_kernel(model, blur_sigma, kernel)
    rgb, alpha, restore = _to_batch(img)
    if noise is None:
        noise = estimate_noise_level(rgb)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    n, _, h, w = rgb.shape
    if tile is None and device.type == "cuda":
        tile = auto_tile_size(model, torch.cuda.mem_get_info(device)[0], dtype)
    s = model.scale
    out = torch.empty(n, 3, s * h, s * w, dtype=torch.float32, device=rgb.device)
    with torch.inference_mode():
        image = rgb.to(device=device, dtype=dtype)
        if tile is None or (tile >= h and tile >= w):
            out.copy_(_forward(model, image, code, noise))
        else:
            _run_tiled(model, image, code, noise, tile, out)
        alpha_hr = imresize(alpha.float(), s) if alpha is not None else None
    return _from_batch(out, alpha_hr, restore)
